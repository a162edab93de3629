//! The redirector (spec §7): loads the eBPF object, attaches it to one cgroup, maintains the policy and skip maps,
//! and hands the proxy the kernel's attribution record of each redirected connection.
//!
//! Everything that touches eBPF lives here (STYLE rule 8), in [`linux`](self) behind the module boundary; the
//! types in this file are plain data. This module must never attach to a cgroup the configuration does not name
//! (or, unset, the discovered cgroup2 root), never report a failed map update as success, and never hand out a
//! record for any connection but the one it was written for.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![deny(clippy::cast_possible_truncation)]
mod config;
mod error;
mod record;

#[cfg(target_os = "linux")]
pub mod abi;
#[cfg(target_os = "linux")]
mod linux;

pub use config::{DEFAULT_LISTENER, RedirectConfig, RedirectFailMode, fail_mode_name};
pub use error::{Cause, KernelFeature, ObjectProblem, RedirectError};
#[cfg(target_os = "linux")]
pub use linux::{Redirector, discover_cgroup2_root, share_one_malloc_arena};
pub use record::{ConnRecord, Counters, ExeId, ProcessInstance};

use std::path::PathBuf;
use std::time::Duration;

/// The thread that frees aya's parse of the kernel BTF once a start is over (memory figures taken before it
/// ends still count that parse).
pub const BTF_FREE_THREAD: &str = "gpa-btf-free";
/// How long that thread waits before freeing: longer than the rest of a start (program loads, attachments,
/// listener, key restore, proxy start; ~10 ms here). Freeing ~15 MB of small allocations and trimming the heap
/// beside them slowed a cold start by 6–9 ms on two cores (BENCHMARKS.md, history item 31).
pub const BTF_FREE_DELAY: Duration = Duration::from_millis(100);

/// Where the pins of a `closed` redirector live: `<PIN_ROOT>/<cgroup id>/` (spec §7.5).
pub const PIN_ROOT: &str = "/sys/fs/bpf/gpa";
/// Where bpffs is mounted when it is not mounted yet (spec §7.5).
pub const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";
/// The cgroup used when `cgroupRoot` is unset and `/proc/self/mountinfo` names no cgroup2 mount (spec §7.1).
pub const FALLBACK_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How a running redirector came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This process loaded and attached the programs.
    Fresh,
    /// This process adopted programs a previous agent pinned (spec §7.5).
    Adopted,
}

/// One program attached by the redirector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Program name in the object (`gpa_connect4`, …), as `bpftool` shows it.
    pub name: &'static str,
    /// Kernel attach point (`cgroup_inet4_connect`, …).
    pub attach_type: &'static str,
    /// Kernel link id (`bpftool link show id <id>`).
    pub link_id: u32,
    /// Kernel program id.
    pub program_id: u32,
}

/// What the redirector attached where, for `ebpfProgramStatus` and `gpa doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectStatus {
    /// The cgroup the hooks are attached to.
    pub cgroup: PathBuf,
    /// Its cgroup v2 id (the directory's inode number).
    pub cgroup_id: u64,
    pub fail_mode: RedirectFailMode,
    pub origin: Origin,
    /// The pin directory (`closed` only).
    pub pin_dir: Option<PathBuf>,
    pub programs: Vec<AttachedProgram>,
}

impl RedirectStatus {
    /// The `ebpfProgramStatus` message once started: `Started Redirector with eBPF maps - <uptime ms>` (spec §9.2).
    pub fn message(uptime: Duration) -> String {
        format!("Started Redirector with eBPF maps - {}", uptime.as_millis())
    }

    /// One line naming the cgroup, mode, origin and every attached program with its link id.
    pub fn describe(&self) -> String {
        let programs: Vec<String> = self
            .programs
            .iter()
            .map(|p| {
                format!(
                    "{}@{} (link {}, prog {})",
                    p.name, p.attach_type, p.link_id, p.program_id
                )
            })
            .collect();
        let pins = self
            .pin_dir
            .as_ref()
            .map(|d| format!(", pinned in {}", d.display()))
            .unwrap_or_default();
        format!(
            "attached to cgroup {} (id {}), redirectFailMode {}, {}{}: {}",
            self.cgroup.display(),
            self.cgroup_id,
            fail_mode_name(self.fail_mode),
            match self.origin {
                Origin::Fresh => "loaded by this agent",
                Origin::Adopted => "adopted from pins",
            },
            pins,
            programs.join(", ")
        )
    }
}
