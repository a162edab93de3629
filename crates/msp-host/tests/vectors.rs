//! The host accepts golden vectors V1–V3 (spec §3.8) as valid given the vector key and a clock within the
//! window of the vector date: conformance item 95. The vector key is latched for a VM in the store before the
//! host starts; the window is widened by exactly the time since the vector date.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msp_core::sign::{KeyGuid, SigningKey, parse_host_date};
use msp_host::audit::Decision;
use msp_host::client::{Connection, Request};
use msp_host::store::sqlite::SqliteStore;
use msp_host::store::{Store, VmRow};
use msp_host::vm::keys::IssuedKey;
use msp_host::{Host, VmConfig};
use support::*;

const KEY: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
const GUID: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
const DATE: &str = "Wed, 23 Apr 2025 12:00:00 GMT";
const VEC_VM: &str = "vectors";

fn auth(sig: &str) -> String {
    format!("Azure-HMAC-SHA256 {GUID} {sig}")
}

#[tokio::test]
async fn conf_095_host_accepts_v1_v2_v3_with_the_vector_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let vector_date = parse_host_date(DATE).unwrap();
    let age = SystemTime::now().duration_since(vector_date).unwrap();
    cfg.freshness_window_secs = age.as_secs() + 300;
    let ip = "127.0.0.4";
    cfg.vms.push(VmConfig {
        name: VEC_VM.into(),
        addresses: vec![ip.parse().unwrap()],
        settings: None,
    });
    {
        // The store creates its directory; latch the vector key directly in it.
        let mut store = SqliteStore::open(&cfg.store_path).unwrap();
        store
            .put_vm(&VmRow {
                name: VEC_VM.into(),
                vm_id: "00000000-0000-4000-8000-000000000001".into(),
                addresses: vec![ip.parse().unwrap()],
                settings: Default::default(),
            })
            .unwrap();
        store
            .latch_key(
                VEC_VM,
                &IssuedKey {
                    guid: KeyGuid::parse(GUID).unwrap(),
                    key: SigningKey::from_hex(KEY).unwrap(),
                    incarnation: 1,
                    issued: UNIX_EPOCH + Duration::from_secs(1),
                },
            )
            .unwrap();
    }
    let host = Host::start(cfg).await.unwrap();
    let local = ip.parse().unwrap();

    // V1: IMDS GET, non-elevated caller.
    let v1 = Request::new(
        "GET",
        "/metadata/instance?api-version=2021-02-01&Format=JSON",
    )
    .header("Host", "169.254.169.254")
    .header("Metadata", "true")
    .header("User-Agent", "curl/8.5.0")
    .header("Accept", "*/*")
    .header("x-ms-azure-host-claims", r#"{ "isRoot": "false"}"#)
    .header("x-ms-azure-host-date", DATE)
    .header(
        "x-ms-azure-host-authorization",
        &auth("ee133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5726"),
    );
    let r = send(host.imds, local, &v1).await;
    assert_eq!(r.status, 200, "V1: {}", r.text());
    let rec = last_audit(&host, VEC_VM, "imds").await;
    assert_eq!(
        (rec.decision, rec.key_guid.as_deref()),
        (Decision::Allowed, Some(GUID))
    );

    // V2: POST with body, duplicates (last wins, trimmed), to WireServer as root.
    let v2 = b"POST /machine?comp=health&B=2&a=1&a=1&keyOnly&a-=0 HTTP/1.1\r\n\
Host: 168.63.129.16\r\n\
Content-Type: text/xml; charset=utf-8\r\n\
Content-Length: 11\r\n\
X-Dup: first\r\n\
X-Dup:   second  \r\n\
x-ms-version: 2012-11-30\r\n\
x-ms-azure-host-claims: { \"isRoot\": \"true\"}\r\n\
x-ms-azure-host-date: Wed, 23 Apr 2025 12:00:00 GMT\r\n\
x-ms-azure-host-authorization: Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf f1c501fa737e41740c867724d95effe75ba16f8951cdd7c7cc957031cda171a1\r\n\
\r\n\
<xml>hi</x>";
    let mut c = Connection::open(host.wireserver, Some(local))
        .await
        .unwrap();
    let r = c.send_raw(v2).await.unwrap();
    assert_eq!(r.status, 200, "V2: {}", r.text());
    assert_eq!(
        last_audit(&host, VEC_VM, "wireserver").await.decision,
        Decision::Allowed
    );

    // V3: the attestation request; the key is latched, not pending, so it is verified on HostGAPlugin, which
    // applies the same §12.3 checks (and then has no such route).
    let v3 = Request::new(
        "POST",
        &format!("/secure-channel/key/{GUID}/key-attestation"),
    )
    .header("Content-Length", "0")
    .header("Host", "168.63.129.16")
    .header("Metadata", "True ")
    .header("x-ms-azure-host-claims", r#"{ "isRoot": "true"}"#)
    .header("x-ms-azure-host-date", DATE)
    .header(
        "x-ms-azure-host-authorization",
        &auth("71a091e6c9e21a0e3972a3b5a481c4d7a578f4d4f28c810636f7e43387bfb8e0"),
    );
    let r = send(host.hostga, local, &v3).await;
    assert_eq!(
        (r.status, r.header("x-msp-reason")),
        (404, Some("NOT_FOUND")),
        "V3 verified, then no route"
    );
    let rec = last_audit(&host, VEC_VM, "hostga").await;
    assert_eq!(rec.decision, Decision::Allowed, "V3 verified");

    // One byte of the signature off is a mismatch.
    let bad = v1.without("x-ms-azure-host-authorization").header(
        "x-ms-azure-host-authorization",
        &auth("ee133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5727"),
    );
    let r = send(host.imds, local, &bad).await;
    assert_eq!(r.header("x-msp-reason"), Some("SIG_MISMATCH"));
    host.shutdown().await;
}
