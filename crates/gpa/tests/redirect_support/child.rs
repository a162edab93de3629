//! The roles a re-executed test binary plays inside the test cgroup. Each reports on stdout as `@@ key=value …`.
//! Only loopback addresses are ever dialled, or the metadata address inside a network namespace the child made.
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use gpa::redirect::{RedirectConfig, RedirectFailMode, Redirector};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, setsockopt, socket, sockopt,
};

use super::{ROLE_ENV, read_line};

/// Runs the role named in the environment; returns at once in a normal test run.
pub fn child_main() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    // Wait until the harness has placed this process in the test cgroup.
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("read go");
    match role.as_str() {
        "connect" => connect_role(),
        "loop" => loop_role(),
        "loader" => loader_role(),
        "agent" => agent_role(),
        "netns" => netns_role(),
        other => panic!("unknown role {other}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn say(fields: &[(&str, String)]) {
    let line: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("@@ {}", line.join(" "));
    std::io::stdout().flush().unwrap();
}

/// Blocks until the harness closes stdin.
fn hold() {
    let mut sink = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut sink)
        .is_ok_and(|n| n > 0)
    {}
}

fn cgroup_ns() -> String {
    std::fs::read_link("/proc/self/ns/cgroup")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Connects to `target`, from `bind` when given (SO_REUSEADDR, as an attacker reusing a port would), or with TCP
/// Fast Open (`TCP_FASTOPEN_CONNECT`: the SYN leaves with the first write) when `fast_open` is set.
fn dial(
    target: SocketAddr,
    bind: Option<SocketAddr>,
    fast_open: bool,
) -> std::io::Result<TcpStream> {
    if fast_open {
        let SocketAddr::V4(target) = target else {
            panic!("fast open needs an IPv4 target")
        };
        let fd: OwnedFd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::TcpFastOpenConnect, &true)?;
        nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(target),
        )?;
        let mut stream = TcpStream::from(fd);
        stream.write_all(b"fast open\n")?;
        return Ok(stream);
    }
    let Some(SocketAddr::V4(bind)) = bind else {
        return TcpStream::connect_timeout(&target, Duration::from_secs(5));
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    nix::sys::socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(bind),
    )?;
    let SocketAddr::V4(target) = target else {
        panic!("bind needs an IPv4 target")
    };
    nix::sys::socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(target),
    )?;
    Ok(TcpStream::from(fd))
}

/// `GPA_TEST_TARGET`, optional `GPA_TEST_BIND`, `GPA_TEST_READ=1`, and `GPA_TEST_AFTER`: `hold` (default),
/// `exit`, `holder` (hand the socket to a `sleep` and exit), `exec` (become `sleep`, keeping the socket),
/// `hold-exec` (hold until released, then `exec`), or `setuid:<uid>` (drop to that uid and gid, then hold).
fn connect_role() {
    let target: SocketAddr = env("GPA_TEST_TARGET").parse().unwrap();
    let bind = std::env::var("GPA_TEST_BIND")
        .ok()
        .map(|b| b.parse().unwrap());
    let fast_open = std::env::var("GPA_TEST_FASTOPEN").is_ok();
    let mut stream = match dial(target, bind, fast_open) {
        Ok(stream) => stream,
        Err(e) => {
            say(&[
                ("failed", format!("{:?}", e.kind())),
                ("errno", e.raw_os_error().unwrap_or(0).to_string()),
            ]);
            return;
        }
    };
    let mut fields = vec![
        ("connected", "1".to_owned()),
        ("local", stream.local_addr().unwrap().to_string()),
        ("peer", stream.peer_addr().unwrap().to_string()),
        ("pid", std::process::id().to_string()),
        ("cgroupns", cgroup_ns()),
    ];
    if std::env::var("GPA_TEST_READ").is_ok() {
        fields.push(("reply", read_line(&mut stream)));
    }
    let after = std::env::var("GPA_TEST_AFTER").unwrap_or_else(|_| "hold".to_owned());
    match after.split_once(':').unwrap_or((after.as_str(), "")) {
        ("hold", _) => {
            say(&fields);
            hold();
        }
        ("exit", _) => say(&fields),
        ("holder", _) => {
            // Deliberately not waited for: this process exits and leaves the socket to the holder.
            #[allow(clippy::zombie_processes)]
            let holder = Command::new("sleep")
                .arg("60")
                .stdin(Stdio::from(OwnedFd::from(stream)))
                .spawn()
                .unwrap();
            fields.push(("holder", holder.id().to_string()));
            say(&fields);
        }
        (role @ ("exec" | "hold-exec"), _) => {
            say(&fields);
            if role == "hold-exec" {
                hold();
            }
            let err = Command::new("sleep")
                .arg("60")
                .stdin(Stdio::from(OwnedFd::from(stream)))
                .exec();
            panic!("exec sleep: {err}");
        }
        ("setuid", uid) => {
            let id: u32 = uid.parse().unwrap();
            let (u, g) = (
                nix::unistd::Uid::from_raw(id),
                nix::unistd::Gid::from_raw(id),
            );
            nix::unistd::setgroups(&[]).unwrap();
            nix::unistd::setresgid(g, g, g).unwrap();
            nix::unistd::setresuid(u, u, u).unwrap();
            fields.push(("uid_now", nix::unistd::getuid().to_string()));
            say(&fields);
            hold();
        }
        _ => panic!("unknown GPA_TEST_AFTER {after}"),
    }
}

/// `GPA_TEST_COUNT` sequential connects to `GPA_TEST_TARGET`, each waiting for the server to answer and close.
fn loop_role() {
    let target: SocketAddr = env("GPA_TEST_TARGET").parse().unwrap();
    let count: u32 = env("GPA_TEST_COUNT").parse().unwrap();
    let (mut ok, mut failed) = (0u32, 0u32);
    for _ in 0..count {
        match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(mut stream) => {
                let _ = read_line(&mut stream);
                ok += 1;
            }
            Err(_) => failed += 1,
        }
    }
    say(&[
        ("done", "1".to_owned()),
        ("ok", ok.to_string()),
        ("failed", failed.to_string()),
    ]);
}

fn loader_config() -> RedirectConfig {
    let fail_mode = match env("GPA_TEST_MODE").as_str() {
        "closed" => RedirectFailMode::Closed,
        _ => RedirectFailMode::Open,
    };
    RedirectConfig {
        cgroup_root: Some(env("GPA_TEST_CGROUP").into()),
        listener: env("GPA_TEST_LISTENER").parse().unwrap(),
        object_path: None,
        fail_mode,
    }
}

/// An agent stand-in in its own process: binds the listener, starts the redirector, and answers each redirected
/// connection with `proxied-tgid-<pid of the caller>`. Runs until killed.
fn loader_role() {
    let cfg = loader_config();
    let listener = TcpListener::bind(cfg.listener).unwrap();
    let redirector = Redirector::start(cfg).unwrap();
    redirector
        .set_policy(&[env("GPA_TEST_ENDPOINT").parse().unwrap()])
        .unwrap();
    say(&[
        ("ready", "1".to_owned()),
        ("pid", std::process::id().to_string()),
    ]);
    for (mut stream, peer) in listener
        .incoming()
        .flatten()
        .filter_map(|s| s.peer_addr().ok().map(|p| (s, p)))
    {
        let line = match redirector.take(peer) {
            Some(record) => format!("proxied-tgid-{}\n", record.tgid),
            None => "unattributed\n".to_owned(),
        };
        let _ = stream.write_all(line.as_bytes());
    }
}

/// The agent inside the intercepted cgroup (conf 69): starts the redirector, then connects to the endpoint
/// itself, which must reach the endpoint directly and leave no record. Holds the redirector until released.
fn agent_role() {
    let redirector = Redirector::start(loader_config()).unwrap();
    let endpoint: SocketAddr = env("GPA_TEST_ENDPOINT").parse().unwrap();
    redirector.set_policy(&[endpoint]).unwrap();
    let mut stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(5)).unwrap();
    let reply = read_line(&mut stream);
    let counters = redirector.counters().unwrap();
    say(&[
        ("reply", reply),
        ("peer", stream.peer_addr().unwrap().to_string()),
        ("skipped", counters.skipped.to_string()),
        ("redirected", counters.redirected.to_string()),
    ]);
    hold();
    redirector.stop().unwrap();
}

/// Inside a fresh network namespace (conf 66): brings `lo` up, listens on `127.0.0.1:<GPA_TEST_LISTEN_PORT>`,
/// connects a dual-stack socket to `GPA_TEST_TARGET` (an IPv4-mapped metadata address, which exists in no
/// route here), and reports what the redirected connection looks like from both ends.
fn netns_role() {
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(lo.success());
    // Optional: this namespace's per-socket option memory, which socket storage is charged to.
    if let Ok(bytes) = std::env::var("GPA_TEST_OPTMEM_MAX") {
        std::fs::write("/proc/sys/net/core/optmem_max", bytes).unwrap();
    }
    let port: u16 = env("GPA_TEST_LISTEN_PORT").parse().unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let target: SocketAddr = env("GPA_TEST_TARGET").parse().unwrap();
    let mut client = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(e) => {
            say(&[
                ("failed", format!("{:?}", e.kind())),
                ("errno", e.raw_os_error().unwrap_or(0).to_string()),
            ]);
            return;
        }
    };
    let (mut server, accepted_peer) = listener.accept().unwrap();
    server.write_all(b"netns\n").unwrap();
    say(&[
        ("connected", "1".to_owned()),
        ("local", client.local_addr().unwrap().to_string()),
        ("peer", client.peer_addr().unwrap().to_string()),
        ("accepted_peer", accepted_peer.to_string()),
        ("reply", read_line(&mut client)),
        ("pid", std::process::id().to_string()),
    ]);
    hold();
}
