//! Catalog D4 (the local-file half), D6 and D7 end to end: the host opts the IMDS item in to local rules, and a
//! local `IMDS_Rules.json` that is invalid, a symlink, group-writable or not root's makes the endpoint fail
//! closed or is ignored, with the status saying why; a leading BOM is accepted; a `mode` in it changes nothing.
//! The document-level halves of D4 and D7 are `msp-core`'s tests (SECURITY.md lists them).
#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use msp_security::agent::{READY_TIMEOUT, TestAgent};
use msp_security::host::TestHost;
use msp_security::{probe, root_ready};

const ALLOW_FILE: &str = r#"{"defaultAccess": "allow"}"#;

fn host_item() -> String {
    let id = base64::engine::general_purpose::STANDARD
        .encode(r#"{"id":"imds-local","useLocalFileRules":true}"#);
    format!(r#"{{"defaultAccess": "deny", "mode": "enforce", "id": "{id}"}}"#)
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
}

/// Sends IMDS requests from the cgroup until one gets `status` (the agent applies files within a poll).
async fn until_status(agent: &TestAgent, t: &TestHost, status: u16, reason: Option<&str>) {
    let req = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        t.host.imds
    );
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let r = probe!()
            .in_cgroup(&agent.cgroup)
            .tcp(t.host.imds, req.as_bytes(), 5000)
            .await
            .response();
        if (r.status, r.reason()) == (status, reason) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wanted {status} {reason:?}, last {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn rules_error(agent: &TestAgent) -> Option<String> {
    let status = agent.agent.as_ref().unwrap().board.proxy_agent_status();
    let v = serde_json::to_value(&status).unwrap();
    v["keyLatchStatus"]["states"]["imdsRulesError"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_d6_d7_root_bad_or_unsafe_local_rules_fail_closed_or_are_ignored_and_the_status_says_why()
 {
    if !root_ready(
        "d4_d6_d7_root_bad_or_unsafe_local_rules_fail_closed_or_are_ignored_and_the_status_says_why",
    ) {
        return;
    }
    let t = TestHost::start().await;
    t.set_imds_profile("imds-local", &host_item()).await;
    let agent = TestAgent::start("d6", &t.host, |_| {}).await;
    agent.ready().await;
    let dir = agent.config.rules_dir();
    let file = dir.join("IMDS_Rules.json");

    // No file: the host item (deny).
    until_status(&agent, &t, 403, Some("DEFAULT_DENY")).await;
    assert_eq!(rules_error(&agent), None);

    // A valid file with a leading UTF-8 BOM is accepted (spec §4.7): its allow wins.
    write(
        &file,
        &[b"\xEF\xBB\xBF".as_slice(), ALLOW_FILE.as_bytes()].concat(),
        0o600,
    );
    until_status(&agent, &t, 200, None).await;
    assert_eq!(rules_error(&agent), None);

    // D4: invalid JSON fails closed (deny, host mode kept) and the status says why.
    write(&file, b"{\"defaultAccess\": \"allow\",", 0o600);
    until_status(&agent, &t, 403, Some("DEFAULT_DENY")).await;
    assert!(
        rules_error(&agent).is_some(),
        "status names the invalid file"
    );

    // D4: NUL bytes and duplicate keys likewise.
    write(
        &file,
        b"{\"defaultAccess\": \"allow\", \"defaultAccess\": \"allow\"}",
        0o600,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    until_status(&agent, &t, 403, Some("DEFAULT_DENY")).await;
    assert!(rules_error(&agent).is_some());

    // Back to valid, then D6: each unsafe variant of the same valid file is ignored (host item: deny), and
    // the status says why.
    let valid = dir.join("valid.json");
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let unsafe_cases: [(&str, Plant<'_>); 3] = [
        (
            "symlink",
            Box::new(|| {
                write(&valid, ALLOW_FILE.as_bytes(), 0o600);
                let _ = std::fs::remove_file(&file);
                std::os::unix::fs::symlink(&valid, &file).unwrap();
            }),
        ),
        (
            "group-writable",
            Box::new(|| write(&file, ALLOW_FILE.as_bytes(), 0o620)),
        ),
        (
            "not root's",
            Box::new(|| {
                write(&file, ALLOW_FILE.as_bytes(), 0o600);
                std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
            }),
        ),
    ];
    for (what, plant) in unsafe_cases {
        write(&file, ALLOW_FILE.as_bytes(), 0o600);
        until_status(&agent, &t, 200, None).await;
        plant();
        until_status(&agent, &t, 403, Some("DEFAULT_DENY")).await;
        let why = rules_error(&agent);
        assert!(why.is_some(), "{what}: the status says why");
    }

    // D7: a `mode` in the local file is ignored: `disabled` there does not stop enforcement.
    write(
        &file,
        br#"{"defaultAccess": "deny", "mode": "disabled"}"#,
        0o600,
    );
    until_status(&agent, &t, 403, Some("DEFAULT_DENY")).await;
    assert_eq!(
        agent.snapshot().items.imds.as_ref().unwrap().mode(),
        msp_core::Mode::Enforce
    );
    agent.stop().await;
}
