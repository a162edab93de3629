//! Per-VM key state: pending keys, the one latched key, and the incarnation (spec §2.10, §12.1, §12.2).
//!
//! Transitions are pure functions on an immutable value, so a request always sees one consistent state and
//! the registry publishes a new value after the store has accepted it. Key bytes come from the OS CSPRNG
//! (`getrandom`) only; this module must never log, format or serialise them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use msp_core::sign::{KeyGuid, SigningKey};

/// At most this many keys wait for attestation per VM; issuing one more discards the oldest (spec §12.1).
pub const MAX_PENDING_KEYS: usize = 8;

/// A key the host generated: the guid it travels under, its bytes, and the incarnation it belongs to.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub guid: KeyGuid,
    pub key: SigningKey,
    pub incarnation: u32,
    pub issued: SystemTime,
}

/// The OS random source failed; no key was issued.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(String);

impl IssuedKey {
    /// 32 bytes from the OS CSPRNG and a random (v4) guid (spec §12.1).
    pub fn generate(incarnation: u32, now: SystemTime) -> Result<IssuedKey, RandomError> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut_slice()).map_err(|e| RandomError(e.to_string()))?;
        let mut guid_bytes = [0u8; 16];
        getrandom::fill(&mut guid_bytes).map_err(|e| RandomError(e.to_string()))?;
        let guid = uuid::Builder::from_random_bytes(guid_bytes)
            .into_uuid()
            .hyphenated()
            .to_string();
        let guid = KeyGuid::parse(&guid).map_err(|e| RandomError(e.to_string()))?;
        Ok(IssuedKey {
            guid,
            key: SigningKey::from_bytes(*bytes),
            incarnation,
            issued: now,
        })
    }

    /// Whether `guid` names this key (guids compare case-insensitively: the agent echoes what it got).
    pub fn is(&self, guid: &KeyGuid) -> bool {
        self.guid.as_str().eq_ignore_ascii_case(guid.as_str())
    }
}

/// A VM's keys at one moment.
#[derive(Debug, Clone, Default)]
pub struct KeyState {
    /// The current `keyIncarnationId` (spec §2.10).
    pub incarnation: u32,
    /// Keys issued and not yet attested, oldest first.
    pub pending: VecDeque<Arc<IssuedKey>>,
    /// The key requests must be signed with, once attested.
    pub latched: Option<Arc<IssuedKey>>,
}

impl KeyState {
    pub fn new(incarnation: u32, latched: Option<Arc<IssuedKey>>) -> KeyState {
        KeyState {
            incarnation,
            pending: VecDeque::new(),
            latched,
        }
    }

    /// The key a request under `guid` must verify with: only the latched one (spec §12.3 step 2).
    pub fn latched_key(&self, guid: &KeyGuid) -> Option<SigningKey> {
        self.latched
            .as_ref()
            .filter(|k| k.is(guid))
            .map(|k| k.key.clone())
    }

    pub fn pending(&self, guid: &KeyGuid) -> Option<&Arc<IssuedKey>> {
        self.pending.iter().find(|k| k.is(guid))
    }

    /// Adds a pending key, discarding the oldest beyond [`MAX_PENDING_KEYS`]. The caller has checked that no
    /// key is latched (spec §12.2: a latched key is never handed out again).
    pub fn with_pending(&self, key: Arc<IssuedKey>) -> KeyState {
        let mut next = self.clone();
        next.pending.push_back(key);
        while next.pending.len() > MAX_PENDING_KEYS {
            next.pending.pop_front();
        }
        next
    }

    /// Latches `key` and discards every other pending key (spec §12.2).
    pub fn with_latched(&self, key: Arc<IssuedKey>) -> KeyState {
        KeyState {
            incarnation: self.incarnation,
            pending: VecDeque::new(),
            latched: Some(key),
        }
    }

    /// Discards the latched and pending keys under a new incarnation (spec §12.2 reset).
    pub fn reset_to(&self, incarnation: u32) -> KeyState {
        KeyState::new(incarnation, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(inc: u32) -> Arc<IssuedKey> {
        Arc::new(IssuedKey::generate(inc, SystemTime::UNIX_EPOCH).unwrap())
    }

    #[test]
    fn keys_are_random_v4() {
        let (a, b) = (key(1), key(1));
        assert_ne!(a.guid, b.guid);
        assert_ne!(a.key.as_bytes(), b.key.as_bytes());
        assert_eq!(a.guid.as_str().as_bytes()[14], b'4', "version nibble");
    }

    #[test]
    fn at_most_eight_pending_oldest_dropped() {
        let mut s = KeyState::new(1, None);
        let first = key(1);
        s = s.with_pending(first.clone());
        for _ in 0..MAX_PENDING_KEYS {
            s = s.with_pending(key(1));
        }
        assert_eq!(s.pending.len(), MAX_PENDING_KEYS);
        assert!(s.pending(&first.guid).is_none());
    }

    #[test]
    fn latch_discards_other_pending_and_reset_discards_latched() {
        let (a, b) = (key(1), key(1));
        let s = KeyState::new(1, None)
            .with_pending(a.clone())
            .with_pending(b.clone());
        let s = s.with_latched(a.clone());
        assert!(s.pending.is_empty());
        assert!(s.latched_key(&a.guid).is_some());
        assert!(s.latched_key(&b.guid).is_none());
        let upper = KeyGuid::parse(&a.guid.as_str().to_ascii_uppercase()).unwrap();
        assert!(s.latched_key(&upper).is_some());
        let r = s.reset_to(2);
        assert_eq!(r.incarnation, 2);
        assert!(r.latched_key(&a.guid).is_none());
    }
}
