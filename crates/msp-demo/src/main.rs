//! `msp-demo`: the MSP demo, and the roles the demo and the end-to-end suite start as separate processes.
//! `main` only parses, sets up the runtime and calls the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use msp_demo::demo::{self, DemoOptions, Outcome};

const AFTER_HELP: &str = "\
Without a subcommand, runs the demo: msp-host on loopback, the agent (gpa run) as its own process with its
eBPF redirector on a child cgroup created for the demo, and sample workloads in that cgroup as root and as
nobody. Five steps: MSP disabled, Audit, an allowlist, Enforce, the agent stopped and restarted. Everything
is removed afterwards, also on Ctrl-C. Needs root, cgroup v2, cgroup-bpf and kernel BTF; says what is
missing otherwise. Traffic goes to loopback only.

Exit codes: 0 every step behaved as MSP promises; 1 a step did not (each check is printed); 2 invalid
arguments; 3 a prerequisite is missing (printed with how to get it); 4 the demo could not run (printed);
130 interrupted.";

/// The MSP demo: msp-host and the Guest Proxy Agent end to end on this machine.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Cli {
    /// Print machine-readable results (one JSON document) instead of the narration.
    #[arg(long)]
    json: bool,
    /// Run the demo inside this network namespace (`/run/netns/<name>`), whose loopback it then uses; the
    /// end-to-end suite runs the demo this way so it cannot collide with anything on the machine's loopback.
    #[arg(long, hide = true)]
    netns: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Guest Proxy Agent (as `gpa run`); used by the demo and the end-to-end suite.
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// Enter this network namespace first (`/run/netns/<name>`).
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Wait for `go` on stdin, then exec PROGRAM as the given user; used to place workloads in a cgroup.
    #[command(hide = true)]
    Launch {
        #[arg(long)]
        netns: Option<PathBuf>,
        #[arg(long, requires = "gid")]
        uid: Option<u32>,
        #[arg(long, requires = "uid")]
        gid: Option<u32>,
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
    /// Send GET requests with `Metadata: true` to an http://<ip>[:port]/ URL; one JSON line per request.
    Fetch {
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Agent { config, netns }) => {
            match msp_demo::roles::agent(&config, netns.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("msp-demo agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Launch {
            netns,
            uid,
            gid,
            argv,
        }) => {
            let user = uid.zip(gid);
            let e = msp_demo::roles::launch(netns.as_deref(), user, &argv);
            eprintln!("msp-demo launch: {e}");
            ExitCode::from(127)
        }
        Some(Command::Fetch {
            url,
            count,
            interval_ms,
        }) => match msp_demo::roles::fetch(&url, count, Duration::from_millis(interval_ms)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("msp-demo fetch: {e}");
                ExitCode::FAILURE
            }
        },
        None => {
            if let Some(ns) = &cli.netns
                && let Err(e) = msp_demo::netns::enter(ns)
            {
                eprintln!("msp-demo: {e}");
                return ExitCode::from(4);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("msp-demo: cannot start the runtime: {e}");
                    return ExitCode::from(4);
                }
            };
            let outcome = runtime.block_on(demo::main(DemoOptions { json: cli.json }));
            ExitCode::from(match outcome {
                Outcome::Passed => 0,
                Outcome::Failed => 1,
                Outcome::Missing => 3,
                Outcome::Broken => 4,
                Outcome::Interrupted => 130,
            })
        }
    }
}
