//! Enablement (FAQ "How do I check if the feature is enabled?"): the VM model (GET VM) carries
//! `proxyAgentSettings`; the agent's instance view reports the state from inside the VM, `disabled` when off
//! (spec §2.4). And MSP switched on after the VM was created, with the agent already running: the key is
//! latched and enforced without a restart.

use msp_core::Mode;
use msp_core::status::state_keys;
use msp_demo::fabric::{Fabric, imds_url};
use msp_demo::process::RunAs;
use msp_host::audit::Decision;

use crate::support::{
    INSTANCE, disabled, fabric, last_audit, latched, require_root, state, view_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_enablement_shows_in_the_vm_model_and_the_instance_view() {
    require_root!("e2e_root_enablement_shows_in_the_vm_model_and_the_instance_view");
    let mut f = fabric(&[("vm1", Some(disabled()))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];

    // GET VM, raw: the model names the settings `proxyAgentSettings`.
    let raw = host
        .admin(|a| async move { a.call("GET", "/v1/vms/vm1", None).await })
        .await
        .unwrap();
    assert_eq!(raw.status, 200);
    let doc: serde_json::Value = raw.json().unwrap();
    assert_eq!(doc["proxyAgentSettings"]["enabled"], false, "{doc}");

    vm.start_agent().unwrap();
    let v = view_until(host, "vm1", "the disabled state", |v| {
        state(v, state_keys::SECURE_CHANNEL_STATE) == "disabled"
    })
    .await;
    assert!(
        v.key_latch_status.state(state_keys::KEY_GUID).is_none(),
        "no key while off: {v:?}"
    );

    // Off: not intercepted, served unsigned.
    let r = vm
        .fetch(RunAs::ROOT, true, &imds_url(INSTANCE))
        .await
        .unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), false), "{r:?}");
    assert_eq!(
        last_audit(host, "vm1", "imds").await.decision,
        Decision::Unchecked
    );

    // On, in Audit: both views follow without a restart.
    let view = host
        .edit_settings("vm1", |s| {
            s.enabled = true;
            s.wire_server.mode = Mode::Audit;
            s.imds.mode = Mode::Audit;
        })
        .await
        .unwrap();
    assert!(view.proxy_agent_settings.enabled);
    latched(host, "vm1", "WireServer Audit -  IMDS Audit - HostGA Audit").await;

    // Off again: the agent drops its key and says `disabled`.
    host.edit_settings("vm1", |s| s.enabled = false)
        .await
        .unwrap();
    let v = view_until(host, "vm1", "disabled again", |v| {
        state(v, state_keys::SECURE_CHANNEL_STATE) == "disabled"
    })
    .await;
    assert!(
        v.key_latch_status.state(state_keys::KEY_GUID).is_none(),
        "{v:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_enabled_after_creation_latches_and_enforces_without_a_restart() {
    require_root!("e2e_root_enabled_after_creation_latches_and_enforces_without_a_restart");
    let mut f = fabric(&[("vm1", Some(disabled()))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    vm.start_agent().unwrap();
    view_until(host, "vm1", "the disabled state", |v| {
        state(v, state_keys::SECURE_CHANNEL_STATE) == "disabled"
    })
    .await;
    let pid = vm.agent().unwrap().pid();

    host.edit_settings("vm1", |s| {
        s.enabled = true;
        s.wire_server.mode = Mode::Enforce;
        s.imds.mode = Mode::Enforce;
    })
    .await
    .unwrap();
    let guid = latched(
        host,
        "vm1",
        "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
    )
    .await;
    assert_eq!(vm.agent().unwrap().pid(), pid, "same agent process");
    let key_file = vm.key_dir().join(format!("{guid}.key"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{}", key_file.display());

    // Enforced: the intercepted workload is signed with the latched key; a bypass is refused.
    let r = vm
        .fetch(RunAs::ROOT, true, &imds_url(INSTANCE))
        .await
        .unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), true), "{r:?}");
    let rec = last_audit(host, "vm1", "imds").await;
    assert_eq!(
        (rec.decision, rec.key_guid.as_deref()),
        (Decision::Allowed, Some(guid.as_str()))
    );
    let r = vm
        .fetch(RunAs::ROOT, false, &imds_url(INSTANCE))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Some(401), Some("AUTH_MISSING")),
        "{r:?}"
    );
}
