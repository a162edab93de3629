//! Default-closed (FAQ "Where is the allowlist enforced?", DESIGN.md failure model, catalog B2, conf 97): if
//! the agent is down or bypassed, the host rejects every request, because the latched key does not endorse it.

use msp_core::Mode;
use msp_demo::fabric::{Fabric, imds_url, wireserver_url};
use msp_demo::process::RunAs;
use msp_host::audit::Decision;

use msp_core::status::{OverallState, state_keys};

use crate::support::{
    GOAL_STATE, INSTANCE, STATE_TIMEOUT, TOKEN, fabric, last_audit, latched, require_root,
    view_since, with_mode,
};

const ENFORCE_STATE: &str = "WireServer Enforce -  IMDS Enforce - HostGA Enforce";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_b2_agent_down_or_bypassed_the_host_rejects_every_request() {
    require_root!("e2e_root_b2_agent_down_or_bypassed_the_host_rejects_every_request");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];

    // No agent yet and no key latched: already closed, for every caller and endpoint.
    for user in [RunAs::ROOT, RunAs::nobody()] {
        for url in [
            imds_url(INSTANCE),
            imds_url(TOKEN),
            wireserver_url(GOAL_STATE),
        ] {
            let r = vm.fetch(user, true, &url).await.unwrap();
            assert_eq!(
                (r.status, r.reason.as_deref()),
                (Some(401), Some("AUTH_MISSING")),
                "{url} as {user:?} with no agent: {r:?}"
            );
        }
    }
    let rec = last_audit(host, "vm1", "wireserver").await;
    assert_eq!((rec.decision, rec.status), (Decision::Rejected, 401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_conf_097_agent_stopped_or_killed_nothing_unsigned_gets_through() {
    require_root!("e2e_root_conf_097_agent_stopped_or_killed_nothing_unsigned_gets_through");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    vm.start_agent().unwrap();
    let guid = latched(host, "vm1", ENFORCE_STATE).await;
    let instance = imds_url(INSTANCE);

    // Up: intercepted requests are signed; a process outside the intercepted cgroup is not, and is refused.
    let r = vm.fetch(RunAs::ROOT, true, &instance).await.unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), true), "{r:?}");
    for url in [instance.clone(), wireserver_url(GOAL_STATE)] {
        let r = vm.fetch(RunAs::ROOT, false, &url).await.unwrap();
        assert_eq!(
            (r.status, r.reason.as_deref(), r.via_agent),
            (Some(401), Some("AUTH_MISSING"), false),
            "bypass {url}: {r:?}"
        );
    }

    // Killed (redirectFailMode open: the hooks go with it) or stopped: the workloads' requests now go direct,
    // unsigned, and the host refuses every one.
    vm.kill_agent();
    for user in [RunAs::ROOT, RunAs::nobody()] {
        let r = vm.fetch(user, true, &instance).await.unwrap();
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (Some(401), Some("AUTH_MISSING")),
            "{r:?}"
        );
    }
    let rec = last_audit(host, "vm1", "imds").await;
    assert_eq!((rec.decision, rec.status), (Decision::Rejected, 401));

    // Restarted: serves again with its stored key (the host latched nothing new).
    let restarted = msp_host::audit::now_ms();
    vm.start_agent().unwrap();
    let v = view_since(
        host,
        "vm1",
        "the restarted agent",
        restarted,
        STATE_TIMEOUT,
        |v| v.status == OverallState::Success,
    )
    .await;
    assert_eq!(
        v.key_latch_status.state(state_keys::KEY_GUID),
        Some(guid.as_str())
    );
    assert_eq!(
        host.vm_view("vm1").await.unwrap().key.latched_guid,
        Some(guid.clone())
    );
    let r = vm.fetch(RunAs::ROOT, true, &instance).await.unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), true), "{r:?}");
    let rec = last_audit(host, "vm1", "imds").await;
    assert_eq!(
        (rec.decision, rec.key_guid.as_deref()),
        (Decision::Allowed, Some(guid.as_str()))
    );

    vm.stop_agent().await.unwrap();
    let r = vm.fetch(RunAs::ROOT, true, &instance).await.unwrap();
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Some(401), Some("AUTH_MISSING")),
        "after stop: {r:?}"
    );
}
