//! Typed handles on the object's maps, shared by the proxy's tasks. Each write path takes a short lock around
//! one syscall; nothing here is held across an `.await`. This module must never report a failed map update as
//! success (spec §7.4).
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};

use super::programs::errno;
use crate::redirect::abi::{AddrPort, COUNTER_COUNT, Counter, map_name};
use crate::redirect::{Counters, RedirectError};

/// The maps the agent reads or writes; `records` (socket storage) is read through `gpa_take` only.
pub(super) struct Maps {
    policy: Mutex<Policy>,
    skip: Mutex<HashMap<MapData, u32, u64>>,
    meta: Mutex<Array<MapData, u64>>,
    counters: PerCpuArray<MapData, u64>,
}

/// The policy and its filter word, changed together under one lock.
struct Policy {
    entries: HashMap<MapData, AddrPort, AddrPort>,
    filter: Array<MapData, u64>,
}

/// The agent's own process, exempt from redirection (spec §7.2).
#[derive(Debug, Clone, Copy)]
pub(super) struct OwnProcess {
    pub(super) tgid: u32,
    /// `/proc/self/stat` field 22.
    pub(super) start_ticks: u64,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only a map handle behind, which is still valid.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn map_error(map: &'static str, operation: &'static str, e: MapError) -> RedirectError {
    if errno(&e) == Some(super::programs::libc_errno::EPERM) {
        return RedirectError::PermissionDenied {
            operation,
            source: Box::new(e),
        };
    }
    RedirectError::Map {
        map,
        operation,
        source: Box::new(e),
    }
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, RedirectError> {
    T::try_from(map).map_err(|e| RedirectError::MapLayout {
        map: name,
        source: Some(Box::new(e)),
    })
}

impl Maps {
    /// Builds the handles from maps obtained by `get` (from a freshly loaded object or from pins). The skip map
    /// is fetched first, so a restarted agent can refresh it before touching anything else (spec §7.5).
    pub(super) fn open(
        mut get: impl FnMut(&'static str) -> Result<Map, RedirectError>,
    ) -> Result<Maps, RedirectError> {
        let skip = typed(map_name::SKIP, get(map_name::SKIP)?)?;
        Ok(Maps {
            skip: Mutex::new(skip),
            policy: Mutex::new(Policy {
                entries: typed(map_name::POLICY, get(map_name::POLICY)?)?,
                filter: typed(map_name::POLICY_FILTER, get(map_name::POLICY_FILTER)?)?,
            }),
            meta: Mutex::new(typed(map_name::META, get(map_name::META)?)?),
            counters: typed(map_name::COUNTERS, get(map_name::COUNTERS)?)?,
        })
    }

    /// Makes `own` the only process in the skip map: inserted first, then every other entry removed.
    pub(super) fn refresh_skip(&self, own: OwnProcess) -> Result<(), RedirectError> {
        let mut skip = lock(&self.skip);
        skip.insert(own.tgid, own.start_ticks, 0)
            .map_err(|e| map_error(map_name::SKIP, "insert", e))?;
        let stale: Vec<u32> = skip
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error(map_name::SKIP, "iterate", e))?;
        for tgid in stale.into_iter().filter(|&t| t != own.tgid) {
            skip.remove(&tgid)
                .map_err(|e| map_error(map_name::SKIP, "delete", e))?;
        }
        Ok(())
    }

    /// The fingerprint of the object the attached programs came from; 0 when never written.
    pub(super) fn fingerprint(&self) -> Result<u64, RedirectError> {
        lock(&self.meta)
            .get(&0, 0)
            .map_err(|e| map_error(map_name::META, "lookup", e))
    }

    pub(super) fn set_fingerprint(&self, fingerprint: u64) -> Result<(), RedirectError> {
        lock(&self.meta)
            .set(0, fingerprint, 0)
            .map_err(|e| map_error(map_name::META, "update", e))
    }

    /// Makes the policy exactly `entries` (endpoint → listener): inserts first, then removes the rest, so an
    /// endpoint that stays is never briefly missing (spec §7.4). The filter word covers the old and the new
    /// addresses until the stale entries are gone, so it never hides an entry from the kernel programs.
    pub(super) fn set_policy(&self, entries: &[(AddrPort, AddrPort)]) -> Result<(), RedirectError> {
        let mut policy = lock(&self.policy);
        let filter_error = |operation| move |e| map_error(map_name::POLICY_FILTER, operation, e);
        let old_bits = policy.filter.get(&0, 0).map_err(filter_error("lookup"))?;
        let new_bits = entries
            .iter()
            .fold(0u64, |bits, (endpoint, _)| bits | endpoint.filter_bit());
        policy
            .filter
            .set(0, old_bits | new_bits, 0)
            .map_err(filter_error("update"))?;
        for (endpoint, listener) in entries {
            policy
                .entries
                .insert(endpoint, listener, 0)
                .map_err(|e| map_error(map_name::POLICY, "insert", e))?;
        }
        let wanted: HashSet<AddrPort> = entries.iter().map(|(endpoint, _)| *endpoint).collect();
        let present: Vec<AddrPort> = policy
            .entries
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error(map_name::POLICY, "iterate", e))?;
        for endpoint in present.into_iter().filter(|e| !wanted.contains(e)) {
            policy
                .entries
                .remove(&endpoint)
                .map_err(|e| map_error(map_name::POLICY, "delete", e))?;
        }
        policy
            .filter
            .set(0, new_bits, 0)
            .map_err(filter_error("update"))
    }

    /// The current policy entries.
    pub(super) fn policy(&self) -> Result<Vec<(AddrPort, AddrPort)>, RedirectError> {
        lock(&self.policy)
            .entries
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|e| map_error(map_name::POLICY, "iterate", e))
    }

    pub(super) fn counters(&self) -> Result<Counters, RedirectError> {
        let mut sums = [0u64; COUNTER_COUNT as usize];
        for (index, sum) in (0..COUNTER_COUNT).zip(sums.iter_mut()) {
            let per_cpu = self
                .counters
                .get(&index, 0)
                .map_err(|e| map_error(map_name::COUNTERS, "lookup", e))?;
            *sum = per_cpu.iter().fold(0u64, |acc, v| acc.wrapping_add(*v));
        }
        let at = |c: Counter| sums.get(c as usize).copied().unwrap_or_default();
        Ok(Counters {
            connects_seen: at(Counter::ConnectSeen),
            redirected: at(Counter::Redirected),
            skipped: at(Counter::Skipped),
            storage_failed: at(Counter::StorageFailed),
            taken: at(Counter::Taken),
            peer_rewritten: at(Counter::PeerRewritten),
        })
    }
}
