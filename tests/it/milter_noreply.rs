//! Stages without a reply (SMFIP_NR_CONN, NR_HELO, NR_MAIL, NR_RCPT) and a
//! stage not sent at all (SMFIP_NO_HELO), negotiated from the policy: a
//! stage at which some pipeline of the listener refuses keeps its reply; a
//! refusal met at a stage without one (an address that cannot be read, a
//! rewrite that fails) is answered at the next stage that replies, end of
//! message at the latest. Spoken by hand, as Postfix does, so the test sees
//! every byte the daemon writes.

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::raw_milter::{
    ALL_ACTIONS, BODY, CONNECT, CONTINUE, HEADER, MAIL, QUIT, QUIT_NC, RCPT, REPLYCODE, RawMilter,
    strings,
};
use indymilter_test::ProtoOpts;
use std::time::Duration;

/// The stages before end of message whose reply can be waived.
const STAGE_NOREPLY: [(ProtoOpts, &str); 4] = [
    (ProtoOpts::NOREPLY_CONNECT, "connect"),
    (ProtoOpts::NOREPLY_HELO, "helo"),
    (ProtoOpts::NOREPLY_MAIL, "mail"),
    (ProtoOpts::NOREPLY_RCPT, "rcpt"),
];

/// The stages, among connect, HELO, MAIL and RCPT, negotiated without reply.
fn silent(opts: ProtoOpts) -> Vec<&'static str> {
    STAGE_NOREPLY
        .iter()
        .filter(|(o, _)| opts.contains(*o))
        .map(|(_, name)| *name)
        .collect()
}

/// What the daemon asks for when offered `offered`, as Postfix offers
/// every option (milter protocol 6).
async fn negotiated_with(config: &str, offered: ProtoOpts) -> ProtoOpts {
    let mut d = TestDaemon::start(config).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    let (_, _, opts) = m
        .negotiate_offering(ALL_ACTIONS, offered.bits())
        .await
        .expect("negotiate");
    d.shutdown().await;
    ProtoOpts::from_bits_retain(opts)
}

async fn negotiated(config: &str) -> ProtoOpts {
    negotiated_with(config, ProtoOpts::all()).await
}

const EMPTY: &str = "[pipelines.empty]\nauth_results = false\n";

/// A recipient table that refuses unknown recipients at RCPT TO.
const MAILBOXES: &str = r#"
[tables.boxes]
type = "inline"
entries = { "alice@example.org" = true }
[pipelines.mx]
auth_results = false
[[pipelines.mx.destination]]
table = "boxes"
[pipelines.mx.default]
action = "reject"
reply = { code = 550, status = "5.1.1", text = "No such user here" }
"#;

/// The shipped configuration, on a free port, its tables found from here.
fn shipped() -> String {
    let text = std::fs::read_to_string("milter-config.toml").expect("shipped config");
    let root = env!("CARGO_MANIFEST_DIR");
    text.replace("inet:127.0.0.1:7357", "inet:127.0.0.1:0")
        .replace("path = \"contrib/", &format!("path = \"{root}/contrib/"))
}

#[tokio::test]
async fn replies_are_waived_where_no_pipeline_refuses() {
    // The empty policy refuses nowhere and reads no HELO.
    let opts = negotiated(&format!("{LISTEN}{EMPTY}")).await;
    assert_eq!(
        silent(opts),
        ["connect", "helo", "mail", "rcpt"],
        "{opts:?}"
    );
    assert!(opts.contains(ProtoOpts::NO_HELO), "{opts:?}");
    assert!(opts.contains(ProtoOpts::NOREPLY_HEADER | ProtoOpts::NOREPLY_BODY));
    // Stages whose data every pipeline uses are still sent.
    for needed in [
        ProtoOpts::NO_CONNECT,
        ProtoOpts::NO_MAIL,
        ProtoOpts::NO_RCPT,
        ProtoOpts::NO_HEADER,
        ProtoOpts::NO_BODY,
    ] {
        assert!(!opts.contains(needed), "{needed:?} in {opts:?}");
    }

    // The MX checks decide at MAIL FROM (DNSBL, iprev) and at end of
    // message; they read HELO (SPF).
    let opts = negotiated(&format!("{LISTEN}{}", common::mx_checks(""))).await;
    assert_eq!(silent(opts), ["connect", "helo", "rcpt"], "{opts:?}");
    assert!(!opts.contains(ProtoOpts::NO_HELO), "{opts:?}");

    // The shipped configuration: submission refuses at MAIL FROM (TLS,
    // authentication), mx at RCPT TO (its recipient table); both pipelines
    // count, as {daemon_name} chooses after negotiation.
    let opts = negotiated(&shipped()).await;
    assert_eq!(silent(opts), ["connect", "helo"], "{opts:?}");
    assert!(!opts.contains(ProtoOpts::NO_HELO), "{opts:?}");

    // A policy deciding at MAIL FROM and RCPT TO, bound to a listener.
    let policy = format!(
        "[[server.listen]]\naddress = \"inet:127.0.0.1:0\"\npipeline = \"mx\"\n\
         [checks.auth]\nkind = \"require_auth\"\n{}",
        MAILBOXES.replace("[pipelines.mx]\n", "[pipelines.mx]\nchecks = [\"auth\"]\n")
    );
    let opts = negotiated(&policy).await;
    assert_eq!(silent(opts), ["connect", "helo"], "{opts:?}");

    // Only what the MTA offers is asked for.
    let offered = ProtoOpts::LEADING_SPACE | ProtoOpts::NOREPLY_HEADER | ProtoOpts::NOREPLY_RCPT;
    let opts = negotiated_with(&format!("{LISTEN}{EMPTY}"), offered).await;
    assert_eq!(opts, offered, "{opts:?}");
}

/// Negotiate as Postfix does, then open a session from a client.
async fn postfix_like(m: &mut RawMilter) -> ProtoOpts {
    let (_, _, opts) = m
        .negotiate_offering(ALL_ACTIONS, ProtoOpts::all().bits())
        .await
        .expect("negotiate");
    ProtoOpts::from_bits_retain(opts)
}

/// CONNECT as the MTA sends it to a milter that gives no reply there.
async fn connect_silently(m: &mut RawMilter) {
    m.macros(b'C', &[("{daemon_name}", "mx"), ("j", "mx.example.org")])
        .await
        .expect("macros");
    let mut data = strings(&["client.example.net"]);
    data.push(b'4');
    data.extend_from_slice(&25u16.to_be_bytes());
    data.extend(strings(&["192.0.2.10"]));
    m.send(CONNECT, &data).await.expect("connect");
}

/// A message from `from` to `to` through stages without reply up to end
/// of message; returns its final reply (code and text).
async fn silent_message(m: &mut RawMilter, from: &str, to: &[&str]) -> (char, String) {
    m.send(MAIL, &strings(&[from])).await.expect("mail");
    for rcpt in to {
        m.send(RCPT, &strings(&[rcpt])).await.expect("rcpt");
    }
    m.send(HEADER, &strings(&["Subject", " hi"]))
        .await
        .expect("header");
    m.send(BODY, b"Hello.\r\n").await.expect("body");
    let (_, (code, text)) = m.eom().await.expect("end of message");
    (code as char, String::from_utf8_lossy(&text).into_owned())
}

/// QUIT, then nothing more from the daemon: no reply was written for a
/// stage that has none (a stray one would be read here or by the EOM
/// read before).
async fn quit_and_nothing_left(m: &mut RawMilter) {
    m.send(QUIT, &[]).await.expect("quit");
    let seen = m
        .closed_within(Duration::from_secs(5))
        .await
        .expect("closed after QUIT");
    assert!(seen.is_empty(), "bytes left unread: {seen:?}");
}

#[tokio::test]
async fn no_reply_is_written_for_a_stage_without_one() {
    let mut d = TestDaemon::start(&format!("{LISTEN}{EMPTY}")).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    let opts = postfix_like(&mut m).await;
    assert_eq!(silent(opts), ["connect", "helo", "mail", "rcpt"]);
    connect_silently(&mut m).await;
    // No HELO: the daemon asked not to be sent it.
    for _ in 0..2 {
        let (code, text) = silent_message(
            &mut m,
            "<a@example.net>",
            &["<b@example.org>", "<c@example.org>"],
        )
        .await;
        assert_eq!(code, CONTINUE as char, "{text}");
    }
    quit_and_nothing_left(&mut m).await;
    let text = d.daemon().metrics().render();
    assert!(
        text.contains("dispatch_milter_messages_total{pipeline=\"empty\",verdict=\"accept\"} 2"),
        "{text}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn a_refusal_at_a_stage_without_reply_is_answered_at_end_of_message() {
    // A sender and a recipient rewrite that fail for one address each:
    // internal failures, whose error action is tempfail.
    let policy = format!(
        r#"{LISTEN}
[modifiers.resend]
kind = "rewrite_sender"
table = {{ "broken@example.net" = "not-an-address" }}
[modifiers.reroute]
kind = "rewrite_rcpt"
table = {{ "broken@example.org" = "not-an-address" }}
[pipelines.p]
auth_results = false
modify = ["resend", "reroute"]
"#
    );
    let mut d = TestDaemon::start(&policy).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    let opts = postfix_like(&mut m).await;
    assert_eq!(
        silent(opts),
        ["connect", "helo", "mail", "rcpt"],
        "{opts:?}"
    );
    connect_silently(&mut m).await;

    // MAIL FROM fails: the transaction is tempfailed at end of message.
    let (code, text) = silent_message(&mut m, "<broken@example.net>", &["<b@example.org>"]).await;
    assert_eq!(
        (code, text.as_str()),
        (
            REPLYCODE as char,
            "451 4.7.1 Temporary failure, try again later\0"
        ),
        "MAIL failure"
    );
    // The next transaction starts clean.
    let (code, text) = silent_message(&mut m, "<a@example.net>", &["<b@example.org>"]).await;
    assert_eq!(code, CONTINUE as char, "{text}");
    // One recipient's rewrite fails: the whole message is tempfailed, as
    // that recipient cannot be refused alone.
    let (code, text) = silent_message(
        &mut m,
        "<a@example.net>",
        &["<b@example.org>", "<broken@example.org>"],
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            REPLYCODE as char,
            "451 4.7.1 Temporary failure, try again later\0"
        ),
        "RCPT failure"
    );
    // A sender that cannot be read is refused at end of message as it
    // would have been at MAIL FROM.
    let (code, text) =
        silent_message(&mut m, "<unbalanced@example.net", &["<b@example.org>"]).await;
    assert_eq!(
        (code, text.as_str()),
        (REPLYCODE as char, "553 5.1.7 Bad sender address syntax\0")
    );
    // And a recipient that cannot be read, the whole message.
    let (code, text) = silent_message(
        &mut m,
        "<a@example.net>",
        &["<b@example.org>", "<unbalanced@example.org"],
    )
    .await;
    assert_eq!(
        (code, text.as_str()),
        (
            REPLYCODE as char,
            "553 5.1.3 Bad recipient address syntax\0"
        )
    );
    quit_and_nothing_left(&mut m).await;

    // One message delivered; the refused ones are counted where they were
    // decided (MAIL FROM) or at end of message.
    let text = d.daemon().metrics().render();
    assert!(
        text.contains("dispatch_milter_messages_total{pipeline=\"p\",verdict=\"accept\"} 1"),
        "{text}"
    );
    d.shutdown().await;
}

/// A session in which RCPT TO replies and the other stages do not.
async fn session_with_rcpt_replies(m: &mut RawMilter) {
    connect_silently(m).await;
    m.send(MAIL, &strings(&["<a@example.net>"]))
        .await
        .expect("mail");
    let (reply, text) = m
        .command(RCPT, &strings(&["<nobody@example.org>"]))
        .await
        .expect("rcpt");
    assert_eq!(
        (reply as char, text.as_slice()),
        (
            REPLYCODE as char,
            b"550 5.1.1 No such user here\0".as_slice()
        )
    );
    let (reply, _) = m
        .command(RCPT, &strings(&["<alice@example.org>"]))
        .await
        .expect("rcpt");
    assert_eq!(reply as char, CONTINUE as char);
    m.send(HEADER, &strings(&["Subject", " hi"]))
        .await
        .expect("header");
    m.send(BODY, b"Hello.\r\n").await.expect("body");
    let (_, (code, _)) = m.eom().await.expect("end of message");
    assert_eq!(code as char, CONTINUE as char);
}

#[tokio::test]
async fn a_stage_that_refuses_keeps_its_reply_for_each_recipient() {
    let mut d = TestDaemon::start(&format!("{LISTEN}{MAILBOXES}")).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    let opts = postfix_like(&mut m).await;
    assert_eq!(silent(opts), ["connect", "helo", "mail"], "{opts:?}");
    session_with_rcpt_replies(&mut m).await;
    quit_and_nothing_left(&mut m).await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_refuses_where_a_connection_has_no_reply_waits_for_a_new_connection() {
    let quiet = "[pipelines.mx]\nauth_results = false\n";
    let mut d = TestDaemon::start(&format!("{LISTEN}{quiet}")).await;
    let mut m = RawMilter::connect(d.addr()).await.expect("connect");
    let opts = postfix_like(&mut m).await;
    assert_eq!(silent(opts), ["connect", "helo", "mail", "rcpt"]);
    connect_silently(&mut m).await;
    let (code, _) = silent_message(&mut m, "<a@example.net>", &["<nobody@example.org>"]).await;
    assert_eq!(code, CONTINUE as char);

    // The new file refuses recipients at RCPT TO, which this connection
    // answers without reply: its next session keeps the old file, rather
    // than refusals being held back to end of message.
    d.rewrite_config(&format!("{LISTEN}{MAILBOXES}"));
    d.daemon().reload().await.expect("reload");
    m.send(QUIT_NC, &[]).await.expect("quit_nc");
    connect_silently(&mut m).await;
    let (code, text) = silent_message(&mut m, "<a@example.net>", &["<nobody@example.org>"]).await;
    assert_eq!(code, CONTINUE as char, "the old configuration: {text}");
    quit_and_nothing_left(&mut m).await;

    // A new connection takes the new file, and RCPT TO replies there.
    let mut fresh = RawMilter::connect(d.addr()).await.expect("connect");
    let opts = postfix_like(&mut fresh).await;
    assert_eq!(silent(opts), ["connect", "helo", "mail"]);
    session_with_rcpt_replies(&mut fresh).await;
    quit_and_nothing_left(&mut fresh).await;
    d.shutdown().await;
}
