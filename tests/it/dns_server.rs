//! Tests of the in-process test DNS server (tests/common/dns_server.rs),
//! queried through hickory-resolver as the DNS-based checks query it.

use crate::common;

use common::dns_server::*;
use common::wait::{self, WAIT};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Every test finishes within this, or fails.
const TEST_BOUND: Duration = Duration::from_secs(30);
/// Resolver timeout for lookups that should answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Resolver timeout for lookups that should fail (one attempt).
const FAIL_TIMEOUT: Duration = Duration::from_millis(300);

async fn bounded<F: Future<Output = ()>>(test: F) {
    wait::bounded(TEST_BOUND, "the test", test).await
}

fn resolver(server: &DnsServer) -> TokioResolver {
    server.resolver(ANSWER_TIMEOUT)
}

fn ipv4s(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn ipv6s(records: &[Record]) -> Vec<Ipv6Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn mxs(records: &[Record]) -> Vec<(u16, String)> {
    let mut mxs: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    mxs.sort();
    mxs
}

/// Each TXT record's strings joined, as SPF/DKIM/DMARC read them.
fn txts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn ptrs(records: &[Record]) -> Vec<String> {
    let mut names: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(ptr) => Some(ptr.0.to_ascii()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

fn no_records(err: &NetError) -> Option<ResponseCode> {
    match err {
        NetError::Dns(DnsError::NoRecordsFound(no)) => {
            assert!(no.soa.is_some(), "negative answer without SOA: {err:?}");
            Some(no.response_code)
        }
        _ => None,
    }
}

#[tokio::test]
async fn binds_loopback_udp_and_tcp_on_one_port() {
    bounded(async {
        let server = DnsServer::start().await;
        assert_eq!(server.addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(server.port(), 0);
        // Both transports are bound on that port.
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_ok());
        assert!(
            tokio::net::UdpSocket::bind(server.addr()).await.is_err(),
            "UDP port should be taken by the server"
        );
    })
    .await;
}

#[tokio::test]
async fn a_aaaa_mx_txt_answers_from_the_zone_file() {
    bounded(async {
        let server = DnsServer::start().await;
        let loaded = server.load_zone_file(zones_dir().join("example.org.zone"), "example.org");
        assert!(loaded > 15, "loaded {loaded} records");
        let resolver = resolver(&server);

        let a = resolver.ipv4_lookup("mail.example.org.").await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 10)]);
        let mut a = ipv4s(
            resolver
                .ipv4_lookup("mail2.example.org.")
                .await
                .unwrap()
                .answers(),
        );
        a.sort();
        assert_eq!(
            a,
            [Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 22)]
        );

        let aaaa = resolver.ipv6_lookup("mail.example.org.").await.unwrap();
        assert_eq!(
            ipv6s(aaaa.answers()),
            ["2001:db8::10".parse::<Ipv6Addr>().unwrap()]
        );

        let mx = resolver.mx_lookup("example.org.").await.unwrap();
        assert_eq!(
            mxs(mx.answers()),
            [
                (10, "mail.example.org.".to_string()),
                (20, "mail2.example.org.".to_string())
            ]
        );

        let spf = resolver.txt_lookup("example.org.").await.unwrap();
        assert_eq!(txts(spf.answers()), ["v=spf1 ip4:192.0.2.0/24 -all"]);
        let dmarc = resolver.txt_lookup("_dmarc.example.org.").await.unwrap();
        let dmarc = txts(dmarc.answers());
        assert_eq!(dmarc.len(), 1);
        assert!(dmarc[0].starts_with("v=DMARC1; p=reject;"), "{dmarc:?}");

        // A 2048-bit DKIM key: several strings, joined; fits UDP.
        let dkim = resolver
            .txt_lookup("sel2048._domainkey.example.org.")
            .await
            .unwrap();
        let strings = match &dkim.answers()[0].data {
            RData::TXT(txt) => txt.txt_data.len(),
            other => panic!("not TXT: {other:?}"),
        };
        assert!(strings >= 3, "{strings} strings");
        let dkim = txts(dkim.answers());
        assert!(dkim[0].starts_with("v=DKIM1; k=rsa; p=MIIB"), "{dkim:?}");
        assert!(dkim[0].ends_with("IDAQAB"), "{dkim:?}");
        assert_eq!(server.tcp_queries(), 0, "{:?}", server.query_log());

        // Case does not matter (a fresh resolver: no cached answer).
        let a = self::resolver(&server)
            .ipv4_lookup("MAIL.Example.ORG.")
            .await
            .unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(server.queries_for("Mail.Example.Org"), 3);
        assert_eq!(
            server.queries_for_type("mail.example.org.", RecordType::A),
            2
        );
    })
    .await;
}

#[tokio::test]
async fn null_mx_and_multiple_zones() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);
        let mx = resolver.mx_lookup("example.net.").await.unwrap();
        assert_eq!(mxs(mx.answers()), [(0, ".".to_string())]);
        let spf = resolver.txt_lookup("example.net.").await.unwrap();
        assert_eq!(txts(spf.answers()), ["v=spf1 -all"]);
        // The other zones answer from the same server.
        let mx = resolver.mx_lookup("example.org.").await.unwrap();
        assert_eq!(mxs(mx.answers()).len(), 2);
    })
    .await;
}

#[tokio::test]
async fn ptr_answers_and_forward_confirmation_data() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();

        // 192.0.2.10 -> mail.example.org -> 192.0.2.10: confirmed.
        let ptr = resolver.reverse_lookup(ip("192.0.2.10")).await.unwrap();
        assert_eq!(ptrs(ptr.answers()), ["mail.example.org."]);
        let a = resolver.ipv4_lookup("mail.example.org.").await.unwrap();
        assert!(ipv4s(a.answers()).contains(&Ipv4Addr::new(192, 0, 2, 10)));

        // 192.0.2.20 -> unconfirmed.example.org -> 192.0.2.99: not confirmed.
        let ptr = resolver.reverse_lookup(ip("192.0.2.20")).await.unwrap();
        assert_eq!(ptrs(ptr.answers()), ["unconfirmed.example.org."]);
        let a = resolver
            .ipv4_lookup("unconfirmed.example.org.")
            .await
            .unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 99)]);

        // 192.0.2.21 -> a name that does not exist.
        let ptr = resolver.reverse_lookup(ip("192.0.2.21")).await.unwrap();
        assert_eq!(ptrs(ptr.answers()), ["ghost.example.org."]);
        let err = resolver
            .ipv4_lookup("ghost.example.org.")
            .await
            .unwrap_err();
        assert!(err.is_nx_domain(), "{err:?}");

        // Two PTR names.
        let ptr = resolver.reverse_lookup(ip("192.0.2.22")).await.unwrap();
        assert_eq!(
            ptrs(ptr.answers()),
            ["mail2.example.org.", "unconfirmed.example.org."]
        );

        // No PTR at all.
        let err = resolver.reverse_lookup(ip("192.0.2.30")).await.unwrap_err();
        assert_eq!(no_records(&err), Some(ResponseCode::NXDomain), "{err:?}");

        // IPv6 reverse zone.
        let ptr = resolver.reverse_lookup(ip("2001:db8::10")).await.unwrap();
        assert_eq!(ptrs(ptr.answers()), ["mail.example.org."]);
        assert_eq!(
            server.queries_for(&reverse_name(ip("2001:db8::10"))),
            1,
            "{:?}",
            server.query_log()
        );
    })
    .await;
}

#[tokio::test]
async fn dnsbl_listings_error_codes_and_unlisted() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);
        let listed = dnsbl_name("192.0.2.10".parse().unwrap(), "zen.test");
        assert_eq!(listed, "10.2.0.192.zen.test.");
        let a = resolver.ipv4_lookup(listed.as_str()).await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(127, 0, 0, 2)]);
        let txt = resolver.txt_lookup(listed.as_str()).await.unwrap();
        assert_eq!(
            txts(txt.answers()),
            ["https://www.spamhaus.org/query/ip/192.0.2.10"]
        );

        let mut codes = ipv4s(
            resolver
                .ipv4_lookup("11.2.0.192.zen.test.")
                .await
                .unwrap()
                .answers(),
        );
        codes.sort();
        assert_eq!(
            codes,
            [Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 11)]
        );

        let a = resolver.ipv4_lookup("12.2.0.192.zen.test.").await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(127, 255, 255, 254)]);

        let err = resolver
            .ipv4_lookup("20.2.0.192.zen.test.")
            .await
            .unwrap_err();
        assert_eq!(no_records(&err), Some(ResponseCode::NXDomain), "{err:?}");

        // IPv6 names have 32 nibbles.
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap(), "zen.test.");
        assert_eq!(
            v6,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test."
        );
    })
    .await;
}

#[tokio::test]
async fn nxdomain_and_nodata_are_distinguishable() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);

        // NXDOMAIN: the name does not exist; SOA in authority.
        let err = resolver
            .ipv4_lookup("nosuch.example.org.")
            .await
            .unwrap_err();
        assert!(err.is_nx_domain(), "{err:?}");
        assert_eq!(no_records(&err), Some(ResponseCode::NXDomain));

        // NODATA: the name exists with other types only.
        let err = resolver.mx_lookup("mail.example.org.").await.unwrap_err();
        assert!(!err.is_nx_domain(), "{err:?}");
        assert!(err.is_no_records_found(), "{err:?}");
        assert_eq!(no_records(&err), Some(ResponseCode::NoError));

        // An empty non-terminal exists too: NODATA.
        let err = resolver
            .txt_lookup("_domainkey.example.org.")
            .await
            .unwrap_err();
        assert_eq!(no_records(&err), Some(ResponseCode::NoError), "{err:?}");

        // Outside every zone: NXDOMAIN without SOA.
        let err = resolver.ipv4_lookup("nothing.invalid.").await.unwrap_err();
        assert!(err.is_nx_domain(), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn cnames_are_chased_within_the_data() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);
        // Two hops: relay -> smtp -> mail.
        let a = resolver.ipv4_lookup("relay.example.org.").await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 10)]);
        let cnames = a
            .answers()
            .iter()
            .filter(|r| matches!(r.data, RData::CNAME(_)))
            .count();
        assert_eq!(cnames, 2, "{:?}", a.answers());
        // One question was enough: the server chased the chain itself.
        assert_eq!(server.queries(), 1, "{:?}", server.query_log());

        // A dangling CNAME gives no address.
        let result = resolver.ipv4_lookup("dangling.example.org.").await;
        match result {
            Ok(lookup) => assert!(ipv4s(lookup.answers()).is_empty(), "{lookup:?}"),
            Err(err) => assert!(err.is_no_records_found(), "{err:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn records_added_at_run_time() {
    bounded(async {
        let server = DnsServer::start().await;
        server.add_zone("runtime.test");
        // A DKIM key made at test time: longer than 255 bytes, split.
        let key = format!("v=DKIM1; k=ed25519; p={}", "A".repeat(600));
        server.add_txt("sel._domainkey.runtime.test", &key);
        server.add_a("runtime.test", Ipv4Addr::new(192, 0, 2, 40));
        server.add_aaaa("runtime.test", "2001:db8::40".parse().unwrap());
        server.add_mx("runtime.test", 5, "mx.runtime.test");
        server.add_record("runtime.test", RecordType::MX, "15 mx2.runtime.test.");
        server.add_ptr_for("192.0.2.40".parse().unwrap(), "runtime.test");
        server.add_cname("www.runtime.test", "runtime.test");
        server.set_udp_limit(4096);

        let resolver = resolver(&server);
        let txt = resolver
            .txt_lookup("sel._domainkey.runtime.test.")
            .await
            .unwrap();
        assert_eq!(txts(txt.answers()), [key]);
        let mx = resolver.mx_lookup("runtime.test.").await.unwrap();
        assert_eq!(
            mxs(mx.answers()),
            [
                (5, "mx.runtime.test.".to_string()),
                (15, "mx2.runtime.test.".to_string())
            ]
        );
        let a = resolver.ipv4_lookup("www.runtime.test.").await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 40)]);
        let ptr = resolver
            .reverse_lookup("192.0.2.40".parse::<IpAddr>().unwrap())
            .await
            .unwrap();
        assert_eq!(ptrs(ptr.answers()), ["runtime.test."]);

        server.remove_records("runtime.test", RecordType::AAAA);
        let err = resolver.ipv6_lookup("runtime.test.").await.unwrap_err();
        assert_eq!(no_records(&err), Some(ResponseCode::NoError), "{err:?}");

        // Zone text works too.
        server.load_zone_str("@ 60 IN TXT \"hello\" \"world\"\n", "text.test");
        let txt = resolver.txt_lookup("text.test.").await.unwrap();
        assert_eq!(txts(txt.answers()), ["helloworld"]);
    })
    .await;
}

#[tokio::test]
async fn large_txt_falls_back_to_tcp() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let resolver = resolver(&server);
        let name = "sel4096._domainkey.example.org.";
        let dkim = resolver.txt_lookup(name).await.unwrap();
        let dkim = txts(dkim.answers());
        assert_eq!(dkim.len(), 1);
        assert!(dkim[0].starts_with("v=DKIM1; k=rsa; p=MIIC"), "{dkim:?}");
        assert!(dkim[0].len() > 700, "{}", dkim[0].len());

        // First over UDP (truncated), then again over TCP.
        assert!(server.udp_queries() >= 1, "{:?}", server.query_log());
        assert!(server.tcp_queries() >= 1, "{:?}", server.query_log());
        let log = server.query_log();
        let on = |transport| {
            log.iter()
                .any(|q| q.name == name && q.rtype == RecordType::TXT && q.transport == transport)
        };
        assert!(on(Transport::Udp) && on(Transport::Tcp), "{log:?}");

        // A raised UDP limit (and the client's EDNS size) lets it through UDP.
        let server = DnsServer::start_with_test_zones().await;
        server.set_udp_limit(4096);
        let resolver = self::resolver(&server);
        let dkim = resolver.txt_lookup(name).await.unwrap();
        assert_eq!(txts(dkim.answers()).len(), 1);
        assert_eq!(server.tcp_queries(), 0, "{:?}", server.query_log());
        assert_eq!(server.udp_queries(), 1, "{:?}", server.query_log());
    })
    .await;
}

#[tokio::test]
async fn delays_apply_per_name() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let delay = Duration::from_millis(200);
        server.set_delay("mail.example.org", delay);
        let resolver = resolver(&server);

        let started = Instant::now();
        resolver.ipv4_lookup("mail.example.org.").await.unwrap();
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        resolver.ipv4_lookup("mail2.example.org.").await.unwrap();

        let log = server.query_log();
        let delay_of = |name: &str| {
            log.iter()
                .find(|q| q.name == name)
                .map(|q| q.delay)
                .expect(name)
        };
        assert_eq!(delay_of("mail.example.org."), delay);
        assert_eq!(delay_of("mail2.example.org."), Duration::ZERO);

        // A default delay applies to other names; a name's own delay wins;
        // cleared delays fall back to the default.
        server.set_default_delay(Duration::from_millis(50));
        resolver.ipv4_lookup("ns1.example.org.").await.unwrap();
        resolver.ipv6_lookup("mail.example.org.").await.unwrap();
        server.clear_delay("mail.example.org");
        resolver.mx_lookup("example.org.").await.unwrap();
        let log = server.query_log();
        let delays: Vec<_> = log[log.len() - 3..].iter().map(|q| q.delay).collect();
        assert_eq!(
            delays,
            [Duration::from_millis(50), delay, Duration::from_millis(50)],
            "{log:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn delayed_queries_overlap() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let delay = Duration::from_millis(200);
        let names: Vec<String> = (1..=5).map(|i| format!("host{i}.example.org.")).collect();
        for (i, name) in names.iter().enumerate() {
            server.add_a(name, Ipv4Addr::new(192, 0, 2, 100 + i as u8));
            server.set_delay(name, delay);
        }
        let resolver = resolver(&server);

        let started = Instant::now();
        let mut lookups = tokio::task::JoinSet::new();
        for name in &names {
            let resolver = resolver.clone();
            let name = name.clone();
            lookups.spawn(async move { resolver.ipv4_lookup(name.as_str()).await });
        }
        while let Some(result) = lookups.join_next().await {
            let lookup = result.unwrap().unwrap();
            assert_eq!(ipv4s(lookup.answers()).len(), 1);
        }
        let elapsed = started.elapsed();

        // Every name was asked, and several were being handled at once.
        for name in &names {
            assert!(server.queries_for(name) >= 1, "{name}");
        }
        assert!(
            server.peak_in_flight() > 1,
            "peak {} in flight",
            server.peak_in_flight()
        );
        // Five delays in parallel take far less than five delays in a row.
        assert!(
            elapsed < delay * 3,
            "{elapsed:?} for 5 lookups delayed {delay:?}"
        );
        assert_eq!(server.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn drop_times_out_within_the_resolver_timeout() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        server.set_failure("mail.example.org", Failure::Drop);
        let resolver = server.resolver(FAIL_TIMEOUT);

        let started = Instant::now();
        let err = resolver.ipv4_lookup("mail.example.org.").await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(matches!(err, NetError::Timeout), "{err:?}");
        assert!(elapsed >= FAIL_TIMEOUT, "{elapsed:?}");
        assert!(elapsed < FAIL_TIMEOUT * 5, "{elapsed:?}");
        assert!(server.queries_for("mail.example.org") >= 1);
        assert_eq!(
            server.query_log()[0].failure,
            Some(Failure::Drop),
            "{:?}",
            server.query_log()
        );

        // Other names still answer; clearing the failure restores the name.
        let a = resolver.ipv4_lookup("mail2.example.org.").await.unwrap();
        assert_eq!(ipv4s(a.answers()).len(), 2);
        server.clear_failure("mail.example.org");
        let a = resolver.ipv4_lookup("mail.example.org.").await.unwrap();
        assert_eq!(ipv4s(a.answers()), [Ipv4Addr::new(192, 0, 2, 10)]);
    })
    .await;
}

#[tokio::test]
async fn servfail_and_refused_are_errors() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        server.set_failure("mail.example.org", Failure::ServFail);
        server.set_failure("mail2.example.org", Failure::Refused);
        let resolver = server.resolver(FAIL_TIMEOUT);

        let err = resolver.ipv4_lookup("mail.example.org.").await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
            ),
            "{err:?}"
        );
        let err = resolver
            .ipv4_lookup("mail2.example.org.")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))
            ),
            "{err:?}"
        );

        // A default failure covers every name; clear_failures ends it.
        server.clear_failures();
        server.set_default_failure(Some(Failure::ServFail));
        let err = resolver.mx_lookup("example.org.").await.unwrap_err();
        assert!(
            matches!(
                err,
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
            ),
            "{err:?}"
        );
        server.clear_failures();
        resolver.ipv4_lookup("mail.example.org.").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn garbage_is_an_error_not_an_answer() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        server.set_failure("mail.example.org", Failure::Garbage);
        let resolver = server.resolver(FAIL_TIMEOUT);

        let err = resolver.ipv4_lookup("mail.example.org.").await.unwrap_err();
        assert!(!err.is_no_records_found(), "{err:?}");
        assert!(server.queries_for("mail.example.org") >= 1);

        assert!(
            server
                .query_log()
                .iter()
                .all(|q| q.transport == Transport::Udp)
        );

        // Over TCP too.
        let tcp = server.resolver_over(Transport::Tcp, FAIL_TIMEOUT);
        let err = tcp.ipv4_lookup("mail.example.org.").await.unwrap_err();
        assert!(!err.is_no_records_found(), "{err:?}");
        let log = server.query_log();
        assert!(
            log.iter()
                .any(|q| q.transport == Transport::Tcp && q.failure == Some(Failure::Garbage)),
            "{log:?}"
        );
        // The connection is still usable for other names.
        let a = tcp.ipv4_lookup("mail2.example.org.").await.unwrap();
        assert_eq!(ipv4s(a.answers()).len(), 2);
    })
    .await;
}

#[tokio::test]
async fn failures_change_while_running_and_stop_on_drop() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let addr = server.addr();
        let resolver = server.resolver(FAIL_TIMEOUT);
        resolver.ipv4_lookup("mail.example.org.").await.unwrap();
        server.set_failure("mail.example.org", Failure::Refused);
        // Cached answers would hide the change: ask another type.
        assert!(resolver.ipv6_lookup("mail.example.org.").await.is_err());
        server.clear_failure("mail.example.org");
        resolver.mx_lookup("example.org.").await.unwrap();

        // An open TCP connection and a query delayed far beyond the test.
        let mut connection = tokio::net::TcpStream::connect(addr).await.unwrap();
        server.set_delay("slow.example.org", Duration::from_secs(3600));
        let config = server.resolver_config_over(Transport::Udp);
        let opts = server.resolver_opts(FAIL_TIMEOUT);
        let slow = build_resolver(config.clone(), server.resolver_opts(TEST_BOUND));
        let pending = tokio::spawn(async move { slow.ipv4_lookup("slow.example.org.").await });
        wait::until(WAIT, "the slow query in flight", || server.in_flight() > 0).await;
        drop(server);

        // The listeners and the connection are gone, and nothing answers.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(ANSWER_TIMEOUT, connection.read(&mut buf))
            .await
            .expect("connection left open");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        let resolver = build_resolver(config, opts);
        assert!(resolver.ipv4_lookup("mail2.example.org.").await.is_err());
        pending.abort();
    })
    .await;
}

#[tokio::test]
async fn quoted_strings_inside_parentheses_are_refused() {
    bounded(async {
        let server = DnsServer::start().await;
        let zone = "@ 60 IN TXT ( \"v=DKIM1; k=rsa; \"\n  \"p=abc\" )\n";
        // The same strings on one line are fine.
        server.load_zone_str("@ 60 IN TXT \"v=DKIM1; k=rsa; \" \"p=abc\"\n", "line.test");
        let message = server
            .try_load_zone_str(zone, "paren.test")
            .expect_err("mangled TXT record accepted");
        assert!(message.contains("one line"), "{message}");
        let resolver = resolver(&server);
        let txt = resolver.txt_lookup("line.test.").await.unwrap();
        assert_eq!(txts(txt.answers()), ["v=DKIM1; k=rsa; p=abc"]);
        // And the bad zone left nothing behind.
        assert!(resolver.txt_lookup("paren.test.").await.is_err());
    })
    .await;
}

/// Sends one query over UDP without a resolver and returns the parsed reply.
async fn raw_udp_query(server: &DnsServer, name: &str, rtype: RecordType, edns: bool) -> Message {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(dns_name(name), rtype));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        query.set_edns(opt);
    }
    socket
        .send_to(&query.to_vec().unwrap(), server.addr())
        .await
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    let (len, from) = tokio::time::timeout(ANSWER_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("no reply")
        .unwrap();
    assert_eq!(from, server.addr());
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, query.metadata.id);
    reply
}

#[tokio::test]
async fn truncation_on_the_wire() {
    bounded(async {
        let server = DnsServer::start_with_test_zones().await;
        let big = "sel4096._domainkey.example.org.";

        // Over 512 bytes: TC set, no records, the question kept.
        let reply = raw_udp_query(&server, big, RecordType::TXT, true).await;
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty() && reply.authorities.is_empty());
        assert_eq!(reply.queries.len(), 1);
        assert!(
            reply.edns.is_some(),
            "an EDNS query gets an OPT record back"
        );

        // A small answer is whole, authoritative.
        let reply = raw_udp_query(&server, "example.org.", RecordType::MX, false).await;
        assert!(!reply.metadata.truncation);
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.answers.len(), 2);
        assert!(reply.edns.is_none());

        // A raised limit still caps a client without EDNS at 512 bytes, and
        // lets an EDNS client have what it asked for.
        server.set_udp_limit(4096);
        let reply = raw_udp_query(&server, big, RecordType::TXT, false).await;
        assert!(reply.metadata.truncation);
        let reply = raw_udp_query(&server, big, RecordType::TXT, true).await;
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 1);

        // A lowered limit truncates even small answers.
        server.set_udp_limit(64);
        let reply = raw_udp_query(&server, "example.org.", RecordType::MX, true).await;
        assert!(reply.metadata.truncation);

        // NXDOMAIN carries the zone's SOA.
        server.set_udp_limit(DEFAULT_UDP_LIMIT);
        let reply = raw_udp_query(&server, "nosuch.zen.test.", RecordType::A, true).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(reply.authorities.len(), 1);
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(reply.authorities[0].name.to_ascii(), "zen.test.");

        // Garbage is a short non-DNS datagram.
        server.set_failure("example.org", Failure::Garbage);
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let mut query = Message::query();
        query.add_query(Query::query(dns_name("example.org"), RecordType::A));
        socket
            .send_to(&query.to_vec().unwrap(), server.addr())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = tokio::time::timeout(ANSWER_TIMEOUT, socket.recv_from(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert!(len < 12, "{len} bytes");
        assert!(Message::from_vec(&buf[..len]).is_err());

        // Non-DNS input is counted, not answered.
        socket.send_to(b"hello", server.addr()).await.unwrap();
        wait::until(ANSWER_TIMEOUT, "the malformed query counted", || {
            server.malformed_queries() > 0
        })
        .await;
    })
    .await;
}
