//! Test support: start a host on loopback with two extra VMs and play the agent with `msp_core::sign`.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use msp_core::sign::{KeyGuid, SigningKey};
use msp_core::wire::{KEY_REQUEST_BODY, Key, KeyStatus};
use msp_host::audit::{AuditQuery, AuditRecord};
use msp_host::client::{self, Request, Response};
use msp_host::{Host, HostConfig, RunningHost, VmConfig};

/// vm-a and vm-b are single loopback addresses; everything else on 127/8 is the `dev` VM.
pub const VM_A: &str = "vm-a";
pub const VM_B: &str = "vm-b";

pub fn ip_a() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

pub fn ip_b() -> IpAddr {
    "127.0.0.3".parse().unwrap()
}

pub fn config(dir: &Path) -> HostConfig {
    let mut cfg = HostConfig::test(dir);
    cfg.vms.push(VmConfig {
        name: VM_A.into(),
        addresses: vec!["127.0.0.2".parse().unwrap()],
        settings: None,
    });
    cfg.vms.push(VmConfig {
        name: VM_B.into(),
        addresses: vec!["127.0.0.3/32".parse().unwrap()],
        settings: None,
    });
    cfg
}

pub async fn start(dir: &Path) -> RunningHost {
    Host::start(config(dir)).await.expect("host starts")
}

/// The agent's view: where it talks from, and its latched key.
pub struct Agent {
    pub local: IpAddr,
    pub wireserver: SocketAddr,
    pub guid: KeyGuid,
    pub key: SigningKey,
}

/// An unsigned secure-channel call shaped like spec §2.2.
pub fn channel_request(method: &str, target: &str, host: SocketAddr) -> Request {
    Request::new(method, target)
        .header("Host", &host.to_string())
        .header("Metadata", "True")
}

pub async fn send(addr: SocketAddr, local: IpAddr, req: &Request) -> Response {
    client::send(addr, Some(local), req)
        .await
        .expect("exchange")
}

pub async fn key_status(host: &RunningHost, local: IpAddr) -> (Response, KeyStatus) {
    let r = send(
        host.wireserver,
        local,
        &channel_request("GET", "/secure-channel/status", host.wireserver)
            .agent_headers(true, SystemTime::now()),
    )
    .await;
    let ks = KeyStatus::parse(&r.body).expect("KeyStatus parses");
    (r, ks)
}

pub async fn acquire(host: &RunningHost, local: IpAddr) -> (Response, Option<Key>) {
    let req = channel_request("POST", "/secure-channel/key", host.wireserver)
        .header("Content-Type", "application/json")
        .body(KEY_REQUEST_BODY)
        .agent_headers(true, SystemTime::now());
    let r = send(host.wireserver, local, &req).await;
    let key = (r.status == 200).then(|| Key::parse(&r.body).expect("Key parses"));
    (r, key)
}

pub fn attestation(
    host: &RunningHost,
    guid: &KeyGuid,
    key: &SigningKey,
    date: SystemTime,
) -> Request {
    channel_request(
        "POST",
        &format!("/secure-channel/key/{guid}/key-attestation"),
        host.wireserver,
    )
    .agent_headers(true, date)
    .sign(guid, key)
}

/// status → key → attestation → latched (spec §2.9).
pub async fn latch(host: &RunningHost, local: IpAddr) -> Agent {
    let (_, key) = acquire(host, local).await;
    let (guid, signing) = key.expect("key issued").signing_parts().unwrap();
    let r = send(
        host.wireserver,
        local,
        &attestation(host, &guid, &signing, SystemTime::now()),
    )
    .await;
    assert_eq!(r.status, 200, "attestation: {}", r.text());
    Agent {
        local,
        wireserver: host.wireserver,
        guid,
        key: signing,
    }
}

impl Agent {
    /// Adds the agent's headers and signs with the latched key.
    pub fn sign(&self, req: Request, is_root: bool) -> Request {
        req.agent_headers(is_root, SystemTime::now())
            .sign(&self.guid, &self.key)
    }

    pub fn sign_at(&self, req: Request, is_root: bool, date: SystemTime) -> Request {
        req.agent_headers(is_root, date).sign(&self.guid, &self.key)
    }
}

pub async fn audit(host: &RunningHost, q: AuditQuery) -> Vec<AuditRecord> {
    host.admin().audit(&q).await.expect("audit query")
}

/// The newest audit record for a VM and endpoint.
pub async fn last_audit(host: &RunningHost, vm: &str, endpoint: &str) -> AuditRecord {
    audit(
        host,
        AuditQuery {
            vm: Some(vm.into()),
            endpoint: Some(endpoint.into()),
            limit: Some(1),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .next()
    .expect("an audit record")
}

pub fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

/// The IMDS instance request of golden vector V1, minus the agent's headers.
pub fn imds_request(host: &RunningHost) -> Request {
    Request::new(
        "GET",
        "/metadata/instance?api-version=2021-02-01&format=json",
    )
    .header("Host", &host.imds.to_string())
    .header("Metadata", "true")
}

pub fn goal_state_request(host: &RunningHost) -> Request {
    Request::new("GET", "/machine?comp=goalstate")
        .header("Host", &host.wireserver.to_string())
        .header("x-ms-version", "2012-11-30")
}

pub fn vm_settings_request(host: &RunningHost) -> Request {
    Request::new("GET", "/vmSettings").header("Host", &host.hostga.to_string())
}
