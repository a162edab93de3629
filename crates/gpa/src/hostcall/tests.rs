use std::sync::Arc;
use std::time::Instant;

use msp_core::sign::{KeyGuid, SigningKey};

use super::*;
use crate::test_host::{FakeHost, response};

const V3_KEY: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
const V3_GUID: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
const DATE: &str = "Wed, 23 Apr 2025 12:00:00 GMT";

#[test]
fn conf_022_attestation_headers_reproduce_vector_v3() {
    let key = ReadyKey {
        guid: KeyGuid::parse(V3_GUID).unwrap(),
        key: SigningKey::from_hex(V3_KEY).unwrap(),
        incarnation_id: None,
    };
    let call = OwnCall {
        method: http::Method::POST,
        dest: "168.63.129.16:80".parse().unwrap(),
        target: format!("/secure-channel/key/{V3_GUID}/key-attestation"),
        headers: vec![("metadata", "True".to_owned())],
        body: Bytes::new(),
        date: DATE.to_owned(),
        sign: Some(&key),
    };
    let headers = build_headers(&call);
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "x-ms-azure-host-date",
            "host",
            "x-ms-azure-host-claims",
            "content-length",
            "metadata",
            "x-ms-azure-host-authorization"
        ]
    );
    assert_eq!(headers[1].1, "168.63.129.16");
    assert_eq!(headers[2].1, "{ \"isRoot\": \"true\"}");
    assert_eq!(headers[3].1, "0");
    assert_eq!(
        headers[5].1,
        "Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf \
         71a091e6c9e21a0e3972a3b5a481c4d7a578f4d4f28c810636f7e43387bfb8e0"
    );
}

#[test]
fn conf_002_host_header_is_the_ip_literal_with_port_unless_80() {
    assert_eq!(
        host_header("168.63.129.16:80".parse().unwrap()),
        "168.63.129.16"
    );
    assert_eq!(
        host_header("168.63.129.16:32526".parse().unwrap()),
        "168.63.129.16:32526"
    );
    assert_eq!(
        host_header("127.0.0.16:8080".parse().unwrap()),
        "127.0.0.16:8080"
    );
    assert_eq!(host_header("[::1]:80".parse().unwrap()), "[::1]");
    assert_eq!(
        host_header("[fd00::1]:8080".parse().unwrap()),
        "[fd00::1]:8080"
    );
}

fn get(dest: SocketAddr) -> OwnCall<'static> {
    OwnCall {
        method: http::Method::GET,
        dest,
        target: "/secure-channel/status".to_owned(),
        headers: vec![("metadata", "True".to_owned())],
        body: Bytes::new(),
        date: DATE.to_owned(),
        sign: None,
    }
}

#[tokio::test]
async fn conf_004_unsigned_call_carries_exactly_the_fixed_headers() {
    let host = FakeHost::start(Arc::new(|_| Some(response("200 OK", &[], b"{}")))).await;
    let resp = HostClient::new(Duration::from_secs(5))
        .call(get(host.addr))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "{}");
    let req = &host.requests()[0];
    let names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(req.header("host"), Some(host_header(host.addr).as_str()));
    assert_eq!(
        req.header("x-ms-azure-host-claims"),
        Some("{ \"isRoot\": \"true\"}")
    );
    assert_eq!(req.header("x-ms-azure-host-date"), Some(DATE));
    assert_eq!(req.header("content-length"), Some("0"));
    assert_eq!(req.header("metadata"), Some("True"));
    assert_eq!(req.header("x-ms-azure-host-authorization"), None);
}

#[tokio::test]
async fn conf_005_a_host_that_never_answers_fails_within_the_call_timeout() {
    let host = FakeHost::start(Arc::new(|_| None)).await;
    let started = Instant::now();
    let err = HostClient::new(Duration::from_millis(300))
        .call(get(host.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, HostCallError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn oversized_body_is_a_failed_call() {
    let host = FakeHost::start(Arc::new(|_| {
        Some(response("200 OK", &[], &vec![b'a'; MAX_RESPONSE_BODY + 1]))
    }))
    .await;
    let err = HostClient::new(Duration::from_secs(10))
        .call(get(host.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, HostCallError::BodyTooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = HostClient::new(Duration::from_secs(5))
        .call(get(addr))
        .await
        .unwrap_err();
    assert!(matches!(err, HostCallError::Connect { .. }), "{err:?}");
}

#[test]
fn body_decoding_follows_spec_2_1() {
    let ct = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, v.parse().unwrap());
        h
    };
    let utf16: Vec<u8> = "{\"a\":1}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(
        decode_body(&ct("application/json; charset=utf-16"), &utf16).unwrap(),
        "{\"a\":1}"
    );
    assert!(matches!(
        decode_body(&ct("application/json; charset=UTF-32"), b"{}"),
        Err(HostCallError::CharsetUnsupported { .. })
    ));
    assert!(matches!(
        decode_body(&HeaderMap::new(), b"\xff\xfe"),
        Err(HostCallError::Undecodable { .. })
    ));
    assert!(matches!(
        decode_body(&ct("text/xml; charset=utf-16"), &[0x00, 0xd8]),
        Err(HostCallError::Undecodable { .. })
    ));
    assert_eq!(decode_body(&ct("text/xml"), "é".as_bytes()).unwrap(), "é");
}
