//! Root tests of interception and attribution against the real kernel (spec §7.1–§7.4, conformance items
//! 66–71). Each test attaches only to a child cgroup it creates; clients run inside it, the harness outside.
//! Every address is loopback, or the metadata address inside a network namespace a client created.
#![cfg(target_os = "linux")]

mod redirect_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread;

use gpa::redirect::{ConnRecord, RedirectError, RedirectFailMode, Redirector};
use redirect_support::*;

/// Entry point of the re-executed client processes (`redirect_support::child`); a no-op in a normal run.
#[test]
#[ignore = "child-process entry point, run by the harness"]
fn child_role_entry() {
    child::child_main();
}

fn connect_client<'a>(
    cgroup: Option<&'a TestCgroup>,
    target: SocketAddr,
    extra: &[(&'a str, &str)],
) -> Spawn<'a> {
    let mut env = vec![("GPA_TEST_TARGET", target.to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Spawn {
        role: "connect",
        env,
        cgroup,
        ..Spawn::default()
    }
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

    let client = connect_client(Some(&cgroup), endpoint.addr, &[]).run();
    let report = client.report();
    assert_eq!(
        report.get("connected").map(String::as_str),
        Some("1"),
        "{report:?}"
    );
    // getpeername shows the original destination (spec §7.2) ...
    assert_eq!(report["peer"], endpoint.addr.to_string());
    // ... while the connection arrived at the proxy, from the client's own address.
    let accepted = proxy.accept();
    assert_eq!(accepted.peer.to_string(), report["local"]);
    let record = redirector
        .take(accepted.peer)
        .expect("record for a redirected connect");
    assert_eq!(record.tgid, client.pid);
    assert_eq!((record.uid, record.gid), (0, 0));
    assert_eq!(record.original_dst, endpoint.addr);
    assert_eq!(record.client, accepted.peer);
    // The kernel fields behind the record, read at the offsets the agent found in the kernel's BTF, are the
    // client's: its executable's inode and its start time (`/proc/<pid>/stat` field 22, in USER_HZ ticks).
    let exe = std::fs::metadata(format!("/proc/{}/exe", client.pid)).unwrap();
    assert_eq!(
        record.instance.exe.map(|e| e.ino),
        Some(std::os::unix::fs::MetadataExt::ino(&exe))
    );
    assert_eq!(
        record.instance.start_boottime_ns / NS_PER_USER_HZ_TICK,
        start_ticks(client.pid)
    );
    assert!(!record.comm.is_empty());
    // Taken means gone.
    assert!(redirector.take(accepted.peer).is_none());
    let counters = redirector.counters().unwrap();
    assert_eq!(
        (counters.redirected, counters.taken, counters.peer_rewritten),
        (1, 1, 1),
        "{counters:?}"
    );
    client.finish();
    redirector.stop().unwrap();
    assert!(cgroup.attached().is_empty());
}

#[test]
fn conf_066_root_dual_stack_socket_to_mapped_address_is_redirected() {
    if !root_ready("conf_066_root_dual_stack_socket_to_mapped_address_is_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("mapped");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let mapped: SocketAddr = format!("[::ffff:127.0.0.16]:{}", endpoint.addr.port())
        .parse()
        .unwrap();
    let client = connect_client(Some(&cgroup), mapped, &[]).run();
    let report = client.report();
    assert_eq!(report.get("peer"), Some(&mapped.to_string()), "{report:?}");
    let accepted = proxy.accept();
    // The IPv4 listener sees the IPv4 form of the client's mapped address (spec §7.2).
    let local: SocketAddr = report["local"].parse().unwrap();
    assert_eq!(
        local.to_string(),
        format!("[::ffff:{}]:{}", accepted.peer.ip(), accepted.peer.port())
    );
    let record = redirector.take(accepted.peer).expect("record");
    assert_eq!(
        (record.tgid, record.original_dst),
        (client.pid, endpoint.addr)
    );
    client.finish();
    redirector.stop().unwrap();
}

/// A redirector for IMDS on a fresh test cgroup, whose listener port is free here, and a client in a network
/// namespace of its own (nothing it sends can leave the machine) that listens on that port itself, as an agent
/// there would, and connects to `target`. Returns the redirector, its listener and the client.
fn netns_case(
    cgroup: &TestCgroup,
    target: &str,
    extra: &[(&'static str, &str)],
) -> (Redirector, SocketAddr, ChildProc) {
    let listen_port = free_port();
    let listener: SocketAddr = format!("127.0.0.1:{listen_port}").parse().unwrap();
    let redirector = Redirector::start(cgroup.config(listener, RedirectFailMode::Open)).unwrap();
    redirector.set_policy(&[IMDS.parse().unwrap()]).unwrap();
    let mut env = vec![
        ("GPA_TEST_TARGET", target.to_owned()),
        ("GPA_TEST_LISTEN_PORT", listen_port.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let client = Spawn {
        role: "netns",
        env,
        cgroup: Some(cgroup),
        wrapper: vec!["unshare", "--net"],
        ..Spawn::default()
    }
    .run();
    (redirector, listener, client)
}

const IMDS: &str = "169.254.169.254:80";

/// A TCP connection to `to` (IPv4) from a port that `bind` picked, so that no other socket shares it.
fn connect_from_an_unshared_port(to: SocketAddr) -> std::net::TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("an IPv4 listener")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let any_port = std::net::SocketAddrV4::new(*to.ip(), 0);
    bind(fd.as_raw_fd(), &SockaddrIn::from(any_port)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    std::net::TcpStream::from(fd)
}

/// Nanoseconds per `USER_HZ` tick (100 Hz on every Linux architecture the agent runs on).
const NS_PER_USER_HZ_TICK: u64 = 10_000_000;

/// Field 22 of `/proc/<pid>/stat`: the process's start time in ticks after boot.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    after_comm
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

/// `take` as an agent inside `pid`'s network namespace would run it (on a thread of its own that enters it).
fn take_in_netns_of(redirector: &Redirector, pid: u32, peer: SocketAddr) -> Option<ConnRecord> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            redirector.take(peer)
        })
        .join()
        .unwrap()
    })
}

#[test]
fn conf_066_root_mapped_metadata_address_in_a_network_namespace_is_redirected() {
    if !root_ready("conf_066_root_mapped_metadata_address_in_a_network_namespace_is_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("netns");
    let (redirector, _, client) = netns_case(&cgroup, "[::ffff:169.254.169.254]:80", &[]);
    let report = client.report();
    assert_eq!(
        report.get("reply").map(String::as_str),
        Some("netns"),
        "{report:?}"
    );
    assert_eq!(report["peer"], "[::ffff:169.254.169.254]:80");
    let accepted_peer: SocketAddr = report["accepted_peer"].parse().unwrap();
    // From the agent's own namespace that connection does not exist.
    assert!(redirector.take(accepted_peer).is_none());
    // The record is found where the listener is, as the agent would: from inside the client's namespace.
    let record = take_in_netns_of(&redirector, client.pid, accepted_peer).expect("record");
    let imds: SocketAddr = IMDS.parse().unwrap();
    assert_eq!((record.tgid, record.original_dst), (client.pid, imds));
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn conf_071_root_a_connect_whose_record_cannot_be_stored_is_redirected_unrecorded() {
    if !root_ready("conf_071_root_a_connect_whose_record_cannot_be_stored_is_redirected_unrecorded")
    {
        return;
    }
    let cgroup = TestCgroup::new("nostorage");
    // The client's namespace lets its sockets hold no option memory, so the record's storage is refused.
    let (redirector, listener, client) = netns_case(&cgroup, IMDS, &[("GPA_TEST_OPTMEM_MAX", "0")]);
    let report = client.report();
    // Still sent to the listener (fail closed there), never to the endpoint; without a record, getpeername()
    // has nothing to show but the listener.
    assert_eq!(
        report.get("reply").map(String::as_str),
        Some("netns"),
        "{report:?}"
    );
    assert_eq!(report["peer"], listener.to_string());
    let counters = redirector.counters().unwrap();
    assert_eq!(
        (counters.redirected, counters.storage_failed),
        (1, 1),
        "{counters:?}"
    );
    // Nothing to take, so the proxy answers 421: the connection is unattributed, never someone else's.
    let accepted_peer: SocketAddr = report["accepted_peer"].parse().unwrap();
    let taken = take_in_netns_of(&redirector, client.pid, accepted_peer);
    assert!(taken.is_none());
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn root_client_outside_the_cgroup_is_untouched() {
    if !root_ready("root_client_outside_the_cgroup_is_untouched") {
        return;
    }
    let cgroup = TestCgroup::new("outside");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let client = connect_client(None, endpoint.addr, &[("GPA_TEST_READ", "1")]).run();
    let report = client.report();
    assert_eq!(
        report.get("reply").map(String::as_str),
        Some("direct"),
        "{report:?}"
    );
    assert_eq!(report["peer"], endpoint.addr.to_string());
    let counters = redirector.counters().unwrap();
    assert_eq!((counters.connects_seen, counters.redirected), (0, 0));
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn conf_071_root_32_concurrent_clients_under_different_uids_are_each_attributed_to_themselves() {
    if !root_ready(
        "conf_071_root_32_concurrent_clients_under_different_uids_are_each_attributed_to_themselves",
    ) {
        return;
    }
    const CLIENTS: u32 = 32;
    let cgroup = TestCgroup::new("uids");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let clients: Vec<(u32, ChildProc)> = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let uid = 20_000 + i;
                let cgroup = &cgroup;
                s.spawn(move || {
                    let mut spawn = connect_client(Some(cgroup), endpoint.addr, &[]);
                    spawn.uid = Some(uid);
                    (uid, spawn.run())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Who is at which client address, by the clients' own account.
    let mut expected: HashMap<SocketAddr, (u32, u32)> = HashMap::new();
    for (uid, client) in &clients {
        let report = client.report();
        assert_eq!(
            report.get("peer"),
            Some(&endpoint.addr.to_string()),
            "{report:?}"
        );
        expected.insert(report["local"].parse().unwrap(), (client.pid, *uid));
    }
    for _ in 0..CLIENTS {
        let accepted = proxy.accept();
        let record = redirector
            .take(accepted.peer)
            .expect("every redirected connection has its record");
        let (pid, uid) = expected
            .remove(&accepted.peer)
            .expect("peer is one of the clients");
        assert_eq!((record.tgid, record.uid, record.gid), (pid, uid, uid));
        assert_eq!(record.original_dst, endpoint.addr);
    }
    assert!(expected.is_empty());
    for (_, client) in clients {
        client.finish();
    }
    redirector.stop().unwrap();
}

#[test]
fn conf_070_root_direct_connect_has_no_record_even_with_a_victims_port() {
    if !root_ready("conf_070_root_direct_connect_has_no_record_even_with_a_victims_port") {
        return;
    }
    let cgroup = TestCgroup::new("direct");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    // The victim's redirected connection waits in the proxy's accept queue, its record in its socket.
    let victim = connect_client(Some(&cgroup), endpoint.addr, &[]).run();
    let victim_local: SocketAddr = victim.report()["local"].parse().unwrap();
    // The attacker connects straight to the listener from another loopback address with the victim's port.
    let attacker_bind = format!("127.0.0.2:{}", victim_local.port());
    let attacker = connect_client(
        Some(&cgroup),
        proxy.addr,
        &[("GPA_TEST_BIND", attacker_bind.as_str())],
    )
    .run();
    let attacker_report = attacker.report();
    assert_eq!(
        attacker_report.get("local"),
        Some(&attacker_bind),
        "{attacker_report:?}"
    );
    // And a plain direct connect from inside the cgroup.
    let plain = connect_client(Some(&cgroup), proxy.addr, &[]).run();
    let plain_local: SocketAddr = plain.report()["local"].parse().unwrap();

    let mut records = HashMap::new();
    for _ in 0..3 {
        let accepted = proxy.accept();
        records.insert(accepted.peer, redirector.take(accepted.peer));
    }
    assert!(
        records[&attacker_bind.parse::<SocketAddr>().unwrap()].is_none(),
        "attacker got a record"
    );
    assert!(
        records[&plain_local].is_none(),
        "direct connect got a record"
    );
    let victim_record = records[&victim_local]
        .as_ref()
        .expect("victim keeps its record");
    assert_eq!(victim_record.tgid, victim.pid);
    for client in [victim, attacker, plain] {
        client.finish();
    }
    redirector.stop().unwrap();
}

#[test]
fn conf_070_root_a_reset_connection_whose_address_a_new_client_took_reads_unconnected_at_accept() {
    if !root_ready(
        "conf_070_root_a_reset_connection_whose_address_a_new_client_took_reads_unconnected_at_accept",
    ) {
        return;
    }
    let cgroup = TestCgroup::new("reuse");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    // X connects straight to the listener and resets before the agent accepts; its address is free again. X binds
    // its port before connecting: a port `connect` picks may be shared with other hosts' TIME_WAIT sockets (many,
    // right after a bench), which would refuse Y's bind below.
    let x = connect_from_an_unshared_port(proxy.addr);
    let shared = x.local_addr().unwrap();
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&x, nix::sys::socket::sockopt::Linger, &abort).unwrap();
    drop(x);
    // Y, redirected, takes over exactly that address while X's dead connection still waits to be accepted.
    let y = connect_client(
        Some(&cgroup),
        endpoint.addr,
        &[("GPA_TEST_BIND", shared.to_string().as_str())],
    )
    .run();
    let report = y.report();
    assert_eq!(report.get("local"), Some(&shared.to_string()), "{report:?}");

    // The agent accepts X's connection first. By address alone the kernel finds Y's socket, so the proxy checks
    // its own end: X's is no longer connected, and the proxy answers it 421 (proxy/conn.rs).
    let dead = proxy.accept();
    assert_eq!(dead.peer, shared);
    assert!(
        dead.stream.peer_addr().is_err(),
        "a reset connection reads as not connected"
    );
    let wrongly_taken = redirector.take(dead.peer);
    assert_eq!(wrongly_taken.map(|r| r.tgid), Some(y.pid));
    // Y's own connection then finds its record gone and fails closed (421): never X's identity, never twice.
    let live = proxy.accept();
    assert_eq!(live.peer, shared);
    assert!(live.stream.peer_addr().is_ok());
    assert!(redirector.take(live.peer).is_none());
    y.finish();
    redirector.stop().unwrap();
}

#[test]
fn root_10000_sequential_connects_each_hand_out_their_own_record_once() {
    if !root_ready("root_10000_sequential_connects_each_hand_out_their_own_record_once") {
        return;
    }
    const CONNECTS: u32 = 10_000;
    let cgroup = TestCgroup::new("sequential");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let client = Spawn {
        role: "loop",
        env: vec![
            ("GPA_TEST_TARGET", endpoint.addr.to_string()),
            ("GPA_TEST_COUNT", CONNECTS.to_string()),
        ],
        cgroup: Some(&cgroup),
        ..Spawn::default()
    }
    .run();
    // Take every other record (the rest go with their sockets); each is the client's, and only once.
    let mut taken = 0u32;
    for i in 0..CONNECTS {
        let accepted = proxy.accept();
        if i % 2 == 0 {
            let record = redirector.take(accepted.peer);
            assert_eq!(
                record.map(|r| (r.tgid, r.client)),
                Some((client.pid, accepted.peer))
            );
            assert!(redirector.take(accepted.peer).is_none(), "taken twice");
            taken += 1;
        }
        drop(accepted.stream);
    }
    let report = client.report();
    assert_eq!(
        (report["ok"].as_str(), report["failed"].as_str()),
        (CONNECTS.to_string().as_str(), "0")
    );
    let counters = redirector.counters().unwrap();
    assert_eq!(
        (counters.redirected, counters.taken, counters.storage_failed),
        (u64::from(CONNECTS), u64::from(taken), 0),
        "{counters:?}"
    );
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn conf_069_root_the_agents_own_connects_are_not_redirected() {
    if !root_ready("conf_069_root_the_agents_own_connects_are_not_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("agent");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    // The agent runs inside the intercepted cgroup and connects to an endpoint it intercepts.
    let agent = Spawn {
        role: "agent",
        env: vec![
            ("GPA_TEST_CGROUP", cgroup.path.display().to_string()),
            ("GPA_TEST_LISTENER", proxy.addr.to_string()),
            ("GPA_TEST_ENDPOINT", endpoint.addr.to_string()),
            ("GPA_TEST_MODE", "open".to_owned()),
        ],
        cgroup: Some(&cgroup),
        ..Spawn::default()
    }
    .run();
    let report = agent.report();
    assert_eq!(
        report.get("reply").map(String::as_str),
        Some("direct"),
        "{report:?}"
    );
    // Skipped, not redirected: no record is written for a connect that is not rewritten.
    assert_eq!(
        (report["skipped"].as_str(), report["redirected"].as_str()),
        ("1", "0")
    );
    // Another process in the same cgroup is redirected meanwhile.
    let client = connect_client(Some(&cgroup), endpoint.addr, &[]).run();
    assert_eq!(client.report()["local"], proxy.accept().peer.to_string());
    client.finish();
    agent.finish();
}

#[test]
fn conf_068_root_disabled_endpoints_are_not_redirected() {
    if !root_ready("conf_068_root_disabled_endpoints_are_not_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("disabled");
    let enforced = Endpoint::start("127.0.0.16");
    let disabled = Endpoint::start("127.0.0.17");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[enforced.addr]);
    assert_eq!(redirector.policy().unwrap(), vec![enforced.addr]);

    let client = connect_client(Some(&cgroup), disabled.addr, &[("GPA_TEST_READ", "1")]).run();
    assert_eq!(
        client.report().get("reply").map(String::as_str),
        Some("direct")
    );
    client.finish();
    // Disabling the last endpoint empties the policy: its connects go direct too.
    redirector.set_policy(&[]).unwrap();
    assert!(redirector.policy().unwrap().is_empty());
    let client = connect_client(Some(&cgroup), enforced.addr, &[("GPA_TEST_READ", "1")]).run();
    assert_eq!(
        client.report().get("reply").map(String::as_str),
        Some("direct")
    );
    client.finish();
    assert_eq!(redirector.counters().unwrap().redirected, 0);
    redirector.stop().unwrap();
}

#[test]
fn conf_067_root_a_process_in_a_new_cgroup_namespace_is_still_redirected() {
    if !root_ready("conf_067_root_a_process_in_a_new_cgroup_namespace_is_still_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("cgroupns");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let mut spawn = connect_client(Some(&cgroup), endpoint.addr, &[]);
    spawn.wrapper = vec!["unshare", "--cgroup"];
    let client = spawn.run();
    let report = client.report();
    let own_ns = std::fs::read_link("/proc/self/ns/cgroup")
        .unwrap()
        .display()
        .to_string();
    assert_ne!(
        report.get("cgroupns"),
        Some(&own_ns),
        "client must be in a new cgroup namespace: {report:?}"
    );
    let accepted = proxy.accept();
    assert_eq!(report["local"], accepted.peer.to_string());
    assert_eq!(
        redirector.take(accepted.peer).expect("record").tgid,
        client.pid
    );
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn root_policy_is_exactly_what_was_set_and_bad_endpoints_are_refused() {
    if !root_ready("root_policy_is_exactly_what_was_set_and_bad_endpoints_are_refused") {
        return;
    }
    let cgroup = TestCgroup::new("policy");
    let proxy = Proxy::bind();
    let a: SocketAddr = "127.0.0.16:8080".parse().unwrap();
    let b: SocketAddr = "127.0.0.254:8080".parse().unwrap();
    let v6: SocketAddr = "[::1]:8080".parse().unwrap();
    let redirector = start_redirector(&cgroup, &proxy, &[a, b, v6]);
    let mut policy = redirector.policy().unwrap();
    policy.sort();
    assert_eq!(policy, vec![a, b, v6]);
    redirector.set_policy(&[b]).unwrap();
    assert_eq!(redirector.policy().unwrap(), vec![b]);
    // The listener itself, port 0 and too many endpoints are errors, and leave the policy alone.
    assert!(matches!(
        redirector.set_policy(&[proxy.addr]),
        Err(RedirectError::BadEndpoint { .. })
    ));
    assert!(matches!(
        redirector.set_policy(&["127.0.0.16:0".parse().unwrap()]),
        Err(RedirectError::BadEndpoint { .. })
    ));
    let many: Vec<SocketAddr> = (1..=17)
        .map(|p| format!("127.0.0.16:{p}").parse().unwrap())
        .collect();
    assert!(matches!(
        redirector.set_policy(&many),
        Err(RedirectError::TooManyEndpoints { count: 17, max: 16 })
    ));
    assert_eq!(redirector.policy().unwrap(), vec![b]);
    redirector.stop().unwrap();
}

#[test]
fn conf_071_root_held_connects_keep_their_own_records_in_any_take_order() {
    if !root_ready("conf_071_root_held_connects_keep_their_own_records_in_any_take_order") {
        return;
    }
    const CLIENTS: usize = 48;
    let cgroup = TestCgroup::new("held");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    // Every record waits in its own socket (no map to fill or evict from, spec §7.3).
    let clients: Vec<ChildProc> = (0..CLIENTS)
        .map(|_| connect_client(Some(&cgroup), endpoint.addr, &[]).run())
        .collect();
    let mut who: HashMap<SocketAddr, u32> = HashMap::new();
    for client in &clients {
        who.insert(client.report()["local"].parse().unwrap(), client.pid);
    }
    let mut accepted: Vec<_> = (0..CLIENTS).map(|_| proxy.accept()).collect();
    accepted.reverse(); // taken in the opposite order of arrival
    for connection in &accepted {
        let record = redirector
            .take(connection.peer)
            .expect("every held connection has its record");
        assert_eq!(Some(&record.tgid), who.get(&connection.peer));
    }
    assert_eq!(redirector.counters().unwrap().taken, CLIENTS as u64);
    for client in clients {
        client.finish();
    }
    redirector.stop().unwrap();
}

#[test]
fn root_a_native_ipv6_endpoint_is_redirected_to_the_ipv6_loopback_listener() {
    if !root_ready("root_a_native_ipv6_endpoint_is_redirected_to_the_ipv6_loopback_listener") {
        return;
    }
    let cgroup = TestCgroup::new("ipv6");
    let endpoint = Endpoint::start("::1");
    // Native IPv6 endpoints go to [::1] at the listener's port (spec §7.1): a port free on both loopbacks.
    let (proxy, proxy_v6) = (0..20)
        .find_map(|_| {
            let proxy = Proxy::bind();
            let v6 = std::net::TcpListener::bind(("::1", proxy.addr.port())).ok()?;
            Some((proxy, v6))
        })
        .expect("a port free on 127.0.0.1 and [::1]");
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    let client = connect_client(Some(&cgroup), endpoint.addr, &[]).run();
    let report = client.report();
    assert_eq!(
        report.get("peer"),
        Some(&endpoint.addr.to_string()),
        "{report:?}"
    );
    let (_stream, peer) = proxy_v6.accept().unwrap();
    assert_eq!(peer.to_string(), report["local"]);
    let record = redirector.take(peer).expect("record");
    assert_eq!(
        (record.tgid, record.original_dst, record.client),
        (client.pid, endpoint.addr, peer)
    );
    client.finish();
    redirector.stop().unwrap();
}

#[test]
fn root_a_tcp_fast_open_connect_is_redirected_and_recorded() {
    if !root_ready("root_a_tcp_fast_open_connect_is_redirected_and_recorded") {
        return;
    }
    let cgroup = TestCgroup::new("fastopen");
    let endpoint = Endpoint::start("127.0.0.16");
    let proxy = Proxy::bind();
    let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);

    // spec §7.1: Fast Open connects are intercepted too (the SYN leaves with the first write).
    let client = connect_client(Some(&cgroup), endpoint.addr, &[("GPA_TEST_FASTOPEN", "1")]).run();
    let report = client.report();
    assert_eq!(
        report.get("peer"),
        Some(&endpoint.addr.to_string()),
        "{report:?}"
    );
    let mut accepted = proxy.accept();
    assert_eq!(read_line(&mut accepted.stream), "fast open");
    let record = redirector.take(accepted.peer).expect("record");
    assert_eq!(
        (record.tgid, record.original_dst),
        (client.pid, endpoint.addr)
    );
    client.finish();
    redirector.stop().unwrap();
}
