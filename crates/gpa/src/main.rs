//! `gpa`: the Guest Proxy Agent's command line. `main` only parses, sets up tracing and calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gpa::config::{Config, ProcessEnv};
use gpa::logfile::{CONNECTION_LOG_FILE, CONNECTION_TARGET, LOG_FILE, RollingLog};
use gpa::telemetry::EventSink;
use gpa::telemetry::layer::EventLayer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Guest Proxy Agent: intercepts metadata calls with eBPF, authorizes, signs and forwards them.
#[derive(Parser)]
#[command(version, after_help = ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run {
        /// Configuration file (default: /etc/azure/proxy-agent.json, else proxy-agent.json next to gpa).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Ask the running agent whether provisioning finished, then print its status.
    #[command(
        after_help = "Exit codes:\n  0  provisioning finished without error\n  1  not finished \
                            (or the agent is unreachable)\n  2  finished with an error (printed)\n  3  finished \
                            without error, but the overall status is not SUCCESS\n  64 bad configuration"
    )]
    Status {
        /// Configuration file, as for `gpa run`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep asking, every 100 ms, for up to this many seconds.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Configuration helpers.
    #[command(
        after_help = "Exit codes:\n  0  done (with --check: the configuration is valid)\n  64 bad configuration"
    )]
    Config {
        /// Print every key with its default value.
        #[arg(long)]
        print_defaults: bool,
        /// Check the configuration `gpa run` would use, without starting anything: which file, and whether it
        /// is valid (a bad file is named with the key and the problem).
        #[arg(long)]
        check: bool,
        /// The file to check instead of the default locations.
        #[arg(long, requires = "check")]
        config: Option<PathBuf>,
    },
}

/// The long help of `gpa --help`.
const ABOUT: &str = "\
The agent runs as root in the VM (packaging/gpa.service). eBPF sends every connect() to WireServer
(168.63.129.16:80), HostGAPlugin (168.63.129.16:32526) and IMDS (169.254.169.254:80) to its proxy on
127.0.0.1:3080 and records in the kernel which process and user made it. The agent latches the VM's key from
the host, checks each request against the host's allowlist (users, groups, executables, URL paths), signs and
forwards what is allowed and refuses the rest (403 in Enforce; forwarded and recorded in Audit).

Configuration: /etc/azure/proxy-agent.json, else proxy-agent.json next to the binary; every key is optional
(`gpa config --print-defaults` lists them). A bad file is refused with its path, the key and the problem;
`gpa config --check` checks one without starting anything.
Files: keys in /var/lib/azure-proxy-agent/keys (0700/0600); status.json, logs and rules snapshots in
/var/log/azure-proxy-agent (0640).

Exit codes: 0 success; 1 the agent failed or stopped with an error (logged); 2 invalid arguments;
64 bad configuration. `gpa status --help` lists its own.";

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// The configuration `gpa run` uses, and the file it came from (`None`: the defaults); a bad one is printed and
/// is exit code 64.
fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ExitCode> {
    match Config::load(path, &ProcessEnv) {
        Ok(loaded) => Ok(loaded),
        Err(e) => {
            eprintln!("gpa: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// `gpa config --check`: the file `gpa run` would load, and whether it is valid.
fn check_config(path: Option<&Path>) -> ExitCode {
    match load(path) {
        Ok((_, Some(file))) => println!("gpa: {}: valid", file.display()),
        Ok((_, None)) => {
            println!(
                "gpa: no configuration file found; the defaults apply (gpa config --print-defaults)"
            );
        }
        Err(code) => return code,
    }
    ExitCode::SUCCESS
}

fn init_tracing(config: &Config, events: &EventSink) {
    let stderr = fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(config.file_log_level_for_system_events.filter());
    let level = config.file_log_level.filter();
    let open = |name: &str| {
        let dir = config.log_dir()?;
        match RollingLog::open(dir, name) {
            Ok(log) => Some(log),
            Err(e) => {
                eprintln!("gpa: log file {name} unusable: {e}");
                None
            }
        }
    };
    let file = open(LOG_FILE).map(|log| {
        fmt::layer().with_ansi(false).with_writer(log).with_filter(
            Targets::new()
                .with_default(level)
                .with_target(CONNECTION_TARGET, LevelFilter::OFF),
        )
    });
    let connections = open(CONNECTION_LOG_FILE).map(|log| {
        fmt::layer()
            .with_ansi(false)
            .with_writer(log)
            .with_filter(Targets::new().with_target(CONNECTION_TARGET, level))
    });
    let to_events = config
        .file_log_level_for_events
        .map(|l| EventLayer::filtered(events.clone(), l.level()));
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .with(connections)
        .with(to_events)
        .init();
}

/// Blocking threads at most (identity lookups through `/proc` and NSS, file writes); more wait in tokio's queue.
/// A connection storm from one cold process ran 50–60 lookups at once (BENCHMARKS.md).
const MAX_BLOCKING_THREADS: usize = 64;

fn main() -> ExitCode {
    // Before any thread starts. Where it is not taken (not glibc), threads keep arenas of their own: more memory at
    // scale, nothing else.
    #[cfg(target_os = "linux")]
    let _ = gpa::redirect::share_one_malloc_arena();
    let cli = Cli::parse();
    // The proxy's connections run on lanes of their own (`proxy::lanes`); this runtime runs the rest. Multi-thread:
    // the key keeper and the status writer write files with fsync on its threads, and its blocking pool runs the
    // identity lookups of every lane.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(gpa::worker_threads())
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpa: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Config {
            print_defaults,
            check,
            config,
        } => {
            if print_defaults {
                println!("{}", Config::defaults_json());
            }
            if check {
                return check_config(config.as_deref());
            }
            ExitCode::SUCCESS
        }
        Command::Run { config } => {
            gpa::clock::mark_start();
            let config = match load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(code) => return code,
            };
            let events = EventSink::new();
            init_tracing(&config, &events);
            if let Some(mode) = config.canonical_request_mode.as_deref()
                && mode != "enforce"
            {
                tracing::warn!(
                    mode,
                    "canonicalRequestMode is ignored; requests are always canonicalised"
                );
            }
            match runtime.block_on(gpa::lifecycle::run_with_events(config, events)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "agent failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { config, wait } => {
            let config = match load(config.as_deref()) {
                Ok((c, _)) => c,
                Err(code) => return code,
            };
            let code =
                runtime.block_on(gpa::status::client::run(&config, Duration::from_secs(wait)));
            ExitCode::from(code as u8)
        }
    }
}
