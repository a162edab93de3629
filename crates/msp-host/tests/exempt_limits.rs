//! Exempt requests (spec §3.5, §12.3) and the host's limits (spec §12.1): heads ≤ 72 KiB / 128 fields (431),
//! bodies ≤ 1 MiB, ≤ 100 MiB exempt (413).

mod support;

use msp_core::{Endpoint, Mode};
use msp_host::audit::Decision;
use msp_host::client::Request;
use support::*;

#[tokio::test]
async fn exempt_requests_pass_unsigned_in_every_mode_and_telemetry_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let admin = host.admin();
    for mode in [Mode::Enforce, Mode::Audit, Mode::Disabled] {
        admin
            .set_mode(VM_A, Endpoint::WireServer, mode)
            .await
            .unwrap();
        let t = Request::new("POST", "/machine/?comp=telemetrydata")
            .header("x-ms-version", "2012-11-30")
            .header("Content-Type", "text/xml; charset=utf-8")
            .body("<?xml version=\"1.0\"?><TelemetryData version=\"1.0\"></TelemetryData>");
        let r = send(host.wireserver, ip_a(), &t).await;
        assert_eq!(r.status, 200, "{mode}");
        let rec = last_audit(&host, VM_A, "wireserver").await;
        assert_eq!(
            (rec.decision, rec.reason),
            (Decision::Exempt, None),
            "{mode}"
        );
        let log = Request::new("PUT", "/vmagentlog").body("log line");
        assert_eq!(
            send(host.wireserver, ip_a(), &log).await.status,
            200,
            "{mode}"
        );
    }
    // Any other spelling is an ordinary request.
    admin
        .set_mode(VM_A, Endpoint::WireServer, Mode::Enforce)
        .await
        .unwrap();
    for target in [
        "/machine/?comp=telemetrydata&x=1",
        "/machine?comp=telemetrydata",
    ] {
        let r = send(
            host.wireserver,
            ip_a(),
            &Request::new("POST", target).body("<x/>"),
        )
        .await;
        assert_eq!(
            (r.status, r.header("x-msp-reason")),
            (401, Some("AUTH_MISSING")),
            "{target}"
        );
    }
    let count = msp_host_telemetry(&host).await;
    assert_eq!(count, 3);
    host.shutdown().await;
}

async fn msp_host_telemetry(host: &msp_host::RunningHost) -> u64 {
    let r = host
        .admin()
        .call("GET", "/v1/vms/vm-a/telemetry", None)
        .await
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    v["storedPayloads"].as_u64().unwrap()
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    // 1 MiB is accepted on a signed request, one byte more is not.
    let at_limit = Request::new("POST", "/machine?comp=health").body(vec![b'a'; 1 << 20]);
    let r = send(host.wireserver, ip_a(), &agent.sign(at_limit, true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let over = Request::new("POST", "/machine?comp=health").body(vec![b'a'; (1 << 20) + 1]);
    let r = send(host.wireserver, ip_a(), &agent.sign(over, true)).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (413, Some("BODY_TOO_LARGE"))
    );
    // A chunked body growing past the limit is refused too.
    let chunk = vec![b'b'; 600 * 1024];
    let mut raw =
        b"POST /machine?comp=health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..2 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = msp_host::client::Connection::open(host.wireserver, Some(ip_a()))
        .await
        .unwrap();
    let r = c.send_raw(&raw).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (413, Some("BODY_TOO_LARGE"))
    );
    // Exempt requests may carry far more (streamed).
    let big = Request::new("PUT", "/vmagentlog").body(vec![b'c'; 3 << 20]);
    assert_eq!(send(host.wireserver, ip_a(), &big).await.status, 200);
    let declared = Request::new("PUT", "/vmagentlog")
        .header("Content-Length", &((100u64 << 20) + 1).to_string());
    let r = send(host.wireserver, ip_a(), &declared).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (413, Some("BODY_TOO_LARGE"))
    );
    host.shutdown().await;
}

#[tokio::test]
async fn heads_over_128_fields_or_72_kib_are_431() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    // 128 fields in all (the agent adds 4) are served when signed.
    let mut req = imds_request(&host);
    while req.headers.len() < 128 - 4 {
        let n = req.headers.len();
        req = req.header(&format!("x-pad-{n}"), "v");
    }
    let r = send(host.imds, ip_a(), &agent.sign(req.clone(), false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        host.imds,
        ip_a(),
        &agent.sign(req.header("x-one-more", "v"), false),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (431, Some("HEADERS_TOO_LARGE"))
    );
    // 70 KiB of header values are fine, 73 KiB are not.
    let fits = imds_request(&host).header("x-big", &"v".repeat(70 * 1024));
    assert_eq!(
        send(host.imds, ip_a(), &agent.sign(fits, false))
            .await
            .status,
        200
    );
    let big = imds_request(&host).header("x-big", &"v".repeat(73 * 1024));
    let r = send(host.imds, ip_a(), &agent.sign(big, false)).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (431, Some("HEADERS_TOO_LARGE"))
    );
    host.shutdown().await;
}
