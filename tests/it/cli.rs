//! The command line as an administrator uses it: `check` on the shipped and on
//! broken configurations, and `test` on sample messages against the shipped
//! milter-config.toml, read through `--json` and the human report.

use serde_json::Value;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dispatch-milter");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// sysexits' EX_CONFIG.
const EXIT_CONFIG: i32 = 78;

/// Run the binary from the package root, so relative paths in arguments and
/// in messages are the ones an administrator would type and see.
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "dispatch-milter {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `test` arguments for the shipped configuration: the pipeline, the
/// envelope, extra flags, then the message file.
fn test_args<'a>(
    pipeline: &'a str,
    from: &'a str,
    to: &[&'a str],
    extra: &[&'a str],
    message: &'a str,
) -> Vec<&'a str> {
    let mut args = vec![
        "test",
        "-c",
        "milter-config.toml",
        "--pipeline",
        pipeline,
        "--client-ip",
        "192.0.2.10",
        "--from",
        from,
    ];
    for t in to {
        args.extend(["--to", t]);
    }
    args.extend_from_slice(extra);
    args.push(message);
    args
}

/// Run `test --json` and return the parsed object, after checking the shape
/// every report shares.
fn test_json(pipeline: &str, from: &str, to: &[&str], extra: &[&str], message: &str) -> Value {
    let mut args = test_args(pipeline, from, to, extra, message);
    args.insert(1, "--json");
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", describe(&args, &out)));
    assert_shape(&v);
    v
}

/// The keys the documentation promises, whatever the scenario.
fn assert_shape(v: &Value) {
    assert!(v["verdict"].is_string(), "verdict: {v:#}");
    for r in array(v, "recipients") {
        assert!(r["address"].is_string(), "recipient without address: {r:#}");
        let outcome = r["outcome"].as_str().expect("recipient outcome");
        if outcome != "accept" {
            let reply = &r["reply"];
            assert!(
                reply["code"].is_u64() && reply["status"].is_string() && reply["text"].is_string(),
                "refused recipient without a full reply: {r:#}"
            );
        }
    }
    for c in array(v, "checks") {
        assert!(c["name"].is_string(), "check without name: {c:#}");
        assert!(c["result"].is_string(), "check without result: {c:#}");
        assert!(c["action"].is_string(), "check without action: {c:#}");
        let ms = c["elapsed_ms"].as_f64().expect("elapsed_ms is a number");
        assert!(ms >= 0.0, "negative elapsed_ms: {c:#}");
    }
    for e in array(v, "edits") {
        assert!(e["kind"].is_string(), "edit without kind: {e:#}");
    }
}

fn array<'v>(v: &'v Value, key: &str) -> &'v Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array: {v:#}"))
}

fn recipient<'v>(v: &'v Value, address: &str) -> &'v Value {
    array(v, "recipients")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("no recipient {address}: {v:#}"))
}

fn check<'v>(v: &'v Value, name: &str) -> &'v Value {
    array(v, "checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:#}"))
}

/// The edits of one kind whose `field` equals `value`.
fn edits_where<'v>(v: &'v Value, kind: &str, field: &str, value: &str) -> Vec<&'v Value> {
    array(v, "edits")
        .iter()
        .filter(|e| e["kind"] == kind && e[field] == value)
        .collect()
}

fn assert_edit(v: &Value, kind: &str, field: &str, value: &str) {
    assert_eq!(
        edits_where(v, kind, field, value).len(),
        1,
        "expected exactly one {kind} edit with {field} = {value:?}; edits: {:#}",
        v["edits"]
    );
}

// ------------------------------------------------------------------ check ---

#[test]
fn check_accepts_the_shipped_configuration() {
    let args = ["check", "-c", "milter-config.toml"];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one summary line: {}",
        describe(&args, &out)
    );
    let line = lines[0];
    assert!(line.contains("ok"), "{line}");
    assert!(line.contains("mx"), "{line}");
    assert!(line.contains("submission"), "{line}");
}

/// The benchmark policies under bench/ are documented commands in
/// docs/benchmarks.md: they must stay valid as the configuration grows.
/// `DNS_ADDR` is what bench/postfix.sh fills in for PFBENCH_CUSTOM files.
#[test]
fn check_accepts_every_benchmark_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seen = 0;
    for entry in std::fs::read_dir("bench").expect("bench/") {
        let path = entry.expect("bench/ entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // Checked where it is (its table files are relative to it), or as
        // a filled-in copy when it has the placeholder.
        let text = std::fs::read_to_string(&path).expect("read");
        let file = if text.contains("DNS_ADDR") {
            let copy = dir.path().join(path.file_name().expect("name"));
            std::fs::write(&copy, text.replace("DNS_ADDR", "127.0.0.1:53")).expect("write");
            copy
        } else {
            path.clone()
        };
        let file = file.to_str().expect("UTF-8 path");
        let args = ["check", "-c", file];
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            describe(&args, &out)
        );
        seen += 1;
    }
    assert!(seen >= 7, "only {seen} policies under bench/");
}

#[test]
fn check_reports_file_line_and_column_of_a_broken_configuration() {
    let fixture = "tests/config_errors/unknown_check_key.toml";
    let args = ["check", "-c", fixture];
    let out = run(&args);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(&args, &out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{fixture}:4:1: unknown key `tiemout`")),
        "{}",
        describe(&args, &out)
    );
    assert!(stderr.contains("did you mean `timeout`?"), "{stderr}");
    assert!(
        text(&out.stdout).is_empty(),
        "nothing on stdout: {}",
        describe(&args, &out)
    );
}

#[test]
fn check_reports_every_error_of_a_file() {
    let fixture = "tests/config_errors/several_errors.toml";
    let args = ["check", "-c", fixture];
    let out = run(&args);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(&args, &out)
    );
    let stderr = text(&out.stderr);
    let positioned = stderr
        .lines()
        .filter(|l| {
            let Some(rest) = l.strip_prefix(&format!("{fixture}:")) else {
                return false;
            };
            let mut parts = rest.splitn(3, ':');
            parts.next().is_some_and(|n| n.parse::<usize>().is_ok())
                && parts.next().is_some_and(|n| n.parse::<usize>().is_ok())
        })
        .count();
    assert!(positioned >= 5, "{}", describe(&args, &out));
}

#[test]
fn check_on_a_missing_file_says_it_cannot_read_it() {
    let args = ["check", "-c", "tests/config_errors/no-such-file.toml"];
    let out = run(&args);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(&args, &out)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read"), "{}", describe(&args, &out));
    assert!(
        stderr.contains("tests/config_errors/no-such-file.toml"),
        "{}",
        describe(&args, &out)
    );
}

#[test]
fn check_names_the_dns_servers_a_policy_with_dns_checks_would_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("dns.toml");
    std::fs::write(
        &config,
        "[dns]\nnameservers = [\"127.0.0.1:5300\"]\n[checks.iprev]\nkind = \"iprev\"\n[pipelines.mx]\nchecks = [\"iprev\"]\n",
    )
    .expect("write config");
    let path = config.to_str().expect("utf-8 path");
    let args = ["check", "-c", path];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    assert!(
        text(&out.stdout)
            .trim_end()
            .ends_with("DNS: 127.0.0.1:5300"),
        "{}",
        describe(&args, &out)
    );
    // --nameserver overrides the config, as it does for serve and test.
    let args = ["check", "-c", path, "--nameserver", "127.0.0.2:53"];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    assert!(
        text(&out.stdout).trim_end().ends_with("DNS: 127.0.0.2:53"),
        "{}",
        describe(&args, &out)
    );
    // Without DNS checks there is no resolver to name.
    let args = ["check", "-c", "milter-config.toml"];
    let out = run(&args);
    assert!(
        !text(&out.stdout).contains("DNS:"),
        "{}",
        describe(&args, &out)
    );
}

// ---------------------------------------------------------- test: the mx ---

#[test]
fn mx_accepts_a_mailbox_and_refuses_an_unknown_recipient() {
    let v = test_json(
        "mx",
        "someone@example.net",
        &["alice@example.org", "nobody@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    assert_eq!(v["verdict"], "accept", "{v:#}");

    let alice = recipient(&v, "alice@example.org");
    assert_eq!(alice["outcome"], "accept", "{alice:#}");
    assert!(alice.get("reply").is_none(), "{alice:#}");

    let nobody = recipient(&v, "nobody@example.org");
    assert_eq!(nobody["outcome"], "reject", "{nobody:#}");
    assert_eq!(nobody["reply"]["code"], 550, "{nobody:#}");
    assert_eq!(nobody["reply"]["status"], "5.1.1", "{nobody:#}");

    assert_edit(&v, "delete_header", "name", "X-Internal-Only");
    assert_edit(&v, "add_header", "name", "X-Dispatch-Source");
    let tag = edits_where(&v, "add_header", "name", "X-Dispatch-Source")[0];
    assert!(
        tag["value"]
            .as_str()
            .is_some_and(|s| s.contains("192.0.2.10")),
        "{tag:#}"
    );
    // The unknown recipient gets no edit: it was refused at RCPT TO.
    assert!(
        edits_where(&v, "delete_recipient", "address", "nobody@example.org").is_empty(),
        "{:#}",
        v["edits"]
    );

    for name in ["size", "spam_flag", "no_date"] {
        let c = check(&v, name);
        assert_eq!(c["action"], "ignore", "{c:#}");
    }
}

#[test]
fn mx_expands_the_sales_alias_and_copies_the_archive() {
    let v = test_json(
        "mx",
        "someone@example.net",
        &["sales@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    assert_eq!(v["verdict"], "accept", "{v:#}");
    assert_eq!(recipient(&v, "sales@example.org")["outcome"], "accept");
    assert_edit(&v, "delete_recipient", "address", "sales@example.org");
    assert_edit(&v, "add_recipient", "address", "alice@example.org");
    assert_edit(&v, "add_recipient", "address", "bob@example.org");
    assert_edit(&v, "add_recipient", "address", "archive@example.org");
}

/// The report lists where the copy goes: once, even though the alias made
/// two recipients out of one.
#[test]
fn mx_report_lists_the_archive_copy_once() {
    let v = test_json(
        "mx",
        "someone@example.net",
        &["sales@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    let sales = recipient(&v, "sales@example.org");
    assert_eq!(
        sales["delivered_to"],
        serde_json::json!(["alice@example.org", "bob@example.org"]),
        "{sales:#}"
    );
    assert_eq!(
        sales["copies"],
        serde_json::json!(["archive@example.org"]),
        "{sales:#}"
    );
}

#[test]
fn mx_strips_the_address_extension() {
    let v = test_json(
        "mx",
        "someone@example.net",
        &["alice+news@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    assert_eq!(v["verdict"], "accept", "{v:#}");
    assert_eq!(recipient(&v, "alice+news@example.org")["outcome"], "accept");
    assert_edit(&v, "delete_recipient", "address", "alice+news@example.org");
    assert_edit(&v, "add_recipient", "address", "alice@example.org");
}

#[test]
fn mx_quarantines_spam_without_a_date() {
    let v = test_json(
        "mx",
        "offers@example.net",
        &["alice@example.org"],
        &[],
        "tests/messages/spam-no-date.eml",
    );
    assert_eq!(v["verdict"], "quarantine", "{v:#}");
    assert_eq!(v["score"].as_f64(), Some(8.0), "{v:#}");

    let spam = check(&v, "spam_flag");
    assert_eq!(spam["result"], "fail", "{spam:#}");
    assert_eq!(spam["action"], "score 6", "{spam:#}");
    let date = check(&v, "no_date");
    assert_eq!(date["result"], "softfail", "{date:#}");
    assert_eq!(date["action"], "score 2", "{date:#}");

    let quarantine: Vec<&Value> = array(&v, "edits")
        .iter()
        .filter(|e| e["kind"] == "quarantine")
        .collect();
    assert_eq!(quarantine.len(), 1, "{:#}", v["edits"]);
    assert!(
        quarantine[0]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{:#}",
        quarantine[0]
    );
    assert_edit(&v, "add_header", "name", "X-Quarantine-Reason");
}

// --------------------------------------------------- test: the submission ---

#[test]
fn submission_accepts_an_authorised_sender_and_archives_outbound_mail() {
    let v = test_json(
        "submission",
        "alice@example.org",
        &["someone@example.net"],
        &["--tls", "--auth-user", "alice"],
        "tests/messages/from-alice.eml",
    );
    assert_eq!(v["verdict"], "accept", "{v:#}");
    assert_eq!(recipient(&v, "someone@example.net")["outcome"], "accept");
    assert_edit(
        &v,
        "add_recipient",
        "address",
        "outbound-archive@example.org",
    );
    for name in ["tls", "auth", "sender_allowed", "size"] {
        let c = check(&v, name);
        assert_eq!(c["result"], "pass", "{c:#}");
    }
}

#[test]
fn submission_without_authentication_is_refused_at_mail() {
    let v = test_json(
        "submission",
        "alice@example.org",
        &["someone@example.net"],
        &["--tls"],
        "tests/messages/from-alice.eml",
    );
    assert_eq!(v["verdict"], "reject", "{v:#}");
    assert_eq!(v["reply"]["code"], 530, "{v:#}");
    assert_eq!(v["reply"]["status"], "5.7.0", "{v:#}");
    assert_eq!(v["reply"]["text"], "Authentication required", "{v:#}");
    // The report names the check that refused MAIL FROM.
    assert_eq!(check(&v, "auth")["result"], "fail", "{v:#}");
    let refused_at: Vec<&str> = array(&v, "stages")
        .iter()
        .filter(|s| s["reply"]["reply"] != "continue")
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(refused_at, ["mail"], "{v:#}");
    assert!(array(&v, "edits").is_empty(), "{v:#}");
}

#[test]
fn submission_refuses_a_user_sending_as_someone_else() {
    let v = test_json(
        "submission",
        "bob@example.org",
        &["someone@example.net"],
        &["--tls", "--auth-user", "bob"],
        "tests/messages/from-alice.eml",
    );
    assert_eq!(v["verdict"], "reject", "{v:#}");
    assert_eq!(v["reply"]["code"], 550, "{v:#}");
    let c = check(&v, "sender_allowed");
    assert_eq!(c["result"], "fail", "{c:#}");
    assert_eq!(c["action"], "reject", "{c:#}");
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|r| r.contains("alice@example.org")),
        "{c:#}"
    );
    assert!(array(&v, "edits").is_empty(), "{v:#}");
}

// ----------------------------------------------------------- test: errors ---

#[test]
fn test_with_an_unknown_pipeline_names_the_pipelines() {
    let args = test_args(
        "nosuch",
        "someone@example.net",
        &["alice@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("\"nosuch\""), "{}", describe(&args, &out));
    assert!(
        stderr.contains("mx") && stderr.contains("submission"),
        "{}",
        describe(&args, &out)
    );
    assert!(text(&out.stdout).is_empty(), "{}", describe(&args, &out));
}

// ------------------------------------------------------- test: human form ---

#[test]
fn test_prints_a_readable_report() {
    let args = test_args(
        "mx",
        "someone@example.net",
        &["alice@example.org", "nobody@example.org"],
        &[],
        "tests/messages/plain.eml",
    );
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&args, &out));
    let report = text(&out.stdout);
    let has_line = |start: &str| report.lines().any(|l| l.starts_with(start));
    assert!(has_line("verdict"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("verdict") && l.contains("ACCEPT")),
        "{report}"
    );
    assert!(has_line("edits"), "{report}");
    assert!(
        report.contains("-> default > destination table:mailboxes"),
        "alice's branch: {report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("rcpt")
            && l.contains("<nobody@example.org>")
            && l.contains("550 5.1.1")),
        "{report}"
    );
    assert!(report.contains("X-Internal-Only"), "{report}");
}

#[test]
fn daemon_name_chooses_the_pipeline_as_the_daemon_does() {
    // No --pipeline: {daemon_name} "submission" selects the submission
    // pipeline (its daemon_names), which refuses unauthenticated MAIL.
    let args = [
        "test",
        "--json",
        "-c",
        "milter-config.toml",
        "--daemon-name",
        "submission",
        "--client-ip",
        "192.0.2.10",
        "--tls",
        "--from",
        "alice@example.org",
        "--to",
        "someone@example.net",
        "tests/messages/from-alice.eml",
    ];
    let out = run(&args);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["pipeline"], "submission", "{v:#}");
    assert_eq!(v["reply"]["code"], 530, "{v:#}");
    // Any other daemon name gets the first pipeline, mx.
    let mut other = args;
    other[5] = "smtpd";
    let out = run(&other);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["pipeline"], "mx", "{v:#}");
}

/// The product binary is the product: the load generator is
/// `dispatch-milter-load` (bench/load), not a command here.
#[test]
fn load_is_not_a_command_of_the_daemon() {
    let out = run(&["load", "--help"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&["load"], &out));
    assert!(
        text(&out.stderr).contains("unrecognized subcommand 'load'"),
        "{}",
        text(&out.stderr)
    );
}
