//! The admin API: the VM model, settings, key resets, access-control profiles and the audit log, on a
//! loopback-only port behind a bearer token (axum).
//!
//! Routes (all JSON, all under `/v1`, all need `Authorization: Bearer <token>`):
//! `GET /vms`, `GET|PUT /vms/{name}`, `PUT /vms/{name}/settings`, `POST /vms/{name}/reset-key`, `GET /vms/{name}/telemetry`,
//! `PUT|GET /profiles/{name}`, `GET /profiles/{name}/versions/{version}`, `GET /audit?vm&endpoint&decision&
//! reason&sinceMs&untilMs&limit`. Invalid documents get 400 with `errors: [{field, message}]`. This module
//! must never return key bytes and never log the token.

pub mod client;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::audit::AuditQuery;
use crate::cidr::Cidr;
use crate::registry::{ChangeError, Registry};
use crate::vm::profile::MAX_PROFILE_BYTES;
use crate::vm::settings::{FieldError, parse_settings};

/// Largest admin request body (a profile document plus slack).
const MAX_ADMIN_BODY: usize = MAX_PROFILE_BYTES + 64 * 1024;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub registry: Arc<Registry>,
    pub token: Arc<Zeroizing<String>>,
}

/// An admin failure, mapped to a response in one place.
#[derive(Debug)]
pub(crate) enum AdminFailure {
    Unauthorized,
    NotFound(String),
    Invalid(Vec<FieldError>),
    Conflict(String),
    Internal(String),
}

impl From<ChangeError> for AdminFailure {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound { what } => AdminFailure::NotFound(format!("{what} not found")),
            ChangeError::Invalid(errors) => AdminFailure::Invalid(errors),
            ChangeError::Conflict(m) => AdminFailure::Conflict(m),
            ChangeError::Store(e) => {
                tracing::error!(error = %e, "admin change could not be stored");
                AdminFailure::Internal("the store failed; see the host log".into())
            }
        }
    }
}

impl IntoResponse for AdminFailure {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AdminFailure::Unauthorized => {
                (StatusCode::UNAUTHORIZED, json!({"error": "UNAUTHORIZED"}))
            }
            AdminFailure::NotFound(m) => (
                StatusCode::NOT_FOUND,
                json!({"error": "NOT_FOUND", "message": m}),
            ),
            AdminFailure::Invalid(errors) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "INVALID_DOCUMENT", "errors": errors}),
            ),
            AdminFailure::Conflict(m) => (
                StatusCode::CONFLICT,
                json!({"error": "CONFLICT", "message": m}),
            ),
            AdminFailure::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "INTERNAL", "message": m}),
            ),
        };
        let mut r = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

type AdminResult = Result<Response, AdminFailure>;

fn ok_json(v: impl serde::Serialize) -> AdminResult {
    Ok(axum::Json(v).into_response())
}

/// Constant-time comparison of the presented token (length aside).
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len()
        && presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if token_matches(presented, state.token.as_bytes()) {
        next.run(req).await
    } else {
        AdminFailure::Unauthorized.into_response()
    }
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/vms", get(list_vms))
        .route("/v1/vms/{name}", get(get_vm).put(put_vm))
        .route("/v1/vms/{name}/settings", put(put_settings))
        .route("/v1/vms/{name}/reset-key", post(reset_key))
        .route("/v1/vms/{name}/telemetry", get(telemetry))
        .route("/v1/profiles/{name}", get(get_profile).put(put_profile))
        .route(
            "/v1/profiles/{name}/versions/{version}",
            get(get_profile_version),
        )
        .route("/v1/audit", get(audit))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(state)
}

fn parse_json(body: &[u8]) -> Result<Value, AdminFailure> {
    serde_json::from_slice(body)
        .map_err(|e| AdminFailure::Invalid(vec![FieldError::new("", format!("not JSON: {e}"))]))
}

async fn list_vms(State(s): State<AdminState>) -> AdminResult {
    let views: Vec<_> = s.registry.vms().iter().map(|v| v.view()).collect();
    ok_json(views)
}

async fn get_vm(State(s): State<AdminState>, Path(name): Path<String>) -> AdminResult {
    let vm = s
        .registry
        .vm(&name)
        .ok_or_else(|| AdminFailure::NotFound(format!("VM {name:?} not found")))?;
    ok_json(vm.view())
}

async fn put_vm(State(s): State<AdminState>, Path(name): Path<String>, body: Bytes) -> AdminResult {
    let doc = parse_json(&body)?;
    let Some(obj) = doc.as_object() else {
        return Err(AdminFailure::Invalid(vec![FieldError::new(
            "",
            "must be a JSON object",
        )]));
    };
    let mut errors = Vec::new();
    for k in obj.keys() {
        if k != "addresses" && k != "proxyAgentSettings" {
            errors.push(FieldError::new(k.as_str(), "unknown field"));
        }
    }
    let mut addresses: Vec<Cidr> = Vec::new();
    match obj.get("addresses").and_then(Value::as_array) {
        Some(list) => {
            for (i, a) in list.iter().enumerate() {
                match a.as_str().map(str::parse::<Cidr>) {
                    Some(Ok(c)) => addresses.push(c),
                    Some(Err(e)) => {
                        errors.push(FieldError::new(format!("addresses[{i}]"), e.to_string()))
                    }
                    None => errors.push(FieldError::new(
                        format!("addresses[{i}]"),
                        "must be a string",
                    )),
                }
            }
        }
        None => errors.push(FieldError::new(
            "addresses",
            "required, an array of address blocks",
        )),
    }
    let settings = match obj.get("proxyAgentSettings") {
        None | Some(Value::Null) => None,
        Some(v) => match parse_settings(v) {
            Ok(s) => Some(s),
            Err(es) => {
                errors.extend(es.into_iter().map(|e| {
                    FieldError::new(format!("proxyAgentSettings.{}", e.field), e.message)
                }));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(AdminFailure::Invalid(errors));
    }
    let vm = s.registry.put_vm(&name, addresses, settings).await?;
    ok_json(vm.view())
}

async fn put_settings(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> AdminResult {
    let settings = parse_settings(&parse_json(&body)?).map_err(AdminFailure::Invalid)?;
    let vm = s.registry.put_settings(&name, settings).await?;
    ok_json(vm.view())
}

async fn reset_key(State(s): State<AdminState>, Path(name): Path<String>) -> AdminResult {
    let incarnation = s.registry.reset_key(&name).await?;
    ok_json(json!({ "keyIncarnationId": incarnation }))
}

async fn telemetry(State(s): State<AdminState>, Path(name): Path<String>) -> AdminResult {
    if s.registry.vm(&name).is_none() {
        return Err(AdminFailure::NotFound(format!("VM {name:?} not found")));
    }
    let count = s
        .registry
        .store()
        .telemetry_count(&name)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "telemetry count failed");
            AdminFailure::Internal("the store failed; see the host log".into())
        })?;
    ok_json(json!({ "vm": name, "storedPayloads": count }))
}

async fn put_profile(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> AdminResult {
    let text = std::str::from_utf8(&body)
        .map_err(|_| AdminFailure::Invalid(vec![FieldError::new("", "not UTF-8")]))?;
    let p = s.registry.put_profile(&name, text).await?;
    Ok((StatusCode::CREATED, axum::Json(p.as_ref())).into_response())
}

async fn get_profile(State(s): State<AdminState>, Path(name): Path<String>) -> AdminResult {
    let versions = s.registry.profile_versions(&name);
    if versions.is_empty() {
        return Err(AdminFailure::NotFound(format!(
            "profile {name:?} not found"
        )));
    }
    let list: Vec<&crate::vm::profile::Profile> = versions.iter().map(AsRef::as_ref).collect();
    ok_json(json!({ "name": name, "versions": list }))
}

async fn get_profile_version(
    State(s): State<AdminState>,
    Path((name, version)): Path<(String, u32)>,
) -> AdminResult {
    let p = s
        .registry
        .profile(&crate::vm::settings::ProfileRef {
            name: name.clone(),
            version: Some(version),
        })
        .ok_or_else(|| {
            AdminFailure::NotFound(format!("profile {name:?} version {version} not found"))
        })?;
    ok_json(p.as_ref())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuditParams {
    vm: Option<String>,
    endpoint: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    limit: Option<u32>,
}

async fn audit(State(s): State<AdminState>, Query(p): Query<AuditParams>) -> AdminResult {
    let mut errors = Vec::new();
    let decision = p.decision.as_deref().and_then(|d| {
        let parsed = crate::audit::Decision::parse(d);
        if parsed.is_none() {
            errors.push(FieldError::new(
                "decision",
                "one of allowed, unchecked, exempt, audited, rejected",
            ));
        }
        parsed
    });
    let endpoint = p.endpoint.as_deref().and_then(|e| {
        let parsed = crate::audit::parse_endpoint(e).map(crate::audit::endpoint_name);
        if parsed.is_none() {
            errors.push(FieldError::new(
                "endpoint",
                "one of wireserver, hostga, imds",
            ));
        }
        parsed.map(str::to_owned)
    });
    if !errors.is_empty() {
        return Err(AdminFailure::Invalid(errors));
    }
    let q = AuditQuery {
        vm: p.vm,
        endpoint,
        decision,
        reason: p.reason,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        limit: p.limit,
    };
    let records = s.registry.store().query_audit(q).await.map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        AdminFailure::Internal("the store failed; see the host log".into())
    })?;
    ok_json(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(token_matches(b"abcdef", b"abcdef"));
        assert!(!token_matches(b"abcdeg", b"abcdef"));
        assert!(!token_matches(b"abcde", b"abcdef"));
        assert!(!token_matches(b"", b"abcdef"));
    }
}
