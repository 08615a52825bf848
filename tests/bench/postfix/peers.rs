//! The peers of the Postfix benchmark (issue 18): rspamd's proxy worker as a
//! milter, and OpenDKIM verifying plus OpenDMARC, each configured for the
//! same checks as our `mx` policy where it can, against the benchmark's
//! loopback DNS server, from throwaway configuration files written here.
//! Also what measures a peer: the CPU time of a whole process tree.
//!
//! DNS: rspamd and OpenDKIM are given the server's address; OpenDMARC (its
//! DMARC lookups and libspf2's SPF lookups) has no such setting and uses
//! the C library's stub resolver, which reads only /etc/resolv.conf and
//! asks port 53. So the DNS server listens on port 53 of a loopback
//! address of its own, and every peer (and Postfix, for
//! `reject_rbl_client`) runs in a mount namespace in which a resolv.conf
//! naming that address is /etc/resolv.conf
//! (`common::postfix::with_resolv_conf`): no lookup leaves 127.0.0.0/8,
//! even one that a peer makes without being asked to.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const RSPAMD: &str = "/usr/bin/rspamd";
pub const OPENDKIM: &str = "/usr/sbin/opendkim";
pub const OPENDMARC: &str = "/usr/sbin/opendmarc";
pub const UNSHARE: &str = "/usr/bin/unshare";
/// The system user the Debian package creates; rspamd refuses to run its
/// workers as root.
pub const RSPAMD_USER: &str = "_rspamd";

/// The DNSBL zone the peers check (one list: rspamd's `rbl` rule and
/// Postfix's `reject_rbl_client`); our `mx` policy checks it and two more.
pub const DNSBL_ZONE: &str = "zen.test";

/// The command that installs every peer.
pub const INSTALL: &str = "bash bench/install-peers.sh";

/// Where a milter listens.
#[derive(Clone, Debug)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// As Postfix's `smtpd_milters` names it.
    pub fn postfix(&self) -> String {
        match self {
            Listen::Tcp(a) => format!("inet:{a}"),
            Listen::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// resolv.conf for the peers' namespace: the benchmark's DNS server only.
pub fn resolv_conf(dns: SocketAddr) -> String {
    assert_eq!(dns.port(), 53, "the stub resolver asks port 53 only");
    format!(
        "# Written by tests/bench/postfix.rs: the loopback DNS server only.\nnameserver {}\noptions timeout:2 attempts:1\n",
        dns.ip()
    )
}

/// rspamd with only the checks of our `mx` policy that it has: SPF, DKIM,
/// DMARC and one IP DNSBL, and milter_headers adding
/// Authentication-Results (and X-Spamd-Result, the symbols) so that the
/// delivered mail shows the checks ran. No other module is configured, and
/// rspamd disables every Lua module without a configuration section (the
/// log says so at start): no bayes, fuzzy, neural, greylisting, ratelimit,
/// Redis, phishing or URL checks, no regexp rules (the rules' Lua file is
/// not loaded), no controller or normal worker. The proxy worker scans the
/// mail itself (`self_scan`), the fastest setup for one host: no HTTP hop
/// to a normal worker. One proxy process, as our daemon has one worker
/// thread on this machine. `check_local`: mail from 127.0.0.1 (Postfix's
/// client here) would otherwise skip SPF, DMARC and the RBL.
pub fn rspamd_config(dir: &Path, listen: &Listen, dns: SocketAddr) -> String {
    let d = dir.display();
    let bind = match listen {
        Listen::Tcp(a) => a.to_string(),
        Listen::Unix(p) => format!("{} mode=0666", p.display()),
    };
    format!(
        r#"# Written by tests/bench/postfix.rs: SPF, DKIM, DMARC and one RBL only.
options {{
    pidfile = "{d}/rspamd.pid";
    cache_file = "{d}/symbols.cache";
    hs_cache_dir = "{d}/";
    tempdir = "{d}/";
    url_tld = "${{SHAREDIR}}/effective_tld_names.dat";
    dns {{
        nameserver = ["{dns}"];
        timeout = 2s;
        retransmits = 1;
    }}
    local_addrs = [];
    check_local = true;
    check_authed = true;
    explicit_modules = [];
    filters = "dkim";
}}
logging {{
    type = "file";
    filename = "{d}/rspamd.log";
    level = "warning";
}}
worker "rspamd_proxy" {{
    bind_socket = "{bind}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{
        default = yes;
        self_scan = yes;
    }}
    count = 1;
}}
dkim {{
    check_local = true;
    check_authed = true;
}}
spf {{
    check_local = true;
    check_authed = true;
}}
dmarc {{
    check_local = true;
    check_authed = true;
}}
rbl {{
    rbls {{
        zen {{
            symbol = "RBL_ZEN";
            rbl = "{DNSBL_ZONE}";
            ipv4 = true;
            ipv6 = true;
            received = false;
            from = true;
            exclude_local = false;
            exclude_private_ips = false;
            disable_monitoring = true;
        }}
    }}
}}
milter_headers {{
    use = ["authentication-results", "x-spamd-result"];
    skip_local = false;
    skip_authenticated = false;
}}
modules {{
    path = "${{PLUGINSDIR}}";
}}
"#
    )
}

/// OpenDKIM verifying (mode v), its keys from the benchmark's DNS server,
/// adding Authentication-Results with the authserv-id OpenDMARC trusts.
/// `internal` lists one documentation address: OpenDKIM's default internal
/// host is 127.0.0.1, Postfix's client here, whose mail it would sign
/// rather than verify.
pub fn opendkim_verify_config(port: u16, dns: IpAddr, internal: &Path) -> String {
    format!(
        "Syslog no
Background no
Mode v
Socket inet:{port}@127.0.0.1
Nameservers {dns}
AuthservID mx.example.org
InternalHosts {internal}
SoftwareHeader no
",
        internal = internal.display()
    )
}

/// OpenDMARC 1.4.2 with its own SPF check (`SPFSelfValidate`, through
/// libspf2, `SPFIgnoreResults` so that it never takes a result from the
/// message), taking DKIM from OpenDKIM's Authentication-Results (same
/// authserv-id), adding its own. No reports, no history file. `ignore`
/// lists one documentation address: OpenDMARC ignores 127.0.0.1 by default.
pub fn opendmarc_config(port: u16, ignore: &Path) -> String {
    format!(
        "Syslog false
Background false
Socket inet:{port}@127.0.0.1
AuthservID mx.example.org
TrustedAuthservIDs mx.example.org
IgnoreHosts {ignore}
SPFSelfValidate true
SPFIgnoreResults true
PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat
RejectFailures false
FailureReports false
RequiredHeaders false
SoftwareHeader false
",
        ignore = ignore.display()
    )
}

/// "rspamd 3.4, OpenDKIM 2.11.0, ..." as the installed programs say.
pub fn versions() -> String {
    let ask = |program: &str, flag: &str| -> Option<String> {
        let out = std::process::Command::new(program)
            .arg(flag)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        text.lines().next().map(|l| l.trim().to_string())
    };
    [(RSPAMD, "-v"), (OPENDKIM, "-V"), (OPENDMARC, "-V")]
        .into_iter()
        .filter(|(p, _)| Path::new(p).exists())
        .filter_map(|(p, f)| ask(p, f))
        .collect::<Vec<_>>()
        .join("; ")
}

/// From /proc/PID/stat: (utime + stime, cutime + cstime) in seconds, the
/// process's own CPU time and that of its children it has waited for.
pub fn cpu_times(pid: i32) -> (f64, f64) {
    let Some(f) = stat_fields(pid) else {
        return (0.0, 0.0);
    };
    // After the command name: the state is field 3 of proc(5); utime,
    // stime, cutime, cstime are fields 14 to 17.
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = clock_ticks();
    ((num(11) + num(12)) / hz, (num(13) + num(14)) / hz)
}

/// The fields of /proc/PID/stat after the command name (field 3 on).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// `root` and every process below it, as /proc shows them now.
pub fn tree_pids(root: i32) -> Vec<i32> {
    let mut parent = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid)
                .and_then(|f| f.get(1).cloned())
                .and_then(|p| p.parse::<i32>().ok())
            {
                parent.insert(pid, ppid);
            }
        }
    }
    let below = |mut pid: i32| -> bool {
        // A chain of parents is finite; the bound only guards a /proc race.
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parent.get(&pid) {
                Some(&p) if p > 0 => pid = p,
                _ => return false,
            }
        }
        false
    };
    parent.keys().copied().filter(|pid| below(*pid)).collect()
}

/// CPU seconds used so far by `root` and every process below it: each
/// live one's own time, plus what `root` collected from the children it
/// reaped (a worker that exited). rspamd runs a main process and workers;
/// OpenDKIM and OpenDMARC are one process each.
pub fn tree_cpu(root: i32) -> f64 {
    let live: f64 = tree_pids(root).into_iter().map(|p| cpu_times(p).0).sum();
    live + cpu_times(root).1
}
