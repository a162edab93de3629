//! Cost of the redirector's hooks per `connect()`, as ratios against the same machine without them, in one run.
//!
//! The bench process moves itself in and out of a child cgroup that has the programs attached (by a loader
//! process outside it, since the agent's own connects are exempt), alternating rounds, so both sides see the same
//! machine state. Per round and side it times `BATCH` connect+close pairs:
//!
//! - unrelated: to a loopback listener that is not in the policy (the hooks run and leave the connect alone);
//! - intercepted: to a loopback endpoint in the policy, redirected to the proxy listener (record written into
//!   the socket's storage), against a plain connect to that listener from outside the cgroup.
//!
//! A loopback connect takes tens of microseconds, so those ratios cannot resolve the ≤ 100 ns target on a shared
//! machine. Two finer measures follow. `connect()` of an unrelated destination inside a network namespace without
//! routes fails with ENETUNREACH right after the connect4 hook; connect4 is the only program an unrelated connect
//! runs (the getpeername hooks run only on `getpeername()`), so the paired difference of those ~1 µs calls is the
//! whole cost of the redirector on such a connect. Then the programs' own run time and run count per connect from
//! the kernel's `BPF_STATS_RUN_TIME` (which adds its own clock reads, ~85–200 ns, to every run: an empty program
//! reports as much).
//!
//! Needs root; loopback only. Run with `cargo bench -p gpa --bench redirect_hooks`.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use gpa::redirect::{RedirectConfig, RedirectFailMode, Redirector, discover_cgroup2_root};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};

/// Connect+close pairs per timed batch.
const BATCH: u32 = 2_000;
/// Alternating rounds (outside, inside); medians are reported.
const ROUNDS: usize = 25;
/// Untimed connects before each batch.
const WARMUP: u32 = 200;
const ROLE_ENV: &str = "GPA_BENCH_ROLE";

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("loader") => return loader(),
        Ok("unreachable") => return unreachable_connects(),
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() || !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!("redirect_hooks: needs root and kernel BTF; skipped");
        return;
    }
    let root = discover_cgroup2_root();
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_cgroup = root.join(
        cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::/"))
            .unwrap_or(""),
    );
    let bench_cgroup = root.join(format!("gpa-bench-{}", std::process::id()));
    std::fs::create_dir(&bench_cgroup).unwrap();
    let mut cleanup = Cleanup {
        home: own_cgroup.clone(),
        cgroup: bench_cgroup.clone(),
        loader: None,
    };

    let proxy = sink("127.0.0.1:0");
    let unrelated = sink("127.0.0.1:0");
    let endpoint: SocketAddr = format!("127.0.0.16:{}", free_port()).parse().unwrap();
    let mut loader = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, "loader")
        .env("GPA_BENCH_CGROUP", &bench_cgroup)
        .env("GPA_BENCH_LISTENER", proxy.to_string())
        .env("GPA_BENCH_ENDPOINT", endpoint.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = loader.stdout.take().unwrap();
    let mut ready = String::new();
    cleanup.loader = Some(loader);
    BufReader::new(stdout).read_line(&mut ready).unwrap();
    let program_ids: Vec<u32> = ready
        .trim()
        .strip_prefix("ready ")
        .expect("loader failed to start")
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect();

    // Per round: [outside: unrelated, listener] then [inside: unrelated, listener, intercepted endpoint], each
    // batch after an untimed warm-up; the order inside a side flips every round.
    let mut samples: [Vec<f64>; 5] = Default::default();
    for round in 0..ROUNDS {
        let flip = round % 2 == 1;
        move_self(&own_cgroup);
        for (slot, target) in ordered(flip, [(0, unrelated), (1, proxy)]) {
            samples[slot].push(time_connects(target));
        }
        move_self(&bench_cgroup);
        for (slot, target) in ordered(flip, [(2, unrelated), (3, proxy), (4, endpoint)]) {
            samples[slot].push(time_connects(target));
        }
    }

    // connect4 alone, end to end: connect() to an unrelated destination in a network namespace without routes
    // fails right after the hook, before any packet, so the hook is a large part of the syscall.
    move_self(&own_cgroup);
    let out = Command::new("unshare")
        .arg("--net")
        .arg(std::env::current_exe().unwrap())
        .env(ROLE_ENV, "unreachable")
        .env("GPA_BENCH_OWN_CGROUP", &own_cgroup)
        .env("GPA_BENCH_CGROUP", &bench_cgroup)
        .output()
        .unwrap();
    let unreachable = String::from_utf8_lossy(&out.stdout).into_owned();
    move_self(&bench_cgroup);

    // In-kernel cost: the programs' own run time per connect (BPF_STATS_RUN_TIME), which the end-to-end numbers
    // above cannot resolve on a busy machine.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let unrelated_hooks = hook_cost(&program_ids, unrelated);
    let intercepted_hooks = hook_cost(&program_ids, endpoint);
    drop(stats);
    drop(cleanup); // back home, loader stopped (it prints its counters), cgroup removed

    let [
        out_unrelated,
        out_proxy,
        in_unrelated,
        in_proxy,
        intercepted,
    ] = samples.map(|mut s| median(&mut s));
    println!(
        "connect()+close() on loopback, median of {ROUNDS} rounds x {BATCH} (ns per connect):"
    );
    report("unrelated listener", out_unrelated, in_unrelated);
    report("proxy listener, direct", out_proxy, in_proxy);
    report("intercepted endpoint -> proxy", out_proxy, intercepted);
    print!("{unreachable}");
    println!(
        "programs' own run time per connect (BPF_STATS_RUN_TIME, {} connects each):",
        BATCH * STATS_BATCHES
    );
    for (what, (ns, runs), plain) in [
        ("unrelated", unrelated_hooks, out_unrelated),
        ("intercepted", intercepted_hooks, out_proxy),
    ] {
        println!(
            "  {what:<12} {ns:>6.0} ns in {runs:.1} program runs  = {:.4} of a plain connect+close ({plain:.0} ns)",
            ns / plain
        );
    }
}

/// Batches timed by the kernel's program statistics.
const STATS_BATCHES: u32 = 5;

/// Nanoseconds the programs ran, and how many times, per connect to `target` (the caller is in the cgroup).
fn hook_cost(program_ids: &[u32], target: SocketAddr) -> (f64, f64) {
    let per_program = || -> Vec<(String, u128, u64)> {
        let mut v: Vec<_> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| program_ids.contains(&p.id()))
            .map(|p| {
                (
                    p.name_as_str().unwrap_or("?").to_owned(),
                    p.run_time().as_nanos(),
                    p.run_count(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = per_program();
    for _ in 0..STATS_BATCHES {
        time_connects(target);
    }
    let after = per_program();
    let connects = f64::from((BATCH + WARMUP) * STATS_BATCHES);
    let (mut time, mut runs) = (0u128, 0u64);
    for ((name, t0, n0), (_, t1, n1)) in before.iter().zip(&after) {
        let (dt, dn) = (t1 - t0, n1 - n0);
        if dn > 0 {
            let per_run = dt as f64 / dn as f64;
            println!(
                "    {target} {name:<14} {:>4.1} runs/connect {per_run:>5.0} ns/run",
                dn as f64 / connects
            );
        }
        time += dt;
        runs += dn;
    }
    (time as f64 / connects, runs as f64 / connects)
}

fn report(what: &str, without: f64, with: f64) {
    println!(
        "  {what:<30} without {without:>8.0}  with {with:>8.0}  ratio {:.3}  delta {:+6.0}",
        with / without,
        with - without
    );
}

fn ordered<const N: usize>(
    flip: bool,
    mut items: [(usize, SocketAddr); N],
) -> [(usize, SocketAddr); N] {
    if flip {
        items.reverse();
    }
    items
}

/// Puts the bench back in its own cgroup, stops the loader and removes the bench cgroup, also after a panic.
struct Cleanup {
    home: PathBuf,
    cgroup: PathBuf,
    loader: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        if let Some(mut loader) = self.loader.take() {
            drop(loader.stdin.take()); // an orderly stop
            let _ = loader.wait();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// A listener that accepts and drops every connection; returns its address.
fn sink(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    local
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.16:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn move_self(cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).unwrap();
}

/// Mean nanoseconds per connect+close over one batch. The close is an abort (`SO_LINGER` 0), so no TIME_WAIT
/// piles up and slows the ephemeral port search of later connects.
fn time_connects(target: SocketAddr) -> f64 {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let connect = || {
        let stream = TcpStream::connect(target).unwrap();
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &abort).unwrap();
    };
    (0..WARMUP).for_each(|_| connect());
    let start = Instant::now();
    for _ in 0..BATCH {
        connect();
    }
    start.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Inside `unshare --net` (loopback down, no routes): alternately outside and inside the bench cgroup, times
/// `connect()` of one TCP socket to an unrelated loopback address, which fails with ENETUNREACH after the
/// connect4 hook and before any packet is built.
fn unreachable_connects() {
    const CALLS: u32 = 100_000;
    let own = PathBuf::from(std::env::var("GPA_BENCH_OWN_CGROUP").unwrap());
    let bench = PathBuf::from(std::env::var("GPA_BENCH_CGROUP").unwrap());
    let target = SockaddrIn::new(127, 0, 0, 1, 9);
    let mut samples: [Vec<f64>; 2] = Default::default();
    let mut differences = Vec::with_capacity(UNREACHABLE_ROUNDS);
    for round in 0..UNREACHABLE_ROUNDS {
        let mut sides = [(0, &own), (1, &bench)];
        if round % 2 == 1 {
            sides.reverse();
        }
        for (slot, cgroup) in sides {
            move_self(cgroup);
            // A socket belongs to the cgroup of its creator at creation: make one on each side.
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            let call = || {
                let err = connect(fd.as_raw_fd(), &target).unwrap_err();
                assert_eq!(
                    err,
                    nix::Error::ENETUNREACH,
                    "expected no route in a fresh network namespace"
                );
            };
            (0..CALLS / 10).for_each(|_| call());
            let start = Instant::now();
            (0..CALLS).for_each(|_| call());
            samples[slot].push(start.elapsed().as_nanos() as f64 / f64::from(CALLS));
        }
        differences.push(samples[1][round] - samples[0][round]);
    }
    move_self(&own);
    let [without, with] = samples.map(|mut s| median(&mut s));
    println!(
        "connect() failing after the hook (no route), median of {UNREACHABLE_ROUNDS} rounds x {CALLS} (ns per call):"
    );
    report("unrelated, connect4 only", without, with);
    differences.sort_by(f64::total_cmp);
    let n = differences.len();
    println!(
        "  paired difference per round (with - without): median {:+.1} ns, interquartile range [{:+.1}, {:+.1}] ns",
        differences[n / 2],
        differences[n / 4],
        differences[3 * n / 4]
    );
}

/// Alternating rounds of the no-route measure: many, since each is short and the difference is small.
const UNREACHABLE_ROUNDS: usize = 61;

/// The agent stand-in: attaches the redirector to the bench cgroup and holds it until stdin closes.
fn loader() {
    let cfg = RedirectConfig {
        cgroup_root: Some(std::env::var("GPA_BENCH_CGROUP").unwrap().into()),
        listener: std::env::var("GPA_BENCH_LISTENER")
            .unwrap()
            .parse()
            .unwrap(),
        object_path: None,
        fail_mode: RedirectFailMode::Open,
    };
    let redirector = Redirector::start(cfg).unwrap();
    redirector
        .set_policy(&[std::env::var("GPA_BENCH_ENDPOINT")
            .unwrap()
            .parse()
            .unwrap()])
        .unwrap();
    let ids: Vec<String> = redirector
        .status()
        .programs
        .iter()
        .map(|p| p.program_id.to_string())
        .collect();
    println!("ready {}", ids.join(","));
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut sink)
        .is_ok_and(|n| n > 0)
    {}
    let counters = redirector.counters().unwrap();
    eprintln!("loader counters: {counters:?}");
    redirector.stop().unwrap();
}
