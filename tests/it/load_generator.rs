//! The load generator against the real daemon: every message completes,
//! the figures add up, and refusals are counted by stage.

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::wait;
use dispatch_milter_load::{Corpus, LoadConfig, run};
use std::time::Duration;

/// `connections` × `messages` of `corpus` against the daemon, from one
/// client to one recipient, unpaced; tests change what they need.
fn config(d: &TestDaemon, connections: usize, messages: usize, corpus: Corpus) -> LoadConfig {
    LoadConfig {
        target: d.daemon().addresses[0].clone(),
        connections,
        messages,
        corpus,
        from: "someone@example.net".into(),
        to: vec!["alice@example.org".into()],
        client_ip: "192.0.2.10".parse().unwrap(),
        helo: "client.example.net".into(),
        daemon_name: "smtpd".into(),
        auth_user: None,
        tls: false,
        pace: Duration::ZERO,
        hold: Duration::ZERO,
        message: None,
    }
}

#[tokio::test]
async fn load_runs_every_message_and_counts_refusals() {
    let cfg = format!(
        r#"{LISTEN}
[modifiers.tag]
kind = "add_header"
name = "X-Load"
value = "seen"
[pipelines.mx]
modify = ["tag"]
[[pipelines.mx.destination]]
match = ["gone.example.org"]
action = "reject"
reply = {{ code = 550, status = "5.1.1", text = "No such user" }}
"#
    );
    let mut d = TestDaemon::start(&cfg).await;
    let report = run(LoadConfig {
        to: vec!["alice@example.org".into(), "x@gone.example.org".into()],
        ..config(&d, 4, 5, Corpus::Mixed)
    })
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.messages_sent, 20);
    assert_eq!(report.messages_completed, 20);
    assert_eq!(report.latency_ms["eom"].count, 20);
    assert_eq!(report.latency_ms["rcpt"].count, 40);
    assert_eq!(
        report.replies.get("rcpt: 550 5.1.1 No such user"),
        Some(&20),
        "{:?}",
        report.replies
    );
    assert!(report.messages_per_second > 0.0);
    assert_eq!(d.daemon().messages_in_flight(), 0);
    d.shutdown().await;
}

/// `messages: 0` with a hold: the connections negotiate, send CONNECT and
/// HELO, then stay open and idle until the hold is over.
#[tokio::test]
async fn idle_connections_stay_open_for_the_hold() {
    let cfg = format!("{LISTEN}\n[pipelines.empty]\nauth_results = false\n");
    let mut d = TestDaemon::start(&cfg).await;
    let load = tokio::spawn(run(LoadConfig {
        hold: Duration::from_secs(2),
        ..config(&d, 8, 0, Corpus::Small)
    }));
    let metrics = d.daemon().metrics();
    let open = |n: usize| {
        metrics
            .render()
            .lines()
            .any(|l| l == format!("dispatch_milter_connections_open {n}"))
    };
    // Within the hold: afterwards the connections close again.
    wait::until(
        Duration::from_secs(2),
        "8 connections open during the hold",
        || open(8),
    )
    .await;
    assert!(!load.is_finished(), "the hold is not over yet");
    let report = load.await.expect("load task");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.seconds >= 2.0, "held for {} s", report.seconds);
    assert_eq!(report.latency_ms["helo"].count, 8);
    assert!(!report.latency_ms.contains_key("mail"));
    assert_eq!(report.messages_completed, 0);
    d.shutdown().await;
}

/// A body of a given size (several 64 KiB chunks) goes through whole.
#[tokio::test]
async fn sized_messages_complete() {
    let cfg = format!("{LISTEN}\n[pipelines.empty]\nauth_results = false\n");
    let mut d = TestDaemon::start(&cfg).await;
    let report = run(config(&d, 1, 2, Corpus::Sized(300_000))).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.messages_completed, 2);
    assert!(report.replies.is_empty(), "{:?}", report.replies);
    d.shutdown().await;
}

/// `--message FILE`: every message is the file's, headers and body as read
/// (here a header check refuses the file's Subject, so each message shows
/// the file was what went out).
#[tokio::test]
async fn a_message_file_is_sent_instead_of_the_corpus() {
    use dispatch_milter_load::FileMessage;
    let cfg = format!(
        r#"{LISTEN}
[checks.subject]
kind = "header"
header = "Subject"
pattern = "^from a file"
match_result = "fail"
reply = {{ code = 550, status = "5.7.1", text = "File seen" }}
[pipelines.mx]
checks = ["subject"]
"#
    );
    let raw = b"From: <someone@example.net>\nSubject: from a file,\n folded\nTo: <alice@example.org>\n\nline one\nline two\n";
    let file = FileMessage::parse(raw);
    assert_eq!(file.headers.len(), 3);
    assert_eq!(file.headers[1].1, "from a file,\r\n folded");
    assert_eq!(&file.body[..], b"line one\r\nline two\r\n");
    let mut d = TestDaemon::start(&cfg).await;
    let report = run(LoadConfig {
        message: Some(std::sync::Arc::new(file)),
        ..config(&d, 2, 3, Corpus::Typical)
    })
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.messages_completed, 6);
    assert_eq!(
        report.replies.get("eom: 550 5.7.1 File seen"),
        Some(&6),
        "{:?}",
        report.replies
    );
    d.shutdown().await;
}
