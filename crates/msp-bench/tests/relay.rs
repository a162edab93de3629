//! The bare relay (`msp-bench relay`), the floor the bench measures the agent against, in both of its ways:
//! every byte arrives in both directions, the upstream sees the `--from` address, and an end of sending on
//! either side reaches the other. A relay that lost or held back bytes would make the floor look better than
//! any proxy can be. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// The CPU list every thread of `pid` may run on (`Cpus_allowed_list` of `/proc/<pid>/task/*/status`).
fn allowed_cpus(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the relay's threads")
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .expect("Cpus_allowed_list")
                .trim()
                .to_owned()
        })
        .collect()
}

/// `--host-cpu` pins msp-host with this; the tokio relay is a multi-threaded process of the same kind.
#[test]
fn pinning_a_process_pins_every_one_of_its_threads() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = Relay::start(upstream.local_addr().unwrap(), "tokio");
    let pid = relay.child.id();
    // The relay prints its address before it starts its runtime's threads.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while allowed_cpus(pid).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let threads = allowed_cpus(pid).len();
    assert!(threads >= 2, "the tokio relay runs {threads} thread(s)");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = cpus - 1;
    let pinned = msp_bench::worker::pin_process(pid, cpu).expect("pin the relay");
    assert!(pinned >= threads, "{pinned} of {threads} threads pinned");
    let after = allowed_cpus(pid);
    assert_eq!(after, vec![cpu.to_string(); after.len()]);
    assert!(msp_bench::worker::pin_process(pid, usize::MAX).is_err());
}
