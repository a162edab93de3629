//! Audit → Enforce (FAQ "Why is this feature opt-in?"): an owner audits first, then enforces; the switch must
//! not break the workloads the allowlist allows, while the ones it denies go from recorded to refused.

use std::time::Duration;

use msp_core::Mode;
use msp_core::status::state_keys;
use msp_demo::fabric::{Fabric, imds_url};
use msp_demo::process::RunAs;
use msp_demo::wait;
use msp_host::vm::settings::ProfileRef;

use crate::support::{
    STATE_TIMEOUT, TOKEN, fabric, latched, require_root, state, view_until, with_mode,
};

const ROOT_ONLY: &str = r#"{"defaultAccess": "allow", "id": "root-tokens", "rules": {
  "privileges": [{"name": "token", "path": "/metadata/identity/oauth2/token"}],
  "roles": [{"name": "read-tokens", "privileges": ["token"]}],
  "identities": [{"name": "root", "userName": "root"}],
  "roleAssignments": [{"role": "read-tokens", "identities": ["root"]}]}}"#;
/// Requests of the allowed workload that span the switch, and their spacing.
const REQUESTS: u32 = 80;
const SPACING: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_audit_to_enforce_keeps_allowed_workloads_working() {
    require_root!("e2e_root_audit_to_enforce_keeps_allowed_workloads_working");
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Audit)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    host.put_profile("root-tokens", ROOT_ONLY).await.unwrap();
    host.edit_settings("vm1", |s| {
        s.imds.profile = Some(ProfileRef {
            name: "root-tokens".into(),
            version: None,
        })
    })
    .await
    .unwrap();
    vm.start_agent().unwrap();
    latched(host, "vm1", "WireServer Audit -  IMDS Audit - HostGA Audit").await;
    view_until(host, "vm1", "the allowlist", |v| {
        state(v, state_keys::IMDS_RULE_ID) == "root-tokens"
    })
    .await;

    // Audit: the denied caller is served, and the would-be denial is recorded with Enforce's status.
    let nobody = RunAs::nobody();
    let token = imds_url(TOKEN);
    let r = vm.fetch(nobody, true, &token).await.unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), true), "audit: {r:?}");
    let name = nobody.name();
    let entry = wait::until("the audit denial in status.json", STATE_TIMEOUT, || async {
        vm.agent()?
            .status()?
            .failed_authenticate_summary
            .into_iter()
            .find(|i| i.user_name == name)
    })
    .await
    .unwrap();
    assert_eq!(entry.response_status, "403 Forbidden");

    // Switch while the allowed workload runs: every one of its requests succeeds, through the agent.
    let vm = &*vm;
    let (results, switched_at) = tokio::join!(
        vm.fetch_many(RunAs::ROOT, true, &token, REQUESTS, SPACING),
        async {
            tokio::time::sleep(SPACING * 10).await;
            host.edit_settings("vm1", |s| {
                s.wire_server.mode = Mode::Enforce;
                s.imds.mode = Mode::Enforce;
            })
            .await
            .unwrap();
            view_until(host, "vm1", "Enforce", |v| {
                state(v, state_keys::SECURE_CHANNEL_STATE)
                    == "WireServer Enforce -  IMDS Enforce - HostGA Enforce"
            })
            .await;
            tokio::time::Instant::now()
        }
    );
    let finished_at = tokio::time::Instant::now();
    let results = results.unwrap();
    let broken: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != Some(200) || !r.via_agent)
        .collect();
    assert!(
        broken.is_empty(),
        "allowed requests broken by the switch: {broken:?}"
    );
    assert!(
        switched_at < finished_at,
        "the switch must happen while the workload runs"
    );

    // Enforce: the denied caller is refused by the agent.
    let r = vm.fetch(nobody, true, &token).await.unwrap();
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Some(403), Some("RULE_DENY")),
        "{r:?}"
    );
}
