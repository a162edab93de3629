//! The load generator: a child process of the bench (`msp-bench worker`), so the bench can place it in the
//! redirected cgroup or leave it outside. It reads its [`Spec`] (one JSON line on standard input, so its command
//! line stays as short as a real client's: the agent records it in every connection's claims), waits for `go`
//! (by then it sits in the cgroup it belongs to), runs, and prints one [`Outcome`] as JSON on standard output.
//!
//! Up to [`THREAD_LIMIT`] connections get one blocking OS thread each (the cheapest client per request: a
//! `write` and a blocking `read`); more share one current-thread tokio runtime. The whole process is pinned to
//! one CPU when the spec says so. Traffic goes only to the spec's target, a loopback address; this module must
//! never retry a failed request silently or count a response it has not read to its last byte.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::http::{self, HttpError, ResponseHead};
use crate::procfs;

/// Connections up to this many get a blocking thread each; more share one event loop.
pub const THREAD_LIMIT: usize = 8;
/// Read buffer per connection, bytes (a 64 KiB response fits whole).
const READ_BUFFER: usize = 80 * 1024;
/// Pause after a failed request, so a refusing peer does not turn the loop into a spin.
const ERROR_PAUSE: Duration = Duration::from_millis(1);
/// Connections the hold pattern opens at once.
const HOLD_BATCH: usize = 256;
/// Pause between probe attempts.
const PROBE_PAUSE: Duration = Duration::from_micros(250);

/// How the connections are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Closed loop: each connection sends its next request when the previous response is complete.
    KeepAlive,
    /// Closed loop with a new connection per request (connect + request + response + close, all timed).
    NewConnection,
    /// Open every connection, one request each, then hold them until standard input says `release`.
    Hold,
    /// New connections until one gets the expected answer; reports when (`CLOCK_MONOTONIC`).
    Probe,
}

/// The answer every request must get to count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub status: u16,
    /// The relay marker: present through the agent, absent on the direct path.
    pub marker: bool,
}

/// One worker's job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub target: SocketAddr,
    /// Source addresses to connect from (the direct path uses its own, so the host sees another VM).
    pub bind: Option<Sources>,
    pub connections: usize,
    pub pattern: Pattern,
    /// The request bytes (ASCII).
    pub request: String,
    pub expect: Expect,
    /// Requests before this are not recorded.
    pub warmup_ms: u64,
    /// The measured window; for `probe`, the time limit.
    pub duration_ms: u64,
    /// End the window early after this many recorded requests.
    pub max_requests: Option<u64>,
    /// Pin the worker to this CPU.
    pub cpu: Option<usize>,
    /// Processes whose CPU time is sampled at the window's start and end.
    pub watch: Vec<u32>,
}

/// `count` consecutive source addresses from `first`, taken in turn by each new connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub first: Ipv4Addr,
    pub count: u8,
}

impl Sources {
    /// The address of the `n`th connection.
    pub fn nth(self, n: u64) -> Ipv4Addr {
        let step = n % u64::from(self.count.max(1));
        Ipv4Addr::from(u32::from(self.first).wrapping_add(step as u32))
    }
}

/// Connections this worker has opened from its [`Sources`], across its threads.
static OPENED: AtomicU64 = AtomicU64::new(0);

impl Spec {
    /// The source address for this worker's next connection, if it binds one.
    fn next_source(&self) -> Option<Ipv4Addr> {
        self.bind
            .map(|s| s.nth(OPENED.fetch_add(1, Ordering::Relaxed)))
    }
}

/// What a worker reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Requests completed in the window with the expected answer.
    pub ok: u64,
    /// Requests that failed or got another answer (warm-up included: every request must succeed).
    pub failed: u64,
    pub first_error: Option<String>,
    /// Length of the measured window, nanoseconds.
    pub window_ns: u64,
    /// Latency of every recorded request, nanoseconds.
    pub latencies_ns: Vec<u32>,
    /// CPU ticks each watched process used during the window.
    pub watched_ticks: Vec<u64>,
    /// The worker's own CPU time during the window, microseconds.
    pub self_cpu_us: u64,
    /// `probe`: `CLOCK_MONOTONIC` when the expected answer arrived.
    pub probe_done_ns: Option<u64>,
    /// `hold`: connections held.
    pub held: u64,
}

/// Runs a worker: `go` on stdin, the job, the outcome on stdout.
pub fn main() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    let spec: Spec = serde_json::from_str(&line).map_err(|e| format!("spec: {e}"))?;
    if let Some(cpu) = spec.cpu {
        pin(cpu)?;
    }
    line.clear();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    let outcome = match spec.pattern {
        Pattern::Probe => probe(&spec),
        Pattern::Hold => hold(&spec),
        _ if spec.connections <= THREAD_LIMIT => threaded(&spec),
        _ => evented(&spec),
    };
    let json = serde_json::to_string(&outcome).map_err(|e| format!("outcome: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}").map_err(|e| format!("stdout: {e}"))
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pin to cpu {cpu}: {e}"))
}

/// The calling thread's CPU set.
fn own_cpus() -> Result<nix::sched::CpuSet, String> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| format!("affinity of this thread: {e}"))
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = own_cpus()?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Runs `f` with the calling thread pinned to `cpu`, then gives the thread back its own CPUs. A process that `f`
/// spawns inherits the pinning at `fork` and keeps it across `exec`, so every thread it ever starts is pinned too.
pub fn with_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> Result<T, String> {
    let own = own_cpus()?;
    pin(cpu)?;
    let out = f();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &own)
        .map_err(|e| format!("give this thread back its CPUs: {e}"))?;
    Ok(out)
}

/// A TCP connection to `target`, from `bind` when given, with `TCP_NODELAY`.
pub fn connect(target: SocketAddr, bind: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
    let stream = match bind {
        None => TcpStream::connect(target)?,
        Some(ip) => {
            let fd = socket::socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            // Pick the port at connect time, per 4-tuple: a bound source would otherwise run out of ports
            // under TIME_WAIT in the new-connection workloads.
            socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(ip, 0)))?;
            let SocketAddr::V4(v4) = target else {
                return Err(std::io::ErrorKind::Unsupported.into());
            };
            socket::connect(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
            TcpStream::from(fd)
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads one whole response into `buf` (cleared first).
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<ResponseHead, String> {
    buf.clear();
    let mut chunk = [0u8; READ_BUFFER];
    let mut head: Option<ResponseHead> = None;
    loop {
        if head.is_none()
            && let Some(end) = http::head_end(buf, 0)
        {
            head = Some(http::parse_head(buf, end).map_err(|e| e.to_string())?);
        }
        if let Some(h) = &head {
            if buf.len() >= h.total() {
                if buf.len() > h.total() {
                    return Err("bytes after the response".into());
                }
                return head.ok_or_else(|| "unreachable".into());
            }
        } else if buf.len() > http::MAX_HEAD {
            return Err(HttpError::HeadTooLarge.to_string());
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response was complete".into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

fn check(head: &ResponseHead, expect: Expect) -> Result<(), String> {
    if head.status == expect.status && head.marker == expect.marker {
        return Ok(());
    }
    Err(format!(
        "got {} (reason {}, marker {}), expected {} (marker {})",
        head.status,
        head.reason.as_deref().unwrap_or("-"),
        head.marker,
        expect.status,
        expect.marker
    ))
}

/// One request on `conn` (opening it when needed); the response head on success.
fn exchange(
    spec: &Spec,
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<ResponseHead, String> {
    if conn.is_none() {
        *conn =
            Some(connect(spec.target, spec.next_source()).map_err(|e| format!("connect: {e}"))?);
    }
    let Some(stream) = conn.as_mut() else {
        return Err("no connection".into());
    };
    stream
        .write_all(spec.request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let head = read_response(stream, buf)?;
    if head.close || spec.pattern == Pattern::NewConnection {
        *conn = None;
    }
    Ok(head)
}

/// Per-connection results, merged at the end.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    /// (completion offset from the start, latency), both nanoseconds.
    samples: Vec<(u64, u32)>,
}

impl Tally {
    fn fail(&mut self, e: String) {
        self.failed += 1;
        self.first_error.get_or_insert(e);
    }
}

/// The window every connection shares: start, deadline, the early stop, the count.
struct Window {
    start: Instant,
    from: Duration,
    until: Duration,
    stop: AtomicBool,
    recorded: AtomicU64,
    max: u64,
}

impl Window {
    fn new(spec: &Spec) -> Window {
        let from = Duration::from_millis(spec.warmup_ms);
        Window {
            start: Instant::now(),
            from,
            until: from + Duration::from_millis(spec.duration_ms),
            stop: AtomicBool::new(false),
            recorded: AtomicU64::new(0),
            max: spec.max_requests.unwrap_or(u64::MAX),
        }
    }

    /// Counts a completed request; false once the window is over.
    fn record(&self, tally: &mut Tally, began: Instant, done: Instant) -> bool {
        let at = done.duration_since(self.start);
        if at >= self.from && !self.stop.load(Ordering::Relaxed) {
            tally.ok += 1;
            let latency = u32::try_from(done.duration_since(began).as_nanos()).unwrap_or(u32::MAX);
            tally
                .samples
                .push((u64::try_from(at.as_nanos()).unwrap_or(u64::MAX), latency));
            if self.recorded.fetch_add(1, Ordering::Relaxed) + 1 >= self.max {
                self.stop.store(true, Ordering::Relaxed);
            }
        }
        at < self.until && !self.stop.load(Ordering::Relaxed)
    }
}

fn sample(watch: &[u32]) -> (Vec<u64>, u64) {
    let ticks = watch
        .iter()
        .map(|&p| procfs::cpu_ticks(p).unwrap_or(0))
        .collect();
    (ticks, self_cpu_us())
}

fn self_cpu_us() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let us = |t: nix::sys::time::TimeVal| (t.tv_sec() as u64) * 1_000_000 + t.tv_usec() as u64;
        us(u.user_time()) + us(u.system_time())
    })
}

/// Waits for the window, samples the watched processes at its start and end, and merges the tallies.
fn supervise(spec: &Spec, window: &Window, finish: impl FnOnce() -> Vec<Tally>) -> Outcome {
    let until_start = window.from.saturating_sub(window.start.elapsed());
    std::thread::sleep(until_start);
    let started_at = window.start.elapsed();
    let (ticks0, cpu0) = sample(&spec.watch);
    while window.start.elapsed() < window.until && !window.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    window.stop.store(true, Ordering::Relaxed);
    let ended_at = window.start.elapsed();
    let (ticks1, cpu1) = sample(&spec.watch);
    let tallies = finish();
    let mut out = Outcome {
        window_ns: u64::try_from((ended_at - started_at).as_nanos()).unwrap_or(u64::MAX),
        watched_ticks: ticks1
            .iter()
            .zip(&ticks0)
            .map(|(b, a)| b.saturating_sub(*a))
            .collect(),
        self_cpu_us: cpu1.saturating_sub(cpu0),
        ..Outcome::default()
    };
    let end_ns = u64::try_from(ended_at.as_nanos()).unwrap_or(u64::MAX);
    for t in tallies {
        out.failed += t.failed;
        if out.first_error.is_none() {
            out.first_error = t.first_error;
        }
        // Only what completed inside the window counts toward the rate and the latencies.
        for (at, latency) in t.samples {
            if at <= end_ns {
                out.ok += 1;
                out.latencies_ns.push(latency);
            }
        }
    }
    out
}

/// One blocking thread per connection.
fn threaded(spec: &Spec) -> Outcome {
    let window = Arc::new(Window::new(spec));
    let handles: Vec<_> = (0..spec.connections)
        .map(|_| {
            let (spec, window) = (spec.clone(), window.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let mut conn = None;
                let mut buf = Vec::with_capacity(READ_BUFFER);
                loop {
                    let began = Instant::now();
                    let result =
                        exchange(&spec, &mut conn, &mut buf).and_then(|h| check(&h, spec.expect));
                    let done = Instant::now();
                    match result {
                        Ok(()) => {
                            if !window.record(&mut tally, began, done) {
                                break;
                            }
                        }
                        Err(e) => {
                            conn = None;
                            tally.fail(e);
                            if window.stop.load(Ordering::Relaxed)
                                || window.start.elapsed() >= window.until
                            {
                                break;
                            }
                            std::thread::sleep(ERROR_PAUSE);
                        }
                    }
                }
                tally
            })
        })
        .collect();
    supervise(spec, &window, || {
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Tally {
                    failed: 1,
                    first_error: Some("client thread panicked".into()),
                    ..Tally::default()
                })
            })
            .collect()
    })
}

/// Many connections on one current-thread runtime.
fn evented(spec: &Spec) -> Outcome {
    let window = Arc::new(Window::new(spec));
    let (spec2, window2) = (spec.clone(), window.clone());
    let runner = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return vec![Tally {
                    failed: 1,
                    first_error: Some(format!("runtime: {e}")),
                    ..Tally::default()
                }];
            }
        };
        rt.block_on(async move {
            let tasks: Vec<_> = (0..spec2.connections)
                .map(|_| tokio::spawn(evented_conn(spec2.clone(), window2.clone())))
                .collect();
            let mut tallies = Vec::new();
            for t in tasks {
                tallies.push(t.await.unwrap_or_default());
            }
            tallies
        })
    });
    supervise(spec, &window, || {
        runner.join().unwrap_or_else(|_| {
            vec![Tally {
                failed: 1,
                first_error: Some("client runtime panicked".into()),
                ..Tally::default()
            }]
        })
    })
}

async fn evented_conn(spec: Spec, window: Arc<Window>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = Vec::with_capacity(READ_BUFFER);
    loop {
        let began = Instant::now();
        let result = async_exchange(&spec, &mut conn, &mut buf)
            .await
            .and_then(|h| check(&h, spec.expect));
        let done = Instant::now();
        match result {
            Ok(()) => {
                if !window.record(&mut tally, began, done) {
                    break;
                }
            }
            Err(e) => {
                conn = None;
                tally.fail(e);
                if window.stop.load(Ordering::Relaxed) || window.start.elapsed() >= window.until {
                    break;
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

async fn async_connect(spec: &Spec) -> Result<tokio::net::TcpStream, String> {
    let std = match spec.next_source() {
        // A bound connect blocks only for the loopback handshake.
        Some(ip) => connect(spec.target, Some(ip)).map_err(|e| format!("connect: {e}"))?,
        None => {
            let s = tokio::net::TcpStream::connect(spec.target)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            return Ok(s);
        }
    };
    std.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    tokio::net::TcpStream::from_std(std).map_err(|e| format!("register: {e}"))
}

async fn async_exchange(
    spec: &Spec,
    conn: &mut Option<tokio::net::TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<ResponseHead, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if conn.is_none() {
        *conn = Some(async_connect(spec).await?);
    }
    let Some(stream) = conn.as_mut() else {
        return Err("no connection".into());
    };
    stream
        .write_all(spec.request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let mut head: Option<ResponseHead> = None;
    loop {
        if head.is_none()
            && let Some(end) = http::head_end(buf, 0)
        {
            head = Some(http::parse_head(buf, end).map_err(|e| e.to_string())?);
        }
        match &head {
            Some(h) if buf.len() == h.total() => break,
            Some(h) if buf.len() > h.total() => return Err("bytes after the response".into()),
            None if buf.len() > http::MAX_HEAD => return Err(HttpError::HeadTooLarge.to_string()),
            _ => {}
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_BUFFER);
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response was complete".into());
        }
    }
    let head = head.ok_or("no head")?;
    if head.close || spec.pattern == Pattern::NewConnection {
        *conn = None;
    }
    Ok(head)
}

/// Opens `connections` keep-alive connections, one request each, holds them until `release` on stdin.
fn hold(spec: &Spec) -> Outcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome {
                failed: 1,
                first_error: Some(format!("runtime: {e}")),
                ..Outcome::default()
            };
        }
    };
    let mut out = Outcome::default();
    let started = Instant::now();
    let held: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut held = Vec::with_capacity(spec.connections);
        let mut remaining = spec.connections;
        while remaining > 0 {
            let batch = remaining.min(HOLD_BATCH);
            remaining -= batch;
            let tasks: Vec<_> = (0..batch)
                .map(|_| {
                    let spec = spec.clone();
                    tokio::spawn(async move {
                        let mut conn = None;
                        let mut buf = Vec::with_capacity(4096);
                        let r = async_exchange(&spec, &mut conn, &mut buf)
                            .await
                            .and_then(|h| check(&h, spec.expect));
                        r.and_then(|()| conn.ok_or_else(|| "closed by the peer".to_owned()))
                    })
                })
                .collect();
            for t in tasks {
                match t.await {
                    Ok(Ok(stream)) => held.push(stream),
                    Ok(Err(e)) => {
                        out.failed += 1;
                        out.first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.first_error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        held
    });
    out.ok = held.len() as u64;
    out.held = held.len() as u64;
    out.window_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // Tell the bench, then wait until it has measured.
    let _ = writeln!(std::io::stdout(), "held {}", held.len());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
    out
}

/// New connections until one gets the expected answer, within `duration_ms`.
fn probe(spec: &Spec) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(spec.duration_ms);
    let mut out = Outcome::default();
    let mut buf = Vec::with_capacity(READ_BUFFER);
    while Instant::now() < deadline {
        let mut conn = None;
        match exchange(spec, &mut conn, &mut buf).and_then(|h| check(&h, spec.expect)) {
            Ok(()) => {
                out.probe_done_ns = Some(procfs::monotonic_ns());
                out.ok = 1;
                return out;
            }
            Err(e) => {
                out.failed += 1;
                out.first_error = Some(e);
            }
        }
        std::thread::sleep(PROBE_PAUSE);
    }
    out
}
