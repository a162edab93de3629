//! The real eBPF redirector on a child cgroup, sending chosen endpoints to a proxy stand-in on loopback: for the
//! rows about interception and identity that need no proxy logic (C3, C5, C6, C9). The redirector is detached
//! before the cgroup is removed, also when the test fails.

use std::net::SocketAddr;
use std::time::Duration;

use gpa::redirect::{ConnRecord, RedirectConfig, RedirectFailMode, Redirector};
use tokio::net::{TcpListener, TcpStream};

use crate::cgroup::TestCgroup;

/// How long a test waits for a redirected connection to arrive.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Intercept {
    // Field order is drop order: detach first, then remove the cgroup.
    pub redirector: Redirector,
    pub proxy: TcpListener,
    pub cgroup: TestCgroup,
}

impl Intercept {
    /// Attaches to a new child cgroup and redirects `endpoints` to a fresh listener on `127.0.0.1`.
    pub async fn start(tag: &str, endpoints: &[SocketAddr]) -> Intercept {
        let cgroup = TestCgroup::new(tag);
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let redirector = Redirector::start(RedirectConfig {
            cgroup_root: Some(cgroup.path.clone()),
            listener: proxy.local_addr().expect("proxy address"),
            object_path: None,
            fail_mode: RedirectFailMode::Open,
        })
        .expect("start the redirector");
        redirector.set_policy(endpoints).expect("set the policy");
        Intercept {
            redirector,
            proxy,
            cgroup,
        }
    }

    /// Accepts the next redirected connection and takes its record (`None`: the kernel recorded nothing).
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Option<ConnRecord>) {
        let (stream, peer) = tokio::time::timeout(ACCEPT_TIMEOUT, self.proxy.accept())
            .await
            .expect("a redirected connection within the timeout")
            .expect("accept");
        let record = self.redirector.take(peer);
        (stream, peer, record)
    }
}
