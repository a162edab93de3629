//! A small secure-channel host on loopback for the agent's integration tests, until `msp-host` lands on main:
//! status, acquire (409 once latched), attestation verified with `msp_core::sign`, owner reset, mode switch,
//! and signed status reports. It serves only on 127.0.0.1 and never calls out.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use msp_core::sign::{self, KeyGuid, RequestParts, SigningKey};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    Enforce,
    Disabled,
}

#[derive(Default)]
pub struct HostState {
    pub mode: Option<HostMode>,
    pub incarnation: u32,
    pub pending: Vec<(String, [u8; 32])>,
    pub latched: Option<(String, [u8; 32])>,
    pub acquires: u32,
    pub attests: u32,
    pub status_polls: u32,
    /// Accepted status reports: (signed with the latched key, body).
    pub reports: Vec<(bool, serde_json::Value)>,
}

pub struct FakeWireServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<HostState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWireServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn reply(status: StatusCode, reason: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(sign::DATE_HEADER, sign::format_host_date(SystemTime::now()));
    if let Some(reason) = reason {
        r = r.header("x-msp-reason", reason);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

impl FakeWireServer {
    pub async fn start() -> FakeWireServer {
        FakeWireServer::start_on("127.0.0.1:0".parse().unwrap(), Arc::default()).await
    }

    /// Serves `state` on `addr` (used to bring a stopped host back on the same port).
    pub async fn start_on(addr: SocketAddr, state: Arc<Mutex<HostState>>) -> FakeWireServer {
        state.lock().unwrap().mode.get_or_insert(HostMode::Enforce);
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeWireServer { addr, state, task }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut HostState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Owner reset (spec §12.2): discard the latched key, increment the incarnation.
    pub fn reset_key(&self) {
        self.with(|s| {
            s.latched = None;
            s.incarnation += 1;
        });
    }

    pub fn set_mode(&self, mode: HostMode) {
        self.with(|s| s.mode = Some(mode));
    }

    pub fn latched_guid(&self) -> Option<String> {
        self.with(|s| s.latched.as_ref().map(|(g, _)| g.clone()))
    }
}

fn status_json(s: &HostState) -> String {
    let guid = s
        .latched
        .as_ref()
        .map_or("null".to_owned(), |(g, _)| format!("\"{g}\""));
    match s.mode {
        Some(HostMode::Disabled) => format!(
            r#"{{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
                "keyGuid":{guid},"keyIncarnationId":{inc},"secureChannelEnabled":false,"authorizationRules":null}}"#,
            inc = s.incarnation
        ),
        _ => format!(
            r#"{{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
                "keyGuid":{guid},"keyIncarnationId":{inc},"secureChannelEnabled":true,"authorizationRules":{{
                "imds":{{"defaultAccess":"allow","mode":"enforce","id":"imds-1"}},
                "wireserver":{{"defaultAccess":"allow","mode":"enforce","id":"ws-1"}}}}}}"#,
            inc = s.incarnation
        ),
    }
}

async fn handle(state: Arc<Mutex<HostState>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers: Vec<(Vec<u8>, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let verify = |key: &[u8; 32]| {
        let rp = RequestParts {
            method: parts.method.as_str().as_bytes(),
            target: target.as_bytes(),
            headers: headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            body: &body,
        };
        sign::verify_request(
            &rp,
            |_g: &KeyGuid| Some(SigningKey::from_bytes(*key)),
            SystemTime::now(),
            Duration::from_secs(300),
        )
    };
    let mut s = state.lock().unwrap();
    match (parts.method.as_str(), target.as_str()) {
        ("GET", "/secure-channel/status") => {
            s.status_polls += 1;
            reply(StatusCode::OK, None, status_json(&s))
        }
        ("POST", "/secure-channel/key") => {
            s.acquires += 1;
            if s.latched.is_some() {
                return reply(
                    StatusCode::CONFLICT,
                    Some("KEY_LATCHED"),
                    r#"{"error":"KEY_LATCHED"}"#.into(),
                );
            }
            let (g, k) = (guid(), rand::random::<[u8; 32]>());
            s.pending.push((g.clone(), k));
            let body = format!(
                r#"{{"authorizationScheme":"Azure-HMAC-SHA256","guid":"{g}","key":"{}","issued":"2025-04-23T12:00:00Z","incarnationId":{}}}"#,
                hex::encode_upper(k),
                s.incarnation
            );
            reply(StatusCode::OK, None, body)
        }
        ("POST", t) if t.starts_with("/secure-channel/key/") && t.ends_with("/key-attestation") => {
            s.attests += 1;
            let g = t
                .trim_start_matches("/secure-channel/key/")
                .trim_end_matches("/key-attestation");
            let Some(pos) = s.pending.iter().position(|(pg, _)| pg == g) else {
                return reply(StatusCode::NOT_FOUND, Some("KEY_UNKNOWN"), String::new());
            };
            let key = s.pending[pos].1;
            match verify(&key) {
                Ok(v) if v.key_guid.as_str() == g => {
                    s.latched = Some((g.to_owned(), key));
                    s.pending.clear();
                    reply(StatusCode::OK, None, String::new())
                }
                Ok(_) => reply(StatusCode::UNAUTHORIZED, Some("KEY_UNKNOWN"), String::new()),
                Err(r) => reply(StatusCode::UNAUTHORIZED, Some(r.code()), String::new()),
            }
        }
        ("PUT", "/machine?comp=proxyagentstatus") => {
            let signed = match &s.latched {
                Some((_, key)) => verify(key).is_ok(),
                None => false,
            };
            let doc = serde_json::from_slice(&body).unwrap_or_default();
            s.reports.push((signed, doc));
            reply(StatusCode::OK, None, String::new())
        }
        _ => reply(StatusCode::NOT_FOUND, None, String::new()),
    }
}
