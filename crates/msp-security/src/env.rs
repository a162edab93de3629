//! Names unique to one test, and the root gate: root tests skip with a reason outside CI and fail under
//! `CI=true` (DESIGN.md, "Root tests").

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `msp-sec-<tag>-<pid>-<n>`.
pub fn unique(tag: &str) -> String {
    format!(
        "msp-sec-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this run is CI (`CI=true`), where a missing capability is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether root, eBPF (kernel BTF), cgroup2 and network namespaces are available. Outside CI a missing piece
/// skips the test with a printed reason; under `CI=true` it panics.
pub fn root_ready(test: &str) -> bool {
    let problem = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("no kernel BTF")
    } else if !gpa::redirect::discover_cgroup2_root()
        .join("cgroup.procs")
        .exists()
    {
        Some("no cgroup2 hierarchy")
    } else if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        Some("no iproute2")
    } else {
        None
    };
    match problem {
        None => true,
        Some(why) if ci() => panic!("{test}: CI=true but {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}
