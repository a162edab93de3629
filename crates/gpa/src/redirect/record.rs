//! The attribution record of one redirected connection (spec §7.3), decoded from the kernel's struct, and the
//! redirector's counters. Plain data: nothing here may read the kernel or `/proc`.
use std::net::SocketAddr;

/// Who made a redirected `connect()`, as the kernel saw it at that moment (spec §6, §7.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRecord {
    /// Process id (TGID).
    pub tgid: u32,
    /// Thread id of the calling thread.
    pub tid: u32,
    /// Real uid at `connect()`.
    pub uid: u32,
    /// Real gid at `connect()`.
    pub gid: u32,
    /// The calling thread's `comm` (up to 15 bytes, lossy UTF-8).
    pub comm: String,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Socket cookie of the client socket.
    pub socket_cookie: u64,
    /// The destination the client asked for.
    pub original_dst: SocketAddr,
    /// The client's own address: the accepted connection's peer the record was taken for.
    pub client: SocketAddr,
    /// `CLOCK_MONOTONIC` nanoseconds at `connect()`.
    pub connect_ktime_ns: u64,
    /// What tells this process instance apart from a later one with the same pid.
    pub instance: ProcessInstance,
}

/// The process-instance value of spec §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInstance {
    /// The thread-group leader's `start_boottime` in nanoseconds; `/proc/<pid>/stat` field 22 shows it in ticks.
    pub start_boottime_ns: u64,
    /// The executable at `connect()`; `None` for a task without an `mm` (a kernel thread). A user task whose
    /// executable the kernel could not read carries an identity no file has, so its caller reads as stale.
    pub exe: Option<ExeId>,
}

/// An executable file as the kernel identifies it: device and inode of `mm->exe_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeId {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
}

/// The redirector's kernel-side counters, summed over CPUs (spec §7.3: overflows must be visible).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects to a policy endpoint (redirected or skipped); other connects are not counted (hot path).
    pub connects_seen: u64,
    /// Connects rewritten to the listener.
    pub redirected: u64,
    /// Connects to an endpoint made by the agent itself, left alone.
    pub skipped: u64,
    /// Redirected connects with no socket storage for their record (the proxy answers 421).
    pub storage_failed: u64,
    /// Records handed to the proxy (each once).
    pub taken: u64,
    /// `getpeername()` answers rewritten to the original destination.
    pub peer_rewritten: u64,
}
