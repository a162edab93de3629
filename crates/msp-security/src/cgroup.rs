//! A child cgroup of the cgroup2 root for one test: created on `new`, emptied (its processes are this test's
//! probes, killed by pid) and removed on drop, also when the test fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::env::unique;

/// How long drop waits for the cgroup's processes to go before giving up on removing it.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
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
