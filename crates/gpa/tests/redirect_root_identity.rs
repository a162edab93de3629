//! Root tests of caller identity (spec §6, conformance items 63–65, catalog C2–C4): claims come from the kernel's
//! record at `connect()`, and a process that is gone, replaced or re-executed is stale, never someone else.
#![cfg(target_os = "linux")]

mod redirect_support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gpa::identity::{IdentityError, IdentityResolver, StaleReason};
use gpa::redirect::{ConnRecord, Redirector};
use msp_core::Reason;
use redirect_support::*;

/// Entry point of the re-executed client processes (`redirect_support::child`); a no-op in a normal run.
#[test]
#[ignore = "child-process entry point, run by the harness"]
fn child_role_entry() {
    child::child_main();
}

/// One intercepted endpoint, a proxy stand-in and a redirector on a fresh cgroup.
struct Setup {
    cgroup: TestCgroup,
    endpoint: Endpoint,
    proxy: Proxy,
    redirector: Redirector,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let cgroup = TestCgroup::new(tag);
        let endpoint = Endpoint::start("127.0.0.16");
        let proxy = Proxy::bind();
        let redirector = start_redirector(&cgroup, &proxy, &[endpoint.addr]);
        Setup {
            cgroup,
            endpoint,
            proxy,
            redirector,
        }
    }

    fn client(&self, after: &str) -> Spawn<'_> {
        Spawn {
            role: "connect",
            env: vec![
                ("GPA_TEST_TARGET", self.endpoint.addr.to_string()),
                ("GPA_TEST_AFTER", after.to_owned()),
            ],
            cgroup: Some(&self.cgroup),
            ..Spawn::default()
        }
    }

    /// Accepts the next connection and takes its record. The caller keeps the accepted stream open for as long
    /// as the client's socket must stay alive.
    fn take(&self) -> (ConnRecord, SocketAddr, TcpStream) {
        let accepted = self.proxy.accept();
        let record = self.redirector.take(accepted.peer).expect("record");
        (record, accepted.peer, accepted.stream)
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    );
}

fn stale_reason(result: Result<msp_core::Claims, IdentityError>) -> StaleReason {
    match result {
        Err(e @ IdentityError::Stale { reason, .. }) => {
            assert_eq!(e.reason(), Reason::IdentityStale);
            reason
        }
        other => panic!("expected a stale identity, got {other:?}"),
    }
}

#[test]
fn conf_065_root_claims_of_a_live_caller_come_from_the_record_and_proc() {
    if !root_ready("conf_065_root_claims_of_a_live_caller_come_from_the_record_and_proc") {
        return;
    }
    let setup = Setup::new("claims");
    let mut spawn = setup.client("hold");
    // The command line carries a secret in its first four words.
    spawn.args = vec!["--skip", "token=s3cr3t-value"];
    let client = spawn.run();
    let report = client.report();
    let (record, peer, _server) = setup.take();
    let claims = IdentityResolver::new()
        .claims(&record, peer)
        .expect("live caller");

    let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
    assert_eq!(claims.process_id, client.pid);
    assert_eq!(&*claims.process_full_path, exe.display().to_string());
    assert_eq!(
        &*claims.process_name,
        exe.file_name().unwrap().to_string_lossy()
    );
    assert_eq!(
        &*claims.process_cmd_line,
        format!("{} --skip token=*** --exact", exe.display())
    );
    assert_eq!(
        (claims.user_id, &*claims.user_name, claims.run_as_elevated),
        (0, "root", true)
    );
    assert!(
        claims.user_groups.iter().any(|g| g == "root"),
        "{:?}",
        claims.user_groups
    );
    assert_eq!(
        format!("{}:{}", claims.client_ip, claims.client_port),
        report["local"]
    );
    client.finish();
    setup.redirector.stop().unwrap();
}

#[test]
fn root_a_non_root_caller_gets_its_names_from_nss_and_is_not_elevated() {
    if !root_ready("root_a_non_root_caller_gets_its_names_from_nss_and_is_not_elevated") {
        return;
    }
    let setup = Setup::new("nobody");
    let mut spawn = setup.client("hold");
    spawn.uid = Some(65_534);
    let client = spawn.run();
    client.report();
    let (record, peer, _server) = setup.take();
    let claims = IdentityResolver::new()
        .claims(&record, peer)
        .expect("live caller");
    let expected_name = nix::unistd::User::from_uid(65_534.into())
        .unwrap()
        .map_or("undefined".to_owned(), |u| u.name);
    assert_eq!(
        (claims.user_id, &*claims.user_name, claims.run_as_elevated),
        (65_534, expected_name.as_str(), false)
    );
    client.finish();
    setup.redirector.stop().unwrap();
}

#[test]
fn conf_063_root_a_uid_change_after_connect_keeps_the_connect_time_identity() {
    if !root_ready("conf_063_root_a_uid_change_after_connect_keeps_the_connect_time_identity") {
        return;
    }
    let setup = Setup::new("setuid");
    let client = setup.client("setuid:4242").run();
    let report = client.report();
    assert_eq!(
        report.get("uid_now").map(String::as_str),
        Some("4242"),
        "{report:?}"
    );
    let (record, peer, _server) = setup.take();
    let claims = IdentityResolver::new()
        .claims(&record, peer)
        .expect("same process, new uid");
    assert_eq!(
        (claims.user_id, &*claims.user_name, claims.run_as_elevated),
        (0, "root", true)
    );
    client.finish();
    setup.redirector.stop().unwrap();
}

#[test]
fn conf_064_root_a_caller_that_exited_is_stale() {
    if !root_ready("conf_064_root_a_caller_that_exited_is_stale") {
        return;
    }
    let setup = Setup::new("exited");
    // The client hands its socket to a `sleep` and exits: the connection lives on, its caller does not.
    let client = setup.client("holder").run();
    let holder: u32 = client.report()["holder"].parse().unwrap();
    client.finish();
    let (record, peer, _server) = setup.take();
    let reason = stale_reason(IdentityResolver::new().claims(&record, peer));
    kill(holder);
    // Exited, unless a new task got the number meanwhile (threads of this very test binary can, and another
    // test's `sleep`), which is a reuse and just as stale: told by its start time, or, within the caller's own
    // 10 ms start tick, by its other executable.
    assert!(
        matches!(
            reason,
            StaleReason::Exited | StaleReason::PidReused { .. } | StaleReason::ExecutableChanged
        ),
        "{reason:?}"
    );
    setup.redirector.stop().unwrap();
}

#[test]
fn conf_064_root_cached_claims_still_prove_the_caller_alive() {
    if !root_ready("conf_064_root_cached_claims_still_prove_the_caller_alive") {
        return;
    }
    let setup = Setup::new("cached");
    let client = setup.client("hold").run();
    client.report();
    let (record, peer, _server) = setup.take();
    let resolver = IdentityResolver::new();
    assert!(
        resolver.cached_claims(&record, peer).is_none(),
        "nothing is cached before the first lookup"
    );
    let claims = resolver.claims(&record, peer).expect("live caller");
    let cached = resolver
        .cached_claims(&record, peer)
        .expect("cached after the first lookup")
        .expect("the caller is still alive");
    assert_eq!(cached, claims);
    // The caller exits: the cache still holds its facts, but the liveness check runs first.
    client.finish();
    let reason = stale_reason(resolver.cached_claims(&record, peer).expect("still cached"));
    assert!(
        matches!(reason, StaleReason::Exited | StaleReason::PidReused { .. }),
        "{reason:?}"
    );
    setup.redirector.stop().unwrap();
}

#[test]
fn conf_064_root_a_cached_caller_whose_pid_was_reused_is_stale() {
    if !root_ready("conf_064_root_a_cached_caller_whose_pid_was_reused_is_stale") {
        return;
    }
    let setup = Setup::new("cachedreuse");
    let client = setup.client("hold").run();
    client.report();
    let pid = client.pid;
    let (record, peer, _server) = setup.take();
    let resolver = IdentityResolver::new();
    resolver.claims(&record, peer).expect("live caller");
    // The caller exits and a new process gets its pid, while the cache still holds the caller's facts (and
    // the `/proc` directory they were read through).
    client.finish();
    let mut impostor = reuse_pid(pid);
    let result = resolver.cached_claims(&record, peer).expect("still cached");
    let _ = impostor.kill();
    let _ = impostor.wait();
    let reason = stale_reason(result);
    assert_eq!(reason, StaleReason::Exited);
    setup.redirector.stop().unwrap();
}

/// Makes the kernel give `pid` to a new `sleep`: waits while any task (a thread counts: `/proc/<tid>` resolves
/// too) holds the number, then spawns with `ns_last_pid` set just below it until the `sleep` gets it.
fn reuse_pid(pid: u32) -> std::process::Child {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the kernel did not hand out pid {pid} again"
        );
        if Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn conf_064_root_a_reused_pid_is_stale_and_never_attributed_to_the_new_process() {
    if !root_ready("conf_064_root_a_reused_pid_is_stale_and_never_attributed_to_the_new_process") {
        return;
    }
    let setup = Setup::new("reused");
    let client = setup.client("holder").run();
    let report = client.report();
    let (pid, holder): (u32, u32) = (
        report["pid"].parse().unwrap(),
        report["holder"].parse().unwrap(),
    );
    client.finish();
    let (record, peer, _server) = setup.take();
    assert_eq!(record.tgid, pid);
    // `/proc/<pid>/stat` gives start times in clock ticks (10 ms): an impostor started within the caller's own
    // tick would read as the same instance by start time, and be told apart by its executable alone
    // (`ExecutableChanged`, seen on a fast run). Let the tick pass first, so this test sees the start-time check.
    std::thread::sleep(Duration::from_millis(25));
    // A new process now carries the caller's pid.
    let mut impostor = reuse_pid(pid);
    let reason = stale_reason(IdentityResolver::new().claims(&record, peer));
    let _ = impostor.kill();
    let _ = impostor.wait();
    kill(holder);
    assert!(
        matches!(reason, StaleReason::PidReused { .. }),
        "{reason:?}"
    );
    setup.redirector.stop().unwrap();
}

#[test]
fn c3_root_a_caller_that_executes_another_program_after_connect_is_stale() {
    if !root_ready("c3_root_a_caller_that_executes_another_program_after_connect_is_stale") {
        return;
    }
    let setup = Setup::new("exec");
    // Same pid, same start time, another executable (`sleep`) holding the socket.
    let client = setup.client("exec").run();
    client.report();
    let (record, peer, _server) = setup.take();
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    eventually("the client to exec sleep", || {
        exe_of(client.pid).ends_with("sleep")
    });
    let reason = stale_reason(IdentityResolver::new().claims(&record, peer));
    assert_eq!(reason, StaleReason::ExecutableChanged);
    drop(client); // now a `sleep`: killed, not released
    setup.redirector.stop().unwrap();
}

#[test]
fn c3_root_a_cached_caller_that_executes_another_program_is_stale() {
    if !root_ready("c3_root_a_cached_caller_that_executes_another_program_is_stale") {
        return;
    }
    let setup = Setup::new("cachedexec");
    let mut client = setup.client("hold-exec").run();
    client.report();
    let (record, peer, _server) = setup.take();
    let resolver = IdentityResolver::new();
    resolver.claims(&record, peer).expect("live caller");
    assert!(
        resolver
            .cached_claims(&record, peer)
            .expect("cached after the first lookup")
            .is_ok()
    );
    // Released, the client executes `sleep`: same process, same start time, another file.
    client.release();
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    eventually("the client to exec sleep", || {
        exe_of(client.pid).ends_with("sleep")
    });
    let reason = stale_reason(
        resolver
            .cached_claims(&record, peer)
            .expect("still cached (unless the exec took longer than the cache's 10 s)"),
    );
    assert_eq!(reason, StaleReason::ExecutableChanged);
    drop(client); // now a `sleep`: killed, not released
    setup.redirector.stop().unwrap();
}

#[test]
fn c3_root_a_bind_mounted_impostor_never_gets_the_allowed_path() {
    if !root_ready("c3_root_a_bind_mounted_impostor_never_gets_the_allowed_path") {
        return;
    }
    // The allowed executable, and a caller that bind-mounts another binary (this test binary) over it in its own
    // mount namespace, then runs it by the allowed path: there `/proc/<pid>/exe` reads as the allowed path.
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed-tool");
    std::fs::copy("/bin/true", &allowed).unwrap();
    let script = format!(
        "mount --bind \"$0\" {a} && exec {a} \"$@\"",
        a = allowed.display()
    );
    let setup = Setup::new("bindmount");
    let mut spawn = setup.client("hold");
    spawn.wrapper = vec![
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ];
    let client = spawn.run();
    client.report();
    let (record, peer, _server) = setup.take();
    let shown = std::fs::read_link(format!("/proc/{}/exe", client.pid)).unwrap();
    assert_eq!(
        shown, allowed,
        "the kernel shows the impostor at the allowed path"
    );

    let claims = IdentityResolver::new()
        .claims(&record, peer)
        .expect("a live caller");
    assert_ne!(&*claims.process_full_path, allowed.display().to_string());
    assert_eq!(&*claims.process_full_path, "", "unprovable path is empty");
    assert_eq!(&*claims.process_name, "");
    drop(client);
    setup.redirector.stop().unwrap();
}

/// Waits until `copy`, a just-written copy of this test binary, can be executed. A child that another test thread
/// forked while the copy was open for writing holds that descriptor until its own `exec`, and until then an `exec`
/// of the copy fails with `ETXTBSY`; the wrapper shell would then exit instead of running the client. Nothing
/// opens the copy for writing again, so one successful run (listing the tests) is enough.
fn wait_until_executable(copy: &Path) {
    for _ in 0..100 {
        match Command::new(copy)
            .arg("--list")
            .stdout(Stdio::null())
            .status()
        {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("run {}: {e}", copy.display()),
            Ok(status) => {
                assert!(status.success(), "{} --list: {status}", copy.display());
                return;
            }
        }
    }
    panic!("{} stayed busy for a second", copy.display());
}

#[test]
fn f2_root_control_characters_in_the_executable_path_are_escaped_in_the_claims() {
    if !root_ready("f2_root_control_characters_in_the_executable_path_are_escaped_in_the_claims") {
        return;
    }
    // An executable whose name would forge a log line and a JSON record.
    let dir = tempfile::tempdir().unwrap();
    let name = "tool\n{\"userName\": \"root\"}\u{1b}[2J";
    let evil = dir.path().join(name);
    std::fs::copy(std::env::current_exe().unwrap(), &evil).unwrap();
    wait_until_executable(&evil);
    let setup = Setup::new("ctrlpath");
    let mut spawn = setup.client("hold");
    spawn
        .env
        .push(("GPA_TEST_EVIL", evil.display().to_string()));
    spawn.wrapper = vec!["sh", "-c", "exec \"$GPA_TEST_EVIL\" \"$@\""];
    let client = spawn.run();
    client.report();
    let (record, peer, _server) = setup.take();
    let claims = IdentityResolver::new()
        .claims(&record, peer)
        .expect("a live caller");
    let escaped = msp_core::redact::escape_control(&evil.display().to_string());
    assert_eq!(&*claims.process_full_path, escaped);
    assert_eq!(
        &*claims.process_name,
        "tool\\n{\"userName\": \"root\"}\\u{1b}[2J"
    );
    assert!(!claims.process_cmd_line.chars().any(char::is_control));
    drop(client);
    setup.redirector.stop().unwrap();
}

/// Catalog C3: a user task whose executable the kernel could not read at `connect()` is recorded with an identity
/// no file has (`EXE_UNREADABLE_*`, redirect.bpf.c). Its caller reads as stale, never as "nothing recorded to
/// compare", which would skip the exec-after-connect check. Needs no root: the caller is this live process.
#[test]
fn c3_an_executable_the_kernel_could_not_read_makes_the_caller_stale() {
    use gpa::redirect::abi::{EXE_UNREADABLE_DEV, EXE_UNREADABLE_INO, USER_HZ};
    use gpa::redirect::{ExeId, ProcessInstance};
    let pid = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start_ticks: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let record = ConnRecord {
        tgid: pid,
        tid: pid,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        comm: "test".into(),
        cgroup_id: 0,
        socket_cookie: 1,
        original_dst: "169.254.169.254:80".parse().unwrap(),
        client,
        connect_ktime_ns: 0,
        instance: ProcessInstance {
            start_boottime_ns: start_ticks * (1_000_000_000 / USER_HZ),
            // As the redirector reads the kernel's record (major << 20 | minor).
            exe: Some(ExeId {
                dev_major: EXE_UNREADABLE_DEV >> 20,
                dev_minor: EXE_UNREADABLE_DEV & 0xf_ffff,
                ino: EXE_UNREADABLE_INO,
            }),
        },
    };
    let resolver = IdentityResolver::new();
    let reason = stale_reason(resolver.claims(&record, client));
    assert!(
        matches!(reason, StaleReason::ExecutableChanged),
        "{reason:?}"
    );
    // The same record with this process's real executable is attributed: only the unreadable identity is stale.
    let exe = std::fs::metadata("/proc/self/exe").unwrap();
    let dev = std::os::unix::fs::MetadataExt::dev(&exe);
    let real = ConnRecord {
        instance: ProcessInstance {
            exe: Some(ExeId {
                dev_major: nix::sys::stat::major(dev) as u32,
                dev_minor: nix::sys::stat::minor(dev) as u32,
                ino: std::os::unix::fs::MetadataExt::ino(&exe),
            }),
            ..record.instance
        },
        ..record
    };
    assert!(resolver.claims(&real, client).is_ok());
}
