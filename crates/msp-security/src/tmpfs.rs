//! A small tmpfs mounted on a directory of a test (to make a state directory full or read-only), unmounted on
//! drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    pub path: PathBuf,
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `1m`) with mode 0700 on `path` (created if missing).
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let opts = format!("size={size},mode=0700");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &opts,
            "tmpfs",
            &path.display().to_string(),
        ]);
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub fn read_only(&self) {
        mount(&["-o", "remount,ro", &self.path.display().to_string()]);
    }

    pub fn read_write(&self) {
        mount(&["-o", "remount,rw", &self.path.display().to_string()]);
    }

    /// Fills the filesystem until a write fails with ENOSPC.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
                Err(e) => panic!("fill: {e}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", &self.path.display().to_string()])
            .output();
    }
}
