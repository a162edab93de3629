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

    /// Stores `value`; when full, expired entries go first, and if none expired, everything goes.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (stored, _)| now.saturating_duration_since(*stored) < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
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
        let mut cache = TtlCache::new(Duration::from_secs(60), 2);
        cache.insert(1, "a", t0);
        assert_eq!(cache.get(&1, t0 + Duration::from_secs(59)), Some("a"));
        assert_eq!(cache.get(&1, t0 + Duration::from_secs(60)), None);
        cache.insert(2, "b", t0);
        cache.insert(3, "c", t0 + Duration::from_secs(61)); // full: 1 and 2 expired and go
        assert_eq!(cache.entries.len(), 1);
        cache.insert(4, "d", t0 + Duration::from_secs(61));
        cache.insert(5, "e", t0 + Duration::from_secs(61)); // full, nothing expired: cleared
        assert!(cache.entries.len() <= 2);
        assert_eq!(cache.get(&5, t0 + Duration::from_secs(61)), Some("e"));
    }
}
