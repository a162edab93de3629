//! A child cgroup of the cgroup2 root for one test: created on `new`, emptied (its processes are this test's
//! probes, killed by pid) and removed on drop, also when the test fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::env::unique;

/// How long drop waits for the cgroup's processes to go before giving up on removing it.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes empty cgroups named `{prefix}<tag>-<pid>-<n>` whose creating test process is gone: left behind when a
/// test binary was killed before its drop guards ran. Once per process; a cgroup with processes in it cannot be
/// removed and stays, as does anything whose pid is alive.
fn sweep_orphaned_cgroups(prefix: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(gpa::redirect::discover_cgroup2_root()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let mut parts = rest.rsplit('-');
            let (Some(_), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_dir(entry.path()).is_ok()
            {
                eprintln!(
                    "removed a test cgroup left by a killed run: {}",
                    entry.path().display()
                );
            }
        }
    });
}

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        sweep_orphaned_cgroups("msp-sec-");
        let path = gpa::redirect::discover_cgroup2_root().join(unique(tag));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// Pids currently inside.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            // Only this test's probes are ever placed here.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
