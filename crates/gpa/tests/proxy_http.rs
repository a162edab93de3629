//! The proxy's HTTP behaviour (spec §3, §8, §9.2, §9.6) over loopback, without root: the real proxy and key
//! keeper against the real in-process `msp_host`, attribution injected through the proxy's `Attributor` seam,
//! and a recording stand-in for the original destination that shows exactly what went upstream.

mod proxy_support;

use std::time::Duration;

use msp_core::sign::{self, KeyGuid, RequestParts};
use msp_core::{Endpoint, Mode};
use proxy_support::*;

fn text(r: &[u8]) -> String {
    String::from_utf8_lossy(r).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_allowed_imds_request_is_signed_and_verified_by_the_host() {
    let t = TestAgent::start(Options {
        imds_recorder: false,
        ..Options::default()
    })
    .await;
    t.ready().await;
    let r = t
        .send(
            t.imds(),
            Who::User,
            &get("/metadata/instance?api-version=2021-02-01", t.imds()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r.raw));
    assert_eq!(
        r.header("x-ms-azure-host-authorization").as_deref(),
        Some("value")
    );
    t.host.flush().await;
    let audit = t
        .host
        .admin()
        .audit(&msp_host::audit::AuditQuery {
            endpoint: Some("imds".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let rec = audit
        .iter()
        .find(|a| a.path == "/metadata/instance")
        .expect("audited");
    assert_eq!(rec.status, 200);
    assert_eq!(rec.reason, None, "verified, not merely served: {rec:?}");
    assert_eq!(
        rec.key_guid.as_deref(),
        Some(t.snapshot().key.as_ref().unwrap().guid.as_str())
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_029_031_b4_forged_headers_replaced_and_the_signed_set_is_what_arrives() {
    let t = TestAgent::start(Options::default()).await;
    let snap = t.ready().await;
    let req = format!(
        "POST /metadata/x?b=2&A=1#frag HTTP/1.1\r\nHost: {imds}\r\nX-Dup: first\r\nX-Dup:   second  \r\n\
         x-ms-azure-host-authorization: Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf {sig}\r\n\
         X-MS-AZURE-HOST-CLAIMS: {{\"isRoot\":\"true\"}}\r\nx-ms-azure-host-date: Wed, 23 Apr 2025 12:00:00 GMT\r\n\
         x-ms-azure-host-anything: 1\r\nContent-Length: 5\r\n\r\nhello",
        imds = t.imds(),
        sig = "0".repeat(64)
    );
    let r = t.send(t.imds(), Who::User, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", text(&r.raw));
    let got = t.recorder.last();
    let head = got.head_text();
    assert!(
        head.starts_with("POST /metadata/x?b=2&A=1 HTTP/1.1\r\n"),
        "fragment dropped: {head}"
    );
    assert_eq!(
        got.all("x-ms-azure-host-claims"),
        [r#"{ "isRoot": "false"}"#]
    );
    assert_eq!(got.all("x-ms-azure-host-date").len(), 1);
    assert_eq!(got.all("x-ms-azure-host-authorization").len(), 1);
    assert!(got.all("x-ms-azure-host-anything").is_empty());
    assert!(
        !head.contains(&"0".repeat(64)),
        "the forged signature is gone"
    );
    // conf 31: the host verifies exactly the fields it received, and they are exactly the client's plus the
    // agent's three.
    let fields = got.fields();
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host",
            "x-dup",
            "x-dup",
            "content-length",
            "x-ms-azure-host-claims",
            "x-ms-azure-host-date",
            "x-ms-azure-host-authorization"
        ]
    );
    let key = snap.key.clone().unwrap();
    let raw_fields: Vec<(Vec<u8>, Vec<u8>)> = fields
        .iter()
        .map(|(n, v)| (n.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    let parts = RequestParts {
        method: b"POST",
        target: b"/metadata/x?b=2&A=1",
        headers: raw_fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        body: &got.body,
    };
    let verified = sign::verify_request(
        &parts,
        |g: &KeyGuid| (g == &key.guid).then(|| key.key.clone()),
        std::time::SystemTime::now(),
        Duration::from_secs(300),
    )
    .expect("the received bytes verify");
    assert!(
        !verified.is_root,
        "a non-root caller never reaches the host as root"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_030_098_hop_by_hop_removed_and_protected_connection_refused() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let req = format!(
        "GET /metadata/a HTTP/1.1\r\nHost: {h}\r\nConnection: keep-alive, X-Custom\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Custom: 1\r\nX-Kept: 2\r\n\r\n"
    );
    let r = t.send(h, Who::Root, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let names: Vec<String> = t
        .recorder
        .last()
        .fields()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "x-custom",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} reached the host: {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "x-kept"));
    let before = t.recorder.connection_count();
    for named in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "x-ms-azure-host-claims",
        "X-MS-Azure-Host-Date",
    ] {
        let req = format!("GET /metadata/a HTTP/1.1\r\nHost: {h}\r\nConnection: {named}\r\n\r\n");
        let r = t.send(h, Who::Root, req.as_bytes()).await;
        assert_eq!(r.refusal(), (400, "PROTECTED_HEADER".to_owned()), "{named}");
    }
    assert_eq!(
        t.recorder.connection_count(),
        before,
        "conf 76: refusals open no upstream connection"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_032_non_ascii_header_value_is_400_and_the_agent_keeps_running() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    for value in [&b"caf\xc3\xa9"[..], b"a\x01b", b"\x7f"] {
        let mut req = format!("GET /metadata/a HTTP/1.1\r\nHost: {h}\r\nX-V: ").into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n\r\n");
        let r = t.send(h, Who::Root, &req).await;
        assert_eq!(r.refusal(), (400, "BAD_HEADER_VALUE".to_owned()));
    }
    let r = t.send(h, Who::Root, &get("/metadata/a", h)).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.recorder.connection_count(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_034_035_exempt_requests_are_unsigned_up_to_100_mib_others_signed_with_100_kib() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    // 300 KiB to an exempt target from root: forwarded, streamed, unsigned.
    let body = vec![b'x'; 300 * 1024];
    let mut req = format!(
        "PUT /vmAgentLog HTTP/1.1\r\nHost: {h}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = t.send(h, Who::Root, &req).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let got = t.recorder.last();
    assert_eq!(got.body.len(), body.len());
    assert!(
        got.all("x-ms-azure-host-authorization").is_empty(),
        "exempt: unsigned"
    );
    assert_eq!(
        got.all("x-ms-azure-host-claims"),
        [r#"{ "isRoot": "true"}"#]
    );
    // Chunked exempt body, re-chunked on the way.
    let mut req = format!("POST /machine/?comp=telemetrydata HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n")
        .into_bytes();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n", 50 * 1024).as_bytes());
        req.extend_from_slice(&vec![b'y'; 50 * 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = t.send(h, Who::Root, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.recorder.last().body.len(), 150 * 1024);
    // conf 35: an extra parameter makes an ordinary request: signed, 100 KiB.
    let r = t
        .send(
            h,
            Who::Root,
            format!("POST /machine/?comp=telemetrydata&x=1 HTTP/1.1\r\nHost: {h}\r\nContent-Length: 102401\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(r.refusal(), (413, "BODY_TOO_LARGE".to_owned()));
    let r = t
        .send(
            h,
            Who::Root,
            format!("POST /machine/?comp=telemetrydata&x=1 HTTP/1.1\r\nHost: {h}\r\nContent-Length: 2\r\n\r\nhi")
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.recorder.last().all("x-ms-azure-host-authorization").len(),
        1
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_036_relayed_responses_carry_the_marker_generated_ones_do_not() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    t.recorder.set_reply(Reply::Bytes(
        b"HTTP/1.1 200 OK\r\nx-ms-azure-host-authorization: forged\r\nContent-Length: 3\r\n\r\nabc"
            .to_vec(),
    ));
    let r = t.send(h, Who::Root, &get("/metadata/a", h)).await;
    assert_eq!(r.body, b"abc");
    assert_eq!(r.head.matches("x-ms-azure-host-authorization").count(), 1);
    assert_eq!(
        r.header("x-ms-azure-host-authorization").as_deref(),
        Some("value")
    );
    let r = t.send(h, Who::Root, &get("//metadata", h)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-ms-azure-host-authorization"), None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_047_c1_non_root_to_wireserver_is_403_not_elevated_in_enforce_and_audit() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let ws = t.wireserver();
    for target in ["/machine?comp=goalstate", "/vmAgentLog"] {
        let method = if target == "/vmAgentLog" {
            "PUT"
        } else {
            "GET"
        };
        let req = format!("{method} {target} HTTP/1.1\r\nHost: {ws}\r\nContent-Length: 0\r\n\r\n");
        let r = t.send(ws, Who::User, req.as_bytes()).await;
        assert_eq!(r.refusal(), (403, "NOT_ELEVATED".to_owned()), "{target}");
    }
    t.host
        .admin()
        .set_mode("dev", Endpoint::WireServer, Mode::Audit)
        .await
        .unwrap();
    t.wait_snapshot("wireserver in audit", |s| {
        s.channel.modes.get(Endpoint::WireServer) == Mode::Audit
    })
    .await;
    let r = t
        .send(ws, Who::User, &get("/machine?comp=goalstate", ws))
        .await;
    assert_eq!(r.refusal(), (403, "NOT_ELEVATED".to_owned()), "audit too");
    t.wait_document("alice's three requests recorded", |d| {
        let alice = d.failed_authenticate_summary.iter();
        alice
            .filter(|i| i.user_name == "alice")
            .map(|i| i.count)
            .sum::<u64>()
            >= 3
    })
    .await;
    let failed = t.hub.document().failed_authenticate_summary;
    let entry = failed
        .iter()
        .find(|i| i.user_name == "alice")
        .expect("a failed-auth entry");
    assert_eq!(entry.response_status, "403 Forbidden");
    assert_eq!(entry.count, 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_048_a5_listener_or_foreign_destinations_are_refused_without_upstream() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let r = t
        .send(t.proxy, Who::Root, &get("/metadata/a", t.proxy))
        .await;
    assert_eq!(r.refusal(), (403, "DEST_FORBIDDEN".to_owned()));
    let h = t.imds();
    // catalog A5: an absolute-form target for a foreign host is never signed or forwarded.
    let r = t
        .send(
            h,
            Who::Root,
            b"GET http://example.com/metadata/a HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )
        .await;
    assert_eq!(r.refusal(), (400, "CANON_HOST".to_owned()));
    let r = t
        .send(
            h,
            Who::Root,
            format!("GET http://{h}/metadata/a HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "the same host in absolute form is fine");
    assert_eq!(t.recorder.connection_count(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_058_060_062_canonical_errors_traversal_in_every_mode() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let cases = [
        ("//metadata/instance", 400, "CANON_TRAVERSAL"),
        ("/metadata/x/../instance", 400, "CANON_TRAVERSAL"),
        ("/metadata/%2e%2e/x", 400, "CANON_TRAVERSAL"),
        ("/metadata/identity%3Fapi-version=2018", 400, "CANON_EMBQ"),
        ("/metadata/%C0%AFidentity", 400, "CANON_OVERLONG"),
        ("https://a/b", 405, "CANON_SCHEME"),
    ];
    for (target, status, code) in cases {
        let r = t.send(h, Who::Root, &get(target, h)).await;
        assert_eq!(r.refusal(), (status, code.to_owned()), "{target}");
        if status == 405 {
            assert!(
                r.head
                    .contains("Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH")
            );
            assert_eq!(r.body, b"Method Not Allowed");
        }
    }
    assert_eq!(t.recorder.connection_count(), 0);
    t.host
        .admin()
        .set_mode("dev", Endpoint::Imds, Mode::Audit)
        .await
        .unwrap();
    t.wait_snapshot("imds in audit", |s| {
        s.channel.modes.get(Endpoint::Imds) == Mode::Audit
    })
    .await;
    let r = t
        .send(h, Who::Root, &get("/metadata/x/../instance", h))
        .await;
    assert_eq!(
        r.refusal(),
        (400, "CANON_TRAVERSAL".to_owned()),
        "the guard holds in audit"
    );
    let r = t
        .send(h, Who::Root, &get("/metadata/identity%3Fx=1", h))
        .await;
    assert_eq!(r.status, 200, "audit: recorded, then forwarded");
    assert_eq!(t.recorder.connection_count(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_085_087_local_endpoints() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let ws = t.wireserver();
    let status = |metadata: bool| {
        let m = if metadata { "Metadata: true\r\n" } else { "" };
        format!("GET /gpa-aggregated-status HTTP/1.1\r\nHost: {ws}\r\n{m}\r\n").into_bytes()
    };
    let r = t.send(ws, Who::Root, &status(false)).await;
    assert_eq!(r.refusal(), (400, "METADATA_HEADER_REQUIRED".to_owned()));
    let r = t.send(ws, Who::User, &status(true)).await;
    assert_eq!(r.refusal(), (403, "NOT_ELEVATED".to_owned()));
    let r = t.send(ws, Who::Direct, &status(true)).await;
    assert_eq!(r.refusal(), (403, "NOT_ELEVATED".to_owned()));
    let r = t.send(ws, Who::Root, &status(true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        doc["proxyAgentStatus"]["proxyConnectionsCount"]
            .as_u64()
            .unwrap()
            >= 4
    );
    // On an IMDS-destined connection the path is not local: it goes upstream.
    let r = t.send(t.imds(), Who::Root, &status(true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.recorder.last().head_text().lines().next().unwrap(),
        "GET /gpa-aggregated-status HTTP/1.1"
    );

    // /provision: any caller, Metadata required, tick compared with finished_tick.
    let r = t
        .send(
            ws,
            Who::Direct,
            format!("GET /provision HTTP/1.1\r\nHost: {ws}\r\n\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.refusal(), (400, "METADATA_HEADER_REQUIRED".to_owned()));
    let r = t
        .send(ws, Who::Direct, format!("POST /provision HTTP/1.1\r\nHost: {ws}\r\nMetadata: 1\r\nx-ms-azure-time-tick: 1\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await;
    assert_eq!(r.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"finished": true, "errorMessage": ""})
    );
    let r = t
        .send(ws, Who::Direct, format!("GET /provision HTTP/1.1\r\nHost: {ws}\r\nMetadata: 1\r\nx-ms-azure-time-tick: {}\r\n\r\n", i64::MAX).as_bytes())
        .await;
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        answer["finished"], true,
        "finished_tick > 0 with a known state"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_041_audit_denials_are_recorded_and_forwarded_enforce_denials_are_403() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let admin = t.host.admin();
    admin
        .put_profile(
            "imds-deny",
            r#"{"defaultAccess":"deny","mode":"enforce","id":"x","rules":{
                "privileges":[{"name":"inst","path":"/metadata/instance"}],
                "roles":[{"name":"r","privileges":["inst"]}],
                "identities":[{"name":"root","userName":"root"}],
                "roleAssignments":[{"role":"r","identities":["root"]}]}}"#,
        )
        .await
        .unwrap();
    let mut settings = admin.vm_view("dev").await.unwrap().proxy_agent_settings;
    settings.imds.profile = Some(msp_host::vm::settings::ProfileRef {
        name: "imds-deny".into(),
        version: None,
    });
    admin.put_settings("dev", &settings).await.unwrap();
    t.wait_snapshot("the profile applied", |s| {
        s.items.imds.as_ref().is_some_and(|i| !i.default_allowed())
    })
    .await;
    let h = t.imds();
    let r = t.send(h, Who::User, &get("/metadata/other", h)).await;
    assert_eq!(r.refusal(), (403, "DEFAULT_DENY".to_owned()));
    let r = t.send(h, Who::User, &get("/metadata/instance", h)).await;
    assert_eq!(r.refusal(), (403, "RULE_DENY".to_owned()));
    let r = t.send(h, Who::Root, &get("/metadata/instance", h)).await;
    assert_eq!(r.status, 200);
    assert_eq!(t.recorder.connection_count(), 1);

    admin
        .set_mode("dev", Endpoint::Imds, Mode::Audit)
        .await
        .unwrap();
    t.wait_snapshot("imds in audit", |s| {
        s.channel.modes.get(Endpoint::Imds) == Mode::Audit
    })
    .await;
    let r = t.send(h, Who::User, &get("/metadata/audited", h)).await;
    assert_eq!(r.status, 200, "audit: forwarded");
    assert_eq!(
        t.recorder.last().all("x-ms-azure-host-authorization").len(),
        1,
        "and signed"
    );
    let audited = |d: &msp_core::status::AggregateStatus| {
        d.failed_authenticate_summary
            .iter()
            .filter(|i| i.user_name == "alice" && i.response_status == "403 Forbidden")
            .map(|i| i.count)
            .sum::<u64>()
    };
    t.wait_document("the audit denial recorded", |d| audited(d) >= 3)
        .await;
    assert_eq!(
        audited(&t.hub.document()),
        3,
        "two enforce denials and one audit denial"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_unknown_from_the_host_wakes_the_key_keeper() {
    let t = TestAgent::start(Options {
        imds_recorder: false,
        poll_interval: 3600,
        ..Options::default()
    })
    .await;
    let first = t.ready().await.key.clone().unwrap().guid;
    let h = t.imds();
    let req = get("/metadata/instance?api-version=2021-02-01", h);
    assert_eq!(t.send(h, Who::Root, &req).await.status, 200);
    t.host.admin().reset_key("dev").await.unwrap();
    let r = t.send(h, Who::Root, &req).await;
    assert_eq!(r.refusal(), (401, "KEY_UNKNOWN".to_owned()));
    // With a one-hour poll interval only the wake can bring the new key this fast.
    t.wait_snapshot("a new key", |s| {
        s.key.as_ref().is_some_and(|k| k.guid != first)
    })
    .await;
    assert_eq!(t.send(h, Who::Root, &req).await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_088_gpa_status_asks_the_real_proxy() {
    let t = TestAgent::start(Options::default()).await;
    let tick = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let answer = gpa::status::client::ask(t.proxy, tick, true).await.unwrap();
        if answer.finished {
            assert_eq!(answer.error_message, "");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "provisioning finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_001_ipv6_loopback_listener_only_with_an_ipv6_endpoint() {
    use std::sync::{Arc, Mutex};
    async fn listeners(imds: &str) -> (std::net::SocketAddr, Option<std::net::SocketAddr>) {
        let dir = tempfile::tempdir().unwrap();
        let config = gpa::config::Config {
            log_folder: dir.path().join("log"),
            latch_key_folder: dir.path().join("keys"),
            wire_server_endpoint: "127.0.0.16:9".parse().unwrap(),
            host_ga_plugin_endpoint: "127.0.0.16:10".parse().unwrap(),
            imds_endpoint: imds.parse().unwrap(),
            proxy_listen_address: "127.0.0.1:0".parse().unwrap(),
            ..gpa::config::Config::default()
        };
        let seen = Arc::new(Mutex::new(None));
        let seen2 = seen.clone();
        let parts = gpa::lifecycle::Parts {
            start_redirector: Box::new(|_| Err("no redirector in this test".into())),
            serve_proxy: Box::new(move |ctx| {
                *seen2.lock().unwrap() = Some((
                    ctx.listener.local_addr().unwrap(),
                    ctx.listener_v6.as_ref().map(|l| l.local_addr().unwrap()),
                ));
                Box::pin(async move { ctx.cancel.cancelled().await })
            }),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let agent = gpa::lifecycle::Agent::start(
            Arc::new(config),
            parts,
            gpa::telemetry::EventSink::new(),
            cancel.clone(),
        )
        .await;
        cancel.cancel();
        agent.stop().await;
        let seen = seen.lock().unwrap().take();
        seen.unwrap()
    }
    let (v4, v6) = listeners("127.0.0.254:9").await;
    assert!(v4.ip().is_loopback() && v6.is_none());
    let (v4, v6) = listeners("[::1]:9").await;
    let v6 = v6.expect("an IPv6 endpoint adds the [::1] listener");
    assert_eq!(
        v6,
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v4.port()))
    );
}

/// Catalog G1's buffer pool hands a finished connection's box to the next one. On a current-thread runtime every
/// connection shares one pool, so the second connection reuses what the first one's chunked body, pipelined
/// request and unfinished third head filled: none of it may reach the second request's upstream or its answer.
#[tokio::test(flavor = "current_thread")]
async fn g1_a_pooled_box_carries_nothing_from_one_connection_to_the_next() {
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let mut a = t.connect(h, Who::Root).await;
    let mut pipelined = format!(
        "POST /metadata/a1 HTTP/1.1\r\nHost: {h}\r\nMetadata: true\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nsecre\r\n4\r\nt-a1\r\n0\r\n\r\n"
    );
    pipelined.push_str(&format!(
        "POST /metadata/a2 HTTP/1.1\r\nHost: {h}\r\nMetadata: true\r\nContent-Length: 9\r\n\r\nsecret-a2"
    ));
    pipelined.push_str(&format!(
        "GET /metadata/a3 HTTP/1.1\r\nHost: {h}\r\nX-Unfinished: secret-a3"
    ));
    tokio::io::AsyncWriteExt::write_all(&mut a, pipelined.as_bytes())
        .await
        .unwrap();
    for _ in 0..2 {
        let r = read_response(&mut a).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{}", r.head);
    }
    drop(a);
    let before = t.recorder.recorded().len();
    assert_eq!(t.recorder.recorded()[before - 2].body, b"secret-a1");
    assert_eq!(t.recorder.recorded()[before - 1].body, b"secret-a2");

    let r = t.send(h, Who::Root, &get("/metadata/b", h)).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{}", r.head);
    assert!(!text(&r.raw).contains("secret"), "{}", text(&r.raw));
    let recorded = t.recorder.recorded();
    assert_eq!(recorded.len(), before + 1, "one request upstream for B");
    let b = &recorded[before];
    assert!(b.head_text().starts_with("GET /metadata/b HTTP/1.1\r\n"));
    assert!(b.raw_body.is_empty());
    assert!(!b.head_text().contains("secret"), "{}", b.head_text());
    t.stop().await;
}

/// Response bodies larger than the agent's read size (history item 29 reads up to 64 KiB at a time and writes
/// body bytes straight from the upstream buffer) arrive whole and unaltered whatever their framing, and a body
/// with a length or chunks ends exactly where it should: the same connection then carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_arrive_whole_by_length_by_chunks_and_until_close() {
    const SIZE: usize = 300 * 1024;
    let t = TestAgent::start(Options::default()).await;
    t.ready().await;
    let h = t.imds();
    let body: Vec<u8> = (0..SIZE).map(|i| b'a' + (i % 23) as u8).collect();

    let mut by_length = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").into_bytes();
    by_length.extend_from_slice(&body);
    let mut by_chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut at = 0;
    for size in [1, 4095, 70_000, 5, 65_536, 100_000].into_iter().cycle() {
        let end = (at + size).min(SIZE);
        by_chunks.extend_from_slice(format!("{:x}\r\n", end - at).as_bytes());
        by_chunks.extend_from_slice(&body[at..end]);
        by_chunks.extend_from_slice(b"\r\n");
        at = end;
        if at == SIZE {
            break;
        }
    }
    by_chunks.extend_from_slice(b"0\r\n\r\n");

    let mut client = t.connect(h, Who::Root).await;
    for (framing, reply) in [("length", by_length), ("chunks", by_chunks)] {
        t.recorder.set_reply(Reply::Bytes(reply));
        tokio::io::AsyncWriteExt::write_all(&mut client, &get("/metadata/large", h))
            .await
            .unwrap();
        let r = read_response(&mut client).await;
        assert_eq!(r.status, 200, "{framing}: {}", r.head);
        assert!(r.body == body, "{framing}: the body arrived altered");
        assert_eq!(
            r.header("x-ms-azure-host-authorization").as_deref(),
            Some("value")
        );
    }
    t.recorder.set_reply(Reply::Bytes(OK_REPLY.to_vec()));
    tokio::io::AsyncWriteExt::write_all(&mut client, &get("/metadata/after", h))
        .await
        .unwrap();
    let r = read_response(&mut client).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]), "{}", r.head);
    assert_eq!(
        t.recorder.connection_count(),
        1,
        "each large response left the upstream connection clean for the next request"
    );

    let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    until_close.extend_from_slice(&body);
    t.recorder.set_reply(Reply::BytesThenClose(until_close));
    let r = t.send(h, Who::Root, &get("/metadata/large", h)).await;
    assert_eq!(r.status, 200, "until close: {}", r.head);
    assert!(r.body == body, "until close: the body arrived altered");
    t.stop().await;
}
