//! Catalog A3 at scale, through the whole agent: a barrage of malformed requests gets exact refusals while the
//! agent stays alive with bounded memory (its own test binary, so no other test shares the process while it
//! measures). The per-request shapes (exact 405, 400, 414, 408) are also `gpa`'s conf_074_a3_a4_* tests.
#![cfg(target_os = "linux")]

use std::time::Duration;

use msp_core::{Endpoint, Mode};
use msp_security::agent::TestAgent;
use msp_security::host::TestHost;
use msp_security::http::{exchange, read_until_close};
use msp_security::{probe, root_ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    msp_security::agent::wait_startup_memory_freed(std::process::id());
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
