//! The demo: `msp-host` (dev profile, loopback, temporary store) in this process, the agent (`gpa run`) as its
//! own process with its redirector on a child cgroup created for the demo, and sample workloads placed in that
//! cgroup as root and as `nobody`. Five steps, each a handful of checks ([`narrate`]):
//!
//! 1. MSP disabled: requests go through unsigned; the instance view says `disabled` (spec §2.4).
//! 2. MSP enabled in Audit on the running VM: the agent latches the key, every component is RUNNING, and the
//!    connection summary shows who called what.
//! 3. An allowlist (only root and `/usr/bin/curl` may read tokens): would-be denials are recorded in Audit.
//! 4. Enforce: root gets 200 (signed, verified by the host), `nobody` gets 403 from the agent, and a process
//!    outside the intercepted cgroup is refused by the host (401).
//! 5. The agent is stopped: nothing unsigned gets through; restarted, it serves again with its stored key.
//!
//! Everything it starts is owned by a guard and removed on return, on error and on Ctrl-C. It must never send
//! traffic anywhere but loopback, and never attach eBPF outside the cgroup it created.

pub mod narrate;
mod steps;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use msp_core::status::ProxyAgentStatus;
use msp_host::audit::{AuditQuery, AuditRecord};
use msp_host::config::DEV_VM;
use msp_host::vm::VmView;
use msp_host::vm::settings::ProxyAgentSettings;
use msp_host::{AdminClient, Host, HostConfig, RunningHost};

use crate::cgroup::ChildCgroup;
use crate::error::HarnessError;
use crate::fetch::FetchResult;
use crate::prereq;
use crate::process::{AgentProcess, AgentSpec, Launcher, Place, RunAs};
use narrate::Narrator;

/// How long the demo waits for the agent to reach a state (latch, report, restart).
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's poll and status intervals in the demo, seconds (defaults 15 and 60).
pub const DEMO_INTERVAL_SECS: u64 = 1;

/// Command-line options of the demo.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// One JSON document instead of the narration.
    pub json: bool,
}

/// How the demo ended (the exit code follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Missing,
    Broken,
    Interrupted,
}

/// Runs the demo, prints its narration or report, and cleans up.
pub async fn main(opts: DemoOptions) -> Outcome {
    let mut narrator = Narrator::new(opts.json);
    if let Err(missing) = prereq::check_demo() {
        narrator.report.missing = Some(missing.to_string());
        narrator.finish();
        return Outcome::Missing;
    }
    let result = tokio::select! {
        r = run(&mut narrator) => r,
        () = interrupted() => Err(HarnessError::Interrupted),
    };
    // `run` has returned or been dropped here: every guard it held has cleaned up.
    let outcome = match result {
        Ok(()) if narrator.all_ok() => Outcome::Passed,
        Ok(()) => Outcome::Failed,
        Err(HarnessError::Interrupted) => {
            narrator.report.interrupted = true;
            Outcome::Interrupted
        }
        Err(e) => {
            narrator.report.error = Some(prereq::error_chain(&e));
            Outcome::Broken
        }
    };
    narrator.finish();
    outcome
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn run(n: &mut Narrator) -> Result<(), HarnessError> {
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::io("find this executable", "/proc/self/exe", e))?;
    let demo = Demo::start(&exe).await?;
    n.title(
        "MSP demo: msp-host and the Guest Proxy Agent, end to end on this machine (loopback only)",
    );
    demo.describe(n);
    steps::run(demo, n).await
}

/// Everything the demo started. Field order is drop order: agent, cgroup, host, scratch directory.
pub(crate) struct Demo {
    pub(crate) agent: Option<AgentProcess>,
    pub(crate) agent_spec: AgentSpec,
    pub(crate) cgroup: ChildCgroup,
    pub(crate) host: Option<RunningHost>,
    pub(crate) admin: AdminClient,
    pub(crate) launcher: Launcher,
    pub(crate) imds: SocketAddr,
    tmp: tempfile::TempDir,
}

impl Demo {
    async fn start(exe: &Path) -> Result<Demo, HarnessError> {
        let tmp = tempfile::Builder::new()
            .prefix("msp-demo-")
            .tempdir()
            .map_err(|e| HarnessError::io("create a scratch directory in", "/tmp", e))?;
        let launcher = Launcher::new(exe, tmp.path())?;
        let cgroup = ChildCgroup::create("demo")?;

        let mut cfg = HostConfig::dev(tmp.path().join("host"));
        cfg.admin_listen.set_port(0);
        for vm in &mut cfg.vms {
            vm.settings = Some(ProxyAgentSettings {
                enabled: false,
                ..ProxyAgentSettings::default()
            });
        }
        let host = Host::start(cfg).await?;
        let admin = host.admin();

        let config = gpa::config::Config {
            log_folder: tmp.path().join("agent/log"),
            event_folder: tmp.path().join("agent/log/events"),
            latch_key_folder: tmp.path().join("agent/state/keys"),
            poll_key_status_interval_in_seconds: DEMO_INTERVAL_SECS,
            monitor_interval_in_seconds: DEMO_INTERVAL_SECS,
            host_call_timeout_in_seconds: 2,
            wire_server_endpoint: host.wireserver,
            host_ga_plugin_endpoint: host.hostga,
            imds_endpoint: host.imds,
            proxy_listen_address: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            cgroup_root: Some(cgroup.path().to_path_buf()),
            report_status_to_host: true,
            ..gpa::config::Config::default()
        };
        let agent_spec = AgentSpec {
            exe: exe.to_path_buf(),
            config,
            netns: None,
            dir: tmp.path().join("agent"),
        };
        let agent = AgentProcess::start(&agent_spec)?;
        Ok(Demo {
            agent: Some(agent),
            agent_spec,
            cgroup,
            imds: host.imds,
            host: Some(host),
            admin,
            launcher,
            tmp,
        })
    }

    fn describe(&self, n: &mut Narrator) {
        if let Some(h) = &self.host {
            n.setup(
                "msp-host",
                format!(
                    "WireServer {}, IMDS {}; VM \"{DEV_VM}\" = 127.0.0.0/8; store in {}",
                    h.wireserver,
                    h.imds,
                    self.tmp.path().join("host").display()
                ),
            );
        }
        n.setup(
            "agent",
            format!(
                "`gpa run` as pid {}; proxy {}; eBPF redirector on cgroup {}",
                self.agent.as_ref().map_or(0, AgentProcess::pid),
                self.agent_spec.config.proxy_listen_address,
                self.cgroup.path().display()
            ),
        );
        n.setup(
            "workloads",
            format!(
                "`{} fetch` placed in that cgroup, as root and as nobody",
                self.launcher.workload_exe().display()
            ),
        );
    }

    /// A workload `GET` of `target` on IMDS, inside the intercepted cgroup or not.
    pub(crate) async fn fetch(
        &self,
        user: RunAs,
        intercepted: bool,
        target: &str,
    ) -> Result<FetchResult, HarnessError> {
        let place = Place {
            cgroup: intercepted.then_some(&self.cgroup),
            netns: None,
        };
        let url = format!("http://{}{target}", self.imds);
        self.launcher.fetch(place, user, &url).await
    }

    pub(crate) async fn vm(&self) -> Result<VmView, HarnessError> {
        Ok(self.admin.vm_view(DEV_VM).await?)
    }

    /// The instance view the agent last reported to the host (spec §9.3), if received at or after `since_ms`
    /// (unix milliseconds).
    pub(crate) async fn instance_view(&self, since_ms: u64) -> Option<ProxyAgentStatus> {
        let view = self.vm().await.ok()?.instance_view?;
        if view.received_ms < since_ms {
            return None;
        }
        serde_json::from_value(view.proxy_agent_status).ok()
    }

    /// The host's newest IMDS audit record.
    pub(crate) async fn last_imds_audit(&self) -> Option<AuditRecord> {
        if let Some(h) = &self.host {
            h.flush().await;
        }
        let q = AuditQuery {
            vm: Some(DEV_VM.to_owned()),
            endpoint: Some("imds".to_owned()),
            limit: Some(1),
            ..AuditQuery::default()
        };
        self.admin.audit(&q).await.ok()?.into_iter().next()
    }

    pub(crate) async fn edit_settings(
        &self,
        edit: impl FnOnce(&mut ProxyAgentSettings),
    ) -> Result<VmView, HarnessError> {
        let mut settings = self.vm().await?.proxy_agent_settings;
        edit(&mut settings);
        Ok(self.admin.put_settings(DEV_VM, &settings).await?)
    }

    /// Stops what is running in order, gracefully (drop would kill instead).
    pub(crate) async fn shutdown(mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.stop().await;
        }
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }
}

/// A loopback port free right now, for the agent's listener.
fn free_port() -> Result<u16, HarnessError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| HarnessError::io("find a free port on", "127.0.0.1", e))
}
