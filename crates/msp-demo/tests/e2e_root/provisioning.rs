//! Provisioning (FAQ "Can I provision a new Linux VM with MSP enabled without including the GPA?", spec §12.1,
//! conf 99): a VM created with MSP enabled is reported provisioned only after the secure channel is
//! established; without the agent, never.

use msp_core::Mode;
use msp_core::status::state_keys;
use msp_demo::fabric::{Fabric, WIRESERVER_IP};
use msp_demo::wait;
use msp_host::client::{self, Request};

use crate::support::{STATE_TIMEOUT, fabric, latched, require_root, with_mode};

const ENFORCE_STATE: &str = "WireServer Enforce -  IMDS Enforce - HostGA Enforce";

/// A status report claiming full health, as a process in the VM could forge it.
fn forged_success_report() -> Vec<u8> {
    let module = serde_json::json!({"status": "RUNNING", "message": "forged"});
    serde_json::json!({
        "timestamp": "2025-04-23T12:00:00.000",
        "proxyAgentStatus": {
            "version": "1.0.0", "status": "SUCCESS",
            "monitorStatus": module, "ebpfProgramStatus": module, "proxyListenerStatus": module,
            "telemetryLoggerStatus": module, "proxyConnectionsCount": 0,
            "keyLatchStatus": {"status": "RUNNING", "message": "forged", "states": {}}
        },
        "proxyConnectionSummary": [], "failedAuthenticateSummary": []
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_conf_099_provisioned_only_once_the_secure_channel_is_established() {
    require_root!("e2e_root_conf_099_provisioned_only_once_the_secure_channel_is_established");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];

    let view = host.vm_view("vm1").await.unwrap();
    assert!(view.proxy_agent_settings.enabled);
    assert_eq!(
        (view.provisioned, view.key.latched_guid, view.instance_view),
        (false, None, None),
        "a new VM is not provisioned"
    );

    // Without the agent nothing provisions it: a forged SUCCESS report from inside the VM is unsigned and
    // refused, and the VM stays unprovisioned.
    let rt = vm.runtime().unwrap();
    let report = Request::new("PUT", "/machine?comp=proxyagentstatus")
        .header("Host", &WIRESERVER_IP.to_string())
        .header("Content-Type", "application/json")
        .body(forged_success_report());
    let wireserver = std::net::SocketAddr::from((WIRESERVER_IP, 80));
    let r = rt
        .run(async move { client::send(wireserver, None, &report).await })
        .await
        .unwrap()
        .expect("WireServer answers");
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("AUTH_MISSING"))
    );
    let view = host.vm_view("vm1").await.unwrap();
    assert!(
        !view.provisioned && view.instance_view.is_none(),
        "{view:?}"
    );

    // With the agent: the key is latched, a SUCCESS report signed with it arrives, and only then the VM is
    // provisioned.
    vm.start_agent().unwrap();
    let guid = latched(host, "vm1", ENFORCE_STATE).await;
    let view = wait::until("the VM to be provisioned", STATE_TIMEOUT, || async {
        host.vm_view("vm1").await.ok().filter(|v| v.provisioned)
    })
    .await
    .unwrap();
    let instance = view.instance_view.expect("instance view");
    assert_eq!(instance.signed_by.as_deref(), Some(guid.as_str()));
    assert_eq!(
        instance.proxy_agent_status["keyLatchStatus"]["states"][state_keys::KEY_GUID],
        guid.as_str()
    );
    assert!(vm.key_dir().join("provisioned.tag").is_file());
}
