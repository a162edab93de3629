//! Every read is bounded: a head that never completes is closed at the header timeout, a body that never
//! completes gets 408 `BODY_TIMEOUT`, and other clients are served meanwhile.

mod support;

use std::time::{Duration, Instant};

use msp_host::Host;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn stalled_heads_are_closed_and_stalled_bodies_get_408() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.header_timeout_secs = 1;
    cfg.body_timeout_secs = 1;
    let host = Host::start(cfg).await.unwrap();

    let mut stalled = TcpStream::connect(host.imds).await.unwrap();
    stalled
        .write_all(b"GET /metadata/instance HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Others are served while it stalls.
    let r = send(host.imds, ip_a(), &imds_request(&host)).await;
    assert_eq!(r.status, 401);
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "closed by the host, not by the test timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    let mut slow = TcpStream::connect(host.wireserver).await.unwrap();
    slow.write_all(
        b"POST /machine?comp=health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf!",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-msp-reason: BODY_TIMEOUT"), "{text}");
    host.shutdown().await;
}
