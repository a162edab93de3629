//! Shared steps of the scenarios: building a fabric, waiting for the agent's instance view, reading audit
//! records.

use std::path::Path;
use std::time::Duration;

use msp_core::status::{OverallState, ProxyAgentStatus, state_keys};
use msp_demo::fabric::{Fabric, NsHost, VmSpec};
use msp_demo::wait;
use msp_host::audit::{AuditQuery, AuditRecord};
use msp_host::vm::settings::ProxyAgentSettings;

/// Upper bound on any state the agent or host should reach (latch, report, rules refresh).
pub(crate) const STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// The token path the allowlists protect.
pub(crate) const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
/// An ordinary IMDS read.
pub(crate) const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";
/// A WireServer read (root only, spec §4.5).
pub(crate) const GOAL_STATE: &str = "/machine?comp=goalstate";

pub(crate) fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_msp-demo"))
}

/// Settings with MSP off.
pub(crate) fn disabled() -> ProxyAgentSettings {
    ProxyAgentSettings {
        enabled: false,
        ..ProxyAgentSettings::default()
    }
}

/// Settings with MSP on and both endpoints in `mode`.
pub(crate) fn with_mode(mode: msp_core::Mode) -> ProxyAgentSettings {
    let mut s = ProxyAgentSettings::default();
    s.wire_server.mode = mode;
    s.imds.mode = mode;
    s
}

/// A fabric with one VM per `(name, settings)`.
pub(crate) async fn fabric(vms: &[(&str, Option<ProxyAgentSettings>)]) -> Fabric {
    let specs: Vec<VmSpec<'_>> = vms
        .iter()
        .map(|(name, settings)| VmSpec {
            name,
            settings: settings.clone(),
        })
        .collect();
    Fabric::build(exe(), &specs).await.expect("fabric builds")
}

/// The instance view of `vm` as the host shows it, once it satisfies `ok`.
pub(crate) async fn view_until(
    host: &NsHost,
    vm: &str,
    what: &str,
    ok: impl Fn(&ProxyAgentStatus) -> bool,
) -> ProxyAgentStatus {
    view_until_within(host, vm, what, STATE_TIMEOUT, ok).await
}

/// [`view_until`] with another bound.
pub(crate) async fn view_until_within(
    host: &NsHost,
    vm: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&ProxyAgentStatus) -> bool,
) -> ProxyAgentStatus {
    view_since(host, vm, what, 0, limit, ok).await
}

/// [`view_until_within`], counting only reports the host received at or after `since_ms` (unix ms).
pub(crate) async fn view_since(
    host: &NsHost,
    vm: &str,
    what: &str,
    since_ms: u64,
    limit: Duration,
    ok: impl Fn(&ProxyAgentStatus) -> bool,
) -> ProxyAgentStatus {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(v) = instance_view(host, vm, since_ms).await {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last instance view of {vm}: {last:#?}"
        );
        tokio::time::sleep(wait::POLL_EVERY).await;
    }
}

/// The instance view of `vm` now, if the agent has reported one at or after `since_ms`.
pub(crate) async fn instance_view(
    host: &NsHost,
    vm: &str,
    since_ms: u64,
) -> Option<ProxyAgentStatus> {
    let view = host
        .vm_view(vm)
        .await
        .expect("GET VM")
        .instance_view
        .filter(|v| v.received_ms >= since_ms)?;
    serde_json::from_value(view.proxy_agent_status).ok()
}

pub(crate) fn state(v: &ProxyAgentStatus, key: &str) -> String {
    v.key_latch_status.state(key).unwrap_or_default().to_owned()
}

/// Waits until `vm`'s agent reports a latched key in `expected_state` with overall SUCCESS; returns the guid,
/// checked against the host's latched guid.
pub(crate) async fn latched(host: &NsHost, vm: &str, expected_state: &str) -> String {
    let v = view_until(host, vm, "a latched key", |v| {
        state(v, state_keys::SECURE_CHANNEL_STATE) == expected_state
            && !state(v, state_keys::KEY_GUID).is_empty()
            && v.status == OverallState::Success
    })
    .await;
    let guid = state(&v, state_keys::KEY_GUID);
    let host_guid = host.vm_view(vm).await.unwrap().key.latched_guid;
    assert_eq!(
        host_guid.as_deref(),
        Some(guid.as_str()),
        "host and agent agree on the key"
    );
    guid
}

/// The host's newest IMDS (or `endpoint`) audit record of `vm`.
pub(crate) async fn last_audit(host: &NsHost, vm: &str, endpoint: &str) -> AuditRecord {
    host.audit(AuditQuery {
        vm: Some(vm.to_owned()),
        endpoint: Some(endpoint.to_owned()),
        limit: Some(1),
        ..AuditQuery::default()
    })
    .await
    .expect("audit query")
    .into_iter()
    .next()
    .expect("an audit record")
}

/// Skips (prints why) unless root tests can run; fails under `CI=true`.
macro_rules! require_root {
    ($name:expr) => {
        if !msp_demo::prereq::root_ready($name) {
            return;
        }
    };
}
pub(crate) use require_root;
