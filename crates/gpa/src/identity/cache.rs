//! A small bounded cache whose entries expire: NSS answers are kept at most 60 s (spec §6). It never returns an
//! entry older than its TTL and never grows past its capacity; when full, the oldest entry makes room.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: HashMap<K, (Instant, V)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
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

    /// Stores `value`. Expired entries go at every insert, and when the cache is still full its oldest entry goes.
    /// What went is returned, so that a caller holding a lock can drop it (a value may hold a descriptor) after
    /// letting go.
    #[must_use = "the removed entries: drop them outside any lock"]
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) -> Vec<V> {
        let ttl = self.ttl;
        let mut gone: Vec<V> = self
            .entries
            .extract_if(|_, (stored, _)| now.saturating_duration_since(*stored) >= ttl)
            .map(|(_, (_, v))| v)
            .collect();
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (stored, _))| *stored)
                .map(|(k, _)| k.clone());
            gone.extend(oldest.and_then(|k| self.entries.remove(&k)).map(|(_, v)| v));
        }
        gone.extend(self.entries.insert(key, (now, value)).map(|(_, v)| v));
        gone
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
        assert!(cache.insert(1, "a", t0).is_empty());
        assert_eq!(cache.get(&1, at(59)), Some("a"));
        assert_eq!(cache.get(&1, at(60)), None);
        assert!(cache.insert(2, "b", at(2)).is_empty());
        assert_eq!(cache.insert(3, "c", at(61)), ["a"]); // 1 expired and goes
        assert_eq!(cache.insert(4, "d", at(122)).len(), 2); // 2 and 3 expired and go, though there was room
        assert!(cache.insert(5, "e", at(123)).is_empty());
        assert_eq!(cache.insert(6, "f", at(124)), ["d"]); // full, nothing expired: the oldest goes
        assert_eq!(cache.get(&5, at(124)), Some("e"));
        assert_eq!(cache.get(&6, at(124)), Some("f"));
        assert_eq!(cache.insert(6, "g", at(125)), ["f"]); // a replaced value goes too
        assert_eq!(cache.get(&5, at(125)), Some("e"));
    }
}
