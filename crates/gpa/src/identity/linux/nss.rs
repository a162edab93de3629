//! User and group names from NSS (`getpwuid_r`, `getgrouplist`, `getgrgid_r`), cached at most 60 s (spec §6).
//! These calls may block on a directory service: callers run them off the async executor. The answers are
//! shared (`Arc`) by the claims of every connection that uses them.
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msp_core::claims::UNDEFINED;
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use crate::identity::cache::TtlCache;

/// How long an NSS answer is reused (spec §6: at most 60 s).
pub(super) const NSS_CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries per cache; beyond it expired entries, then all, are dropped.
pub(super) const NSS_CACHE_MAX_ENTRIES: usize = 4096;

/// A user's name and group names, as the claims carry them.
pub(super) type UserFacts = (Arc<str>, Arc<[String]>);
/// Group names by (user name, primary gid).
type GroupCache = TtlCache<(Arc<str>, u32), Arc<[String]>>;

#[derive(Debug)]
pub(super) struct Nss {
    users: Mutex<TtlCache<u32, Arc<str>>>,
    groups: Mutex<GroupCache>,
}

impl Nss {
    pub(super) fn new() -> Nss {
        Nss {
            users: Mutex::new(TtlCache::new(NSS_CACHE_TTL, NSS_CACHE_MAX_ENTRIES)),
            groups: Mutex::new(TtlCache::new(NSS_CACHE_TTL, NSS_CACHE_MAX_ENTRIES)),
        }
    }

    /// The cached answers for (`uid`, `gid`) only: never calls NSS, so it cannot block.
    pub(super) fn cached(&self, uid: u32, gid: u32, now: Instant) -> Option<UserFacts> {
        let name = lock(&self.users).get(&uid, now)?;
        let groups = lock(&self.groups).get(&(name.clone(), gid), now)?;
        Some((name, groups))
    }

    /// The passwd name of `uid`, or `undefined`.
    pub(super) fn user_name(&self, uid: u32, now: Instant) -> Arc<str> {
        if let Some(name) = lock(&self.users).get(&uid, now) {
            return name;
        }
        let name: Arc<str> = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| UNDEFINED.into(), |u| u.name.into());
        let _evicted = lock(&self.users).insert(uid, name.clone(), now);
        name
    }

    /// The group names of (`user`, `gid`): `getgrouplist`, or only `gid`'s group when the user has no name.
    pub(super) fn groups(&self, user: &Arc<str>, gid: u32, now: Instant) -> Arc<[String]> {
        let key = (user.clone(), gid);
        if let Some(groups) = lock(&self.groups).get(&key, now) {
            return groups;
        }
        let gids = match CString::new(user.as_bytes()) {
            Ok(name) if **user != *UNDEFINED => {
                getgrouplist(&name, Gid::from_raw(gid)).unwrap_or_default()
            }
            _ => vec![Gid::from_raw(gid)],
        };
        let mut names: Vec<String> = Vec::with_capacity(gids.len());
        for gid in gids {
            if let Ok(Some(group)) = Group::from_gid(gid)
                && !names.contains(&group.name)
            {
                names.push(group.name);
            }
        }
        let names: Arc<[String]> = names.into();
        let _evicted = lock(&self.groups).insert(key, names.clone(), now);
        names
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cache is still a valid cache.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
