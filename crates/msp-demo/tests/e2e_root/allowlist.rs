//! The allowlist (FAQ "How is the allowlist (policy) provisioned?" and "Where is the allowlist enforced?"):
//! defined in the VM model on the host, fetched by the agent periodically, enforced by the agent, and not
//! changeable from inside the VM (spec §4.7, catalog D7, conf 50–51).

use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use msp_core::Mode;
use msp_core::status::state_keys;
use msp_demo::fabric::{FAST_INTERVAL_SECS, Fabric, imds_url};
use msp_demo::process::RunAs;
use msp_host::vm::settings::ProfileRef;

use crate::support::{
    INSTANCE, TOKEN, fabric, latched, require_root, state, view_until, with_mode,
};

/// Only root may read tokens; every other path stays open.
fn profile(id: &str, token_readers: &[&str]) -> String {
    let identities: Vec<serde_json::Value> = token_readers
        .iter()
        .map(|u| serde_json::json!({"name": format!("user-{u}"), "userName": u}))
        .collect();
    let names: Vec<String> = token_readers.iter().map(|u| format!("user-{u}")).collect();
    serde_json::json!({"defaultAccess": "allow", "id": id, "rules": {
        "privileges": [{"name": "token", "path": "/metadata/identity/oauth2/token"}],
        "roles": [{"name": "read-tokens", "privileges": ["token"]}],
        "identities": identities,
        "roleAssignments": [{"role": "read-tokens", "identities": names}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_root_d7_allowlist_comes_from_the_host_is_refreshed_and_cannot_be_changed_in_the_vm() {
    require_root!(
        "e2e_root_d7_allowlist_comes_from_the_host_is_refreshed_and_cannot_be_changed_in_the_vm"
    );
    let mut f = fabric(&[("vm1", Some(with_mode(Mode::Enforce)))]).await;
    let Fabric { vms, host, .. } = &mut f;
    let vm = &mut vms[0];
    host.put_profile("tokens", &profile("tokens-1", &["root"]))
        .await
        .unwrap();
    host.edit_settings("vm1", |s| {
        s.imds.profile = Some(ProfileRef {
            name: "tokens".into(),
            version: None,
        })
    })
    .await
    .unwrap();
    vm.start_agent().unwrap();
    latched(
        host,
        "vm1",
        "WireServer Enforce -  IMDS Enforce - HostGA Enforce",
    )
    .await;
    view_until(host, "vm1", "the host's allowlist", |v| {
        state(v, state_keys::IMDS_RULE_ID) == "tokens-1"
    })
    .await;
    let nobody = RunAs::nobody();
    let token = imds_url(TOKEN);
    let r = vm.fetch(RunAs::ROOT, true, &token).await.unwrap();
    assert_eq!((r.status, r.via_agent), (Some(200), true), "root: {r:?}");
    let r = vm.fetch(nobody, true, &token).await.unwrap();
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Some(403), Some("RULE_DENY")),
        "nobody: {r:?}"
    );
    let r = vm.fetch(nobody, true, &imds_url(INSTANCE)).await.unwrap();
    assert_eq!(r.status, Some(200), "other paths stay open: {r:?}");

    // Root in the VM writes a permissive local rules file that also claims Audit. The host's item does not
    // opt into local files, so it changes nothing (spec §4.7; a local `mode` never counts, catalog D7).
    let local = vm.rules_dir().join("IMDS_Rules.json");
    let doc = serde_json::json!({"defaultAccess": "allow", "mode": "audit", "id": "local",
        "rules": {"privileges": [], "roles": [], "identities": [], "roleAssignments": []}});
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&local)
        .and_then(|mut file| std::io::Write::write_all(&mut file, doc.to_string().as_bytes()))
        .unwrap();
    // Nothing to wait for but time: three poll rounds, in which a honoured file would have been read.
    tokio::time::sleep(Duration::from_secs(3 * FAST_INTERVAL_SECS)).await;
    let r = vm.fetch(nobody, true, &token).await.unwrap();
    assert_eq!(
        (r.status, r.reason.as_deref()),
        (Some(403), Some("RULE_DENY")),
        "after local file: {r:?}"
    );

    // The owner changes the allowlist on the host: the agent picks it up at its next poll.
    host.put_profile("tokens", &profile("tokens-2", &["root", &nobody.name()]))
        .await
        .unwrap();
    view_until(host, "vm1", "the refreshed allowlist", |v| {
        state(v, state_keys::IMDS_RULE_ID) == "tokens-2"
    })
    .await;
    let r = vm.fetch(nobody, true, &token).await.unwrap();
    assert_eq!(
        (r.status, r.via_agent),
        (Some(200), true),
        "nobody after the refresh: {r:?}"
    );
}
