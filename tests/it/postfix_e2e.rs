//! dispatch-milter behind a real Postfix: each test starts the daemon
//! in-process on 127.0.0.1, a throwaway Postfix instance in a temporary
//! directory wired to it (`smtpd_milters`, `non_smtpd_milters`) and a sink
//! on 127.0.0.1 that Postfix relays everything to, then sends mail and
//! checks what Postfix answered and what reached the sink.
//!
//! Needs Postfix and swaks (`apt-get install postfix swaks`) and root, so
//! every test is `#[ignore]`d with what it needs (tests/common/tools.rs).

use crate::common;

use common::daemon::TestDaemon;
use common::postfix::{self, Delivery, Postfix, Sink, Wiring, message, smtp_send};
use common::wait;
use dispatch_milter::daemon::{Daemon, StartError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The longest any one test may run.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// Listener 0 picks the pipeline by `{daemon_name}` (Postfix's smtpd);
/// listener 1 serves `non_smtpd_milters` (sendmail(1)) with the `local`
/// pipeline. `LOCAL_PORT` is filled in with a free port: the daemon refuses
/// two listeners on "inet:127.0.0.1:0" as "listed twice".
const POLICY: &str = r#"
[[server.listen]]
address = "inet:127.0.0.1:0"

[[server.listen]]
address = "inet:127.0.0.1:LOCAL_PORT"
pipeline = "local"

[tables.boxes]
type = "inline"
entries = { "alice@example.org" = true, "bob@example.org" = true }

[modifiers.tag]
kind = "add_header"
name = "X-Dispatch"
value = "checked by {pipeline} for {sender}"

# Longer than a line: the daemon folds it with LF, Postfix writes CRLF.
[modifiers.long]
kind = "add_header"
name = "X-Dispatch-Note"
value = "this header is long enough to be folded by the daemon before it is handed to Postfix at the end of the message"

[modifiers.masq]
kind = "rewrite_sender"
pattern = "^(.+)@internal\\.example\\.org$"
replacement = "$1@example.org"

# The MX smtpd: mail from the Internet. The first pipeline, so the fallback
# for Postfix's default {daemon_name} ($myhostname).
[pipelines.mx]
modify = ["masq", "tag", "long"]
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
table = "boxes"
[pipelines.mx.default]
action = "reject"
reply = { code = 550, status = "5.1.1", text = "No such user here" }

# The submission service (-o milter_macro_daemon_name=submission): anything
# goes out, except to bob, whom the mx pipeline accepts.
[pipelines.submission]
daemon_names = ["submission"]
modify = ["tag"]
[[pipelines.submission.destination]]
match = ["bob@example.org"]
action = "reject"
reply = { code = 550, status = "5.7.1", text = "Submission may not write to bob" }

# sendmail(1) through non_smtpd_milters: never refuse an imitated RCPT.
[pipelines.local]
refuse_at_eom = true
modify = ["tag"]
[[pipelines.local.destination]]
match = ["nobody@example.org"]
action = "reject"
reply = { code = 550, status = "5.1.1", text = "Local mail to nobody is refused" }
"#;

/// One test's world. Fields drop in order: Postfix stops first, the serial
/// lock goes last.
struct Env {
    postfix: Postfix,
    daemon: TestDaemon,
    sink: Sink,
    /// The port of the `local` listener, for configs written later.
    local_port: u16,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Env {
    /// Fails the test when Postfix cannot run here (`postfix::require`).
    async fn start(policy: &str) -> Env {
        postfix::require();
        let serial = postfix::serial().await;
        let (daemon, local_port) = start_daemon(policy).await;
        let sink = Sink::start().await;
        let wiring = Wiring {
            smtpd_milter: daemon.tcp(0),
            non_smtpd_milter: daemon.tcp(1),
            relay: sink.addr,
        };
        let postfix = Postfix::start(&wiring).await;
        Env {
            postfix,
            daemon,
            sink,
            local_port,
            _serial: serial,
        }
    }

    /// Replace the daemon's config file (same listeners) and reload it.
    async fn reload(&self, policy: &str) {
        let policy = policy.replace("LOCAL_PORT", &self.local_port.to_string());
        self.daemon.rewrite_config(&policy);
        self.daemon
            .daemon()
            .reload()
            .await
            .unwrap_or_else(|e| panic!("the new config should load:\n{e}"));
    }
}

/// Start the daemon with `LOCAL_PORT` replaced by a free port; try another
/// port if that one was taken in the meantime.
async fn start_daemon(policy: &str) -> (TestDaemon, u16) {
    let mut last = String::new();
    for _ in 0..3 {
        let local_port = postfix::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("milter-config.toml");
        std::fs::write(
            &config,
            policy.replace("LOCAL_PORT", &local_port.to_string()),
        )
        .expect("write config");
        let registry = common::registry(Arc::new(common::Probes::default()));
        match Daemon::start(&config, registry).await {
            Ok(d) => {
                let daemon = TestDaemon {
                    daemon: Some(d),
                    dir,
                    config,
                };
                return (daemon, local_port);
            }
            Err(StartError::Bind(e)) => last = e,
            Err(e) => panic!("daemon should start:\n{e}"),
        }
    }
    panic!("daemon could not bind its listeners: {last}");
}

fn rcpts_of(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .flat_map(|d| d.rcpt_to.iter().cloned())
        .collect()
}

/// How long [`assert_never_delivered`] watches: three of Postfix's
/// one-second queue scans.
const NEVER_DELIVERED_PERIOD: Duration = Duration::from_secs(3);

/// Watches the sink for [`NEVER_DELIVERED_PERIOD`] and checks that nothing
/// with `subject` arrives. Absence has no event to wait on: the period is
/// what Postfix would need to deliver the message if it were going to (the
/// queue manager scans the incoming queue every second; a few scans), and
/// a delivery ends the wait at once.
async fn assert_never_delivered(env: &Env, subject: &str) {
    let quiet = wait::holds_for(NEVER_DELIVERED_PERIOD, || {
        env.sink.with_subject(subject).is_empty()
    })
    .await;
    let got = env.sink.with_subject(subject);
    assert!(
        quiet && got.is_empty(),
        "{subject:?} must not reach the sink: {got:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn of_two_recipients_one_is_refused_at_rcpt_with_the_policy_reply_the_other_delivered() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        // swaks, as an administrator would try it.
        let (transcript, status) = postfix::swaks(
            env.postfix.mx,
            &[
                "--from",
                "someone@example.net",
                "--to",
                "alice@example.org,nobody@example.org",
                "--header",
                "Subject: two recipients",
                "--body",
                "hello alice",
            ],
        )
        .await;
        assert_eq!(status, Some(0), "{transcript}");
        assert!(
            transcript.contains("<** 550 5.1.1 No such user here"),
            "Postfix passes the milter's reply through:\n{transcript}"
        );
        assert!(
            transcript.contains("queued as"),
            "the other recipient is accepted:\n{transcript}"
        );

        // The same with our own client, reply by reply.
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["bob@example.org", "nobody@example.org"],
            &message(
                "someone@example.net",
                "bob@example.org",
                "two recipients, client",
                "hello bob",
            ),
        )
        .await;
        assert_eq!(t.rcpts[0].code, 250, "{}", t.log);
        assert_eq!(
            t.rcpts[1].text(),
            "550 5.1.1 No such user here",
            "{}",
            t.log
        );
        assert!(t.queued(), "{}", t.log);

        let d = env.sink.wait_subject("two recipients", 1).await;
        assert_eq!(rcpts_of(&d), BTreeSet::from(["alice@example.org".into()]));
        assert_eq!(d[0].mail_from, "someone@example.net");
        let d = env.sink.wait_subject("two recipients, client", 1).await;
        assert_eq!(rcpts_of(&d), BTreeSet::from(["bob@example.org".into()]));
        env.postfix
            .wait_log("milter-reject: RCPT from unknown[127.0.0.1]: 550 5.1.1 No such user here")
            .await;
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn a_header_added_by_the_milter_is_in_the_delivered_message() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["alice@example.org"],
            &message(
                "someone@example.net",
                "alice@example.org",
                "header",
                "a body line\n.a line that starts with a dot",
            ),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("header", 1).await;
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(
            d[0].header("X-Dispatch"),
            vec!["checked by mx for someone@example.net".to_string()],
            "{}",
            d[0].data
        );
        // Exactly one space after the colon (LEADING_SPACE negotiated).
        assert!(
            d[0].head()
                .contains("\r\nX-Dispatch: checked by mx for someone@example.net\r\n"),
            "{}",
            d[0].head()
        );
        // The long header arrives folded, CRLF and white space, no bare LF.
        let note = "this header is long enough to be folded by the daemon before it is handed to Postfix at the end of the message";
        assert_eq!(d[0].header("X-Dispatch-Note"), vec![note.to_string()]);
        let raw = d[0]
            .head()
            .split("\r\nX-Dispatch-Note:")
            .nth(1)
            .expect("X-Dispatch-Note in the header section");
        let mut lines = raw.split("\r\n");
        lines.next();
        let continuations = lines.take_while(|l| l.starts_with([' ', '\t'])).count();
        assert!(continuations >= 1, "folded: {raw:?}");
        assert!(
            !d[0].data.replace("\r\n", "").contains('\n'),
            "no bare LF: {:?}",
            d[0].data
        );
        assert!(
            d[0].data
                .contains("\r\n\r\na body line\r\n.a line that starts with a dot\r\n"),
            "the body is intact: {:?}",
            d[0].data
        );
        // Postfix's own Received: comes first; the milter's header is added
        // at the end of the header section.
        assert!(d[0].head().starts_with("Received: "), "{}", d[0].head());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn quarantine_puts_the_message_on_hold_with_its_reason_header() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["hold@example.org", "alice@example.org"],
            &message(
                "someone@example.net",
                "hold@example.org",
                "quarantined",
                "hold me",
            ),
        )
        .await;
        assert!(t.queued(), "quarantine is not a refusal: {}", t.log);
        let id = t.queue_id().expect("queue id in the 250 reply");
        env.postfix
            .wait_log(&format!("{id}: milter-hold: END-OF-MESSAGE"))
            .await;

        let queues = env.postfix.queue_ids().await;
        assert_eq!(
            queues.get("hold"),
            Some(&vec![id.clone()]),
            "postqueue -j: {queues:?}"
        );
        let queue_file = env.postfix.postcat(&id).await;
        assert!(
            queue_file.contains("X-Quarantine-Reason: held for review"),
            "{queue_file}"
        );
        assert!(
            queue_file.contains("X-Dispatch: checked by mx for someone@example.net"),
            "the other edits are kept: {queue_file}"
        );
        assert_never_delivered(&env, "quarantined").await;

        // Releasing it (postsuper -H) delivers it with the reason header.
        let out = postfix::run(
            tokio::process::Command::new(postfix::POSTSUPER)
                .arg("-c")
                .arg(&env.postfix.config_dir)
                .arg("-H")
                .arg(&id),
            None,
        )
        .await;
        assert!(out.status.success(), "postsuper -H: {out:?}");
        let d = env.sink.wait_subject("quarantined", 2).await;
        assert_eq!(
            rcpts_of(&d),
            BTreeSet::from(["hold@example.org".into(), "alice@example.org".into()])
        );
        assert_eq!(d[0].header("X-Quarantine-Reason"), vec!["held for review"]);
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn redirect_copy_and_sender_change_show_in_the_delivered_envelope() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let t = smtp_send(
            env.postfix.mx,
            "joe@internal.example.org",
            &["old@example.org", "sales@example.org"],
            &message(
                "joe@internal.example.org",
                "sales@example.org",
                "rerouted",
                "where does this go",
            ),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("rerouted", 3).await;
        assert_eq!(
            rcpts_of(&d),
            BTreeSet::from([
                "new@example.org".into(),
                "sales@example.org".into(),
                "archive@example.org".into(),
            ]),
            "old@ is redirected to new@, sales@ is copied to archive@: {d:#?}"
        );
        for delivery in &d {
            assert_eq!(delivery.mail_from, "joe@example.org", "{delivery:#?}");
        }
        assert_eq!(
            d.iter().map(|x| x.rcpt_to.len()).sum::<usize>(),
            3,
            "each recipient exactly once: {d:#?}"
        );
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

/// A redirected recipient's delivery-status requests (RFC 3461 NOTIFY and
/// ORCPT) reach the next hop with the address that replaced it: the
/// daemon adds it with ADDRCPT_PAR, and Postfix passes them on to a server
/// that offers DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn a_redirected_recipient_keeps_its_dsn_parameters() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let t = smtp_send(
            env.postfix.mx,
            "joe@example.net",
            &["old@example.org NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;old@example.org"],
            &message(
                "joe@example.net",
                "old@example.org",
                "dsn kept",
                "notify me",
            ),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("dsn kept", 1).await;
        assert_eq!(d[0].rcpt_to, ["new@example.org"], "{d:#?}");
        let params = &d[0].rcpt_params[0];
        assert!(params.contains("NOTIFY=SUCCESS,FAILURE"), "{d:#?}");
        assert!(params.contains("ORCPT=rfc822;old@example.org"), "{d:#?}");
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn mx_and_submission_services_get_their_own_pipelines() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        // bob: accepted on the MX port, refused on the submission port.
        let mx = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["bob@example.org"],
            &message("someone@example.net", "bob@example.org", "via mx", "x"),
        )
        .await;
        assert!(mx.queued(), "{}", mx.log);
        let sub = smtp_send(
            env.postfix.submission,
            "alice@example.org",
            &["bob@example.org"],
            &message(
                "alice@example.org",
                "bob@example.org",
                "via submission",
                "x",
            ),
        )
        .await;
        assert_eq!(
            sub.rcpts[0].text(),
            "550 5.7.1 Submission may not write to bob",
            "{}",
            sub.log
        );
        assert!(sub.end.is_none(), "{}", sub.log);

        // someone@example.net: refused on the MX port, accepted on submission.
        let mx_out = smtp_send(
            env.postfix.mx,
            "alice@example.org",
            &["someone@example.net"],
            &message(
                "alice@example.org",
                "someone@example.net",
                "out via mx",
                "x",
            ),
        )
        .await;
        assert_eq!(
            mx_out.rcpts[0].text(),
            "550 5.1.1 No such user here",
            "{}",
            mx_out.log
        );
        let sub_out = smtp_send(
            env.postfix.submission,
            "alice@example.org",
            &["someone@example.net"],
            &message(
                "alice@example.org",
                "someone@example.net",
                "out via submission",
                "x",
            ),
        )
        .await;
        assert!(sub_out.queued(), "{}", sub_out.log);

        let d = env.sink.wait_subject("via mx", 1).await;
        assert_eq!(
            d[0].header("X-Dispatch"),
            vec!["checked by mx for someone@example.net"]
        );
        let d = env.sink.wait_subject("out via submission", 1).await;
        assert_eq!(
            d[0].header("X-Dispatch"),
            vec!["checked by submission for alice@example.org"]
        );
        assert_never_delivered(&env, "via submission").await;
        assert!(env.sink.with_subject("out via mx").is_empty());
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn sendmail_goes_through_non_smtpd_milters_and_is_never_stuck() {
    let env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let out = env
            .postfix
            .sendmail(
                "local@example.net",
                &["alice@example.org"],
                &message("local@example.net", "alice@example.org", "local ok", "x"),
            )
            .await;
        assert!(out.status.success(), "sendmail: {out:?}");
        let d = env.sink.wait_subject("local ok", 1).await;
        assert_eq!(d[0].mail_from, "local@example.net");
        assert_eq!(
            d[0].header("X-Dispatch"),
            vec!["checked by local for local@example.net"],
            "the local pipeline handled it: {}",
            d[0].data
        );

        // One refused recipient refuses the whole message at end of message
        // (refuse_at_eom): Postfix returns it to the sender, nothing sticks.
        let out = env
            .postfix
            .sendmail(
                "local@example.net",
                &["alice@example.org", "nobody@example.org"],
                &message(
                    "local@example.net",
                    "nobody@example.org",
                    "local refused",
                    "x",
                ),
            )
            .await;
        assert!(out.status.success(), "sendmail queues first: {out:?}");
        let log = env
            .postfix
            .wait_log("milter-reject: END-OF-MESSAGE from localhost[127.0.0.1]: 5.1.1 Local mail to nobody is refused")
            .await;
        assert!(
            !log.contains("milter configuration error"),
            "no imitated RCPT was refused:\n{log}"
        );
        let bounces = env
            .sink
            .wait_until(postfix::STEP, "the bounce to local@example.net", |all| {
                all.iter().any(|d| {
                    d.mail_from.is_empty() && d.rcpt_to == ["local@example.net".to_string()]
                })
            })
            .await;
        let bounce = bounces
            .iter()
            .find(|d| d.mail_from.is_empty())
            .expect("bounce");
        assert!(
            bounce.data.contains("Local mail to nobody is refused"),
            "the bounce quotes the policy's reply: {}",
            bounce.data
        );
        assert_never_delivered(&env, "local refused").await;
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn with_the_daemon_stopped_postfix_answers_451() {
    let mut env = Env::start(POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let before = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["alice@example.org"],
            &message(
                "someone@example.net",
                "alice@example.org",
                "before stop",
                "x",
            ),
        )
        .await;
        assert!(before.queued(), "{}", before.log);
        env.sink.wait_subject("before stop", 1).await;

        env.daemon.shutdown().await;
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["alice@example.org"],
            &message("someone@example.net", "alice@example.org", "while down", "x"),
        )
        .await;
        // Postfix tries the milter at connect; with smtpd_delay_reject (the
        // default) the tempfail is given at MAIL FROM.
        assert_eq!(t.greeting.as_ref().map(|r| r.code), Some(220), "{}", t.log);
        assert_eq!(
            t.mail.as_ref().map(postfix::Reply::text),
            Some("451 4.7.1 Service unavailable - try again later".to_string()),
            "{}",
            t.log
        );
        assert!(t.rcpts.is_empty() && t.end.is_none(), "{}", t.log);
        env.postfix
            .wait_log("NOQUEUE: milter-reject: MAIL from unknown[127.0.0.1]: 451 4.7.1 Service unavailable - try again later")
            .await;
        assert!(env.postfix.queue().await.is_empty());
        assert_never_delivered(&env, "while down").await;
    })
    .await;
}

/// A policy whose header says which version of the config decided.
fn versioned(version: u32) -> String {
    format!(
        r#"
[[server.listen]]
address = "inet:127.0.0.1:0"

[[server.listen]]
address = "inet:127.0.0.1:LOCAL_PORT"
pipeline = "local"

[modifiers.version]
kind = "add_header"
name = "X-Policy-Version"
value = "{version}"

[pipelines.mx]
modify = ["version"]

[pipelines.local]
refuse_at_eom = true
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn reloading_while_mail_flows_loses_nothing() {
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 20;
    let env = Env::start(&versioned(0)).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let mx = env.postfix.mx;
        let mut senders = Vec::new();
        for s in 0..SENDERS {
            senders.push(tokio::spawn(async move {
                let mut results = Vec::new();
                for n in 0..PER_SENDER {
                    let subject = format!("flow {s}-{n}");
                    let t = smtp_send(
                        mx,
                        "someone@example.net",
                        &["alice@example.org"],
                        &message("someone@example.net", "alice@example.org", &subject, "x"),
                    )
                    .await;
                    results.push((subject, t));
                }
                results
            }));
        }
        // Reload every few tens of milliseconds for as long as mail flows
        // (the sleep paces the reloads; it waits for nothing).
        let mut version = 0;
        while !senders.iter().all(|s| s.is_finished()) {
            tokio::time::sleep(Duration::from_millis(40)).await;
            version += 1;
            env.reload(&versioned(version)).await;
        }
        assert!(version >= 3, "only {version} reloads happened while mail flowed");
        let mut results = Vec::new();
        for s in senders {
            results.extend(s.await.expect("sender task"));
        }
        assert_eq!(results.len(), SENDERS * PER_SENDER);

        let mut queued = Vec::new();
        let mut tempfailed = Vec::new();
        for (subject, t) in &results {
            if t.queued() {
                queued.push(subject.clone());
            } else {
                let refusal = t
                    .refusal()
                    .unwrap_or_else(|| panic!("{subject}: neither queued nor refused: {}", t.log));
                assert!(
                    (400..500).contains(&refusal.code),
                    "{subject}: only a 4xx may refuse during a reload, got {refusal}\n{}",
                    t.log
                );
                tempfailed.push(subject.clone());
            }
        }

        // Every queued message reaches the sink, exactly once, with the
        // header of one policy version.
        let want = queued.len();
        let all = env
            .sink
            .wait_until(postfix::STEP, &format!("{want} queued messages"), |all| {
                let subjects: BTreeSet<String> = all.iter().map(Delivery::subject).collect();
                queued.iter().all(|s| subjects.contains(s))
            })
            .await;
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        for subject in &queued {
            let d: Vec<&Delivery> = all.iter().filter(|d| &d.subject() == subject).collect();
            assert_eq!(d.len(), 1, "{subject} delivered once: {d:#?}");
            let v = d[0].header("X-Policy-Version");
            assert_eq!(v.len(), 1, "{subject}: one version header: {}", d[0].data);
            *versions.entry(v[0].clone()).or_default() += 1;
        }
        for subject in &tempfailed {
            assert!(
                all.iter().all(|d| &d.subject() != subject),
                "{subject} was refused but delivered"
            );
        }
        println!(
            "reload under load: {} sent, {} delivered, {} tempfailed, {version} reloads, delivered by policy version {versions:?}",
            results.len(),
            queued.len(),
            tempfailed.len()
        );
        assert_eq!(queued.len() + tempfailed.len(), SENDERS * PER_SENDER);
        assert!(
            versions.len() >= 2,
            "the reloads happened while mail was delivered: {versions:?}"
        );

        // After the last reload, new mail gets the last version.
        let t = smtp_send(
            mx,
            "someone@example.net",
            &["alice@example.org"],
            &message("someone@example.net", "alice@example.org", "after reloads", "x"),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("after reloads", 1).await;
        assert_eq!(d[0].header("X-Policy-Version"), vec![version.to_string()]);
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

/// The submission pipeline signs with `dkim_sign`, the mx pipeline runs
/// `spf` (whose result only goes into Authentication-Results). `DNS_ADDR`
/// is the loopback DNS server, `KEY_PATH` the private copy of the key.
const SIGN_AND_SPF: &str = r#"
[[server.listen]]
address = "inet:127.0.0.1:0"

[[server.listen]]
address = "inet:127.0.0.1:LOCAL_PORT"
pipeline = "local"

[dns]
nameservers = ["DNS_ADDR"]
timeout = "500ms"
attempts = 1

[checks.spf]
kind = "spf"
on_fail = "ignore"
on_softfail = "ignore"

[modifiers.sign]
kind = "dkim_sign"
keys = [{ domain = "example.org", selector = "e2e", key = "KEY_PATH" }]

[pipelines.mx]
authserv_id = "mx.example.org"
checks = ["spf"]

[pipelines.submission]
daemon_names = ["submission"]
modify = ["sign"]

[pipelines.local]
refuse_at_eom = true
"#;

/// The receiving side's check of the delivered message.
const VERIFY_DKIM: &str = r#"
[dns]
timeout = "500ms"
attempts = 1

[checks.dkim]
kind = "dkim"
on_fail = "ignore"

[pipelines.in]
authserv_id = "verify.test"
checks = ["dkim"]
"#;

fn test_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// A private copy of a test key (the loader refuses world-readable keys).
fn private_key_copy(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    std::fs::copy(test_key(name), &to).expect("copy key");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    to
}

/// The delivered message as the engine sees it from the MTA: headers with
/// the space after the colon removed and folds kept, and the body.
fn as_received(delivery: &Delivery) -> common::Mail {
    let (head, body) = delivery
        .data
        .split_once("\r\n\r\n")
        .expect("a header section and a body");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("a continuation after a header");
            last.1.push_str("\r\n");
            last.1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("a header line");
            let value = value.strip_prefix(' ').unwrap_or(value);
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let rcpts: Vec<&str> = delivery.rcpt_to.iter().map(String::as_str).collect();
    let mut mail = common::Mail::new(&delivery.mail_from, &rcpts);
    mail.headers = headers;
    mail.body = body.to_string();
    mail
}

/// The Authentication-Results that the `dkim` check adds for `mail`.
async fn dkim_results(dns: &common::dns_server::DnsServer, mail: &common::Mail) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = common::compile_resolving(dns, &dir.path().join("verify.toml"), VERIFY_DKIM);
    let run = common::run_mail(&policy, "in", mail).await;
    let outcome = run.outcome.expect("the message reached end of message");
    let results: Vec<String> = outcome
        .edits
        .iter()
        .filter_map(|e| match e {
            dispatch_milter::edits::Edit::InsertHeader { name, value, .. }
            | dispatch_milter::edits::Edit::AddHeader { name, value }
                if name.eq_ignore_ascii_case("Authentication-Results") =>
            {
                Some(value.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "{:?}", outcome.edits);
    results[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn submission_mail_is_dkim_signed_and_mx_mail_gets_spf_authentication_results() {
    let dns = common::dns_server::DnsServer::start_with_test_zones().await;
    let p = std::fs::read_to_string(test_key("rsa2048-pkcs1.pub.b64")).expect("public key");
    dns.add_txt(
        "e2e._domainkey.example.org",
        &format!("v=DKIM1; k=rsa; p={}", p.trim()),
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let key = private_key_copy(keys.path(), "rsa2048-pkcs1.pem");
    let config = SIGN_AND_SPF
        .replace("DNS_ADDR", &dns.addr().to_string())
        .replace("KEY_PATH", key.to_str().expect("UTF-8 key path"));
    let env = Env::start(&config).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        // Submission: signed for example.org.
        let t = smtp_send(
            env.postfix.submission,
            "alice@example.org",
            &["someone@example.net"],
            &message(
                "alice@example.org",
                "someone@example.net",
                "signed via submission",
                "a signed body\n.with a dot line",
            ),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("signed via submission", 1).await;
        let sigs = d[0].header("DKIM-Signature");
        assert_eq!(sigs.len(), 1, "{}", d[0].data);
        let d_tag = sigs[0].split(';').find_map(|t| {
            let (k, v) = t.split_once('=')?;
            (k.trim() == "d").then(|| v.trim().to_string())
        });
        assert_eq!(d_tag.as_deref(), Some("example.org"), "{}", sigs[0]);
        let results = dkim_results(&dns, &as_received(&d[0])).await;
        assert!(
            results.contains("dkim=pass") && results.contains("header.d=example.org"),
            "the delivered message verifies: {results}\n{}",
            d[0].data
        );
        assert!(
            d[0].header("Authentication-Results").is_empty(),
            "submission runs no checks: {}",
            d[0].data
        );

        // MX: the SPF result in Authentication-Results, not signed.
        let t = smtp_send(
            env.postfix.mx,
            "alice@example.org",
            &["bob@example.org"],
            &message("alice@example.org", "bob@example.org", "spf via mx", "x"),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("spf via mx", 1).await;
        let ar = d[0].header("Authentication-Results");
        assert_eq!(ar.len(), 1, "{}", d[0].data);
        assert!(ar[0].starts_with("mx.example.org; spf="), "{}", d[0].data);
        assert!(ar[0].contains("smtp.mailfrom=example.org"), "{}", ar[0]);
        assert!(d[0].header("DKIM-Signature").is_empty(), "{}", d[0].data);
        env.postfix.wait_queue_empty().await;
    })
    .await;
}

/// Header deletions that meet on one message: two `remove_header` modifiers
/// on three instances of one name, and a `remove_header` beside the
/// deletion of forged Authentication-Results. Every index must count the
/// headers as Postfix holds them after the deletions before it, so exactly
/// the instances meant are gone at the sink (issue 15, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn several_header_deletions_reach_exactly_the_instances_they_mean() {
    let policy = POLICY
        .replace(
            "[pipelines.mx]\nmodify = [\"masq\", \"tag\", \"long\"]",
            "[pipelines.mx]\nauthserv_id = \"mx.example.org\"\nmodify = [\"masq\", \"tag\", \"long\", \"strip_a\", \"strip_c\", \"strip_other_ar\"]",
        )
        .replace(
            "# The MX smtpd:",
            r#"[modifiers.strip_a]
kind = "remove_header"
name = "X-Tag"
pattern = "^a$"

[modifiers.strip_c]
kind = "remove_header"
name = "X-Tag"
pattern = "^c$"

[modifiers.strip_other_ar]
kind = "remove_header"
name = "Authentication-Results"
pattern = "^other\\.example;"

# The MX smtpd:"#,
        );
    assert!(
        policy.contains("strip_other_ar\"]"),
        "the policy was edited"
    );
    let env = Env::start(&policy).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        let data = message(
            "someone@example.net",
            "alice@example.org",
            "several deletions",
            "hello",
        )
        .replacen(
            "Subject:",
            "X-Tag: a\nAuthentication-Results: (x) mx.example.org; dkim=pass\nX-Tag: b\nAuthentication-Results: other.example; spf=pass\nX-Tag: c\nAuthentication-Results: third.example; spf=fail\nSubject:",
            1,
        );
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["alice@example.org"],
            &data,
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("several deletions", 1).await;
        assert_eq!(d[0].header("X-Tag"), vec!["b".to_string()], "{}", d[0].head());
        assert_eq!(
            d[0].header("Authentication-Results"),
            vec!["third.example; spf=fail".to_string()],
            "{}",
            d[0].head()
        );
    })
    .await;
}

/// A policy that refuses at no stage before end of message, so the daemon
/// asks Postfix for no reply at connect, HELO, MAIL FROM and RCPT TO; the
/// sender rewrite fails for one address, an internal failure at MAIL FROM.
const QUIET_POLICY: &str = r#"
[[server.listen]]
address = "inet:127.0.0.1:0"

[[server.listen]]
address = "inet:127.0.0.1:LOCAL_PORT"
pipeline = "local"

[modifiers.resend]
kind = "rewrite_sender"
table = { "broken@example.net" = "not-an-address" }

[modifiers.tag]
kind = "add_header"
name = "X-Dispatch"
value = "checked by {pipeline}"

[pipelines.mx]
modify = ["resend", "tag"]

[pipelines.local]
modify = ["tag"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postfix, swaks and root: apt-get install postfix swaks"]
async fn a_failure_at_a_stage_without_reply_is_answered_at_the_end_of_data() {
    let env = Env::start(QUIET_POLICY).await;
    postfix::bounded(TEST_LIMIT, "test", async {
        // Postfix does not wait for the milter at MAIL FROM: it accepts it,
        // and the rewrite's failure refuses the message after the data.
        let t = smtp_send(
            env.postfix.mx,
            "broken@example.net",
            &["alice@example.org"],
            &message(
                "broken@example.net",
                "alice@example.org",
                "failed rewrite",
                "hello",
            ),
        )
        .await;
        assert_eq!(t.mail.as_ref().map(|r| r.code), Some(250), "{}", t.log);
        assert_eq!(t.rcpts[0].code, 250, "{}", t.log);
        assert_eq!(
            t.end.as_ref().map(|r| r.text()),
            Some("451 4.7.1 Temporary failure, try again later".to_string()),
            "{}",
            t.log
        );
        // The next message on a fresh session goes through with its header.
        let t = smtp_send(
            env.postfix.mx,
            "someone@example.net",
            &["alice@example.org"],
            &message(
                "someone@example.net",
                "alice@example.org",
                "quiet stages",
                "hello",
            ),
        )
        .await;
        assert!(t.queued(), "{}", t.log);
        let d = env.sink.wait_subject("quiet stages", 1).await;
        assert_eq!(d[0].mail_from, "someone@example.net");
        assert!(
            d[0].data.contains("X-Dispatch: checked by mx"),
            "{}",
            d[0].data
        );
        env.postfix.wait_queue_empty().await;
    })
    .await;
}
