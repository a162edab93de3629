//! Catalog A10 at the catalog's scale, through the whole agent: 1,000 slowloris connections are each closed at
//! the header timeout while legitimate callers keep being served (`gpa`'s conf_078_a10_* checks 200).
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use msp_core::{Endpoint, Mode};
use msp_security::agent::TestAgent;
use msp_security::host::TestHost;
use msp_security::http::{HttpResponse, read_until_close};
use msp_security::{probe, root_ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Slowloris connections held at once (catalog A10).
const SLOWLORIS: usize = 1_000;

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
