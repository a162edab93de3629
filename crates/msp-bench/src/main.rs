//! `msp-bench`: parses arguments and calls the library (see `msp_bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use msp_bench::cleanup::Cleanup;
use msp_bench::driver::{self, Options};
use msp_bench::stack::Binaries;

/// End-to-end benchmark: IMDS requests through the agent against the direct path (needs root: it creates a
/// cgroup and the agent loads eBPF). Writes bench.json and bench.md into --out and prints the Markdown.
#[derive(Parser)]
#[command(
    after_help = "Build first: cargo build --release -p gpa -p msp-host -p msp-bench\n\
                  Exit codes: 0 every request succeeded; 1 a request failed or the run could not complete; \
                  2 invalid arguments."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Rounds per side and workload (alternating: agent, direct, bare relay, agent, …).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Measured time per round, milliseconds.
    #[arg(long, default_value_t = 2000)]
    round_ms: u64,
    /// Unrecorded requests before each round's window, milliseconds.
    #[arg(long, default_value_t = 300)]
    warmup_ms: u64,
    /// End each round after this many requests (short smoke runs).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Pin the load generator to this CPU; `none` leaves it to the scheduler.
    #[arg(long, default_value = "1")]
    client_cpu: String,
    /// Pin msp-host (every thread it starts) to this CPU; `none` (the default) leaves it to the scheduler.
    /// Pinning takes the host's placement out of a comparison between two builds, and it also changes the
    /// direct path's figures (see BENCHMARKS.md).
    #[arg(long, default_value = "none")]
    host_cpu: String,
    /// Connections held through the agent at once for the memory-at-scale figure; 0 skips.
    #[arg(long, default_value_t = 10_000)]
    scale: usize,
    /// Cold starts with a stored key.
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// Only these workloads (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The bare relay's way for every workload (default: a thread per direction for keep-alive workloads of up
    /// to 8 connections, the agent's runtime for the others).
    #[arg(long, value_enum)]
    relay_mode: Option<msp_bench::relay::Mode>,
    /// The agent's `proxyBusyPollInMicroseconds` (0: no polling); default: the agent's own default.
    #[arg(long)]
    agent_busy_poll_us: Option<u64>,
    /// The gpa binary (default: next to msp-bench).
    #[arg(long)]
    gpa: Option<PathBuf>,
    /// The msp-host binary (default: next to msp-bench).
    #[arg(long)]
    msp_host: Option<PathBuf>,
    /// Where bench.json and bench.md go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// The load generator (started by the bench itself; its spec comes on standard input).
    #[command(hide = true)]
    Worker,
    /// The bare relay, the floor of a local proxy (started by the bench itself): prints `listening <address>`.
    #[command(hide = true)]
    Relay {
        /// Where every connection is relayed to.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// The source address of the relayed connections.
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long, value_enum)]
        mode: msp_bench::relay::Mode,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Worker | Command::Relay { .. }))
        && let Err(e) = msp_bench::cleanup::unblock_stop_signals()
    {
        eprintln!("msp-bench: cannot unblock SIGTERM and SIGINT: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Some(Command::Worker) => {
            return match msp_bench::worker::main() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("msp-bench worker: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Relay { to, from, mode }) => {
            return match msp_bench::relay::main(to, from, mode) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("msp-bench relay: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let cleanup = Cleanup::default();
    if let Err(e) = cleanup.install_signal_thread() {
        eprintln!("msp-bench: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default();
    let cpus = match msp_bench::worker::allowed_cpus() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("msp-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (client_cpu, host_cpu) = match (
        cpu_arg("--client-cpu", &cli.client_cpu, &cpus),
        cpu_arg("--host-cpu", &cli.host_cpu, &cpus),
    ) {
        (Ok(c), Ok(h)) => (c, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("msp-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let work = match tempfile::Builder::new().prefix("msp-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("msp-bench: temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = Options {
        rounds: cli.rounds.max(1),
        round_ms: cli.round_ms,
        warmup_ms: cli.warmup_ms,
        max_requests: cli.max_requests,
        client_cpu,
        host_cpu,
        scale: cli.scale,
        cold_starts: cli.cold_starts,
        only: cli.only,
        relay_mode: cli.relay_mode,
        agent_busy_poll_us: cli.agent_busy_poll_us,
        bins: Binaries {
            gpa: cli.gpa.unwrap_or_else(|| here.join("gpa")),
            host: cli.msp_host.unwrap_or_else(|| here.join("msp-host")),
        },
        work_dir: work.path().to_owned(),
    };
    let result = driver::run(&opts, &cleanup);
    let code = match result {
        Ok(report) => {
            let md = report.markdown();
            let written = std::fs::create_dir_all(&cli.out)
                .and_then(|()| std::fs::write(cli.out.join("bench.json"), report.json()))
                .and_then(|()| std::fs::write(cli.out.join("bench.md"), &md));
            if let Err(e) = &written {
                eprintln!("msp-bench: writing results into {}: {e}", cli.out.display());
            }
            println!("{md}");
            if report.all_succeeded && written.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("msp-bench: {e}");
            ExitCode::FAILURE
        }
    };
    cleanup.undo_all();
    code
}

/// A CPU number this process may run on, or `none`.
fn cpu_arg(flag: &str, value: &str, allowed: &[usize]) -> Result<Option<usize>, String> {
    if value == "none" {
        return Ok(None);
    }
    let cpu: usize = value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a CPU number or `none`"))?;
    if allowed.contains(&cpu) {
        Ok(Some(cpu))
    } else {
        let list: Vec<String> = allowed.iter().map(usize::to_string).collect();
        Err(format!(
            "{flag}: CPU {cpu} is not one msp-bench may run on (allowed: {})",
            list.join(", ")
        ))
    }
}
