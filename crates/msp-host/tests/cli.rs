//! The `msp-host` binary: `run` with graceful shutdown on SIGTERM, and the admin wrappers
//! (`vm show|set|reset-key`, `profile put`, `audit`) against a running host.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_msp-host"))
}

fn admin_args(host: &msp_host::RunningHost, dir: &Path) -> Vec<String> {
    let cfg = config(dir);
    vec![
        "--admin".into(),
        host.admin_addr.to_string(),
        "--token-file".into(),
        cfg.token_file().display().to_string(),
    ]
}

fn run(args: &[String]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_wrappers_talk_to_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let base = admin_args(&host, dir.path());
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .map(|s| s.to_string())
            .chain(base.iter().cloned())
            .collect()
    };

    let (code, out, err) = tokio::task::spawn_blocking({
        let a = with(&["vm", "show", VM_A]);
        move || run(&a)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(view["key"]["latchedGuid"], agent.guid.as_str());

    let a = with(&["vm", "set", VM_A, "--imds", "audit"]);
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&a)).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        host.admin()
            .vm_view(VM_A)
            .await
            .unwrap()
            .proxy_agent_settings
            .imds
            .mode,
        msp_core::Mode::Audit
    );

    let profile = dir.path().join("p.json");
    std::fs::write(&profile, r#"{"defaultAccess": "deny", "id": "p-1"}"#).unwrap();
    let a = with(&["profile", "put", "p", profile.to_str().unwrap()]);
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&a)).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version 1"), "{out}");
    std::fs::write(&profile, r#"{"defaultAccess": "sometimes", "id": "p-1"}"#).unwrap();
    let a = with(&["profile", "put", "p", profile.to_str().unwrap()]);
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&a)).await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("defaultAccess"), "{err}");

    let a = with(&["vm", "reset-key", VM_A]);
    let (code, out, _) = tokio::task::spawn_blocking(move || run(&a)).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("keyIncarnationId is now 2"), "{out}");
    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(r.status, 200, "audit mode serves");
    let a = with(&[
        "audit",
        "--vm",
        VM_A,
        "--endpoint",
        "imds",
        "--decision",
        "audited",
        "--since",
        "10m",
    ]);
    let (code, out, err) = tokio::task::spawn_blocking(move || run(&a)).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("reason=KEY_UNKNOWN") && out.contains("vm=vm-a"),
        "{out}"
    );

    let bad_token = vec![
        "vm".into(),
        "show".into(),
        VM_A.into(),
        "--admin".into(),
        host.admin_addr.to_string(),
        "--token-file".into(),
        dir.path().join("missing").display().to_string(),
    ];
    let (code, _, err) = tokio::task::spawn_blocking(move || run(&bad_token))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = tokio::task::spawn_blocking(|| run(&["vm".into(), "frobnicate".into()]))
        .await
        .unwrap();
    assert_eq!(code, 2);
    host.shutdown().await;
}

#[test]
fn help_explains_endpoints_and_exit_codes() {
    let (code, out, _) = run(&["--help".into()]);
    assert_eq!(code, 0);
    for needle in ["WireServer", "169.254.169.254", "Exit codes", "--dev"] {
        assert!(out.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn run_serves_and_stops_gracefully_on_sigterm() {
    serves_and_stops_gracefully(false);
}

/// A parent that blocks SIGTERM passes its mask on through `exec` (msp-bench did, for its own signal thread): the
/// host must unblock it, or it would never see the stop and be killed after its supervisor's grace period.
#[test]
fn run_stops_gracefully_on_sigterm_even_when_started_with_it_blocked() {
    serves_and_stops_gracefully(true);
}

/// Starts `msp-host run` (from a thread blocking SIGTERM and SIGINT when `blocked`), checks that it serves, sends
/// SIGTERM, and checks for a graceful stop within 15 s.
fn serves_and_stops_gracefully(blocked: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("host.json");
    let store = dir.path().join("store").join("db.sqlite");
    let cfg = serde_json::json!({
        "wireserverListen": "127.0.0.16:0", "hostgaListen": "127.0.0.16:0", "imdsListen": "127.0.0.254:0",
        "adminListen": "127.0.0.1:0", "storePath": store,
        "vms": [{"name": "dev", "addresses": ["127.0.0.0/8"]}]
    });
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let spawn = move || {
        if blocked {
            let stop: SigSet = [Signal::SIGTERM, Signal::SIGINT].into_iter().collect();
            stop.thread_block().unwrap();
        }
        bin()
            .args(["run", "--json-logs", "--config", cfg_path.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = std::thread::spawn(spawn).join().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut imds = None;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "msp-host started" {
            imds = v["fields"]["imds"].as_str().map(str::to_owned);
            break;
        }
    }
    let imds: std::net::SocketAddr = imds.expect("started line").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(msp_host::client::send(
        imds,
        None,
        &msp_host::client::Request::new("GET", "/metadata/versions").header("Metadata", "true"),
    ));
    assert_eq!(r.unwrap().status, 401, "default-closed");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let masks: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("SigBlk:"))
        .collect();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no stop within 15 s of SIGTERM (blocked by the parent: {blocked}; {masks:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped = lines
        .map_while(Result::ok)
        .any(|line| line.contains("msp-host stopped"));
    assert_eq!(status.code(), Some(0));
    assert!(stopped, "graceful shutdown logged");
}
