//! The real `msp-host` for the agent's lifecycle tests: started in-process in its test profile (loopback front
//! ends, every `127/8` source is VM `dev`, MSP on with WireServer and IMDS in enforce) with a store of its own,
//! stopped and restarted on the same store and addresses, and read back only through what an operator sees:
//! the admin API's VM view and audit log.
//!
//! It must never listen on or send to anything but loopback.
#![allow(unreachable_pub)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use msp_core::sign::{KeyGuid, SigningKey};
use msp_host::audit::{AuditQuery, AuditRecord, MAX_AUDIT_QUERY_ROWS, endpoint_name};
use msp_host::client::{self, Request, Response};
use msp_host::config::DEV_VM;
use msp_host::vm::VmView;
use msp_host::{AdminClient, Host, HostConfig, RunningHost};
use tempfile::TempDir;

/// The VM the agent is (every loopback source belongs to it in [`HostConfig::test`]).
pub const VM: &str = DEV_VM;
/// The address the agent's calls come from.
pub const AGENT_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How often [`eventually`] re-checks.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// A running host and the directory of its store.
pub struct TestHost {
    pub host: RunningHost,
    config: HostConfig,
    dir: TempDir,
}

/// A stopped host: its store and the addresses it served on, to come back on them.
pub struct StoppedHost {
    config: HostConfig,
    dir: TempDir,
}

/// The secure-channel and report calls the host received from the VM, counted from its audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelCalls {
    pub status_polls: usize,
    pub acquires: usize,
    pub attestations: usize,
    pub reports: usize,
    /// The guid of every key the host issued, oldest first.
    pub issued: Vec<String>,
}

impl TestHost {
    pub async fn start() -> TestHost {
        TestHost::start_with(|_| {}).await
    }

    /// Starts with [`HostConfig::test`] changed by `edit` (front ends must stay on loopback).
    pub async fn start_with(edit: impl FnOnce(&mut HostConfig)) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = HostConfig::test(dir.path());
        edit(&mut config);
        TestHost::run(config, dir).await
    }

    async fn run(config: HostConfig, dir: TempDir) -> TestHost {
        for a in [
            config.wireserver_listen,
            config.hostga_listen,
            config.imds_listen,
        ] {
            assert!(a.ip().is_loopback(), "{a} is not loopback");
        }
        let host = Host::start(config.clone()).await.expect("host starts");
        TestHost { host, config, dir }
    }

    pub fn admin(&self) -> AdminClient {
        self.host.admin()
    }

    /// The VM's settings, key facts and instance view.
    pub async fn view(&self) -> VmView {
        self.admin().vm_view(VM).await.expect("vm view")
    }

    /// The VM's latched key guid.
    pub async fn latched(&self) -> Option<String> {
        self.view().await.key.latched_guid
    }

    /// Every WireServer decision of the VM, oldest first (the queue is flushed first).
    pub async fn wireserver_audit(&self) -> Vec<AuditRecord> {
        self.host.flush().await;
        let q = AuditQuery {
            vm: Some(VM.into()),
            endpoint: Some(endpoint_name(msp_core::Endpoint::WireServer).into()),
            limit: Some(MAX_AUDIT_QUERY_ROWS),
            ..Default::default()
        };
        let mut records = self.admin().audit(&q).await.expect("audit query");
        assert!(
            records.len() < MAX_AUDIT_QUERY_ROWS as usize,
            "audit log outgrew one query"
        );
        records.reverse();
        records
    }

    /// The secure-channel calls and status reports the host received (spec §2.2, §9.3).
    pub async fn calls(&self) -> ChannelCalls {
        let mut c = ChannelCalls::default();
        for r in self.wireserver_audit().await {
            match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/secure-channel/status") => c.status_polls += 1,
                ("POST", "/secure-channel/key") => {
                    c.acquires += 1;
                    if r.status == 200 {
                        c.issued.extend(r.key_guid);
                    }
                }
                ("POST", p)
                    if p.starts_with("/secure-channel/key/") && p.ends_with("/key-attestation") =>
                {
                    c.attestations += 1;
                }
                ("PUT", "/machine") => c.reports += 1,
                _ => {}
            }
        }
        c
    }

    /// Waits until the host has answered `n` more status polls than `after` counted.
    pub async fn wait_for_polls(&self, after: &ChannelCalls, n: usize, limit: Duration) {
        let want = after.status_polls + n;
        eventually(&format!("{n} more status polls"), limit, || async {
            self.calls().await.status_polls >= want
        })
        .await;
    }

    /// Sends a WireServer goal-state request from the agent's address, signed with `guid` and `key` the way the
    /// proxy signs (spec §3.1); the host verifies it against the VM's latched key (spec §12.3).
    pub async fn signed_goal_state(&self, guid: &KeyGuid, key: &SigningKey) -> Response {
        let ws = self.host.wireserver;
        let req = Request::new("GET", "/machine?comp=goalstate")
            .header("Host", &ws.to_string())
            .header("x-ms-version", "2012-11-30")
            .agent_headers(true, SystemTime::now())
            .sign(guid, key);
        client::send(ws, Some(AGENT_SOURCE), &req)
            .await
            .expect("exchange with the host")
    }

    /// Stops the host gracefully (in-flight requests finish, the store is closed).
    pub async fn stop(self) -> StoppedHost {
        let TestHost { host, config, dir } = self;
        let mut config = config;
        // Come back on the very addresses the agent is configured with.
        config.wireserver_listen = host.wireserver;
        config.hostga_listen = host.hostga;
        config.imds_listen = host.imds;
        host.shutdown().await;
        StoppedHost { config, dir }
    }

    pub async fn shutdown(self) {
        self.host.shutdown().await;
    }
}

impl StoppedHost {
    /// Starts the host again on the same store and front-end addresses.
    pub async fn restart(self) -> TestHost {
        TestHost::run(self.config, self.dir).await
    }
}

/// Waits until the async check `f` holds, re-checking every [`CHECK_EVERY`]; fails after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// A loopback address for hosts that restart on a fixed port: no other test binds it, so no other test can
/// take the port while the host is down.
pub fn restart_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 61)), 0)
}
