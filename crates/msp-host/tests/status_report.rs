//! Status reports to the host (spec §9.3, §12.1): instance view and the provisioned rule; conformance item 99
//! (host side).

mod support;

use msp_core::Endpoint;
use msp_core::Mode;
use msp_core::status::{
    AggregateStatus, ModuleState, ModuleStatus, OverallState, ProxyAgentStatus,
};
use msp_host::client::Request;
use support::*;

fn report(overall: OverallState) -> Vec<u8> {
    let running = ModuleStatus::new(ModuleState::Running, "ok - 1");
    let mut status = ProxyAgentStatus {
        version: "1.0.0".into(),
        status: overall,
        monitor_status: running.clone(),
        ebpf_program_status: running.clone(),
        proxy_listener_status: running,
        proxy_connections_count: 42,
        ..Default::default()
    };
    status.key_latch_status.status = ModuleState::Running;
    let doc = AggregateStatus {
        timestamp: "2025-04-23T12:00:00.123".into(),
        proxy_agent_status: status,
        ..Default::default()
    };
    serde_json::to_vec(&doc).unwrap()
}

fn put_status(body: Vec<u8>) -> Request {
    Request::new("PUT", "/machine?comp=proxyagentstatus")
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body)
}

#[tokio::test]
async fn conf_099_signed_success_report_is_the_instance_view_and_provisions() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    // Before a key is latched: an unsigned report is refused in enforce, nothing is provisioned.
    let r = send(
        host.wireserver,
        ip_a(),
        &put_status(report(OverallState::Success)),
    )
    .await;
    assert_eq!(r.status, 401);
    let view = admin.vm_view(VM_A).await.unwrap();
    assert!(!view.provisioned && view.instance_view.is_none());

    let agent = latch(&host, ip_a()).await;
    assert!(
        !admin.vm_view(VM_A).await.unwrap().provisioned,
        "latched but no report yet"
    );
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(put_status(report(OverallState::Error)), true),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let view = admin.vm_view(VM_A).await.unwrap();
    assert!(!view.provisioned, "an ERROR report does not provision");
    let iv = view.instance_view.unwrap();
    assert_eq!(iv.proxy_agent_status["status"], "ERROR");
    assert_eq!(iv.signed_by.as_deref(), Some(agent.guid.as_str()));

    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(put_status(report(OverallState::Success)), true),
    )
    .await;
    assert_eq!(r.status, 200);
    let view = admin.vm_view(VM_A).await.unwrap();
    assert!(view.provisioned);
    let iv = view.instance_view.unwrap();
    assert_eq!(iv.proxy_agent_status["status"], "SUCCESS");
    assert_eq!(iv.proxy_agent_status["proxyConnectionsCount"], 42);

    // A reset un-provisions until a report signed with the new key arrives.
    admin.reset_key(VM_A).await.unwrap();
    assert!(!admin.vm_view(VM_A).await.unwrap().provisioned);
    let agent = latch(&host, ip_a()).await;
    send(
        host.wireserver,
        ip_a(),
        &agent.sign(put_status(report(OverallState::Success)), true),
    )
    .await;
    assert!(admin.vm_view(VM_A).await.unwrap().provisioned);
    host.shutdown().await;
}

#[tokio::test]
async fn unsigned_report_in_audit_is_kept_but_never_provisions() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    let _agent = latch(&host, ip_a()).await;
    admin
        .set_mode(VM_A, Endpoint::WireServer, Mode::Audit)
        .await
        .unwrap();
    let r = send(
        host.wireserver,
        ip_a(),
        &put_status(report(OverallState::Success)),
    )
    .await;
    assert_eq!(r.status, 200);
    let view = admin.vm_view(VM_A).await.unwrap();
    assert!(!view.provisioned);
    let iv = view.instance_view.unwrap();
    assert_eq!(iv.signed_by, None);
    let rec = last_audit(&host, VM_A, "wireserver").await;
    assert_eq!(rec.reason.as_deref(), Some("AUTH_MISSING"));
    host.shutdown().await;
}

#[tokio::test]
async fn non_root_or_malformed_reports_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(put_status(report(OverallState::Success)), false),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (403, Some("NOT_ELEVATED"))
    );
    let r = send(
        host.wireserver,
        ip_a(),
        &agent.sign(put_status(b"{\"nope\": 1}".to_vec()), true),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (400, Some("BAD_REQUEST"))
    );
    assert!(
        host.admin()
            .vm_view(VM_A)
            .await
            .unwrap()
            .instance_view
            .is_none()
    );
    host.shutdown().await;
}
