//! Caller identity (spec §6): turns the kernel's attribution record of a connection into [`Claims`].
//!
//! uid, gid and pid come from the record only, never from a later lookup. Names come from NSS (cached at most
//! 60 s), the executable and command line from `/proc`, read only after the live process is shown to be the
//! same instance that called `connect()`: same start time and same executable. This module must never attribute
//! a connection to a process other than the one the kernel recorded: when that cannot be shown, the answer is
//! [`IdentityError::Stale`] (403 `IDENTITY_STALE`).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![deny(clippy::cast_possible_truncation)]
mod cache;
mod cmdline;

#[cfg(target_os = "linux")]
mod linux;

pub use cmdline::{CMDLINE_MAX_BYTES, CMDLINE_MAX_WORDS, format_cmdline};
#[cfg(target_os = "linux")]
pub(crate) use linux::INSTANCE_CACHE_MAX_ENTRIES;
#[cfg(target_os = "linux")]
pub use linux::IdentityResolver;

use std::fmt;

use msp_core::Reason;

/// Why a connection's process can no longer be shown to be the one that connected (spec §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The process exited (or is a zombie) before the agent looked.
    Exited,
    /// A process with the same pid but another start time: the pid was reused.
    PidReused {
        recorded_ticks: u64,
        live_ticks: u64,
    },
    /// The process now runs another executable than at `connect()` (it called `execve`).
    ExecutableChanged,
    /// `/proc` did not answer in a way that lets the agent compare.
    Unverifiable,
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::Exited => f.write_str("the process exited"),
            StaleReason::PidReused {
                recorded_ticks,
                live_ticks,
            } => {
                write!(
                    f,
                    "the pid was reused (start time {recorded_ticks} at connect, {live_ticks} now)"
                )
            }
            StaleReason::ExecutableChanged => f.write_str("the process executed another program"),
            StaleReason::Unverifiable => f.write_str("the process could not be verified"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("identity of pid {pid} is stale: {reason}")]
    Stale { pid: u32, reason: StaleReason },
}

impl IdentityError {
    /// The reason code the proxy answers with (spec §8.2 step 8).
    pub fn reason(&self) -> Reason {
        match self {
            IdentityError::Stale { .. } => Reason::IdentityStale,
        }
    }
}

/// Field 22 (`starttime`, clock ticks since boot) of a `/proc/<pid>/stat` text. The command name in field 2 may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn stat_start_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // after_comm starts with field 3 (state); field 22 is the 20th from there.
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat =
            "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56";
        assert_eq!(stat_start_ticks(stat), Some(987_654));
        assert_eq!(stat_start_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_start_ticks("no parenthesis"), None);
    }

    #[test]
    fn stale_maps_to_identity_stale_403() {
        let e = IdentityError::Stale {
            pid: 7,
            reason: StaleReason::Exited,
        };
        assert_eq!(e.reason(), Reason::IdentityStale);
        assert_eq!(e.reason().status(), 403);
    }
}
