//! Keys are bound to their VM (catalog B6, spec §12.3 step 2), unmapped sources get 403 `VM_UNKNOWN` on every
//! endpoint (spec §12.1), and resets rotate keys at once (catalog B7, spec §12.2).

mod support;

use msp_core::Endpoint;
use msp_host::audit::{AuditQuery, Decision};
use msp_host::client::Request;
use msp_host::vm::settings::ProxyAgentSettings;
use msp_host::{Host, HostConfig, VmConfig};
use support::*;

#[tokio::test]
async fn b6_a_valid_key_used_from_another_vms_address_is_key_unknown_and_the_audit_names_the_owner()
{
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let a = latch(&host, ip_a()).await;
    let _b = latch(&host, ip_b()).await;
    let stolen = a.sign(imds_request(&host), false);
    assert_eq!(send(host.imds, ip_a(), &stolen).await.status, 200);
    let r = send(host.imds, ip_b(), &stolen).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-msp-reason"), Some("KEY_UNKNOWN"));
    // The response never tells a foreign key from an unknown one; the audit log does.
    assert_eq!(r.text(), r#"{"error": "KEY_UNKNOWN"}"#);
    let rec = last_audit(&host, VM_B, "imds").await;
    assert_eq!(rec.reason.as_deref(), Some("KEY_UNKNOWN"));
    assert_eq!(rec.key_guid.as_deref(), Some(a.guid.as_str()));
    assert_eq!(rec.key_owner.as_deref(), Some(VM_A));
    assert_eq!(rec.source, "127.0.0.3");
    // Also on WireServer, and from the `dev` catch-all range.
    let ws = a.sign(goal_state_request(&host), true);
    let r = send(host.wireserver, "127.0.0.9".parse().unwrap(), &ws).await;
    assert_eq!(r.header("x-msp-reason"), Some("KEY_UNKNOWN"));
    host.shutdown().await;
}

#[tokio::test]
async fn unmapped_source_gets_403_vm_unknown_on_every_endpoint_secure_channel_included() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = HostConfig::test(dir.path());
    cfg.vms = vec![VmConfig {
        name: VM_A.into(),
        addresses: vec!["127.0.0.2".parse().unwrap()],
        settings: None,
    }];
    let host = Host::start(cfg).await.unwrap();
    let stranger = "127.0.0.5".parse().unwrap();
    let requests = [
        (
            host.wireserver,
            Request::new("GET", "/secure-channel/status"),
        ),
        (
            host.wireserver,
            Request::new("POST", "/secure-channel/key").body(msp_core::wire::KEY_REQUEST_BODY),
        ),
        (
            host.wireserver,
            Request::new("POST", "/machine/?comp=telemetrydata").body("x"),
        ),
        (
            host.wireserver,
            Request::new("GET", "/machine?comp=goalstate"),
        ),
        (host.hostga, Request::new("GET", "/health")),
        (
            host.imds,
            Request::new("GET", "/metadata/instance?api-version=2021-02-01")
                .header("Metadata", "true"),
        ),
    ];
    for (addr, req) in requests {
        let r = send(addr, stranger, &req).await;
        assert_eq!(r.status, 403, "{} {}", req.method, req.target);
        assert_eq!(r.header("x-msp-reason"), Some("VM_UNKNOWN"));
    }
    let recs = audit(
        &host,
        AuditQuery {
            reason: Some("VM_UNKNOWN".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(recs.len(), 6);
    assert!(
        recs.iter()
            .all(|r| r.vm.is_none() && r.source == "127.0.0.5" && r.decision == Decision::Rejected)
    );
    let (r, _) = key_status(&host, ip_a()).await;
    assert_eq!(r.status, 200, "the mapped VM is served");
    host.shutdown().await;
}

#[tokio::test]
async fn b7_reset_key_makes_the_old_key_unknown_at_once_and_the_agent_relatches() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let old = latch(&host, ip_a()).await;
    assert_eq!(
        send(host.imds, ip_a(), &old.sign(imds_request(&host), false))
            .await
            .status,
        200
    );
    let inc = host.admin().reset_key(VM_A).await.unwrap();
    assert_eq!(inc, 2);
    let r = send(host.imds, ip_a(), &old.sign(imds_request(&host), false)).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("KEY_UNKNOWN"))
    );
    let (_, ks) = key_status(&host, ip_a()).await;
    assert_eq!((ks.key_guid, ks.key_incarnation_id), (None, Some(2)));
    let new = latch(&host, ip_a()).await;
    assert_ne!(new.guid, old.guid);
    assert_eq!(
        send(host.imds, ip_a(), &new.sign(imds_request(&host), false))
            .await
            .status,
        200
    );
    // The restored old key stays refused.
    let r = send(host.imds, ip_a(), &old.sign(imds_request(&host), false)).await;
    assert_eq!(r.header("x-msp-reason"), Some("KEY_UNKNOWN"));
    host.shutdown().await;
}

#[tokio::test]
async fn raising_key_incarnation_in_settings_resets_lowering_is_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let admin = host.admin();
    let mut s = admin.vm_view(VM_A).await.unwrap().proxy_agent_settings;
    s.key_incarnation_id = 5;
    let view = admin.put_settings(VM_A, &s).await.unwrap();
    assert_eq!((view.key.incarnation_id, view.key.latched_guid), (5, None));
    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(r.header("x-msp-reason"), Some("KEY_UNKNOWN"));
    let (_, key) = acquire(&host, ip_a()).await;
    assert_eq!(key.unwrap().incarnation_id, Some(5));
    s.key_incarnation_id = 4;
    let err = admin.put_settings(VM_A, &s).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("keyIncarnationId"), "{err}");
    host.shutdown().await;
}

#[tokio::test]
async fn msp_disabled_serves_everything_and_reports_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let s = ProxyAgentSettings {
        enabled: false,
        ..Default::default()
    };
    host.admin().put_settings(VM_A, &s).await.unwrap();
    let r = send(host.imds, ip_a(), &imds_request(&host)).await;
    assert_eq!(r.status, 200);
    let r = send(host.wireserver, ip_a(), &goal_state_request(&host)).await;
    assert_eq!(r.status, 200);
    let (_, ks) = key_status(&host, ip_a()).await;
    assert_eq!(ks.derive().state.to_string(), "disabled");
    // HostGAPlugin has no mode of its own.
    let err = host
        .admin()
        .set_mode(VM_A, Endpoint::HostGaPlugin, msp_core::Mode::Audit)
        .await;
    assert!(err.is_err());
    host.shutdown().await;
}
