//! Default-closed (FAQ "Where is the allowlist enforced?", DESIGN.md failure model, catalog B2, conf 97): if
//! the agent is down or bypassed, the host rejects every request, because the latched key does not endorse it.

use msp_core::Mode;
use msp_demo::fabric::{Fabric, imds_url, wireserver_url};
use msp_demo::process::RunAs;
use msp_host::audit::Decision;

use crate::support::{GOAL_STATE, INSTANCE, TOKEN, fabric, last_audit, require_root, with_mode};

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
