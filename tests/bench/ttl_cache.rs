//! The answer cache in front of the resolver (`TtlCache`, src/ttl_cache.rs:
//! moka's `sync::Cache` with an expiry per entry, least recently used out
//! first) against the hand-written table it replaced (a `Mutex<HashMap>`,
//! kept below as the baseline). Prints nanoseconds per hit and per miss
//! followed by an insert, for both, in interleaved rounds; asserts nothing
//! about time (docs/benchmarks.md, section 6).
//!
//!     cargo test --release --test bench ttl_cache -- --nocapture

use dispatch_milter::dns::{DnsError, defaults};
use dispatch_milter::ttl_cache::TtlCache;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
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

/// The table `TtlCache` was before issue 17, kept here as the baseline: a
/// map behind a mutex; when full, expired entries go first, then everything.
struct HandWritten<V> {
    entries: Mutex<HashMap<Box<str>, (V, Instant)>>,
    capacity: usize,
}

impl<V: Clone> HandWritten<V> {
    fn new(capacity: u64) -> HandWritten<V> {
        HandWritten {
            entries: Mutex::new(HashMap::new()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: &str, value: V, valid_until: Instant) {
        if self.capacity == 0 || valid_until <= Instant::now() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key.into(), (value, valid_until));
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
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
        "{:<6} {:>12} {:>10} {:>13} {:>10} {:>16} {:>10}",
        "round", "hit: table", "moka", "miss: table", "moka", "2 threads: table", "moka"
    );
    for round in 1..=ROUNDS {
        let table = HandWritten::new(defaults::CACHE_SIZE);
        let moka = TtlCache::new(defaults::CACHE_SIZE);
        for (n, name) in hot.iter().enumerate() {
            table.put(name, answer(n), until);
            moka.put(name, answer(n), until);
        }
        let table_hit = hits(|k| table.get(k), &hot);
        let moka_hit = hits(|k| moka.get(k), &hot);
        let table_two = hits_two_threads(|k| table.get(k), &hot);
        let moka_two = hits_two_threads(|k| moka.get(k), &hot);

        // Misses into caches of their own, fresh names per round.
        let fresh = names(&format!("new{round}"), MISSES);
        let table = HandWritten::new(defaults::CACHE_SIZE);
        let moka = TtlCache::new(defaults::CACHE_SIZE);
        let table_miss = misses(
            |k| table.get(k),
            |k, v, u| table.put(k, v, u),
            &fresh,
            until,
        );
        let moka_miss = misses(|k| moka.get(k), |k, v, u| moka.put(k, v, u), &fresh, until);
        println!(
            "{round:<6} {table_hit:>12.0} {moka_hit:>10.0} {table_miss:>13.0} {moka_miss:>10.0} {table_two:>16.0} {moka_two:>10.0}   (kept at the end: table {}, moka {})",
            table.len(),
            moka.len()
        );
    }
}
