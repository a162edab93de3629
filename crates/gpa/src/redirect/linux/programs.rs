//! The programs of the object: the four cgroup hooks, where each attaches and in which order (consumers of
//! records before their producers), and `gpa_take`, which attaches nowhere and runs only when the agent asks.
//! Links only: never a legacy attachment that would replace another program on the cgroup.
use std::io;
use std::os::fd::BorrowedFd;

use aya::Ebpf;
use aya::programs::SchedClassifier;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::programs::{ProgramError, TestRun, TestRunOptions};

use crate::redirect::abi::TAKE_REQUEST_SIZE;
use crate::redirect::{KernelFeature, RedirectError};

#[derive(Debug)]
pub(super) struct ProgramSpec {
    /// The function name in `redirect.bpf.c`.
    pub(super) name: &'static str,
    /// The attach type as `bpftool cgroup show` names it.
    pub(super) attach_type: &'static str,
}

/// Attach order. Detach runs in reverse, so connects stop being redirected before anything else goes away.
pub(super) const PROGRAMS: [ProgramSpec; 4] = [
    ProgramSpec {
        name: "gpa_peername4",
        attach_type: "cgroup_inet4_getpeername",
    },
    ProgramSpec {
        name: "gpa_peername6",
        attach_type: "cgroup_inet6_getpeername",
    },
    ProgramSpec {
        name: "gpa_connect6",
        attach_type: "cgroup_inet6_connect",
    },
    ProgramSpec {
        name: "gpa_connect4",
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
        move |e: ProgramError| kernel_error(spec.name, operation, Box::new(e))
    };
    let program: &mut CgroupSockAddr = program
        .try_into()
        .map_err(|_| RedirectError::ProgramMissing { program: spec.name })?;
    program.load().map_err(failed("load"))?;
    let id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(failed("attach"))?;
    let link = program.take_link(id).map_err(failed("take link"))?;
    let link = FdLink::try_from(link);
    // Only legacy (pre-5.7) attachments fail to convert: they can neither coexist as links nor be pinned.
    link.map_err(|e| RedirectError::KernelUnsupported {
        missing: KernelFeature::CgroupBpfLinks,
        source: Some(Box::new(e)),
    })
}

/// The function name of the program the agent runs for each accepted connection.
pub(super) const TAKE_PROGRAM: &str = "gpa_take";

/// `gpa_take` as `ebpf` holds it, verified and loaded (attached nowhere).
pub(super) fn load_take(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, RedirectError> {
    let missing = || RedirectError::ProgramMissing {
        program: TAKE_PROGRAM,
    };
    let program: &mut SchedClassifier = ebpf
        .program_mut(TAKE_PROGRAM)
        .ok_or_else(missing)?
        .try_into()
        .map_err(|_| missing())?;
    program
        .load()
        .map_err(|e| kernel_error(TAKE_PROGRAM, "load", Box::new(e)))?;
    Ok(program)
}

/// Runs `gpa_take` once on `buffer` (in and out); returns its return value.
pub(super) fn run_take(
    program: &SchedClassifier,
    buffer: &mut [u8; TAKE_REQUEST_SIZE],
) -> Result<u32, ProgramError> {
    let input = *buffer;
    let result = program.test_run(TestRunOptions {
        data_in: Some(&input),
        data_out: Some(buffer),
        ..TestRunOptions::new()
    })?;
    Ok(result.return_value)
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
