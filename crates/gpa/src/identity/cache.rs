//! A small bounded cache whose entries expire: NSS answers are kept at most 60 s (spec §6). It never returns an
//! entry older than its TTL and never grows past its capacity.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: HashMap<K, (Instant, V)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            entries: HashMap::new(),
            ttl,
            capacity,
        }
    }

    /// The value stored for `key` less than `ttl` before `now`.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(stored, _)| now.saturating_duration_since(*stored) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Stores `value`. Expired entries go at every insert (a value may hold a resource, such as a descriptor); if
    /// the cache is still full, everything goes.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (stored, _)| now.saturating_duration_since(*stored) < ttl);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.clear();
        }
        self.entries.insert(key, (now, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_holds() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut cache = TtlCache::new(Duration::from_secs(60), 2);
        cache.insert(1, "a", t0);
        assert_eq!(cache.get(&1, at(59)), Some("a"));
        assert_eq!(cache.get(&1, at(60)), None);
        cache.insert(2, "b", t0);
        cache.insert(3, "c", at(61)); // 1 and 2 expired and go
        assert_eq!(cache.entries.len(), 1);
        cache.insert(4, "d", at(122)); // 3 expired and goes, though there was room
        assert_eq!(cache.entries.len(), 1);
        cache.insert(5, "e", at(122));
        cache.insert(6, "f", at(122)); // full, nothing expired: cleared
        assert_eq!(cache.entries.len(), 1);
        assert_eq!(cache.get(&6, at(122)), Some("f"));
    }
}
