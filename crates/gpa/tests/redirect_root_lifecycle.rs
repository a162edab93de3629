//! Root tests of the redirector's lifecycle (spec §7.5, conformance items 72–73): start and stop leave no
//! duplicates, `closed` mode pins survive the agent and are adopted, `open` mode dies with it, and start-up
//! failures name what is wrong.
#![cfg(target_os = "linux")]

mod redirect_support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use gpa::redirect::{
    ObjectProblem, Origin, PIN_ROOT, RedirectConfig, RedirectError, RedirectFailMode,
    RedirectStatus, Redirector,
};
use redirect_support::*;

/// Entry point of the re-executed client processes (`redirect_support::child`); a no-op in a normal run.
#[test]
#[ignore = "child-process entry point, run by the harness"]
fn child_role_entry() {
    child::child_main();
}

/// One copy of each program, as bpftool names them.
const ONE_SET: [&str; 4] = [
    "gpa_connect4",
    "gpa_connect6",
    "gpa_peername4",
    "gpa_peername6",
];

fn one_set() -> Vec<String> {
    ONE_SET.iter().map(|s| (*s).to_owned()).collect()
}

fn client_to(cgroup: &TestCgroup, target: SocketAddr) -> ChildProc {
    Spawn {
        role: "connect",
        env: vec![
            ("GPA_TEST_TARGET", target.to_string()),
            ("GPA_TEST_READ", "1".to_owned()),
            ("GPA_TEST_AFTER", "exit".to_owned()),
        ],
        cgroup: Some(cgroup),
        ..Spawn::default()
    }
    .run()
}

#[test]
fn conf_073_root_50_start_stop_cycles_leave_exactly_one_set_attached() {
    if !root_ready("conf_073_root_50_start_stop_cycles_leave_exactly_one_set_attached") {
        return;
    }
    let cgroup = TestCgroup::new("cycles");
    let proxy = Proxy::bind();
    for _ in 0..50 {
        let redirector =
            Redirector::start(cgroup.config(proxy.addr, RedirectFailMode::Open)).unwrap();
        assert_eq!(cgroup.attached(), one_set());
        let status = redirector.status();
        assert_eq!(
            (status.origin, status.cgroup_id, status.programs.len()),
            (Origin::Fresh, cgroup.id(), 4)
        );
        assert!(
            status
                .describe()
                .contains(&cgroup.path.display().to_string())
        );
        redirector.stop().unwrap();
        assert!(cgroup.attached().is_empty());
    }
    assert_eq!(
        RedirectStatus::message(Duration::from_millis(120)),
        "Started Redirector with eBPF maps - 120"
    );
}

#[test]
fn conf_073_root_50_closed_mode_restarts_adopt_the_pins_instead_of_attaching_again() {
    if !root_ready(
        "conf_073_root_50_closed_mode_restarts_adopt_the_pins_instead_of_attaching_again",
    ) {
        return;
    }
    let cgroup = TestCgroup::new("restarts");
    let _pins = PinGuard::new(&cgroup);
    let proxy = Proxy::bind();
    let endpoint: SocketAddr = "127.0.0.16:8080".parse().unwrap();
    let cfg = cgroup.config(proxy.addr, RedirectFailMode::Closed);
    let first = Redirector::start(cfg.clone()).unwrap();
    assert_eq!(first.status().origin, Origin::Fresh);
    first.set_policy(&[endpoint]).unwrap();
    drop(first); // an unplanned exit: the pins stay
    for _ in 0..50 {
        assert_eq!(cgroup.attached(), one_set());
        let restarted = Redirector::start(cfg.clone()).unwrap();
        assert_eq!(restarted.status().origin, Origin::Adopted);
        // The pinned policy survived the restart (spec §7.4).
        assert_eq!(restarted.policy().unwrap(), vec![endpoint]);
        drop(restarted);
    }
    assert_eq!(cgroup.attached(), one_set());
    let last = Redirector::start(cfg).unwrap();
    let pin_dir = last.status().pin_dir.clone().unwrap();
    assert_eq!(pin_dir, Path::new(PIN_ROOT).join(cgroup.id().to_string()));
    last.stop().unwrap();
    assert!(cgroup.attached().is_empty());
    assert!(!pin_dir.exists());
    last.stop().expect("a second stop does nothing");
    drop(last);
    assert!(cgroup.attached().is_empty());
}

/// An agent stand-in in another process, answering redirected connections on `listener`.
fn start_loader(
    cgroup: &TestCgroup,
    listener: SocketAddr,
    endpoint: SocketAddr,
    mode: &str,
) -> ChildProc {
    let loader = Spawn {
        role: "loader",
        env: vec![
            ("GPA_TEST_CGROUP", cgroup.path.display().to_string()),
            ("GPA_TEST_LISTENER", listener.to_string()),
            ("GPA_TEST_ENDPOINT", endpoint.to_string()),
            ("GPA_TEST_MODE", mode.to_owned()),
        ],
        ..Spawn::default()
    }
    .run();
    assert_eq!(loader.report().get("ready").map(String::as_str), Some("1"));
    loader
}

#[test]
fn conf_072_root_a_killed_agent_in_closed_mode_leaves_callers_refused() {
    if !root_ready("conf_072_root_a_killed_agent_in_closed_mode_leaves_callers_refused") {
        return;
    }
    let cgroup = TestCgroup::new("killclosed");
    let _pins = PinGuard::new(&cgroup);
    let endpoint = Endpoint::start("127.0.0.16");
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut loader = start_loader(&cgroup, listener, endpoint.addr, "closed");

    let client = client_to(&cgroup, endpoint.addr);
    assert_eq!(
        client.report()["reply"],
        format!("proxied-tgid-{}", client.pid)
    );
    loader.child.kill().unwrap();
    loader.child.wait().unwrap();

    // The agent is dead, its pins are not: the caller is refused, never sent direct.
    let client = client_to(&cgroup, endpoint.addr);
    let report = client.report();
    assert_eq!(
        report.get("failed").map(String::as_str),
        Some("ConnectionRefused"),
        "{report:?}"
    );
    assert_eq!(cgroup.attached(), one_set());

    // A restarted agent adopts the pins and serves again.
    let proxy = TcpListener::bind(listener).unwrap();
    let redirector = Redirector::start(cgroup.config(listener, RedirectFailMode::Closed)).unwrap();
    assert_eq!(redirector.status().origin, Origin::Adopted);
    assert_eq!(cgroup.attached(), one_set());
    let client = client_to(&cgroup, endpoint.addr);
    let (_stream, peer) = proxy.accept().unwrap();
    assert_eq!(redirector.take(peer).expect("record").tgid, client.pid);
    drop(client);
    redirector.stop().unwrap();
    assert!(cgroup.attached().is_empty());
}

#[test]
fn conf_072_root_a_killed_agent_in_open_mode_lets_callers_reach_the_destination() {
    if !root_ready("conf_072_root_a_killed_agent_in_open_mode_lets_callers_reach_the_destination") {
        return;
    }
    let cgroup = TestCgroup::new("killopen");
    let endpoint = Endpoint::start("127.0.0.16");
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut loader = start_loader(&cgroup, listener, endpoint.addr, "open");

    let client = client_to(&cgroup, endpoint.addr);
    assert_eq!(
        client.report()["reply"],
        format!("proxied-tgid-{}", client.pid)
    );
    loader.child.kill().unwrap();
    loader.child.wait().unwrap();

    eventually("the links to close", || cgroup.attached().is_empty());
    let client = client_to(&cgroup, endpoint.addr);
    assert_eq!(
        client.report().get("reply").map(String::as_str),
        Some("direct")
    );
    assert!(!Path::new(PIN_ROOT).join(cgroup.id().to_string()).exists());
}

#[test]
fn root_pins_from_another_object_are_replaced_not_adopted() {
    if !root_ready("root_pins_from_another_object_are_replaced_not_adopted") {
        return;
    }
    let cgroup = TestCgroup::new("upgrade");
    let _pins = PinGuard::new(&cgroup);
    let proxy = Proxy::bind();
    // "The previous version": the same programs in an object with another fingerprint.
    let dir = std::env::temp_dir().join(unique("object"));
    std::fs::create_dir_all(&dir).unwrap();
    let old_object = dir.join("redirect-old.bpf.o");
    let mut bytes =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/redirect.bpf.o")).unwrap();
    bytes.push(0);
    std::fs::write(&old_object, bytes).unwrap();
    std::fs::set_permissions(&old_object, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut cfg = cgroup.config(proxy.addr, RedirectFailMode::Closed);
    cfg.object_path = Some(old_object);
    drop(Redirector::start(cfg).unwrap());
    assert_eq!(cgroup.attached(), one_set());

    let current = Redirector::start(cgroup.config(proxy.addr, RedirectFailMode::Closed)).unwrap();
    assert_eq!(current.status().origin, Origin::Fresh);
    assert_eq!(cgroup.attached(), one_set());
    current.stop().unwrap();
    assert!(cgroup.attached().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn root_an_open_mode_start_removes_pins_a_closed_mode_agent_left() {
    if !root_ready("root_an_open_mode_start_removes_pins_a_closed_mode_agent_left") {
        return;
    }
    let cgroup = TestCgroup::new("modeswitch");
    let _pins = PinGuard::new(&cgroup);
    let proxy = Proxy::bind();
    drop(Redirector::start(cgroup.config(proxy.addr, RedirectFailMode::Closed)).unwrap());
    assert_eq!(cgroup.attached(), one_set());
    let open = Redirector::start(cgroup.config(proxy.addr, RedirectFailMode::Open)).unwrap();
    assert_eq!(cgroup.attached(), one_set());
    assert!(!Path::new(PIN_ROOT).join(cgroup.id().to_string()).exists());
    drop(open);
    assert!(cgroup.attached().is_empty());
}

#[test]
fn root_start_errors_name_what_is_wrong() {
    if !root_ready("root_start_errors_name_what_is_wrong") {
        return;
    }
    let cgroup = TestCgroup::new("errors");
    let proxy = Proxy::bind();
    let start = |cfg: RedirectConfig| Redirector::start(cfg).map(|_| ()).unwrap_err();

    for listener in ["0.0.0.0:3080", "[::1]:3080", "127.0.0.1:0"] {
        let cfg = cgroup.config(listener.parse().unwrap(), RedirectFailMode::Open);
        assert!(
            matches!(start(cfg), RedirectError::ListenerNotLoopback { .. }),
            "{listener}"
        );
    }
    let mut cfg = cgroup.config(proxy.addr, RedirectFailMode::Open);
    cfg.cgroup_root = Some(std::env::temp_dir());
    assert!(matches!(
        start(cfg.clone()),
        RedirectError::NotCgroup2 { .. }
    ));
    cfg.cgroup_root = Some(cgroup.path.join("missing"));
    assert!(matches!(start(cfg), RedirectError::CgroupOpen { .. }));

    let dir = std::env::temp_dir().join(unique("unsafe-object"));
    std::fs::create_dir_all(&dir).unwrap();
    let object = dir.join("x.bpf.o");
    std::fs::write(&object, b"\x7fELF").unwrap();
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o664)).unwrap();
    let mut cfg = cgroup.config(proxy.addr, RedirectFailMode::Open);
    cfg.object_path = Some(object.clone());
    let err = start(cfg.clone());
    assert!(
        matches!(
            err,
            RedirectError::UnsafeObject {
                problem: ObjectProblem::WritableByGroupOrOthers { mode: 0o664 },
                ..
            }
        ),
        "{err:?}"
    );
    // A safe file that is not an eBPF object fails to load, and says so.
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(start(cfg), RedirectError::Load { .. }));
    assert!(cgroup.attached().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
