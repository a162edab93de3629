//! The enforcement matrix (spec §12.3, §12.4): each mode × each failure reason × each endpoint, with exact
//! status, reason code, header and body; conformance items 94, 96, 97 and catalog B2, B8.

mod support;

use std::time::SystemTime;

use msp_core::sign::{AUTHORIZATION_HEADER, CLAIMS_HEADER, DATE_HEADER, KeyGuid, SigningKey};
use msp_core::{Endpoint, Mode, Reason};
use msp_host::RunningHost;
use msp_host::audit::Decision;
use msp_host::client::Request;
use support::*;

/// A way to get a request wrong, and the reason the host must name.
struct Case {
    name: &'static str,
    reason: Reason,
    build: fn(&Agent, Request) -> Request,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "unsigned",
            reason: Reason::AuthMissing,
            build: |_, r| r.agent_headers(true, SystemTime::now()),
        },
        Case {
            name: "malformed authorization",
            reason: Reason::AuthMalformed,
            build: |_, r| {
                r.agent_headers(true, SystemTime::now())
                    .header(AUTHORIZATION_HEADER, "Azure-HMAC-SHA256 not-a-guid 00")
            },
        },
        Case {
            name: "bad hex",
            reason: Reason::AuthMalformed,
            build: |a, r| {
                let sig = "zz".repeat(32);
                r.agent_headers(true, SystemTime::now()).header(
                    AUTHORIZATION_HEADER,
                    &format!("Azure-HMAC-SHA256 {} {sig}", a.guid),
                )
            },
        },
        Case {
            name: "unknown guid",
            reason: Reason::KeyUnknown,
            build: |_, r| {
                let guid = KeyGuid::parse("00000000-0000-4000-8000-000000000000").unwrap();
                r.agent_headers(true, SystemTime::now())
                    .sign(&guid, &SigningKey::from_bytes([9; 32]))
            },
        },
        Case {
            name: "no date",
            reason: Reason::DateMissing,
            build: |a, r| {
                r.agent_headers(true, SystemTime::now())
                    .without(DATE_HEADER)
                    .sign(&a.guid, &a.key)
            },
        },
        Case {
            name: "date 301 s old",
            reason: Reason::DateSkew,
            build: |a, r| {
                a.sign_at(
                    r,
                    true,
                    SystemTime::now() - std::time::Duration::from_secs(301),
                )
            },
        },
        Case {
            name: "date 301 s ahead",
            reason: Reason::DateSkew,
            build: |a, r| {
                a.sign_at(
                    r,
                    true,
                    SystemTime::now() + std::time::Duration::from_secs(302),
                )
            },
        },
        Case {
            name: "claims not a string",
            reason: Reason::ClaimsInvalid,
            build: |a, r| {
                r.agent_headers(true, SystemTime::now())
                    .without(CLAIMS_HEADER)
                    .header(CLAIMS_HEADER, r#"{"isRoot": true}"#)
                    .sign(&a.guid, &a.key)
            },
        },
        Case {
            name: "header changed after signing",
            reason: Reason::SigMismatch,
            build: |a, r| a.sign(r, true).header("x-added-later", "1"),
        },
        Case {
            name: "signed with another key under the right guid",
            reason: Reason::SigMismatch,
            build: |a, r| {
                r.agent_headers(true, SystemTime::now())
                    .sign(&a.guid, &SigningKey::from_bytes([3; 32]))
            },
        },
    ]
}

fn request_for(host: &RunningHost, e: Endpoint) -> Request {
    match e {
        Endpoint::WireServer => goal_state_request(host),
        Endpoint::HostGaPlugin => vm_settings_request(host),
        Endpoint::Imds => imds_request(host),
    }
}

async fn set_modes(host: &RunningHost, mode: Mode) {
    let admin = host.admin();
    admin
        .set_mode(VM_A, Endpoint::WireServer, mode)
        .await
        .unwrap();
    admin.set_mode(VM_A, Endpoint::Imds, mode).await.unwrap();
}

async fn run_matrix(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    set_modes(&host, mode).await;
    for e in Endpoint::ALL {
        let addr = host.endpoint(e);
        let ep = msp_host::audit::endpoint_name(e);
        // A valid request is served in every mode.
        let ok = send(addr, ip_a(), &agent.sign(request_for(&host, e), true)).await;
        assert_eq!(ok.status, 200, "{mode} {e} valid: {}", ok.text());
        let rec = last_audit(&host, VM_A, ep).await;
        let expect = if mode == Mode::Disabled {
            Decision::Unchecked
        } else {
            Decision::Allowed
        };
        assert_eq!(
            (rec.decision, rec.reason.as_deref()),
            (expect, None),
            "{mode} {e}"
        );

        let mut all = cases();
        if e.elevated_only() {
            all.push(Case {
                name: "non-root caller",
                reason: Reason::NotElevated,
                build: |a, r| a.sign(r, false),
            });
        }
        for case in all {
            let req = (case.build)(&agent, request_for(&host, e));
            let r = send(addr, ip_a(), &req).await;
            let what = format!("{mode} {e} {}", case.name);
            let rec = last_audit(&host, VM_A, ep).await;
            match mode {
                Mode::Enforce => {
                    assert_eq!(r.status, case.reason.status(), "{what}");
                    assert_eq!(r.header("x-msp-reason"), Some(case.reason.code()), "{what}");
                    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
                    assert_eq!(
                        r.text(),
                        format!("{{\"error\": \"{}\"}}", case.reason.code()),
                        "{what}"
                    );
                    assert_eq!(rec.decision, Decision::Rejected, "{what}");
                    assert_eq!(rec.reason.as_deref(), Some(case.reason.code()), "{what}");
                }
                Mode::Audit => {
                    assert_eq!(r.status, 200, "{what}: {}", r.text());
                    assert_eq!(r.header("x-msp-reason"), None, "{what}");
                    assert_eq!(rec.decision, Decision::Audited, "{what}");
                    assert_eq!(rec.reason.as_deref(), Some(case.reason.code()), "{what}");
                }
                Mode::Disabled => {
                    assert_eq!(r.status, 200, "{what}: {}", r.text());
                    assert_eq!(rec.decision, Decision::Unchecked, "{what}");
                }
            }
            assert_eq!(rec.status, r.status, "{what}");
            assert_eq!(rec.mode, mode, "{what}");
        }
    }
    host.shutdown().await;
}

#[tokio::test]
async fn conf_094_b8_enforce_matrix_401_with_reason_code_header_and_body() {
    run_matrix(Mode::Enforce).await;
}

#[tokio::test]
async fn conf_096_b2_audit_matrix_served_and_reason_logged() {
    run_matrix(Mode::Audit).await;
}

#[tokio::test]
async fn disabled_matrix_served_unchecked() {
    run_matrix(Mode::Disabled).await;
}

#[tokio::test]
async fn conf_097_b2_enforce_without_agent_refuses_all_but_exempt_and_secure_channel() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    // No key was ever latched: nothing signed can exist.
    let unsigned = [
        (
            host.wireserver,
            Request::new("GET", "/machine?comp=goalstate"),
        ),
        (host.wireserver, Request::new("GET", "/?comp=versions")),
        (
            host.wireserver,
            Request::new("PUT", "/machine?comp=proxyagentstatus").body("{}"),
        ),
        (
            host.wireserver,
            Request::new("POST", "/machine/?comp=telemetrydata&x=1").body("<x/>"),
        ),
        (host.wireserver, Request::new("GET", "/no/such/path")),
        (host.hostga, Request::new("GET", "/health")),
        (host.hostga, Request::new("GET", "/vmSettings")),
        (
            host.imds,
            Request::new("GET", "/metadata/instance?api-version=2021-02-01")
                .header("Metadata", "true"),
        ),
        (host.imds, Request::new("GET", "/metadata/versions")),
        (
            host.imds,
            Request::new(
                "GET",
                "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            ),
        ),
    ];
    for (addr, req) in unsigned {
        for ip in [ip_a(), "127.0.0.1".parse().unwrap()] {
            let r = send(addr, ip, &req).await;
            assert_eq!(r.status, 401, "{} {} from {ip}", req.method, req.target);
            assert_eq!(r.header("x-msp-reason"), Some("AUTH_MISSING"));
        }
    }
    // Exempt requests and the secure-channel API stay reachable.
    let telemetry = Request::new("POST", "/machine/?comp=telemetrydata").body("<TelemetryData/>");
    assert_eq!(send(host.wireserver, ip_a(), &telemetry).await.status, 200);
    let log = Request::new("PUT", "/vmAgentLog").body("log");
    assert_eq!(send(host.wireserver, ip_a(), &log).await.status, 200);
    let (r, _) = key_status(&host, ip_a()).await;
    assert_eq!(r.status, 200);
    let (r, _) = acquire(&host, ip_a()).await;
    assert_eq!(r.status, 200);
    host.shutdown().await;
}

#[tokio::test]
async fn identical_signed_requests_inside_the_window_are_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let req = agent.sign(imds_request(&host), false);
    for _ in 0..3 {
        assert_eq!(send(host.imds, ip_a(), &req).await.status, 200);
    }
    host.shutdown().await;
}

#[tokio::test]
async fn b8_date_window_edges_299_ok_301_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let at = |secs_ago: u64| SystemTime::now() - std::time::Duration::from_secs(secs_ago);
    let r = send(
        host.imds,
        ip_a(),
        &agent.sign_at(imds_request(&host), false, at(298)),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        host.imds,
        ip_a(),
        &agent.sign_at(imds_request(&host), false, at(302)),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("DATE_SKEW"))
    );
    host.shutdown().await;
}

#[tokio::test]
async fn signature_covers_received_bytes_duplicates_last_wins_order_free() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    // Duplicates (last one counts, trimmed), mixed-case names, a query needing canonical ordering, and a body.
    let req = Request::new("POST", "/machine?comp=health&B=2&a=1&a=1&keyOnly&a-=0")
        .header("X-Dup", "first")
        .header("Host", &host.wireserver.to_string())
        .header("X-Dup", "  second  ")
        .header("Content-Type", "text/xml; charset=utf-8")
        .body("<xml>hi</x>");
    let signed = agent.sign(req, true);
    let r = send(host.wireserver, ip_a(), &signed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Changing which duplicate comes last changes the input.
    let mut swapped = signed.clone();
    let first = swapped
        .headers
        .iter()
        .position(|(n, _)| n == "X-Dup")
        .unwrap();
    swapped.headers[first].1 = "second".into();
    let second = swapped
        .headers
        .iter()
        .rposition(|(n, _)| n == "X-Dup")
        .unwrap();
    swapped.headers[second].1 = "first".into();
    let r = send(host.wireserver, ip_a(), &swapped).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("SIG_MISMATCH"))
    );
    // A different body fails.
    let mut body = signed.clone();
    body.body = b"<xml>ho</x>".to_vec();
    let r = send(host.wireserver, ip_a(), &body).await;
    assert_eq!(r.header("x-msp-reason"), Some("SIG_MISMATCH"));
    host.shutdown().await;
}
