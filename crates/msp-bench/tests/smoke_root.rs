//! A short run of the whole bench (a few hundred requests per workload and side, 100 held connections, one
//! cold start), so CI exercises it: the table and the JSON are produced and every request succeeded. No timing
//! is asserted here: speed lives in the benchmark itself (BENCHMARKS.md).
//!
//! Needs root (the bench creates a cgroup, the agent loads eBPF) and the `gpa` and `msp-host` binaries, which
//! `cargo test --workspace` builds next to this package's binary (debug builds are fine for a smoke run).

use std::path::PathBuf;
use std::process::Command;

fn root_ready(name: &str) -> bool {
    let root = nix_is_root();
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name}: needs root and kernel BTF, and CI=true makes that a failure"
    );
    eprintln!("{name}: skipped (needs root and kernel BTF)");
    false
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `target/<profile>/`, where cargo put `msp-bench` and, in a workspace build, `gpa` and `msp-host`.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msp-bench"))
        .parent()
        .expect("binary directory")
        .to_owned()
}

/// Builds `gpa` and `msp-host` when this package is tested alone (`cargo test -p msp-bench`).
fn ensure_binaries(dir: &std::path::Path) {
    if dir.join("gpa").exists() && dir.join("msp-host").exists() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "gpa", "-p", "msp-host", "--bins"])
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p gpa -p msp-host --bins failed"
    );
}

#[test]
fn bench_smoke_root_every_workload_runs_and_reports() {
    if !root_ready("bench_smoke_root_every_workload_runs_and_reports") {
        return;
    }
    let dir = bin_dir();
    ensure_binaries(&dir);
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_msp-bench"))
        .args([
            "--rounds",
            "1",
            "--round-ms",
            "20000",
            "--warmup-ms",
            "0",
            "--max-requests",
            "300",
            "--client-cpu",
            "none",
            "--host-cpu",
            "0",
            "--scale",
            "100",
            "--cold-starts",
            "1",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run msp-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "msp-bench failed:\n{stdout}\n{stderr}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(json["all_succeeded"], true, "{json:#}");
    let workloads = json["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "keepalive-1",
            "keepalive-16",
            "keepalive-64",
            "newconn-1",
            "newconn-8",
            "response-64k",
            "allowlist-1000"
        ]
    );
    for w in workloads {
        for side in ["agent", "direct", "relay"] {
            assert!(
                w[side]["requests"].as_u64().unwrap() >= 300,
                "{}: {side}: {w:#}",
                w["name"]
            );
            assert_eq!(w[side]["failed"], 0, "{}: {side}: {w:#}", w["name"]);
        }
    }
    assert_eq!(json["settings"]["host_cpu"], 0);
    assert_eq!(json["settings"]["client_cpu"], serde_json::Value::Null);
    assert_eq!(json["scale"]["held"], 100);
    assert_eq!(json["agent"]["cold_start_ms"].as_array().unwrap().len(), 1);
    assert!(json["agent"]["stripped_binary_bytes"].as_u64().unwrap() > 0);

    let md = std::fs::read_to_string(out.path().join("bench.md")).unwrap();
    assert!(md.contains("| keep-alive, 1 connection |"), "{md}");
    assert!(md.contains("The floor of a local proxy"), "{md}");
    assert!(md.contains("Every request succeeded: yes."), "{md}");
    assert!(
        md.contains("client not pinned, msp-host pinned to CPU 0"),
        "{md}"
    );
    assert_eq!(stdout.trim(), md.trim());
}
