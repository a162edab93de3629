//! The load generator (`msp-bench worker`) against a plain loopback server: a worker given several source
//! addresses opens each new connection from the next one, in both of its ways (a thread per connection, and one
//! event loop beyond `THREAD_LIMIT`). From one address, the direct path's new-connection workloads were capped by
//! the kernel's search for a free port (BENCHMARKS.md, history item 39). Loopback only.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msp_bench::worker::{Expect, Outcome, Pattern, Sources, Spec, THREAD_LIMIT};

const REQUESTS: u64 = 40;
const SOURCES: Sources = Sources {
    first: Ipv4Addr::new(127, 0, 2, 1),
    count: 8,
};

/// The worker process, killed by pid on drop (also when an assertion fails).
struct Worker(Child);

impl Worker {
    fn start() -> Worker {
        Worker(
            Command::new(env!("CARGO_BIN_EXE_msp-bench"))
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn msp-bench worker"),
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers every request with a small 200 and counts the connections per source address.
fn serve(listener: TcpListener) -> Arc<Mutex<BTreeMap<IpAddr, u64>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let counts = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if let Ok(peer) = stream.peer_addr() {
                *counts.lock().unwrap().entry(peer.ip()).or_insert(0) += 1;
            }
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                // Wait for the worker's close, as a host would.
                let _ = stream.read(&mut byte);
            });
        }
    });
    seen
}

fn run(connections: usize) -> (Outcome, BTreeMap<IpAddr, u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target: SocketAddr = listener.local_addr().unwrap();
    let seen = serve(listener);
    let spec = Spec {
        target,
        bind: Some(SOURCES),
        connections,
        pattern: Pattern::NewConnection,
        request: "GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_owned(),
        expect: Expect {
            status: 200,
            marker: false,
        },
        warmup_ms: 0,
        duration_ms: 20_000,
        max_requests: Some(REQUESTS),
        cpu: None,
        watch: vec![],
    };
    let mut worker = Worker::start();
    let mut stdin = worker.0.stdin.take().expect("piped stdin");
    writeln!(stdin, "{}", serde_json::to_string(&spec).unwrap()).unwrap();
    writeln!(stdin, "go").unwrap();
    let mut line = String::new();
    BufReader::new(worker.0.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("the worker's outcome");
    let outcome: Outcome = serde_json::from_str(&line).expect("an outcome as JSON");
    // The connections still closing reach the server after the outcome; give them a moment.
    std::thread::sleep(Duration::from_millis(100));
    let seen = seen.lock().unwrap().clone();
    (outcome, seen)
}

fn takes_every_source_in_turn(connections: usize) {
    let (outcome, seen) = run(connections);
    assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
    assert!(outcome.ok >= REQUESTS, "{} requests", outcome.ok);
    let want: Vec<IpAddr> = (0..u64::from(SOURCES.count))
        .map(|n| IpAddr::V4(SOURCES.nth(n)))
        .collect();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        want,
        "{connections} connections: every source, and only those"
    );
    // In turn: each connection the worker opened, from any of its threads, took the next address, and every one
    // of them reached the server before its response; so the counts differ by at most one.
    let (fewest, most) = (seen.values().min(), seen.values().max());
    assert!(
        most.zip(fewest).is_some_and(|(m, f)| m - f <= 1),
        "{connections} connections: {seen:?}"
    );
}

#[test]
fn a_thread_per_connection_takes_every_source_in_turn() {
    takes_every_source_in_turn(2);
}

#[test]
fn the_event_loop_takes_every_source_in_turn() {
    takes_every_source_in_turn(THREAD_LIMIT + 1);
}

/// The bench starts its workers with SIGTERM blocked (its signal thread's mask survives `exec`): a worker must
/// still stop on the bench's SIGTERM, here while it waits for its spec.
#[test]
fn a_worker_stops_on_sigterm_even_when_started_with_it_blocked() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    use nix::sys::signal::{SigSet, Signal, kill};
    use nix::unistd::Pid;

    let mut worker = std::thread::spawn(|| {
        let stop: SigSet = [Signal::SIGTERM, Signal::SIGINT].into_iter().collect();
        stop.thread_block().unwrap();
        Worker::start()
    })
    .join()
    .unwrap();
    // Sent at once: a SIGTERM that arrives before the worker unblocks it waits, pending, until it does.
    kill(
        Pid::from_raw(i32::try_from(worker.0.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
}
