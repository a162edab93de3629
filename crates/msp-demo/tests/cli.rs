//! The demo's front door: without root it says exactly what is missing and how to get it, in text and in
//! `--json`, with exit code 3, and starts nothing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_msp-demo");

/// Runs the demo as an unprivileged user: `nobody` when the test runs as root, else the test's own user.
fn run_unprivileged(args: &[&str]) -> Option<Output> {
    let mut cmd = Command::new(EXE);
    cmd.args(args).env_clear();
    if nix::unistd::geteuid().is_root() {
        let reachable = Path::new(EXE).ancestors().all(|p| {
            p.as_os_str().is_empty()
                || std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
        });
        if !reachable {
            eprintln!("skipping: {EXE} is not reachable for nobody");
            return None;
        }
        cmd.uid(65_534).gid(65_534);
    }
    Some(cmd.output().expect("run msp-demo"))
}

#[test]
fn without_root_the_demo_says_what_is_missing_and_how_to_get_it() {
    let Some(out) = run_unprivileged(&[]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root is required"), "{stderr}");
    assert!(stderr.contains("sudo target/release/msp-demo"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing started, nothing narrated");
}

#[test]
fn without_root_json_reports_the_missing_prerequisite() {
    let Some(out) = run_unprivileged(&["--json"]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], false);
    assert!(
        doc["missing"]
            .as_str()
            .unwrap()
            .contains("root is required"),
        "{doc}"
    );
    assert_eq!(doc["steps"].as_array().map(Vec::len), Some(0));
}

#[test]
fn fetch_refuses_urls_that_are_not_ip_literals() {
    let out = Command::new(EXE)
        .args(["fetch", "http://metadata.example/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://<ip>:<port>/<path>"));
}
