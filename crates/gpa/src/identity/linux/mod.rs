//! Linux identity: `/proc` through a process-bound directory descriptor, NSS through a 60 s cache. Nothing is
//! read from `/proc` before the live process is shown to be the recorded instance.
mod nss;
mod procfs;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use msp_core::Claims;
use msp_core::claims::UNDEFINED;
use msp_core::redact::escape_control;

use self::nss::Nss;
use self::procfs::{Exe, ProcDir};
use crate::identity::{IdentityError, StaleReason, format_cmdline};
use crate::redirect::ConnRecord;

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
    ticks_per_sec: u64,
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
            ticks_per_sec,
        }
    }

    /// The claims of the connection whose record is `record` and whose accepted socket has peer `peer` (spec §6).
    /// `Err(Stale)` when the process that connected is gone, was replaced by a reused pid, or has executed another
    /// program since.
    pub fn claims(&self, record: &ConnRecord, peer: SocketAddr) -> Result<Claims, IdentityError> {
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

        let exe = self.verified_exe(&proc_dir, record).map_err(stale)?;
        // The path counts only when it names the same file here: else it is "unavailable" (empty, spec §6), so
        // no `exePath` or `processName` selector can match an impostor (catalog C3).
        // Control characters are escaped here, at the source, so a file name cannot forge a log line, a summary
        // or an event wherever the claims go (spec §11.4, catalog F2); a real exePath never holds one.
        let full_path = exe
            .as_ref()
            .and_then(|e| e.path().ok().filter(|p| e.is_at(p)))
            .map(|p| escape_control(&p.to_string_lossy()));
        let cmdline = match proc_dir.cmdline() {
            Ok((raw, _)) if raw.is_empty() => UNDEFINED.to_owned(),
            Ok((raw, truncated)) => format_cmdline(&raw, truncated),
            Err(_) => UNDEFINED.to_owned(),
        };
        // The process may have called execve while we read: the path and command line would then describe the
        // new program. Look once more.
        if let Some(first) = &exe {
            let again = proc_dir.exe().map_err(|e| stale(vanished(&e)))?;
            if !again.same_file(first) {
                return Err(stale(StaleReason::ExecutableChanged));
            }
        }

        let now = Instant::now();
        let user_name = self.nss.user_name(record.uid, now);
        let user_groups = self.nss.groups(&user_name, record.gid, now);
        let full_path = full_path.unwrap_or_default();
        let process_name = Path::new(&full_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Claims {
            user_id: u64::from(record.uid),
            user_name,
            user_groups,
            process_id: pid,
            process_name,
            process_full_path: full_path,
            process_cmd_line: cmdline,
            run_as_elevated: record.uid == 0,
            client_ip: peer.ip().to_string(),
            client_port: peer.port(),
        })
    }

    /// The live executable, checked against the one recorded at `connect()` (catalog C3).
    fn verified_exe(
        &self,
        proc_dir: &ProcDir,
        record: &ConnRecord,
    ) -> Result<Option<Exe>, StaleReason> {
        let live = proc_dir.exe();
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

/// A failed `/proc` read: the process is gone (or a zombie without an executable), or it cannot be verified.
fn vanished(e: &io::Error) -> StaleReason {
    match e.raw_os_error() {
        Some(code) if code == nix::Error::ENOENT as i32 || code == nix::Error::ESRCH as i32 => {
            StaleReason::Exited
        }
        _ => StaleReason::Unverifiable,
    }
}
