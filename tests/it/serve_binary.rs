//! The real `dispatch-milter serve` process: started from a config in a
//! temporary directory on 127.0.0.1:0, read through its JSON log on stderr,
//! talked to over the milter protocol with indymilter-test, and driven with
//! SIGHUP, SIGTERM and SIGINT the way an init system would.
//!
//! Every wait is bounded, and every process is killed by a Drop guard, also
//! when an assertion fails.

use crate::common;

use common::daemon::reject_with;
use common::position;
use common::serve::{
    Serve, WAIT, field_str, finish_message, message_of, rcpt_answer, start_message, threads,
};
use common::wait;
use indymilter_test::{Status, TestConnection};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// sysexits' EX_CONFIG.
const EXIT_CONFIG: i32 = 78;
/// The longest a whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(60);

const SERVER: &str = r#"[server]
log_format = "json"
log_level = "info"
shutdown_grace = "10s"

[[server.listen]]
address = "inet:127.0.0.1:0"
"#;

/// A size check (so the log has a check to show) and a destination refused
/// with its own reply; everything else is accepted.
fn policy(blocked: &str, text: &str) -> String {
    format!(
        r#"{SERVER}
[checks.size]
kind = "size"
max_size = "1M"

[pipelines.mx]
checks = ["size"]

[[pipelines.mx.destination]]
match = ["{blocked}"]
action = "reject"
reply = {{ code = 550, status = "5.7.1", text = "{text}" }}

[pipelines.mx.default]
action = "accept"
"#
    )
}

const V1_TEXT: &str = "blocked.example takes no mail from us";
const V2_TEXT: &str = "other.example is closed";

fn v1() -> String {
    policy("blocked.example", V1_TEXT)
}

fn v2() -> String {
    policy("other.example", V2_TEXT)
}

/// A message to alice@example.org, past RCPT TO and left open: a message
/// in flight for as long as the connection is kept.
async fn message_in_flight(addr: SocketAddr) -> TestConnection {
    let mut conn = start_message(addr, None).await;
    assert_eq!(
        conn.rcpt(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    conn
}

/// Wait for "ready" and return the one TCP address it lists; check that
/// "listening" named the same address before it.
async fn ready(d: &mut Serve) -> SocketAddr {
    let addr = d.ready().await;
    assert_eq!(addr.ip(), IpAddr::from([127, 0, 0, 1]), "{}", d.log());
    assert_ne!(addr.port(), 0, "the bound port is resolved");
    let listening: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|e| message_of(e) == "listening")
        .collect();
    assert_eq!(listening.len(), 1, "one listener: {}", d.log());
    assert_eq!(field_str(&listening[0], "listener"), format!("inet:{addr}"));
    addr
}

/// Run a test body with an overall time limit.
async fn bounded(body: impl std::future::Future<Output = ()>) {
    wait::bounded(TEST_LIMIT, "the test", body).await
}

#[tokio::test]
async fn serve_answers_over_milter_and_logs_one_json_line_per_message() {
    bounded(async {
        let mut d = Serve::start_with(&v1());
        let addr = ready(&mut d).await;

        let mut conn = start_message(addr, None).await;
        assert_eq!(
            conn.rcpt(["<nobody@blocked.example>"]).await.unwrap(),
            reject_with(&format!("550 5.7.1 {V1_TEXT}"))
        );
        assert_eq!(
            conn.rcpt(["<alice@example.org>"]).await.unwrap(),
            Status::Continue
        );
        assert_eq!(finish_message(&mut conn, "QID1").await, Status::Continue);

        let line = d.wait_for("message").await;
        assert_eq!(line["target"], "dispatch_milter::message", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(field_str(&line, "queue_id"), "QID1", "{line}");
        assert_eq!(field_str(&line, "verdict"), "accept", "{line}");
        assert_eq!(field_str(&line, "pipeline"), "mx", "{line}");
        assert_eq!(field_str(&line, "sender"), "someone@example.net", "{line}");
        let recipients = field_str(&line, "recipients");
        assert!(
            recipients.contains("nobody@blocked.example=reject(550)"),
            "{line}"
        );
        assert!(recipients.contains("alice@example.org=accept"), "{line}");
        let checks = field_str(&line, "checks");
        assert!(checks.starts_with("size=pass/ignore/"), "{line}");
        assert!(checks.ends_with("ms"), "{line}");
        assert!(field_str(&line, "client").contains("192.0.2.10"), "{line}");

        // A second message on the same connection gets its own line.
        assert_eq!(
            conn.mail(["<someone@example.net>"]).await.unwrap(),
            Status::Continue
        );
        assert_eq!(
            conn.rcpt(["<bob@example.org>"]).await.unwrap(),
            Status::Continue
        );
        assert_eq!(finish_message(&mut conn, "QID2").await, Status::Continue);
        let line = d.wait_for("message").await;
        assert_eq!(field_str(&line, "queue_id"), "QID2", "{line}");
        assert_eq!(field_str(&line, "recipients"), "bob@example.org=accept");
        conn.close().await.unwrap();

        d.signal("TERM");
        assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.log());
        let ids: Vec<String> = d
            .message_lines()
            .iter()
            .map(|l| field_str(l, "queue_id").to_string())
            .collect();
        assert_eq!(ids, ["QID1", "QID2"], "one line per message:\n{}", d.log());
        // Every line on stderr is JSON: nothing else mixed into the log.
        for line in &d.seen {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "not JSON: {line}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_on_errors() {
    bounded(async {
        let mut d = Serve::start_with(&v1());
        let addr = ready(&mut d).await;
        assert_eq!(
            rcpt_answer(addr, None, "<x@blocked.example>").await,
            reject_with(&format!("550 5.7.1 {V1_TEXT}"))
        );

        // A valid new policy: new connections get it.
        d.rewrite_config(&v2());
        let event = d.reload().await;
        assert_eq!(message_of(&event), "configuration reloaded", "{event}");
        assert_eq!(field_str(&event, "config"), d.config.display().to_string());
        assert_eq!(
            rcpt_answer(addr, None, "<x@blocked.example>").await,
            Status::Continue
        );
        assert_eq!(
            rcpt_answer(addr, None, "<x@other.example>").await,
            reject_with(&format!("550 5.7.1 {V2_TEXT}"))
        );

        // A broken one: the error names FILE:LINE:COL, the policy stays.
        let broken = v2().replace("checks = [\"size\"]", "checks = [\"nope\"]");
        let (line, col) = position(&broken, "\"nope\"");
        d.rewrite_config(&broken);
        let event = d.reload().await;
        assert_eq!(
            message_of(&event),
            "reload failed; the running configuration stays",
            "{event}"
        );
        assert_eq!(event["level"], "ERROR", "{event}");
        let errors = field_str(&event, "errors");
        let at = format!("{}:{line}:{col}:", d.config.display());
        assert!(errors.contains(&at), "expected {at} in {errors:?}");
        assert!(errors.contains("nope"), "{errors}");
        assert_eq!(
            rcpt_answer(addr, None, "<x@other.example>").await,
            reject_with(&format!("550 5.7.1 {V2_TEXT}"))
        );
        assert_eq!(
            rcpt_answer(addr, None, "<x@blocked.example>").await,
            Status::Continue
        );
        assert!(d.alive(), "a failed reload does not stop the daemon");

        d.signal("TERM");
        assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.log());
    })
    .await;
}

#[tokio::test]
async fn sigterm_waits_for_the_message_in_flight_and_refuses_new_connections() {
    bounded(async {
        let mut d = Serve::start_with(&v1());
        let addr = ready(&mut d).await;
        let mut conn = message_in_flight(addr).await;

        d.signal("TERM");
        d.wait_for("shutting down").await;
        let waiting = d.wait_for("waiting for messages in flight").await;
        assert_eq!(waiting["fields"]["in_flight"], 1, "{waiting}");

        // The listener is closed: new connections are refused.
        let refused = wait::within_async(WAIT, async || {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await;
        assert!(refused, "the listener still accepts after SIGTERM");

        // The process waits for the message (it would exit at once if it
        // did not: the listener is already closed)...
        let stayed = wait::holds_for(Duration::from_millis(300), || d.alive()).await;
        assert!(stayed, "exited with a message in flight:\n{}", d.log());

        // ...which completes normally, and then the process exits 0.
        assert_eq!(
            finish_message(&mut conn, "INFLIGHT").await,
            Status::Continue
        );
        let status = d.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(0), "{}", d.log());
        let lines = d.message_lines();
        assert_eq!(lines.len(), 1, "{}", d.log());
        assert_eq!(field_str(&lines[0], "queue_id"), "INFLIGHT");
        assert_eq!(field_str(&lines[0], "verdict"), "accept");
        let events = d.events();
        assert!(
            events.iter().any(|e| message_of(e) == "stopped"),
            "{}",
            d.log()
        );
        assert!(
            !events
                .iter()
                .any(|e| message_of(e).contains("grace period")),
            "the message finished within the grace period:\n{}",
            d.log()
        );
    })
    .await;
}

#[tokio::test]
async fn sigint_without_messages_in_flight_exits_zero_promptly() {
    bounded(async {
        let mut d = Serve::start_with(&v1());
        let addr = ready(&mut d).await;
        // A finished session first, so there is something to have cleaned up.
        assert_eq!(
            rcpt_answer(addr, None, "<alice@example.org>").await,
            Status::Continue
        );
        let sent = Instant::now();
        d.signal("INT");
        let status = d.wait_exit(Duration::from_secs(3)).await;
        assert_eq!(status.code(), Some(0), "{}", d.log());
        assert!(sent.elapsed() < Duration::from_secs(3));
        let events = d.events();
        for expected in ["shutting down", "stopped"] {
            assert!(
                events.iter().any(|e| message_of(e) == expected),
                "no {expected:?} event:\n{}",
                d.log()
            );
        }
        // The client above closed its connection just before the signal;
        // the daemon may not have seen the close yet, so a short wait for
        // that message is allowed. What matters is the prompt exit 0.
    })
    .await;
}

#[tokio::test]
async fn a_config_error_at_start_exits_78_with_file_line_col() {
    bounded(async {
        let broken = v1().replace("max_size = \"1M\"", "max_size = \"lots\"");
        let (line, col) = position(&broken, "\"lots\"");
        let mut d = Serve::start_with(&broken);
        let status = d.wait_exit(WAIT).await;
        assert_eq!(status.code(), Some(EXIT_CONFIG), "{}", d.log());
        let at = format!("{}:{line}:{col}:", d.config.display());
        assert!(d.log().contains(&at), "expected {at} in:\n{}", d.log());
        assert!(
            !d.events().iter().any(|e| message_of(e) == "ready"),
            "{}",
            d.log()
        );
    })
    .await;
}

#[tokio::test]
async fn an_address_in_use_exits_1_with_a_clear_message() {
    bounded(async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("local addr").port();
        let config = v1().replace("inet:127.0.0.1:0", &format!("inet:127.0.0.1:{port}"));
        let mut d = Serve::start_with(&config);
        let status = d.wait_exit(WAIT).await;
        assert_eq!(status.code(), Some(1), "{}", d.log());
        let event = d
            .events()
            .into_iter()
            .find(|e| message_of(e) == "cannot start")
            .unwrap_or_else(|| panic!("no \"cannot start\" event:\n{}", d.log()));
        assert_eq!(event["level"], "ERROR", "{event}");
        let error = field_str(&event, "error");
        assert!(
            error.contains(&format!("cannot listen on inet:127.0.0.1:{port}")),
            "{error}"
        );
        assert!(error.to_lowercase().contains("in use"), "{error}");
        assert!(
            !d.events().iter().any(|e| message_of(e) == "ready"),
            "{}",
            d.log()
        );
        drop(taken);
    })
    .await;
}

#[tokio::test]
async fn a_second_sigterm_ends_the_grace_period_at_once() {
    bounded(async {
        let mut d = Serve::start_with(&v1());
        let addr = ready(&mut d).await;
        let conn = message_in_flight(addr).await;
        d.signal("TERM");
        d.wait_for("waiting for messages in flight").await;
        // The grace period is 10 s; the second signal must not wait for it.
        let sent = Instant::now();
        d.signal("TERM");
        let status = d.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(0), "{}", d.log());
        assert!(sent.elapsed() < Duration::from_secs(5));
        assert!(
            d.events()
                .iter()
                .any(|e| message_of(e).starts_with("second signal")),
            "{}",
            d.log()
        );
        drop(conn);
    })
    .await;
}

#[tokio::test]
async fn what_loading_the_config_warns_about_is_printed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        // A signing key readable by a group the daemon does not run as: a
        // warning, not an error, and it must reach the administrator even
        // though logging is only set up once the config is loaded.
        let keys = tempfile::tempdir().expect("tempdir");
        let key = keys.path().join("sign.pem");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/ed25519.pem");
        std::fs::copy(source, &key).expect("copy the test key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        // SAFETY: getegid has no preconditions and cannot fail.
        let other_gid = if unsafe { libc::getegid() } == 1 { 2 } else { 1 };
        if let Err(e) = std::os::unix::fs::chown(&key, None, Some(other_gid)) {
            panic!("chown to group {other_gid} needs root (as .ci/run runs): {e}");
        }
        let config = format!(
            "{}\n[modifiers.sign]\nkind = \"dkim_sign\"\nkeys = [{{ domain = \"example.org\", selector = \"s\", key = \"{}\" }}]\n",
            v1(),
            key.display()
        )
        .replace("[pipelines.mx]", "[pipelines.mx]\nmodify = [\"sign\"]");
        let mut d = Serve::start_with(&config);
        ready(&mut d).await;
        let log = d.log();
        assert!(
            log.contains(&format!("is readable by group {other_gid} (mode 0640)")),
            "{log}"
        );
        d.signal("TERM");
        assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.log());
    })
    .await;
}

/// `[server] worker_threads` sizes the runtime the daemon runs on: two
/// daemons that differ only in it differ by as many threads, and both
/// serve mail.
#[tokio::test]
async fn worker_threads_sizes_the_runtime() {
    bounded(async {
        let with = |n: usize| {
            v1().replace(
                "shutdown_grace = \"10s\"",
                &format!("shutdown_grace = \"10s\"\nworker_threads = {n}"),
            )
        };
        let mut counts = Vec::new();
        for n in [1, 4] {
            let mut d = Serve::start_with(&with(n));
            let addr = ready(&mut d).await;
            let mut conn = message_in_flight(addr).await;
            assert_eq!(finish_message(&mut conn, "QID1").await, Status::Continue);
            conn.close().await.unwrap();
            d.wait_for("message").await;
            counts.push(threads(d.child.id()));
            d.signal("TERM");
            assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.log());
        }
        assert_eq!(
            counts[1] - counts[0],
            3,
            "threads with 1 and 4 workers: {counts:?}"
        );
    })
    .await;
}
