//! The deployment files under contrib/, checked with the tools that read
//! them where those tools exist here, and as text where they do not.
//!
//! - contrib/systemd/dispatch-milter.service: `systemd-analyze verify` (with
//!   the built binary in place of /usr/local/bin/dispatch-milter), also with
//!   the commented-out chroot lines switched on, and `systemd-analyze
//!   security --offline=yes` against an exposure threshold.
//! - contrib/postfix/*.snippet and contrib/docker/postfix/{main,master}.cf:
//!   `postconf -c DIR -n / -M / -P` on a temporary configuration directory,
//!   with no warnings allowed (an unknown parameter name or a duplicate is a
//!   warning), and the values checked against milter-config.toml.
//! - contrib/sendmail/dispatch-milter.mc: the INPUT_MAIL_FILTER line as text,
//!   then expanded with m4 and sendmail-cf's cf.m4 into a sendmail.cf.
//! - contrib/docker/config/milter-config.toml: `dispatch-milter check`.
//!
//! The tests that need systemd-analyze, postconf, or m4 with sendmail-cf
//! are `#[ignore]`d with what to install (tests/common/tools.rs).
//!
//! Not run here: `docker build` and `docker compose` (no Docker engine in CI).
//! The Dockerfiles are checked instruction by instruction as text, and
//! docker-compose.yml is read with the small YAML-subset reader below (plus
//! PyYAML, if python3 has it, as a cross-check).

use crate::common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = "contrib/systemd/dispatch-milter.service";
const INSTALLED_BIN: &str = "/usr/local/bin/dispatch-milter";
/// The highest `systemd-analyze security` exposure the unit may have (the
/// unit scores 1.7 with systemd 252; newer versions add tests).
const MAX_EXPOSURE: f64 = 2.5;
/// A pipeline's `deadline` when it sets none (docs/configuration.md).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// `shutdown_grace` when [server] sets none.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------- helpers ---

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn duration(s: &str) -> Duration {
    humantime::parse_duration(s.trim()).unwrap_or_else(|e| panic!("not a duration {s:?}: {e}"))
}

/// A Postfix time value: a number with an optional unit (default seconds).
fn postfix_time(s: &str) -> Duration {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|e| panic!("not a Postfix time {s:?}: {e}"));
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 604_800,
        _ => panic!("not a Postfix time unit in {s:?}"),
    };
    Duration::from_secs(n * per)
}

fn shipped_config() -> toml::Table {
    read("milter-config.toml")
        .parse()
        .expect("milter-config.toml is TOML")
}

/// The largest stage deadline of any pipeline in the configuration.
fn largest_deadline(config: &toml::Table) -> Duration {
    config
        .get("pipelines")
        .and_then(|p| p.as_table())
        .expect("pipelines")
        .values()
        .map(|p| {
            p.get("deadline")
                .and_then(|d| d.as_str())
                .map(duration)
                .unwrap_or(DEFAULT_DEADLINE)
        })
        .max()
        .expect("at least one pipeline")
}

/// The pipeline a connection with this {daemon_name} gets on a listener
/// without a pipeline of its own: the first that lists the name, otherwise
/// the first in the file. (The toml crate keeps the file's order only with
/// its preserve_order feature, so the order is read from the text.)
fn pipeline_for(config_text: &str, config: &toml::Table, daemon_name: &str) -> String {
    let order: Vec<String> = config_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[pipelines."))
        .filter_map(|l| l.split(['.', ']']).next())
        .fold(Vec::new(), |mut names, n| {
            if !names.iter().any(|m| m == n) {
                names.push(n.to_string());
            }
            names
        });
    let pipelines = config["pipelines"].as_table().expect("pipelines");
    order
        .iter()
        .find(|name| {
            pipelines[name.as_str()]
                .get("daemon_names")
                .and_then(|d| d.as_array())
                .is_some_and(|d| d.iter().any(|v| v.as_str() == Some(daemon_name)))
        })
        .unwrap_or(&order[0])
        .clone()
}

// ------------------------------------------------------------- systemd ---

/// The unit with the binary path replaced by the built binary, which
/// `systemd-analyze verify` requires to exist, written as
/// DIR/dispatch-milter.service.
fn unit_in(dir: &Path, unit: &str) -> PathBuf {
    assert!(unit.contains(INSTALLED_BIN));
    let file = dir.join("dispatch-milter.service");
    std::fs::write(&file, unit.replace(INSTALLED_BIN, BIN)).expect("write the unit");
    file
}

fn verify(analyze: &Path, file: &Path, what: &str) {
    let out = Command::new(analyze)
        .arg("verify")
        .arg(file)
        .output()
        .expect("run systemd-analyze verify");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // Lines about other units (the environment) are shown but do not fail
    // the test; anything about this unit does (unknown keys, bad values,
    // missing programs are warnings with exit status 0).
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("dispatch-milter"))
        .collect();
    if !all.trim().is_empty() {
        println!("systemd-analyze verify ({what}):\n{all}");
    }
    assert!(
        out.status.success() && ours.is_empty(),
        "{}",
        describe(&format!("systemd-analyze verify ({what})"), &out)
    );
}

#[test]
#[ignore = "needs systemd-analyze: apt-get install systemd"]
fn systemd_unit_verifies() {
    let analyze = common::tools::require_program(
        "systemd-analyze",
        &["/usr/bin", "/bin"],
        "apt-get install systemd",
    );
    let unit = read(UNIT);
    let dir = tempfile::tempdir().expect("tempdir");
    verify(&analyze, &unit_in(dir.path(), &unit), "as shipped");

    // The chroot option: two commented-out lines, switched on.
    let chroot_lines = ["#ExecStartPre=+/usr/bin/install ", "#ReadWritePaths="];
    let mut switched = 0;
    let chroot: String = unit
        .lines()
        .map(|l| {
            if chroot_lines.iter().any(|p| l.starts_with(p)) {
                switched += 1;
                &l[1..]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(switched, 2, "the unit's commented-out chroot lines");
    let dir = tempfile::tempdir().expect("tempdir");
    verify(
        &analyze,
        &unit_in(dir.path(), &chroot),
        "with the chroot lines",
    );
}

#[test]
#[ignore = "needs systemd-analyze: apt-get install systemd"]
fn systemd_unit_sandbox_exposure() {
    let analyze = common::tools::require_program(
        "systemd-analyze",
        &["/usr/bin", "/bin"],
        "apt-get install systemd",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = unit_in(dir.path(), &read(UNIT));
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&file)
        .output()
        .expect("run systemd-analyze security");
    let stdout = text(&out.stdout);
    let Some(level) = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
    else {
        // systemd before 250 has no --offline.
        assert!(
            !out.status.success(),
            "{}",
            describe("systemd-analyze security", &out)
        );
        println!(
            "systemd-analyze security --offline=yes unsupported here, skipping: {}",
            text(&out.stderr).trim()
        );
        return;
    };
    let score: f64 = level
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {level:?}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(
        score <= MAX_EXPOSURE,
        "the unit's exposure {score} is above {MAX_EXPOSURE}:\n{stdout}"
    );
}

/// The settings the unit must keep, whatever the tools say.
#[test]
fn systemd_unit_settings() {
    let unit = read(UNIT);
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let values = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |key: &str| -> &str {
        match values(key).as_slice() {
            [v] => v,
            other => panic!("{key}= set {} times in {UNIT}: {other:?}", other.len()),
        }
    };
    let config = "/etc/dispatch-milter/milter-config.toml";
    assert_eq!(one("User"), "dispatch-milter");
    assert_eq!(one("Group"), "dispatch-milter");
    assert_eq!(one("SupplementaryGroups"), "postfix");
    assert_eq!(one("RuntimeDirectory"), "dispatch-milter");
    assert_eq!(
        one("ExecStartPre"),
        format!("{INSTALLED_BIN} check -c {config}")
    );
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BIN} serve -c {config}")
    );
    assert_eq!(
        values("ExecReload"),
        [
            format!("{INSTALLED_BIN} check -c {config}").as_str(),
            "/bin/kill -HUP $MAINPID"
        ]
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("RestartPreventExitStatus"), "78");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", ""),
        ("ReadOnlyPaths", "/etc/dispatch-milter"),
        ("UMask", "0027"),
    ] {
        assert_eq!(one(key), value, "{key}= in {UNIT}");
    }
    // systemd must not SIGKILL a daemon that is still within its grace
    // period: TimeoutStopSec above the shipped shutdown_grace.
    let grace = shipped_config()
        .get("server")
        .and_then(|s| s.get("shutdown_grace"))
        .and_then(|g| g.as_str())
        .map(duration)
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let stop = duration(one("TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec={stop:?} must be above shutdown_grace {grace:?}"
    );
}

// ------------------------------------------------------------- postfix ---

/// `postconf -c DIR ARGS`: must succeed without a single warning.
fn postconf(postconf: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(postconf)
        .arg("-c")
        .arg(dir)
        .args(args)
        .env_remove("MAIL_CONFIG")
        .output()
        .expect("run postconf");
    let what = format!("postconf -c {} {}", dir.display(), args.join(" "));
    assert!(out.status.success(), "{}", describe(&what, &out));
    assert!(
        out.stderr.is_empty(),
        "postconf warns (an unknown parameter, a duplicate, ...):\n{}",
        describe(&what, &out)
    );
    text(&out.stdout)
}

/// `name = value` lines of `postconf -n` or `-P`.
fn settings(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| {
            l.split_once(" = ")
                .or_else(|| l.strip_suffix(" =").map(|n| (n, "")))
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A configuration directory holding these main.cf and master.cf.
fn postfix_dir(main_cf: &str, master_cf: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("main.cf"), main_cf).expect("write main.cf");
    std::fs::write(dir.path().join("master.cf"), master_cf).expect("write master.cf");
    dir
}

fn postconf_tool() -> PathBuf {
    common::tools::require_program(
        "postconf",
        &["/usr/sbin", "/sbin"],
        "apt-get install postfix",
    )
}

/// Every `-o` in `postconf -M` output is `name=value`, with no space.
fn assert_o_options(master: &str, file: &str) {
    for line in master.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w == "-o" {
                let next = words.get(i + 1).copied().unwrap_or("");
                assert!(
                    next.contains('=') && !next.starts_with('=') && !next.ends_with('='),
                    "{file}: -o must be followed by name=value with no spaces: {line}"
                );
            }
        }
    }
}

#[test]
#[ignore = "needs postconf: apt-get install postfix"]
fn postfix_snippets_parse() {
    let postconf_bin = postconf_tool();
    let main_cf = read("contrib/postfix/main.cf.snippet");
    let master_cf = read("contrib/postfix/master.cf.snippet");
    let dir = postfix_dir(&main_cf, &master_cf);

    let main = settings(&postconf(&postconf_bin, dir.path(), &["-n"]));
    for (key, value) in &main {
        assert!(
            !value.contains('#'),
            "main.cf.snippet: a `#` in the value of {key} (Postfix has no trailing comments): {value}"
        );
    }
    let get = |k: &str| {
        main.get(k)
            .unwrap_or_else(|| panic!("main.cf.snippet sets no {k}"))
            .as_str()
    };
    assert_eq!(get("milter_default_action"), "tempfail");
    assert_eq!(get("milter_protocol"), "6");

    // The listeners: the shipped one for smtpd, a second one for sendmail(1).
    let config_text = read("milter-config.toml");
    let config = shipped_config();
    let shipped: Vec<String> = config["server"]["listen"]
        .as_array()
        .expect("[[server.listen]]")
        .iter()
        .filter_map(|l| l.get("address").and_then(|a| a.as_str()))
        .map(str::to_string)
        .collect();
    assert!(
        shipped.iter().any(|a| a == get("smtpd_milters")),
        "smtpd_milters = {} is not a listener of milter-config.toml: {shipped:?}",
        get("smtpd_milters")
    );
    assert_ne!(get("non_smtpd_milters"), get("smtpd_milters"));
    assert!(get("non_smtpd_milters").starts_with("inet:127.0.0.1:"));

    // The timeouts fit the daemon: answers within the deadline, PROGRESS at
    // end of message at most 10 s apart.
    let deadline = largest_deadline(&config);
    let command = postfix_time(get("milter_command_timeout"));
    let content = postfix_time(get("milter_content_timeout"));
    let connect = postfix_time(get("milter_connect_timeout"));
    assert!(
        command >= deadline + Duration::from_secs(5),
        "milter_command_timeout {command:?} must stay a few seconds above the deadline {deadline:?}"
    );
    assert!(
        content > Duration::from_secs(10),
        "milter_content_timeout {content:?} must be above the PROGRESS interval"
    );
    assert!(connect > Duration::ZERO && connect <= command);

    // master.cf: valid lines, -o without spaces, and daemon names that pick
    // the intended pipelines of the shipped configuration.
    let master = postconf(&postconf_bin, dir.path(), &["-M"]);
    assert_o_options(&master, "master.cf.snippet");
    let params = settings(&postconf(&postconf_bin, dir.path(), &["-P"]));
    for (service, pipeline) in [
        ("smtp", "mx"),
        ("submission", "submission"),
        ("submissions", "submission"),
    ] {
        let key = format!("{service}/inet/milter_macro_daemon_name");
        let name = params
            .get(&key)
            .unwrap_or_else(|| panic!("master.cf.snippet sets no {key}"));
        assert_eq!(
            pipeline_for(&config_text, &config, name),
            pipeline,
            "{service} (-o milter_macro_daemon_name={name}) must get pipeline {pipeline}"
        );
    }
}

/// The commented-out alternatives of main.cf.snippet (`#name = value` lines
/// in a group) are valid too: each group, switched on in place of the active
/// lines it replaces, parses without a warning.
#[test]
#[ignore = "needs postconf: apt-get install postfix"]
fn postfix_snippet_alternatives_parse() {
    let postconf_bin = postconf_tool();
    let main_cf = read("contrib/postfix/main.cf.snippet");
    let master_cf = read("contrib/postfix/master.cf.snippet");
    let is_setting = |l: &str| {
        l.strip_prefix('#').is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_lowercase())
                && rest.split_once(" = ").is_some_and(|(name, _)| {
                    name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
        })
    };
    let mut groups: Vec<Vec<&str>> = Vec::new();
    let mut previous = false;
    for line in main_cf.lines() {
        let setting = is_setting(line);
        if setting {
            if !previous {
                groups.push(Vec::new());
            }
            groups.last_mut().expect("group").push(&line[1..]);
        }
        previous = setting;
    }
    assert_eq!(
        groups.len(),
        2,
        "main.cf.snippet: the two UNIX socket options"
    );
    for group in groups {
        let names: Vec<&str> = group
            .iter()
            .filter_map(|l| l.split_once(" = ").map(|(n, _)| n))
            .collect();
        let variant: String = main_cf
            .lines()
            .filter(|l| !names.iter().any(|n| l.starts_with(&format!("{n} = "))))
            .chain(group.iter().copied())
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = postfix_dir(&variant, &master_cf);
        let main = settings(&postconf(&postconf_bin, dir.path(), &["-n"]));
        for line in &group {
            let (name, value) = line.split_once(" = ").expect("name = value");
            assert_eq!(main.get(name).map(String::as_str), Some(value));
            assert!(
                value.starts_with("unix:/"),
                "{name}: a UNIX socket option: {value}"
            );
        }
    }
}

#[test]
#[ignore = "needs postconf: apt-get install postfix"]
fn postfix_container_config_parses() {
    let postconf_bin = postconf_tool();
    let dir = path("contrib/docker/postfix");
    // postconf -c reads the directory in place; copy it so that nothing is
    // ever written next to the sources.
    let copy = postfix_dir(
        &read("contrib/docker/postfix/main.cf"),
        &read("contrib/docker/postfix/master.cf"),
    );
    assert!(dir.join("Dockerfile").is_file());
    let main = settings(&postconf(&postconf_bin, copy.path(), &["-n"]));
    let master = postconf(&postconf_bin, copy.path(), &["-M"]);
    assert_o_options(&master, "contrib/docker/postfix/master.cf");
    // No chroot anywhere: the milter's name must resolve normally.
    for line in master.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(4), Some(&"n"), "chroot column: {line}");
    }
    assert_eq!(main["smtpd_milters"], "inet:dispatch-milter:7357");
    assert_eq!(main["non_smtpd_milters"], "inet:dispatch-milter:7358");
    assert_eq!(main["milter_default_action"], "tempfail");
    let deadline = DEFAULT_DEADLINE;
    assert!(postfix_time(&main["milter_command_timeout"]) >= deadline + Duration::from_secs(5));

    // The container's milter configuration listens on those ports, the
    // second one bound to a pipeline that refuses only at end of message.
    let config: toml::Table = read("contrib/docker/config/milter-config.toml")
        .parse()
        .expect("TOML");
    let listeners = config["server"]["listen"].as_array().expect("listeners");
    let address = |l: &toml::Value| l["address"].as_str().expect("address").to_string();
    assert_eq!(address(&listeners[0]), "inet:0.0.0.0:7357");
    assert!(listeners[0].get("pipeline").is_none());
    assert_eq!(address(&listeners[1]), "inet:0.0.0.0:7358");
    let local = listeners[1]["pipeline"].as_str().expect("pipeline");
    assert_eq!(
        config["pipelines"][local]["refuse_at_eom"].as_bool(),
        Some(true),
        "the non_smtpd_milters listener's pipeline needs refuse_at_eom = true"
    );
}

// ------------------------------------------------------------ sendmail ---

const SENDMAIL_FILTER: &str =
    "INPUT_MAIL_FILTER(`dispatch-milter', `S=inet:7357@127.0.0.1, F=T, T=C:30s;S:30s;R:30s;E:5m')";

#[test]
fn sendmail_mc_has_the_filter() {
    let mc = read("contrib/sendmail/dispatch-milter.mc");
    let active: Vec<&str> = mc
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("dnl"))
        .collect();
    assert_eq!(
        active,
        [SENDMAIL_FILTER],
        "the .mc's only active line is the INPUT_MAIL_FILTER"
    );
    let equates = SENDMAIL_FILTER
        .split_once(", `")
        .and_then(|(_, rest)| rest.strip_suffix("')"))
        .expect("the equates");
    let equates: BTreeMap<&str, &str> = equates
        .split(", ")
        .filter_map(|e| e.split_once('='))
        .collect();
    assert_eq!(equates["F"], "T", "tempfail when the milter is unreachable");
    // S= is the shipped listener, written port@host.
    let (port, host) = equates["S"]
        .strip_prefix("inet:")
        .and_then(|s| s.split_once('@'))
        .expect("S=inet:PORT@HOST");
    let listener = format!("inet:{host}:{port}");
    let config = shipped_config();
    assert!(
        config["server"]["listen"]
            .as_array()
            .expect("listeners")
            .iter()
            .any(|l| l["address"].as_str() == Some(listener.as_str())),
        "S= {listener} is not a listener of milter-config.toml"
    );
    // R (each answer) above every deadline.
    let timeouts: BTreeMap<&str, &str> = equates["T"]
        .split(';')
        .filter_map(|t| t.split_once(':'))
        .collect();
    assert!(
        duration(timeouts["R"]) >= largest_deadline(&config) + Duration::from_secs(5),
        "R: must be above the deadline"
    );
    assert!(duration(timeouts["E"]) > Duration::from_secs(10));
}

#[test]
#[ignore = "needs m4 and sendmail-cf: apt-get install m4 sendmail-cf"]
fn sendmail_mc_expands() {
    let m4 = common::tools::require_program("m4", &["/usr/bin"], "apt-get install m4");
    let cf_m4 = Path::new("/usr/share/sendmail/cf/m4/cf.m4");
    common::tools::require(
        cf_m4.is_file(),
        "needs sendmail-cf: apt-get install sendmail-cf",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mc = dir.path().join("sendmail.mc");
    std::fs::write(
        &mc,
        format!(
            "include(`{}')dnl\nOSTYPE(`linux')dnl\ninclude(`{}')dnl\nMAILER(`local')dnl\nMAILER(`smtp')dnl\n",
            cf_m4.display(),
            path("contrib/sendmail/dispatch-milter.mc").display()
        ),
    )
    .expect("write sendmail.mc");
    let out = Command::new(m4).arg(&mc).output().expect("run m4");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        describe("m4 sendmail.mc", &out)
    );
    let cf = text(&out.stdout);
    assert!(
        cf.lines()
            .any(|l| l == "Xdispatch-milter, S=inet:7357@127.0.0.1, F=T, T=C:30s;S:30s;R:30s;E:5m"),
        "sendmail.cf has no X line for the filter"
    );
    assert!(
        cf.lines()
            .any(|l| l == "O InputMailFilters=dispatch-milter"),
        "sendmail.cf does not enable the filter"
    );
}

// -------------------------------------------------------------- docker ---

/// A Dockerfile's instructions: comments dropped, continuation lines joined,
/// the keyword upper-cased.
fn instructions(rel: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(rel).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').expect("INSTRUCTION args");
                out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    assert!(current.is_empty(), "{rel} ends in a continuation line");
    out
}

fn args_of<'a>(instructions: &'a [(String, String)], keyword: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn dockerfile_has_the_required_instructions() {
    let rel = "contrib/docker/Dockerfile";
    let ins = instructions(rel);
    let from = args_of(&ins, "FROM");
    assert_eq!(from.len(), 2, "{rel}: a build stage and a runtime stage");
    let build: Vec<&str> = from[0].split_whitespace().collect();
    assert!(
        matches!(build.as_slice(), [image, as_, "build"] if image.starts_with("rust:") && as_.eq_ignore_ascii_case("as")),
        "{rel}: the first stage is `FROM rust:... AS build`: {}",
        from[0]
    );
    assert_eq!(from[1], "debian:bookworm-slim", "{rel}: the runtime stage");
    // glibc: the build stage must not be newer than the runtime.
    assert!(
        build[0].ends_with("-bookworm"),
        "{rel}: build on bookworm like the runtime stage: {}",
        build[0]
    );
    let runtime_start = ins
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("runtime FROM");
    let runtime = &ins[runtime_start..];

    let user = args_of(runtime, "USER");
    assert_eq!(user.len(), 1, "{rel}: one USER in the runtime stage");
    let uid = user[0].split(':').next().unwrap_or("");
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "{rel}: USER must not be root: {}",
        user[0]
    );
    assert!(
        args_of(runtime, "RUN")
            .iter()
            .any(|r| r.contains("useradd") && r.contains(&format!("--uid {uid}"))),
        "{rel}: USER {uid} is created with useradd"
    );
    assert_eq!(
        args_of(runtime, "CMD"),
        [r#"["dispatch-milter", "serve", "-c", "/etc/dispatch-milter/milter-config.toml"]"#]
    );
    let healthcheck = args_of(runtime, "HEALTHCHECK");
    assert!(
        healthcheck.len() == 1
            && healthcheck[0].contains(
                r#"CMD ["dispatch-milter", "check", "-c", "/etc/dispatch-milter/milter-config.toml"]"#
            ),
        "{rel}: HEALTHCHECK runs `check`: {healthcheck:?}"
    );
    assert_eq!(args_of(runtime, "EXPOSE"), ["7357"]);
    assert_eq!(args_of(runtime, "VOLUME"), [r#"["/etc/dispatch-milter"]"#]);
    let copies = args_of(runtime, "COPY");
    assert!(
        copies.contains(&"--from=build /out/dispatch-milter /usr/local/bin/dispatch-milter"),
        "{rel}: the binary is copied from the build stage: {copies:?}"
    );
    // The build stage builds the release binary from the locked dependencies.
    assert!(
        args_of(&ins[..runtime_start], "RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "{rel}: cargo build --release --locked"
    );

    // Every file copied from the build context exists and passes
    // Dockerfile.dockerignore (an allow list: `*`, then `!path` lines).
    let ignore = read("contrib/docker/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(ignore.lines().any(|l| l == "*"));
    for copy in args_of(&ins, "COPY") {
        if copy.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(path(source).exists(), "{rel}: COPY {source}: no such path");
            assert!(
                allowed.contains(&source),
                "{rel}: COPY {source} is excluded by Dockerfile.dockerignore"
            );
        }
    }
    for allowed in allowed {
        assert!(
            path(allowed).exists(),
            "Dockerfile.dockerignore: !{allowed}"
        );
    }
}

#[test]
fn postfix_dockerfile_has_the_required_instructions() {
    let rel = "contrib/docker/postfix/Dockerfile";
    let ins = instructions(rel);
    assert_eq!(args_of(&ins, "FROM"), ["debian:bookworm-slim"]);
    assert!(
        args_of(&ins, "RUN")
            .iter()
            .any(|r| r.contains("apt-get install") && r.contains("postfix")),
        "{rel}: installs postfix"
    );
    assert_eq!(args_of(&ins, "COPY"), ["main.cf master.cf /etc/postfix/"]);
    for f in ["main.cf", "master.cf"] {
        assert!(path("contrib/docker/postfix").join(f).is_file());
    }
    assert_eq!(args_of(&ins, "CMD"), [r#"["postfix", "start-fg"]"#]);
}

#[test]
fn container_config_checks() {
    let out = Command::new(BIN)
        .args(["check", "-c", "contrib/docker/config/milter-config.toml"])
        .current_dir(ROOT)
        .env_remove("RUST_LOG")
        .output()
        .expect("run dispatch-milter check");
    assert!(
        out.status.success(),
        "{}",
        describe(
            "dispatch-milter check -c contrib/docker/config/milter-config.toml",
            &out
        )
    );
}

// -------------------------------------------------------------- compose ---

/// The YAML that docker-compose.yml may use: block mappings, block
/// sequences of scalars, plain and quoted scalars, `{}` and `[]`, and `#`
/// comments. Anything else is an error, so the file must stay in this
/// subset (no new crate needed to read it).
#[derive(Debug, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, keys: &[&str]) -> &Yaml {
        keys.iter().fold(self, |node, key| {
            node.get(key)
                .unwrap_or_else(|| panic!("docker-compose.yml has no {}", keys.join(".")))
        })
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn strs(&self) -> Vec<&str> {
        match self {
            Yaml::Seq(items) => items.iter().map(Yaml::str).collect(),
            other => panic!("not a sequence: {other:?}"),
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Yaml::Map(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            other => panic!("not a mapping: {other:?}"),
        }
    }
}

struct YamlLine {
    number: usize,
    indent: usize,
    text: String,
}

fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous == ' ' => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

fn yaml_lines(source: &str) -> Result<Vec<YamlLine>, String> {
    let mut lines = Vec::new();
    for (i, raw) in source.lines().enumerate() {
        let number = i + 1;
        let content = strip_comment(raw).trim_end();
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start_matches(' ').len();
        if content[indent..].starts_with('\t') {
            return Err(format!("line {number}: a tab in the indentation"));
        }
        lines.push(YamlLine {
            number,
            indent,
            text: content[indent..].to_string(),
        });
    }
    Ok(lines)
}

fn yaml_scalar(s: &str, number: usize) -> Result<Yaml, String> {
    let s = s.trim();
    let quoted = |q: char| {
        s.strip_prefix(q)
            .and_then(|r| r.strip_suffix(q))
            .filter(|inner| !inner.contains(q))
    };
    if let Some(inner) = quoted('"').or_else(|| quoted('\'')) {
        return Ok(Yaml::Str(inner.to_string()));
    }
    match s {
        "{}" => Ok(Yaml::Map(Vec::new())),
        "[]" => Ok(Yaml::Seq(Vec::new())),
        _ if s.starts_with(['{', '[', '"', '\'', '&', '*', '!', '|', '>', '%', '@', '`'])
            || s.contains(": ")
            || s.ends_with(':') =>
        {
            Err(format!("line {number}: outside the YAML subset: {s}"))
        }
        _ => Ok(Yaml::Str(s.to_string())),
    }
}

fn yaml_block(lines: &[YamlLine], i: &mut usize, indent: usize) -> Result<Yaml, String> {
    let is_item = |l: &YamlLine| l.text == "-" || l.text.starts_with("- ");
    if is_item(&lines[*i]) {
        let mut items = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && is_item(&lines[*i]) {
            let line = &lines[*i];
            items.push(yaml_scalar(&line.text[1..], line.number)?);
            *i += 1;
        }
        if *i < lines.len() && lines[*i].indent > indent {
            return Err(format!("line {}: unexpected indentation", lines[*i].number));
        }
        return Ok(Yaml::Seq(items));
    }
    let mut entries: Vec<(String, Yaml)> = Vec::new();
    while *i < lines.len() && lines[*i].indent == indent && !is_item(&lines[*i]) {
        let line = &lines[*i];
        let (key, rest) = match line.text.split_once(": ") {
            Some((k, r)) => (k, r.trim()),
            None => match line.text.strip_suffix(':') {
                Some(k) => (k, ""),
                None => return Err(format!("line {}: expected `key:`", line.number)),
            },
        };
        let key = match yaml_scalar(key, line.number)? {
            Yaml::Str(k) => k,
            _ => return Err(format!("line {}: a key must be a scalar", line.number)),
        };
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("line {}: duplicate key {key}", line.number));
        }
        *i += 1;
        let value = if !rest.is_empty() {
            yaml_scalar(rest, line.number)?
        } else if *i < lines.len()
            && (lines[*i].indent > indent || (lines[*i].indent == indent && is_item(&lines[*i])))
        {
            let child = lines[*i].indent;
            yaml_block(lines, i, child)?
        } else {
            Yaml::Str(String::new())
        };
        entries.push((key, value));
    }
    if *i < lines.len() && lines[*i].indent > indent {
        return Err(format!("line {}: unexpected indentation", lines[*i].number));
    }
    Ok(Yaml::Map(entries))
}

fn parse_yaml(source: &str) -> Result<Yaml, String> {
    let lines = yaml_lines(source)?;
    if lines.is_empty() {
        return Err("empty document".into());
    }
    let mut i = 0;
    let doc = yaml_block(&lines, &mut i, lines[0].indent)?;
    match lines.get(i) {
        Some(l) => Err(format!("line {}: unexpected dedent", l.number)),
        None => Ok(doc),
    }
}

#[test]
fn yaml_subset_reader() {
    let doc = parse_yaml("a:\n  b: \"x: y\" # c\n  c:\n    - 1\n    - '2'\nd: {}\n").unwrap();
    assert_eq!(doc.at(&["a", "b"]).str(), "x: y");
    assert_eq!(doc.at(&["a", "c"]).strs(), ["1", "2"]);
    assert_eq!(doc.at(&["d"]), &Yaml::Map(Vec::new()));
    for bad in [
        "a:\n\tb: 1\n",
        "a: 1\na: 2\n",
        "a:\n  b: 1\n c: 2\n",
        "a: {b: 1}\n",
        "a:\n  - b: 1\n",
        "a: b: c\n",
    ] {
        assert!(parse_yaml(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn compose_file_structure() {
    let rel = "contrib/docker/docker-compose.yml";
    let source = read(rel);
    let doc = parse_yaml(&source).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(doc.keys(), ["name", "services", "networks", "volumes"]);
    assert_eq!(doc.at(&["services"]).keys(), ["dispatch-milter", "postfix"]);
    let compose_dir = path("contrib/docker");

    let milter = doc.at(&["services", "dispatch-milter"]);
    let context = compose_dir.join(milter.at(&["build", "context"]).str());
    assert!(
        context.join("Cargo.toml").is_file(),
        "{rel}: the milter's build context is the repository root"
    );
    assert!(
        context
            .join(milter.at(&["build", "dockerfile"]).str())
            .is_file()
    );
    assert_eq!(
        milter.at(&["volumes"]).strs(),
        ["./config:/etc/dispatch-milter:ro"]
    );
    assert!(compose_dir.join("config/milter-config.toml").is_file());
    assert_eq!(milter.at(&["networks"]).strs(), ["milter"]);
    assert!(
        milter.get("ports").is_none(),
        "{rel}: the milter's ports are never published"
    );
    assert_eq!(milter.at(&["restart"]).str(), "unless-stopped");
    assert_eq!(milter.at(&["init"]).str(), "true");
    assert_eq!(milter.at(&["read_only"]).str(), "true");
    assert_eq!(milter.at(&["cap_drop"]).strs(), ["ALL"]);
    let grace = duration(milter.at(&["stop_grace_period"]).str());
    assert!(
        grace > DEFAULT_SHUTDOWN_GRACE,
        "{rel}: stop_grace_period above shutdown_grace"
    );

    let postfix = doc.at(&["services", "postfix"]);
    let context = compose_dir.join(postfix.at(&["build", "context"]).str());
    assert!(context.join("Dockerfile").is_file());
    assert_eq!(postfix.at(&["restart"]).str(), "unless-stopped");
    assert_eq!(postfix.at(&["depends_on"]).strs(), ["dispatch-milter"]);
    let networks = postfix.at(&["networks"]).strs();
    assert!(networks.contains(&"milter"));
    for port in postfix.at(&["ports"]).strs() {
        assert!(
            port.starts_with("127.0.0.1:"),
            "{rel}: published on loopback only: {port}"
        );
    }

    assert_eq!(doc.at(&["networks", "milter", "internal"]).str(), "true");
    let declared = doc.at(&["networks"]).keys();
    for service in ["dispatch-milter", "postfix"] {
        for network in doc.at(&["services", service, "networks"]).strs() {
            assert!(
                declared.contains(&network),
                "{rel}: network {network} is not declared"
            );
        }
    }
    let volumes = doc.at(&["volumes"]).keys();
    for mount in postfix.at(&["volumes"]).strs() {
        let name = mount.split(':').next().unwrap_or("");
        assert!(
            volumes.contains(&name),
            "{rel}: volume {name} is not declared"
        );
    }

    // A full YAML parser as a cross-check, when python3 has PyYAML; it is
    // not required (the reader above is).
    match Command::new("python3")
        .args(["-c", "import sys, yaml; yaml.safe_load(open(sys.argv[1]))"])
        .arg(path(rel))
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) if text(&out.stderr).contains("No module named") => {
            println!("python3 has no yaml module; {rel} checked by the subset reader only");
        }
        Ok(out) => panic!("{}", describe(&format!("PyYAML on {rel}"), &out)),
        Err(_) => println!("no python3; {rel} checked by the subset reader only"),
    }
}
