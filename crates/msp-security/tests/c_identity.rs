//! Catalog C (identity and interception) rows with the real redirector on a child cgroup and the attacker as a
//! separate process: C3 (symlinked and copied binaries), C5 (new cgroup and user namespaces), C6 (a caller in
//! its own network namespace), C9 (UDP and raw sockets). C1, C2, C4, C7 and C8 are tested where they live
//! (SECURITY.md lists each test).
#![cfg(target_os = "linux")]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpa::identity::IdentityResolver;
use msp_core::canon::{Destination, Request};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{self, AllowedBy, Decision, Items};
use msp_core::{Claims, Endpoint, Mode, Reason};
use msp_host::{Host, HostConfig};
use msp_security::intercept::Intercept;
use msp_security::probe::Probe;
use msp_security::{NetNs, probe, root_ready};
use tokio::io::AsyncWriteExt;

const NOBODY: u32 = 65534;
const GET_INSTANCE: &[u8] = b"GET /metadata/instance HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n";

fn probe_exe() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_msp-probe"))
        .canonicalize()
        .unwrap()
}

/// An endpoint address on loopback that only the redirector ever "reaches" (nothing listens there).
fn endpoint() -> SocketAddr {
    "127.0.0.254:18080".parse().unwrap()
}

/// Accepts one redirected connection while `probe` runs, resolves the caller's claims, answers 204, and
/// returns the claims and the probe's report.
async fn claims_of(ic: &Intercept, probe: Probe) -> (Claims, msp_security::ProbeResult) {
    let run = tokio::spawn(probe.tcp(endpoint(), GET_INSTANCE, 5000));
    let (mut stream, peer, record) = ic.accept().await;
    let record = record.expect("a redirected connection has a record");
    let claims = tokio::task::spawn_blocking(move || IdentityResolver::new().claims(&record, peer))
        .await
        .unwrap()
        .expect("a live caller");
    stream
        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(stream);
    (claims, run.await.unwrap())
}

/// An enforce IMDS item that grants `/metadata/instance` only to the executable at `exe`.
fn items_allowing(exe: &Path) -> Items {
    let doc = serde_json::json!({
        "defaultAccess": "deny", "mode": "enforce", "id": "imds-c3",
        "rules": {
            "privileges": [{"name": "instance", "path": "/metadata/instance"}],
            "roles": [{"name": "readers", "privileges": ["instance"]}],
            "identities": [{"name": "the-tool", "exePath": exe.display().to_string()}],
            "roleAssignments": [{"role": "readers", "identities": ["the-tool"]}]
        }
    });
    let built = rules::build_item(&doc.to_string(), None);
    assert!(built.host_error.is_none(), "{:?}", built.host_error);
    Items {
        imds: Some(built.item),
        ..Items::default()
    }
}

fn decide(items: &Items, claims: &Claims) -> Decision {
    let addrs = EndpointAddrs {
        imds: endpoint(),
        ..EndpointAddrs::default()
    };
    let dest = Destination::Endpoint(Endpoint::Imds);
    let req = Request {
        method: "GET",
        target: b"/metadata/instance",
        dest: &dest,
        addrs: &addrs,
    };
    rules::authorize(&req, false, claims, items)
}

#[tokio::test(flavor = "multi_thread")]
async fn c3_root_symlinked_and_copied_binaries_get_the_real_executables_decision() {
    if !root_ready("c3_root_symlinked_and_copied_binaries_get_the_real_executables_decision") {
        return;
    }
    let real = probe_exe();
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("allowed-looking-link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let copy = dir.path().join("copied-tool");
    std::fs::copy(&real, &copy).unwrap();
    std::fs::set_permissions(&copy, PermissionsExt::from_mode(0o755)).unwrap();
    let items = items_allowing(&real);
    let ic = Intercept::start("c3", &[endpoint()]).await;

    // The real binary, by its path: allowed by the exePath identity.
    let (claims, _) = claims_of(&ic, Probe::new(&real).in_cgroup(&ic.cgroup)).await;
    assert_eq!(&*claims.process_full_path, real.display().to_string());
    assert!(matches!(
        decide(&items, &claims),
        Decision::Allow {
            by: AllowedBy::Privilege { .. }
        }
    ));

    // Through a symlink: the kernel records the real executable, and so do the claims: same decision.
    let (claims, _) = claims_of(&ic, Probe::new(&link).in_cgroup(&ic.cgroup)).await;
    assert_eq!(&*claims.process_full_path, real.display().to_string());
    assert!(decide(&items, &claims).forwards());

    // A byte-identical copy elsewhere is another executable: not the allowed one.
    let (claims, _) = claims_of(&ic, Probe::new(&copy).in_cgroup(&ic.cgroup)).await;
    assert_eq!(&*claims.process_full_path, copy.display().to_string());
    assert_eq!(
        decide(&items, &claims),
        Decision::Deny {
            reason: Reason::RuleDeny,
            privilege: Some("instance".into())
        }
    );
    // The bind-mount impostor is `gpa`'s c3_root_a_bind_mounted_impostor_never_gets_the_allowed_path.
}

#[tokio::test(flavor = "multi_thread")]
async fn c5_root_a_caller_in_new_cgroup_and_user_namespaces_is_intercepted_as_its_real_uid() {
    if !root_ready(
        "c5_root_a_caller_in_new_cgroup_and_user_namespaces_is_intercepted_as_its_real_uid",
    ) {
        return;
    }
    let ic = Intercept::start("c5", &[endpoint()]).await;
    // `unshare -Cr` as nobody: root inside its own user namespace, in its own cgroup namespace.
    let (claims, report) = claims_of(
        &ic,
        probe!()
            .in_cgroup(&ic.cgroup)
            .as_uid(NOBODY)
            .unshare_cgroup_user(),
    )
    .await;
    assert!(report.ok(), "{:?}", report.0);
    let ours = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_ne!(report.field("cgroupns"), ours.display().to_string());
    // Intercepted, and identified by its real uid: "root" inside a user namespace is not elevated.
    assert_eq!(claims.user_id, u64::from(NOBODY));
    assert_eq!(&*claims.user_name, "nobody");
    assert!(!claims.run_as_elevated);
    let counters = ic.redirector.counters().unwrap();
    assert_eq!(counters.redirected, 1);
}

/// Runs an `msp-host` (IMDS in enforce) inside `ns` until `stop` is sent; returns its IMDS address there.
fn host_in(
    ns: &NetNs,
    dir: PathBuf,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = ns.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let host = Host::start(HostConfig::test(&dir)).await.expect("host");
            host.admin()
                .set_mode("dev", Endpoint::Imds, Mode::Enforce)
                .await
                .expect("enforce");
            ready_tx.send(host.imds).unwrap();
            let _ = stop_rx.await;
            host.shutdown().await;
        });
    });
    let imds = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("host in the namespace");
    (imds, stop_tx, thread)
}

#[tokio::test(flavor = "multi_thread")]
async fn c6_root_own_netns_caller_is_refused_inside_the_cgroup_and_unsigned_outside_it() {
    if !root_ready("c6_root_own_netns_caller_is_refused_inside_the_cgroup_and_unsigned_outside_it")
    {
        return;
    }
    let ns = NetNs::new("c6");
    let dir = tempfile::tempdir().unwrap();
    // The caller's namespace has its own metadata service (IMDS in enforce) at the intercepted address.
    let (imds, stop, thread) = host_in(&ns, dir.path().to_path_buf());
    let ic = Intercept::start("c6", &[imds]).await;
    let request = format!(
        "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: {imds}\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    );

    // Inside the intercepted cgroup: sent to the proxy port on its own loopback, where nothing listens.
    let inside = probe!()
        .in_cgroup(&ic.cgroup)
        .in_netns(&ns)
        .tcp(imds, request.as_bytes(), 3000)
        .await;
    assert!(!inside.ok(), "{:?}", inside.0);
    assert_eq!(inside.errno(), libc::ECONNREFUSED, "{:?}", inside.0);
    let counters = ic.redirector.counters().unwrap();
    assert_eq!(counters.redirected, 1, "the connect was redirected");
    // Its record lived in the refused socket's storage and went with it; nothing was handed out.
    assert_eq!(counters.taken, 0);

    // Outside it: straight to the service, unsigned, and the host refuses it (enforce).
    let outside = probe!()
        .in_netns(&ns)
        .tcp(imds, request.as_bytes(), 5000)
        .await;
    assert!(outside.ok(), "{:?}", outside.0);
    let r = outside.response();
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), Some(Reason::AuthMissing.code()));
    assert_eq!(ic.redirector.counters().unwrap().redirected, 1);

    stop.send(()).unwrap();
    thread.join().unwrap();
}

/// A UDP header (no checksum, allowed on IPv4) and payload, for a raw `IPPROTO_UDP` socket.
fn udp_packet(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut p = Vec::new();
    p.extend_from_slice(&4242u16.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn c9_root_udp_and_raw_packets_to_an_intercepted_address_are_not_redirected_or_recorded() {
    if !root_ready(
        "c9_root_udp_and_raw_packets_to_an_intercepted_address_are_not_redirected_or_recorded",
    ) {
        return;
    }
    // The intercepted endpoint's address and port, where a UDP socket listens.
    let sink = UdpSocket::bind("127.0.0.254:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let target = sink.local_addr().unwrap();
    let ic = Intercept::start("c9", &[target]).await;

    let sent = probe!()
        .in_cgroup(&ic.cgroup)
        .udp(target, b"udp-sendto", false)
        .await;
    assert!(sent.ok(), "{:?}", sent.0);
    let sent = probe!()
        .in_cgroup(&ic.cgroup)
        .udp(target, b"udp-connected", true)
        .await;
    assert!(sent.ok(), "{:?}", sent.0);
    let sent = probe!()
        .in_cgroup(&ic.cgroup)
        .raw(
            target,
            libc::IPPROTO_UDP,
            &udp_packet(target.port(), b"raw-ip"),
        )
        .await;
    assert!(sent.ok(), "{:?}", sent.0);

    // All three reach the original address unchanged: nothing intercepted them.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let (n, _) = sink
            .recv_from(&mut buf)
            .expect("datagram at the original address");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got.sort();
    assert_eq!(got, ["raw-ip", "udp-connected", "udp-sendto"]);
    // No redirect, no record: such traffic is never signed, and the host refuses unsigned requests
    // (conf_097_b2_enforce_without_agent_refuses_all_but_exempt_and_secure_channel).
    let counters = ic.redirector.counters().unwrap();
    assert_eq!((counters.connects_seen, counters.redirected), (0, 0));
    // Control: a TCP connect from the same cgroup to the same address is redirected.
    let run = tokio::spawn(probe!().in_cgroup(&ic.cgroup).tcp(target, b"", 2000));
    let (_stream, _peer, record) = ic.accept().await;
    assert_eq!(record.expect("recorded").original_dst, target);
    drop(run);
}
