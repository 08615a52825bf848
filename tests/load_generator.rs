//! The load generator against the real daemon: every message completes,
//! the figures add up, and refusals are counted by stage.

mod common;

use common::daemon::{LISTEN, TestDaemon};
use dispatch_milter::load::{Corpus, LoadConfig, run};
use std::time::Duration;

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
        target: d.daemon().addresses[0].clone(),
        connections: 4,
        messages: 5,
        corpus: Corpus::Mixed,
        from: "someone@example.net".into(),
        to: vec!["alice@example.org".into(), "x@gone.example.org".into()],
        client_ip: "192.0.2.10".parse().unwrap(),
        helo: "client.example.net".into(),
        daemon_name: "smtpd".into(),
        auth_user: None,
        tls: false,
        pace: Duration::ZERO,
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
