//! QUIT_NC (SMFIC_QUIT_NC, 'K'): the MTA ends the SMTP session but keeps the
//! milter connection for a new one, which starts with CONNECT and no new
//! negotiation (libmilter's state table). The next session is served like
//! a fresh connection's. indymilter-test cannot send QUIT_NC, so this test
//! speaks the protocol by hand.

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::raw_milter::{
    ADD_HEADER, ALL_ACTIONS, BODY, CONTINUE, EOH, HEADER, HELO, MAIL, QUIT, QUIT_NC, RCPT,
    REPLYCODE, RawMilter, strings,
};
use std::time::Duration;

fn policy(tag: &str) -> String {
    policy_with(tag, "")
}

fn policy_with(tag: &str, destinations: &str) -> String {
    format!(
        r#"{LISTEN}
[tables.boxes]
type = "inline"
entries = {{ "alice@example.org" = true }}

[modifiers.tag]
kind = "add_header"
name = "X-Dispatch"
value = "{tag}"

[pipelines.mx]
modify = ["tag"]
{destinations}
[[pipelines.mx.destination]]
table = "boxes"
[pipelines.mx.default]
action = "reject"
reply = {{ code = 550, status = "5.1.1", text = "No such user here" }}
"#
    )
}

/// One SMTP session on a negotiated connection, as Postfix sends it: an
/// unknown recipient refused at RCPT, a known one accepted, and the header
/// the policy adds at end of message, whose value is returned.
async fn session(m: &mut RawMilter) -> String {
    m.macros(b'C', &[("{daemon_name}", "mx"), ("j", "mx.example.org")])
        .await
        .expect("macros");
    let (reply, data) = m
        .connect_from("client.example.net", "192.0.2.10")
        .await
        .expect("connect");
    assert_eq!(
        reply as char,
        CONTINUE as char,
        "CONNECT: {}",
        String::from_utf8_lossy(&data)
    );
    let steps: [(u8, Vec<u8>); 2] = [
        (HELO, strings(&["client.example.net"])),
        (MAIL, strings(&["<someone@example.net>"])),
    ];
    for (command, data) in steps {
        let (reply, _) = m.command(command, &data).await.expect("reply");
        assert_eq!(reply as char, CONTINUE as char, "{}", command as char);
    }
    let (reply, text) = m
        .command(RCPT, &strings(&["<nobody@example.org>"]))
        .await
        .expect("rcpt");
    assert_eq!(reply as char, REPLYCODE as char);
    assert_eq!(text, b"550 5.1.1 No such user here\0");
    let (reply, _) = m
        .command(RCPT, &strings(&["<alice@example.org>"]))
        .await
        .expect("rcpt");
    assert_eq!(reply as char, CONTINUE as char);
    let body: [(u8, Vec<u8>); 3] = [
        (HEADER, strings(&["Subject", " hi"])),
        (EOH, Vec::new()),
        (BODY, b"Hello.\r\n".to_vec()),
    ];
    for (command, data) in body {
        let (reply, _) = m.command(command, &data).await.expect("reply");
        assert_eq!(reply as char, CONTINUE as char, "{}", command as char);
    }
    let (actions, (reply, _)) = m.eom().await.expect("end of message");
    assert_eq!(reply as char, CONTINUE as char, "{actions:?}");
    let added: Vec<String> = actions
        .iter()
        .filter(|(code, _)| *code == ADD_HEADER)
        .filter_map(|(_, data)| {
            let mut parts = data.split(|b| *b == 0);
            (parts.next() == Some(b"X-Dispatch".as_slice()))
                .then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
        })
        .collect();
    assert_eq!(added.len(), 1, "{actions:?}");
    added[0].trim_start().to_string()
}

#[tokio::test]
async fn after_quit_nc_the_next_session_is_served_with_the_current_configuration() {
    let mut d = TestDaemon::start(&policy("first")).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    m.negotiate(ALL_ACTIONS).await.expect("negotiate");

    assert_eq!(session(&mut m).await, "first");
    m.send(QUIT_NC, &[]).await.expect("quit_nc");
    // The same connection, a new SMTP session: served, not tempfailed.
    assert_eq!(session(&mut m).await, "first");

    // A reload between sessions applies to the next one, as it would to a
    // new connection (the actions it needs were negotiated).
    d.rewrite_config(&policy("second"));
    d.daemon().reload().await.expect("reload");
    m.send(QUIT_NC, &[]).await.expect("quit_nc");
    assert_eq!(session(&mut m).await, "second");

    // Every message was counted once, and the connection ends normally.
    let text = d.daemon().metrics().render();
    assert!(
        text.contains("dispatch_milter_messages_total{pipeline=\"mx\",verdict=\"accept\"} 3"),
        "{text}"
    );
    m.send(QUIT, &[]).await.expect("quit");
    let seen = m
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed after QUIT");
    assert!(seen.is_empty(), "{seen:?}");
    d.shutdown().await;
}

#[tokio::test]
async fn after_quit_nc_a_reload_that_needs_more_actions_waits_for_a_new_connection() {
    let mut d = TestDaemon::start(&policy("first")).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    // An MTA that offers adding headers (and asking for macros) only.
    const ADD_HEADER_ONLY: u32 = 0x01 | 0x100;
    m.negotiate(ADD_HEADER_ONLY).await.expect("negotiate");
    assert_eq!(session(&mut m).await, "first");

    // The new file redirects a recipient, which needs actions this
    // connection did not negotiate: its next session keeps the old file.
    d.rewrite_config(&policy_with(
        "second",
        "[[pipelines.mx.destination]]\nmatch = [\"old@example.org\"]\nredirect = \"new@example.org\"",
    ));
    d.daemon().reload().await.expect("reload");
    m.send(QUIT_NC, &[]).await.expect("quit_nc");
    assert_eq!(session(&mut m).await, "first");

    // A new connection takes the new file.
    let mut fresh = RawMilter::connect(d.addr()).await.expect("connect");
    fresh.negotiate(ALL_ACTIONS).await.expect("negotiate");
    assert_eq!(session(&mut fresh).await, "second");
    d.shutdown().await;
}
