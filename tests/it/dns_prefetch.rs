//! Lookups start as soon as what they need is known, not when the check
//! that needs them runs: DMARC's policy records at MAIL FROM (every level of
//! the tree walk at once), DKIM keys when the DKIM-Signature header
//! arrives. Each name is asked for once per message, however many checks
//! read it. The engine is driven stage by stage against the loopback DNS
//! server with the resolver's cache off, so every query the server counts
//! is one the message really made.

use crate::common;

use common::dns_server::{DnsServer, Failure};
use common::signing::dkim_sign;
use common::wait::{self, WAIT};
use common::{Mail, reported};
use dispatch_milter::engine::{Session, StageReply};
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

fn policy(server: &DnsServer) -> Arc<Policy> {
    policy_from(server, POLICY)
}

fn policy_from(server: &DnsServer, text: &str) -> Arc<Policy> {
    common::compile_resolving(server, Path::new("t.toml"), text)
}

/// A message from aligned.test (p=reject), DKIM-signed there: DMARC passes
/// through the aligned signature.
fn signed() -> Mail {
    let mut m = Mail::new("alice@aligned.test", &["bob@rcpt.test"]);
    m.headers[0].1 = "Alice <alice@aligned.test>".into();
    dkim_sign(&mut m, "aligned.test", false);
    m
}

/// Connect, HELO, MAIL FROM: the stage at which DMARC's records are known.
async fn up_to_mail(policy: &Arc<Policy>, mail: &Mail) -> Session {
    let facts = ConnectionFacts {
        client_name: Some("client.example.net".into()),
        ..common::client_at("192.0.2.10")
    };
    common::session_at_mail(policy, facts, &mail.from).await
}

#[tokio::test]
async fn dmarc_records_are_asked_for_at_mail_from_every_level_at_once() {
    let server = DnsServer::start_with_auth_zones().await;
    // Slow answers, so both levels of the tree are in flight together if
    // (and only if) they were asked for at once.
    server.set_delay("_dmarc.aligned.test", Duration::from_millis(300));
    server.set_delay("_dmarc.test", Duration::from_millis(300));
    let policy = policy(&server);
    let mail = signed();

    let mut session = up_to_mail(&policy, &mail).await;
    wait::until(
        WAIT,
        "both DMARC levels to be asked for after MAIL FROM",
        || server.queries_for("_dmarc.aligned.test") == 1 && server.queries_for("_dmarc.test") == 1,
    )
    .await;
    assert_eq!(
        server.peak_in_flight(),
        2,
        "the tree walk's two levels should be in flight together"
    );

    let outcome = common::finish_session(&mut session, &mail).await;
    assert_eq!(reported(&outcome, "dmarc").result, "pass");
    assert_eq!(reported(&outcome, "dkim").result, "pass");
    // End of message used the early answers: nothing asked twice, although
    // the resolver keeps no cache.
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 1);
    assert_eq!(server.queries_for("_dmarc.test"), 1);
}

#[tokio::test]
async fn a_dkim_key_is_asked_for_when_its_header_arrives_and_only_once() {
    let server = DnsServer::start_with_auth_zones().await;
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
    wait::until(WAIT, "the key to be asked for during the headers", || {
        server.queries_for(key) == 1
    })
    .await;
    session.body(mail.body.clone().into());
    let outcome = session.eom().await;
    assert_eq!(reported(&outcome, "dkim").result, "pass");
    assert_eq!(reported(&outcome, "dmarc").result, "pass");
    // dkim, dmarc and the key-size check all read the key: one query.
    assert_eq!(server.queries_for(key), 1);
}

#[tokio::test]
async fn an_early_lookup_that_failed_is_asked_again_at_end_of_message() {
    let server = DnsServer::start_with_auth_zones().await;
    server.set_failure("_dmarc.aligned.test", Failure::ServFail);
    let policy = policy(&server);
    let mail = signed();

    let mut session = up_to_mail(&policy, &mail).await;
    wait::until(WAIT, "the early DMARC lookup", || {
        server.queries_for("_dmarc.aligned.test") == 1
    })
    .await;
    // The failure was passing: end of message must not inherit it.
    server.clear_failure("_dmarc.aligned.test");
    let outcome = common::finish_session(&mut session, &mail).await;
    assert_eq!(reported(&outcome, "dmarc").result, "pass");
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 2);
}

#[tokio::test]
async fn a_definite_no_record_answer_is_kept_for_the_message() {
    let server = DnsServer::start_with_auth_zones().await;
    let policy = policy(&server);
    // spf.test publishes no DMARC record: the early "no such record" is
    // the answer at end of message too.
    let mut mail = Mail::new("alice@spf.test", &["bob@rcpt.test"]);
    mail.headers[0].1 = "alice@spf.test".into();
    let mut session = up_to_mail(&policy, &mail).await;
    wait::until(WAIT, "the early DMARC lookup", || {
        server.queries_for("_dmarc.spf.test") == 1
    })
    .await;
    let outcome = common::finish_session(&mut session, &mail).await;
    assert_eq!(reported(&outcome, "dmarc").result, "none");
    assert_eq!(server.queries_for("_dmarc.spf.test"), 1);
    assert_eq!(server.queries_for("_dmarc.test"), 1);
}

#[tokio::test]
async fn the_from_domain_is_asked_for_when_the_header_arrives() {
    let server = DnsServer::start_with_auth_zones().await;
    let policy = policy(&server);
    // The envelope names another domain than the author: its tree is asked
    // for at MAIL FROM, the author's when the From: header comes.
    let mut mail = signed();
    mail.from = "bounces@spf.test".into();
    let mut session = up_to_mail(&policy, &mail).await;
    wait::until(WAIT, "the MAIL FROM domain's tree", || {
        server.queries_for("_dmarc.spf.test") == 1
    })
    .await;
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 0);
    let reply = session.rcpt("<bob@rcpt.test>", &[]).await;
    assert_eq!(reply, StageReply::Continue);
    for (n, v) in &mail.headers {
        session.header(n, v);
    }
    wait::until(WAIT, "the From: domain's tree", || {
        server.queries_for("_dmarc.aligned.test") == 1
    })
    .await;
    session.body(mail.body.clone().into());
    let outcome = session.eom().await;
    assert_eq!(reported(&outcome, "dmarc").result, "pass");
    assert_eq!(server.queries_for("_dmarc.aligned.test"), 1);
    // The shared top level was asked for once, for both trees.
    assert_eq!(server.queries_for("_dmarc.test"), 1);
}

#[tokio::test]
async fn a_record_that_does_not_parse_gives_the_same_verdict_as_without_early_lookups() {
    let server = DnsServer::start_with_auth_zones().await;
    // A bad value (fo=9) is discarded in favour of the default (RFC 9989
    // §4.8): the subdomain's own p=none applies. Fetched early, the record
    // must still be the one that applies, not the parent's p=reject.
    server.add_txt("_dmarc.sub.aligned.test", "v=DMARC1; p=none; fo=9");
    let policy = policy(&server);
    let mut mail = Mail::new("alice@sub.aligned.test", &["bob@rcpt.test"]);
    mail.headers[0].1 = "alice@sub.aligned.test".into();
    let mut session = up_to_mail(&policy, &mail).await;
    wait::until(WAIT, "the early DMARC lookup", || {
        server.queries_for("_dmarc.sub.aligned.test") == 1
    })
    .await;
    let outcome = common::finish_session(&mut session, &mail).await;
    assert_eq!(reported(&outcome, "dmarc").result, "neutral");
}

#[tokio::test]
async fn a_key_lookup_that_times_out_is_waited_for_once_not_twice() {
    let server = DnsServer::start_with_auth_zones().await;
    // Two signatures: one names a key whose query is never answered, the
    // other verifies. Waiting for the lost query at end of message must
    // count as the lookup: asking again would take a second DNS timeout and
    // run past the check's own timeout, losing the good signature's pass.
    let lost = "gone._domainkey.aligned.test";
    server.set_failure(lost, Failure::Drop);
    let text = POLICY
        .replace("timeout = \"2s\"", "timeout = \"1s\"")
        .replace("kind = \"dkim\"", "kind = \"dkim\"\ntimeout = \"1700ms\"");
    let policy = policy_from(&server, &text);
    let mut mail = signed();
    let good = mail.headers[0].1.clone();
    mail.headers.insert(
        0,
        ("DKIM-Signature".into(), good.replace("s=sel;", "s=gone;")),
    );
    assert_ne!(mail.headers[0].1, good, "the selector was replaced");

    let mut session = up_to_mail(&policy, &mail).await;
    let outcome = common::finish_session(&mut session, &mail).await;
    assert_eq!(reported(&outcome, "dkim").result, "pass");
    // One lookup of an unanswered name costs the resolver a few queries
    // (it tries more than one way); measure that with the same settings.
    let probe = "probe._domainkey.aligned.test";
    server.set_failure(probe, Failure::Drop);
    let resolver = dispatch_milter::dns::Dns::new(&dispatch_milter::dns::DnsSettings {
        nameservers: Some(vec![server.addr()]),
        timeout: Duration::from_secs(1),
        attempts: 1,
        cache_size: 0,
    })
    .expect("resolver");
    assert!(resolver.txt(probe).await.is_err());
    let one_lookup = server.queries_for(probe);
    assert!(one_lookup >= 1);
    assert_eq!(server.queries_for(lost), one_lookup, "looked up once");
}

#[tokio::test]
async fn a_message_asks_for_at_most_eight_keys_early() {
    let server = DnsServer::start_with_auth_zones().await;
    let policy = policy(&server);
    let mut mail = Mail::new("alice@aligned.test", &["bob@rcpt.test"]);
    // Fifty well-formed signatures, each naming its own key; none can
    // verify (wrong body hash), so end of message fetches no key either.
    for n in 0..50 {
        mail.headers.insert(
            0,
            (
                "DKIM-Signature".into(),
                format!("v=1; a=rsa-sha256; c=relaxed/relaxed; d=aligned.test; s=s{n}; h=from; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA"),
            ),
        );
    }
    let keys = || {
        server
            .query_log()
            .iter()
            .filter(|q| q.name.contains("._domainkey."))
            .count()
    };
    let mut session = up_to_mail(&policy, &mail).await;
    let reply = session.rcpt("<bob@rcpt.test>", &[]).await;
    assert_eq!(reply, StageReply::Continue);
    for (n, v) in &mail.headers {
        session.header(n, v);
    }
    wait::until(WAIT, "eight key lookups", || keys() == 8).await;
    // Every header has been given, so a ninth lookup would have started
    // with the first eight; a short period shows that none follows.
    let capped = wait::holds_for(Duration::from_millis(200), || keys() == 8).await;
    assert!(capped, "the cap holds: {} key lookups", keys());
    assert_eq!(keys(), 8, "the cap holds");
    session.body(mail.body.clone().into());
    let outcome = session.eom().await;
    assert_eq!(reported(&outcome, "dkim").result, "fail");
    assert_eq!(keys(), 8);
}

/// "No such record" is shared between messages like a record is, for as
/// long as the zone's SOA allows: a key that is not published would
/// otherwise go through the resolver and a task of its own each time.
/// (DMARC's `_dmarc` names have their own store since DMARC is evaluated
/// by our code; they go through `Dns::txt`.)
#[tokio::test]
async fn a_missing_record_is_shared_between_messages_for_its_negative_ttl() {
    use dispatch_milter::auth::keys::KeyStore;
    use dispatch_milter::dns::{Dns, DnsSettings};

    let server = DnsServer::start_with_auth_zones().await;
    let settings = |cache_size| DnsSettings {
        nameservers: Some(vec![server.addr()]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        cache_size,
    };
    let dns = Arc::new(Dns::new(&settings(100)).expect("resolver"));
    let store = KeyStore::default();
    store.start(&dns, "nokey._domainkey.spf.test");
    store
        .settled(&dns, &["nokey._domainkey.spf.test.".to_string()])
        .await;
    assert_eq!(server.queries_for("nokey._domainkey.spf.test"), 1);
    assert!(
        matches!(
            dns.parsed_txt().get("nokey._domainkey.spf.test."),
            Some(mail_auth::Txt::Error(mail_auth::Error::Dns(
                mail_auth::DnsError::RecordNotFound(_)
            )))
        ),
        "the negative answer is kept for the next message"
    );

    // The resolver's cache off ([dns] cache_size = 0): nothing is shared,
    // and no second query is made to find the negative TTL.
    let uncached = Arc::new(Dns::new(&settings(0)).expect("resolver"));
    let store = KeyStore::default();
    store.start(&uncached, "nokey._domainkey.spf.test");
    store
        .settled(&uncached, &["nokey._domainkey.spf.test.".to_string()])
        .await;
    assert_eq!(
        server.queries_for("nokey._domainkey.spf.test"),
        2,
        "one query more"
    );
    assert!(
        uncached
            .parsed_txt()
            .get("nokey._domainkey.spf.test.")
            .is_none()
    );
}
