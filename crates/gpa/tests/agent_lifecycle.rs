//! The agent's core against the real `msp-host`, started in-process on loopback with a store of its own:
//! latching, restart, rotation after an owner reset, disabled, an unreachable host, the status report,
//! provisioning tags, and the listener bind rule (spec §2.8–§2.10, §7.5, §9.3–§9.5).
//!
//! What the host saw is read the way an operator reads it: the admin API's VM view (latched guid, incarnation,
//! pending keys, instance view) and its audit log (one record per call, so acquires and polls are counted
//! there). Modes and keys are changed through the admin API, as an owner would.

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpa::config::Config;
use gpa::keykeeper::{PolicyError, PolicySink};
use gpa::lifecycle::{Agent, Parts, RedirectorHandle, bind_listener};
use gpa::snapshot::ReadyKey;
use gpa::status::{Module, StatusBoard};
use gpa::telemetry::EventSink;
use msp_core::status::ModuleState;
use msp_host::vm::key_status::DEFAULT_ITEM_ID;
use support::{TestHost, VM, eventually, restart_address};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct RecordingPolicy(Mutex<Vec<Vec<SocketAddr>>>);

impl PolicySink for RecordingPolicy {
    fn set_policy(&self, destinations: &[SocketAddr]) -> Result<(), PolicyError> {
        self.0.lock().unwrap().push(destinations.to_vec());
        Ok(())
    }
}

impl RedirectorHandle for RecordingPolicy {}

impl RecordingPolicy {
    fn last(&self) -> Option<Vec<SocketAddr>> {
        self.0.lock().unwrap().last().cloned()
    }
}

/// The agent's configuration for `host`: its three front ends are the fabric endpoints.
fn config(root: &Path, host: &TestHost) -> Config {
    Config {
        log_folder: root.join("log"),
        event_folder: root.join("log/events"),
        latch_key_folder: root.join("state/keys"),
        poll_key_status_interval_in_seconds: 1,
        monitor_interval_in_seconds: 1,
        host_call_timeout_in_seconds: 2,
        wire_server_endpoint: host.host.wireserver,
        host_ga_plugin_endpoint: host.host.hostga,
        imds_endpoint: host.host.imds,
        proxy_listen_address: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

struct Running {
    agent: Agent,
    cancel: CancellationToken,
    policy: Arc<RecordingPolicy>,
}

impl Running {
    async fn start(config: Config) -> Running {
        let policy = Arc::new(RecordingPolicy::default());
        let sink = policy.clone();
        let parts = Parts {
            start_redirector: Box::new(move |_| Ok(sink.clone() as Arc<dyn RedirectorHandle>)),
            serve_proxy: Box::new(|ctx| Box::pin(async move { ctx.cancel.cancelled().await })),
        };
        let cancel = CancellationToken::new();
        let agent = Agent::start(Arc::new(config), parts, EventSink::new(), cancel.clone()).await;
        Running {
            agent,
            cancel,
            policy,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.agent.stop().await;
    }

    fn ready_key(&self) -> Option<ReadyKey> {
        self.agent.snapshots.borrow().key.clone()
    }

    fn key_guid(&self) -> Option<String> {
        self.ready_key().map(|k| k.guid.to_string())
    }

    fn latch_message(&self) -> String {
        self.agent.board.module(Module::KeyLatch).message
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    eventually(what, limit, || std::future::ready(f())).await;
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o777
}

fn key_file(root: &Path, guid: &str) -> PathBuf {
    root.join(format!("state/keys/{guid}.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_020_022_fresh_latch_then_restart_reuses_the_stored_key() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let agent = Running::start(config(root.path(), &host)).await;
    wait_until("a latched key", Duration::from_secs(10), || {
        agent.key_guid().is_some()
    })
    .await;
    let guid = agent.key_guid().unwrap();
    let view = host.view().await;
    assert_eq!(
        view.key.latched_guid.as_deref(),
        Some(guid.as_str()),
        "the host latched the attested key"
    );
    assert_eq!(view.key.pending, 0, "no key left pending");
    assert_eq!(view.key.incarnation_id, 1, "a new VM's first incarnation");
    let calls = host.calls().await;
    assert_eq!((calls.acquires, calls.attestations), (1, 1));
    assert_eq!(
        calls.issued,
        [guid.as_str()],
        "the one key issued is latched"
    );
    assert!(
        agent
            .latch_message()
            .starts_with("Successfully attest the key and ready to use. - ")
    );
    assert_eq!(mode(&key_file(root.path(), &guid)), 0o600);
    assert_eq!(mode(&root.path().join("state/keys")), 0o700);
    assert_eq!(mode(&root.path().join("state/rules")), 0o700);
    let states = agent.agent.board.proxy_agent_status().key_latch_status;
    assert_eq!(
        states.state("secureChannelState"),
        Some("WireServer Enforce -  IMDS Enforce - HostGA Enforce")
    );
    assert_eq!(states.state("keyGuid"), Some(guid.as_str()));
    assert_eq!(states.state("wireServerRuleId"), Some(DEFAULT_ITEM_ID));
    assert_eq!(states.state("keyIncarnationId"), Some("1"));
    let endpoints = config(root.path(), &host).endpoints();
    wait_until("the enforce policy", Duration::from_secs(5), || {
        agent.policy.last().is_some_and(|p| p.len() == 3)
    })
    .await;
    assert_eq!(
        agent.policy.last().unwrap(),
        [endpoints.wireserver, endpoints.hostga, endpoints.imds]
    );
    wait_until("last-status.json", Duration::from_secs(5), || {
        root.path().join("state/keys/last-status.json").exists()
    })
    .await;
    assert_eq!(
        mode(&root.path().join("state/keys/last-status.json")),
        0o600
    );
    agent.stop().await;

    let agent = Running::start(config(root.path(), &host)).await;
    wait_until("the restored key", Duration::from_secs(3), || {
        let snap = agent.agent.snapshots.borrow().clone();
        snap.ready && snap.key.is_some()
    })
    .await;
    assert_eq!(agent.key_guid().as_deref(), Some(guid.as_str()));
    let before = host.calls().await;
    host.wait_for_polls(&before, 2, Duration::from_secs(5))
        .await;
    let after = host.calls().await;
    assert_eq!(
        (after.acquires, after.attestations),
        (1, 1),
        "no acquire or attest after a restart"
    );
    let view = host.view().await;
    assert_eq!(view.key.latched_guid.as_deref(), Some(guid.as_str()));
    assert_eq!(view.key.pending, 0, "no new key issued");
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_023_025_rotation_follows_a_reset_pairs_guid_and_key_and_deletes_old_keys() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let admin = host.admin();
    let agent = Running::start(config(root.path(), &host)).await;
    let mut guids = Vec::new();
    for round in 0..3u32 {
        wait_until("a latched key", Duration::from_secs(10), || {
            agent.key_guid().is_some_and(|g| !guids.contains(&g))
        })
        .await;
        let ready = agent.ready_key().unwrap();
        let guid = ready.guid.to_string();
        assert_eq!(
            host.latched().await.as_deref(),
            Some(guid.as_str()),
            "round {round}"
        );
        // conf 23: the snapshot pairs the guid with exactly that guid's key: the host accepts what it signs.
        let r = host.signed_goal_state(&ready.guid, &ready.key).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        guids.push(guid);

        // The owner resets the key (spec §12.2); the host forgets it at once.
        assert_eq!(admin.reset_key(VM).await.unwrap(), round + 2);
        let r = host.signed_goal_state(&ready.guid, &ready.key).await;
        assert_eq!(
            (r.status, r.header("x-msp-reason")),
            (401, Some("KEY_UNKNOWN")),
            "round {round}"
        );
        // What the proxy does on that `401 KEY_UNKNOWN`.
        agent.agent.keeper.key_unknown();
    }
    wait_until("the fourth key", Duration::from_secs(10), || {
        agent.key_guid().is_some_and(|g| !guids.contains(&g))
    })
    .await;
    let current = agent.key_guid().unwrap();
    let view = host.view().await;
    assert_eq!(view.key.latched_guid.as_deref(), Some(current.as_str()));
    assert_eq!(view.key.incarnation_id, 4);
    let mut issued = guids.clone();
    issued.push(current.clone());
    assert_eq!(
        host.calls().await.issued,
        issued,
        "one new key per reset, each the one latched"
    );
    assert!(key_file(root.path(), &current).exists());
    assert!(
        key_file(root.path(), &guids[2]).exists(),
        "the predecessor is kept"
    );
    assert!(
        !key_file(root.path(), &guids[0]).exists(),
        "older keys are deleted"
    );
    assert!(!key_file(root.path(), &guids[1]).exists());
    let states = agent.agent.board.proxy_agent_status().key_latch_status;
    assert_eq!(states.state("keyIncarnationId"), Some("4"));
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_024_disabled_drops_the_key_and_the_policy() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let agent = Running::start(config(root.path(), &host)).await;
    wait_until("a latched key", Duration::from_secs(10), || {
        agent.key_guid().is_some()
    })
    .await;
    let mut settings = host.view().await.proxy_agent_settings;
    settings.enabled = false;
    host.admin().put_settings(VM, &settings).await.unwrap();
    wait_until("the key dropped", Duration::from_secs(5), || {
        agent.key_guid().is_none()
    })
    .await;
    wait_until("the disabled message", Duration::from_secs(5), || {
        agent
            .latch_message()
            .starts_with("Customer has not enforce the secure channel state. - ")
    })
    .await;
    assert_eq!(
        agent.policy.last(),
        Some(Vec::new()),
        "nothing is redirected"
    );
    assert!(!root.path().join("state/keys/last-status.json").exists());
    let states = agent.agent.board.proxy_agent_status().key_latch_status;
    assert_eq!(states.state("secureChannelState"), Some("disabled"));
    assert_eq!(states.state("keyGuid"), None);
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_unreachable_host_keeps_serving_the_latched_key_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start_with(|c| {
        c.wireserver_listen = restart_address();
        c.hostga_listen = restart_address();
        c.imds_listen = restart_address();
    })
    .await;
    let cfg = config(root.path(), &host);
    let agent = Running::start(cfg.clone()).await;
    wait_until("a latched key", Duration::from_secs(10), || {
        agent.key_guid().is_some()
    })
    .await;
    let guid = agent.key_guid().unwrap();
    wait_until("last-status.json", Duration::from_secs(5), || {
        root.path().join("state/keys/last-status.json").exists()
    })
    .await;
    agent.stop().await;
    let before = host.calls().await;
    let stopped = host.stop().await;

    let agent = Running::start(cfg).await;
    wait_until("the failed poll", Duration::from_secs(5), || {
        agent
            .latch_message()
            .starts_with("Failed to get key status - ")
    })
    .await;
    let snap = agent.agent.snapshots.borrow().clone();
    assert!(snap.ready, "served from the persisted status");
    assert_eq!(
        snap.key.as_ref().map(|k| k.guid.to_string()),
        Some(guid.clone())
    );
    assert_eq!(
        agent.policy.last().map(|p| p.len()),
        Some(3),
        "redirection restored at once"
    );

    // The host comes back on the same store and addresses.
    let host = stopped.restart().await;
    host.wait_for_polls(&before, 1, Duration::from_secs(10))
        .await;
    let ready = agent.ready_key().unwrap();
    assert_eq!(ready.guid.to_string(), guid);
    assert_eq!(host.latched().await, Some(guid));
    wait_until(
        "the status no longer says the poll fails",
        Duration::from_secs(5),
        || {
            agent
                .latch_message()
                .starts_with("Key status received again after failed polls. - ")
        },
    )
    .await;
    let r = host.signed_goal_state(&ready.guid, &ready.key).await;
    assert_eq!(r.status, 200, "the served key still signs: {}", r.text());
    let calls = host.calls().await;
    assert_eq!(
        (calls.acquires, calls.attestations),
        (1, 1),
        "never re-acquired"
    );
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_099_086_status_report_reaches_the_host_signed_and_tags_are_written() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let mut cfg = config(root.path(), &host);
    cfg.report_status_to_host = true;
    let agent = Running::start(cfg).await;
    eventually(
        "a signed SUCCESS report",
        Duration::from_secs(15),
        || async {
            let view = host.view().await;
            view.instance_view.is_some_and(|iv| {
                iv.signed_by.is_some() && iv.proxy_agent_status["status"] == "SUCCESS"
            })
        },
    )
    .await;
    let guid = agent.key_guid().unwrap();
    let view = host.view().await;
    let instance = view.instance_view.unwrap();
    assert_eq!(
        instance.signed_by.as_deref(),
        Some(guid.as_str()),
        "signed with the latched key"
    );
    assert!(view.provisioned, "the host counts the VM provisioned");
    assert!(
        host.calls().await.reports >= 1,
        "the audit log counts reports"
    );
    let keys = root.path().join("state/keys");
    assert_eq!(
        std::fs::read(keys.join("status.tag")).unwrap(),
        b"",
        "provisioned without error"
    );
    assert_eq!(mode(&keys.join("provisioned.tag")), 0o600);
    let status = root.path().join("log/status.json");
    assert_eq!(mode(&status), 0o640);
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(text.contains(&guid), "status shows the key guid");
    let key = hex::encode_upper(agent.ready_key().unwrap().key.as_bytes());
    assert!(!text.to_uppercase().contains(&key), "never the key bytes");
    let reported = instance.proxy_agent_status.to_string().to_uppercase();
    assert!(!reported.contains(&key), "nor in the report");
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_099_no_report_by_default() {
    let root = tempfile::tempdir().unwrap();
    let host = TestHost::start().await;
    let agent = Running::start(config(root.path(), &host)).await;
    let status = root.path().join("log/status.json");
    wait_until("status.json", Duration::from_secs(15), || status.exists()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        host.calls().await.reports,
        0,
        "no PUT ?comp=proxyagentstatus"
    );
    assert!(host.view().await.instance_view.is_none());
    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test]
async fn conf_001_bind_retries_on_address_in_use_then_binds() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let board = StatusBoard::new();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(held);
    });
    let listener = bind_listener(addr, &board, &CancellationToken::new()).await;
    release.await.unwrap();
    assert_eq!(listener.unwrap().local_addr().unwrap(), addr);
    let m = board.module(Module::Listener);
    assert_eq!(m.status, ModuleState::Running);
    assert!(m.message.starts_with(&format!(
        "Started proxy listener {addr}, ready to accept request - "
    )));
}

#[tokio::test]
async fn bind_fails_at_once_on_other_errors_and_stops_the_listener_module() {
    let board = StatusBoard::new();
    // An address of no local interface (TEST-NET-1; bind only, nothing is sent): EADDRNOTAVAIL, not "in use".
    let addr: SocketAddr = "192.0.2.1:0".parse().unwrap();
    let started = std::time::Instant::now();
    let listener = bind_listener(addr, &board, &CancellationToken::new()).await;
    assert!(listener.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no retry for other errors"
    );
    let m = board.module(Module::Listener);
    assert_eq!(m.status, ModuleState::Stopped);
    assert!(m.message.contains("192.0.2.1"), "{}", m.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_a_symlinked_key_directory_is_refused_and_the_status_says_why() {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("attacker-dir");
    std::fs::create_dir(&victim).unwrap();
    std::fs::create_dir(root.path().join("state")).unwrap();
    std::os::unix::fs::symlink(&victim, root.path().join("state/keys")).unwrap();
    let host = TestHost::start().await;
    let agent = Running::start(config(root.path(), &host)).await;
    wait_until("the refusal in the status", Duration::from_secs(10), || {
        agent.latch_message().contains("symlink")
    })
    .await;
    assert!(
        agent
            .latch_message()
            .starts_with("Failed to save key details to file: key directory unusable: "),
        "{}",
        agent.latch_message()
    );
    assert!(agent.key_guid().is_none(), "no key without a stored copy");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    assert_eq!(host.calls().await.attestations, 0, "nothing attested");
    assert_eq!(host.latched().await, None, "nothing latched");
    agent.stop().await;
    host.shutdown().await;
}
