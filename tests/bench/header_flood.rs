//! Resident memory under a header flood: what `max_headers` and
//! `max_header_bytes` bound (docs/benchmarks.md, "Header flood").

use crate::common::daemon::{TestDaemon, greet, open, tagging_policy};

/// VmRSS and VmHWM of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Twenty concurrent messages of 500,000 short header lines each, against
/// the default limits and against limits too high to bind (what main did
/// before the limits). Prints resident memory before, at peak and after.
/// The daemon and the clients share this process; the clients keep
/// nothing, so the growth is the daemon's.
///
///     cargo test --release --test bench header_flood -- --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_flood_memory() {
    const MESSAGES: usize = 20;
    const HEADERS: usize = 500_000;
    let unbounded = "max_headers = 100000000\nmax_header_bytes = \"100G\"";
    let which = std::env::var("FLOOD").unwrap_or_else(|_| "default".into());
    let limits = if which == "unbounded" { unbounded } else { "" };
    let d = TestDaemon::start(&tagging_policy(limits)).await;
    let (before, _) = memory();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..MESSAGES {
        let addr = d.addr();
        tasks.push(tokio::spawn(async move {
            let mut conn = open(addr).await;
            greet(&mut conn, "mx").await;
            conn.mail(["<a@example.net>"]).await.unwrap();
            conn.rcpt(["<b@example.org>"]).await.unwrap();
            for n in 0..HEADERS {
                conn.header("X-Flood", format!("{n}")).await.unwrap();
            }
            conn.eoh().await.unwrap();
            conn.eom().await.unwrap().1
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let (after, peak) = memory();
    println!(
        "header flood ({which} limits): {MESSAGES} messages x {HEADERS} headers in {:.1} s; resident before {before:.0} MiB, peak {peak:.0} MiB, after {after:.0} MiB; first status {:?}",
        started.elapsed().as_secs_f64(),
        statuses[0]
    );
}
