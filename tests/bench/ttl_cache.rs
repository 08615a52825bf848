//! The answer cache in front of the resolver (`TtlCache`, src/ttl_cache.rs)
//! against moka's `sync::Cache` set up the way a replacement would use it:
//! an expiry per entry (the answer's DNS TTL), a bound on the number of
//! entries, the least recently used entry going first when full (so a new
//! answer is always kept, as ours keeps it). Prints nanoseconds per hit and
//! per miss followed by an insert, for both, in interleaved rounds; asserts
//! nothing about time (docs/benchmarks.md, "Answer cache").
//!
//!     cargo test --release --test bench ttl_cache -- --nocapture

use dispatch_milter::dns::{DnsError, defaults};
use dispatch_milter::ttl_cache::TtlCache;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// What the DNSBL and iprev answers hold: the most common kind of entry.
type Answer = Result<Vec<Ipv4Addr>, DnsError>;

const ROUNDS: usize = 5;
/// Names asked for again and again (the hit loop cycles over them).
const HOT: usize = 1_000;
const HITS: usize = 1_000_000;
/// New names, each missed then inserted: five times the default size, so
/// both caches spend most of the loop full.
const MISSES: usize = 5 * defaults::CACHE_SIZE as usize;

/// The value with its end of life, so the expiry can read it.
#[derive(Clone)]
struct Kept {
    value: Answer,
    until: Instant,
}

struct UntilOfValue;

impl moka::Expiry<Box<str>, Kept> for UntilOfValue {
    fn expire_after_create(&self, _: &Box<str>, kept: &Kept, now: Instant) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Box<str>,
        kept: &Kept,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }
}

fn moka_cache(capacity: u64) -> moka::sync::Cache<Box<str>, Kept> {
    moka::sync::Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .expire_after(UntilOfValue)
        .build()
}

fn moka_get(cache: &moka::sync::Cache<Box<str>, Kept>, key: &str) -> Option<Answer> {
    cache.get(key).map(|kept| kept.value)
}

fn moka_put(cache: &moka::sync::Cache<Box<str>, Kept>, key: &str, value: Answer, until: Instant) {
    cache.insert(key.into(), Kept { value, until });
}

fn answer(n: usize) -> Answer {
    Ok(vec![Ipv4Addr::new(127, 0, 0, 2 + (n % 8) as u8)])
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| format!("{}.{}.0.192.{prefix}.test", n % 256, n / 256))
        .collect()
}

fn per_op(started: Instant, ops: usize) -> f64 {
    started.elapsed().as_nanos() as f64 / ops as f64
}

/// ns per hit: `HITS` lookups over `HOT` names that are all kept.
fn hits(get: impl Fn(&str) -> Option<Answer>, hot: &[String]) -> f64 {
    let started = Instant::now();
    for n in 0..HITS {
        let found = get(black_box(&hot[n % hot.len()]));
        assert!(found.is_some(), "a hot name was not kept");
        black_box(found);
    }
    per_op(started, HITS)
}

/// ns per miss followed by an insert, over names not seen before.
fn misses(
    get: impl Fn(&str) -> Option<Answer>,
    put: impl Fn(&str, Answer, Instant),
    fresh: &[String],
    until: Instant,
) -> f64 {
    let started = Instant::now();
    for (n, name) in fresh.iter().enumerate() {
        if black_box(get(name)).is_none() {
            put(name, answer(n), until);
        }
    }
    per_op(started, fresh.len())
}

/// ns per hit with two threads looking up the same hot names at once (the
/// machine has two cores; the daemon's default is one worker thread, so
/// this is the contended case, not the usual one).
fn hits_two_threads(get: impl Fn(&str) -> Option<Answer> + Sync, hot: &[String]) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let get = &get;
            s.spawn(move || {
                for n in 0..HITS / 2 {
                    black_box(get(black_box(&hot[(n + t * 7) % hot.len()])));
                }
            });
        }
    });
    per_op(started, HITS)
}

#[test]
fn ttl_cache_hit_and_miss_cost() {
    let until = Instant::now() + Duration::from_secs(3600);
    let hot = names("hot", HOT);
    println!(
        "answer cache: {HITS} hits over {HOT} names, {MISSES} misses+inserts at size {}; ns per operation",
        defaults::CACHE_SIZE
    );
    println!(
        "{:<6} {:>14} {:>10} {:>16} {:>12} {:>14} {:>10}",
        "round", "hit: TtlCache", "moka", "miss: TtlCache", "moka", "2 threads: ours", "moka"
    );
    for round in 1..=ROUNDS {
        let ours = TtlCache::new(defaults::CACHE_SIZE);
        let theirs = moka_cache(defaults::CACHE_SIZE);
        for (n, name) in hot.iter().enumerate() {
            ours.put(name, answer(n), until);
            moka_put(&theirs, name, answer(n), until);
        }
        let ours_hit = hits(|k| ours.get(k), &hot);
        let moka_hit = hits(|k| moka_get(&theirs, k), &hot);
        let ours_two = hits_two_threads(|k| ours.get(k), &hot);
        let moka_two = hits_two_threads(|k| moka_get(&theirs, k), &hot);

        // Misses into caches of their own, fresh names per round.
        let fresh = names(&format!("new{round}"), MISSES);
        let ours = TtlCache::new(defaults::CACHE_SIZE);
        let theirs = moka_cache(defaults::CACHE_SIZE);
        let ours_miss = misses(|k| ours.get(k), |k, v, u| ours.put(k, v, u), &fresh, until);
        let moka_miss = misses(
            |k| moka_get(&theirs, k),
            |k, v, u| moka_put(&theirs, k, v, u),
            &fresh,
            until,
        );
        theirs.run_pending_tasks();
        println!(
            "{round:<6} {ours_hit:>14.0} {moka_hit:>10.0} {ours_miss:>16.0} {moka_miss:>12.0} {ours_two:>14.0} {moka_two:>10.0}   (kept at the end: ours {}, moka {})",
            ours.len(),
            theirs.entry_count()
        );
    }
}
