//! Headers are bounded per message: past `max_headers` fields or
//! `max_header_bytes` bytes nothing more is kept and the message gets the
//! pipeline's `header_limit_action`, never an accept with headers or checks
//! skipped. (The benchmark of resident memory under a header flood is
//! tests/bench/header_flood.rs.)

use crate::common;

use common::daemon::{TestDaemon, open_greeted, tagging_policy};
use common::errors_of;
use indymilter_test::{MacroStage, Status};
use std::ffi::CString;

/// One message with `count` headers of `value`; the end-of-message status.
async fn send(d: &TestDaemon, count: usize, value: &str) -> Status {
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<b@example.org>"]).await.unwrap();
    conn.macros(MacroStage::Data, [("i", "Q1")]).await.unwrap();
    for n in 0..count {
        conn.header(format!("X-Flood-{n}"), value).await.unwrap();
    }
    conn.eoh().await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    status
}

fn reject(text: &str) -> Status {
    Status::Reject {
        message: Some(CString::new(text).unwrap()),
    }
}

#[tokio::test]
async fn past_max_headers_the_message_is_refused() {
    let d = TestDaemon::start(&tagging_policy("max_headers = 20")).await;
    assert_eq!(send(&d, 20, "v").await, Status::Continue);
    assert_eq!(
        send(&d, 21, "v").await,
        reject("552 5.3.4 Too many header fields or header bytes")
    );
}

#[tokio::test]
async fn past_max_header_bytes_the_message_is_refused_or_tempfailed() {
    // Each header is "X-Flood-N" (9 bytes) and a 91-byte value, the space
    // after the colon (which the MTA sends with LEADING_SPACE, and which is
    // kept) and 90 bytes of text: 100 bytes.
    let value = "x".repeat(90);
    let d = TestDaemon::start(&tagging_policy("max_header_bytes = 1000")).await;
    assert_eq!(send(&d, 10, &value).await, Status::Continue);
    assert_eq!(
        send(&d, 11, &value).await,
        reject("552 5.3.4 Too many header fields or header bytes")
    );

    let d = TestDaemon::start(&tagging_policy(
        "max_header_bytes = \"1K\"\nheader_limit_action = \"tempfail\"",
    ))
    .await;
    assert_eq!(
        send(&d, 11, &"x".repeat(94)).await,
        Status::Tempfail {
            message: Some(
                CString::new("452 4.3.1 Too many header fields or header bytes, try again later")
                    .unwrap()
            )
        }
    );
}

#[tokio::test]
async fn a_dry_run_refuses_too_many_headers_too() {
    // What came past the limit was never seen: a forged header may stand
    // there, so no edit list could be trusted.
    let d = TestDaemon::start(&tagging_policy("max_headers = 20\ndry_run = true")).await;
    assert_eq!(send(&d, 20, "v").await, Status::Continue);
    assert_eq!(
        send(&d, 21, "v").await,
        reject("552 5.3.4 Too many header fields or header bytes")
    );
}

#[tokio::test]
async fn the_default_limit_holds_a_flood() {
    let d = TestDaemon::start(&tagging_policy("")).await;
    assert_eq!(send(&d, 1000, "v").await, Status::Continue);
    assert_eq!(
        send(&d, 1001, "v").await,
        reject("552 5.3.4 Too many header fields or header bytes")
    );
}

#[test]
fn limits_that_cannot_work_are_config_errors() {
    let e = errors_of("[pipelines.p]\nmax_headers = 0\n");
    assert!(
        e.contains("test.toml:2:15: `max_headers` must be a count of at least 1, found 0"),
        "{e}"
    );
    let e = errors_of("[pipelines.p]\nmax_header_bytes = \"lots\"\n");
    assert!(
        e.contains("test.toml:2:20: `max_header_bytes` must be a size"),
        "{e}"
    );
    let e = errors_of("[pipelines.p]\nmax_header_bytes = 0\n");
    assert!(
        e.contains("test.toml:2:20: `max_header_bytes` must be at least 1"),
        "{e}"
    );
    let e = errors_of("[pipelines.p]\nheader_limit_action = \"accept\"\n");
    assert!(
        e.contains("invalid `header_limit_action` \"accept\": use \"reject\" or \"tempfail\""),
        "{e}"
    );
}
