//! Throughput behind a real Postfix, measured with Postfix's own load
//! generator. Prints figures and asserts only that every message arrived
//! (and was signed or checked where it should be), never a speed: the
//! machines are shared and noisy. Run on demand, in release mode, as root:
//!
//!     cargo test --release --test bench postfix:: -- --nocapture
//!
//! One run measures these configurations side by side, each with a fresh
//! throwaway Postfix (tests/common/postfix.rs: own config and queue
//! directory, loopback only) that relays everything to a counting SMTP sink
//! in this process:
//!
//! 1. `none`: Postfix without milters;
//! 2. `empty`: the release daemon (`dispatch-milter serve`, the real binary)
//!    with an empty policy, as bench/empty.toml: the milter path itself;
//! 3. `mx`: the daemon with the MX checks of tests/bench/daemon.rs (DNSBL with
//!    three lists, iprev, SPF, DKIM, DMARC) against the loopback DNS server of
//!    tests/common/dns_server.rs, which runs in this process; `mx-unix`: the
//!    same over a unix socket;
//! 4. the peers (issue 18; postfix/peers.rs), each checking the same message
//!    against the same DNS server: `rspamd-tcp` and `rspamd-unix`, rspamd's
//!    proxy worker as a milter with only SPF, DKIM, DMARC and one IP DNSBL;
//!    `opendkim+opendmarc`, OpenDKIM verifying and OpenDMARC with its own
//!    SPF check, with Postfix's `reject_rbl_client` as the DNSBL. Each is
//!    compared with our `mx` or `mx-unix` of the same round. A peer that is
//!    not installed is skipped and named (`bash bench/install-peers.sh`);
//! 5. `submission`: the daemon's submission pipeline signing with
//!    `dkim_sign` (mail sent to Postfix's submission service);
//! 6. `opendkim`: OpenDKIM signing with the same key, domain and selector,
//!    on the same submission service.
//!
//! The run fails unless every message of a checking configuration arrives
//! with Authentication-Results that say spf, dkim and dmarc `pass` (and
//! iprev for ours), every signing configuration's with the new signature,
//! and unless the peers' DNSBL lookups reached the DNS server.
//!
//! The load: `smtp-source -s SESSIONS -m MESSAGES -F message`, one message
//! per SMTP session (smtp-source's default), after a warm-up of
//! `PFBENCH_WARMUP` messages that starts Postfix's processes and fills the
//! resolver cache. The message is the load generator's `typical` one (about
//! 40 KiB: text and a base64 attachment), already DKIM-signed for
//! example.org, so the MX run verifies a signature as real incoming mail
//! has. smtp-source's own generated message would not do: its body is a few
//! kilobytes of `X` lines of a size set by `-l`, and it cannot carry a
//! signature. The rate is messages delivered at the sink divided by the time
//! from starting smtp-source to the last delivery.
//!
//! The configurations take turns for `PFBENCH_ROUNDS` rounds; the table
//! gives the median of each figure and every round's rate.
//!
//! Each Postfix instance lives under `PFBENCH_QUEUE_BASE` (default
//! `/dev/shm`, a tmpfs). On a disk file system (ext4 here) Postfix's own CPU
//! per message depends on what the runs before did to the file system
//! (inode allocation skips recently deleted inodes, directory locks are
//! contended) and on the run's rate, which blurs the milter's share; on
//! tmpfs it does not. `PFBENCH_QUEUE_BASE=/tmp` measures on disk.
//!
//! Parameters (environment): `PFBENCH_SESSIONS` (20), `PFBENCH_MESSAGES`
//! (5000), `PFBENCH_WARMUP` (200), `PFBENCH_ROUNDS` (3), `PFBENCH_ONLY`
//! (comma-separated configuration names, default all), `PFBENCH_CUSTOM`
//! (comma-separated policy files, each measured as one more configuration
//! named after its file's stem; `DNS_ADDR` in one becomes the loopback DNS
//! server's address, and a `[server]` table in it gets the benchmark's
//! listener and log level added), `PFBENCH_QUEUE_BASE` (above).
//!
//! After the table, each configuration is compared with the empty policy of
//! the same round, and each peer with our MX checks of the same transport
//! and round (ours / peer in rate, peer / ours in CPU per message): the
//! median and the geometric mean of those ratios, with a 95 % confidence
//! interval (Student's t on their logarithms). CPU per message counts every
//! process of a milter (rspamd's main process and workers).

use crate::common;

mod peers;

use common::dns_server::DnsServer;
use common::postfix::{self, Postfix, Wiring};
use common::stats::geometric_mean_ci;
use common::wait;
use peers::{Listen, cpu_times, tree_cpu};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter");
const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
use peers::OPENDKIM;

/// The selector of the signature the message arrives with (verified by the
/// MX run) and of the one the signers add. Both publish the same test key.
const IN_SELECTOR: &str = "in2026";
const OUT_SELECTOR: &str = "out2026";
const FROM: &str = "alice@example.org";
const TO: &str = "bob@example.net";

/// How long one configuration's run may take at most.
const RUN_LIMIT: Duration = Duration::from_secs(900);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

// ------------------------------------------------------------------ sink ---

/// What the sink saw since the last reset.
#[derive(Clone, Debug, Default)]
struct Counts {
    delivered: usize,
    /// Messages carrying a DKIM-Signature with selector [`OUT_SELECTOR`].
    signed: usize,
    /// Messages carrying an Authentication-Results header.
    with_auth_results: usize,
    /// What every message's Authentication-Results fields must say between
    /// them (each of these results) to show that the checks ran.
    needles: Vec<&'static str>,
    /// Messages whose Authentication-Results say all of [`Counts::needles`].
    checked: usize,
    /// When the last message was complete.
    last: Option<Instant>,
    /// The first message received, headers and body, CRLF line ends.
    sample: Option<String>,
}

/// An SMTP server on 127.0.0.1 that accepts everything and only counts:
/// the harness's `Sink` keeps every message, which for thousands of 40 KiB
/// messages is memory and time this benchmark should not spend. It inspects
/// the header section of each message, so the table can show that every
/// message was signed (or checked) and not merely relayed.
struct CountingSink {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
    task: JoinHandle<()>,
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Header fields of a header section (CRLF lines), unfolded.
fn header_fields(head: &str) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    fields
}

fn record(counts: &Mutex<Counts>, head: &str, whole: Option<String>) {
    let fields = header_fields(head);
    let has = |name: &str, needle: &str| {
        fields.iter().any(|f| {
            f.split_once(':').is_some_and(|(n, v)| {
                n.trim().eq_ignore_ascii_case(name) && v.replace(' ', "").contains(needle)
            })
        })
    };
    let signed = has("DKIM-Signature", &format!("s={OUT_SELECTOR};"));
    let with_ar = has("Authentication-Results", "");
    let results: String = fields
        .iter()
        .filter(|f| {
            f.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("Authentication-Results"))
        })
        .map(|f| f.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    let mut c = counts.lock().unwrap();
    let checked = with_ar && c.needles.iter().all(|n| results.contains(n));
    c.delivered += 1;
    c.signed += usize::from(signed);
    c.with_auth_results += usize::from(with_ar);
    c.checked += usize::from(checked);
    c.last = Some(Instant::now());
    if c.sample.is_none() {
        c.sample = whole;
    }
}

async fn sink_session(stream: TcpStream, counts: Arc<Mutex<Counts>>) {
    stream.set_nodelay(true).ok();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    // Not Postfix's own name, or it would see a mail loop.
    if write.write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut in_transaction = false;
    let mut rcpts = 0;
    loop {
        buf.clear();
        match read.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let upper = String::from_utf8_lossy(&buf)
            .trim_end()
            .to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            // PIPELINING as smtp-sink offers it: Postfix's client then sends
            // MAIL, RCPT and DATA in one go. The replies go in order anyway.
            b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            in_transaction = true;
            rcpts = 0;
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            rcpts += 1;
            b"250 2.1.5 Ok\r\n"
        } else if upper == "DATA" {
            if !in_transaction || rcpts == 0 {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                if write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                // Keep the whole message only while no sample is kept yet.
                let keep = counts.lock().unwrap().sample.is_none();
                let mut head = String::new();
                let mut whole = String::new();
                let mut in_head = true;
                loop {
                    buf.clear();
                    match read.read_until(b'\n', &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if buf == b".\r\n" || buf == b".\n" {
                        break;
                    }
                    let line = buf.strip_prefix(b".").unwrap_or(&buf);
                    if in_head {
                        if line == b"\r\n" || line == b"\n" {
                            in_head = false;
                        } else {
                            head.push_str(&String::from_utf8_lossy(line));
                        }
                    }
                    if keep {
                        whole.push_str(&String::from_utf8_lossy(line));
                    }
                }
                record(&counts, &head, keep.then_some(whole));
                in_transaction = false;
                b"250 2.0.0 Ok: counted\r\n"
            }
        } else if upper == "RSET" {
            in_transaction = false;
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            b"502 5.5.2 Not implemented\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

impl CountingSink {
    async fn start() -> CountingSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("sink bind");
        let addr = listener.local_addr().expect("sink address");
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(sink_session(stream, c.clone()));
            }
        });
        CountingSink { addr, counts, task }
    }

    /// Counts from zero; `needles` are the results every message's
    /// Authentication-Results must say ([`Counts::checked`]).
    fn reset(&self, needles: &[&'static str]) {
        *self.counts.lock().unwrap() = Counts {
            needles: needles.to_vec(),
            ..Counts::default()
        };
    }

    fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    /// Wait until `n` messages arrived; `None` if they did not within `limit`.
    async fn wait_for(&self, n: usize, limit: Duration) -> Option<Counts> {
        let mut c = Counts::default();
        let arrived = wait::within(limit, || {
            c = self.counts();
            c.delivered >= n
        })
        .await;
        arrived.then_some(c)
    }
}

// ------------------------------------------------------------- processes ---

/// A child process (the daemon or OpenDKIM), killed when dropped; its
/// stderr goes to a file for the failure message.
struct Proc {
    child: Child,
    log: PathBuf,
    /// A log file of the program's own (rspamd's), for failure messages.
    own_log: Option<PathBuf>,
}

impl Drop for Proc {
    /// After a failure: whatever the program started (rspamd's workers)
    /// goes with it; `kill_on_drop` only kills the process itself.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            for p in peers::tree_pids(pid as i32) {
                if p != pid as i32 {
                    // SAFETY: kill(2) on a process below our own child.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(err.try_clone().expect("log file"))
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child,
            log,
            own_log: None,
        }
    }

    fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(own) = &self.own_log {
            log.push_str(&std::fs::read_to_string(own).unwrap_or_default());
        }
        log
    }

    /// Wait until `addr` accepts a connection (one empty milter
    /// connection, which every milter here takes in its stride).
    async fn wait_listening(&mut self, addr: &Listen) {
        let listening = wait::within_async(Duration::from_secs(60), async || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited with {status} before listening:\n{}", self.log());
            }
            match addr {
                Listen::Tcp(a) => TcpStream::connect(a).await.is_ok(),
                Listen::Unix(p) => tokio::net::UnixStream::connect(p).await.is_ok(),
            }
        })
        .await;
        assert!(
            listening,
            "not listening on {addr:?} after 60 s:\n{}",
            self.log()
        );
    }

    /// CPU seconds so far of the process and everything below it.
    fn cpu(&self) -> f64 {
        self.child.id().map_or(0.0, |pid| tree_cpu(pid as i32))
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid; a clean shutdown first.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU seconds used so far by a Postfix instance: every process of it that
/// runs now, plus what the master collected from the children it reaped
/// (smtpd and cleanup processes come and go during a run). The difference
/// of two readings is what the instance spent in between.
fn postfix_cpu(pf: &Postfix) -> f64 {
    let live: f64 = postfix::instance_processes(&pf.config_dir)
        .into_iter()
        .map(|pid| cpu_times(pid).0)
        .sum();
    live + pf.master_pid().map_or(0.0, |m| cpu_times(m).1)
}

// --------------------------------------------------------------- configs ---

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    None,
    Empty,
    Mx,
    /// The MX checks over a unix socket.
    MxUnix,
    /// rspamd's proxy worker as a milter over TCP, the same checks.
    RspamdTcp,
    /// The same over a unix socket.
    RspamdUnix,
    /// OpenDKIM verifying and OpenDMARC (with its own SPF check), two
    /// milters over TCP, and Postfix's own `reject_rbl_client`.
    OpenDkimDmarc,
    Submission,
    OpenDkim,
    /// The policy in the n-th file `PFBENCH_CUSTOM` names: to measure one's
    /// own policy, or one part of a cost, beside the others.
    Custom(usize),
}

/// The policy files of `PFBENCH_CUSTOM` (comma-separated), in order.
fn custom_files() -> &'static [PathBuf] {
    static FILES: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        std::env::var("PFBENCH_CUSTOM")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect()
    })
}

impl Kind {
    /// Every configuration, the custom ones last.
    fn all() -> Vec<Kind> {
        let mut all = vec![
            Kind::None,
            Kind::Empty,
            Kind::Mx,
            Kind::MxUnix,
            Kind::RspamdTcp,
            Kind::RspamdUnix,
            Kind::OpenDkimDmarc,
            Kind::Submission,
            Kind::OpenDkim,
        ];
        all.extend((0..custom_files().len()).map(Kind::Custom));
        all
    }

    /// What `PFBENCH_ONLY` calls it: a custom policy by its file's stem.
    fn name(self) -> String {
        match self {
            Kind::None => "none".into(),
            Kind::Empty => "empty".into(),
            Kind::Mx => "mx".into(),
            Kind::MxUnix => "mx-unix".into(),
            Kind::RspamdTcp => "rspamd-tcp".into(),
            Kind::RspamdUnix => "rspamd-unix".into(),
            Kind::OpenDkimDmarc => "opendkim+opendmarc".into(),
            Kind::Submission => "submission".into(),
            Kind::OpenDkim => "opendkim".into(),
            Kind::Custom(n) => custom_files()[n].file_stem().map_or_else(
                || format!("custom{n}"),
                |s| s.to_string_lossy().into_owned(),
            ),
        }
    }

    fn label(self) -> String {
        match self {
            Kind::None => "no milter".into(),
            Kind::Empty => "dispatch-milter, empty policy".into(),
            Kind::Mx => "dispatch-milter, MX checks, TCP".into(),
            Kind::MxUnix => "dispatch-milter, MX checks, unix socket".into(),
            Kind::RspamdTcp => "rspamd proxy milter, TCP".into(),
            Kind::RspamdUnix => "rspamd proxy milter, unix socket".into(),
            Kind::OpenDkimDmarc => "OpenDKIM + OpenDMARC + Postfix RBL, TCP".into(),
            Kind::Submission => "dispatch-milter, submission dkim_sign".into(),
            Kind::OpenDkim => "OpenDKIM 2.11, signing".into(),
            Kind::Custom(n) => format!("dispatch-milter, {}", custom_files()[n].display()),
        }
    }

    fn to_submission(self) -> bool {
        matches!(self, Kind::Submission | Kind::OpenDkim)
    }

    /// Our configuration a peer is compared with: the MX checks over the
    /// same transport.
    fn ours(self) -> Option<Kind> {
        match self {
            Kind::RspamdTcp | Kind::OpenDkimDmarc => Some(Kind::Mx),
            Kind::RspamdUnix => Some(Kind::MxUnix),
            _ => None,
        }
    }

    fn unix(self) -> bool {
        matches!(self, Kind::MxUnix | Kind::RspamdUnix)
    }

    /// Why this configuration cannot run here, if it cannot: a peer that is
    /// not installed.
    fn missing(self) -> Option<String> {
        let needs: &[&str] = match self {
            Kind::RspamdTcp | Kind::RspamdUnix => &[peers::RSPAMD, peers::UNSHARE],
            Kind::OpenDkimDmarc => &[peers::OPENDKIM, peers::OPENDMARC, peers::UNSHARE],
            Kind::OpenDkim => &[peers::OPENDKIM],
            _ => &[],
        };
        let absent: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if matches!(self, Kind::RspamdTcp | Kind::RspamdUnix)
            && absent.is_empty()
            && !user_exists(peers::RSPAMD_USER)
        {
            return Some(format!("no user {}", peers::RSPAMD_USER));
        }
        (!absent.is_empty()).then(|| format!("{} not installed", absent.join(", ")))
    }

    /// What the Authentication-Results fields of every delivered message
    /// must say between them: this configuration's proof that its checks
    /// ran. (The DNSBL leaves no result in a header when the client is not
    /// listed; for the peers the DNS server's log shows its lookups.)
    fn proof(self) -> &'static [&'static str] {
        match self {
            Kind::Mx | Kind::MxUnix => &["iprev=pass", "spf=pass", "dkim=pass", "dmarc=pass"],
            Kind::RspamdTcp | Kind::RspamdUnix | Kind::OpenDkimDmarc => {
                &["spf=pass", "dkim=pass", "dmarc=pass"]
            }
            _ => &[],
        }
    }

    /// Whether the DNSBL lookups of this configuration must reach the DNS
    /// server during the run (no cache in the peers' DNSBL paths).
    fn asks_dnsbl(self) -> bool {
        matches!(
            self,
            Kind::RspamdTcp | Kind::RspamdUnix | Kind::OpenDkimDmarc
        )
    }
}

fn user_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: getpwnam returns a pointer to static storage or null; only
    // whether it is null is read.
    !unsafe { libc::getpwnam(c.as_ptr()) }.is_null()
}

/// bench/empty.toml on another port.
const EMPTY: &str = r#"
[pipelines.empty]
auth_results = false
"#;

/// The submission pipeline as docs/signing.md sets it up: sign what the
/// submission service passes on. Nothing else, so the comparison with
/// OpenDKIM is signing against signing.
const SUBMISSION: &str = r#"
[modifiers.sign]
kind = "dkim_sign"
keys = [{ domain = "example.org", selector = "OUT_SELECTOR", key = "KEY_PATH" }]

[pipelines.submission]
daemon_names = ["submission"]
modify = ["sign"]
"#;

fn daemon_config(kind: Kind, listen: &Listen, dns: SocketAddr, key: &Path) -> String {
    let mx;
    let custom;
    let policy = match kind {
        Kind::Custom(n) => {
            let path = &custom_files()[n];
            custom = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("PFBENCH_CUSTOM: {}: {e}", path.display()));
            custom.as_str()
        }
        Kind::Empty => EMPTY,
        Kind::Mx | Kind::MxUnix => {
            mx = common::mx_checks(r#"nameservers = ["DNS_ADDR"]"#);
            mx.as_str()
        }
        Kind::Submission => SUBMISSION,
        _ => unreachable!(),
    };
    let policy = policy
        .replace("DNS_ADDR", &dns.to_string())
        .replace("OUT_SELECTOR", OUT_SELECTOR)
        .replace("KEY_PATH", key.to_str().expect("UTF-8 key path"));
    let server = "[server]\nlog_level = \"warn\"\n";
    let listen = match listen {
        Listen::Tcp(a) => format!("[[server.listen]]\naddress = \"inet:{a}\"\n"),
        // Postfix's smtpd runs as user postfix.
        Listen::Unix(p) => format!(
            "[[server.listen]]\naddress = \"unix:{}\"\nsocket_mode = \"0666\"\n",
            p.display()
        ),
    };
    // A custom policy may set [server] keys of its own (worker_threads,
    // say): the benchmark's go into the same table.
    if policy.contains("[server]\n") {
        format!("{}\n{listen}", policy.replacen("[server]\n", server, 1))
    } else {
        format!("{server}{listen}{policy}")
    }
}

/// OpenDKIM signing like `dkim_sign`'s defaults: relaxed/relaxed,
/// rsa-sha256, the same header list, From oversigned.
fn opendkim_config(port: u16, key: &Path) -> String {
    format!(
        "Syslog no
Background no
Mode s
Domain example.org
Selector {OUT_SELECTOR}
KeyFile {key}
Socket inet:{port}@127.0.0.1
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
SignHeaders From,Reply-To,Subject,Date,To,Cc,Message-ID,In-Reply-To,References,MIME-Version,Content-Type,Content-Transfer-Encoding,List-Id
OversignHeaders From
InternalHosts 127.0.0.1
SoftwareHeader no
",
        key = key.display()
    )
}

/// A private copy of a test key (both signers refuse world-readable keys).
fn private_key_copy(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    let to = dir.join(name);
    std::fs::copy(from, &to).expect("copy key");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    to
}

fn public_key() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa2048-pkcs1.pub.b64");
    std::fs::read_to_string(p)
        .expect("public key")
        .trim()
        .to_string()
}

/// The loopback DNS server with the test zones, the DNSBL zones and what
/// mail from 127.0.0.1 (Postfix's client address towards the milter here)
/// needs to pass every MX check: example.org's SPF allows 127.0.0.0/8,
/// 127.0.0.1 has forward-confirmed reverse DNS, and both selectors publish
/// the test key. 127.0.0.1 is listed on none of the DNSBLs.
async fn dns() -> DnsServer {
    // Port 53: OpenDMARC and Postfix ask through the C library's resolver.
    let server = DnsServer::start_on_port_53_with_test_zones().await;
    server.load_zone_dir(common::dns_server::zones_dir().join("dnsbl"));
    server.remove_records("example.org", common::dns_server::RecordType::TXT);
    server.add_txt(
        "example.org",
        "v=spf1 ip4:127.0.0.0/8 ip4:192.0.2.0/24 -all",
    );
    // As in tests/bench/daemon.rs: DMARC's tree walk also asks for
    // _dmarc.org, and the real "org" zone answers NXDOMAIN with its SOA,
    // which lets the answer be kept for the negative TTL. Without a zone
    // here, every message would ask again.
    server.add_zone("org");
    server.add_zone("127.in-addr.arpa");
    server.add_ptr_for("127.0.0.1".parse().unwrap(), "loopback.example.org");
    server.add_a("loopback.example.org", "127.0.0.1".parse().unwrap());
    let p = public_key();
    for sel in [IN_SELECTOR, OUT_SELECTOR] {
        server.add_txt(
            &format!("{sel}._domainkey.example.org"),
            &format!("v=DKIM1; k=rsa; p={p}"),
        );
    }
    server
}

/// The `typical` message of the load generator, signed for example.org
/// with [`IN_SELECTOR`] by the library's own `dkim_sign`, as a file for
/// `smtp-source -F` (LF line ends: smtp-source sends each line with CRLF
/// and dot-stuffs it).
async fn signed_message(dir: &Path, key: &Path) -> PathBuf {
    let sample = dispatch_milter_load::sample(dispatch_milter_load::Corpus::Typical, FROM, TO, 0);
    let policy_text = format!(
        "[modifiers.sign]\nkind = \"dkim_sign\"\nkeys = [{{ domain = \"example.org\", selector = \"{IN_SELECTOR}\", key = \"{}\" }}]\n[pipelines.sign]\nmodify = [\"sign\"]\n",
        key.display()
    );
    let policy = dispatch_milter::config::compile_str(
        &dir.join("sign.toml"),
        &policy_text,
        &dispatch_milter::config::Registry::builtin(),
    )
    .unwrap_or_else(|e| panic!("signing config should compile:\n{e}"));
    let mut mail = common::Mail::new(FROM, &[TO]);
    mail.headers = sample.headers.clone();
    mail.body = String::from_utf8(sample.body.clone()).expect("ASCII body");
    let run = common::run_mail(&Arc::new(policy), "sign", &mail).await;
    let outcome = run.outcome.expect("the message reached end of message");
    let signature = outcome
        .edits
        .iter()
        .find_map(|e| match e {
            dispatch_milter::edits::Edit::InsertHeader { name, value, .. }
                if name.eq_ignore_ascii_case("DKIM-Signature") =>
            {
                Some(value.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no signature among {:?}", outcome.edits));
    let mut text = format!("DKIM-Signature: {signature}\n");
    for (n, v) in &sample.headers {
        writeln!(text, "{n}: {v}").unwrap();
    }
    text.push('\n');
    text.push_str(&mail.body);
    let path = dir.join("typical-signed.eml");
    std::fs::write(&path, text.replace("\r\n", "\n")).expect("write message");
    path
}

/// The Authentication-Results the library's `dkim` check gives `message`
/// (CRLF text as delivered), against the loopback DNS server.
async fn verify_dkim(dns: &DnsServer, dir: &Path, message: &str) -> String {
    let mut registry = dispatch_milter::config::Registry::builtin();
    registry.set_nameservers(vec![dns.addr()]);
    let policy = dispatch_milter::config::compile_str(
        &dir.join("verify.toml"),
        "[checks.dkim]\nkind = \"dkim\"\non_fail = \"ignore\"\n[pipelines.in]\nauthserv_id = \"verify.test\"\nchecks = [\"dkim\"]\n",
        &registry,
    )
    .unwrap_or_else(|e| panic!("verify config should compile:\n{e}"));
    let (head, body) = message.split_once("\r\n\r\n").expect("head and body");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("a header before a fold");
            last.1.push_str("\r\n");
            last.1.push_str(line);
        } else {
            let (n, v) = line.split_once(':').expect("a header line");
            headers.push((n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
        }
    }
    let mut mail = common::Mail::new(FROM, &[TO]);
    mail.headers = headers;
    mail.body = body.to_string();
    let run = common::run_mail(&Arc::new(policy), "in", &mail).await;
    let outcome = run.outcome.expect("end of message");
    outcome
        .edits
        .iter()
        .find_map(|e| match e {
            dispatch_milter::edits::Edit::InsertHeader { name, value, .. }
            | dispatch_milter::edits::Edit::AddHeader { name, value }
                if name.eq_ignore_ascii_case("Authentication-Results") =>
            {
                Some(value.clone())
            }
            _ => None,
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------- run ---

struct Params {
    sessions: usize,
    messages: usize,
    warmup: usize,
    /// Where each Postfix instance's directory (and so its queue) goes.
    queue_base: PathBuf,
}

struct Row {
    kind: Kind,
    round: usize,
    /// Messages per second delivered: smtp-source start to last delivery.
    delivered_rate: f64,
    /// Messages per second accepted: smtp-source start to its exit.
    accepted_rate: f64,
    /// CPU milliseconds per message: Postfix (every process of the
    /// instance), the milter, smtp-source, and this test process (the sink
    /// and the DNS server).
    postfix_cpu_ms: f64,
    milter_cpu_ms: Option<f64>,
    source_cpu_ms: f64,
    harness_cpu_ms: f64,
    /// Queries the loopback DNS server answered, per message: what the
    /// milter's caches did not keep.
    dns_queries: f64,
    /// The names asked most often, with how often: where a cache misses.
    dns_most_asked: Vec<(String, usize)>,
    /// Queries for 127.0.0.1 in the peers' DNSBL zone.
    dnsbl_queries: usize,
    counts: Counts,
}

/// The `n` (name, type) pairs the DNS server was asked most often.
fn most_asked(dns: &DnsServer, n: usize) -> Vec<(String, usize)> {
    let mut by_name = std::collections::HashMap::<String, usize>::new();
    for q in dns.query_log() {
        *by_name
            .entry(format!("{} {}", q.name, q.rtype))
            .or_default() += 1;
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// Flushes dirty pages and the file system journal, then lets the
/// machine idle for a moment.
async fn settle() {
    let synced = Command::new("sync").status().await;
    assert!(synced.is_ok_and(|s| s.success()), "sync failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// `smtp-source` with the fixed parameters, to `port`.
async fn smtp_source(p: &Params, messages: usize, port: u16, message: &Path) {
    let mut cmd = Command::new(SMTP_SOURCE);
    cmd.args(["-s", &p.sessions.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-f", FROM, "-t", TO, "-M", "client.example.org"])
        .arg("-F")
        .arg(message)
        .arg(format!("127.0.0.1:{port}"))
        .kill_on_drop(true);
    let out = postfix::bounded(RUN_LIMIT, "smtp-source", cmd.output())
        .await
        .expect("run smtp-source");
    assert!(
        out.status.success(),
        "smtp-source failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct World {
    dns: DnsServer,
    /// resolv.conf naming only `dns`, for Postfix and the peers.
    resolv_conf: PathBuf,
    sink: CountingSink,
    dir: tempfile::TempDir,
    key: PathBuf,
    message: PathBuf,
}

/// Starts the milter(s) of `kind` and waits until they listen; returns
/// them and the main.cf lines that wire them into Postfix.
async fn start_milters(w: &World, kind: Kind, round: usize) -> (Vec<Proc>, String) {
    let dir = w.dir.path();
    let tcp = || Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], postfix::free_port())));
    // A new path every time: a socket file left by the previous round
    // belongs to no one.
    let unix = |what: &str| Listen::Unix(dir.join(format!("{what}-{round}.sock")));
    let mut procs: Vec<(Proc, Listen)> = Vec::new();
    let mut extra = String::new();
    match kind {
        Kind::None => {
            extra.push_str("# The benchmark's baseline: no milters at all.\nsmtpd_milters =\n");
        }
        Kind::OpenDkim => {
            let at = tcp();
            let Listen::Tcp(addr) = at else {
                unreachable!()
            };
            let conf = dir.join("opendkim.conf");
            std::fs::write(&conf, opendkim_config(addr.port(), &w.key)).expect("opendkim.conf");
            let proc = Proc::spawn(
                Command::new(OPENDKIM).arg("-f").arg("-x").arg(&conf),
                dir.join("opendkim.log"),
            );
            procs.push((proc, at));
        }
        Kind::RspamdTcp | Kind::RspamdUnix => {
            let at = if kind.unix() { unix("rspamd") } else { tcp() };
            let rdir = dir.join("rspamd");
            let conf = dir.join("rspamd.conf");
            std::fs::write(&conf, peers::rspamd_config(&rdir, &at, w.dns.addr()))
                .expect("rspamd.conf");
            let mut cmd = postfix::with_resolv_conf(&w.resolv_conf, peers::RSPAMD);
            cmd.arg("-f")
                .args(["-u", peers::RSPAMD_USER, "-g", peers::RSPAMD_USER])
                .arg("-c")
                .arg(&conf);
            let mut proc = Proc::spawn(&mut cmd, dir.join("rspamd.stderr"));
            proc.own_log = Some(rdir.join("rspamd.log"));
            procs.push((proc, at));
        }
        Kind::OpenDkimDmarc => {
            let (dkim, dmarc) = (tcp(), tcp());
            let (Listen::Tcp(dkim_addr), Listen::Tcp(dmarc_addr)) = (&dkim, &dmarc) else {
                unreachable!()
            };
            // Lists of hosts OpenDKIM signs for and OpenDMARC ignores:
            // one documentation address, so that 127.0.0.1 is neither.
            let hosts = dir.join("not-loopback.hosts");
            std::fs::write(&hosts, "192.0.2.254\n").expect("hosts file");
            let dkim_conf = dir.join("opendkim-verify.conf");
            std::fs::write(
                &dkim_conf,
                peers::opendkim_verify_config(dkim_addr.port(), w.dns.addr().ip(), &hosts),
            )
            .expect("opendkim-verify.conf");
            let dmarc_conf = dir.join("opendmarc.conf");
            std::fs::write(
                &dmarc_conf,
                peers::opendmarc_config(dmarc_addr.port(), &hosts),
            )
            .expect("opendmarc.conf");
            let mut cmd = postfix::with_resolv_conf(&w.resolv_conf, OPENDKIM);
            cmd.arg("-f").arg("-x").arg(&dkim_conf);
            let dkim_proc = Proc::spawn(&mut cmd, dir.join("opendkim-verify.log"));
            let mut cmd = postfix::with_resolv_conf(&w.resolv_conf, peers::OPENDMARC);
            cmd.arg("-f").arg("-c").arg(&dmarc_conf);
            let dmarc_proc = Proc::spawn(&mut cmd, dir.join("opendmarc.log"));
            // OpenDKIM first: OpenDMARC reads its Authentication-Results.
            procs.push((dkim_proc, dkim));
            procs.push((dmarc_proc, dmarc));
            extra.push_str(&format!(
                "# Postfix's own DNSBL check, as such a setup has it.\nsmtpd_client_restrictions = reject_rbl_client {}\n",
                peers::DNSBL_ZONE
            ));
        }
        _ => {
            let at = if kind.unix() {
                unix(&kind.name())
            } else {
                tcp()
            };
            let conf = dir.join(format!("{}.toml", kind.name()));
            std::fs::write(&conf, daemon_config(kind, &at, w.dns.addr(), &w.key))
                .expect("daemon config");
            let proc = Proc::spawn(
                Command::new(BIN).arg("serve").arg("-c").arg(&conf),
                dir.join(format!("{}.log", kind.name())),
            );
            procs.push((proc, at));
        }
    }
    for (proc, at) in &mut procs {
        proc.wait_listening(at).await;
    }
    if !procs.is_empty() {
        let milters: Vec<String> = procs.iter().map(|(_, at)| at.postfix()).collect();
        extra.push_str(&format!("smtpd_milters = {}\n", milters.join(", ")));
    }
    // Mail through pickup is not part of the benchmark.
    extra.push_str("non_smtpd_milters =\n");
    (procs.into_iter().map(|(p, _)| p).collect(), extra)
}

async fn measure(w: &World, kind: Kind, round: usize, p: &Params) -> Row {
    let (milters, extra) = start_milters(w, kind, round).await;
    // Overridden by `extra`; the harness wants addresses.
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let wiring = Wiring {
        smtpd_milter: unused,
        non_smtpd_milter: unused,
        relay: w.sink.addr,
    };
    let pf = Postfix::start_resolving(&p.queue_base, &wiring, &extra, Some(&w.resolv_conf)).await;
    let port = if kind.to_submission() {
        pf.submission.port()
    } else {
        pf.mx.port()
    };
    let fail = |what: &str, pf: &Postfix, milters: &[Proc]| -> ! {
        panic!(
            "{}: {what}\nmilter log:\n{}\nmaillog (tail):\n{}",
            kind.name(),
            milters.iter().map(Proc::log).collect::<Vec<_>>().join("\n"),
            pf.maillog()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    // Warm-up: Postfix starts its smtpd, cleanup and smtp processes, the
    // milter its connections and resolver cache.
    w.sink.reset(kind.proof());
    smtp_source(p, p.warmup, port, &w.message).await;
    if w.sink.wait_for(p.warmup, RUN_LIMIT).await.is_none() {
        fail("the warm-up messages did not all arrive", &pf, &milters);
    }
    pf.wait_queue_empty().await;
    // What the previous configuration and the warm-up left for the disk
    // (queue files written and deleted by the thousand) is written out
    // before the clock starts. Without this, whichever configuration came
    // right after the fastest one paid for part of its file system work:
    // its Postfix spent more CPU per message (kernel lock spinning), and
    // its rate fell by up to a fifth.
    settle().await;

    w.sink.reset(kind.proof());
    w.dns.reset_stats();
    let me = std::process::id() as i32;
    let milter_cpu =
        || -> Option<f64> { (!milters.is_empty()).then(|| milters.iter().map(Proc::cpu).sum()) };
    let milter_cpu0 = milter_cpu();
    let postfix0 = postfix_cpu(&pf);
    let (harness0, children0) = cpu_times(me);
    let t0 = Instant::now();
    smtp_source(p, p.messages, port, &w.message).await;
    let accepted = t0.elapsed();
    let Some(counts) = w.sink.wait_for(p.messages, RUN_LIMIT).await else {
        fail(
            &format!(
                "only {} of {} messages arrived",
                w.sink.counts().delivered,
                p.messages
            ),
            &pf,
            &milters,
        );
    };
    let per_message = |seconds: f64| seconds * 1000.0 / p.messages as f64;
    let postfix_ms = per_message(postfix_cpu(&pf) - postfix0);
    // This process has reaped smtp-source (and nothing else) meanwhile.
    let (harness1, children1) = cpu_times(me);
    let milter_cpu = milter_cpu()
        .zip(milter_cpu0)
        .map(|(c1, c0)| per_message(c1 - c0));
    let delivered = counts.last.expect("a delivery") - t0;
    // Nothing more may come: exactly one delivery per message. A duplicate
    // would follow the last delivery closely; half a second shows none does
    // (the count is checked below).
    wait::holds_for(Duration::from_millis(500), || {
        w.sink.counts().delivered == p.messages
    })
    .await;
    let counts = Counts {
        sample: counts.sample,
        ..w.sink.counts()
    };
    if counts.delivered != p.messages {
        fail(
            &format!(
                "{} deliveries for {} messages",
                counts.delivered, p.messages
            ),
            &pf,
            &milters,
        );
    }
    drop(pf);
    for m in milters {
        m.stop().await;
    }
    Row {
        kind,
        round,
        delivered_rate: p.messages as f64 / delivered.as_secs_f64(),
        accepted_rate: p.messages as f64 / accepted.as_secs_f64(),
        postfix_cpu_ms: postfix_ms,
        milter_cpu_ms: milter_cpu,
        source_cpu_ms: per_message(children1 - children0),
        harness_cpu_ms: per_message(harness1 - harness0),
        dns_queries: w.dns.queries() as f64 / p.messages as f64,
        dns_most_asked: most_asked(&w.dns, 5),
        dnsbl_queries: w.dns.queries_for(&common::dns_server::dnsbl_name(
            "127.0.0.1".parse().expect("an address"),
            peers::DNSBL_ZONE,
        )),
        counts,
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.map_or("-".into(), |b| format!("{:.2}", a / b))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU milliseconds per message over every process that does the work.
fn total_cpu_ms(r: &Row) -> f64 {
    r.postfix_cpu_ms + r.milter_cpu_ms.unwrap_or(0.0) + r.source_cpu_ms + r.harness_cpu_ms
}

/// Each configuration against the empty policy of the same round: the
/// ratio of delivered rates, and the inverse ratio of total CPU per
/// message. On two shared cores a burst of other work moves a whole round;
/// the ratio within a round, next to the same ratio in CPU terms, shows
/// how much of a difference is the configuration and how much the machine.
fn round_ratios(rows: &[Row]) -> String {
    let mut out = String::new();
    for kind in Kind::all().into_iter().filter(|k| *k != Kind::Empty) {
        let pairs: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| {
                let e = rows
                    .iter()
                    .find(|e| e.kind == Kind::Empty && e.round == r.round)?;
                Some((
                    r.delivered_rate / e.delivered_rate,
                    total_cpu_ms(e) / total_cpu_ms(r),
                ))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let show = |v: Vec<f64>| {
            let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            let mean = geometric_mean_ci(&v).map_or(String::new(), |(m, lo, hi)| {
                format!(", geometric mean {m:.3} (95 % CI {lo:.3} to {hi:.3})")
            });
            format!("median {:.2}{mean} ({})", median(v), each.join(", "))
        };
        writeln!(
            out,
            "{} / empty, same round: rate {}; CPU per message (empty / this) {}",
            kind.name(),
            show(pairs.iter().map(|p| p.0).collect()),
            show(pairs.iter().map(|p| p.1).collect()),
        )
        .unwrap();
    }
    out
}

/// Our MX checks against each peer of the same transport, round by round:
/// ours / peer in delivered rate, peer / ours in total CPU per message and
/// in the milter's own CPU per message (every process of the peer), each as
/// the median and the geometric mean with a 95 % confidence interval.
fn peer_ratios(rows: &[Row]) -> String {
    let mut out = String::new();
    for peer in Kind::all() {
        let Some(ours) = peer.ours() else { continue };
        let pairs: Vec<(f64, f64, f64)> = rows
            .iter()
            .filter(|r| r.kind == peer)
            .filter_map(|r| {
                let o = rows.iter().find(|o| o.kind == ours && o.round == r.round)?;
                Some((
                    o.delivered_rate / r.delivered_rate,
                    total_cpu_ms(r) / total_cpu_ms(o),
                    r.milter_cpu_ms? / o.milter_cpu_ms?,
                ))
            })
            .collect();
        if pairs.is_empty() {
            if rows.iter().any(|r| r.kind == peer) {
                writeln!(
                    out,
                    "{} / {}: no ratio, {} did not run",
                    ours.name(),
                    peer.name(),
                    ours.name()
                )
                .unwrap();
            }
            continue;
        }
        let show = |v: Vec<f64>| {
            let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            let mean = geometric_mean_ci(&v).map_or(String::new(), |(m, lo, hi)| {
                format!(", geometric mean {m:.3} (95 % CI {lo:.3} to {hi:.3})")
            });
            format!("median {:.2}{mean} ({})", median(v), each.join(", "))
        };
        writeln!(
            out,
            "{o} / {p}, same round: rate (ours / peer) {}; CPU per message, all processes ({p} / {o}) {}; milter CPU per message ({p} / {o}) {}",
            show(pairs.iter().map(|p| p.0).collect()),
            show(pairs.iter().map(|p| p.1).collect()),
            show(pairs.iter().map(|p| p.2).collect()),
            o = ours.name(),
            p = peer.name(),
        )
        .unwrap();
    }
    out
}

/// One line per configuration: the median over the rounds of each figure,
/// the delivered rates of every round, and the ratios of the medians.
fn table(rows: &[Row]) -> String {
    let of = |k: Kind| -> Vec<&Row> { rows.iter().filter(|r| r.kind == k).collect() };
    let med = |k: Kind, f: &dyn Fn(&Row) -> f64| -> Option<f64> {
        let v: Vec<f64> = of(k).into_iter().map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let rate = |k: Kind| med(k, &|r: &Row| r.delivered_rate);
    let (none, empty, odkim) = (rate(Kind::None), rate(Kind::Empty), rate(Kind::OpenDkim));
    let mut out = String::new();
    out.push_str("| configuration | msg/s delivered (median) | every round | msg/s accepted | / no milter | / empty | / OpenDKIM | ours / this | CPU ms/msg: Postfix | milter (all its processes) | smtp-source | sink + DNS | DNS queries/msg |\n");
    out.push_str(
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for k in Kind::all() {
        let Some(r) = rate(k) else { continue };
        let rounds: Vec<String> = of(k)
            .iter()
            .map(|r| format!("{:.0}", r.delivered_rate))
            .collect();
        let milter = med(k, &|r: &Row| r.milter_cpu_ms.unwrap_or(f64::NAN));
        // Ours against this peer: the ratio of the median rates.
        let ours = k.ours().and_then(rate).map(|o| o / r);
        writeln!(
            out,
            "| {} | {r:.0} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.3} |",
            k.label(),
            rounds.join(", "),
            med(k, &|r: &Row| r.accepted_rate).unwrap_or_default(),
            ratio(r, none),
            ratio(r, empty),
            ratio(r, odkim),
            ours.map_or("-".into(), |o| format!("{o:.2}")),
            med(k, &|r: &Row| r.postfix_cpu_ms).unwrap_or_default(),
            milter
                .filter(|m| !m.is_nan())
                .map_or("-".into(), |m| format!("{m:.2}")),
            med(k, &|r: &Row| r.source_cpu_ms).unwrap_or_default(),
            med(k, &|r: &Row| r.harness_cpu_ms).unwrap_or_default(),
            med(k, &|r: &Row| r.dns_queries).unwrap_or_default(),
        )
        .unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_through_postfix() {
    postfix::require();
    assert!(
        Path::new(SMTP_SOURCE).exists(),
        "{SMTP_SOURCE} is missing: apt-get install postfix"
    );
    let _serial = postfix::serial().await;
    let p = Params {
        sessions: env_usize("PFBENCH_SESSIONS", 20),
        messages: env_usize("PFBENCH_MESSAGES", 5000),
        warmup: env_usize("PFBENCH_WARMUP", 200),
        queue_base: std::env::var_os("PFBENCH_QUEUE_BASE")
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from),
    };
    let rounds = env_usize("PFBENCH_ROUNDS", 3);
    let only = std::env::var("PFBENCH_ONLY").unwrap_or_default();
    let mut names: Vec<String> = Kind::all().into_iter().map(Kind::name).collect();
    names.sort();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        panic!(
            "two configurations are called {:?}: rename a PFBENCH_CUSTOM file (the name is its stem)",
            twice[0]
        );
    }
    let wanted: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if let Some(unknown) = wanted.iter().find(|o| !names.iter().any(|n| n == *o)) {
        panic!(
            "PFBENCH_ONLY names {unknown:?}, which is none of {}",
            names.join(", ")
        );
    }
    let mut kinds: Vec<Kind> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for k in Kind::all() {
        if !wanted.is_empty() && !wanted.contains(&k.name().as_str()) {
            continue;
        }
        match k.missing() {
            None => kinds.push(k),
            Some(why) => skipped.push(format!("{} ({why})", k.name())),
        }
    }

    // Not under /tmp: OpenDKIM refuses a config file or key with an
    // ancestor directory that others may write to, sticky bit or not.
    let dir = tempfile::Builder::new()
        .prefix("pfbench.")
        .tempdir_in("/run")
        .expect("tempdir in /run");
    // Postfix's smtpd (user postfix) reaches the unix sockets in here, and
    // rspamd's workers (user _rspamd) their own folder.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the benchmark's folder");
    }
    if kinds
        .iter()
        .any(|k| matches!(k, Kind::RspamdTcp | Kind::RspamdUnix))
    {
        let rdir = dir.path().join("rspamd");
        std::fs::create_dir(&rdir).expect("mkdir rspamd");
        let (uid, gid) = user_ids(peers::RSPAMD_USER);
        std::os::unix::fs::chown(&rdir, Some(uid), Some(gid)).expect("chown rspamd's folder");
    }
    let key = private_key_copy(dir.path(), "rsa2048-pkcs1.pem");
    let message = signed_message(dir.path(), &key).await;
    let dns = dns().await;
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, peers::resolv_conf(dns.addr())).expect("resolv.conf");
    let w = World {
        dns,
        resolv_conf,
        sink: CountingSink::start().await,
        message,
        key,
        dir,
    };
    let size = std::fs::metadata(&w.message).expect("message").len();
    println!(
        "\n{rounds} rounds of smtp-source -s {} -m {} (after {} to warm up), one message per session, {size} bytes ({} KiB) DKIM-signed message, through a throwaway Postfix (queue under {}) to a counting sink; DNS server on {}",
        p.sessions,
        p.messages,
        p.warmup,
        size / 1024,
        p.queue_base.display(),
        w.dns.addr()
    );
    println!("configurations: {}", names_of(&kinds));
    if skipped.is_empty() {
        println!("skipped: none");
    } else {
        println!(
            "SKIPPED: {}; to install the peers: {}",
            skipped.join(", "),
            peers::INSTALL
        );
    }
    let versions = peers::versions();
    if !versions.is_empty() {
        println!("peers installed: {versions}");
    }

    let mut rows = Vec::new();
    // The configurations take turns, round after round, so that a burst of
    // other work on the shared machine does not fall on one of them only;
    // every other round in reverse order (A B, B A, ...), so that none
    // always runs right after the same neighbour (the previous instance's
    // queue files are still being deleted and written back).
    let order = |round: usize| -> Vec<Kind> {
        let mut k = kinds.clone();
        if round.is_multiple_of(2) {
            k.reverse();
        }
        k
    };
    for (round, kind) in (1..=rounds).flat_map(|r| order(r).into_iter().map(move |k| (r, k))) {
        let row = measure(&w, kind, round, &p).await;
        println!(
            "round {round}: {:<44} {:>7.0} msg/s delivered, {:>7.0} msg/s accepted",
            kind.label(),
            row.delivered_rate,
            row.accepted_rate
        );
        if !row.dns_most_asked.is_empty() {
            println!("  DNS queries, most asked: {:?}", row.dns_most_asked);
        }
        prove(&w, kind, round, &row, &p).await;
        rows.push(row);
    }
    if !skipped.is_empty() {
        println!(
            "\nSKIPPED: {}; to install the peers: {}",
            skipped.join(", "),
            peers::INSTALL
        );
    }
    println!("\n{}", table(&rows));
    println!("{}", round_ratios(&rows));
    println!("{}", peer_ratios(&rows));
}

fn names_of(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn user_ids(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).expect("user name");
    // SAFETY: getpwnam returns a pointer to static storage or null; it is
    // read at once, before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(!pw.is_null(), "the system user {name:?} does not exist");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// Fails the run unless `row` shows that `kind`'s checks ran on every
/// message (or signed every message), from the delivered headers; the
/// sample's results are printed in the first round.
async fn prove(w: &World, kind: Kind, round: usize, row: &Row, p: &Params) {
    let sample = row.counts.sample.clone().unwrap_or_default();
    let head = sample.split("\r\n\r\n").next().unwrap_or("");
    let results: Vec<String> = header_fields(head)
        .into_iter()
        .filter(|f| {
            let f = f.to_ascii_lowercase();
            f.starts_with("authentication-results:") || f.starts_with("x-spamd-result:")
        })
        .collect();
    if !kind.proof().is_empty() {
        if round == 1 {
            println!("  sample {results:?}");
        }
        assert_eq!(
            row.counts.checked,
            p.messages,
            "{}: every message's Authentication-Results must say {:?}; the sample has {results:?}",
            kind.name(),
            kind.proof()
        );
    }
    if kind.asks_dnsbl() {
        let name = common::dns_server::dnsbl_name(
            "127.0.0.1".parse().expect("an address"),
            peers::DNSBL_ZONE,
        );
        let asked = row.dnsbl_queries;
        if round == 1 {
            println!("  DNSBL: {asked} queries for {name} during the run");
        }
        assert!(
            asked > 0,
            "{}: its DNSBL check never asked the DNS server for {name}",
            kind.name()
        );
    }
    if kind.to_submission() {
        assert_eq!(row.counts.signed, p.messages, "every message signed");
        let results = verify_dkim(&w.dns, w.dir.path(), &sample).await;
        if round == 1 {
            println!("  sample verified: {results}");
        }
        assert!(
            results.contains(&format!(
                "dkim=pass header.d=example.org header.s={OUT_SELECTOR}"
            )),
            "the new signature verifies: {results}"
        );
    }
}
