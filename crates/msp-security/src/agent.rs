//! The whole agent in this process (`gpa::lifecycle::Agent` with `Parts::default()`: the real eBPF redirector on
//! a child cgroup this test created, the real proxy) against a real `msp-host`, with its state under a
//! temporary directory. Callers are `msp-probe` processes placed in the agent's cgroup.
//!
//! The redirector skips this process (the agent's own pid), so the test's own connections go direct; only
//! probes in the cgroup are intercepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gpa::config::Config;
use gpa::lifecycle::{Agent, Parts};
use gpa::snapshot::Snapshot;
use gpa::telemetry::EventSink;
use msp_host::RunningHost;
use tokio_util::sync::CancellationToken;

use crate::cgroup::TestCgroup;

/// How long a test waits for the agent to become ready or to apply a change.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestAgent {
    // Field order is drop order: the agent (and its redirector) before the cgroup and the state directory.
    pub agent: Option<Agent>,
    pub cancel: CancellationToken,
    pub config: Arc<Config>,
    pub cgroup: TestCgroup,
    pub dir: tempfile::TempDir,
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The agent's configuration for `host`, with its state under `dir` and hooks on `cgroup`.
pub fn config_for(host: &RunningHost, dir: &std::path::Path, cgroup: &TestCgroup) -> Config {
    Config {
        log_folder: dir.join("log"),
        event_folder: dir.join("log/events"),
        latch_key_folder: dir.join("state/keys"),
        poll_key_status_interval_in_seconds: 1,
        monitor_interval_in_seconds: 1,
        host_call_timeout_in_seconds: 2,
        wire_server_endpoint: host.wireserver,
        host_ga_plugin_endpoint: host.hostga,
        imds_endpoint: host.imds,
        proxy_listen_address: SocketAddr::from(([127, 0, 0, 1], free_port())),
        cgroup_root: Some(cgroup.path.clone()),
        ..Config::default()
    }
}

impl TestAgent {
    /// Starts the agent for `host`; `edit` adjusts the configuration first.
    pub async fn start(tag: &str, host: &RunningHost, edit: impl FnOnce(&mut Config)) -> TestAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = TestCgroup::new(tag);
        let mut config = config_for(host, dir.path(), &cgroup);
        edit(&mut config);
        let config = Arc::new(config);
        let cancel = CancellationToken::new();
        let agent = Agent::start(
            config.clone(),
            Parts::default(),
            EventSink::new(),
            cancel.clone(),
        )
        .await;
        TestAgent {
            agent: Some(agent),
            cancel,
            config,
            cgroup,
            dir,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.agent
            .as_ref()
            .expect("running")
            .snapshots
            .borrow()
            .clone()
    }

    /// Waits until `f` holds for the current snapshot.
    pub async fn until(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while !f(&self.snapshot()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent: timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a successful poll and a latched key, then for the redirect policy to follow.
    pub async fn ready(&self) {
        self.until("a ready key", |s| s.ready && s.key.is_some())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub fn listener(&self) -> SocketAddr {
        self.config.proxy_listen_address
    }

    /// The orderly stop (spec §7.5): drains, detaches and unpins.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The agent as its own process (`msp-agent`, the same code as `gpa run`), for tests that kill it or measure
/// its memory alone. Killed on drop.
pub struct AgentProcess {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub listener: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts `msp_agent_exe` for `host` with hooks on `cgroup`; `extra` adds or replaces configuration keys.
    pub async fn spawn(
        msp_agent_exe: &str,
        host: &RunningHost,
        cgroup: &TestCgroup,
        extra: serde_json::Value,
    ) -> AgentProcess {
        Self::spawn_under(&[], msp_agent_exe, host, cgroup, extra).await
    }

    /// [`spawn`](Self::spawn) through `wrapper` (a command that `exec`s the rest of its arguments, such as `env`
    /// with options), so the agent keeps the wrapper's pid.
    pub async fn spawn_under(
        wrapper: &[&str],
        msp_agent_exe: &str,
        host: &RunningHost,
        cgroup: &TestCgroup,
        extra: serde_json::Value,
    ) -> AgentProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = serde_json::json!({
            "logFolder": dir.path().join("log"),
            "eventFolder": dir.path().join("log/events"),
            "latchKeyFolder": dir.path().join("state/keys"),
            "pollKeyStatusIntervalInSeconds": 1,
            "hostCallTimeoutInSeconds": 2,
            "wireServerEndpoint": host.wireserver.to_string(),
            "hostGAPluginEndpoint": host.hostga.to_string(),
            "imdsEndpoint": host.imds.to_string(),
            "proxyListenAddress": listener.to_string(),
            "cgroupRoot": cgroup.path,
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let path = dir.path().join("agent.json");
        std::fs::write(&path, config.to_string()).expect("write config");
        let (program, args) = match wrapper.split_first() {
            Some((w, rest)) => (*w, [rest, &[msp_agent_exe]].concat()),
            None => (msp_agent_exe, Vec::new()),
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .arg(&path)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn msp-agent");
        let pid = child.id().expect("pid");
        AgentProcess {
            child,
            pid,
            listener,
            dir,
        }
    }

    /// Resident memory of the agent process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(&format!("/proc/{}/status", self.pid))
    }
}

/// Waits until process `pid` has freed its start-up parse of the kernel BTF (the agent's
/// [`gpa::redirect::BTF_FREE_THREAD`] has ended), so a memory figure taken next does not count it. Panics after
/// 10 s.
pub fn wait_startup_memory_freed(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let freeing = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == gpa::redirect::BTF_FREE_THREAD)
            })
    };
    while freeing() {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} still frees its start-up memory after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `VmRSS` of a `/proc/<pid>/status` file, in KiB (0 when unreadable).
pub fn rss_kib_of(status_file: &str) -> u64 {
    std::fs::read_to_string(status_file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl AgentProcess {
    /// Waits until `request`, sent to `to` by probes from `make_probe` (placed in the agent's cgroup), is
    /// answered 200.
    pub async fn wait_served(
        &self,
        make_probe: impl Fn() -> crate::probe::Probe,
        to: SocketAddr,
        request: &[u8],
    ) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let r = make_probe().tcp(to, request, 3000).await;
            if r.ok() && r.response_text().starts_with("HTTP/1.1 200") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent never served: {:?}",
                r.0
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
