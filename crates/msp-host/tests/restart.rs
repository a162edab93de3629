//! A host restart keeps keys, VM models, profiles and the audit log (catalog E6); the store refuses unsafe or
//! corrupt files with a clear error.

mod support;

use std::os::unix::fs::PermissionsExt;

use msp_core::{Endpoint, Mode};
use msp_host::audit::AuditQuery;
use msp_host::vm::settings::ProfileRef;
use msp_host::{Host, HostError};
use support::*;

const PROFILE: &str = r#"{"defaultAccess": "deny", "id": "imds-rules-1", "rules": {
  "privileges": [{"name": "instance", "path": "/metadata/instance"}],
  "roles": [{"name": "readers", "privileges": ["instance"]}],
  "identities": [{"name": "root", "userName": "root"}],
  "roleAssignments": [{"role": "readers", "identities": ["root"]}]}}"#;

#[tokio::test]
async fn e6_restart_keeps_keys_models_profiles_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    let agent = latch(&host, ip_a()).await;
    admin.put_profile("imds-rules", PROFILE).await.unwrap();
    let mut s = admin.vm_view(VM_A).await.unwrap().proxy_agent_settings;
    s.imds.mode = Mode::Audit;
    s.imds.profile = Some(ProfileRef {
        name: "imds-rules".into(),
        version: None,
    });
    admin.put_settings(VM_A, &s).await.unwrap();
    assert_eq!(
        send(host.imds, ip_a(), &agent.sign(imds_request(&host), false))
            .await
            .status,
        200
    );
    let before = admin.vm_view(VM_A).await.unwrap();
    let audit_before = audit(
        &host,
        AuditQuery {
            vm: Some(VM_A.into()),
            ..Default::default()
        },
    )
    .await;
    host.shutdown().await;

    let host = start(dir.path()).await;
    let admin = host.admin();
    let after = admin.vm_view(VM_A).await.unwrap();
    assert_eq!(after, before, "VM model, key facts survive");
    // The agent keeps working with its latched key.
    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        last_audit(&host, VM_A, "imds").await.decision,
        msp_host::audit::Decision::Allowed
    );
    let (_, ks) = key_status(&host, ip_a()).await;
    assert_eq!(ks.key_guid.as_deref(), Some(agent.guid.as_str()));
    let item = ks.authorization_rules.unwrap().imds.unwrap();
    let item: serde_json::Value = serde_json::from_str(item.get()).unwrap();
    assert_eq!(
        (item["id"].as_str(), item["mode"].as_str()),
        (Some("imds-rules-1"), Some("audit"))
    );
    let audit_after = audit(
        &host,
        AuditQuery {
            vm: Some(VM_A.into()),
            limit: Some(1000),
            ..Default::default()
        },
    )
    .await;
    for rec in &audit_before {
        assert!(
            audit_after.contains(rec),
            "audit record {} survived",
            rec.seq
        );
    }
    // A second acquire is still refused: the latch survived.
    let (r, _) = acquire(&host, ip_a()).await;
    assert_eq!(r.status, 409);
    admin
        .set_mode(VM_A, Endpoint::Imds, Mode::Enforce)
        .await
        .unwrap();
    host.shutdown().await;
}

#[tokio::test]
async fn store_and_token_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let host = Host::start(cfg.clone()).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cfg.store_path), 0o600);
    assert_eq!(mode(cfg.store_path.parent().unwrap()), 0o700);
    assert_eq!(mode(&cfg.token_file()), 0o600);
    host.shutdown().await;
}

#[tokio::test]
async fn corrupt_or_group_readable_store_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store_dir = cfg.store_path.parent().unwrap();
    std::fs::create_dir(store_dir).unwrap();
    std::fs::set_permissions(store_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        &cfg.store_path,
        b"this is not a database, it is a text file of some length......",
    )
    .unwrap();
    std::fs::set_permissions(&cfg.store_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = Host::start(cfg.clone()).await.err().expect("refused");
    let text = err.to_string();
    assert!(matches!(err, HostError::Store(_)), "{text}");
    assert!(
        text.contains(&cfg.store_path.display().to_string()),
        "{text}"
    );

    std::fs::remove_file(&cfg.store_path).unwrap();
    std::fs::set_permissions(store_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let text = Host::start(cfg.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        text.contains("mode 750") && text.contains(&store_dir.display().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn unbindable_listener_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    let mut cfg = config(other.path());
    cfg.imds_listen = first.imds;
    let text = Host::start(cfg)
        .await
        .err()
        .expect("port in use")
        .to_string();
    assert!(
        text.contains("IMDS") && text.contains(&first.imds.to_string()),
        "{text}"
    );
    first.shutdown().await;
}
