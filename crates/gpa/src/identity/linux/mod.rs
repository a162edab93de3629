//! Linux identity: `/proc` through a process-bound directory descriptor (what is read per process instance cached
//! for [`INSTANCE_CACHE_TTL`], with the descriptor), NSS through a 60 s cache. Nothing is read from `/proc` before
//! the live process is shown to be the recorded instance.
mod nss;
mod procfs;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msp_core::Claims;
use msp_core::claims::UNDEFINED;
use msp_core::redact::escape_control;

use self::nss::{Nss, UserFacts};
use self::procfs::{Exe, FdinfoDir, FileId, ProcDir};
use crate::identity::cache::TtlCache;
use crate::identity::{IdentityError, StaleReason, format_cmdline};
use crate::redirect::{ConnRecord, ExeId};

/// Nanoseconds per second.
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Clock ticks per second when `sysconf` cannot say (`USER_HZ` on every Linux the agent targets).
const DEFAULT_TICKS_PER_SEC: u64 = 100;

/// Builds claims from attribution records. Cheap to share: one per agent, used by every connection.
///
/// [`claims`](IdentityResolver::claims) reads `/proc` and may call NSS, which can block: run it off the async
/// executor (`spawn_blocking`).
#[derive(Debug)]
pub struct IdentityResolver {
    nss: Nss,
    fdinfo: FdinfoDir,
    ticks_per_sec: u64,
    /// What `/proc` said about each recent process instance (see [`INSTANCE_CACHE_TTL`]).
    instances: Mutex<TtlCache<InstanceKey, Arc<ProcFacts>>>,
}

/// How long the executable path and command line read for one process instance running one executable are
/// reused for its later connections. Every connection still proves that the recorded instance is alive and runs
/// that same file (device and inode): the cache keeps the instance's `/proc/<pid>` directory, checked against the
/// recorded start time when it was opened, through which nothing resolves once the process is gone, whatever
/// process has its pid by then. Only the path lookup, the mount table and the command line are skipped. A process
/// that rewrites its own argv shows the old command line for at most this long (it is informative: no selector
/// matches on it, spec §4.4).
pub(crate) const INSTANCE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Process instances cached at most. Each holds its `/proc/<pid>` directory open: the agent's descriptor limit
/// counts them on top of its connections and its own files (`proxy::limits::FD_RESERVE`). When full, the oldest
/// entry makes room, so a burst of one-off callers does not push out every long-lived one at once.
pub(crate) const INSTANCE_CACHE_MAX_ENTRIES: usize = 128;

/// One process instance running one executable, as the kernel recorded them at `connect()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InstanceKey {
    tgid: u32,
    start_boottime_ns: u64,
    exe: ExeId,
}

impl InstanceKey {
    /// `None` when the kernel recorded no executable: such connections are never cached.
    fn of(record: &ConnRecord) -> Option<InstanceKey> {
        Some(InstanceKey {
            tgid: record.tgid,
            start_boottime_ns: record.instance.start_boottime_ns,
            exe: record.instance.exe?,
        })
    }
}

/// The `/proc` facts of one process instance. Its strings go into the claims of every connection of the
/// instance as they are: shared, not copied.
#[derive(Debug)]
struct ProcFacts {
    /// The instance's `/proc/<pid>`, shown to be the recorded instance when it was opened.
    dir: ProcDir,
    /// The verified live executable's identity (device and inode, as `stat` reports them), when there was one.
    exe: Option<FileId>,
    full_path: Arc<str>,
    process_name: Arc<str>,
    cmdline: Arc<str>,
}

impl ProcFacts {
    fn claims(&self, record: &ConnRecord, peer: SocketAddr, user: UserFacts) -> Claims {
        let (user_name, user_groups) = user;
        Claims {
            user_id: u64::from(record.uid),
            user_name,
            user_groups,
            process_id: record.tgid,
            process_name: self.process_name.clone(),
            process_full_path: self.full_path.clone(),
            process_cmd_line: self.cmdline.clone(),
            run_as_elevated: record.uid == 0,
            client_ip: peer.ip().to_string(),
            client_port: peer.port(),
        }
    }
}

impl Default for IdentityResolver {
    fn default() -> Self {
        IdentityResolver::new()
    }
}

impl IdentityResolver {
    pub fn new() -> IdentityResolver {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten();
        let ticks_per_sec = ticks
            .and_then(|t| u64::try_from(t).ok())
            .filter(|&t| t > 0)
            .unwrap_or(DEFAULT_TICKS_PER_SEC);
        IdentityResolver {
            nss: Nss::new(),
            fdinfo: FdinfoDir::open(),
            ticks_per_sec,
            instances: Mutex::new(TtlCache::new(
                INSTANCE_CACHE_TTL,
                INSTANCE_CACHE_MAX_ENTRIES,
            )),
        }
    }

    /// The claims of the connection whose record is `record` and whose accepted socket has peer `peer` (spec §6).
    /// `Err(Stale)` when the process that connected is gone, was replaced by a reused pid, or has executed another
    /// program since.
    pub fn claims(&self, record: &ConnRecord, peer: SocketAddr) -> Result<Claims, IdentityError> {
        let now = Instant::now();
        let facts = match self.cached_facts(record, now) {
            Some(facts) => self.still_running(record, facts)?,
            None => self.read_facts(self.live_instance(record)?, record, now)?,
        };
        let user_name = self.nss.user_name(record.uid, now);
        let user_groups = self.nss.groups(&user_name, record.gid, now);
        Ok(facts.claims(record, peer, (user_name, user_groups)))
    }

    /// [`claims`](IdentityResolver::claims) from the caches alone, without blocking: `None` when the instance's
    /// `/proc` facts or the NSS answers are not cached (the caller then runs `claims` on a blocking thread). On a
    /// hit it still checks, with one `fstatat` of `exe` through the instance's kept `/proc/<pid>` directory, that
    /// the recorded instance is alive and runs the same file (spec §6, conf 64, catalog C3).
    pub fn cached_claims(
        &self,
        record: &ConnRecord,
        peer: SocketAddr,
    ) -> Option<Result<Claims, IdentityError>> {
        let now = Instant::now();
        let facts = self.cached_facts(record, now)?;
        let user = self.nss.cached(record.uid, record.gid, now)?;
        Some(
            self.still_running(record, facts)
                .map(|facts| facts.claims(record, peer, user)),
        )
    }

    /// `/proc/<pid>`, once the live process is shown to be the recorded instance (same start time).
    fn live_instance(&self, record: &ConnRecord) -> Result<ProcDir, IdentityError> {
        let pid = record.tgid;
        let stale = |reason| IdentityError::Stale { pid, reason };
        let proc_dir = ProcDir::open(pid).map_err(|e| stale(vanished(&e)))?;
        let recorded_ticks =
            record.instance.start_boottime_ns / (NANOS_PER_SEC / self.ticks_per_sec);
        let live_ticks = proc_dir.start_ticks().map_err(|e| stale(vanished(&e)))?;
        if live_ticks != recorded_ticks {
            return Err(stale(StaleReason::PidReused {
                recorded_ticks,
                live_ticks,
            }));
        }
        Ok(proc_dir)
    }

    fn cached_facts(&self, record: &ConnRecord, now: Instant) -> Option<Arc<ProcFacts>> {
        let key = InstanceKey::of(record)?;
        lock(&self.instances).get(&key, now)
    }

    /// The cached facts hold while their process is alive (its directory still leads to `exe`) and still runs the
    /// executable they were read for. One `fstatat` per connection: the check every connection of a cached
    /// instance pays, on its way to the upstream.
    fn still_running(
        &self,
        record: &ConnRecord,
        facts: Arc<ProcFacts>,
    ) -> Result<Arc<ProcFacts>, IdentityError> {
        let stale = |reason| IdentityError::Stale {
            pid: record.tgid,
            reason,
        };
        let live = facts.dir.exe_id().map_err(|e| stale(vanished(&e)))?;
        if facts.exe == Some(live) {
            Ok(facts)
        } else {
            Err(stale(StaleReason::ExecutableChanged))
        }
    }

    /// Reads the executable's path and the command line, checks the executable before and after, and caches the
    /// result when the kernel recorded the executable.
    fn read_facts(
        &self,
        proc_dir: ProcDir,
        record: &ConnRecord,
        now: Instant,
    ) -> Result<Arc<ProcFacts>, IdentityError> {
        let stale = |reason| IdentityError::Stale {
            pid: record.tgid,
            reason,
        };
        let exe = self.verified_exe(&proc_dir, record).map_err(stale)?;
        // The verified file's own identity, from its open descriptor: what later connections compare with
        // (`still_running`). Not a second look through `/proc`, which a process that runs another program in
        // between and then this one again would answer with the other's.
        let id = exe.as_ref().and_then(|e| e.id().ok());
        // The path counts only when it names the same file here: else it is "unavailable" (empty, spec §6), so
        // no `exePath` or `processName` selector can match an impostor (catalog C3).
        // Control characters are escaped here, at the source, so a file name cannot forge a log line, a summary
        // or an event wherever the claims go (spec §11.4, catalog F2); a real exePath never holds one.
        let full_path = exe
            .as_ref()
            .zip(id)
            .and_then(|(e, id)| e.path().ok().filter(|p| id.is_at(p)))
            .map(|p| escape_control(&p.to_string_lossy()));
        let cmdline = match proc_dir.cmdline() {
            Ok((raw, _)) if raw.is_empty() => UNDEFINED.to_owned(),
            Ok((raw, truncated)) => format_cmdline(&raw, truncated),
            Err(_) => UNDEFINED.to_owned(),
        };
        // The process may have called execve while we read: the path and command line would then describe the
        // new program. Look once more.
        if let Some(first) = &exe {
            let again = proc_dir
                .exe(&self.fdinfo)
                .map_err(|e| stale(vanished(&e)))?;
            if !again.same_file(first) {
                return Err(stale(StaleReason::ExecutableChanged));
            }
        }
        let full_path = full_path.unwrap_or_default();
        let process_name = Path::new(&full_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let facts = Arc::new(ProcFacts {
            dir: proc_dir,
            exe: id,
            full_path: full_path.into(),
            process_name: process_name.into(),
            cmdline: cmdline.into(),
        });
        if let (Some(key), Some(_)) = (InstanceKey::of(record), &facts.exe) {
            // Evicted directories close after the lock is let go.
            let evicted = lock(&self.instances).insert(key, facts.clone(), now);
            drop(evicted);
        }
        Ok(facts)
    }

    /// The live executable, checked against the one recorded at `connect()` (catalog C3).
    fn verified_exe(
        &self,
        proc_dir: &ProcDir,
        record: &ConnRecord,
    ) -> Result<Option<Exe>, StaleReason> {
        let live = proc_dir.exe(&self.fdinfo);
        let Some(recorded) = record.instance.exe else {
            return Ok(live.ok()); // nothing recorded to compare with: the path is informative only
        };
        let live = live.map_err(|e| vanished(&e))?;
        let dev = proc_dir
            .mount_dev(live.mnt_id())
            .map_err(|e| vanished(&e))?;
        if live.matches(&recorded, dev) {
            Ok(Some(live))
        } else {
            Err(StaleReason::ExecutableChanged)
        }
    }
}

// The proxy shares one resolver across its tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<IdentityResolver>();
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned cache is still a valid cache.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A failed `/proc` read: the process is gone (or a zombie without an executable), or it cannot be verified.
fn vanished(e: &io::Error) -> StaleReason {
    match e.raw_os_error() {
        Some(code) if code == nix::Error::ENOENT as i32 || code == nix::Error::ESRCH as i32 => {
            StaleReason::Exited
        }
        _ => StaleReason::Unverifiable,
    }
}
