//! Catalog A3 and A10 at the catalog's scale, through the whole agent: a barrage of malformed requests gets
//! exact refusals while the agent stays alive with bounded memory, and 1,000 slowloris connections are each
//! closed at the header timeout while legitimate callers keep being served. The per-request shapes (exact 405,
//! 400, 414, 408) are also `gpa`'s conf_074_a3_a4_* and conf_078_a10_* tests.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use msp_core::{Endpoint, Mode};
use msp_security::agent::TestAgent;
use msp_security::host::TestHost;
use msp_security::http::{HttpResponse, exchange, read_until_close};
use msp_security::{probe, root_ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Slowloris connections held at once (catalog A10).
const SLOWLORIS: usize = 1_000;
/// Rounds of the malformed barrage (each round sends every malformed kind once).
const BARRAGE_ROUNDS: usize = 100;
/// Memory the barrage may leave behind, in KiB: nothing per request survives it.
const BARRAGE_RSS_KIB: u64 = 16 * 1024;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn served(agent: &TestAgent, t: &TestHost) -> bool {
    let req = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        t.host.imds
    );
    let r = probe!()
        .in_cgroup(&agent.cgroup)
        .tcp(t.host.imds, req.as_bytes(), 8000)
        .await;
    r.ok() && r.response().status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_root_a_malformed_barrage_gets_exact_refusals_and_the_agent_stays_alive_and_bounded() {
    if !root_ready(
        "a3_root_a_malformed_barrage_gets_exact_refusals_and_the_agent_stays_alive_and_bounded",
    ) {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("a3", &t.host, |c| c.request_header_timeout_in_seconds = 1).await;
    agent.ready().await;
    let to = agent.listener();
    let h = t.host.imds;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            format!("FOO /metadata HTTP/1.1\r\nHost: {h}\r\n\r\n").into_bytes(),
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            format!("GET / HTTP/9.9\r\nHost: {h}\r\n\r\n").into_bytes(),
            400,
            "BAD_REQUEST",
        ),
        (
            format!(
                "GET /{} HTTP/1.1\r\nHost: {h}\r\n\r\n",
                "a".repeat(64 * 1024)
            )
            .into_bytes(),
            414,
            "URI_TOO_LONG",
        ),
        (
            b"GET / HTTP/1.1\r\nHost\r\n\r\n".to_vec(),
            400,
            "BAD_REQUEST",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            "BAD_REQUEST",
        ),
        (b"GET /\x00 HTTP/1.1\r\n\r\n".to_vec(), 400, "BAD_REQUEST"),
    ];
    // Warm up, then measure what the barrage leaves behind.
    for (bytes, status, reason) in &cases {
        let r = exchange(to, bytes, Duration::from_secs(5)).await;
        assert!(r.closed, "closed after {status}");
        r.response().assert_refusal(*status, reason);
    }
    let before = rss_kib();
    for _ in 0..BARRAGE_ROUNDS {
        for (bytes, status, reason) in &cases {
            exchange(to, bytes, Duration::from_secs(5))
                .await
                .response()
                .assert_refusal(*status, reason);
        }
    }
    // Truncated headers held open: 408 at the header timeout.
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(b"GET /metadata/instance HTTP/1.1\r\nHost: x\r\nX-Trunc")
        .await
        .unwrap();
    let r = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(r.closed);
    r.response().assert_refusal(408, "HEADER_TIMEOUT");

    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < BARRAGE_RSS_KIB,
        "RSS grew {grown} KiB over the barrage"
    );
    assert!(served(&agent, &t).await, "the agent still serves");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a10_root_1000_slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served()
 {
    if !root_ready(
        "a10_root_1000_slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served",
    ) {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("a10", &t.host, |c| c.request_header_timeout_in_seconds = 2).await;
    agent.ready().await;
    let to = agent.listener();

    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(b"GET /metadata/instance HTTP/1.1\r\nX-a: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Keep dribbling a byte on each while legitimate callers are served.
    for s in &mut slow {
        let _ = s.write_all(b"b").await;
    }
    assert!(served(&agent, &t).await, "served during the attack");
    for s in &mut slow {
        let _ = s.write_all(b"c").await;
    }
    assert!(served(&agent, &t).await, "served during the attack");

    // Each is answered 408 and closed, at the header timeout (from accept), not later.
    let mut answered = 0;
    for s in &mut slow {
        let r = read_until_close(s, Duration::from_secs(10)).await;
        assert!(r.closed, "closed");
        let resp = HttpResponse::parse(&r.bytes).expect("a 408");
        resp.assert_refusal(408, "HEADER_TIMEOUT");
        answered += 1;
    }
    assert_eq!(answered, SLOWLORIS);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(10),
        "closed at the header timeout, not later: {elapsed:?}"
    );
    assert!(served(&agent, &t).await, "served after the attack");
    agent.stop().await;
}
