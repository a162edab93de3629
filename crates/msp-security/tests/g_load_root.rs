//! Catalog G1 and G2, bounded for CI (SECURITY.md "Load"): 1,000 concurrent keep-alive connections through the
//! real redirector and proxy, served with bounded memory; and a few seconds of sustained load without a single
//! error. The full-size runs (10,000 connections, one hour at 5,000 req/s) are the benchmarks' job.
//! G3 is `gpa`'s g3_unreachable_host_keeps_serving_the_latched_key_and_recovers.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;

use msp_core::{Endpoint, Mode};
use msp_security::agent::TestAgent;
use msp_security::host::TestHost;
use msp_security::{probe, root_ready};

/// Connections held at once in the bounded G1.
const CONNECTIONS: usize = 1_000;
/// Resident memory the agent and host (one process here) may add for them: 64 KiB per connection, which
/// covers the proxy's buffers plus the host's and the upstream connection each one opens.
const RSS_BUDGET_KIB: u64 = 64 * CONNECTIONS as u64;
/// Seconds of sustained load in the bounded G2, and its concurrency.
const LOAD_SECS: u64 = 5;
const LOAD_CONNS: usize = 8;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn keep_alive_get(t: &TestHost) -> Vec<u8> {
    format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\n\r\n",
        t.host.imds
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_root_1000_concurrent_keep_alive_connections_are_served_with_bounded_rss() {
    if !root_ready("g1_root_1000_concurrent_keep_alive_connections_are_served_with_bounded_rss") {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("g1", &t.host, |_| {}).await;
    agent.ready().await;
    // Warm up (first-use allocations), then measure.
    let warm = probe!()
        .in_cgroup(&agent.cgroup)
        .many(t.host.imds, &keep_alive_get(&t), 20)
        .await;
    assert_eq!(warm.0["second_ok"], 20, "{:?}", warm.0);
    let before = rss_kib();

    let r = probe!()
        .in_cgroup(&agent.cgroup)
        .many(t.host.imds, &keep_alive_get(&t), CONNECTIONS)
        .await;
    assert_eq!(r.0["open"], CONNECTIONS, "{:?}", r.0);
    assert_eq!(r.0["first_ok"], CONNECTIONS, "{:?}", r.0);
    assert_eq!(
        r.0["second_ok"], CONNECTIONS,
        "every held connection is served again: {:?}",
        r.0
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < RSS_BUDGET_KIB,
        "RSS grew {grown} KiB for {CONNECTIONS} connections"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_root_sustained_keep_alive_load_has_no_errors_and_flat_rss() {
    if !root_ready("g2_root_sustained_keep_alive_load_has_no_errors_and_flat_rss") {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("g2", &t.host, |_| {}).await;
    agent.ready().await;
    let req = keep_alive_get(&t);
    // A first run warms every allocation up; the second must not grow memory by more than 10 %.
    let first = probe!()
        .in_cgroup(&agent.cgroup)
        .load(t.host.imds, &req, LOAD_CONNS, 2)
        .await;
    let before = rss_kib();
    let r = probe!()
        .in_cgroup(&agent.cgroup)
        .load(t.host.imds, &req, LOAD_CONNS, LOAD_SECS)
        .await;
    let after = rss_kib();
    for run in [&first, &r] {
        let counts: BTreeMap<String, u64> =
            serde_json::from_value(run.0["counts"].clone()).unwrap();
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            ["200"],
            "only 200s: {counts:?}"
        );
    }
    let served = r.0["counts"]["200"].as_u64().unwrap();
    assert!(served > 100, "served {served} requests in {LOAD_SECS} s");
    assert!(
        after <= before + before / 10,
        "RSS grew from {before} KiB to {after} KiB under steady load"
    );
    agent.stop().await;
}
