//! What the bench runs against: `msp-host` (the `--dev` profile's loopback addresses and VM, on ports picked
//! for this run) and `gpa run`, each its own process started from the built binaries, with the redirector on
//! the bench's child cgroup; plus a loopback upstream that the host forwards `/metadata/bench/` to (the 64 KiB
//! response).
//!
//! The host serves two VMs: `dev` (`127.0.0.0/8`, IMDS in enforce) sees the agent's signed requests, `direct`
//! (`127.0.2.0/28`, IMDS disabled) sees the direct workers, which connect from [`DIRECT_SOURCES`] in turn, and the
//! bare relay, which connects from the first of them. Every address is loopback. This module must never leave a
//! process or the cgroup behind: both are registered with [`Cleanup`] and stopped by drop guards.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msp_host::AdminClient;
use serde_json::json;

use crate::cgroup::BenchCgroup;
use crate::cleanup::{Cleanup, stop_pid};
use crate::upstream::Upstream;
use crate::worker::Sources;

/// The `dev` VM's block, as the host's config names it: every loopback address not in [`DIRECT_NET`].
pub const DEV_NET: &str = "127.0.0.0/8";
/// The `direct` VM's block, as the host's config names it.
pub const DIRECT_NET: &str = "127.0.2.0/28";
/// The direct workers' source addresses, all in [`DIRECT_NET`]: each new connection takes the next. One source
/// address would cap the new-connection workloads' direct path: with every closed connection's port in
/// `TIME_WAIT`, `connect` searches longer and longer for a free port to one destination (at ~13,000 connections
/// per second on the default port range, it took up to 57 ms), and the agent would be measured against that.
pub const DIRECT_SOURCES: Sources = Sources {
    first: Ipv4Addr::new(127, 0, 2, 1),
    count: 8,
};
/// The path prefix the host forwards to the bench's upstream.
pub const UPSTREAM_PREFIX: &str = "/metadata/bench/";
/// The agent's key poll interval for the bench, seconds: short, so a profile change reaches it quickly.
pub const POLL_SECS: u64 = 2;
/// How long the host's admin API may take to come up.
const HOST_START: Duration = Duration::from_secs(15);

/// Why the stack could not start.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("msp-host did not answer on its admin API within {HOST_START:?} (log: {log})")]
    HostStart { log: String },
    #[error("admin API: {0}")]
    Admin(#[from] msp_host::AdminError),
    #[error("pin msp-host to CPU {cpu}: {why}")]
    PinHost { cpu: usize, why: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
    let what = what.into();
    move |source| StackError::Io { what, source }
}

/// Where the built binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub gpa: PathBuf,
    pub host: PathBuf,
}

/// Every address of the stack.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub wireserver: SocketAddr,
    pub hostga: SocketAddr,
    pub imds: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
}

/// A process the bench started; stopped (SIGTERM, then SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    cleanup: Cleanup,
}

impl Proc {
    /// Spawns `cmd` and registers it for cleanup.
    pub fn spawn(cmd: &mut Command, cleanup: &Cleanup) -> std::io::Result<Proc> {
        let child = cmd.spawn()?;
        cleanup.add_pid(child.id());
        Ok(Proc {
            child,
            cleanup: cleanup.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            stop_pid(self.child.id());
        }
        let _ = self.child.wait();
        self.cleanup.remove_pid(self.child.id());
    }
}

/// A free port on `ip` (bound and released; the processes bind it right after).
fn free_port(ip: Ipv4Addr) -> Result<u16, StackError> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io(format!("free port on {ip}")))
}

/// The running host, agent and upstream.
pub struct Stack {
    pub dir: PathBuf,
    pub addrs: Addrs,
    pub cgroup: BenchCgroup,
    pub bins: Binaries,
    pub admin: AdminClient,
    pub rt: tokio::runtime::Runtime,
    /// The agent's `proxyBusyPollInMicroseconds`; `None`: its default.
    pub agent_busy_poll_us: Option<u64>,
    host: Proc,
    agent: Option<Proc>,
    cleanup: Cleanup,
    _upstream: Upstream,
}

impl Stack {
    /// Starts the upstream and the host, with every host thread pinned to `host_cpu` when given; the agent is
    /// started by [`Stack::start_agent`].
    pub fn start(
        bins: Binaries,
        dir: &Path,
        cleanup: &Cleanup,
        host_cpu: Option<usize>,
    ) -> Result<Stack, StackError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("admin runtime"))?;
        let ws_ip = Ipv4Addr::new(127, 0, 0, 16);
        let imds_ip = Ipv4Addr::new(127, 0, 0, 254);
        let addrs = Addrs {
            wireserver: SocketAddr::from((ws_ip, free_port(ws_ip)?)),
            hostga: SocketAddr::from((ws_ip, free_port(ws_ip)?)),
            imds: SocketAddr::from((imds_ip, free_port(imds_ip)?)),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?)),
            proxy: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?)),
        };
        let upstream = Upstream::start().map_err(io("upstream"))?;
        let token = format!("msp-bench-admin-token-{}", std::process::id());
        let config = json!({
            "wireserverListen": addrs.wireserver,
            "hostgaListen": addrs.hostga,
            "imdsListen": addrs.imds,
            "adminListen": addrs.admin,
            "storePath": dir.join("host/store/msp-host.db"),
            "adminToken": token,
            "imdsUpstream": {"address": upstream.addr(), "pathPrefix": UPSTREAM_PREFIX},
            "vms": [
                {"name": "dev", "addresses": [DEV_NET]},
                {"name": "direct", "addresses": [DIRECT_NET],
                 "settings": {"imds": {"mode": "disabled"}, "wireServer": {"mode": "disabled"}}},
            ],
        });
        let config_path = dir.join("host.json");
        std::fs::write(&config_path, config.to_string()).map_err(io("host.json"))?;
        let log_path = dir.join("host.log");
        let log = std::fs::File::create(&log_path).map_err(io("host.log"))?;
        let mut cmd = Command::new(&bins.host);
        cmd.args(["run", "--log", "warn", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("host.log"))?)
            .stderr(log);
        let spawned = match host_cpu {
            None => Proc::spawn(&mut cmd, cleanup),
            Some(cpu) => crate::worker::with_cpu(cpu, || Proc::spawn(&mut cmd, cleanup))
                .map_err(|why| StackError::PinHost { cpu, why })?,
        };
        let host = spawned.map_err(io(format!("spawn {}", bins.host.display())))?;
        let admin = AdminClient::new(addrs.admin, token);
        let deadline = Instant::now() + HOST_START;
        while rt.block_on(admin.vms()).is_err() {
            if Instant::now() >= deadline {
                return Err(StackError::HostStart {
                    log: log_path.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let cgroup = BenchCgroup::create(cleanup).map_err(io("create the bench cgroup"))?;
        Ok(Stack {
            dir: dir.to_owned(),
            addrs,
            cgroup,
            bins,
            admin,
            rt,
            host,
            agent_busy_poll_us: None,
            agent: None,
            cleanup: cleanup.clone(),
            _upstream: upstream,
        })
    }

    pub fn host_pid(&self) -> u32 {
        self.host.pid()
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Proc::pid)
    }

    /// The agent's configuration file (spec §10.2): defaults, except loopback endpoints, the bench's folders and
    /// cgroup, and a short poll interval.
    fn agent_config(&self) -> Result<PathBuf, StackError> {
        let a = &self.addrs;
        let dir = self.dir.join("agent");
        let mut config = json!({
            "logFolder": dir.join("log"),
            "eventFolder": dir.join("log/events"),
            "latchKeyFolder": dir.join("state/keys"),
            "pollKeyStatusIntervalInSeconds": POLL_SECS,
            "wireServerEndpoint": a.wireserver,
            "hostGAPluginEndpoint": a.hostga,
            "imdsEndpoint": a.imds,
            "proxyListenAddress": a.proxy,
            "cgroupRoot": self.cgroup.path(),
        });
        if let (Some(us), Some(keys)) = (self.agent_busy_poll_us, config.as_object_mut()) {
            keys.insert("proxyBusyPollInMicroseconds".to_owned(), us.into());
        }
        let path = self.dir.join("agent.json");
        std::fs::write(&path, config.to_string()).map_err(io("agent.json"))?;
        Ok(path)
    }

    /// Starts `gpa run`; returns `CLOCK_MONOTONIC` just before the spawn. Readiness is the caller's probe.
    pub fn start_agent(&mut self) -> Result<u64, StackError> {
        let config = self.agent_config()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .map_err(io("agent.log"))?;
        let mut cmd = Command::new(&self.bins.gpa);
        cmd.args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("agent.log"))?)
            .stderr(log);
        let at = crate::procfs::monotonic_ns();
        let agent = Proc::spawn(&mut cmd, &self.cleanup)
            .map_err(io(format!("spawn {}", self.bins.gpa.display())))?;
        self.agent = Some(agent);
        Ok(at)
    }

    /// Stops the agent (SIGTERM: the orderly stop detaches the redirector) and reaps it.
    pub fn stop_agent(&mut self) {
        self.agent = None;
    }

    /// Whether the agent and the host are both still running.
    pub fn healthy(&mut self) -> bool {
        self.host.running() && self.agent.as_mut().is_some_and(Proc::running)
    }

    /// Attaches (or with `None` detaches) an IMDS profile for the agent's VM.
    pub fn set_imds_profile(&self, profile: Option<(&str, &str)>) -> Result<(), StackError> {
        self.rt.block_on(async {
            let mut settings = self.admin.vm_view("dev").await?.proxy_agent_settings;
            settings.imds.profile = match profile {
                Some((name, document)) => {
                    self.admin.put_profile(name, document).await?;
                    Some(msp_host::vm::settings::ProfileRef {
                        name: name.to_owned(),
                        version: None,
                    })
                }
                None => None,
            };
            self.admin.put_settings("dev", &settings).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::IpAddr;

    use msp_host::cidr::Cidr;

    use super::*;

    #[test]
    fn every_direct_source_is_its_own_address_inside_the_direct_vm() {
        let net: Cidr = DIRECT_NET.parse().unwrap();
        let dev: Cidr = DEV_NET.parse().unwrap();
        assert!(
            net.prefix() > dev.prefix(),
            "the host must pick `direct` over `dev`"
        );
        let count = u64::from(DIRECT_SOURCES.count);
        let firsts: Vec<Ipv4Addr> = (0..count).map(|n| DIRECT_SOURCES.nth(n)).collect();
        assert_eq!(firsts.iter().collect::<HashSet<_>>().len(), firsts.len());
        for ip in &firsts {
            assert!(
                net.contains(IpAddr::V4(*ip)),
                "{ip} is outside {DIRECT_NET}"
            );
        }
        // Then they repeat, in the same order.
        let seconds: Vec<Ipv4Addr> = (count..2 * count).map(|n| DIRECT_SOURCES.nth(n)).collect();
        assert_eq!(firsts, seconds);
        assert_eq!(DIRECT_SOURCES.nth(0), DIRECT_SOURCES.first);
    }
}
