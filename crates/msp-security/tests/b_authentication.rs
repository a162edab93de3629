//! Catalog B (authentication with the host) rows that span crates: B3 key files against a non-root reader, B5
//! replay of a captured signed request. B1, B2, B4, B6, B7 and B8 are tested where they live (SECURITY.md lists
//! each test).
#![cfg(target_os = "linux")]

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use gpa::keykeeper::keystore::KeyStore;
use msp_core::wire::Key;
use msp_core::{Endpoint, Mode, Reason};
use msp_host::audit::{AuditQuery, Decision};
use msp_security::host::{TestHost, VM, send};
use msp_security::{probe, root_ready};

/// `nobody`: a non-root reader.
const NOBODY: u32 = 65534;

#[tokio::test]
async fn b3_root_key_dir_0700_key_files_0600_and_a_non_root_read_gets_eacces() {
    if !root_ready("b3_root_key_dir_0700_key_files_0600_and_a_non_root_read_gets_eacces") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // A world-traversable parent, so only the key directory's own mode can stop the reader.
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = state.path().join("keys");
    let store = KeyStore::open(&dir).expect("key dir");
    let key = Key::parse(
        br#"{"authorizationScheme":"Azure-HMAC-SHA256","guid":"9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf","key":"4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59","issued":"2025-04-23T12:00:00Z","incarnationId":1}"#,
    )
    .unwrap();
    store.store(&key).expect("store the key");

    let file = dir.join("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf.key");
    let d = std::fs::symlink_metadata(&dir).unwrap();
    let f = std::fs::symlink_metadata(&file).unwrap();
    assert!(d.is_dir() && f.is_file());
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o700, 0, 0));
    assert_eq!((f.mode() & 0o7777, f.uid(), f.gid()), (0o600, 0, 0));

    // A non-root process that knows the path cannot read it (the directory stops it first).
    let read = probe!().as_uid(NOBODY).read(&file).await;
    assert!(!read.ok(), "{:?}", read.0);
    assert_eq!(read.errno(), libc::EACCES, "{:?}", read.0);
    // Nor with the directory opened up: the file's own mode stops it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let read = probe!().as_uid(NOBODY).read(&file).await;
    assert_eq!(read.errno(), libc::EACCES, "{:?}", read.0);
    // Root reads it (the probe itself works).
    assert!(probe!().read(&file).await.ok());
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test]
async fn b5_a_replayed_v1_request_is_refused_once_outside_the_freshness_window() {
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = loopback(2);
    let latched = t.latch(agent).await;
    let now = SystemTime::now();

    // Captured 299 s ago by another process: the same bytes are still inside the 300 s window. MSP v1 has no
    // nonce, so this is accepted: the known limit of the profile (spec §12.3, SECURITY.md).
    let inside = t
        .imds_request()
        .agent_headers(false, now - Duration::from_secs(299))
        .sign(&latched.guid, &latched.key);
    let r = send(t.host.imds, loopback(9), &inside).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Replayed again: still the same answer (identical requests are legitimate, spec §12.3).
    let r = send(t.host.imds, loopback(10), &inside).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Captured 301 s ago (or replayed 301 s after capture): refused, with the reason code.
    for skew in [Duration::from_secs(301), Duration::from_secs(3600)] {
        let old = t
            .imds_request()
            .agent_headers(false, now - skew)
            .sign(&latched.guid, &latched.key);
        let r = send(t.host.imds, loopback(9), &old).await;
        assert_eq!(r.status, 401, "{skew:?}: {}", r.text());
        assert_eq!(r.header("x-msp-reason"), Some(Reason::DateSkew.code()));
        assert_eq!(r.body, br#"{"error": "DATE_SKEW"}"#);
    }
    // And the host's audit log says so.
    let records = t
        .host
        .admin()
        .audit(&AuditQuery {
            vm: Some(VM.into()),
            endpoint: Some("imds".into()),
            reason: Some("DATE_SKEW".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.decision == Decision::Rejected && r.status == 401)
    );
}
