//! The admin API: bearer-token auth, VM model and settings, versioned profiles with field-naming validation,
//! audit queries.

mod support;

use msp_host::AdminClient;
use msp_host::audit::{AuditQuery, Decision};
use msp_host::vm::settings::ProfileRef;
use support::*;

const GOOD: &str = r#"{"defaultAccess": "allow", "id": "ws-rules-3", "rules": {
  "privileges": [{"name": "goalstate", "path": "/machine", "queryParameters": {"comp": "goalstate"}}],
  "roles": [{"name": "r", "privileges": ["goalstate"]}],
  "identities": [{"name": "root", "userName": "root"}],
  "roleAssignments": [{"role": "r", "identities": ["root"]}]}}"#;

#[tokio::test]
async fn admin_requires_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let good = host.admin();
    for path in ["/v1/vms", "/v1/vms/vm-a", "/v1/audit", "/v1/profiles/x"] {
        let wrong = AdminClient::new(host.admin_addr, "not-the-token-at-all");
        let r = wrong.call("GET", path, None).await.unwrap();
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let bare = msp_host::client::send(
            host.admin_addr,
            None,
            &msp_host::client::Request::new("GET", path).header("Host", "x"),
        )
        .await
        .unwrap();
        assert_eq!(bare.status, 401, "{path} without a token");
    }
    let wrong = AdminClient::new(host.admin_addr, "not-the-token-at-all");
    let r = wrong
        .call("POST", "/v1/vms/vm-a/reset-key", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        good.vm_view(VM_A).await.unwrap().key.incarnation_id,
        1,
        "nothing reset"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn profiles_are_versioned_and_invalid_documents_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    let v1 = admin.put_profile("ws", GOOD).await.unwrap();
    assert_eq!(v1.version, 1);
    let v2 = admin
        .put_profile("ws", &GOOD.replace("ws-rules-3", "ws-rules-4"))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);

    let bad = [
        (r#"{"defaultAccess": "maybe", "id": "x"}"#, "defaultAccess"),
        (r#"{"defaultAccess": "allow"}"#, "id"),
        (
            r#"{"defaultAccess": "allow", "id": "x", "rules": {"roles": [{"name": "r", "privileges": ["missing"]}]}}"#,
            "rules.roles[0].privileges[0]",
        ),
        (
            r#"{"defaultAccess": "allow", "id": "x", "rules": {"identities": [{"name": "nobody"}]}}"#,
            "rules.identities[0]",
        ),
        ("not json", ""),
    ];
    for (doc, field) in bad {
        let r = admin
            .call("PUT", "/v1/profiles/ws", Some(doc.as_bytes()))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{doc}");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["error"], "INVALID_DOCUMENT");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{doc}: {fields:?}");
    }
    // The previous version stays the latest.
    let r = admin.call("GET", "/v1/profiles/ws", None).await.unwrap();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["versions"].as_array().unwrap().len(), 2);
    let r = admin
        .call("GET", "/v1/profiles/ws/versions/2", None)
        .await
        .unwrap();
    let p: serde_json::Value = r.json().unwrap();
    assert_eq!(p["document"]["id"], "ws-rules-4");

    // Attach version 1 explicitly, then latest; the served item follows.
    let mut s = admin.vm_view(VM_A).await.unwrap().proxy_agent_settings;
    s.wire_server.profile = Some(ProfileRef {
        name: "ws".into(),
        version: Some(1),
    });
    admin.put_settings(VM_A, &s).await.unwrap();
    let (_, ks) = key_status(&host, ip_a()).await;
    let rules = ks.authorization_rules.unwrap();
    let ws: serde_json::Value = serde_json::from_str(rules.wireserver.unwrap().get()).unwrap();
    assert_eq!(
        (ws["id"].as_str(), ws["mode"].as_str()),
        (Some("ws-rules-3"), Some("enforce"))
    );
    let hostga: serde_json::Value = serde_json::from_str(rules.hostga.unwrap().get()).unwrap();
    assert_eq!(
        hostga["id"], "ws-rules-3",
        "HostGA repeats the WireServer item"
    );
    s.wire_server.profile = Some(ProfileRef {
        name: "ws".into(),
        version: None,
    });
    admin.put_settings(VM_A, &s).await.unwrap();
    let (_, ks) = key_status(&host, ip_a()).await;
    let ws: serde_json::Value =
        serde_json::from_str(ks.authorization_rules.unwrap().wireserver.unwrap().get()).unwrap();
    assert_eq!(ws["id"], "ws-rules-4");
    host.shutdown().await;
}

#[tokio::test]
async fn invalid_settings_and_vms_are_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    let cases = [
        (
            "/v1/vms/vm-a/settings",
            r#"{"imds": {"mode": "strict"}}"#,
            "imds.mode",
        ),
        (
            "/v1/vms/vm-a/settings",
            r#"{"imds": {"profile": {"name": "nope"}}}"#,
            "imds.profile",
        ),
        (
            "/v1/vms/vm-a/settings",
            r#"{"statusVersion": "v1", "wireServer": {"mode": "audit"}}"#,
            "statusVersion",
        ),
        ("/v1/vms/vm-a/settings", r#"{"enabeld": true}"#, "enabeld"),
        (
            "/v1/vms/vm-c",
            r#"{"addresses": ["not-an-ip"]}"#,
            "addresses[0]",
        ),
        ("/v1/vms/vm-c", r#"{"addresses": ["127.0.0.2"]}"#, ""),
        (
            "/v1/vms/bad%20name",
            r#"{"addresses": ["127.0.0.7"]}"#,
            "name",
        ),
    ];
    for (path, doc, field) in cases {
        let r = admin.call("PUT", path, Some(doc.as_bytes())).await.unwrap();
        if field.is_empty() {
            assert_eq!(r.status, 409, "{path} {doc}: address conflict");
            continue;
        }
        assert_eq!(r.status, 400, "{path} {doc}: {}", r.text());
        let body: serde_json::Value = r.json().unwrap();
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{path} {doc}: {fields:?}");
    }
    assert_eq!(
        admin.vm_view(VM_A).await.unwrap().proxy_agent_settings,
        Default::default()
    );
    // A new VM through the API is served at once.
    admin.put_vm("vm-c", &["127.0.0.7"], None).await.unwrap();
    let (r, _) = key_status(&host, "127.0.0.7".parse().unwrap()).await;
    assert_eq!(r.status, 200);
    let rec = last_audit(&host, "vm-c", "wireserver").await;
    assert_eq!(rec.decision, Decision::Allowed);
    let r = admin.call("GET", "/v1/vms/nope", None).await.unwrap();
    assert_eq!(r.status, 404);
    host.shutdown().await;
}

#[tokio::test]
async fn audit_queries_filter_by_vm_endpoint_decision_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let t0 = msp_host_now();
    send(host.imds, ip_a(), &imds_request(&host)).await;
    send(host.imds, ip_b(), &imds_request(&host)).await;
    send(host.wireserver, ip_a(), &goal_state_request(&host)).await;
    let q = |vm: Option<&str>, endpoint: Option<&str>, decision: Option<Decision>| AuditQuery {
        vm: vm.map(str::to_owned),
        endpoint: endpoint.map(str::to_owned),
        decision,
        since_ms: Some(t0),
        ..Default::default()
    };
    assert_eq!(audit(&host, q(Some(VM_A), None, None)).await.len(), 2);
    assert_eq!(
        audit(&host, q(Some(VM_A), Some("imds"), None)).await.len(),
        1
    );
    assert_eq!(
        audit(&host, q(None, Some("imds"), Some(Decision::Rejected)))
            .await
            .len(),
        2
    );
    assert_eq!(
        audit(&host, q(None, None, Some(Decision::Allowed)))
            .await
            .len(),
        0
    );
    let future = AuditQuery {
        since_ms: Some(t0 + 3_600_000),
        ..Default::default()
    };
    assert!(audit(&host, future).await.is_empty());
    let r = host
        .admin()
        .call("GET", "/v1/audit?decision=maybe", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    host.shutdown().await;
}

fn msp_host_now() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        - 1
}
