//! FNV-1a, the hasher of the name and pattern tables: deterministic (`msp-core` has no randomness) and fast on
//! the short strings these tables hold. Only names and patterns from the host's item or the root-owned local
//! file are ever inserted, so a request cannot choose colliding keys.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A 64-bit FNV-1a hasher.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

pub(super) type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub(super) type FnvSet<T> = HashSet<T, BuildHasherDefault<Fnv>>;
