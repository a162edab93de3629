//! Key latching on the host (spec §12.2): status, acquire, attestation; conformance items 92 and 93.

mod support;

use std::time::SystemTime;

use msp_core::Mode;
use msp_core::sign::SigningKey;
use msp_host::vm::settings::{ProxyAgentSettings, StatusVersion};
use support::*;

#[tokio::test]
async fn latch_flow_status_key_attestation_latched() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let (r, ks) = key_status(&host, ip_a()).await;
    assert_eq!(r.status, 200);
    let date = r.header("x-ms-azure-host-date").expect("host date header");
    msp_core::sign::parse_host_date(date).expect("host date in §2.12 format");
    assert_eq!(ks.key_guid, None);
    assert_eq!(ks.key_incarnation_id, Some(1));
    ks.validate().unwrap();

    let agent = latch(&host, ip_a()).await;
    let (_, ks) = key_status(&host, ip_a()).await;
    assert_eq!(ks.key_guid.as_deref(), Some(agent.guid.as_str()));
    let view = host.admin().vm_view(VM_A).await.unwrap();
    assert_eq!(view.key.latched_guid.as_deref(), Some(agent.guid.as_str()));
    assert_eq!(view.key.pending, 0);
    // The other VM is untouched.
    let (_, other) = key_status(&host, ip_b()).await;
    assert_eq!(other.key_guid, None);

    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    host.shutdown().await;
}

#[tokio::test]
async fn conf_092_second_key_after_latching_is_409_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let (r, key) = acquire(&host, ip_a()).await;
    assert_eq!(r.status, 409);
    assert!(key.is_none());
    assert_eq!(r.header("x-msp-reason"), Some("KEY_LATCHED"));
    assert_eq!(r.text(), r#"{"error": "KEY_LATCHED"}"#);
    let hex = agent.key.to_hex();
    assert!(!r.text().to_ascii_uppercase().contains(hex.as_str()));
    host.shutdown().await;
}

#[tokio::test]
async fn conf_093_attestation_signed_with_the_wrong_key_is_401_and_latches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let (_, key) = acquire(&host, ip_a()).await;
    let (guid, _) = key.unwrap().signing_parts().unwrap();
    let wrong = SigningKey::from_bytes([7u8; 32]);
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, &guid, &wrong, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-msp-reason"), Some("SIG_MISMATCH"));
    let (_, ks) = key_status(&host, ip_a()).await;
    assert_eq!(ks.key_guid, None, "nothing latched");
    assert_eq!(
        host.admin().vm_view(VM_A).await.unwrap().key.pending,
        1,
        "still pending"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn attestation_of_a_guid_that_is_not_pending_is_404_key_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let key = SigningKey::from_bytes([1u8; 32]);
    let guid = msp_core::sign::KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap();
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, &guid, &key, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-msp-reason"), Some("KEY_UNKNOWN"));
    // Another VM's pending key is not pending for this VM.
    let (_, k) = acquire(&host, ip_b()).await;
    let (guid_b, key_b) = k.unwrap().signing_parts().unwrap();
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, &guid_b, &key_b, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 404);
    host.shutdown().await;
}

#[tokio::test]
async fn attestation_outside_the_window_or_non_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let (_, k) = acquire(&host, ip_a()).await;
    let (guid, key) = k.unwrap().signing_parts().unwrap();
    let old = SystemTime::now() - minutes(6);
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, &guid, &key, old),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("DATE_SKEW"))
    );
    let non_root = channel_request(
        "POST",
        &format!("/secure-channel/key/{guid}/key-attestation"),
        host.wireserver,
    )
    .agent_headers(false, SystemTime::now())
    .sign(&guid, &key);
    let r = send(host.wireserver, ip_a(), &non_root).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (403, Some("NOT_ELEVATED"))
    );
    host.shutdown().await;
}

#[tokio::test]
async fn at_most_eight_pending_keys_the_ninth_discards_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let mut keys = Vec::new();
    for _ in 0..9 {
        let (r, k) = acquire(&host, ip_a()).await;
        assert_eq!(r.status, 200);
        keys.push(k.unwrap().signing_parts().unwrap());
    }
    assert_eq!(host.admin().vm_view(VM_A).await.unwrap().key.pending, 8);
    let (g0, k0) = &keys[0];
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, g0, k0, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 404, "the oldest was discarded");
    let (g5, k5) = &keys[5];
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, g5, k5, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 200);
    // Latching discards every other pending key.
    let (g6, k6) = &keys[6];
    let r = send(
        host.wireserver,
        ip_a(),
        &attestation(&host, g6, k6, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(host.admin().vm_view(VM_A).await.unwrap().key.pending, 0);
    host.shutdown().await;
}

#[tokio::test]
async fn issued_keys_are_32_random_bytes_with_v4_guids_and_the_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let (_, a) = acquire(&host, ip_a()).await;
    let (_, b) = acquire(&host, ip_a()).await;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.incarnation_id, Some(1));
    assert_ne!(a.guid, b.guid);
    assert_ne!(a.key.expose(), b.key.expose());
    assert_eq!(a.key.expose().len(), 64);
    assert_eq!(&a.guid[14..15], "4", "guid v4: {}", a.guid);
    host.shutdown().await;
}

#[tokio::test]
async fn status_v1_and_v2_documents_follow_the_vm_settings() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    let mut s = ProxyAgentSettings {
        status_version: StatusVersion::V1,
        ..Default::default()
    };
    s.imds.mode = Mode::Audit;
    admin.put_settings(VM_A, &s).await.unwrap();
    let (r, ks) = key_status(&host, ip_a()).await;
    let raw: serde_json::Value = r.json().unwrap();
    assert_eq!(raw["version"], "1.0");
    assert_eq!(raw["secureChannelState"], "Wireserver");
    assert!(raw.get("secureChannelEnabled").is_none());
    let derived = ks.derive();
    assert_eq!(derived.modes.imds, Mode::Audit);
    assert_eq!(derived.modes.wireserver, Mode::Enforce);

    s.status_version = StatusVersion::V2;
    s.enabled = false;
    admin.put_settings(VM_A, &s).await.unwrap();
    let (r, ks) = key_status(&host, ip_a()).await;
    let raw: serde_json::Value = r.json().unwrap();
    assert_eq!(raw["version"], "2.0");
    assert_eq!(raw["secureChannelEnabled"], false);
    assert_eq!(ks.derive().modes.imds, Mode::Disabled);

    s.enabled = true;
    admin.put_settings(VM_A, &s).await.unwrap();
    let (_, ks) = key_status(&host, ip_a()).await;
    let d = ks.derive();
    assert_eq!(
        (d.modes.wireserver, d.modes.imds, d.modes.hostga),
        (Mode::Enforce, Mode::Audit, Mode::Enforce)
    );
    assert_eq!(
        d.state.to_string(),
        "WireServer Enforce -  IMDS Audit - HostGA Enforce"
    );
    host.shutdown().await;
}
