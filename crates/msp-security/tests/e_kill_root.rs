//! Catalog E4: the agent SIGKILLed under load, as its own process (`msp-agent`, the real redirector and proxy)
//! against a real host in Enforce. No unsigned request is ever accepted by the host; with `redirectFailMode:
//! closed` (pinned links) callers are refused instead of reaching the host directly. E5 (restarts) is `gpa`'s
//! conf_073_root_* tests. The orderly stop on SIGTERM, with the signal blocked by the agent's parent, is here too.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gpa::redirect::PIN_ROOT;
use msp_core::{Endpoint, Mode};
use msp_host::audit::{AuditQuery, Decision};
use msp_security::agent::AgentProcess;
use msp_security::host::{TestHost, VM};
use msp_security::{TestCgroup, probe, root_ready};

/// Removes the pins a killed `closed`-mode agent leaves (`/sys/fs/bpf/gpa/<cgroup id>`), before the cgroup goes.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn get(t: &TestHost) -> Vec<u8> {
    format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\n\r\n",
        t.host.imds
    )
    .into_bytes()
}

/// A host in Enforce on IMDS and `msp-agent` (started through `wrapper`) with hooks on a new cgroup, serving.
async fn serving(
    tag: &str,
    wrapper: &[&str],
    extra: serde_json::Value,
) -> (TestHost, TestCgroup, Pins, AgentProcess) {
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let cgroup = TestCgroup::new(tag);
    let pins = Pins(Path::new(PIN_ROOT).join(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup.path).unwrap()).to_string(),
    ));
    let agent = AgentProcess::spawn_under(
        wrapper,
        env!("CARGO_BIN_EXE_msp-agent"),
        &t.host,
        &cgroup,
        extra,
    )
    .await;
    // Ready: a caller in the cgroup is served (signed) through the agent.
    agent
        .wait_served(|| probe!().in_cgroup(&cgroup), t.host.imds, &get(&t))
        .await;
    (t, cgroup, pins, agent)
}

async fn kill_under_load(fail_mode: &str) {
    let (t, cgroup, pins, mut agent) = serving(
        "e4",
        &[],
        serde_json::json!({"redirectFailMode": fail_mode}),
    )
    .await;

    // Load from the cgroup; SIGKILL the agent in the middle of it.
    let load = tokio::spawn(
        probe!()
            .in_cgroup(&cgroup)
            .load(t.host.imds, &get(&t), 4, 4),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent.child.start_kill().unwrap();
    agent.child.wait().await.unwrap();
    let counts: BTreeMap<String, u64> =
        serde_json::from_value(load.await.unwrap().0["counts"].clone()).unwrap();
    assert!(counts.get("200").copied().unwrap_or(0) > 0, "{counts:?}");

    // After the kill: open mode reaches the host unsigned and is refused; closed mode is refused locally.
    let after = probe!()
        .in_cgroup(&cgroup)
        .tcp(t.host.imds, &get(&t), 3000)
        .await;
    match fail_mode {
        "open" => {
            let r = after.response();
            assert_eq!((r.status, r.reason()), (401, Some("AUTH_MISSING")), "{r:?}");
            for k in counts.keys() {
                assert!(
                    ["200", "401"].contains(&k.as_str()) || k.starts_with("io"),
                    "{counts:?}"
                );
            }
        }
        _ => {
            assert_eq!(after.errno(), libc::ECONNREFUSED, "{:?}", after.0);
            assert!(
                !counts.contains_key("401"),
                "reached the host directly: {counts:?}"
            );
        }
    }

    // The host accepted nothing unsigned: every served IMDS request named the latched key.
    t.host.flush().await;
    let audit = |decision| AuditQuery {
        vm: Some(VM.into()),
        endpoint: Some("imds".into()),
        decision: Some(decision),
        limit: Some(msp_host::audit::MAX_AUDIT_QUERY_ROWS),
        ..AuditQuery::default()
    };
    let served = t
        .host
        .admin()
        .audit(&audit(Decision::Allowed))
        .await
        .unwrap();
    assert!(!served.is_empty());
    assert!(
        served
            .iter()
            .all(|r| r.key_guid.is_some() && r.status == 200),
        "{served:?}"
    );
    for d in [Decision::Unchecked, Decision::Audited, Decision::Exempt] {
        assert!(
            t.host.admin().audit(&audit(d)).await.unwrap().is_empty(),
            "{d:?}"
        );
    }
    drop(pins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_root_agent_sigkilled_under_load_open_mode_host_refuses_everything_unsigned() {
    if !root_ready("e4_root_agent_sigkilled_under_load_open_mode_host_refuses_everything_unsigned")
    {
        return;
    }
    kill_under_load("open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_root_agent_sigkilled_under_load_closed_mode_callers_are_refused() {
    if !root_ready("e4_root_agent_sigkilled_under_load_closed_mode_callers_are_refused") {
        return;
    }
    kill_under_load("closed").await;
}

/// A parent that blocks SIGTERM passes the mask on through `exec` (`env --block-signal`); the agent still stops
/// on it, in order. In `closed` mode only the orderly stop removes the pinned links (a killed agent leaves them,
/// E4 above): it exits 0, leaves no pins, and a caller then reaches the host unsigned and is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e4_root_sigterm_stops_the_agent_in_order_even_when_its_parent_blocked_the_signal() {
    if !root_ready(
        "e4_root_sigterm_stops_the_agent_in_order_even_when_its_parent_blocked_the_signal",
    ) {
        return;
    }
    const WRAPPER: [&str; 2] = ["env", "--block-signal=TERM,INT"];
    // The wrapper does block the signal in what it runs.
    let probe = std::process::Command::new(WRAPPER[0])
        .args(&WRAPPER[1..])
        .args(["grep", "SigBlk", "/proc/self/status"])
        .output()
        .unwrap();
    let blocked = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .strip_prefix("SigBlk:")
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap();
    assert_ne!(blocked & (1 << (libc::SIGTERM - 1)), 0, "{blocked:x}");

    let (t, cgroup, pins, mut agent) = serving(
        "eterm",
        &WRAPPER,
        serde_json::json!({"redirectFailMode": "closed"}),
    )
    .await;
    assert!(
        std::fs::read_dir(&pins.0).is_ok_and(|mut d| d.next().is_some()),
        "closed mode pins its links"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent.pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(30), agent.child.wait()).await;
    let status = exited.expect("the agent did not stop on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::fs::read_dir(&pins.0).map_or(true, |mut d| d.next().is_none()),
        "an orderly stop leaves no pins"
    );
    let r = probe!()
        .in_cgroup(&cgroup)
        .tcp(t.host.imds, &get(&t), 3000)
        .await
        .response();
    assert_eq!((r.status, r.reason()), (401, Some("AUTH_MISSING")), "{r:?}");
    drop(pins);
}
