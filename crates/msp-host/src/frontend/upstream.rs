//! Forwarding verified requests to an upstream metadata service (the host as a gateway in front of a real
//! IMDS).
//!
//! One new connection per request, bounded connect and response timeouts, a bounded response body. The
//! `x-ms-azure-host-*` family and hop-by-hop fields are removed first: the signature, claims and date are the
//! host's business and never reach the upstream. This module must never forward a request the pipeline has
//! not admitted, and never to an address other than the configured one.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use msp_core::Reason;
use msp_core::sign::HOST_HEADER_PREFIX;
use tokio::net::TcpStream;

use super::Call;
use super::response::{self, Resp};

/// TCP connect to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole upstream exchange after connecting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest upstream response body relayed, bytes.
const MAX_UPSTREAM_BODY: usize = 16 << 20;

/// RFC 9110 §7.6.1 hop-by-hop fields, plus framing the client recomputes.
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with(HOST_HEADER_PREFIX)
        || matches!(
            n,
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "proxy-authorization"
                | "te"
                | "upgrade"
                | "transfer-encoding"
                | "content-length"
        )
}

pub(super) async fn forward(address: SocketAddr, call: &Call<'_>) -> Resp {
    let target = call.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut builder = Request::builder().method(call.method.clone()).uri(target);
    for (n, v) in call.headers {
        if !dropped(n) {
            builder = builder.header(n, v);
        }
    }
    let Ok(req) = builder.body(Full::new(call.body.clone())) else {
        return response::refuse(Reason::BadRequest);
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(upstream = %address, error = %e, "upstream connect failed");
            return response::refuse_with(Reason::UpstreamConnect, 502);
        }
        Err(_) => return response::refuse_with(Reason::UpstreamConnect, 502),
    };
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends with the exchange; it is bounded by the same timeout.
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await;
        let out = match resp {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_UPSTREAM_BODY).collect().await;
                Ok(body.map(|b| (parts, b.to_bytes())))
            }
            Err(e) => Err(e),
        };
        driver.abort();
        out
    };
    match tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await {
        Ok(Ok(Ok((parts, body)))) => {
            let mut r = http::Response::new(Full::new(body));
            *r.status_mut() = parts.status;
            for (n, v) in &parts.headers {
                if !dropped(n) {
                    r.headers_mut().append(n, v.clone());
                }
            }
            r
        }
        Ok(Ok(Err(_too_large))) => response::refuse_with(Reason::UpstreamProtocol, 502),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %address, error = %e, "upstream exchange failed");
            response::refuse_with(Reason::UpstreamConnect, StatusCode::BAD_GATEWAY.as_u16())
        }
        Err(_) => response::refuse(Reason::UpstreamTimeout),
    }
}
