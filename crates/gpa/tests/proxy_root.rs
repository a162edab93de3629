//! The whole agent as root (catalog B1, B2, C1, A1, A7; conf 1, 70): `Parts::default()`, so the real eBPF
//! redirector on a test-owned child cgroup feeds the real proxy, against the real in-process `msp_host` on
//! loopback stand-in addresses (127.0.0.16, 127.0.0.254). Clients are `curl` processes placed in the cgroup
//! before they connect; the test itself stays outside it.
#![cfg(target_os = "linux")]

mod redirect_support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gpa::config::Config;
use gpa::lifecycle::{Agent, Parts};
use gpa::snapshot::Snapshot;
use gpa::telemetry::EventSink;
use msp_core::{Endpoint, Mode};
use redirect_support::{TestCgroup, free_port, root_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Entry point of `redirect_support`'s re-executed clients; unused here but part of the shared harness.
#[test]
#[ignore = "child-process entry point, run by the harness"]
fn child_role_entry() {
    redirect_support::child::child_main();
}

const STEP: Duration = Duration::from_secs(10);

struct Running {
    agent: Option<Agent>,
    cancel: CancellationToken,
    config: Config,
}

impl Running {
    async fn start(config: Config) -> Running {
        let cancel = CancellationToken::new();
        let agent = Agent::start(
            Arc::new(config.clone()),
            Parts::default(),
            EventSink::new(),
            cancel.clone(),
        )
        .await;
        Running {
            agent: Some(agent),
            cancel,
            config,
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.agent.as_ref().unwrap().snapshots.borrow().clone()
    }

    async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !(self.snapshot().ready && self.snapshot().key.is_some()) {
            assert!(tokio::time::Instant::now() < deadline, "agent not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The policy follows the first poll; give the key keeper a moment to apply it.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
    }
}

fn config(dir: &Path, host: &msp_host::RunningHost, cgroup: &TestCgroup) -> Config {
    Config {
        log_folder: dir.join("log"),
        event_folder: dir.join("log/events"),
        latch_key_folder: dir.join("state/keys"),
        poll_key_status_interval_in_seconds: 1,
        host_call_timeout_in_seconds: 2,
        wire_server_endpoint: host.wireserver,
        host_ga_plugin_endpoint: host.hostga,
        imds_endpoint: host.imds,
        proxy_listen_address: SocketAddr::from(([127, 0, 0, 1], free_port())),
        cgroup_root: Some(cgroup.path.clone()),
        ..Config::default()
    }
}

/// What curl printed: the status and the response head (`-i`).
struct CurlResult {
    status: u16,
    head: String,
}

impl CurlResult {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Runs `curl` inside `cgroup` (as `uid` when given): it waits on stdin until placed there, then connects.
fn curl_in(cgroup: &Path, uid: Option<u32>, url: &str) -> CurlResult {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"read go; exec curl -s -i --max-time 8 -H "Metadata: true" "$0""#,
        url,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("spawn sh");
    std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "curl {url}: no response: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    CurlResult { status, head }
}

async fn curl(cgroup: &TestCgroup, uid: Option<u32>, url: String) -> CurlResult {
    let path = cgroup.path.clone();
    tokio::task::spawn_blocking(move || curl_in(&path, uid, &url))
        .await
        .unwrap()
}

fn imds_url(host: &msp_host::RunningHost) -> String {
    format!(
        "http://{}/metadata/instance?api-version=2021-02-01",
        host.imds
    )
}

/// Listening TCP sockets on `port`, from `/proc/net/tcp{,6}`: (local address hex, family).
fn listeners_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let (addr, p) = local.split_once(':').unwrap();
            if *state == "0A" && u16::from_str_radix(p, 16).unwrap() == port {
                found.push(format!("{table}:{addr}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_c1_a7_conf_001_070_root_redirected_callers_are_signed_or_refused() {
    if !root_ready("b1_c1_a7_conf_001_070_root_redirected_callers_are_signed_or_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = msp_host::Host::start(msp_host::HostConfig::test(dir.path().join("host")))
        .await
        .unwrap();
    let cgroup = TestCgroup::new("proxy-b1");
    let agent = Running::start(config(dir.path(), &host, &cgroup)).await;
    agent.ready().await;

    // B1: a root caller's IMDS request is redirected, signed, verified by the host, and relayed with the marker.
    let r = curl(&cgroup, None, imds_url(&host)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("x-ms-azure-host-authorization").as_deref(),
        Some("value")
    );
    host.flush().await;
    let audit = host
        .admin()
        .audit(&msp_host::audit::AuditQuery {
            endpoint: Some("imds".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = agent.snapshot().key.clone().unwrap();
    assert!(
        audit.iter().any(|a| a.status == 200
            && a.reason.is_none()
            && a.key_guid.as_deref() == Some(key.guid.as_str())),
        "{audit:?}"
    );

    // C1: a non-root caller to WireServer gets 403 NOT_ELEVATED from the agent (in audit too).
    let ws_url = format!("http://{}/machine?comp=goalstate", host.wireserver);
    let r = curl(&cgroup, Some(65534), ws_url.clone()).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (403, Some("NOT_ELEVATED".into()))
    );
    host.admin()
        .set_mode("dev", Endpoint::WireServer, Mode::Audit)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    while agent.snapshot().channel.modes.get(Endpoint::WireServer) != Mode::Audit {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = curl(&cgroup, Some(65534), ws_url).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (403, Some("NOT_ELEVATED".into()))
    );

    // A7 / conf 70: a direct connection to the listener (from outside the cgroup) has no record: 421.
    let listen = agent.config.proxy_listen_address;
    let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
    s.write_all(
        format!(
            "GET /metadata/instance HTTP/1.1\r\nHost: {}\r\n\r\n",
            host.imds
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("x-msp-reason: NO_ATTRIBUTION\r\n"));

    // conf 1 / A1: one listening socket on the proxy port, on 127.0.0.1 only.
    assert_eq!(listeners_on(listen.port()), ["/proc/net/tcp:0100007F"]);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.2", listen.port()))
            .await
            .is_err()
    );

    agent.stop().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_root_agent_stopped_host_refuses_unsigned_in_enforce_and_serves_in_audit() {
    if !root_ready("b2_root_agent_stopped_host_refuses_unsigned_in_enforce_and_serves_in_audit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = msp_host::Host::start(msp_host::HostConfig::test(dir.path().join("host")))
        .await
        .unwrap();
    let cgroup = TestCgroup::new("proxy-b2");
    let agent = Running::start(config(dir.path(), &host, &cgroup)).await;
    agent.ready().await;
    let r = curl(&cgroup, None, imds_url(&host)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-ms-azure-host-authorization").is_some(),
        "through the agent"
    );

    // The orderly stop detaches the hooks: the same caller now reaches the host directly, unsigned.
    agent.stop().await;
    assert!(
        cgroup.attached().is_empty(),
        "stop detaches: {:?}",
        cgroup.attached()
    );
    let r = curl(&cgroup, None, imds_url(&host)).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("AUTH_MISSING".into()))
    );
    assert_eq!(
        r.header("x-ms-azure-host-authorization"),
        None,
        "not through the agent"
    );

    host.admin()
        .set_mode("dev", Endpoint::Imds, Mode::Audit)
        .await
        .unwrap();
    let r = curl(&cgroup, None, imds_url(&host)).await;
    assert_eq!(r.status, 200, "audit serves unsigned requests");
    host.flush().await;
    let audit = host
        .admin()
        .audit(&msp_host::audit::AuditQuery {
            endpoint: Some("imds".into()),
            reason: Some("AUTH_MISSING".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        audit.iter().any(|a| a.status == 200),
        "logged as unsigned: {audit:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_restart_with_a_stored_key_serves_at_once_while_the_host_is_unreachable() {
    if !root_ready("root_restart_with_a_stored_key_serves_at_once_while_the_host_is_unreachable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = msp_host::Host::start(msp_host::HostConfig::test(dir.path().join("host")))
        .await
        .unwrap();
    let cgroup = TestCgroup::new("proxy-restart");
    let first = Running::start(config(dir.path(), &host, &cgroup)).await;
    first.ready().await;
    let guid = first.snapshot().key.clone().unwrap().guid;
    // The last-known status is persisted by the first poll that reports the latched key.
    let last = dir.path().join("state/keys/last-status.json");
    let deadline = tokio::time::Instant::now() + STEP;
    while !std::fs::read_to_string(&last).is_ok_and(|t| t.contains(guid.as_str())) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status with the key persisted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;

    // Same key directory; the secure channel (WireServer) is now unreachable.
    let mut cfg = config(dir.path(), &host, &cgroup);
    let closed = std::net::TcpListener::bind("127.0.0.16:0").unwrap();
    cfg.wire_server_endpoint = closed.local_addr().unwrap();
    drop(closed);
    let second = Running::start(cfg).await;
    // No poll can succeed now: readiness can only come from the persisted status and the stored key.
    second.ready().await;
    assert_eq!(second.snapshot().key.as_ref().map(|k| k.guid), Some(guid));
    let r = curl(&cgroup, None, imds_url(&host)).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("x-ms-azure-host-authorization").as_deref(),
        Some("value")
    );
    second.stop().await;
    host.shutdown().await;
}
