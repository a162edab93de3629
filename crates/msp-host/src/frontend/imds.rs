//! IMDS: `/metadata/instance` (and its sub-paths), `/metadata/versions` and `/metadata/identity/oauth2/token`,
//! with IMDS's own request rules — `Metadata: true` (400 `METADATA_HEADER_REQUIRED`), no `X-Forwarded-For`
//! (400 `FORWARDED_REFUSED`), a supported `api-version` (400 `API_VERSION_INVALID`).
//!
//! These rules run after signature verification (spec §12.4: an unsigned request in enforce gets 401 whatever
//! else is wrong). With `imdsUpstream` configured, requests under its prefix are forwarded after these checks
//! instead of being served here. Tokens are bound to the VM and signed with a host-only key, never with a VM's key.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use msp_core::Reason;
use serde_json::{Value, json};

use super::Call;
use super::imds_doc::{InstanceDoc, resource_id};
use super::response::{self, Resp};

/// IMDS API versions answered (`/metadata/versions` lists them).
pub(super) const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2022-02-01",
    "2022-03-01",
    "2022-08-01",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2025-04-07",
];
/// Lifetime of an issued token, seconds.
const TOKEN_LIFETIME_SECS: u64 = 86_399;

pub(super) async fn serve(call: Call<'_>) -> Resp {
    if call.headers.contains_key("x-forwarded-for") {
        return response::refuse(Reason::ForwardedRefused);
    }
    let metadata_true = call
        .headers
        .get("metadata")
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"true"));
    if !metadata_true {
        return response::refuse(Reason::MetadataHeaderRequired);
    }
    if let Some(up) = &call.shared.imds_upstream
        && call.uri.path().starts_with(up.path_prefix.as_str())
    {
        return super::upstream::forward(up.address, &call).await;
    }
    if call.method != Method::GET {
        return response::refuse(Reason::NotFound);
    }
    let path = call.uri.path().to_ascii_lowercase();
    let path = path.trim_end_matches('/');
    if path == "/metadata/versions" {
        return response::json(json!({ "apiVersions": API_VERSIONS }).to_string());
    }
    let version_ok = call
        .query("api-version")
        .is_some_and(|v| API_VERSIONS.contains(&v));
    let is_instance = path == "/metadata/instance" || path.starts_with("/metadata/instance/");
    let is_token = path == "/metadata/identity/oauth2/token";
    if !is_instance && !is_token {
        return response::refuse(Reason::NotFound);
    }
    if !version_ok {
        let body = json!({
            "error": "Bad request. api-version is missing or not supported.",
            "newest-versions": API_VERSIONS.iter().rev().take(3).collect::<Vec<_>>(),
        });
        return response::with_reason(
            response::json_status(StatusCode::BAD_REQUEST, body.to_string()),
            Reason::ApiVersionInvalid,
        );
    }
    if is_token {
        return token(&call);
    }
    let doc = InstanceDoc::new(call.vm, call.peer);
    // Sub-paths name document keys, which are case-sensitive (`compute/vmId`).
    let original = call.uri.path();
    let sub = original
        .get("/metadata/instance".len()..)
        .unwrap_or_default();
    let mut segments = sub.split('/').filter(|s| !s.is_empty()).peekable();
    if segments.peek().is_none() {
        // The whole document, the common call: rendered without building a tree.
        return response::json(doc.render());
    }
    let tree = doc.to_value();
    let node = segments.try_fold(&tree, |node, segment| node.get(segment));
    match node {
        Some(Value::String(s)) if call.query("format") == Some("text") => {
            response::text_owned(s.clone())
        }
        Some(v) => response::json(v.to_string()),
        None => response::refuse(Reason::NotFound),
    }
}

/// Percent-decodes a query value (`+` is a space); invalid escapes stay as they are.
fn decode(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| char::from(*h).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.extend(u8::try_from(h * 16 + l));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A well-formed, VM-bound token document (JWT signed HS256 with the host's token key).
fn token(call: &Call<'_>) -> Resp {
    let Some(resource) = call.query("resource").map(decode).filter(|r| !r.is_empty()) else {
        let body = json!({"error": "invalid_request",
                          "error_description": "Required query variable 'resource' is missing"});
        return response::with_reason(
            response::json_status(StatusCode::BAD_REQUEST, body.to_string()),
            Reason::BadRequest,
        );
    };
    let vm = call.vm;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = now + TOKEN_LIFETIME_SECS;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "aud": resource, "iss": "https://msp-host.openmsp.invalid/", "iat": now, "nbf": now, "exp": exp,
        "sub": vm.vm_id, "oid": vm.vm_id, "xms_mirid": resource_id(&vm.name),
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = msp_core::sign::hmac(&call.shared.token_key, signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(hex_bytes(&sig.to_hex()));
    let doc = json!({
        "access_token": format!("{signing_input}.{sig}"),
        "client_id": vm.vm_id,
        "expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "expires_on": exp.to_string(),
        "ext_expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    });
    response::json(doc.to_string())
}

fn hex_bytes(h: &str) -> Vec<u8> {
    hex::decode(h).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_handles_escapes_plus_and_garbage() {
        assert_eq!(
            decode("https%3A%2F%2Fvault.azure.net"),
            "https://vault.azure.net"
        );
        assert_eq!(decode("a+b%2"), "a b%2");
        assert_eq!(decode("%zz"), "%zz");
    }
}
