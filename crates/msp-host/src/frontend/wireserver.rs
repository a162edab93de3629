//! WireServer: the secure-channel API (spec §12.2) and the small fabric surface an agent uses — versions, goal
//! state and its SharedConfig, telemetry (exempt), `vmagentlog` (exempt) and status reports (spec §9.3).
//!
//! The secure-channel API is answered before request verification (it is how a key comes to exist); the
//! attestation is verified with the pending key it names. This module must never return key bytes except in
//! the answer to `POST /secure-channel/key`, and never a latched key.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use msp_core::Reason;
use msp_core::sign::{DATE_HEADER, KeyGuid, SCHEME, format_host_date};
use msp_core::status::{AggregateStatus, OverallState};
use msp_core::wire::{Key, SecretString};
use serde_json::Value;

use super::response::{self, Resp};
use super::{Call, Shared, verify_with};
use crate::audit::{AuditRecord, Decision};
use crate::registry::{IssueError, LatchError};
use crate::vm::Vm;

const STATUS_PATH: &str = "/secure-channel/status";
const KEY_PATH: &str = "/secure-channel/key";
const ATTEST_SUFFIX: &str = "/key-attestation";
/// WireServer protocol versions this host answers with.
const VERSIONS_XML: &str = concat!(
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Versions><Preferred><Version>2015-04-05</Version>",
    "</Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version>",
    "<Version>2012-09-15</Version><Version>2012-05-15</Version><Version>2011-12-31</Version>",
    "<Version>2011-10-15</Version><Version>2011-08-31</Version><Version>2011-04-07</Version>",
    "<Version>2010-12-15</Version><Version>2010-28-10</Version></Supported></Versions>\n"
);

/// Handles the secure-channel API; `None` when the request is something else.
pub(super) async fn secure_channel(
    shared: &Shared,
    vm: &Arc<Vm>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    audit: &mut AuditRecord,
) -> Option<Resp> {
    let path = uri.path();
    let resp = if path == STATUS_PATH && method == Method::GET {
        audit.decision = Decision::Allowed;
        status(shared, vm)
    } else if path == KEY_PATH && method == Method::POST {
        acquire(shared, vm, body, audit)
    } else if let Some(guid) = path
        .strip_prefix(KEY_PATH)
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|p| p.strip_suffix(ATTEST_SUFFIX))
        .filter(|_| method == Method::POST)
    {
        attest(shared, vm, guid, method, uri, headers, body, audit).await
    } else {
        return None;
    };
    Some(resp)
}

/// `GET /secure-channel/status`: always 200 with the VM's `KeyStatus` and the host date (spec §12.2).
fn status(shared: &Shared, vm: &Vm) -> Resp {
    let mut r = response::json(shared.registry.key_status(vm));
    if let Ok(date) = HeaderValue::from_str(&format_host_date(SystemTime::now())) {
        r.headers_mut().insert(DATE_HEADER, date);
    }
    r
}

/// `POST /secure-channel/key`: a new pending key, or 409 `KEY_LATCHED` (spec §12.2).
fn acquire(shared: &Shared, vm: &Vm, body: &[u8], audit: &mut AuditRecord) -> Resp {
    // The agent sends exactly `KEY_REQUEST_BODY`; any JSON naming the one scheme is accepted.
    #[derive(serde::Deserialize)]
    struct KeyRequest {
        #[serde(rename = "authorizationScheme")]
        authorization_scheme: String,
    }
    let scheme_ok =
        serde_json::from_slice::<KeyRequest>(body).is_ok_and(|r| r.authorization_scheme == SCHEME);
    if !scheme_ok {
        return response::refuse(Reason::BadRequest);
    }
    match shared.registry.issue_key(&vm.name) {
        Ok(key) => {
            audit.decision = Decision::Allowed;
            audit.key_guid = Some(key.guid.as_str().to_owned());
            let doc = Key {
                authorization_scheme: SCHEME.to_owned(),
                guid: key.guid.as_str().to_owned(),
                key: SecretString::new(key.key.to_hex().to_string()),
                issued: iso8601(key.issued),
                incarnation_id: Some(key.incarnation),
            };
            // The answer carries the key: build it in a zeroizing buffer.
            let bytes = zeroize::Zeroizing::new(
                serde_json::to_vec(&doc).unwrap_or_else(|_| unreachable!("plain struct")),
            );
            tracing::info!(vm = %vm.name, guid = %key.guid, incarnation = key.incarnation, "key issued");
            response::json(Bytes::copy_from_slice(&bytes))
        }
        Err(IssueError::Latched) => response::refuse(Reason::KeyLatched),
        Err(IssueError::VmGone) => response::refuse(Reason::VmUnknown),
        Err(IssueError::Random(e)) => {
            tracing::error!(error = %e, "cannot issue a key");
            response::refuse(Reason::Internal)
        }
    }
}

/// `POST /secure-channel/key/{guid}/key-attestation` (spec §12.2): `{guid}` must be pending (else 404
/// `KEY_UNKNOWN`), the request must verify under that key per §12.3 (else 401), and come from root.
#[allow(clippy::too_many_arguments)]
async fn attest(
    shared: &Shared,
    vm: &Vm,
    guid: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    audit: &mut AuditRecord,
) -> Resp {
    let Some(pending) = KeyGuid::parse(guid)
        .ok()
        .and_then(|g| vm.keys.pending(&g).cloned())
    else {
        return response::refuse_with(Reason::KeyUnknown, 404);
    };
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let verified = verify_with(shared, method, target, headers, body, audit, |g| {
        pending.is(g).then(|| pending.key.clone())
    });
    match verified {
        Err(reason) => return response::refuse(reason),
        Ok(v) if !v.is_root => return response::refuse(Reason::NotElevated),
        Ok(_) => {}
    }
    match shared.registry.latch(&vm.name, &pending.guid).await {
        Ok(key) => {
            audit.decision = Decision::Allowed;
            tracing::info!(vm = %vm.name, guid = %key.guid, incarnation = key.incarnation, "key latched");
            response::json(Bytes::from_static(b"{}"))
        }
        Err(LatchError::NotPending) => response::refuse_with(Reason::KeyUnknown, 404),
        Err(LatchError::Store(e)) => {
            tracing::error!(error = %e, vm = %vm.name, "latched key could not be stored");
            response::refuse(Reason::Internal)
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (spec §2.7 `issued`): the status timestamp without milliseconds, in UTC.
fn iso8601(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let stamp = msp_core::status::format_timestamp(ms);
    format!("{}Z", stamp.get(..19).unwrap_or(&stamp))
}

/// The fabric surface, after the pipeline admitted the request.
pub(super) async fn serve(call: Call<'_>) -> Resp {
    let path = call.uri.path().to_ascii_lowercase();
    let comp = call.query("comp").map(str::to_ascii_lowercase);
    let method = call.method;
    match (method, path.trim_end_matches('/'), comp.as_deref()) {
        (&Method::GET, "", Some("versions")) => response::xml(VERSIONS_XML),
        (&Method::GET, "/machine", Some("goalstate")) => response::xml(goal_state(&call)),
        (&Method::GET, p, Some("config")) if p.starts_with("/machine/") => {
            response::xml(shared_config(&call))
        }
        (&Method::POST, "/machine", Some("telemetrydata")) => {
            let vm = &call.vm.name;
            call.shared
                .registry
                .store()
                .telemetry(vm, crate::audit::now_ms(), call.body.to_vec())
                .await;
            response::text(StatusCode::OK, "")
        }
        (&Method::PUT, "/vmagentlog", None) => response::text(StatusCode::OK, ""),
        // Health reports of the guest agent: accepted, not kept.
        (&Method::POST, "/machine", Some("health")) => response::text(StatusCode::OK, ""),
        (&Method::PUT, "/machine", Some("proxyagentstatus")) => report(&call).await,
        (&Method::GET, "/health", None) => response::text(StatusCode::OK, "OK"),
        _ => response::refuse(Reason::NotFound),
    }
}

/// `PUT /machine?comp=proxyagentstatus` (spec §9.3): keep the document as the VM's instance view.
async fn report(call: &Call<'_>) -> Resp {
    // The document must be an aggregate status (spec §9.2); it is kept as received.
    let Ok(status) = serde_json::from_slice::<AggregateStatus>(&call.body) else {
        return response::refuse(Reason::BadRequest);
    };
    let Ok(document) = serde_json::from_slice::<Value>(&call.body) else {
        return response::refuse(Reason::BadRequest);
    };
    let overall = match status.proxy_agent_status.status {
        OverallState::Success => "SUCCESS",
        OverallState::Error => "ERROR",
        OverallState::Unknown => "UNKNOWN",
    }
    .to_owned();
    let signed_by = call.verified.map(|v| v.key_guid.as_str().to_owned());
    match call
        .shared
        .registry
        .record_report(&call.vm.name, document, overall, signed_by)
        .await
    {
        Ok(()) => response::text(StatusCode::OK, ""),
        Err(e) => {
            tracing::error!(error = %e, vm = %call.vm.name, "status report could not be stored");
            response::refuse(Reason::Internal)
        }
    }
}

fn instance_id(vm: &Vm) -> String {
    format!("{}.{}", vm.vm_id, vm.name)
}

/// A small, well-formed goal state whose SharedConfig URL names the configured WireServer endpoint.
fn goal_state(call: &Call<'_>) -> String {
    let vm = call.vm;
    let ws = call.shared.wireserver_endpoint;
    let host = if ws.port() == 80 {
        ws.ip().to_string()
    } else {
        ws.to_string()
    };
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
            "<GoalState xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ",
            "xsi:noNamespaceSchemaLocation=\"goalstate10.xsd\">\n",
            "  <Version>2015-04-05</Version>\n  <Incarnation>1</Incarnation>\n",
            "  <Machine><ExpectedState>Started</ExpectedState>",
            "<StopRolesDeadlineHint>300000</StopRolesDeadlineHint></Machine>\n",
            "  <Container>\n    <ContainerId>{container}</ContainerId>\n    <RoleInstanceList>\n",
            "      <RoleInstance>\n        <InstanceId>{instance}</InstanceId>\n        <State>Started</State>\n",
            "        <Configuration>\n          <SharedConfig>http://{host}/machine/{container}/{instance}",
            "?comp=config&amp;type=sharedConfig&amp;incarnation=1</SharedConfig>\n",
            "        </Configuration>\n      </RoleInstance>\n    </RoleInstanceList>\n  </Container>\n",
            "</GoalState>\n"
        ),
        container = vm.vm_id,
        instance = instance_id(vm),
        host = host,
    )
}

fn shared_config(call: &Call<'_>) -> String {
    let vm = call.vm;
    format!(
        concat!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
            "<SharedConfig version=\"1.0.0.0\" goalStateIncarnation=\"1\">\n",
            "  <Deployment name=\"{id}\" guid=\"{{{id}}}\" incarnation=\"0\" ",
            "isNonCancellableTopologyChangeEnabled=\"false\">\n",
            "    <Service name=\"{name}\" guid=\"{{00000000-0000-0000-0000-000000000000}}\" />\n",
            "    <ServiceInstance name=\"{id}.0\" guid=\"{{{id}}}\" />\n  </Deployment>\n",
            "  <Incarnation number=\"1\" instance=\"{instance}\" guid=\"{{{id}}}\" />\n",
            "  <Role guid=\"{{{id}}}\" name=\"{name}\" settleTimeSeconds=\"0\" />\n",
            "  <Instances>\n    <Instance id=\"{instance}\" address=\"{peer}\" />\n  </Instances>\n",
            "</SharedConfig>\n"
        ),
        id = vm.vm_id,
        name = vm.name,
        instance = instance_id(vm),
        peer = call.peer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::query_param;

    #[test]
    fn iso8601_is_civil_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_745_409_600);
        assert_eq!(iso8601(t), "2025-04-23T12:00:00Z");
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn query_params_are_found_case_insensitively() {
        let uri: Uri = "/machine?Comp=goalstate&x".parse().unwrap();
        assert_eq!(query_param(&uri, "comp"), Some("goalstate"));
        assert_eq!(query_param(&uri, "x"), Some(""));
        assert_eq!(query_param(&uri, "y"), None);
    }
}
