//! Benchmarks of the daemon in-process that print figures; they assert
//! nothing about speed (these machines are shared and noisy). Run them on
//! demand, in release mode, one at a time:
//!
//!     cargo test --release --test bench daemon:: -- --nocapture --test-threads 1
//!
//! Everything runs in this process on loopback: the loopback DNS server, the
//! daemon and the load generator share the machine's cores, so compare the
//! figures of one run with each other (ratios), not across machines.

use crate::common;

use common::daemon::{LISTEN, TestDaemon};
use common::dns_server::DnsServer;
use common::wait;
use dispatch_milter_load::{Corpus, LoadConfig, LoadReport, run};
use std::time::Duration;

const EMPTY: &str = "[pipelines.empty]\nauth_results = false\n";

async fn dns() -> DnsServer {
    let server = DnsServer::start_with_test_zones().await;
    server.load_zone_dir(common::dns_server::zones_dir().join("dnsbl"));
    // DMARC's tree walk also asks for _dmarc.org. Without a zone for "org"
    // the NXDOMAIN carries no SOA, so the resolver cannot cache it and every
    // message made one more query; real servers send the SOA and the answer
    // is cached, which is what a warm-cache benchmark must measure.
    server.add_zone("org");
    // The key of the Postfix benchmark's signed message, so that a signed
    // message file (`load --message`) verifies here too.
    let key =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa2048-pkcs1.pub.b64");
    let p = std::fs::read_to_string(key).expect("public key");
    server.add_txt(
        "in2026._domainkey.example.org",
        &format!("v=DKIM1; k=rsa; p={}", p.trim()),
    );
    server
}

async fn daemon(server: &DnsServer, policy: &str) -> TestDaemon {
    let mut registry = common::registry(std::sync::Arc::new(common::Probes::default()));
    registry.set_nameservers(vec![server.addr()]);
    TestDaemon::start_with(
        &format!("[server]\nlog_level = \"warn\"\n{LISTEN}{policy}"),
        registry,
    )
    .await
}

fn load(d: &TestDaemon, connections: usize, messages: usize, pace: Duration) -> LoadConfig {
    LoadConfig {
        target: d.daemon().addresses[0].clone(),
        connections,
        messages,
        corpus: Corpus::Typical,
        // 192.0.2.22: not listed, confirmed reverse DNS, in example.org's SPF.
        from: "alice@example.org".into(),
        to: vec!["bob@example.net".into()],
        client_ip: "192.0.2.22".parse().unwrap(),
        helo: "mail2.example.org".into(),
        daemon_name: "smtpd".into(),
        auth_user: None,
        tls: true,
        pace,
        hold: Duration::ZERO,
        message: None,
    }
}

fn line(label: &str, r: &LoadReport) {
    let eom = &r.latency_ms["eom"];
    println!(
        "{label:<34} {:>8.0} msg/s   eom p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms   completed {}/{}  errors {:?}  replies {:?}",
        r.messages_per_second,
        eom.p50,
        eom.p99,
        eom.max,
        r.messages_completed,
        r.messages_sent,
        r.errors,
        r.replies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_empty_policy_vs_mx_checks() {
    let server = dns().await;
    let (n, m) = (10, 1000);
    println!("\nthroughput, typical messages (40 KiB), {n} connections x {m} messages");
    let mut empty = daemon(&server, EMPTY).await;
    let warm = run(load(&empty, n, 50, Duration::ZERO)).await;
    assert!(warm.errors.is_empty(), "{:?}", warm.errors);
    let e = run(load(&empty, n, m, Duration::ZERO)).await;
    line("empty policy", &e);
    empty.shutdown().await;

    let mut mx = daemon(&server, &common::mx_checks("")).await;
    // Warm the resolver cache (the issue asks for a warm cache).
    run(load(&mx, 2, 5, Duration::ZERO)).await;
    server.reset_stats();
    let r = run(load(&mx, n, m, Duration::ZERO)).await;
    line("mx: dnsbl x3, iprev, spf, dkim, dmarc", &r);
    println!(
        "ratio mx / empty: {:.2}   DNS queries during the mx run: {}",
        r.messages_per_second / e.messages_per_second,
        server.queries()
    );
    mx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eom_latency_under_dns_delay() {
    let server = dns().await;
    let delay = Duration::from_millis(100);
    server.set_default_delay(delay);
    // Lookups of one message that do not depend on each other: 3 DNSBL
    // lists, iprev (PTR then A), SPF (TXT, then the record's mechanisms),
    // DKIM (none: unsigned), DMARC (TXT at _dmarc.example.org and _dmarc.org).
    let k = 7;
    println!(
        "\nlatency with every DNS answer delayed by L = {} ms (resolver cache off: every message waits for DNS)",
        delay.as_millis()
    );
    println!(
        "reference: L = {} ms, k x L = {} ms (k = {k} independent lookups)",
        delay.as_millis(),
        k * delay.as_millis()
    );
    let no_cache = common::mx_checks("cache_size = 0");
    let mut mx = daemon(&server, &no_cache).await;
    server.reset_stats();
    // No pacing: every check waits at its decision stage. The first message
    // of the connection also waits for iprev, a chain of two lookups (PTR,
    // then A) started at connect; later ones find it done.
    let r = run(load(&mx, 1, 5, Duration::ZERO)).await;
    let message = &r.latency_ms["message"];
    println!(
        "no pacing:      MAIL->EOM reply p50 {:>8.1} ms  ({:.2} x L); first message of the connection {:.1} ms ({:.2} x L); eom p50 {:.1} ms; mail p50 {:.1} ms; DNS queries in flight at once: up to {}",
        message.p50,
        message.p50 / delay.as_millis() as f64,
        message.max,
        message.max / delay.as_millis() as f64,
        r.latency_ms["eom"].p50,
        r.latency_ms["mail"].p50,
        server.peak_in_flight()
    );
    mx.shutdown().await;
    // Paced like a real client: 300 ms between commands. Connect-stage and
    // MAIL-stage lookups finish during the dialogue.
    let mut mx = daemon(&server, &no_cache).await;
    let r = run(load(&mx, 1, 3, Duration::from_millis(300))).await;
    println!(
        "paced 300 ms:   eom p50 {:>8.1} ms; mail {:.1} ms; rcpt {:.1} ms",
        r.latency_ms["eom"].p50, r.latency_ms["mail"].p50, r.latency_ms["rcpt"].p50
    );
    mx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_one_message() {
    let server = dns().await;
    server.set_default_delay(Duration::from_millis(100));
    let no_cache = common::mx_checks("cache_size = 0");
    let mut mx = daemon(&server, &no_cache).await;
    let r = run(load(&mx, 1, 1, Duration::ZERO)).await;
    let log = server.query_log();
    let start = log.first().map(|q| q.received);
    for q in &log {
        let at = start
            .map(|s| q.received.duration_since(s).as_millis())
            .unwrap_or(0);
        println!("+{at:>4} ms {:?} {}", q.rtype, q.name);
    }
    println!("message {:.1} ms", r.latency_ms["message"].p50);
    mx.shutdown().await;
}

/// For profiling the daemon binary as its own process (under callgrind or
/// strace) with the MX checks: serve the test zones on loopback, print the
/// address, and keep serving until the file named by
/// `DISPATCH_BENCH_DNS_STOP` exists (default: 10 minutes). Then run
/// `dispatch-milter serve -c bench/mx-checks.toml --nameserver ADDR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "profiling helper: serves DNS until told to stop"]
async fn serve_dns_for_profiling() {
    // Only when asked (`--ignored` with its name): it would otherwise hold
    // the run for ten minutes.
    let Ok(stop) = std::env::var("DISPATCH_BENCH_DNS_STOP") else {
        println!(
            "serve_dns_for_profiling: set DISPATCH_BENCH_DNS_STOP (and DISPATCH_BENCH_DNS_ADDR) to run it"
        );
        return;
    };
    let server = dns().await;
    let addr_file = std::env::var("DISPATCH_BENCH_DNS_ADDR").ok();
    if let Some(path) = &addr_file {
        std::fs::write(path, server.addr().to_string()).expect("write the address file");
    }
    println!("DNS on {}", server.addr());
    // Until the stop file appears, ten minutes at most.
    wait::within(Duration::from_secs(600), || {
        std::path::Path::new(&stop).exists()
    })
    .await;
    println!("DNS queries answered: {}", server.queries());
}
