//! The agent's own HTTP calls to the host services (spec §2.1, §3.7): key latching, telemetry, metadata
//! refreshes and status reports. One new TCP connection per call, closed afterwards; never redirected (the
//! agent's pid is in the redirector's skip table, spec §7.2).
//!
//! Every call is bounded: connect ≤ [`CONNECT_TIMEOUT`], the whole exchange ≤ `hostCallTimeoutInSeconds`, the
//! body ≤ [`MAX_RESPONSE_BODY`]; the body is decoded strictly (UTF-8 or UTF-16LE, never lossily). Headers are
//! exactly the ones built here: date, `Host`, claims, `Content-Length`, the call's own, then the signature over
//! all of them when a key is given. This module must never log header values, key bytes or signatures, and never
//! send to an address the caller did not take from the configuration.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use msp_core::claims::host_claims_header;
use msp_core::sign::{self, RequestParts};
use tokio::net::TcpStream;

use crate::snapshot::ReadyKey;

/// TCP connect bound for the agent's own calls (spec §2.1).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body accepted from the host, in bytes (spec §2.1).
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
/// Carries the host's reason code on refusals (spec §8.5, §12.4).
pub const REASON_HEADER: &str = "x-msp-reason";

/// Why an own call failed. Each is a failed call (spec §2.1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostCallError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { addr: SocketAddr },
    #[error("no complete answer from {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("response body from {addr} is larger than {MAX_RESPONSE_BODY} bytes")]
    BodyTooLarge { addr: SocketAddr },
    #[error("response charset {charset:?} is not supported")]
    CharsetUnsupported { charset: String },
    #[error("response body is not valid {encoding}")]
    Undecodable { encoding: &'static str },
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("unexpected answer {status}{}", reason.as_deref().map(|r| format!(" {r}")).unwrap_or_default())]
    Status {
        status: StatusCode,
        reason: Option<String>,
    },
}

/// One own call, before the fixed headers are added.
#[derive(Debug)]
pub struct OwnCall<'a> {
    pub method: http::Method,
    pub dest: SocketAddr,
    /// Origin-form request-target (path and query).
    pub target: String,
    /// The call's own headers (spec §3.7 table), after the fixed ones.
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// `x-ms-azure-host-date` (spec §2.12).
    pub date: String,
    /// Sign with this key (spec §3.7: "when a key is ready").
    pub sign: Option<&'a ReadyKey>,
}

/// A host answer with its body decoded to text.
#[derive(Debug)]
pub struct HostResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HostResponse {
    /// The `x-msp-reason` code, if any.
    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// Turns any status but `want` into [`HostCallError::Status`].
    pub fn expect(self, want: impl Fn(StatusCode) -> bool) -> Result<HostResponse, HostCallError> {
        if want(self.status) {
            Ok(self)
        } else {
            Err(HostCallError::Status {
                status: self.status,
                reason: self.reason().map(str::to_owned),
            })
        }
    }
}

/// The `Host` header for an endpoint: the IP literal (IPv6 in brackets), `:port` only when the port is not 80
/// (spec §1.3).
pub fn host_header(addr: SocketAddr) -> String {
    let ip = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    if addr.port() == 80 {
        ip
    } else {
        format!("{ip}:{}", addr.port())
    }
}

/// The header list of an own call, exactly as sent (spec §3.7): date, `Host`, claims, `Content-Length`, the
/// call's own headers, then `x-ms-azure-host-authorization` over all of them when signing.
pub fn build_headers(call: &OwnCall<'_>) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&'static str, String)> = vec![
        (sign::DATE_HEADER, call.date.clone()),
        ("host", host_header(call.dest)),
        (sign::CLAIMS_HEADER, host_claims_header(true).to_owned()),
        ("content-length", call.body.len().to_string()),
    ];
    headers.extend(call.headers.iter().cloned());
    if let Some(key) = call.sign {
        let parts = RequestParts {
            method: call.method.as_str().as_bytes(),
            target: call.target.as_bytes(),
            headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            body: &call.body,
        };
        let signature = parts.sign(&key.key);
        headers.push((
            sign::AUTHORIZATION_HEADER,
            sign::authorization_value(&key.guid, &signature),
        ));
    }
    headers
}

/// Performs own calls with the configured whole-exchange bound.
#[derive(Debug, Clone, Copy)]
pub struct HostClient {
    timeout: Duration,
}

impl HostClient {
    pub fn new(timeout: Duration) -> HostClient {
        HostClient { timeout }
    }

    /// Sends `call` on a new connection and reads the whole answer, within the bounds of spec §2.1.
    pub async fn call(&self, call: OwnCall<'_>) -> Result<HostResponse, HostCallError> {
        let addr = call.dest;
        let mut builder = http::Request::builder()
            .method(call.method.clone())
            .uri(call.target.as_str());
        for (name, value) in build_headers(&call) {
            builder = builder.header(name, value);
        }
        let request = builder.body(Full::new(call.body.clone()))?;
        match tokio::time::timeout(self.timeout, send(addr, request)).await {
            Ok(result) => result,
            Err(_) => Err(HostCallError::Timeout {
                addr,
                after: self.timeout,
            }),
        }
    }
}

/// One request on a new connection, with the connect bound and the body limit but no overall timeout (the
/// caller adds it).
pub async fn send(
    addr: SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> Result<HostResponse, HostCallError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| HostCallError::ConnectTimeout { addr })?
        .map_err(|source| HostCallError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| HostCallError::Http { addr, source })?;
    // The connection task lives exactly as long as this call: aborted (and the socket closed) on return, also
    // when the caller's timeout drops this future.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| HostCallError::Http { addr, source })?;
    let (parts, body) = response.into_parts();
    let bytes = Limited::new(body, MAX_RESPONSE_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(source) => HostCallError::Http {
                addr,
                source: *source,
            },
            Err(_) => HostCallError::BodyTooLarge { addr },
        })?
        .to_bytes();
    let body = decode_body(&parts.headers, &bytes)?;
    Ok(HostResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decodes a body per spec §2.1: charset `utf-16` → UTF-16LE, `utf-32` refused, anything else UTF-8; invalid
/// sequences fail (no lossy replacement).
pub fn decode_body(headers: &HeaderMap, bytes: &[u8]) -> Result<String, HostCallError> {
    let charset = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| {
            ct.split(';')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
                .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase())
        })
        .unwrap_or_default();
    if charset.starts_with("utf-32") {
        return Err(HostCallError::CharsetUnsupported { charset });
    }
    if charset.starts_with("utf-16") {
        if !bytes.len().is_multiple_of(2) {
            return Err(HostCallError::Undecodable {
                encoding: "UTF-16LE",
            });
        }
        let units = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let text: Result<String, _> = char::decode_utf16(units).collect();
        let text = text.map_err(|_| HostCallError::Undecodable {
            encoding: "UTF-16LE",
        })?;
        return Ok(text
            .strip_prefix('\u{feff}')
            .map(str::to_owned)
            .unwrap_or(text));
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| HostCallError::Undecodable { encoding: "UTF-8" })
}

#[cfg(test)]
mod tests;
