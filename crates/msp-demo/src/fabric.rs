//! The end-to-end topology: one "host" network namespace running `msp-host` on the REAL default addresses
//! (WireServer `168.63.129.16:80`, HostGAPlugin `168.63.129.16:32526`, IMDS `169.254.169.254:80`), and one
//! or more "vm" namespaces, each joined to the host by its own veth pair, each with an agent that uses the
//! default endpoint addresses and attaches its redirector to a child cgroup owned by that VM.
//!
//! ```text
//!   vm ns  (eth0 10.77.<i>.2/24, default via 10.77.<i>.1)  ── veth ──  host ns (vm<i> 10.77.<i>.1/24,
//!   agent: 127.0.0.1:3080, cgroupRoot = the VM's cgroup                  lo: 168.63.129.16, 169.254.169.254)
//! ```
//!
//! The metadata addresses exist only inside the host namespace, which is connected to nothing but the VM
//! namespaces, so no packet can leave the machine (DESIGN.md). Dropping a [`Fabric`] kills the agents and
//! workloads by pid, removes the cgroups, stops the host and deletes every namespace, in that order.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use msp_host::audit::{AuditQuery, AuditRecord};
use msp_host::cidr::Cidr;
use msp_host::vm::VmView;
use msp_host::vm::settings::ProxyAgentSettings;
use msp_host::{AdminClient, AdminError, Host, HostConfig, ProfileInfo, RunningHost, VmConfig};

use crate::cgroup::ChildCgroup;
use crate::error::HarnessError;
use crate::fetch::FetchResult;
use crate::netns::{NetNs, NsRuntime};
use crate::process::{AgentProcess, AgentSpec, Launcher, Place, RunAs};

/// WireServer and HostGAPlugin (spec §1.1).
pub const WIRESERVER_IP: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// IMDS (spec §1.1).
pub const IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Agent poll and status intervals in the suite, seconds (the spec's minimum unit; default 15 and 60).
pub const FAST_INTERVAL_SECS: u64 = 1;
/// The agent's bound on its own host calls in the suite, seconds.
pub const HOST_CALL_TIMEOUT_SECS: u64 = 2;

/// `http://169.254.169.254<target>`.
pub fn imds_url(target: &str) -> String {
    format!("http://{IMDS_IP}{target}")
}

/// `http://168.63.129.16<target>`.
pub fn wireserver_url(target: &str) -> String {
    format!("http://{WIRESERVER_IP}{target}")
}

/// `msp-host` running on a thread inside the host namespace; its admin API (loopback there) is reached by
/// running the admin client on that same thread.
pub struct NsHost {
    host: Option<RunningHost>,
    admin: AdminClient,
    rt: NsRuntime,
}

impl NsHost {
    pub async fn start(ns: &NetNs, cfg: HostConfig) -> Result<NsHost, HarnessError> {
        let rt = NsRuntime::start(&ns.path())?;
        let host = rt.run(Host::start(cfg)).await??;
        Ok(NsHost {
            admin: host.admin(),
            host: Some(host),
            rt,
        })
    }

    /// Runs `fut` inside the host namespace.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, HarnessError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.run(fut).await
    }

    /// Runs an admin call (`|a| async move { a.vm_view("vm1").await }`) where the admin API is reachable.
    pub async fn admin<T, F, Fut>(&self, call: F) -> Result<T, HarnessError>
    where
        F: FnOnce(AdminClient) -> Fut,
        Fut: Future<Output = Result<T, AdminError>> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.rt.run(call(self.admin.clone())).await??)
    }

    /// "GET VM".
    pub async fn vm_view(&self, vm: &str) -> Result<VmView, HarnessError> {
        let vm = vm.to_owned();
        self.admin(|a| async move { a.vm_view(&vm).await }).await
    }

    pub async fn put_settings(
        &self,
        vm: &str,
        settings: &ProxyAgentSettings,
    ) -> Result<VmView, HarnessError> {
        let (vm, settings) = (vm.to_owned(), settings.clone());
        self.admin(|a| async move { a.put_settings(&vm, &settings).await })
            .await
    }

    /// Changes a VM's settings with `edit` applied to the current ones.
    pub async fn edit_settings(
        &self,
        vm: &str,
        edit: impl FnOnce(&mut ProxyAgentSettings),
    ) -> Result<VmView, HarnessError> {
        let mut settings = self.vm_view(vm).await?.proxy_agent_settings;
        edit(&mut settings);
        self.put_settings(vm, &settings).await
    }

    pub async fn put_profile(&self, name: &str, doc: &str) -> Result<ProfileInfo, HarnessError> {
        let (name, doc) = (name.to_owned(), doc.to_owned());
        self.admin(|a| async move { a.put_profile(&name, &doc).await })
            .await
    }

    /// Audit records, newest first (the store is flushed first, so every answered request is there).
    pub async fn audit(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, HarnessError> {
        if let Some(h) = &self.host {
            h.flush().await;
        }
        self.admin(|a| async move { a.audit(&q).await }).await
    }
}

impl Drop for NsHost {
    fn drop(&mut self) {
        // Cancels the front ends; the runtime (dropped next) then drops their tasks.
        drop(self.host.take());
    }
}

/// One VM: its namespace, its cgroup, its agent and its workloads.
pub struct Vm {
    agent: Option<AgentProcess>,
    /// The cgroup the agent's redirector attaches to; "intercepted" workloads run here.
    pub cgroup: ChildCgroup,
    /// The VM's name on the host.
    pub name: String,
    /// The VM's address on its link to the host.
    pub addr: Ipv4Addr,
    ns: NetNs,
    /// `/run/netns/<name>` of `ns`.
    ns_path: PathBuf,
    dir: PathBuf,
    exe: PathBuf,
    launcher: Launcher,
}

impl Vm {
    /// The agent configuration the suite uses: default endpoints and listener, fast polls, the status
    /// reported to the host, the redirector on this VM's cgroup.
    pub fn agent_config(&self) -> gpa::config::Config {
        gpa::config::Config {
            log_folder: self.dir.join("log"),
            event_folder: self.dir.join("log/events"),
            latch_key_folder: self.dir.join("state/keys"),
            poll_key_status_interval_in_seconds: FAST_INTERVAL_SECS,
            monitor_interval_in_seconds: FAST_INTERVAL_SECS,
            host_call_timeout_in_seconds: HOST_CALL_TIMEOUT_SECS,
            cgroup_root: Some(self.cgroup.path().to_path_buf()),
            report_status_to_host: true,
            ..gpa::config::Config::default()
        }
    }

    /// Starts the agent with [`Vm::agent_config`].
    pub fn start_agent(&mut self) -> Result<(), HarnessError> {
        self.start_agent_with(self.agent_config())
    }

    /// Starts the agent with `config` (replacing a previous, stopped one).
    pub fn start_agent_with(&mut self, config: gpa::config::Config) -> Result<(), HarnessError> {
        if let Some(old) = self.agent.take() {
            old.kill();
        }
        self.agent = Some(AgentProcess::start(&AgentSpec {
            exe: self.exe.clone(),
            config,
            netns: Some(self.ns.path()),
            dir: self.dir.clone(),
        })?);
        Ok(())
    }

    /// The orderly stop (SIGTERM).
    pub async fn stop_agent(&mut self) -> Result<(), HarnessError> {
        if let Some(agent) = self.agent.take() {
            agent.stop().await?;
        }
        Ok(())
    }

    /// An unplanned exit (SIGKILL).
    pub fn kill_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.kill();
        }
    }

    pub fn agent(&self) -> Option<&AgentProcess> {
        self.agent.as_ref()
    }

    /// The agent's key directory.
    pub fn key_dir(&self) -> PathBuf {
        self.dir.join("state/keys")
    }

    /// The agent's rules directory (sibling of the key directory, spec §2.11).
    pub fn rules_dir(&self) -> PathBuf {
        self.dir.join("state/rules")
    }

    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// A runtime thread inside this VM's namespace, for hand-made requests (outside the cgroup).
    pub fn runtime(&self) -> Result<NsRuntime, HarnessError> {
        NsRuntime::start(&self.ns.path())
    }

    /// Where a workload runs: always in this VM's namespace; `intercepted` puts it in the agent's cgroup.
    pub fn place(&self, intercepted: bool) -> Place<'_> {
        Place {
            cgroup: intercepted.then_some(&self.cgroup),
            netns: Some(&self.ns_path),
        }
    }

    /// One `GET url` by `user`, inside the agent's cgroup when `intercepted`.
    pub async fn fetch(
        &self,
        user: RunAs,
        intercepted: bool,
        url: &str,
    ) -> Result<FetchResult, HarnessError> {
        self.launcher
            .fetch(self.place(intercepted), user, url)
            .await
    }

    /// `count` `GET`s, `interval` apart, by one process.
    pub async fn fetch_many(
        &self,
        user: RunAs,
        intercepted: bool,
        url: &str,
        count: u32,
        interval: Duration,
    ) -> Result<Vec<FetchResult>, HarnessError> {
        self.launcher
            .fetch_many(self.place(intercepted), user, url, count, interval)
            .await
    }

    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }
}

/// The whole topology. Field order is drop order: VMs (agents, cgroups, namespaces), host, host namespace,
/// scratch directory.
pub struct Fabric {
    pub vms: Vec<Vm>,
    pub host: NsHost,
    host_ns: NetNs,
    dir: tempfile::TempDir,
}

/// A VM to create: its host-side name and initial settings (`None`: the host's default, MSP on, enforce).
pub struct VmSpec<'a> {
    pub name: &'a str,
    pub settings: Option<ProxyAgentSettings>,
}

impl Fabric {
    /// Builds the namespaces and links, and starts the host with one VM per spec (no agents yet). `exe` is
    /// the msp-demo binary (agent and workload roles).
    pub async fn build(exe: &Path, specs: &[VmSpec<'_>]) -> Result<Fabric, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("msp-e2e-")
            .tempdir()
            .map_err(|e| HarnessError::io("create a scratch directory in", "/tmp", e))?;
        let launcher = Launcher::new(exe, dir.path())?;
        let host_ns = NetNs::create("h")?;
        for ip in [WIRESERVER_IP, IMDS_IP] {
            host_ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        let mut vms = Vec::with_capacity(specs.len());
        let mut vm_configs = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let n = u8::try_from(i + 1).ok().filter(|n| *n < u8::MAX).ok_or(
                HarnessError::TooManyVms {
                    requested: specs.len(),
                    max: usize::from(u8::MAX - 1),
                },
            )?;
            let ns = NetNs::create("v")?;
            let host_if = format!("vm{n}");
            host_ns.veth(&host_if, &ns, "eth0")?;
            host_ns.ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", &host_if])?;
            ns.ip(&["addr", "add", &format!("10.77.{n}.2/24"), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", &format!("10.77.{n}.1")])?;
            let addr = Ipv4Addr::new(10, 77, n, 2);
            let vm_dir = dir.path().join(spec.name);
            vm_configs.push(VmConfig {
                name: spec.name.to_owned(),
                addresses: vec![addr.to_string().parse::<Cidr>().map_err(|e| {
                    HarnessError::Decode {
                        what: "VM address".into(),
                        message: e.to_string(),
                    }
                })?],
                settings: spec.settings.clone(),
            });
            vms.push(Vm {
                agent: None,
                cgroup: ChildCgroup::create("vm")?,
                name: spec.name.to_owned(),
                addr,
                ns_path: ns.path(),
                ns,
                dir: vm_dir,
                exe: exe.to_path_buf(),
                launcher: launcher.clone(),
            });
        }
        let cfg = HostConfig {
            wireserver_listen: SocketAddr::from((WIRESERVER_IP, 80)),
            hostga_listen: SocketAddr::from((WIRESERVER_IP, 32526)),
            imds_listen: SocketAddr::from((IMDS_IP, 80)),
            admin_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            store_path: dir.path().join("host/msp-host.db"),
            vms: vm_configs,
            ..HostConfig::default()
        };
        let host = NsHost::start(&host_ns, cfg).await?;
        Ok(Fabric {
            vms,
            host,
            host_ns,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn host_netns(&self) -> &NetNs {
        &self.host_ns
    }
}
