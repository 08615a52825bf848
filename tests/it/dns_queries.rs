//! How many DNS questions a message costs, through the whole daemon with the
//! MX checks (DNSBL, iprev, SPF, DKIM, DMARC) and the resolver's cache on:
//! every question is asked at most once per message, and a second message
//! from the same sender asks nothing that the zone let us keep, negative
//! answers included (RFC 2308 §5: NXDOMAIN and NODATA are kept for the
//! SOA's minimum). No query leaves 127.0.0.1.

use crate::common;

use common::daemon::{LISTEN, TestDaemon, open};
use common::dns_server::{DnsServer, RecordType};
use dispatch_milter::dns::{Dns, DnsError, DnsSettings};
use indymilter_test::{MacroStage, Status};
use std::collections::BTreeMap;
use std::time::Duration;

async fn start(server: &DnsServer) -> TestDaemon {
    TestDaemon::start_resolving(&format!("{LISTEN}{}", common::mx_checks("")), server).await
}

/// The test zones, the DNSBL zones, and a zone for `org` so that the
/// NXDOMAIN for `_dmarc.org` carries an SOA, as a real TLD's server sends.
async fn zones() -> DnsServer {
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(common::dns_server::zones_dir().join("dnsbl"));
    server.add_zone("org");
    server
}

/// One message from `client_ip`, MAIL FROM `sender`, with this From:.
async fn message(d: &TestDaemon, client_ip: &str, sender: &str, from: &str) -> Status {
    let mut conn = open(d.addr()).await;
    conn.macros(MacroStage::Connect, [("{daemon_name}", "mx")])
        .await
        .unwrap();
    let ip: std::net::IpAddr = client_ip.parse().unwrap();
    assert_eq!(
        conn.connect("client.example", ip).await.unwrap(),
        Status::Continue
    );
    assert_eq!(
        conn.helo("mail.example.org").await.unwrap(),
        Status::Continue
    );
    assert_eq!(conn.mail([sender]).await.unwrap(), Status::Continue);
    assert_eq!(
        conn.rcpt(["<bob@example.net>"]).await.unwrap(),
        Status::Continue
    );
    conn.header("From", from).await.unwrap();
    conn.header("Subject", "queries").await.unwrap();
    conn.eoh().await.unwrap();
    conn.body("Hello.\r\n").await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    status
}

/// Questions asked since `from` in the log, by (type, name).
fn asked(server: &DnsServer, from: usize) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for q in &server.query_log()[from..] {
        // The server logs UDP and, after truncation, TCP: one question.
        if q.transport == common::dns_server::Transport::Tcp {
            continue;
        }
        *counts
            .entry((format!("{:?}", q.rtype), q.name.clone()))
            .or_insert(0) += 1;
    }
    counts
}

/// The resolver the daemon builds, pointed at the loopback server.
fn resolver(server: &DnsServer) -> Dns {
    Dns::new(&DnsSettings {
        nameservers: Some(vec![server.addr()]),
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..DnsSettings::default()
    })
    .expect("resolver")
}

#[tokio::test]
async fn identical_questions_in_flight_share_one_query() {
    let server = zones().await;
    server.set_default_delay(Duration::from_millis(200));
    let dns = std::sync::Arc::new(resolver(&server));
    // Ten askers at once for a record that exists, ten for one that does
    // not: one query each reaches the server.
    let mut askers = tokio::task::JoinSet::new();
    for name in ["_dmarc.example.org", "_dmarc.nothing.example.org"] {
        for _ in 0..10 {
            let dns = dns.clone();
            askers.spawn(async move { (name, dns.txt_answer(name).await.records) });
        }
    }
    while let Some(joined) = askers.join_next().await {
        match joined.expect("asker") {
            ("_dmarc.example.org", records) => assert!(records.is_ok(), "{records:?}"),
            (_, records) => assert_eq!(records, Err(DnsError::NotFound)),
        }
    }
    assert_eq!(server.queries_for("_dmarc.example.org"), 1);
    assert_eq!(server.queries_for("_dmarc.nothing.example.org"), 1);
}

#[tokio::test]
async fn each_question_is_asked_once_and_kept_for_its_ttl() {
    let server = zones().await;
    server.add_zone("net");
    let mut d = start(&server).await;
    // A message that fails DMARC (example.net publishes p=reject and
    // "-all"): the failing path asks the most, the policy's tree walk
    // included.
    let status = message(
        &d,
        "192.0.2.22",
        "<alice@example.net>",
        "Alice <alice@example.net>",
    )
    .await;
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");
    let first = asked(&server, 0);
    let twice: Vec<_> = first.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "asked more than once: {twice:?}\nall: {first:?}"
    );
    assert!(first.contains_key(&txt("_dmarc.example.net.")), "{first:?}");

    // The same sender again: everything, found or not, is in the cache.
    let before = server.queries();
    let status = message(
        &d,
        "192.0.2.22",
        "<alice@example.net>",
        "Alice <alice@example.net>",
    )
    .await;
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");
    let second = asked(&server, before);
    assert!(second.is_empty(), "asked again: {second:?}");
    d.shutdown().await;
}

fn txt(name: &str) -> (String, String) {
    (format!("{:?}", RecordType::TXT), name.to_string())
}

#[tokio::test]
async fn a_missing_policy_is_kept_for_the_soa_minimum_and_never_without_an_soa() {
    let server = zones().await;
    let mut d = start(&server).await;
    // The From: subdomain has no policy of its own: NXDOMAIN for
    // _dmarc.sub.example.net with example.net's SOA (minimum 300 s), kept.
    // The tree walk also asks _dmarc.net: without a zone for "net" that
    // NXDOMAIN has no SOA, and RFC 2308 §5 says not to cache it, so each
    // message asks it again, but once.
    for round in 0..2 {
        let before = server.queries();
        let status = message(
            &d,
            "192.0.2.22",
            "<alice@example.net>",
            "Alice <alice@sub.example.net>",
        )
        .await;
        // example.net sends no mail ("-all", p=reject).
        assert!(matches!(status, Status::Reject { .. }), "{status:?}");
        let now = asked(&server, before);
        let twice: Vec<_> = now.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "asked more than once: {twice:?}\nall: {now:?}"
        );
        let sub = now.get(&txt("_dmarc.sub.example.net."));
        match round {
            0 => assert_eq!(sub, Some(&1), "{now:?}"),
            _ => assert_eq!(sub, None, "{now:?}"),
        }
        assert_eq!(now.get(&txt("_dmarc.net.")), Some(&1), "{now:?}");
    }
    d.shutdown().await;
}
