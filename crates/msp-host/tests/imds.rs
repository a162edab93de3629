//! IMDS request rules after verification (spec §12.4): `Metadata: true`, no `X-Forwarded-For`, a supported
//! `api-version`; and the documents it serves.

mod support;

use msp_host::client::Request;
use support::*;

#[tokio::test]
async fn unsigned_in_enforce_is_401_whatever_else_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let _ = latch(&host, ip_a()).await;
    let bad = Request::new("GET", "/metadata/instance").header("X-Forwarded-For", "10.0.0.1");
    let r = send(host.imds, ip_a(), &bad).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (401, Some("AUTH_MISSING"))
    );
    host.shutdown().await;
}

#[tokio::test]
async fn signed_requests_get_the_imds_rules() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let cases = [
        (
            Request::new("GET", "/metadata/instance?api-version=2021-02-01"),
            400,
            Some("METADATA_HEADER_REQUIRED"),
        ),
        (
            Request::new("GET", "/metadata/instance?api-version=2021-02-01")
                .header("Metadata", "false"),
            400,
            Some("METADATA_HEADER_REQUIRED"),
        ),
        (
            imds_request(&host).header("X-Forwarded-For", "203.0.113.9"),
            400,
            Some("FORWARDED_REFUSED"),
        ),
        (
            Request::new("GET", "/metadata/instance").header("Metadata", "true"),
            400,
            Some("API_VERSION_INVALID"),
        ),
        (
            Request::new("GET", "/metadata/instance?api-version=1999-01-01")
                .header("Metadata", "true"),
            400,
            Some("API_VERSION_INVALID"),
        ),
        (
            Request::new("GET", "/metadata/nothing?api-version=2021-02-01")
                .header("Metadata", "true"),
            404,
            Some("NOT_FOUND"),
        ),
        (
            Request::new("GET", "/metadata/versions").header("Metadata", "True"),
            200,
            None,
        ),
        (imds_request(&host), 200, None),
    ];
    for (req, status, reason) in cases {
        let target = req.target.clone();
        let r = send(host.imds, ip_a(), &agent.sign(req, false)).await;
        assert_eq!(
            (r.status, r.header("x-msp-reason")),
            (status, reason),
            "{target}: {}",
            r.text()
        );
    }
    let rec = last_audit(&host, VM_A, "imds").await;
    assert_eq!(rec.decision, msp_host::audit::Decision::Allowed);
    host.shutdown().await;
}

#[tokio::test]
async fn instance_and_token_documents_are_vm_bound_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path()).await;
    let agent = latch(&host, ip_a()).await;
    let view = host.admin().vm_view(VM_A).await.unwrap();
    let r = send(host.imds, ip_a(), &agent.sign(imds_request(&host), false)).await;
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["compute"]["vmId"], view.vm_id.as_str());
    assert_eq!(doc["compute"]["name"], VM_A);
    assert_eq!(
        doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"],
        "127.0.0.2"
    );
    let sub = Request::new(
        "GET",
        "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
    )
    .header("Metadata", "true");
    let r = send(host.imds, ip_a(), &agent.sign(sub, false)).await;
    assert_eq!(r.text(), view.vm_id);

    let token = Request::new(
        "GET",
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
    )
    .header("Metadata", "true");
    let r = send(host.imds, ip_a(), &agent.sign(token, false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc: serde_json::Value = r.json().unwrap();
    assert_eq!(doc["token_type"], "Bearer");
    assert_eq!(doc["resource"], "https://vault.azure.net");
    assert_eq!(doc["client_id"], view.vm_id.as_str());
    let jwt = doc["access_token"].as_str().unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["aud"], "https://vault.azure.net");
    assert_eq!(claims["sub"], view.vm_id.as_str());
    let missing = Request::new(
        "GET",
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
    )
    .header("Metadata", "true");
    let r = send(host.imds, ip_a(), &agent.sign(missing, false)).await;
    assert_eq!(r.status, 400);
    host.shutdown().await;
}
