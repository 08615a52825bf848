//! A table of answers kept until their DNS TTL runs out, at most a fixed
//! number of them (`[dns] cache_size`; 0 keeps nothing): moka's concurrent
//! cache with an expiry per entry. When full, the least recently used answer
//! goes, so a new answer is always kept; expired ones are never returned and
//! are dropped as moka does its housekeeping.
//!
//! It sits in front of the resolver for answers every message or connection
//! asks for again (DKIM keys as parsed, DNSBL and iprev addresses): a hit
//! here is a hash lookup, where the resolver's cache hit parses the name,
//! hashes it and clones the records. docs/benchmarks.md (section 6) has the
//! figures that chose moka over the hand-written table this was before.

use moka::Expiry;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::time::{Duration, Instant};

/// DNS answers by name, each kept until its TTL runs out, at most a fixed number.
pub struct TtlCache<V> {
    /// `None` when the size is 0: nothing to keep, no cache to build.
    entries: Option<Cache<Box<str>, Kept<V>>>,
}

/// A value with its end of life, which the expiry reads.
#[derive(Clone)]
struct Kept<V> {
    value: V,
    until: Instant,
}

/// Each entry lives until its own `until`, also when a newer answer
/// replaces an older one.
struct UntilOfEntry;

impl<V> Expiry<Box<str>, Kept<V>> for UntilOfEntry {
    fn expire_after_create(&self, _: &Box<str>, kept: &Kept<V>, now: Instant) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Box<str>,
        kept: &Kept<V>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }
}

impl<V: Clone + Send + Sync + 'static> TtlCache<V> {
    /// A cache that keeps at most `capacity` answers; 0 keeps none.
    pub fn new(capacity: u64) -> TtlCache<V> {
        let entries = (capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(capacity)
                // moka's default (TinyLFU) may turn a new entry away when the
                // cache is full; a fresh DNS answer is always worth keeping.
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(UntilOfEntry)
                .build()
        });
        TtlCache { entries }
    }

    /// The answer for `key` (spelled as it was put), if still valid.
    pub fn get(&self, key: &str) -> Option<V> {
        // moka returns no entry past its expiry (tested below).
        self.entries.as_ref()?.get(key).map(|kept| kept.value)
    }

    /// Keep `value` for `key` until `valid_until`; an answer already expired is not kept.
    pub fn put(&self, key: &str, value: V, valid_until: Instant) {
        if let Some(entries) = &self.entries
            && valid_until > Instant::now()
        {
            entries.insert(
                key.into(),
                Kept {
                    value,
                    until: valid_until,
                },
            );
        }
    }

    /// How many answers are kept, once moka has finished the evictions and
    /// removals it still had pending.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            usize::try_from(entries.entry_count()).unwrap_or(usize::MAX)
        })
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn answers_last_their_ttl_and_stay_within_the_size() {
        let later = Instant::now() + Duration::from_secs(300);
        let cache = TtlCache::new(2);
        cache.put("a.example.", 1, later);
        assert_eq!(cache.get("a.example."), Some(1));
        // Already expired: not kept.
        cache.put("b.example.", 2, Instant::now());
        assert_eq!(cache.get("b.example."), None);
        // Full: room is made, never more than the size.
        cache.put("c.example.", 3, later);
        cache.put("d.example.", 4, later);
        assert!(cache.len() <= 2);
        assert_eq!(cache.get("d.example."), Some(4));
        // Size 0 ([dns] cache_size = 0): nothing is kept.
        let none = TtlCache::new(0);
        none.put("a.example.", 1, later);
        assert!(none.is_empty());
    }

    #[test]
    fn an_answer_goes_when_its_own_ttl_ends() {
        let cache = TtlCache::new(10);
        let soon = Instant::now() + Duration::from_millis(50);
        let later = Instant::now() + Duration::from_secs(300);
        cache.put("short.example.", 1, soon);
        cache.put("long.example.", 2, later);
        // Replaced by an answer with a longer TTL: the new end of life holds.
        cache.put("renewed.example.", 3, soon);
        cache.put("renewed.example.", 4, later);
        while Instant::now() <= soon {
            std::thread::yield_now();
        }
        assert_eq!(cache.get("short.example."), None);
        assert_eq!(cache.get("long.example."), Some(2));
        assert_eq!(cache.get("renewed.example."), Some(4));
        // (moka drops the expired entry itself on a later tick of its timer
        // wheel, about a second; `len` may count it until then, as the table
        // before it counted an expired answer until it was next asked for.)
    }

    #[test]
    fn when_full_the_least_recently_used_answer_goes() {
        let later = Instant::now() + Duration::from_secs(300);
        let cache = TtlCache::new(3);
        for (n, key) in ["a.", "b.", "c."].into_iter().enumerate() {
            cache.put(key, n, later);
            // Each insert settled before the next, so the order of use is
            // the order here.
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get("a."), Some(0));
        cache.put("d.", 3, later);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b."), None, "least recently used");
        assert_eq!(cache.get("a."), Some(0));
        assert_eq!(cache.get("c."), Some(2));
        assert_eq!(cache.get("d."), Some(3), "a new answer is always kept");
    }
}
