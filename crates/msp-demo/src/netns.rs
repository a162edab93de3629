//! Network namespaces the end-to-end suite creates (`ip netns add`), veth pairs between them, and threads that
//! run async code inside one.
//!
//! Safety (DESIGN.md): the real metadata addresses exist only inside namespaces created here, joined only to
//! each other, so no packet can leave the machine. Every namespace is deleted on drop. This module must never
//! configure an address or route in the namespace the harness itself runs in.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::sync::oneshot;

use crate::cgroup::unique;
use crate::error::HarnessError;

/// Where `ip netns add` puts its bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `ip <args>` and returns its standard output.
pub fn ip(args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/<name>`). Threads it creates
/// afterwards start there too. Needs CAP_SYS_ADMIN.
pub fn enter(path: &Path) -> Result<(), HarnessError> {
    let file = std::fs::File::open(path)
        .map_err(|e| HarnessError::io("open network namespace", path, e))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        HarnessError::io(
            "enter network namespace",
            path,
            std::io::Error::from_raw_os_error(e as i32),
        )
    })
}

/// An owned network namespace with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `msp-<tag>-<pid>-<n>` and brings its `lo` up.
    pub fn create(tag: &str) -> Result<NetNs, HarnessError> {
        let name = unique(tag);
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for [`enter`] and `--netns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Creates a veth pair: `self_if` here, `peer_if` in `peer`, both up.
    pub fn veth(&self, self_if: &str, peer: &NetNs, peer_if: &str) -> Result<(), HarnessError> {
        self.ip(&[
            "link", "add", self_if, "type", "veth", "peer", "name", peer_if, "netns", &peer.name,
        ])?;
        self.ip(&["link", "set", self_if, "up"])?;
        peer.ip(&["link", "set", peer_if, "up"])?;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// A thread inside a network namespace running a single-threaded tokio runtime: every socket a future run
/// on it opens belongs to that namespace. Stopped (its tasks dropped) on drop.
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread in the namespace at `path`.
    pub fn start(path: &Path) -> Result<NsRuntime, HarnessError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("netns-runtime".into())
            .spawn(move || {
                let started = enter(&path).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| HarnessError::io("start a runtime in", &path, e))
                });
                match started {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async move {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| HarnessError::Spawn {
                program: "netns runtime thread".into(),
                source,
            })?;
        let handle = ready_rx.recv().map_err(|_| HarnessError::Task {
            what: "the network-namespace runtime thread",
            message: "exited before starting".into(),
        })??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` inside the namespace and returns its output.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, HarnessError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| HarnessError::Task {
                what: "a task in a network namespace",
                message: e.to_string(),
            })
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
