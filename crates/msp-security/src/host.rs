//! A real `msp-host` for one test, on loopback ports of its own, and the agent's side of the secure channel
//! played with `msp_core::sign` (to latch a key the way the agent does, spec §2.9).

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use msp_core::sign::{KeyGuid, SigningKey};
use msp_core::wire::{KEY_REQUEST_BODY, Key};
use msp_core::{Endpoint, Mode};
use msp_host::client::{self, Request, Response};
use msp_host::{Host, HostConfig, RunningHost};

/// The VM every loopback source belongs to in [`HostConfig::test`].
pub const VM: &str = "dev";

/// A started host and the directory holding its store.
pub struct TestHost {
    pub host: RunningHost,
    pub dir: tempfile::TempDir,
}

/// A key latched for the VM: what the agent holds.
pub struct Latched {
    pub guid: KeyGuid,
    pub key: SigningKey,
}

impl TestHost {
    pub async fn start() -> TestHost {
        TestHost::start_with(|_| {}).await
    }

    /// Starts with [`HostConfig::test`] changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut HostConfig)) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = HostConfig::test(dir.path());
        edit(&mut config);
        let host = Host::start(config).await.expect("host starts");
        TestHost { host, dir }
    }

    pub async fn set_mode(&self, endpoint: Endpoint, mode: Mode) {
        self.host
            .admin()
            .set_mode(VM, endpoint, mode)
            .await
            .expect("set mode");
    }

    /// Stores `document` (a spec §4.1 item) as a new version of profile `name` and makes it the IMDS
    /// allowlist of the VM (its latest version).
    pub async fn set_imds_profile(&self, name: &str, document: &str) {
        let admin = self.host.admin();
        admin.put_profile(name, document).await.expect("profile");
        let mut settings = admin.vm_view(VM).await.expect("vm").proxy_agent_settings;
        settings.imds.profile = Some(msp_host::vm::settings::ProfileRef {
            name: name.to_owned(),
            version: None,
        });
        admin.put_settings(VM, &settings).await.expect("settings");
    }

    /// Acquires and attests a key from `local` (spec §2.9), as the agent does.
    pub async fn latch(&self, local: IpAddr) -> Latched {
        let ws = self.host.wireserver;
        let acquire = Request::new("POST", "/secure-channel/key")
            .header("Host", &ws.to_string())
            .header("Metadata", "True")
            .header("Content-Type", "application/json")
            .body(KEY_REQUEST_BODY)
            .agent_headers(true, SystemTime::now());
        let r = send(ws, local, &acquire).await;
        assert_eq!(r.status, 200, "acquire: {}", r.text());
        let key = Key::parse(&r.body).expect("Key parses");
        let (guid, key) = key.signing_parts().expect("signing parts");
        let attest = Request::new(
            "POST",
            &format!("/secure-channel/key/{guid}/key-attestation"),
        )
        .header("Host", &ws.to_string())
        .header("Metadata", "True")
        .agent_headers(true, SystemTime::now())
        .sign(&guid, &key);
        let r = send(ws, local, &attest).await;
        assert_eq!(r.status, 200, "attestation: {}", r.text());
        Latched { guid, key }
    }

    /// The IMDS instance request of golden vector V1, without the agent's headers.
    pub fn imds_request(&self) -> Request {
        Request::new(
            "GET",
            "/metadata/instance?api-version=2021-02-01&format=json",
        )
        .header("Host", &self.host.imds.to_string())
        .header("Metadata", "true")
    }
}

/// One exchange from `local` to `to`.
pub async fn send(to: SocketAddr, local: IpAddr, req: &Request) -> Response {
    client::send(to, Some(local), req).await.expect("exchange")
}
