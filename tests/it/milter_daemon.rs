//! The daemon end to end over the milter protocol: indymilter-test plays
//! Postfix against the real daemon on 127.0.0.1:0.

use crate::common;

use common::daemon::{LISTEN, TestDaemon, greet, open, open_greeted, reject_with};
use common::wait::{self, WAIT};
use indymilter_test::{EomAction, MacroStage, Status};
use std::ffi::CString;
use std::time::Duration;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

const MX: &str = r#"
[tables.boxes]
type = "inline"
entries = { "alice@example.org" = true, "bob@example.org" = true }

[modifiers.tag]
kind = "add_header"
name = "X-Dispatch"
value = "checked for {sender}"

[pipelines.mx]
modify = ["tag"]
[[pipelines.mx.destination]]
match = ["old@example.org"]
redirect = "new@example.org"
[[pipelines.mx.destination]]
match = ["sales@example.org"]
copy = ["archive@example.org"]
[[pipelines.mx.destination]]
match = ["hold@example.org"]
action = "quarantine"
reason = "held for review"
[[pipelines.mx.destination]]
match = ["void@example.org"]
action = "discard"
[[pipelines.mx.destination]]
table = "boxes"
[pipelines.mx.default]
action = "reject"
reply = { code = 550, status = "5.1.1", text = "No such user here" }
"#;

fn config(extra: &str) -> String {
    format!("{LISTEN}{MX}{extra}")
}

#[tokio::test]
async fn one_recipient_refused_at_rcpt_the_other_delivered_with_headers() {
    let mut d = TestDaemon::start(&config("")).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    assert_eq!(
        conn.mail(["<someone@example.net>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<nobody@example.org>"]).await.unwrap(),
        reject_with("550 5.1.1 No such user here")
    );
    conn.macros(MacroStage::Data, [("i", "ABC123")])
        .await
        .unwrap();
    assert_eq!(
        conn.header("Subject", "hi").await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    assert_eq!(conn.body("hello\r\n").await.unwrap(), Status::Continue);
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(
        actions.actions,
        vec![EomAction::AddHeader {
            name: c("X-Dispatch"),
            value: c(" checked for someone@example.net"),
        }]
    );
    conn.close().await.unwrap();
    d.shutdown().await;
}

#[tokio::test]
async fn redirect_copy_and_sender_change_arrive_as_milter_actions() {
    let extra = r#"
[modifiers.masq]
kind = "rewrite_sender"
pattern = "^(.+)@internal\\.example\\.org$"
replacement = "$1@example.org"
"#;
    let cfg = config(extra).replace("modify = [\"tag\"]", "modify = [\"masq\"]");
    let mut d = TestDaemon::start(&cfg).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    assert_eq!(
        conn.mail(["<joe@internal.example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<old@example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<sales@example.org>"]).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(
        actions.actions,
        vec![
            EomAction::ChangeSender {
                mail: c("<joe@example.org>"),
                args: None
            },
            EomAction::DeleteRecipient {
                rcpt: c("<old@example.org>")
            },
            EomAction::AddRecipient {
                rcpt: c("<new@example.org>"),
                args: None
            },
            EomAction::AddRecipient {
                rcpt: c("<archive@example.org>"),
                args: None
            },
        ]
    );
    d.shutdown().await;
}

/// A redirected recipient's NOTIFY and ORCPT go with its replacement
/// (ADDRCPT_PAR) when the MTA offers that action; an MTA that does not
/// gets the address alone, never a tempfail.
#[tokio::test]
async fn a_replacement_recipient_gets_notify_and_orcpt_where_the_mta_takes_them() {
    use indymilter_test::{Actions, ProtoOpts, TestConnection};
    let mut d = TestDaemon::start(&config("")).await;
    for (offered, args) in [
        (
            common::daemon::postfix_actions(),
            Some(c("NOTIFY=DELAY ORCPT=rfc822;old@example.org")),
        ),
        (
            common::daemon::postfix_actions() - Actions::ADD_RCPT_EXT,
            None,
        ),
    ] {
        let mut conn = TestConnection::configure()
            .available_actions(offered)
            .available_opts(ProtoOpts::LEADING_SPACE | ProtoOpts::SKIP)
            .open_tcp(d.addr())
            .await
            .expect("milter connection");
        greet(&mut conn, "mx").await;
        assert_eq!(
            conn.mail(["<joe@example.net>"]).await.unwrap(),
            Status::Continue
        );
        let rcpt = [
            "<old@example.org>",
            "ORCPT=rfc822;old@example.org",
            "SIZE=1",
            "NOTIFY=DELAY",
        ];
        assert_eq!(conn.rcpt(rcpt).await.unwrap(), Status::Continue);
        let (actions, status) = conn.eom().await.unwrap();
        assert_eq!(status, Status::Continue);
        assert!(
            actions.actions.contains(&EomAction::AddRecipient {
                rcpt: c("<new@example.org>"),
                args: args.clone(),
            }),
            "{:?}",
            actions.actions
        );
    }
    d.shutdown().await;
}

#[tokio::test]
async fn quarantine_with_reason_header_and_discard_only_where_configured() {
    let mut d = TestDaemon::start(&config("")).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<hold@example.org>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_add_header("X-Quarantine-Reason", " held for review"),
        "{actions:?}"
    );
    assert!(actions.has_quarantine("held for review"), "{actions:?}");

    // Second message on the same connection: only the discard branch.
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<void@example.org>"]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Discard);
    assert!(actions.actions.is_empty(), "{actions:?}");

    // Third: discard for one recipient only deletes that recipient.
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<void@example.org>"]).await.unwrap();
    conn.rcpt(["<bob@example.org>"]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        actions.has_delete_recipient("<void@example.org>"),
        "{actions:?}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn abort_mid_message_and_client_gone_mid_message_leak_nothing() {
    let mut d = TestDaemon::start(&config("")).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();
    assert_eq!(d.daemon().messages_in_flight(), 1);
    conn.abort().await.unwrap();
    // The next message on the connection starts clean.
    conn.mail(["<b@example.net>"]).await.unwrap();
    assert_eq!(
        conn.rcpt(["<nobody@example.org>"]).await.unwrap(),
        reject_with("550 5.1.1 No such user here")
    );
    conn.rcpt(["<bob@example.org>"]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(actions.has_add_header("X-Dispatch", " checked for b@example.net"));
    assert_eq!(d.daemon().messages_in_flight(), 0);

    // A client that vanishes mid-message.
    let mut gone = open_greeted(d.addr(), "mx").await;
    gone.mail(["<a@example.net>"]).await.unwrap();
    gone.rcpt(["<alice@example.org>"]).await.unwrap();
    drop(gone);
    wait::until(
        WAIT,
        "the vanished client's message leaves the flight",
        || d.daemon().messages_in_flight() == 0,
    )
    .await;
    d.shutdown().await;
}

#[tokio::test]
async fn a_hanging_check_gives_tempfail_and_progress_is_sent_meanwhile() {
    let cfg = format!(
        r#"{LISTEN}
[checks.hang]
kind = "probe"
delay_ms = 60000
timeout = "1500ms"

[pipelines.p]
deadline = "2s"
checks = ["hang"]
"#
    );
    let mut d = TestDaemon::start(&cfg).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<b@example.org>"]).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    match status {
        Status::Tempfail { message: Some(m) } => {
            assert!(m.to_string_lossy().starts_with("451 4.7.1"), "{m:?}")
        }
        other => panic!("expected a 4xx tempfail, got {other:?}"),
    }
    assert!(
        actions.actions.contains(&EomAction::Progress),
        "PROGRESS while waiting: {actions:?}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn the_pipeline_is_chosen_by_daemon_name() {
    let cfg = format!(
        r#"{LISTEN}
[pipelines.mx]
[pipelines.mx.default]
action = "accept"

[pipelines.submission]
daemon_names = ["submission"]
[pipelines.submission.default]
action = "reject"
reply = {{ code = 554, status = "5.7.1", text = "submission pipeline" }}
"#
    );
    let mut d = TestDaemon::start(&cfg).await;
    let mut conn = open_greeted(d.addr(), "submission").await;
    conn.mail(["<a@example.org>"]).await.unwrap();
    assert_eq!(
        conn.rcpt(["<b@example.net>"]).await.unwrap(),
        reject_with("554 5.7.1 submission pipeline")
    );
    drop(conn);

    let mut conn = open_greeted(d.addr(), "smtpd").await;
    conn.mail(["<a@example.org>"]).await.unwrap();
    assert_eq!(
        conn.rcpt(["<b@example.net>"]).await.unwrap(),
        Status::Continue
    );
    // Closing the connections ends their open messages; shutdown then has
    // nothing to wait for.
    drop(conn);
    d.shutdown().await;
}

#[tokio::test]
async fn dry_run_refuses_nothing_and_adds_its_header() {
    let cfg = config("").replace("[pipelines.mx]\n", "[pipelines.mx]\ndry_run = true\n");
    let mut d = TestDaemon::start(&cfg).await;
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    assert_eq!(
        conn.rcpt(["<nobody@example.org>"]).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.rcpt(["<hold@example.org>"]).await.unwrap(),
        Status::Continue
    );
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        !actions
            .actions
            .iter()
            .any(|a| matches!(a, EomAction::Quarantine { .. })),
        "{actions:?}"
    );
    assert!(
        actions.actions.iter().any(|a| matches!(a, EomAction::AddHeader { name, value }
            if name.as_c_str() == c"X-Dispatch-Dry-Run" && value.to_string_lossy().contains("would reject"))),
        "{actions:?}"
    );
    d.shutdown().await;
}

#[tokio::test]
async fn reload_valid_and_invalid_while_a_session_is_open() {
    let mut d = TestDaemon::start(&config("")).await;
    let mut old = open_greeted(d.addr(), "mx").await;

    // A new config that refuses everything.
    let strict = format!(
        "{LISTEN}[pipelines.mx]\n[pipelines.mx.default]\naction = \"reject\"\nreply = {{ code = 554, status = \"5.7.1\", text = \"new policy\" }}\n"
    );
    d.rewrite_config(&strict);
    d.daemon().reload().await.expect("valid config reloads");

    // The open session keeps its policy...
    old.mail(["<a@example.net>"]).await.unwrap();
    assert_eq!(
        old.rcpt(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    // ...new sessions get the new one.
    let mut new = open_greeted(d.addr(), "mx").await;
    new.mail(["<a@example.net>"]).await.unwrap();
    assert_eq!(
        new.rcpt(["<alice@example.org>"]).await.unwrap(),
        reject_with("554 5.7.1 new policy")
    );

    // A broken config is refused with its position, and the last good one stays.
    d.rewrite_config(&format!("{LISTEN}[pipelines.mx]\nchecks = [\"nope\"]\n"));
    let errors = d
        .daemon()
        .reload()
        .await
        .expect_err("invalid config is refused")
        .to_string();
    assert!(
        errors.contains("milter-config.toml:4:11: check \"nope\" is not defined"),
        "{errors}"
    );
    let mut after = open_greeted(d.addr(), "mx").await;
    after.mail(["<a@example.net>"]).await.unwrap();
    assert_eq!(
        after.rcpt(["<alice@example.org>"]).await.unwrap(),
        reject_with("554 5.7.1 new policy")
    );
    drop((old, new, after));
    d.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_a_message_in_flight_finish() {
    let cfg = config("").replacen(
        LISTEN,
        &format!("[server]\nshutdown_grace = \"10s\"\n{LISTEN}"),
        1,
    );
    let mut d = TestDaemon::start(&cfg).await;
    let addr = d.addr();
    let mut conn = open_greeted(addr, "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();

    let daemon = d.daemon.take().expect("running");
    let stopping = tokio::spawn(daemon.shutdown());
    // New connections are refused once shutdown begins.
    let refused = wait::within_async(WAIT, async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener still accepts during shutdown");
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the message in flight"
    );
    // The message in flight completes normally.
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown finishes once the message is done")
        .unwrap();
}

#[tokio::test]
async fn unix_socket_with_mode_and_stale_file_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("milter.sock");
    // A stale socket file left by a crash.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let cfg = format!(
        "[[server.listen]]\naddress = \"unix:{}\"\nsocket_mode = \"0660\"\n{MX}",
        sock.display()
    );
    let mut d = TestDaemon::start(&cfg).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // A second instance on the same path refuses to start.
    let second = dispatch_milter::daemon::Daemon::start(
        &d.config,
        dispatch_milter::config::Registry::builtin(),
    )
    .await;
    match second {
        Err(e) => assert!(
            e.to_string().contains("belongs to a running instance"),
            "{e}"
        ),
        Ok(_) => panic!("a second instance took over a live socket"),
    }

    let mut conn = indymilter_test::TestConnection::configure()
        .available_actions(common::daemon::postfix_actions())
        .open_unix(&sock)
        .await
        .unwrap();
    greet(&mut conn, "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    assert_eq!(
        conn.rcpt(["<alice@example.org>"]).await.unwrap(),
        Status::Continue
    );
    conn.close().await.unwrap();
    d.shutdown().await;
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[tokio::test]
async fn negotiation_requests_only_what_the_policy_needs() {
    let cfg = format!(
        "{LISTEN}[pipelines.p]\n[[pipelines.p.destination]]\nmatch = [\"x.test\"]\ncopy = [\"a@x.test\"]\n"
    );
    let mut d = TestDaemon::start(&cfg).await;
    let conn = open(d.addr()).await;
    let actions = conn.negotiated_actions();
    assert!(actions.contains(indymilter_test::Actions::ADD_RCPT));
    assert!(
        !actions.contains(indymilter_test::Actions::CHANGE_SENDER),
        "{actions:?}"
    );
    assert!(
        !actions.contains(indymilter_test::Actions::REPLACE_BODY),
        "{actions:?}"
    );
    assert!(
        !actions.contains(indymilter_test::Actions::QUARANTINE),
        "{actions:?}"
    );
    assert!(
        conn.negotiated_opts()
            .contains(indymilter_test::ProtoOpts::LEADING_SPACE)
    );
    let macros = conn.requested_macros();
    let mail = macros
        .get(&MacroStage::Mail)
        .expect("MAIL macros requested")
        .to_string_lossy()
        .into_owned();
    assert!(mail.contains("{auth_authen}"), "{mail}");
    d.shutdown().await;
}

#[tokio::test]
async fn an_mta_without_a_needed_action_gets_tempfail_not_a_half_edited_message() {
    let mut d = TestDaemon::start(&config("")).await;
    // An MTA that offers header edits but no recipient changes.
    let mut conn = indymilter_test::TestConnection::configure()
        .available_actions(
            indymilter_test::Actions::ADD_HEADER | indymilter_test::Actions::REQUEST_MACROS,
        )
        .open_tcp(d.addr())
        .await
        .unwrap();
    greet(&mut conn, "mx").await;
    // A plain recipient needs only the header: delivered.
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    // A redirect needs DELRCPT/ADDRCPT, which the MTA did not grant.
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<old@example.org>"]).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    drop(conn);
    d.shutdown().await;
}

#[tokio::test]
async fn metrics_are_served_and_count_what_happened() {
    let cfg = config("").replacen(
        LISTEN,
        &format!("[server]\nmetrics_listen = \"127.0.0.1:0\"\n{LISTEN}"),
        1,
    );
    let mut d = TestDaemon::start(&cfg).await;
    let metrics_addr = d.daemon().metrics_address.expect("metrics listener");
    let mut conn = open_greeted(d.addr(), "mx").await;
    conn.mail(["<a@example.net>"]).await.unwrap();
    conn.rcpt(["<alice@example.org>"]).await.unwrap();
    conn.eom().await.unwrap();

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), http.read_to_string(&mut body))
        .await
        .expect("metrics answer")
        .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("dispatch_milter_messages_total{pipeline=\"mx\",verdict=\"accept\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("dispatch_milter_connections_open 1"),
        "{body}"
    );
    drop(conn);
    d.daemon().reload().await.unwrap();
    assert!(
        d.daemon()
            .metrics()
            .render()
            .contains("dispatch_milter_reloads_total{result=\"ok\"} 1")
    );
    d.shutdown().await;
}
