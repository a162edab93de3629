//! What the demo and the end-to-end suite need from the machine, checked up front, and, when something is
//! missing, exactly what and how to get it.
//!
//! The eBPF check is a real one: a trial redirector is attached to a child cgroup created for the purpose and
//! detached again, so "cgroup-bpf works here" is measured, not guessed from a kernel config. This module must
//! never attach anything outside a cgroup it created.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use gpa::redirect::{
    KernelFeature, RedirectConfig, RedirectError, RedirectFailMode, Redirector,
    discover_cgroup2_root,
};

use crate::cgroup::ChildCgroup;

/// Kernel BTF, where the redirector finds the kernel fields its record reads.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Something the machine lacks, with the way to get it in its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Missing {
    #[error(
        "root is required (eBPF, cgroups, network namespaces, workloads under other users). \
         Build, then run as root: `cargo build --release -p msp-demo && sudo target/release/msp-demo`"
    )]
    NotRoot,
    #[error(
        "no cgroup v2 hierarchy (looked for {}/cgroup.procs). Mount one: \
         `mount -t cgroup2 none /sys/fs/cgroup/unified` (hybrid) or boot with \
         `systemd.unified_cgroup_hierarchy=1`", looked_at.display()
    )]
    Cgroup2 { looked_at: PathBuf },
    #[error(
        "no kernel BTF at {KERNEL_BTF}. Use a kernel built with CONFIG_DEBUG_INFO_BTF=y (the default on \
         Ubuntu 20.10+, Debian 11+, Fedora 31+, RHEL 8.2+)"
    )]
    KernelBtf,
    #[error(
        "the kernel lacks {feature}. Use Linux 5.7 or later built with CONFIG_CGROUP_BPF=y and \
         CONFIG_BPF_SYSCALL=y (every mainstream distribution kernel is)"
    )]
    Kernel { feature: KernelFeature },
    #[error("the eBPF redirector cannot attach to a test cgroup here: {detail}")]
    Redirector { detail: String },
    #[error("`{program}` is not installed. Install it: `apt-get install {package}`")]
    Tool {
        program: &'static str,
        package: &'static str,
    },
}

/// Root, a cgroup2 hierarchy, kernel BTF, and a redirector that attaches (the demo's needs).
pub fn check_demo() -> Result<(), Missing> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Missing::NotRoot);
    }
    let root = discover_cgroup2_root();
    if !root.join("cgroup.procs").exists() {
        return Err(Missing::Cgroup2 { looked_at: root });
    }
    if !Path::new(KERNEL_BTF).exists() {
        return Err(Missing::KernelBtf);
    }
    trial_attach()
}

/// [`check_demo`] plus iproute2 (the suite's network namespaces).
pub fn check_e2e() -> Result<(), Missing> {
    check_demo()?;
    let ip = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ip {
        return Err(Missing::Tool {
            program: "ip",
            package: "iproute2",
        });
    }
    Ok(())
}

/// Whether a root end-to-end test can run here. Under `CI=true` a missing capability fails the test
/// (panics with the reason); elsewhere the test is skipped with the reason printed.
pub fn root_ready(test: &str) -> bool {
    match check_e2e() {
        Ok(()) => true,
        Err(missing) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: CI=true but {missing}")
        }
        Err(missing) => {
            eprintln!("skipping {test}: {missing}");
            false
        }
    }
}

/// Attaches a redirector to a fresh child cgroup and detaches it again.
fn trial_attach() -> Result<(), Missing> {
    let cgroup = ChildCgroup::create("check").map_err(|e| Missing::Redirector {
        detail: e.to_string(),
    })?;
    let cfg = RedirectConfig {
        cgroup_root: Some(cgroup.path().to_path_buf()),
        // Never bound: the trial installs no policy, so nothing is ever sent there.
        listener: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
        object_path: None,
        fail_mode: RedirectFailMode::Open,
    };
    let redirector = Redirector::start(cfg).map_err(|e| match e {
        RedirectError::KernelUnsupported {
            missing: KernelFeature::KernelBtf,
            ..
        } => Missing::KernelBtf,
        RedirectError::KernelUnsupported { missing, .. } => Missing::Kernel { feature: missing },
        RedirectError::PermissionDenied { .. } => Missing::NotRoot,
        other => Missing::Redirector {
            detail: error_chain(&other),
        },
    })?;
    redirector.stop().map_err(|e| Missing::Redirector {
        detail: error_chain(&e),
    })
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
