//! The redirector's one error type. Each variant names the diagnosis; the kernel's answer stays as the source,
//! never flattened into a string.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The underlying error of a failed kernel or library call, kept as the `source()` of a [`RedirectError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A kernel facility the redirector needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFeature {
    /// cgroup-bpf (`CONFIG_CGROUP_BPF`) with cgroup socket-address programs.
    CgroupBpf,
    /// BPF links for cgroups (kernel ≥ 5.7), needed to coexist with other programs and to pin.
    CgroupBpfLinks,
    /// Kernel BTF at `/sys/kernel/btf/vmlinux` (`CONFIG_DEBUG_INFO_BTF`): where the kernel keeps the fields the record
    /// reads.
    KernelBtf,
    /// The bpf filesystem (`/sys/fs/bpf`), needed by `redirectFailMode: closed`.
    Bpffs,
}

impl fmt::Display for KernelFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelFeature::CgroupBpf => "cgroup-bpf support (CONFIG_CGROUP_BPF)",
            KernelFeature::CgroupBpfLinks => "BPF links for cgroups (Linux 5.7 or later)",
            KernelFeature::KernelBtf => {
                "kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)"
            }
            KernelFeature::Bpffs => "the bpf filesystem",
        })
    }
}

/// Why an `ebpfFileFullPath` object is refused (spec §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectProblem {
    NotARegularFile,
    NotOwnedByRoot { uid: u32 },
    WritableByGroupOrOthers { mode: u32 },
}

impl fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectProblem::NotARegularFile => f.write_str("not a regular file"),
            ObjectProblem::NotOwnedByRoot { uid } => write!(f, "owned by uid {uid}, not root"),
            ObjectProblem::WritableByGroupOrOthers { mode } => {
                write!(f, "mode {mode:o} is group/other writable")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    #[error(
        "{operation}: permission denied; the redirector needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)"
    )]
    PermissionDenied {
        operation: &'static str,
        #[source]
        source: Cause,
    },
    #[error("the kernel lacks {missing}")]
    KernelUnsupported {
        missing: KernelFeature,
        #[source]
        source: Option<Cause>,
    },
    #[error("cgroup {path} cannot be opened")]
    CgroupOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("eBPF object {path} is refused: {problem}")]
    UnsafeObject {
        path: PathBuf,
        problem: ObjectProblem,
    },
    #[error("eBPF object {path} cannot be read")]
    ObjectRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's BTF does not show a field the redirector reads")]
    KernelFields {
        #[source]
        source: Cause,
    },
    #[error("the eBPF object does not load")]
    Load {
        #[source]
        source: Cause,
    },
    #[error("program {program} is missing from the eBPF object")]
    ProgramMissing { program: &'static str },
    #[error("program {program}: {operation} failed")]
    Program {
        program: &'static str,
        operation: &'static str,
        #[source]
        source: Cause,
    },
    #[error("map {map} is missing or has an unexpected layout")]
    MapLayout {
        map: &'static str,
        #[source]
        source: Option<Cause>,
    },
    #[error("map {map}: {operation} failed")]
    Map {
        map: &'static str,
        operation: &'static str,
        #[source]
        source: Cause,
    },
    #[error("bpffs {path}: {operation} failed")]
    Bpffs {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Cause,
    },
    #[error("listener {addr} is not an IPv4 loopback address (spec §1.2)")]
    ListenerNotLoopback { addr: SocketAddr },
    #[error("endpoint {endpoint} is the listener itself or not a unicast address")]
    BadEndpoint { endpoint: SocketAddr },
    #[error("{count} endpoints exceed the policy map's capacity of {max}")]
    TooManyEndpoints { count: usize, max: u32 },
    #[error("the agent's own process entry cannot be read")]
    OwnProcess {
        #[source]
        source: io::Error,
    },
    #[error("clock ticks per second are {found}, the eBPF object assumes {expected}")]
    ClockTicks { found: i64, expected: u64 },
}
