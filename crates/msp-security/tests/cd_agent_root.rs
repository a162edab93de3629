//! Catalog C7 and D5 through the whole agent (real redirector, real proxy) against a real host: alternate
//! spellings of the destination get the decision of the dotted form, and a rules reload while a request is in
//! flight leaves that request decided (and signed) under the rules it started with.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::time::Duration;

use msp_security::agent::TestAgent;
use msp_security::host::TestHost;
use msp_security::{probe, root_ready};

/// IMDS item: `/metadata/identity` is granted to a user that does not exist, everything else is allowed.
const IDENTITY_RESTRICTED: &str = r#"{"defaultAccess": "allow", "mode": "enforce", "id": "imds-c7",
  "rules": {"privileges": [{"name": "tokens", "path": "/metadata/identity"}],
            "roles": [{"name": "r", "privileges": ["tokens"]}],
            "identities": [{"name": "nobody-here", "userName": "no-such-user"}],
            "roleAssignments": [{"role": "r", "identities": ["nobody-here"]}]}}"#;

/// The spellings of an IPv4 address that spec §5.4 classifies alike.
fn spellings(addr: SocketAddr) -> Vec<String> {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    let [a, b, c, d] = v4.ip().octets();
    let n = u32::from(*v4.ip());
    let port = v4.port();
    vec![
        format!("{a}.{b}.{c}.{d}:{port}"),
        format!("{n}:{port}"),
        format!("0x{n:x}:{port}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}:{port}"),
        format!(
            "{a}.{}:{port}",
            (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d)
        ),
        format!("[::ffff:{a}.{b}.{c}.{d}]:{port}"),
    ]
}

fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nMetadata: true\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_root_alternate_destination_forms_get_the_dotted_forms_decision() {
    if !root_ready("c7_root_alternate_destination_forms_get_the_dotted_forms_decision") {
        return;
    }
    let t = TestHost::start().await;
    t.set_imds_profile("imds-c7", IDENTITY_RESTRICTED).await;
    let agent = TestAgent::start("c7", &t.host, |_| {}).await;
    agent.ready().await;
    agent
        .until("the IMDS item", |s| {
            s.items.imds.as_ref().is_some_and(|i| i.id() == "imds-c7")
        })
        .await;
    let imds = t.host.imds;

    for form in spellings(imds) {
        for (path, status, reason) in [
            ("/metadata/instance?api-version=2021-02-01", 200, None),
            (
                "/metadata/identity/oauth2/token?api-version=2018-02-01",
                403,
                Some("RULE_DENY"),
            ),
        ] {
            // Absolute-form target in this spelling, over an IPv4 socket and over a dual-stack IPv6 socket
            // connecting to the IPv4-mapped address.
            let target = format!("http://{form}{path}");
            for mapped in [false, true] {
                let extra: &[&str] = if mapped { &["--mapped"] } else { &[] };
                let r = probe!()
                    .in_cgroup(&agent.cgroup)
                    .tcp_args(imds, &get(&target, &form), 8000, extra)
                    .await;
                let resp = r.response();
                assert_eq!(
                    (resp.status, resp.reason()),
                    (status, reason),
                    "{target} (mapped socket: {mapped}): {resp:?}"
                );
            }
        }
    }
    // Another address in the same spellings is another destination: refused, never signed for it.
    let other: SocketAddr = "127.0.0.16:80".parse().unwrap();
    for form in spellings(other) {
        let target = format!("http://{form}/metadata/instance");
        let r = probe!()
            .in_cgroup(&agent.cgroup)
            .tcp(imds, &get(&target, &form), 8000)
            .await;
        r.response().assert_refusal(400, "CANON_HOST");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_root_a_rules_reload_mid_request_leaves_it_decided_under_the_rules_it_started_with() {
    if !root_ready(
        "d5_root_a_rules_reload_mid_request_leaves_it_decided_under_the_rules_it_started_with",
    ) {
        return;
    }
    let allow = r#"{"defaultAccess": "allow", "mode": "enforce", "id": "imds-d5"}"#;
    let deny = r#"{"defaultAccess": "deny", "mode": "enforce", "id": "imds-d5-v2"}"#;
    let t = TestHost::start().await;
    t.set_imds_profile("imds-d5", allow).await;
    let agent = TestAgent::start("d5", &t.host, |_| {}).await;
    agent.ready().await;
    agent
        .until("the allowing item", |s| {
            s.items.imds.as_ref().is_some_and(|i| i.id() == "imds-d5")
        })
        .await;
    let imds = t.host.imds;

    // A request whose head arrives under the allowing rules and whose body then trickles in for ~8 s.
    let body = b"0123456789abcdef0123456789abcdef01234567";
    let head = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {imds}\r\nMetadata: true\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // The head at once, then one body byte every 200 ms.
    let slow = tokio::spawn(probe!().in_cgroup(&agent.cgroup).tcp_args(
        imds,
        &bytes,
        20_000,
        &["--head-then-dribble-ms", "200"],
    ));

    // While it is in flight, the host replaces the rules with a deny-all document; wait until applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.set_imds_profile("imds-d5", deny).await;
    agent
        .until("the denying item", |s| {
            s.items
                .imds
                .as_ref()
                .is_some_and(|i| i.id() == "imds-d5-v2")
        })
        .await;
    assert!(
        !slow.is_finished(),
        "the reload must land while the request is in flight"
    );

    // The in-flight request completes under the rules it was decided with: allowed, signed, served.
    let r = slow.await.unwrap().response();
    assert_eq!(r.status, 200, "{r:?}");
    // A new request is decided under the new rules.
    let fresh = probe!()
        .in_cgroup(&agent.cgroup)
        .tcp(
            imds,
            &get(
                "/metadata/instance?api-version=2021-02-01",
                &imds.to_string(),
            ),
            8000,
        )
        .await
        .response();
    fresh.assert_refusal(403, "DEFAULT_DENY");
    agent.stop().await;
}
