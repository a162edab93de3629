//! A child cgroup of the cgroup2 root that the demo or a test owns: created with a unique name, workloads
//! moved into it by pid, and removed on drop (also on panic or Ctrl-C unwinding).
//!
//! Only processes the harness started are ever placed in it, so on drop whatever is still inside is killed by
//! pid before the directory is removed. This module must never touch a cgroup it did not create.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gpa::redirect::discover_cgroup2_root;

use crate::error::HarnessError;

/// How long drop waits for killed processes to leave before giving up on removing the directory.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `msp-<tag>-<pid>-<n>` (cgroups, namespaces).
pub fn unique(tag: &str) -> String {
    format!(
        "msp-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An owned child cgroup; removed on drop.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    /// Creates `<cgroup2 root>/msp-<tag>-<pid>-<n>`.
    pub fn create(tag: &str) -> Result<ChildCgroup, HarnessError> {
        let path = discover_cgroup2_root().join(unique(tag));
        std::fs::create_dir(&path).map_err(|e| HarnessError::io("create cgroup", &path, e))?;
        Ok(ChildCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the process `pid` into this cgroup.
    pub fn add(&self, pid: u32) -> Result<(), HarnessError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| HarnessError::io("move a process into", &procs, e))
    }

    /// The pids inside now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            for pid in self.pids() {
                // Only the harness's own workloads are ever placed here.
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("cannot remove cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
