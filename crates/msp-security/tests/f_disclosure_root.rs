//! Catalog F (disclosure and forgery) with the whole agent against a real host: F1 what a non-root user can
//! read (nothing of status, rules snapshots or state; and no secret in them for root either), F2 control
//! characters and fake JSON in process paths, command lines and URLs come out escaped.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use msp_core::{Endpoint, Mode};
use msp_security::agent::{READY_TIMEOUT, TestAgent};
use msp_security::host::TestHost;
use msp_security::http::request;
use msp_security::probe::Probe;
use msp_security::{probe, root_ready};

const NOBODY: u32 = 65534;
const SECRET_ARG: &str = "token=s3cr3t-cmdline-value";
const SECRET_SIG: &str = "t0psecretsigvalue";

const ALLOW_ALL: &str = r#"{"defaultAccess": "allow", "mode": "enforce", "id": "imds-f",
  "rules": {"privileges": [{"name": "instance", "path": "/metadata/instance"}],
            "roles": [{"name": "r", "privileges": ["instance"]}],
            "identities": [{"name": "root", "userName": "root"}],
            "roleAssignments": [{"role": "r", "identities": ["root"]}]}}"#;

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn longest_hex_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for b in s.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_root_a_non_root_user_reads_no_status_rules_or_state_and_none_holds_a_secret() {
    if !root_ready("f1_root_a_non_root_user_reads_no_status_rules_or_state_and_none_holds_a_secret")
    {
        return;
    }
    let t = TestHost::start().await;
    t.set_imds_profile("imds-f", ALLOW_ALL).await;
    let agent = TestAgent::start("f1", &t.host, |_| {}).await;
    agent.ready().await;
    let key_hex = agent
        .snapshot()
        .key
        .clone()
        .unwrap()
        .key
        .to_hex()
        .to_ascii_lowercase();

    // Requests whose command line and URL carry secrets: one allowed (root), one refused (non-root to WireServer).
    let target = format!("/metadata/instance?api-version=2021-02-01&sig={SECRET_SIG}");
    let r = probe!()
        .note(SECRET_ARG)
        .in_cgroup(&agent.cgroup)
        .tcp(
            t.host.imds,
            &request("GET", &target, t.host.imds, &[], b""),
            8000,
        )
        .await;
    assert_eq!(r.response().status, 200, "{:?}", r.0);
    let ws_target = format!("/machine?comp=goalstate&sig={SECRET_SIG}");
    let r = probe!()
        .note(SECRET_ARG)
        .in_cgroup(&agent.cgroup)
        .as_uid(NOBODY)
        .tcp(
            t.host.wireserver,
            &request("GET", &ws_target, t.host.wireserver, &[], b""),
            8000,
        )
        .await;
    assert_eq!(r.response().status, 403, "{:?}", r.0);

    let status = agent.dir.path().join("log/status.json");
    eventually("both summaries in status.json", || {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        text.contains("\"200 OK\"") && text.contains("403")
    })
    .await;
    let files = files_under(agent.dir.path());
    assert!(
        files.iter().any(|f| f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("AuthorizationRules_")),
        "a rules snapshot was written: {files:?}"
    );
    for file in &files {
        // A non-root user cannot read any of it.
        let read = probe!().as_uid(NOBODY).read(file).await;
        // Spool files and the temporaries of atomic writes come and go while the agent runs: a file gone by the
        // time it is read cannot disclose anything.
        if read.errno() == libc::ENOENT && !file.exists() {
            continue;
        }
        assert_eq!(
            read.errno(),
            libc::EACCES,
            "{} readable by nobody: {:?}",
            file.display(),
            read.0
        );
        // And none of it (key files aside) holds key material, a signature or a secret, even for root.
        if file.extension().is_some_and(|e| e == "key") {
            continue;
        }
        let text = match std::fs::read_to_string(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.unwrap().to_ascii_lowercase(),
        };
        assert!(!text.contains(&key_hex), "{} holds the key", file.display());
        assert!(
            longest_hex_run(&text) < 64,
            "{} holds a key-sized hex run",
            file.display()
        );
        assert!(
            !text.contains("s3cr3t-cmdline-value"),
            "{} holds the cmdline secret",
            file.display()
        );
        assert!(
            !text.contains(SECRET_SIG),
            "{} holds the query secret",
            file.display()
        );
    }
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(
        text.contains("token=***"),
        "the command line is kept, redacted: {text}"
    );

    // The status endpoint: a non-root caller gets 403, never the document.
    let r = probe!()
        .in_cgroup(&agent.cgroup)
        .as_uid(NOBODY)
        .tcp(
            t.host.wireserver,
            &request("GET", "/gpa-aggregated-status", t.host.wireserver, &[], b""),
            8000,
        )
        .await
        .response();
    assert_eq!((r.status, r.reason()), (403, Some("NOT_ELEVATED")), "{r:?}");
    agent.stop().await;
}

/// Every string in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_root_control_characters_and_fake_json_in_paths_cmdlines_and_urls_come_out_escaped() {
    if !root_ready(
        "f2_root_control_characters_and_fake_json_in_paths_cmdlines_and_urls_come_out_escaped",
    ) {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("f2", &t.host, |_| {}).await;
    agent.ready().await;

    // An executable whose name forges a line and a JSON object, and a command line that does the same.
    let dir = tempfile::tempdir().unwrap();
    let forged = "tool\n{\"userName\": \"root\", \"responseStatus\": \"200 OK\"}\u{1b}[2J";
    let exe = dir.path().join(forged);
    std::fs::copy(env!("CARGO_BIN_EXE_msp-probe"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let target = "/metadata/instance?api-version=2021-02-01&x=%22%7D%2C%7B%22forged%22%3A1%7D";
    let r = Probe::new(&exe)
        .note("line1\nline2\r{\"fake\": true}")
        .in_cgroup(&agent.cgroup)
        .as_uid(NOBODY)
        .tcp(
            t.host.imds,
            &request("GET", target, t.host.imds, &[], b""),
            8000,
        )
        .await;
    assert_eq!(r.response().status, 200, "{:?}", r.0);
    // A control character in the URL itself never gets as far as a log: it is refused (spec §5.3).
    let ctrl = "/metadata/instance?api-version=2021-02-01&x=%0A%7B%22forged%22%3A1%7D";
    let r = probe!()
        .in_cgroup(&agent.cgroup)
        .tcp(
            t.host.imds,
            &request("GET", ctrl, t.host.imds, &[], b""),
            8000,
        )
        .await;
    r.response().assert_refusal(400, "CANON_CTRL");

    let status = agent.dir.path().join("log/status.json");
    eventually("the summary in status.json", || {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .contains("tool\\\\n")
    })
    .await;
    // The document still parses, and no string in it holds a control character: each was escaped.
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    let mut all = Vec::new();
    strings(&doc, &mut all);
    for s in &all {
        assert!(
            !s.chars().any(char::is_control),
            "unescaped control character in {s:?}"
        );
    }
    let entry = doc["proxyConnectionSummary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["processFullPath"]
                .as_str()
                .unwrap_or_default()
                .contains("tool\\n")
        })
        .unwrap_or_else(|| panic!("no summary for the forged path: {doc}"));
    assert_eq!(
        entry["userName"], "nobody",
        "the forged JSON did not change the record: {entry}"
    );
    assert!(
        entry["processCmdLine"]
            .as_str()
            .unwrap()
            .contains("line1\\nline2\\r"),
        "{entry}"
    );
    agent.stop().await;
}
