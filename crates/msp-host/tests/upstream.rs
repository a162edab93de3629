//! IMDS as a gateway: verified requests under the configured prefix go to an upstream metadata service (a
//! loopback test server here), without the `x-ms-azure-host-*` headers; refused requests never reach it.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use msp_host::Host;
use msp_host::client::Request;
use msp_host::config::UpstreamConfig;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-response-per-connection upstream that records every request head it receives.
async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let body = r#"{"compute":{"name":"from-upstream"}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Upstream: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn verified_imds_requests_are_forwarded_without_msp_headers() {
    let (up, seen) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.imds_upstream = Some(UpstreamConfig {
        address: up,
        path_prefix: "/metadata/".into(),
    });
    let host = Host::start(cfg).await.unwrap();
    let agent = latch(&host, ip_a()).await;

    // Refused requests never reach the upstream.
    let r = send(host.imds, ip_a(), &imds_request(&host)).await;
    assert_eq!(r.status, 401);
    let no_metadata = Request::new("GET", "/metadata/instance?api-version=2021-02-01");
    let r = send(host.imds, ip_a(), &agent.sign(no_metadata, false)).await;
    assert_eq!(r.status, 400);
    assert!(seen.lock().unwrap().is_empty());

    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("yes"));
    assert!(r.text().contains("from-upstream"));
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /metadata/instance?api-version=2021-02-01&format=json http/1.1"),
        "{head}"
    );
    assert!(head.contains("metadata: true"));
    assert!(!head.contains("x-ms-azure-host-"), "{head}");
    host.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    // Bind and drop, so the port is (almost certainly) closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.imds_upstream = Some(UpstreamConfig {
        address: closed,
        path_prefix: "/metadata/".into(),
    });
    let host = Host::start(cfg).await.unwrap();
    let agent = latch(&host, ip_a()).await;
    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (502, Some("UPSTREAM_CONNECT"))
    );
    host.shutdown().await;
}
