//! Root tests of the redirector against the real kernel: interception, attribution and the records' lifetime
//! (spec §7, conformance items 63–73). Each test attaches only to a child cgroup it creates; clients run inside
//! it, the harness outside. Every address is loopback.
#![cfg(target_os = "linux")]

mod redirect_support;

use std::net::SocketAddr;

use redirect_support::*;

/// Entry point of the re-executed client processes (`redirect_support::child`); a no-op in a normal run.
#[test]
#[ignore = "child-process entry point, run by the harness"]
fn child_role_entry() {
    child::child_main();
}

#[test]
fn root_redirects_ipv4_connect_and_records_the_caller() {
    if !root_ready("root_redirects_ipv4_connect_and_records_the_caller") {
        return;
    }
    let cgroup = TestCgroup::new("ipv4");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let client = Spawn {
        role: "connect",
        env: vec![("GPA_TEST_TARGET", endpoint.addr.to_string())],
        cgroup: Some(&cgroup),
        ..Spawn::default()
    }
    .run();
    let report = client.report();
    assert_eq!(report["connected"], "1", "{report:?}");
    // getpeername shows the original destination (spec §7.2) ...
    assert_eq!(report["peer"], endpoint.addr.to_string());
    // ... while the connection arrived at the proxy, from the client's own address.
    let accepted = proxy.accept();
    assert_eq!(accepted.peer.to_string(), report["local"]);
    let record = redirector
        .take(accepted.peer)
        .expect("record for a redirected connect");
    assert_eq!(record.tgid, client.pid);
    assert_eq!(record.uid, 0);
    assert_eq!(record.original_dst, endpoint.addr);
    assert_eq!(record.client, accepted.peer);
    assert!(record.instance.exe.is_some());
    // Taken means gone.
    assert!(redirector.take(accepted.peer).is_none());
    let counters = redirector.counters().unwrap();
    assert_eq!(
        (counters.redirected, counters.published),
        (1, 1),
        "{counters:?}"
    );
    client.finish();
    redirector.stop().unwrap();
    assert!(cgroup.attached().is_empty());
    let _unused: Option<SocketAddr> = None;
}
