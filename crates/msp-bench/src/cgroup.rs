//! The bench's own child cgroup: the agent's redirector attaches to it, and only the bench's through-the-agent
//! workers are placed in it. Removed on drop (normal exit and panic) and by the signal thread.

use std::path::{Path, PathBuf};

use crate::cleanup::{Cleanup, remove_cgroup};

/// A child cgroup of the cgroup2 root, named after the bench's pid.
#[derive(Debug)]
pub struct BenchCgroup {
    path: PathBuf,
    cleanup: Cleanup,
}

impl BenchCgroup {
    pub fn create(cleanup: &Cleanup) -> std::io::Result<BenchCgroup> {
        let root = gpa::redirect::discover_cgroup2_root();
        let path = root.join(format!("msp-bench-{}", std::process::id()));
        std::fs::create_dir(&path)?;
        cleanup.add_cgroup(path.clone());
        Ok(BenchCgroup {
            path,
            cleanup: cleanup.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves `pid` (a worker the bench started) into the cgroup.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
        self.cleanup.remove_cgroup(&self.path);
    }
}
