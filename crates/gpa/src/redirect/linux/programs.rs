//! The five programs of the object, where each attaches, and in which order (consumers of records before their
//! producers, so no record is ever written that nothing would publish). Links only: never a legacy attachment
//! that would replace another program on the cgroup.
use std::io;
use std::os::fd::BorrowedFd;

use aya::Ebpf;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};

use crate::redirect::{KernelFeature, RedirectError};

/// How a program hooks into the cgroup.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hook {
    /// `cgroup/connect4` and friends; the section name tells aya the attach type.
    SockAddr,
    SockOps,
}

#[derive(Debug)]
pub(super) struct ProgramSpec {
    /// The function name in `redirect.bpf.c`.
    pub(super) name: &'static str,
    pub(super) hook: Hook,
    /// The attach type as `bpftool cgroup show` names it.
    pub(super) attach_type: &'static str,
}

/// Attach order. Detach runs in reverse, so connects stop being redirected before anything else goes away.
pub(super) const PROGRAMS: [ProgramSpec; 5] = [
    ProgramSpec {
        name: "gpa_sockops",
        hook: Hook::SockOps,
        attach_type: "sock_ops",
    },
    ProgramSpec {
        name: "gpa_peername4",
        hook: Hook::SockAddr,
        attach_type: "cgroup_inet4_getpeername",
    },
    ProgramSpec {
        name: "gpa_peername6",
        hook: Hook::SockAddr,
        attach_type: "cgroup_inet6_getpeername",
    },
    ProgramSpec {
        name: "gpa_connect6",
        hook: Hook::SockAddr,
        attach_type: "cgroup_inet6_connect",
    },
    ProgramSpec {
        name: "gpa_connect4",
        hook: Hook::SockAddr,
        attach_type: "cgroup_inet4_connect",
    },
];

/// Verifies and loads one program, attaches it to the cgroup as a BPF link, and returns the link.
pub(super) fn load_and_attach(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    cgroup: BorrowedFd<'_>,
) -> Result<FdLink, RedirectError> {
    let program = ebpf
        .program_mut(spec.name)
        .ok_or(RedirectError::ProgramMissing { program: spec.name })?;
    let failed = |operation: &'static str| {
        move |e: aya::programs::ProgramError| kernel_error(spec.name, operation, Box::new(e))
    };
    let link: Result<FdLink, _> = match spec.hook {
        Hook::SockAddr => {
            let program: &mut CgroupSockAddr = program
                .try_into()
                .map_err(|_| RedirectError::ProgramMissing { program: spec.name })?;
            program.load().map_err(failed("load"))?;
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(failed("attach"))?;
            let link = program.take_link(id).map_err(failed("take link"))?;
            FdLink::try_from(link)
        }
        Hook::SockOps => {
            let program: &mut SockOps = program
                .try_into()
                .map_err(|_| RedirectError::ProgramMissing { program: spec.name })?;
            program.load().map_err(failed("load"))?;
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(failed("attach"))?;
            let link = program.take_link(id).map_err(failed("take link"))?;
            FdLink::try_from(link)
        }
    };
    // Only legacy (pre-5.7) attachments fail to convert: they can neither coexist as links nor be pinned.
    link.map_err(|e| RedirectError::KernelUnsupported {
        missing: KernelFeature::CgroupBpfLinks,
        source: Some(Box::new(e)),
    })
}

/// Names the diagnosis of a failed kernel call from its errno: EPERM is a missing privilege; EINVAL or
/// EOPNOTSUPP on attach is a kernel without cgroup-bpf for this hook; anything else stays a program failure.
pub(super) fn kernel_error(
    program: &'static str,
    operation: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> RedirectError {
    match errno(source.as_ref()) {
        Some(libc_errno::EPERM) => RedirectError::PermissionDenied { operation, source },
        Some(libc_errno::EINVAL | libc_errno::EOPNOTSUPP) if operation == "attach" => {
            RedirectError::KernelUnsupported {
                missing: KernelFeature::CgroupBpf,
                source: Some(source),
            }
        }
        _ => RedirectError::Program {
            program,
            operation,
            source,
        },
    }
}

/// The errno of the first `io::Error` in an error's source chain.
pub(super) fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        current = e.source();
    }
    None
}

/// The errno values this module distinguishes.
pub(super) mod libc_errno {
    pub(crate) const EPERM: i32 = nix::Error::EPERM as i32;
    pub(crate) const EINVAL: i32 = nix::Error::EINVAL as i32;
    pub(crate) const EOPNOTSUPP: i32 = nix::Error::EOPNOTSUPP as i32;
}
