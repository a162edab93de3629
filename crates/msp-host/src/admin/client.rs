//! [`AdminClient`]: the admin API from Rust, used by the CLI (`msp-host vm …`, `profile put`, `audit`), by the
//! agent's tests and by the demo.
//!
//! Requests go over loopback with the bearer token; every call is bounded by the client timeout. This module
//! must never print the token.

use std::net::SocketAddr;
use std::sync::Arc;

use msp_core::{Endpoint, Mode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::audit::{AuditQuery, AuditRecord};
use crate::client::{self, Request, Response};
use crate::vm::VmView;
use crate::vm::settings::ProxyAgentSettings;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API at {addr} unreachable: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("admin API answer could not be decoded: {0}")]
    Decode(String),
    #[error("{0}")]
    Usage(String),
}

impl AdminError {
    /// The HTTP status, for callers that distinguish 400 from 404.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A stored profile version as the API reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileInfo {
    pub name: String,
    pub version: u32,
    pub created_ms: u64,
    pub document: serde_json::Value,
}

/// A client of one host's admin API.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Arc<Zeroizing<String>>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .field("token", &"***")
            .finish()
    }
}

fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> AdminClient {
        AdminClient {
            addr,
            token: Arc::new(Zeroizing::new(token.into())),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A raw call: method, path (with query) and optional JSON body; any status.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, AdminError> {
        let bearer = Zeroizing::new(format!("Bearer {}", self.token.as_str()));
        let mut req = Request::new(method, path)
            .header("Host", &self.addr.to_string())
            .header("Authorization", &bearer)
            .header("Connection", "close");
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_vec());
        } else {
            req = req.header("Content-Length", "0");
        }
        client::send(self.addr, None, &req)
            .await
            .map_err(|source| AdminError::Io {
                addr: self.addr,
                source,
            })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<T, AdminError> {
        let r = self.call(method, path, body).await?;
        if !(200..300).contains(&r.status) {
            return Err(AdminError::Status {
                status: r.status,
                body: r.text(),
            });
        }
        r.json().map_err(|e| AdminError::Decode(e.to_string()))
    }

    pub async fn vms(&self) -> Result<Vec<VmView>, AdminError> {
        self.json("GET", "/v1/vms", None).await
    }

    /// "GET VM": settings, key facts and the instance view last reported.
    pub async fn vm_view(&self, vm: &str) -> Result<VmView, AdminError> {
        self.json("GET", &format!("/v1/vms/{}", encode_query(vm)), None)
            .await
    }

    /// Creates a VM or replaces its address blocks (and settings, when given).
    pub async fn put_vm(
        &self,
        vm: &str,
        addresses: &[&str],
        settings: Option<&ProxyAgentSettings>,
    ) -> Result<VmView, AdminError> {
        let body = serde_json::json!({"addresses": addresses, "proxyAgentSettings": settings});
        self.json(
            "PUT",
            &format!("/v1/vms/{}", encode_query(vm)),
            Some(body.to_string().as_bytes()),
        )
        .await
    }

    pub async fn put_settings(
        &self,
        vm: &str,
        settings: &ProxyAgentSettings,
    ) -> Result<VmView, AdminError> {
        let body = serde_json::to_vec(settings).map_err(|e| AdminError::Decode(e.to_string()))?;
        self.json(
            "PUT",
            &format!("/v1/vms/{}/settings", encode_query(vm)),
            Some(&body),
        )
        .await
    }

    /// Sets one endpoint's mode. HostGAPlugin has none of its own: it follows WireServer (spec §2.6).
    pub async fn set_mode(
        &self,
        vm: &str,
        endpoint: Endpoint,
        mode: Mode,
    ) -> Result<VmView, AdminError> {
        let mut settings = self.vm_view(vm).await?.proxy_agent_settings;
        match endpoint {
            Endpoint::WireServer => settings.wire_server.mode = mode,
            Endpoint::Imds => settings.imds.mode = mode,
            Endpoint::HostGaPlugin => {
                return Err(AdminError::Usage(
                    "HostGAPlugin follows the WireServer mode; set WireServer".into(),
                ));
            }
        }
        self.put_settings(vm, &settings).await
    }

    /// Discards the VM's latched key and increments `keyIncarnationId` (spec §12.2); returns the new id.
    pub async fn reset_key(&self, vm: &str) -> Result<u32, AdminError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Reset {
            key_incarnation_id: u32,
        }
        let r: Reset = self
            .json(
                "POST",
                &format!("/v1/vms/{}/reset-key", encode_query(vm)),
                None,
            )
            .await?;
        Ok(r.key_incarnation_id)
    }

    /// Stores a new version of a profile (a §4.1 item); 400 names the invalid field.
    pub async fn put_profile(&self, name: &str, document: &str) -> Result<ProfileInfo, AdminError> {
        self.json(
            "PUT",
            &format!("/v1/profiles/{}", encode_query(name)),
            Some(document.as_bytes()),
        )
        .await
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AdminError> {
        let mut params: Vec<String> = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                params.push(format!("{k}={}", encode_query(&v)));
            }
        };
        add("vm", q.vm.clone());
        add("endpoint", q.endpoint.clone());
        add("decision", q.decision.map(|d| d.as_str().to_owned()));
        add("reason", q.reason.clone());
        add("sinceMs", q.since_ms.map(|v| v.to_string()));
        add("untilMs", q.until_ms.map(|v| v.to_string()));
        add("limit", q.limit.map(|v| v.to_string()));
        let path = if params.is_empty() {
            "/v1/audit".to_owned()
        } else {
            format!("/v1/audit?{}", params.join("&"))
        };
        self.json("GET", &path, None).await
    }
}
