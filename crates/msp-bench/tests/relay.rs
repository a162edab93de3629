//! The bare relay (`msp-bench relay`), the floor the bench measures the agent against, in both of its ways:
//! every byte arrives in both directions, the upstream sees the `--from` address, and an end of sending on
//! either side reaches the other. A relay that lost or held back bytes would make the floor look better than
//! any proxy can be. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// A response larger than the relay's buffer, so it takes several reads and writes.
const RESPONSE: usize = 200 * 1024;

/// The relay process, killed by pid on drop (also when an assertion fails, from the moment it is spawned).
struct Relay {
    child: Child,
    addr: Option<SocketAddr>,
}

impl Relay {
    fn start(to: SocketAddr, mode: &str) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_msp-bench"))
            .args(["relay", "--to", &to.to_string(), "--from", "127.0.0.2"])
            .args(["--mode", mode])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn msp-bench relay");
        let mut relay = Relay { child, addr: None };
        let stdout = relay.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the relay's first line");
        relay.addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        assert!(
            relay.addr.is_some(),
            "expected `listening <address>`, got {line:?}"
        );
        relay
    }

    fn addr(&self) -> SocketAddr {
        self.addr.expect("checked in start")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One exchange through the relay: request, a large response, the client ends, the upstream sees the end.
fn relays_both_ways(mode: &str) {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(upstream.local_addr().unwrap(), mode);

    let mut client = TcpStream::connect(relay.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"ping").unwrap();

    let (mut inner, from) = upstream.accept().unwrap();
    inner
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.2", "{mode}: source address");
    let mut request = [0u8; 4];
    inner.read_exact(&mut request).unwrap();
    assert_eq!(&request, b"ping", "{mode}");
    let response: Vec<u8> = (0..RESPONSE).map(|i| (i % 251) as u8).collect();
    inner.write_all(&response).unwrap();

    let mut got = vec![0u8; RESPONSE];
    client.read_exact(&mut got).unwrap();
    assert!(got == response, "{mode}: the response arrived altered");

    // The client's end of sending reaches the upstream as end of stream, nothing after the request.
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    inner.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{mode}: {} stray bytes", rest.len());
    // And the upstream's close reaches the client.
    drop(inner);
    let mut tail = Vec::new();
    client.read_to_end(&mut tail).unwrap();
    assert!(tail.is_empty(), "{mode}: {} stray bytes", tail.len());
}

#[test]
fn the_threaded_relay_copies_every_byte_both_ways_and_passes_on_the_ends() {
    relays_both_ways("threads");
}

#[test]
fn the_tokio_relay_copies_every_byte_both_ways_and_passes_on_the_ends() {
    relays_both_ways("tokio");
}

/// The bench starts its relay with SIGTERM blocked (its signal thread's mask survives `exec`): the relay must still
/// stop on the bench's SIGTERM, not only on the SIGKILL after the grace period.
#[test]
fn the_relay_stops_on_sigterm_even_when_started_with_it_blocked() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = upstream.local_addr().unwrap();
    let mut relay = std::thread::spawn(move || {
        let stop: SigSet = [Signal::SIGTERM, Signal::SIGINT].into_iter().collect();
        stop.thread_block().unwrap();
        Relay::start(to, "threads")
    })
    .join()
    .unwrap();
    let pid = Pid::from_raw(i32::try_from(relay.child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = relay.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the relay ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
}

#[test]
fn the_relay_refuses_to_relay_anywhere_but_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_msp-bench"))
        .args(["relay", "--to", "192.0.2.1:80", "--from", "127.0.0.2"])
        .args(["--mode", "threads"])
        .output()
        .expect("run msp-bench relay");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "it must not listen");
}

/// The `Cpus_allowed_list` of a `/proc/…/status` file.
fn cpu_list(status: &std::path::Path) -> String {
    std::fs::read_to_string(status)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

/// The CPU list of each thread of `pid`.
fn cpu_lists(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .map(|t| cpu_list(&t.unwrap().path().join("status")))
        .collect()
}

/// `--host-cpu` starts msp-host this way; the tokio relay is a multi-threaded process of the same kind, which
/// starts its threads after it prints its address.
#[test]
fn a_process_started_pinned_runs_every_thread_on_that_cpu_and_the_starter_gets_its_cpus_back() {
    let allowed = msp_bench::worker::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        let why = "needs two CPUs to tell a pinned thread from one that is not";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let own = cpu_list("/proc/thread-self/status".as_ref());
    let cpu = *allowed.last().unwrap();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = msp_bench::worker::with_cpu(cpu, || {
        Relay::start(upstream.local_addr().unwrap(), "tokio")
    })
    .expect("start the relay pinned");
    let pid = relay.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    // One runtime thread besides the main one: a pinned relay sees one CPU and starts one worker.
    while cpu_lists(pid).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lists = cpu_lists(pid);
    assert!(
        lists.len() >= 2,
        "the tokio relay runs {} thread(s)",
        lists.len()
    );
    assert_eq!(lists, vec![cpu.to_string(); lists.len()]);
    // This thread has its own CPUs again.
    assert_eq!(cpu_list("/proc/thread-self/status".as_ref()), own);
    assert_ne!(own, cpu.to_string());
}
