//! Leaving the machine as the bench found it: every process the bench starts and the cgroup it creates are
//! registered here, and undone by the owners' drop guards (normal exit and panic) or by the signal thread
//! (Ctrl-C, SIGTERM), whichever comes first.
//!
//! The signal thread waits for SIGINT/SIGTERM, which the bench blocks in every other thread (children get a
//! clean mask: the standard library resets it before `exec`). This module must never signal a process the
//! bench did not start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long removing a cgroup is retried while its last processes exit.
const RMDIR_PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct Registered {
    pids: Vec<u32>,
    cgroups: Vec<PathBuf>,
}

/// The registry shared by the guards and the signal thread.
#[derive(Debug, Clone, Default)]
pub struct Cleanup {
    inner: Arc<Mutex<Registered>>,
}

impl Cleanup {
    fn with<T>(&self, f: impl FnOnce(&mut Registered) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn add_pid(&self, pid: u32) {
        self.with(|r| r.pids.push(pid));
    }

    pub fn remove_pid(&self, pid: u32) {
        self.with(|r| r.pids.retain(|&p| p != pid));
    }

    pub fn add_cgroup(&self, path: PathBuf) {
        self.with(|r| r.cgroups.push(path));
    }

    pub fn remove_cgroup(&self, path: &PathBuf) {
        self.with(|r| r.cgroups.retain(|p| p != path));
    }

    /// Blocks SIGINT and SIGTERM in this thread (call first in `main`, so every later thread inherits it) and
    /// starts the thread that undoes everything and exits when one arrives. The processes the bench starts inherit
    /// the mask through `exec`: its own children unblock them with [`unblock_stop_signals`], and `gpa` and
    /// `msp-host` unblock them themselves, so that [`stop_pid`]'s SIGTERM stops each one gracefully.
    pub fn install_signal_thread(&self) -> Result<(), nix::Error> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let signal = set.wait().unwrap_or(Signal::SIGTERM);
                eprintln!("\nmsp-bench: {signal}, cleaning up");
                me.undo_all();
                #[allow(clippy::disallowed_methods)]
                // The main thread is blocked in a round; everything it owns was just undone.
                std::process::exit(130);
            })
            .map(|_| ())
            .map_err(|_| nix::Error::EAGAIN)
    }

    /// Stops every registered process, then removes every registered cgroup.
    pub fn undo_all(&self) {
        let (pids, cgroups) =
            self.with(|r| (std::mem::take(&mut r.pids), std::mem::take(&mut r.cgroups)));
        for &pid in &pids {
            stop_pid(pid);
        }
        for cgroup in &cgroups {
            remove_cgroup(cgroup);
        }
    }
}

/// Unblocks SIGINT and SIGTERM in the calling thread: first thing in the bench's own child processes (`worker`,
/// `relay`), which inherit the blocked mask of [`Cleanup::install_signal_thread`]. Without it each of them ignored
/// [`stop_pid`]'s SIGTERM and was killed only after [`TERM_GRACE`].
pub fn unblock_stop_signals() -> Result<(), nix::Error> {
    let stop: SigSet = [Signal::SIGINT, Signal::SIGTERM].into_iter().collect();
    stop.thread_unblock()
}

/// SIGTERM, then SIGKILL after [`TERM_GRACE`] if the process is still there (it may be a zombie of ours that
/// its owner reaps later; signalling a zombie is harmless).
pub fn stop_pid(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if !alive(raw) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Kills what is left in `path` (only the bench's own workers can be there) and removes it.
pub fn remove_cgroup(path: &PathBuf) {
    let deadline = Instant::now() + RMDIR_PATIENCE;
    loop {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("msp-bench: cannot remove cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
