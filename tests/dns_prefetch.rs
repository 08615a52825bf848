//! Lookups start as soon as what they need is known, not when the check
//! that needs them runs: DMARC's policy records at MAIL FROM (every level of
//! the tree walk at once), DKIM keys when the DKIM-Signature header
//! arrives. Each name is asked for once per message, however many checks
//! read it. The engine is driven stage by stage against the loopback DNS
//! server with the resolver's cache off, so every query the server counts
//! is one the message really made.

mod common;

use common::dns_server::{DnsServer, Failure, zones_dir};
use common::signing::dkim_sign;
use common::{Mail, reply_code};
use dispatch_milter::config::{Registry, compile_str};
use dispatch_milter::engine::{MessageOutcome, Session, StageReply};
use dispatch_milter::message::ConnectionFacts;
use dispatch_milter::policy::Policy;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const POLICY: &str = r#"
[dns]
timeout = "2s"
attempts = 1
cache_size = 0

[checks.dkim]
kind = "dkim"

[checks.dmarc]
kind = "dmarc"

[pipelines.mx]
authserv_id = "mx.test"
checks = ["dkim", "dmarc"]
"#;

async fn dns() -> DnsServer {
    let server = DnsServer::start().await;
    server.load_zone_dir(zones_dir().join("auth"));
    server
}

fn policy(server: &DnsServer) -> Arc<Policy> {
    let mut registry = Registry::builtin();
    registry.set_nameservers(vec![server.addr()]);
    match compile_str(Path::new("t.toml"), POLICY, &registry) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("config should compile:\n{e}"),
    }
}

/// A message from aligned.test (p=reject), DKIM-signed there: DMARC passes
/// through the aligned signature.
fn signed() -> Mail {
    let mut m = Mail::new("alice@aligned.test", &["bob@rcpt.test"]);
    m.headers[0].1 = "Alice <alice@aligned.test>".into();
    dkim_sign(&mut m, "aligned.test", false);
    m
}

/// Wait (at most 5 s) until `done` holds; the lookups run in the background.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connect, HELO, MAIL FROM: the stage at which DMARC's records are known.
async fn up_to_mail(policy: &Arc<Policy>, mail: &Mail) -> Session {
    let facts = ConnectionFacts {
        client_ip: "192.0.2.10".parse().ok(),
        client_name: Some("client.example.net".into()),
        ..ConnectionFacts::default()
    };
    let mut session = Session::new(policy.clone(), 0, facts);
    assert_eq!(session.connect().await, StageReply::Continue);
    assert_eq!(
        session.helo("client.example.net", None).await,
        StageReply::Continue
    );
    let reply = session.mail(&format!("<{}>", mail.from), &[], None).await;
    assert_eq!(reply, StageReply::Continue);
    session
}

async fn rest_of_message(session: &mut Session, mail: &Mail) -> MessageOutcome {
    for to in &mail.to {
        let reply = session.rcpt(&format!("<{to}>"), &[]).await;
        assert_eq!(reply_code(&reply), 250);
    }
    for (n, v) in &mail.headers {
        session.header(n, v);
    }
    session.body(mail.body.as_bytes());
    session.eom().await
}

fn result_of(outcome: &MessageOutcome, check: &str) -> String {
    outcome
        .report
        .checks
        .iter()
        .find(|c| c.name == check)
        .map(|c| c.result.to_string())
        .unwrap_or_else(|| panic!("no {check} in {:?}", outcome.report.checks))
}

#[tokio::test]
async fn dmarc_records_are_asked_for_at_mail_from_every_level_at_once() {
    let server = dns().await;
    // Slow answers, so both levels of the tree are in flight together if
    // (and only if) they were asked for at once.
    server.set_delay("_dmarc.aligned.test", Duration::from_millis(300));
    server.set_delay("_dmarc.test", Duration::from_millis(300));
    let policy = policy(&server);
    let mail = signed();

    let mut session = up_to_mail(&policy, &mail).await;
    until("both DMARC levels to be asked for after MAIL FROM", || {
        server.queries_for("_dmarc.aligned.test") == 1 && server.queries_for("_dmarc.test") == 1
    })
    .await;
    assert_eq!(
        server.peak_in_flight(),
        2,
        "the tree walk's two levels should be in flight together"
    );

    let outcome = rest_of_message(&mut session, &mail).await;
    assert_eq!(result_of(&outcome, "dmarc"), "pass");
    assert_eq!(result_of(&outcome, "dkim"), "pass");
    // End of message used the early answers: nothing asked twice, although
    // the resolver keeps no cache.
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 1);
    assert_eq!(server.queries_for("_dmarc.test"), 1);
}

#[tokio::test]
async fn a_dkim_key_is_asked_for_when_its_header_arrives_and_only_once() {
    let server = dns().await;
    let policy = policy(&server);
    let mail = signed();
    let key = "sel._domainkey.aligned.test";

    let mut session = up_to_mail(&policy, &mail).await;
    let reply = session.rcpt("<bob@rcpt.test>", &[]).await;
    assert_eq!(reply, StageReply::Continue);
    assert_eq!(server.queries_for(key), 0, "not known before the headers");
    for (n, v) in &mail.headers {
        session.header(n, v);
    }
    until("the key to be asked for during the headers", || {
        server.queries_for(key) == 1
    })
    .await;
    session.body(mail.body.as_bytes());
    let outcome = session.eom().await;
    assert_eq!(result_of(&outcome, "dkim"), "pass");
    assert_eq!(result_of(&outcome, "dmarc"), "pass");
    // dkim, dmarc and the key-size check all read the key: one query.
    assert_eq!(server.queries_for(key), 1);
}

#[tokio::test]
async fn an_early_lookup_that_failed_is_asked_again_at_end_of_message() {
    let server = dns().await;
    server.set_failure("_dmarc.aligned.test", Failure::ServFail);
    let policy = policy(&server);
    let mail = signed();

    let mut session = up_to_mail(&policy, &mail).await;
    until("the early DMARC lookup", || {
        server.queries_for("_dmarc.aligned.test") == 1
    })
    .await;
    // The failure was passing: end of message must not inherit it.
    server.clear_failure("_dmarc.aligned.test");
    let outcome = rest_of_message(&mut session, &mail).await;
    assert_eq!(result_of(&outcome, "dmarc"), "pass");
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 2);
}

#[tokio::test]
async fn a_definite_no_record_answer_is_kept_for_the_message() {
    let server = dns().await;
    let policy = policy(&server);
    // spf.test publishes no DMARC record: the early "no such record" is
    // the answer at end of message too.
    let mut mail = Mail::new("alice@spf.test", &["bob@rcpt.test"]);
    mail.headers[0].1 = "alice@spf.test".into();
    let mut session = up_to_mail(&policy, &mail).await;
    until("the early DMARC lookup", || {
        server.queries_for("_dmarc.spf.test") == 1
    })
    .await;
    let outcome = rest_of_message(&mut session, &mail).await;
    assert_eq!(result_of(&outcome, "dmarc"), "none");
    assert_eq!(server.queries_for("_dmarc.spf.test"), 1);
    assert_eq!(server.queries_for("_dmarc.test"), 1);
}
