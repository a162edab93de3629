//! The roles this binary plays besides the demo, each in its own process:
//!
//! - `agent`: the Guest Proxy Agent, exactly `gpa run` (same library entry point), optionally inside a network
//!   namespace. Logs go to standard error, which the harness appends to a file.
//! - `launch`: enters a namespace, waits until the harness has placed it in a cgroup (a `go` line on standard
//!   input), drops to the requested user and execs the workload. The process keeps its pid throughout, so the
//!   kernel attributes the workload's connections to the workload itself.
//! - `fetch`: the sample workload ([`crate::fetch`]).
//!
//! None of these roles may dial anything but the URL it was given.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use gpa::config::{Config, ProcessEnv};
use gpa::telemetry::EventSink;

use crate::error::HarnessError;
use crate::fetch;

/// Runs the agent until SIGTERM/SIGINT (`gpa run --config <config>`).
pub fn agent(config: &Path, netns: Option<&Path>) -> Result<(), HarnessError> {
    if let Some(ns) = netns {
        crate::netns::enter(ns)?;
    }
    gpa::clock::mark_start();
    let (config, _) =
        Config::load(Some(config), &ProcessEnv).map_err(|e| HarnessError::Decode {
            what: "agent configuration".into(),
            message: e.to_string(),
        })?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_max_level(config.file_log_level.level())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Task {
            what: "starting the agent's runtime",
            message: e.to_string(),
        })?;
    runtime
        .block_on(gpa::lifecycle::run_with_events(config, EventSink::new()))
        .map_err(|e| HarnessError::Task {
            what: "the agent",
            message: e.to_string(),
        })
}

/// Enters `netns`, waits for `go`, becomes `uid`/`gid`, execs `argv`. Returns only on failure.
pub fn launch(netns: Option<&Path>, user: Option<(u32, u32)>, argv: &[OsString]) -> HarnessError {
    let Some((program, args)) = argv.split_first() else {
        return HarnessError::Workload {
            program: String::new(),
            message: "nothing to launch".into(),
        };
    };
    let name = program.to_string_lossy().into_owned();
    let failed = |message: String| HarnessError::Workload {
        program: name.clone(),
        message,
    };
    if let Some(ns) = netns
        && let Err(e) = crate::netns::enter(ns)
    {
        return e;
    }
    let mut go = String::new();
    if std::io::stdin().lock().read_line(&mut go).is_err() || go.trim() != "go" {
        return failed("not released by the harness".into());
    }
    if let Some((uid, gid)) = user {
        use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
        let gid = Gid::from_raw(gid);
        let dropped = setgroups(&[gid])
            .and_then(|()| setgid(gid))
            .and_then(|()| setuid(Uid::from_raw(uid)));
        if let Err(e) = dropped {
            return failed(format!("cannot become uid {uid}: {e}"));
        }
    }
    let error = std::process::Command::new(program).args(args).exec();
    failed(format!("exec: {error}"))
}

/// `count` requests, `interval` apart, one JSON line each on standard output.
pub fn fetch(url: &str, count: u32, interval: Duration) -> Result<(), HarnessError> {
    let (addr, target) = fetch::parse_url(url).map_err(|e| HarnessError::Workload {
        program: "fetch".into(),
        message: e.to_string(),
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HarnessError::Task {
            what: "starting the fetch runtime",
            message: e.to_string(),
        })?;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let result = runtime.block_on(fetch::get(addr, &target));
        let line = serde_json::to_string(&result).unwrap_or_default();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| HarnessError::io("write results to", "stdout", e))?;
    }
    Ok(())
}
