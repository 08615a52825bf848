//! A small table of answers kept until their DNS TTL runs out, at most a
//! fixed number of them (`[dns] cache_size`; 0 keeps nothing). When full,
//! expired entries go first, then everything: a simple bound, since a full
//! table of live answers is rare and the resolver's own cache is behind it.
//!
//! It sits in front of the resolver for answers every message or connection
//! asks for again (DKIM keys and DMARC records as parsed, DNSBL and iprev
//! addresses): a hit here is a hash lookup, where the resolver's cache hit
//! parses the name, hashes it and clones the records.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub struct TtlCache<V> {
    entries: Mutex<HashMap<Box<str>, (V, Instant)>>,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: u64) -> TtlCache<V> {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
        }
    }

    /// The answer for `key` (spelled as it was put), if still valid.
    pub fn get(&self, key: &str) -> Option<V> {
        self.get_borrowed(key)
    }

    /// [`TtlCache::get`] for any borrowed form of the key (what mail-auth's
    /// `ResolverCache` passes).
    pub fn get_borrowed<Q>(&self, key: &Q) -> Option<V>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, key: &str, value: V, valid_until: Instant) {
        if self.capacity == 0 || valid_until <= Instant::now() {
            return;
        }
        let mut entries = lock(&self.entries);
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key.into(), (value, valid_until));
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

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
}
