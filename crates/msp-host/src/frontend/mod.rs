//! The three front ends (WireServer, HostGAPlugin, IMDS) on hyper's HTTP/1 server, and the pipeline every
//! request takes before a service sees it (spec §12):
//!
//! 1. head limits (≤ 128 fields, ≤ 72 KiB, else 431) — spec §12.1;
//! 2. the VM from the source address, else 403 `VM_UNKNOWN` on every endpoint — §12.1;
//! 3. the secure-channel API on WireServer (status, key, attestation) — §12.2;
//! 4. the body, within 1 MiB (100 MiB for exempt requests, streamed) and the body timeout, else 413/408;
//! 5. exempt requests pass; otherwise the signature is verified over the bytes received and the endpoint's
//!    mode turns the result into serve / serve-and-record / refuse — §12.3, §12.4 — *before* the service's
//!    own checks;
//! 6. the service answers; one audit record per request.
//!
//! hyper keeps the request-target's path and query as received and every header value with duplicates in
//! order (names lowercased, which the signature input does anyway), so verification sees what was signed.
//! This module must never log header values, queries, signatures or bodies.

mod hostga;
mod imds;
mod imds_doc;
pub mod policy;
pub(crate) mod response;
mod upstream;
mod wireserver;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use msp_core::sign::{KeyGuid, RequestParts, SigningKey, Verified, verify_request};
use msp_core::{Endpoint, Mode, Reason};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::{AuditRecord, Decision, clip_path, endpoint_name, now_ms};
use crate::registry::Registry;
use crate::vm::Vm;
use policy::Verdict;
use response::Resp;

/// Most header fields in a request head (spec §12.1); more → 431 `HEADERS_TOO_LARGE`.
pub const MAX_HEAD_FIELDS: usize = 128;
/// Largest request head in bytes, request line included (spec §12.1); larger → 431.
pub const MAX_HEAD_BYTES: usize = 72 * 1024;
/// Largest body of an ordinary request (spec §12.1); larger → 413 `BODY_TOO_LARGE`.
pub const MAX_BODY: u64 = 1 << 20;
/// Largest body of an exempt request (spec §3.5, §12.1), streamed, never buffered whole.
pub const MAX_EXEMPT_BODY: u64 = 100 << 20;
/// Bytes of a telemetry payload kept in the store; agent payloads are < 64 KiB (spec §11.3).
pub(crate) const MAX_TELEMETRY_KEPT: usize = 1 << 20;
/// Body bytes all connections together may hold in memory at once, in KiB (1,000 clients each sending a
/// 1 MiB body must not take 1 GiB); requests wait for room up to the body timeout, then get 503 `OVERLOADED`.
pub(crate) const BODY_BUDGET_KIB: usize = 256 * 1024;
/// hyper parses up to this many fields so that 129–256 get our 431 with a reason; beyond, hyper's bare 431.
const PARSE_HEAD_FIELDS: usize = 2 * MAX_HEAD_FIELDS;
/// hyper's read buffer; heads beyond it get hyper's bare 431.
const READ_BUFFER: usize = 256 * 1024;
/// How long in-flight connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Back-off after a failed `accept` (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every front end shares.
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    /// spec §12.3 step 3.
    pub window: Duration,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// The WireServer address VMs use, for the SharedConfig URL of the goal state.
    pub wireserver_endpoint: SocketAddr,
    /// Signs IMDS access tokens; random per process, never a VM's key.
    pub token_key: SigningKey,
    /// Where verified IMDS requests under a prefix go instead of being served here.
    pub imds_upstream: Option<crate::config::UpstreamConfig>,
    /// [`BODY_BUDGET_KIB`] permits, one per KiB of buffered body.
    pub body_budget: Arc<Semaphore>,
}

/// One request after the pipeline: what a service needs.
pub(crate) struct Call<'a> {
    pub shared: &'a Shared,
    pub vm: &'a Arc<Vm>,
    pub peer: IpAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// The signature verified (in any mode).
    pub verified: Option<&'a Verified>,
}

impl Call<'_> {
    /// The first value of query parameter `key` (case-insensitive key, raw value).
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        query_param(self.uri, key)
    }
}

pub(crate) fn query_param<'u>(uri: &'u Uri, key: &str) -> Option<&'u str> {
    uri.query()?.split('&').find_map(|piece| {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        k.eq_ignore_ascii_case(key).then_some(v)
    })
}

/// Accepts connections until `cancel` fires; each connection runs on `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_timeout)
        .max_headers(PARSE_HEAD_FIELDS)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(shared.max_connections));
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Latency matters more than packet count for small request/response pairs.
        let _ = stream.set_nodelay(true);
        let peer_ip = peer.ip().to_canonical();
        let shared = shared.clone();
        let builder = builder.clone();
        let cancel = cancel.clone();
        let span = tracing::debug_span!("conn", endpoint = %endpoint, peer = %peer);
        tracker.spawn(
            async move {
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, endpoint, peer_ip, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        tokio::time::timeout(SHUTDOWN_GRACE, conn).await.unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracing::debug!(endpoint = %endpoint, "listener stopped");
}

/// Approximate size of the head as received: request line plus `name: value\r\n` per field.
fn head_bytes(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = method.as_str().len() + target + 12;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Reads a body within `limit` bytes and the timeout, keeping at most `keep` bytes.
async fn read_body(
    mut body: Incoming,
    limit: u64,
    keep: usize,
    timeout: Duration,
) -> Result<Bytes, Reason> {
    let read = async {
        let mut kept = BytesMut::new();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Reason::BadRequest)?;
            if let Ok(data) = frame.into_data() {
                total = total.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                if total > limit {
                    return Err(Reason::BodyTooLarge);
                }
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
            }
        }
        Ok(kept.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Reason::BodyTimeout))
}

/// The whole pipeline for one request; always answers, and always writes one audit record.
async fn handle(shared: &Shared, endpoint: Endpoint, peer: IpAddr, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let vm = shared.registry.vm_for(peer);
    let mode = vm
        .as_ref()
        .map_or(Mode::Disabled, |vm| vm.settings.mode(endpoint));
    let mut audit = AuditRecord {
        seq: 0,
        time_ms: now_ms(),
        vm: vm.as_ref().map(|v| v.name.clone()),
        source: peer.to_string(),
        endpoint: endpoint_name(endpoint).to_owned(),
        method: parts.method.as_str().chars().take(16).collect(),
        path: clip_path(parts.uri.path()),
        mode,
        decision: Decision::Rejected,
        reason: None,
        status: 0,
        key_guid: None,
        key_owner: None,
    };
    let resp = pipeline(shared, endpoint, peer, vm, mode, &parts, body, &mut audit).await;
    audit.status = resp.status().as_u16();
    if audit.reason.is_none() && !resp.status().is_success() {
        audit.reason = resp
            .headers()
            .get(response::REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    tracing::debug!(
        vm = audit.vm.as_deref().unwrap_or("-"),
        method = %parts.method,
        path = %audit.path,
        decision = %audit.decision,
        reason = audit.reason.as_deref().unwrap_or("-"),
        status = audit.status,
        "request"
    );
    shared.registry.store().audit(audit).await;
    resp
}

#[allow(clippy::too_many_arguments)]
async fn pipeline(
    shared: &Shared,
    endpoint: Endpoint,
    peer: IpAddr,
    vm: Option<Arc<Vm>>,
    mode: Mode,
    parts: &http::request::Parts,
    body: Incoming,
    audit: &mut AuditRecord,
) -> Resp {
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    // spec §12.1: heads up to 72 KiB and 128 fields are accepted, larger ones get 431.
    if headers.len() > MAX_HEAD_FIELDS || head_bytes(method, uri, headers) > MAX_HEAD_BYTES {
        return response::refuse_and_close(Reason::HeadersTooLarge);
    }
    let Some(vm) = vm else {
        return response::refuse(Reason::VmUnknown);
    };
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let exempt = msp_core::rules::is_exempt(method.as_str(), target.as_bytes());
    let limit = if exempt { MAX_EXEMPT_BODY } else { MAX_BODY };
    if declared_length(headers).is_some_and(|n| n > limit) {
        return response::refuse_and_close(Reason::BodyTooLarge);
    }
    let keep = if exempt {
        MAX_TELEMETRY_KEPT
    } else {
        usize::try_from(MAX_BODY).unwrap_or(usize::MAX)
    };
    // Reserve room for what will be buffered before reading it (bounded memory across connections).
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    let reserve = match declared_length(headers) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(keep),
        None if chunked => keep,
        None => 0,
    };
    let kib = u32::try_from(reserve.div_ceil(1024)).unwrap_or(u32::MAX);
    let _budget = if kib == 0 {
        None
    } else {
        let wait = shared.body_budget.clone().acquire_many_owned(kib);
        match tokio::time::timeout(shared.body_timeout, wait).await {
            Ok(Ok(permit)) => Some(permit),
            _ => return response::refuse_and_close(Reason::Overloaded),
        }
    };
    let body = match read_body(body, limit, keep, shared.body_timeout).await {
        Ok(b) => b,
        Err(reason) => return response::refuse_and_close(reason),
    };

    if endpoint == Endpoint::WireServer
        && let Some(resp) =
            wireserver::secure_channel(shared, &vm, method, uri, headers, &body, audit).await
    {
        return resp;
    }

    // spec §12.3, §12.4: verification runs first, before the service's own checks.
    let has_auth = headers.contains_key(msp_core::sign::AUTHORIZATION_HEADER);
    let verification = if exempt || (mode == Mode::Disabled && !has_auth) {
        None
    } else {
        Some(verify(shared, &vm, method, target, headers, &body, audit))
    };
    let verdict = if exempt {
        Verdict::Serve {
            decision: Decision::Exempt,
            reason: None,
        }
    } else {
        policy::decide(endpoint, mode, verification.as_ref())
    };
    match verdict {
        Verdict::Refuse(reason) => {
            audit.decision = Decision::Rejected;
            audit.reason = Some(reason.code().to_owned());
            response::refuse(reason)
        }
        Verdict::Serve { decision, reason } => {
            audit.decision = decision;
            audit.reason = reason.map(|r| r.code().to_owned());
            let call = Call {
                shared,
                vm: &vm,
                peer,
                method,
                uri,
                headers,
                body,
                verified: verification.as_ref().and_then(|v| v.as_ref().ok()),
            };
            match endpoint {
                Endpoint::WireServer => wireserver::serve(call).await,
                Endpoint::HostGaPlugin => hostga::serve(call),
                Endpoint::Imds => imds::serve(call).await,
            }
        }
    }
}

/// spec §12.3 steps 1–5 over the bytes received, with this VM's latched key only. Notes the guid (and, for
/// another VM's key, its owner) in the audit record.
pub(crate) fn verify(
    shared: &Shared,
    vm: &Vm,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    audit: &mut AuditRecord,
) -> Result<Verified, Reason> {
    verify_with(shared, method, target, headers, body, audit, |g| {
        vm.keys.latched_key(g)
    })
}

pub(crate) fn verify_with(
    shared: &Shared,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    audit: &mut AuditRecord,
    key_for: impl FnOnce(&KeyGuid) -> Option<SigningKey>,
) -> Result<Verified, Reason> {
    let (named, result) = verify_head(
        method,
        target,
        headers,
        body,
        SystemTime::now(),
        shared.window,
        key_for,
    );
    if let Some(g) = named {
        if result == Err(Reason::KeyUnknown) {
            audit.key_owner = shared
                .registry
                .key_owner(&g)
                .filter(|owner| Some(owner) != audit.vm.as_ref());
        }
        audit.key_guid = Some(g.as_str().to_owned());
    }
    result
}

/// spec §12.3 steps 1–5 over a request as hyper received it, against the key `key_for` returns. Also returns the
/// guid the authorization header named, when it parsed far enough to name one (for the audit record).
pub fn verify_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    host_now: SystemTime,
    window: Duration,
    key_for: impl FnOnce(&KeyGuid) -> Option<SigningKey>,
) -> (Option<KeyGuid>, Result<Verified, Reason>) {
    let parts = RequestParts {
        method: method.as_str().as_bytes(),
        target: target.as_bytes(),
        headers: Fields(headers),
        body,
    };
    let mut named: Option<KeyGuid> = None;
    let result = verify_request(
        &parts,
        |g| {
            named = Some(*g);
            key_for(g)
        },
        host_now,
        window,
    );
    (named, result)
}

/// A head's fields as the signature input reads them, straight from hyper's map (no copy of the list): the
/// verifier walks them more than once, and `HeaderMap`'s own iterator cannot be cloned.
#[derive(Clone, Copy)]
struct Fields<'a>(&'a HeaderMap);

impl<'a> IntoIterator for Fields<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = FieldsIter<'a>;

    fn into_iter(self) -> FieldsIter<'a> {
        FieldsIter(self.0.iter())
    }
}

/// The walk over [`Fields`]: each name and value as bytes.
struct FieldsIter<'a>(http::header::Iter<'a, HeaderValue>);

impl<'a> Iterator for FieldsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, value) = self.0.next()?;
        Some((name.as_str().as_bytes(), value.as_bytes()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
