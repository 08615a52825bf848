//! The `dnsbl`, `iprev` and `require_mx` checks through the real engine and
//! the real resolver, against the loopback DNS server of
//! tests/common/dns_server.rs (zones in tests/zones/ and tests/zones/dnsbl/).
//! No query leaves 127.0.0.1.

use crate::common;

use common::dns_server::{DnsServer, Failure, dnsbl_name, reverse_name, zones_dir};
use common::wait::{self, WAIT};
use common::{Mail, QUICK_DNS, Run, reply_code, reported, run_mail};
use dispatch_milter::engine::{CheckReport, Session, StageReply, Verdict};
use dispatch_milter::message::ConnectionFacts;
use dispatch_milter::policy::Policy;
use dispatch_milter::stage::Stage;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shared test zones plus this file's own.
async fn server() -> DnsServer {
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(zones_dir().join("dnsbl"));
    server
}

/// Compile `checks` (TOML blocks) with a pipeline "p" running `names`, the
/// resolver pointed at `server` only.
fn policy(server: &DnsServer, checks: &str, names: &[&str], pipeline_extra: &str) -> Arc<Policy> {
    let list = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let src =
        format!("{QUICK_DNS}\n{checks}\n\n[pipelines.p]\nchecks = [{list}]\n{pipeline_extra}\n");
    common::compile_resolving(server, Path::new("t.toml"), &src)
}

fn mail_from(client_ip: &'static str, from: &str) -> Mail {
    let mut m = Mail::new(from, &["rcpt@example.com"]);
    m.client_ip = client_ip;
    m
}

/// The report of check `name`, whether the message reached EOM or ended
/// before (refused at MAIL).
fn report(run: &mut Run, name: &str) -> CheckReport {
    let checks = match &run.outcome {
        Some(o) => o.report.checks.clone(),
        None => run
            .session
            .take_ended()
            .into_iter()
            .flat_map(|r| r.checks)
            .collect(),
    };
    match checks.into_iter().find(|c| &*c.name == name) {
        Some(c) => c,
        None => panic!("no report for check {name}"),
    }
}

fn reason(c: &CheckReport) -> String {
    c.reason.clone().unwrap_or_default()
}

const ZEN: &str = r#"
[checks.zen]
kind = "dnsbl"
lists = [{ zone = "zen.test", type = "ip" }]
reply = { code = 554, status = "5.7.1", text = "client listed" }
"#;

// ----- dnsbl -----

#[tokio::test]
async fn dnsbl_listed_client_is_refused_at_mail() {
    let server = server().await;
    let policy = policy(&server, ZEN, &["zen"], "");
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.10", "a@example.org")).await;
    match &run.mail {
        StageReply::Reject(r) => {
            assert_eq!((r.code, r.status.as_str()), (554, "5.7.1"));
            assert_eq!(r.text, "client listed");
        }
        other => panic!("expected a reject at MAIL, got {other:?}"),
    }
    let c = report(&mut run, "zen");
    assert_eq!(c.result, "fail");
    assert_eq!(reason(&c), "listed in zen.test (127.0.0.2) for 192.0.2.10");
    assert_eq!(c.started, Stage::Connect);
    assert_eq!(server.queries_for("10.2.0.192.zen.test"), 1);
}

#[tokio::test]
async fn dnsbl_unlisted_client_passes() {
    let server = server().await;
    let policy = policy(&server, ZEN, &["zen"], "");
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.20", "a@example.org")).await;
    assert_eq!(run.mail, StageReply::Continue);
    assert_eq!(
        run.outcome.as_ref().map(|o| o.decision.verdict()),
        Some(Verdict::Accept)
    );
    let c = report(&mut run, "zen");
    assert_eq!(c.result, "pass");
    assert_eq!(server.queries_for("20.2.0.192.zen.test"), 1);
}

#[tokio::test]
async fn dnsbl_error_code_is_temperror_not_a_listing() {
    let server = server().await;
    let policy = policy(&server, ZEN, &["zen"], "");
    // 192.0.2.12 answers 127.255.255.254 ("query through a public resolver").
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.12", "a@example.org")).await;
    assert!(
        matches!(&run.mail, StageReply::Tempfail(r) if r.code / 100 == 4),
        "{:?}",
        run.mail
    );
    let c = report(&mut run, "zen");
    assert_eq!(c.result, "temperror");
    assert!(
        reason(&c).contains("zen.test answered 127.255.255.254"),
        "{c:?}"
    );
}

#[tokio::test]
async fn dnsbl_dns_failures_are_temperror() {
    for failure in [Failure::ServFail, Failure::Drop] {
        let server = server().await;
        server.set_failure("20.2.0.192.zen.test", failure);
        let policy = policy(&server, ZEN, &["zen"], "");
        let mut run = run_mail(&policy, "p", &mail_from("192.0.2.20", "a@example.org")).await;
        assert!(
            matches!(&run.mail, StageReply::Tempfail(_)),
            "{failure:?}: {:?}",
            run.mail
        );
        let c = report(&mut run, "zen");
        assert_eq!(c.result, "temperror", "{failure:?}");
        assert!(reason(&c).starts_with("zen.test: DNS failure"), "{c:?}");
    }
}

#[tokio::test]
async fn dnsbl_ipv6_clients_use_nibble_form_and_mapped_ones_ipv4() {
    let server = server().await;
    let checks = r#"
    [checks.bl]
    kind = "dnsbl"
    lists = [{ zone = "bl1.test", type = "ip" }]
    "#;
    let policy = policy(&server, checks, &["bl"], "");
    let mut run = run_mail(&policy, "p", &mail_from("2001:db8::99", "a@example.org")).await;
    assert_eq!(reply_code(&run.mail), 550);
    let c = report(&mut run, "bl");
    assert_eq!(
        reason(&c),
        "listed in bl1.test (127.0.0.3) for 2001:db8::99"
    );
    let nibbles = "9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl1.test";
    assert_eq!(server.queries_for(nibbles), 1);
    assert_eq!(
        dnsbl_name("2001:db8::99".parse().unwrap(), "bl1.test"),
        format!("{nibbles}.")
    );

    // An IPv4-mapped IPv6 client is the IPv4 client.
    let mut run = run_mail(
        &policy,
        "p",
        &mail_from("::ffff:192.0.2.10", "a@example.org"),
    )
    .await;
    let c = report(&mut run, "bl");
    assert_eq!(reason(&c), "listed in bl1.test (127.0.0.3) for 192.0.2.10");
    assert_eq!(server.queries_for("10.2.0.192.bl1.test"), 1);
}

#[tokio::test]
async fn dnsbl_accepted_codes_filter_the_answers() {
    let server = server().await;
    // 192.0.2.11 answers 127.0.0.4 and 127.0.0.11.
    let checks = r#"
    [checks.sbl]
    kind = "dnsbl"
    lists = [{ zone = "zen.test", type = "ip", codes = ["127.0.0.2-127.0.0.3"], name = "SBL" }]
    [checks.pbl]
    kind = "dnsbl"
    on_fail = "quarantine"
    lists = [{ zone = "zen.test", type = "ip", codes = ["127.0.0.10", "127.0.0.11"], name = "PBL" }]
    "#;
    let policy = policy(&server, checks, &["sbl", "pbl"], "");
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.11", "a@example.org")).await;
    assert_eq!(run.mail, StageReply::Continue);
    let verdict = run.outcome.as_ref().map(|o| o.decision.verdict());
    assert_eq!(verdict, Some(Verdict::Quarantine));
    let sbl = report(&mut run, "sbl");
    assert_eq!(sbl.result, "pass", "{sbl:?}");
    let pbl = report(&mut run, "pbl");
    assert_eq!(pbl.result, "fail");
    assert_eq!(reason(&pbl), "listed in PBL (127.0.0.11) for 192.0.2.11");
}

#[tokio::test]
async fn dnsbl_scores_of_listing_lists_add_up() {
    let server = server().await;
    let checks = r#"
    [checks.bls]
    kind = "dnsbl"
    on_fail = "score"
    [[checks.bls.lists]]
    zone = "zen.test"
    type = "ip"
    score = 2
    [[checks.bls.lists]]
    zone = "bl1.test"
    type = "ip"
    score = 3.5
    [[checks.bls.lists]]
    zone = "bl2.test"
    type = "ip"
    score = 100
    "#;
    let policy = policy(&server, checks, &["bls"], "reject_score = 5");
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.10", "a@example.org")).await;
    assert_eq!(
        run.mail,
        StageReply::Continue,
        "score never refuses at MAIL"
    );
    let outcome = run.outcome.clone().expect("EOM");
    assert_eq!(outcome.report.score, 5.5);
    assert_eq!(outcome.decision.verdict(), Verdict::Reject);
    let c = report(&mut run, "bls");
    assert_eq!(c.result, "fail");
    assert_eq!(c.score, Some(5.5));
    assert_eq!(
        reason(&c),
        "listed in zen.test (127.0.0.2) for 192.0.2.10; listed in bl1.test (127.0.0.3) for 192.0.2.10"
    );
    assert_eq!(server.queries_for("10.2.0.192.bl2.test"), 1);

    // Listed in one list only: its score alone, below the limit.
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.11", "a@example.org")).await;
    let outcome = run.outcome.clone().expect("EOM");
    assert_eq!(outcome.report.score, 2.0);
    assert_eq!(outcome.decision.verdict(), Verdict::Accept);
    assert_eq!(report(&mut run, "bls").score, Some(2.0));
}

#[tokio::test]
async fn dnsbl_domain_lists_for_helo_sender_and_from() {
    let server = server().await;
    let checks = r#"
    [checks.helo]
    kind = "dnsbl"
    on_fail = "score 1"
    lists = [{ zone = "dbl.test", type = "helo" }]
    [checks.sender]
    kind = "dnsbl"
    on_fail = "score 1"
    lists = [{ zone = "dbl.test", type = "sender" }]
    [checks.from]
    kind = "dnsbl"
    lists = [{ zone = "dbl.test", type = "from", codes = ["127.0.1.4"] }]
    "#;
    let policy = policy(&server, checks, &["helo", "sender", "from"], "");
    let mut mail = mail_from("192.0.2.20", "joe@example.org");
    mail.headers[0].1 = "\"Joe, at example.org\" <joe@Spam.Example>".into();
    let mut run = run_mail(&policy, "p", &mail).await;
    assert_eq!(run.mail, StageReply::Continue);
    let outcome = run.outcome.clone().expect("EOM");
    assert_eq!(outcome.decision.verdict(), Verdict::Reject);
    assert_eq!(outcome.report.score, 2.0);
    let helo = report(&mut run, "helo");
    assert_eq!(
        reason(&helo),
        "listed in dbl.test (127.0.1.3) for HELO client.example.net"
    );
    assert_eq!(helo.started, Stage::Helo);
    let sender = report(&mut run, "sender");
    assert_eq!(
        reason(&sender),
        "listed in dbl.test (127.0.1.2) for sender domain example.org"
    );
    assert_eq!(sender.started, Stage::Mail);
    let from = report(&mut run, "from");
    assert_eq!(
        reason(&from),
        "listed in dbl.test (127.0.1.4) for From domain spam.example"
    );
    assert_eq!(from.started, Stage::Eom);

    // The null sender has no domain to look up: none, and no query.
    let before = server.queries();
    let mut mail = mail_from("192.0.2.20", "");
    mail.headers.clear();
    let mut run = run_mail(&policy, "p", &mail).await;
    let sender = report(&mut run, "sender");
    assert_eq!(sender.result, "none");
    assert_eq!(reason(&sender), "nothing to look up: no sender domain");
    assert_eq!(report(&mut run, "from").result, "none");
    // The HELO result is the connection's: looked up again for the new
    // session (and answered from the cache), nothing else was asked.
    assert!(server.queries() - before <= 1);
}

#[tokio::test]
async fn dnsbl_lists_are_asked_at_once_from_connect() {
    let server = server().await;
    let client: IpAddr = "192.0.2.20".parse().unwrap();
    let zones = ["zen.test", "bl1.test", "bl2.test"];
    for zone in zones {
        server.set_delay(&dnsbl_name(client, zone), Duration::from_millis(300));
    }
    let checks = r#"
    [checks.bls]
    kind = "dnsbl"
    lists = [
        { zone = "zen.test", type = "ip" },
        { zone = "bl1.test", type = "ip" },
        { zone = "bl2.test", type = "ip" },
    ]
    "#;
    let policy = policy(&server, checks, &["bls"], "");
    let index = policy.pipeline_index("p").expect("pipeline");
    let facts = ConnectionFacts {
        client_ip: Some(client),
        ..ConnectionFacts::default()
    };
    let mut session = Session::new(policy.clone(), index, facts);
    assert_eq!(session.connect().await, StageReply::Continue);
    // Before HELO and MAIL: the check started at connect and asked all three
    // lists; each answer takes 300 ms, so all three are in flight together.
    assert!(
        wait::within(WAIT, || server.queries() == 3).await,
        "the lookups did not start at connect: {:?}",
        server.query_log()
    );
    assert_eq!(server.peak_in_flight(), 3);
    assert_eq!(
        session.helo("client.example.net", None).await,
        StageReply::Continue
    );
    assert_eq!(
        session.mail("<a@example.org>", &[], None).await,
        StageReply::Continue
    );
    assert_eq!(
        session.rcpt("<rcpt@example.com>", &[]).await,
        StageReply::Continue
    );
    let outcome = session.eom().await;
    let c = reported(&outcome, "bls");
    assert_eq!(c.result, "pass");
    assert_eq!(c.started, Stage::Connect);
    assert_eq!(c.decided, Stage::Mail);
    // One query per list: the result was not looked up again later.
    assert_eq!(server.queries(), 3);
    for zone in zones {
        assert_eq!(server.queries_for(&dnsbl_name(client, zone)), 1, "{zone}");
    }
}

// ----- require_mx -----

const MX: &str = r#"
[checks.mx]
kind = "require_mx"
"#;

async fn mx_run(server: &DnsServer, sender: &str) -> (Run, CheckReport) {
    let policy = policy(server, MX, &["mx"], "");
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.20", sender)).await;
    let c = report(&mut run, "mx");
    (run, c)
}

#[tokio::test]
async fn require_mx_passes_with_mx_or_address_fallback() {
    let server = server().await;
    let (run, c) = mx_run(&server, "joe@example.org").await;
    assert_eq!(run.mail, StageReply::Continue);
    assert_eq!(c.result, "pass");
    assert_eq!(reason(&c), "example.org has MX mail.example.org");

    let (run, c) = mx_run(&server, "joe@fallback.test").await;
    assert_eq!(run.mail, StageReply::Continue);
    assert_eq!(c.result, "pass");
    assert_eq!(reason(&c), "fallback.test has no MX but an address record");
    assert_eq!(
        server.queries_for("fallback.test"),
        3,
        "MX, then A and AAAA"
    );
}

#[tokio::test]
async fn require_mx_fails_null_mx_and_mailless_domains() {
    let server = server().await;
    let (run, c) = mx_run(&server, "joe@example.net").await;
    assert_eq!(reply_code(&run.mail), 550);
    assert_eq!(c.result, "fail");
    assert_eq!(
        reason(&c),
        "sender domain example.net accepts no mail (null MX)"
    );

    for domain in ["nowhere.example.org", "txtonly.fallback.test"] {
        let (run, c) = mx_run(&server, &format!("joe@{domain}")).await;
        assert_eq!(reply_code(&run.mail), 550, "{domain}");
        assert_eq!(
            reason(&c),
            format!("sender domain {domain} has no MX and no A/AAAA record")
        );
    }
}

#[tokio::test]
async fn require_mx_null_sender_is_none() {
    let server = server().await;
    let (run, c) = mx_run(&server, "").await;
    assert_eq!(run.mail, StageReply::Continue);
    assert_eq!(c.result, "none");
    assert_eq!(server.queries(), 0);
}

#[tokio::test]
async fn require_mx_dns_failure_is_temperror() {
    let server = server().await;
    server.set_failure("example.org", Failure::ServFail);
    let (run, c) = mx_run(&server, "joe@example.org").await;
    assert!(
        matches!(run.mail, StageReply::Tempfail(_)),
        "{:?}",
        run.mail
    );
    assert_eq!(c.result, "temperror");
    assert!(
        reason(&c).starts_with("MX lookup for example.org: DNS failure"),
        "{c:?}"
    );

    // No MX, and the address lookups time out.
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(zones_dir().join("dnsbl"));
    let policy = policy(&server, MX, &["mx"], "");
    server.set_failure("fallback.test", Failure::Drop);
    let mut run = run_mail(&policy, "p", &mail_from("192.0.2.20", "joe@fallback.test")).await;
    let c = report(&mut run, "mx");
    assert_eq!(c.result, "temperror");
}

// ----- iprev -----

const IPREV: &str = r#"
[checks.iprev]
kind = "iprev"
"#;

async fn iprev_run(server: &DnsServer, client: &'static str) -> (Run, CheckReport) {
    let policy = policy(server, IPREV, &["iprev"], "authserv_id = \"mx.test\"");
    let mut run = run_mail(&policy, "p", &mail_from(client, "joe@example.org")).await;
    let c = report(&mut run, "iprev");
    (run, c)
}

fn auth_results(run: &Run) -> Option<String> {
    let outcome = run.outcome.as_ref()?;
    outcome.edits.iter().find_map(|e| match e {
        dispatch_milter::edits::Edit::InsertHeader { name, value, .. }
            if name == "Authentication-Results" =>
        {
            Some(value.clone())
        }
        _ => None,
    })
}

#[tokio::test]
async fn iprev_confirmed_client_passes() {
    let server = server().await;
    let (run, c) = iprev_run(&server, "192.0.2.10").await;
    assert_eq!(run.mail, StageReply::Continue);
    assert_eq!(c.result, "pass");
    assert_eq!(reason(&c), "192.0.2.10 is mail.example.org");
    assert_eq!(c.started, Stage::Connect);
    assert_eq!(
        auth_results(&run).as_deref(),
        Some("mx.test; iprev=pass policy.iprev=192.0.2.10 (mail.example.org)")
    );

    // Two PTR names, the second confirms.
    let (_, c) = iprev_run(&server, "192.0.2.22").await;
    assert_eq!(c.result, "pass");
    assert_eq!(reason(&c), "192.0.2.22 is mail2.example.org");

    // IPv6: AAAA records are compared.
    let (run, c) = iprev_run(&server, "2001:db8::10").await;
    assert_eq!(c.result, "pass");
    assert_eq!(
        auth_results(&run).as_deref(),
        Some("mx.test; iprev=pass policy.iprev=2001:db8::10 (mail.example.org)")
    );
}

#[tokio::test]
async fn iprev_unconfirmed_and_missing_names_fail() {
    let server = server().await;
    let (run, c) = iprev_run(&server, "192.0.2.20").await;
    assert_eq!(reply_code(&run.mail), 550);
    assert_eq!(c.result, "fail");
    assert_eq!(
        reason(&c),
        "192.0.2.20 is not an address of unconfirmed.example.org"
    );
    // The PTR name does not exist.
    let (_, c) = iprev_run(&server, "192.0.2.21").await;
    assert_eq!(c.result, "fail");
    assert_eq!(
        reason(&c),
        "192.0.2.21 is not an address of ghost.example.org"
    );
    // No PTR record at all.
    let (_, c) = iprev_run(&server, "192.0.2.99").await;
    assert_eq!(c.result, "fail");
    assert_eq!(reason(&c), "no PTR record for 192.0.2.99");
}

#[tokio::test]
async fn iprev_fail_is_recorded_in_authentication_results() {
    let server = server().await;
    let checks = r#"
    [checks.iprev]
    kind = "iprev"
    on_fail = "ignore"
    "#;
    let policy = policy(&server, checks, &["iprev"], "authserv_id = \"mx.test\"");
    let run = run_mail(&policy, "p", &mail_from("192.0.2.99", "joe@example.org")).await;
    assert_eq!(
        auth_results(&run).as_deref(),
        Some("mx.test; iprev=fail policy.iprev=192.0.2.99")
    );
}

#[tokio::test]
async fn iprev_dns_failures_are_temperror() {
    let server = server().await;
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    server.set_failure(&reverse_name(client), Failure::ServFail);
    let (run, c) = iprev_run(&server, "192.0.2.10").await;
    assert!(
        matches!(run.mail, StageReply::Tempfail(_)),
        "{:?}",
        run.mail
    );
    assert_eq!(c.result, "temperror");
    assert!(
        reason(&c).starts_with("PTR lookup for 192.0.2.10: DNS failure"),
        "{c:?}"
    );

    // The PTR answers, the forward lookup times out.
    let server = DnsServer::start_with_test_zones().await;
    server.set_failure("mail.example.org", Failure::Drop);
    let (_, c) = iprev_run(&server, "192.0.2.10").await;
    assert_eq!(c.result, "temperror");
    assert!(
        reason(&c).starts_with("address lookup for mail.example.org: DNS failure"),
        "{c:?}"
    );
}

/// A answers (a listing, and "not listed") and PTR answers are kept for
/// their TTL in front of the resolver, for the next connection from the
/// same client; a temporary failure is not kept; with `cache_size = 0`
/// nothing is.
#[tokio::test]
async fn dnsbl_and_iprev_answers_are_kept_for_their_ttl_but_not_failures() {
    use dispatch_milter::dns::{Dns, DnsError, DnsSettings};
    let server = DnsServer::start().await;
    server.load_zone_dir(zones_dir().join("dnsbl"));
    server.set_failure("1.2.0.192.bl2.test", Failure::ServFail);
    let settings = |cache_size| DnsSettings {
        nameservers: Some(vec![server.addr()]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        cache_size,
    };
    let dns = Dns::new(&settings(100)).expect("resolver");
    let listed = dns.ipv4("10.2.0.192.bl1.test").await;
    assert_eq!(listed, Ok(vec!["127.0.0.3".parse().expect("address")]));
    assert_eq!(
        dns.ipv4("11.2.0.192.bl1.test").await,
        Err(DnsError::NotFound)
    );
    assert_eq!(dns.kept_answers(), 2, "the listing and the NXDOMAIN");
    assert!(matches!(
        dns.ipv4("1.2.0.192.bl2.test").await,
        Err(DnsError::Temporary(_))
    ));
    assert_eq!(dns.kept_answers(), 2, "SERVFAIL is not kept");
    // Asked again: answered from what was kept, the same answer.
    assert_eq!(dns.ipv4("10.2.0.192.bl1.test").await, listed);
    assert_eq!(server.queries_for("10.2.0.192.bl1.test"), 1);
    // iprev's PTR lookups are kept the same way.
    let client: IpAddr = "192.0.2.10".parse().expect("address");
    server.add_zone("2.0.192.in-addr.arpa");
    server.add_ptr_for(client, "client.example.net");
    let names = Ok(vec!["client.example.net".to_string()]);
    assert_eq!(dns.ptr(client).await, names);
    assert_eq!(dns.ptr(client).await, names);
    assert_eq!(dns.kept_answers(), 3);
    assert_eq!(server.queries_for(&reverse_name(client)), 1);

    let uncached = Dns::new(&settings(0)).expect("resolver");
    assert_eq!(uncached.ipv4("10.2.0.192.bl1.test").await, listed);
    assert_eq!(uncached.kept_answers(), 0);
}
