//! The run: start the stack, wait for the agent to enforce, then each workload in alternating rounds (through
//! the agent, direct, through the agent, …), then the agent's memory, the 10,000-connection hold, cold starts
//! with a stored key and the stripped binary's size.
//!
//! Workers are child processes (`msp-bench worker`): through-the-agent ones are moved into the bench cgroup
//! before they connect, direct ones stay outside and connect from [`DIRECT_SOURCES`]. Every request of every
//! round must succeed; the first failure is reported with the run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use gpa::proxy::limits::FD_RESERVE;

use crate::cleanup::Cleanup;
use crate::http;
use crate::procfs;
use crate::progress::Progress;
use crate::relay;
use crate::report::{AgentFacts, Report, Scale, WorkloadResult};
use crate::stack::{Binaries, DIRECT_SOURCES, Proc, Stack, StackError};
use crate::stats::SideAcc;
use crate::worker::{Expect, Outcome, Pattern, Spec, THREAD_LIMIT};
use crate::workload::{self, ALL, Resource, Workload};

/// How long the agent may take to enforce after its first start (key acquisition, attestation).
const FIRST_READY_MS: u64 = 20_000;
/// How long a cold start with a stored key may take before the probe gives up.
const COLD_START_LIMIT_MS: u64 = 10_000;
/// Pause before reading the idle RSS, so start-up allocations settle.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// The descriptor limit the bench gives itself and its children (the 10,000-connection hold needs two per
/// connection in the agent and one each in the worker and the host).
const NOFILE: u64 = 65_536;
/// Descriptors left unused below the agent's cap in the hold, a margin on top of its reserve.
pub(crate) const FD_MARGIN: u64 = 64;
/// Pause between the last held connection and the RSS reading: longer than the agent's idle-buffer grace.
const HOLD_SETTLE: Duration = Duration::from_millis(1000);

/// How the run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    pub round_ms: u64,
    pub warmup_ms: u64,
    /// Stop each round after this many requests (the smoke test's short run).
    pub max_requests: Option<u64>,
    pub client_cpu: Option<usize>,
    /// Pin every msp-host thread to this CPU; `None`: the scheduler places them.
    pub host_cpu: Option<usize>,
    /// Connections held through the agent at once; 0 skips.
    pub scale: usize,
    pub cold_starts: usize,
    /// Only these workloads (by name); empty: all.
    pub only: Vec<String>,
    /// The bare relay's way for every workload; `None`: the cheapest for each ([`relay_mode`]).
    pub relay_mode: Option<relay::Mode>,
    /// The agent's `proxyBusyPollInMicroseconds`; `None`: its default.
    pub agent_busy_poll_us: Option<u64>,
    pub bins: Binaries,
    pub work_dir: PathBuf,
}

/// Why the run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("worker: {0}")]
    Worker(String),
    #[error("the agent did not {what} within {limit_ms} ms: {last}")]
    NotReady {
        what: &'static str,
        limit_ms: u64,
        last: String,
    },
    #[error("the agent or the host exited during the run (logs in {0})")]
    Died(String),
    #[error("bare relay: {step}: {source}")]
    Relay {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bare relay: expected `listening <address>` on its standard output, got {0:?}")]
    RelayAnnounce(String),
    #[error("the bare relay exited during the run (log: {0})")]
    RelayDied(String),
    #[error("unknown workload {0:?}")]
    UnknownWorkload(String),
}

/// A started worker.
struct Worker {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(
        spec: &Spec,
        cgroup: Option<&crate::cgroup::BenchCgroup>,
        cleanup: &Cleanup,
    ) -> Result<Worker, BenchError> {
        let exe =
            std::env::current_exe().map_err(|e| BenchError::Worker(format!("current_exe: {e}")))?;
        let json = serde_json::to_string(spec).map_err(|e| BenchError::Worker(e.to_string()))?;
        let mut proc = Proc::spawn(
            Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            cleanup,
        )
        .map_err(|e| BenchError::Worker(format!("spawn: {e}")))?;
        if let Some(cg) = cgroup {
            cg.add(proc.pid())
                .map_err(|e| BenchError::Worker(format!("move into the cgroup: {e}")))?;
        }
        let child = proc.child_mut();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Worker("no pipes".into()));
        };
        let mut worker = Worker {
            proc,
            stdin,
            stdout: BufReader::new(stdout),
        };
        worker.say(&json)?;
        Ok(worker)
    }

    fn say(&mut self, line: &str) -> Result<(), BenchError> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| BenchError::Worker(format!("stdin: {e}")))
    }

    fn line(&mut self) -> Result<String, BenchError> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| BenchError::Worker(format!("stdout: {e}")))?;
        Ok(line)
    }

    fn outcome(mut self) -> Result<Outcome, BenchError> {
        let line = self.line()?;
        let outcome = serde_json::from_str(&line)
            .map_err(|e| BenchError::Worker(format!("outcome {line:?}: {e}")))?;
        let _ = self.proc.child_mut().wait();
        Ok(outcome)
    }
}

/// Raises this process's descriptor limits (root may raise the hard one); children inherit them.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && (soft < NOFILE || hard < NOFILE)
    {
        let hard = hard.max(NOFILE);
        if setrlimit(Resource::RLIMIT_NOFILE, NOFILE, hard).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The whole run.
pub fn run(opts: &Options, cleanup: &Cleanup) -> Result<Report, BenchError> {
    let workloads: Vec<Workload> = if opts.only.is_empty() {
        ALL.to_vec()
    } else {
        opts.only
            .iter()
            .map(|n| {
                ALL.iter()
                    .find(|w| w.name == n)
                    .copied()
                    .ok_or_else(|| BenchError::UnknownWorkload(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    raise_nofile();
    let mut report = Report::new(opts);
    let steps =
        workloads.len() * opts.rounds * 3 + 2 + usize::from(opts.scale > 0) + opts.cold_starts;
    let mut progress = Progress::new(steps);

    progress.step("starting msp-host");
    let mut stack = Stack::start(opts.bins.clone(), &opts.work_dir, cleanup, opts.host_cpu)?;
    stack.agent_busy_poll_us = opts.agent_busy_poll_us;
    progress.step("starting gpa (first latch)");
    stack.start_agent()?;
    let ready = Expect {
        status: 200,
        marker: true,
    };
    probe(
        &stack,
        &workload::target(Resource::Instance),
        ready,
        FIRST_READY_MS,
        cleanup,
        "enforce",
    )?;
    std::thread::sleep(IDLE_SETTLE);
    let agent_pid = stack.agent_pid().unwrap_or(0);
    let mut facts = AgentFacts {
        rss_idle_bytes: procfs::rss(agent_pid).unwrap_or(0),
        ..AgentFacts::default()
    };

    for w in &workloads {
        let load_before = procfs::loadavg();
        if w.allowlist {
            stack.set_imds_profile(Some(("bench-1000", &workload::allowlist_item())))?;
            let denied = format!("{}?api-version=2021-02-01", workload::DENIED_PATH);
            probe(
                &stack,
                &denied,
                Expect {
                    status: 403,
                    marker: false,
                },
                15_000,
                cleanup,
                "apply the allowlist",
            )?;
        }
        let mut relay = Relay::start(
            stack.dir.as_path(),
            stack.addrs.imds,
            opts.relay_mode.unwrap_or_else(|| relay_mode(w)),
            cleanup,
        )?;
        let (mut agent, mut direct, mut bare) =
            (SideAcc::default(), SideAcc::default(), SideAcc::default());
        for round in 0..opts.rounds {
            let bare_relay = Route::Relay {
                addr: relay.addr,
                pid: relay.proc.pid(),
            };
            for route in [Route::Agent, Route::Direct, bare_relay] {
                progress.step(&format!(
                    "{} {} round {}/{}",
                    w.name,
                    route.name(),
                    round + 1,
                    opts.rounds
                ));
                let outcome = run_round(&stack, opts, w, route, cleanup)?;
                if !stack.healthy() {
                    return Err(BenchError::Died(stack.dir.display().to_string()));
                }
                if !relay.proc.running() {
                    let log = stack.dir.join(RELAY_LOG);
                    return Err(BenchError::RelayDied(log.display().to_string()));
                }
                match route {
                    Route::Agent => agent.add(outcome),
                    Route::Direct => direct.add(outcome),
                    Route::Relay { .. } => bare.add(outcome),
                }
            }
        }
        drop(relay);
        if w.allowlist {
            stack.set_imds_profile(None)?;
            let denied = format!("{}?api-version=2021-02-01", workload::DENIED_PATH);
            probe(
                &stack,
                &denied,
                ready,
                15_000,
                cleanup,
                "drop the allowlist",
            )?;
        }
        report.workloads.push(WorkloadResult::new(
            w,
            agent.finish(),
            direct.finish(),
            bare.finish(),
            load_before,
            procfs::loadavg(),
        ));
    }
    facts.rss_peak_bytes = procfs::peak_rss(agent_pid).unwrap_or(0);

    if opts.scale > 0 {
        progress.step(&format!("holding {} connections", opts.scale));
        report.scale = Some(hold(&stack, opts, cleanup)?);
    }
    for i in 0..opts.cold_starts {
        progress.step(&format!("cold start {}/{}", i + 1, opts.cold_starts));
        facts.cold_start_ms.push(cold_start(&mut stack, cleanup)?);
    }
    facts.binary_bytes = procfs::file_size(&opts.bins.gpa).unwrap_or(0);
    facts.stripped_binary_bytes = stripped_size(&opts.bins.gpa, &opts.work_dir);
    report.agent = facts;
    report.finish();
    progress.done();
    Ok(report)
}

fn request(stack: &Stack, target: &str) -> String {
    String::from_utf8_lossy(&http::get(target, &stack.addrs.imds.to_string(), false)).into_owned()
}

/// The way a round's requests go to the host.
#[derive(Clone, Copy)]
enum Route {
    /// Redirected to the agent: authorized, signed, verified by the host.
    Agent,
    /// Straight to the host, from the `direct` VM's address.
    Direct,
    /// Through the bare relay (listening on `addr`, process `pid`), which connects to the host from the `direct`
    /// VM's address.
    Relay {
        addr: std::net::SocketAddr,
        pid: u32,
    },
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Agent => "agent",
            Route::Direct => "direct",
            Route::Relay { .. } => "bare relay",
        }
    }
}

fn run_round(
    stack: &Stack,
    opts: &Options,
    w: &Workload,
    route: Route,
    cleanup: &Cleanup,
) -> Result<Outcome, BenchError> {
    let agent = stack.agent_pid().unwrap_or(0);
    let (target, bind, watched) = match route {
        Route::Agent => (stack.addrs.imds, None, agent),
        Route::Direct => (stack.addrs.imds, Some(DIRECT_SOURCES), agent),
        Route::Relay { addr, pid } => (addr, None, pid),
    };
    let through_agent = matches!(route, Route::Agent);
    let spec = Spec {
        target,
        bind,
        connections: w.connections,
        pattern: w.pattern,
        request: request(stack, &workload::target(w.resource)),
        expect: Expect {
            status: 200,
            marker: through_agent,
        },
        warmup_ms: opts.warmup_ms,
        duration_ms: opts.round_ms,
        max_requests: opts.max_requests,
        cpu: opts.client_cpu,
        watch: vec![watched, stack.host_pid()],
    };
    let mut worker = Worker::spawn(&spec, through_agent.then_some(&stack.cgroup), cleanup)?;
    worker.say("go")?;
    worker.outcome()
}

/// Where the bare relay's standard error goes, in the run's directory.
const RELAY_LOG: &str = "relay.log";

/// The bare relay of one workload: a `msp-bench relay` process, stopped on drop.
struct Relay {
    proc: Proc,
    addr: std::net::SocketAddr,
}

impl Relay {
    fn start(
        dir: &Path,
        host: std::net::SocketAddr,
        mode: relay::Mode,
        cleanup: &Cleanup,
    ) -> Result<Relay, BenchError> {
        let fail = |step| move |source| BenchError::Relay { step, source };
        let exe = std::env::current_exe().map_err(fail("current_exe"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(RELAY_LOG))
            .map_err(fail(RELAY_LOG))?;
        let mode_arg = match mode {
            relay::Mode::Threads => "threads",
            relay::Mode::Tokio => "tokio",
        };
        let mut proc = Proc::spawn(
            Command::new(exe)
                .args(["relay", "--to", &host.to_string()])
                .args([
                    "--from",
                    &DIRECT_SOURCES.first.to_string(),
                    "--mode",
                    mode_arg,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
            cleanup,
        )
        .map_err(fail("spawn"))?;
        let stdout =
            proc.child_mut().stdout.take().ok_or_else(|| {
                fail("stdout")(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            })?;
        // The relay announces its address as soon as it listens, or exits (its stdout then ends).
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(fail("stdout"))?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::RelayAnnounce(line.clone()))?;
        Ok(Relay { proc, addr })
    }
}

/// The cheapest relay for the workload: a thread per direction for a few keep-alive connections, else the
/// agent's runtime (a thread pair per new connection would cost more than the relaying).
fn relay_mode(w: &Workload) -> relay::Mode {
    if w.pattern == Pattern::KeepAlive && w.connections <= THREAD_LIMIT {
        relay::Mode::Threads
    } else {
        relay::Mode::Tokio
    }
}

/// A worker in the cgroup that retries new connections until the agent answers `expect`.
fn probe(
    stack: &Stack,
    target: &str,
    expect: Expect,
    limit_ms: u64,
    cleanup: &Cleanup,
    what: &'static str,
) -> Result<u64, BenchError> {
    let mut worker = Worker::spawn(
        &probe_spec(stack, target, expect, limit_ms),
        Some(&stack.cgroup),
        cleanup,
    )?;
    worker.say("go")?;
    let o = worker.outcome()?;
    o.probe_done_ns.ok_or_else(|| BenchError::NotReady {
        what,
        limit_ms,
        last: o.first_error.unwrap_or_default(),
    })
}

fn probe_spec(stack: &Stack, target: &str, expect: Expect, limit_ms: u64) -> Spec {
    Spec {
        target: stack.addrs.imds,
        bind: None,
        connections: 1,
        pattern: Pattern::Probe,
        request: request(stack, target),
        expect,
        warmup_ms: 0,
        duration_ms: limit_ms,
        max_requests: None,
        cpu: None,
        watch: Vec::new(),
    }
}

/// Stops the agent, starts it again with its stored key, and times spawn → first signed 200 through it.
fn cold_start(stack: &mut Stack, cleanup: &Cleanup) -> Result<f64, BenchError> {
    stack.stop_agent();
    let ready = Expect {
        status: 200,
        marker: true,
    };
    let target = workload::target(Resource::Instance);
    // The probe is placed first, so its start-up is not timed; it retries until the agent enforces.
    let mut worker = Worker::spawn(
        &probe_spec(stack, &target, ready, COLD_START_LIMIT_MS),
        Some(&stack.cgroup),
        cleanup,
    )?;
    let started = stack.start_agent()?;
    worker.say("go")?;
    let o = worker.outcome()?;
    let done = o.probe_done_ns.ok_or_else(|| BenchError::NotReady {
        what: "enforce after a restart",
        limit_ms: COLD_START_LIMIT_MS,
        last: o.first_error.clone().unwrap_or_default(),
    })?;
    Ok(done.saturating_sub(started) as f64 / 1e6)
}

/// Holds `opts.scale` keep-alive connections through the agent (or as many as its descriptor limit fits: two
/// per connection plus its reserve, spec §8.4) and reads its RSS once they are all idle.
fn hold(stack: &Stack, opts: &Options, cleanup: &Cleanup) -> Result<Scale, BenchError> {
    let agent = stack.agent_pid().unwrap_or(0);
    let before = procfs::rss(agent).unwrap_or(0);
    let nofile_hard = procfs::nofile_hard(agent).unwrap_or(u64::MAX);
    let fits = usize::try_from(nofile_hard.saturating_sub(FD_RESERVE + FD_MARGIN) / 2)
        .unwrap_or(usize::MAX);
    let connections = opts.scale.min(fits);
    let spec = Spec {
        connections,
        pattern: Pattern::Hold,
        ..probe_spec(
            stack,
            &workload::target(Resource::Instance),
            Expect {
                status: 200,
                marker: true,
            },
            0,
        )
    };
    let mut worker = Worker::spawn(&spec, Some(&stack.cgroup), cleanup)?;
    worker.say("go")?;
    let held_line = worker.line()?;
    std::thread::sleep(HOLD_SETTLE);
    let at_scale = procfs::rss(agent).unwrap_or(0);
    let load = procfs::loadavg();
    worker.say("release")?;
    let o = worker.outcome()?;
    Ok(Scale {
        requested: opts.scale,
        nofile_hard,
        connections,
        per_connection_bytes: at_scale.saturating_sub(before) as f64 / o.held.max(1) as f64,
        held: o.held,
        failed: o.failed,
        first_error: o.first_error,
        open_ms: o.window_ns as f64 / 1e6,
        agent_rss_before_bytes: before,
        agent_rss_bytes: at_scale,
        load_average: load,
        note: held_line.trim().to_owned(),
    })
}

/// Size of `gpa` after `strip` (a copy in the work dir).
fn stripped_size(gpa: &Path, dir: &Path) -> u64 {
    let out = dir.join("gpa.stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(gpa)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        procfs::file_size(&out).unwrap_or(0)
    } else {
        0
    }
}
