//! Processes the harness starts: the agent (`msp-demo agent`, which is `gpa run` re-executed from this binary)
//! and workloads (`msp-demo launch`, which waits until it has been placed in a cgroup, drops to the requested
//! user and execs the workload program).
//!
//! Every process is tracked by its pid and killed by that pid on drop; nothing is ever signalled by name. A
//! workload is released only after it is inside its cgroup, so its very first `connect()` is intercepted.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use msp_core::status::AggregateStatus;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;

use crate::cgroup::ChildCgroup;
use crate::error::HarnessError;
use crate::fetch::FetchResult;

/// How long an orderly agent stop may take before the agent is killed (its own drain bound is 10 s).
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound on one workload run.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the agent log shown when a test fails.
pub const LOG_TAIL_LINES: usize = 40;
/// The `PATH` workloads get (their environment is otherwise empty: no proxy variables leak in).
pub const WORKLOAD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The user a workload runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    pub const ROOT: RunAs = RunAs { uid: 0, gid: 0 };

    /// `nobody`, with its primary group from NSS (65534 when it has no entry).
    pub fn nobody() -> RunAs {
        let uid = 65_534;
        let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or(uid, |u| u.gid.as_raw());
        RunAs { uid, gid }
    }

    /// The passwd name, else the number.
    pub fn name(self) -> String {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(self.uid))
            .ok()
            .flatten()
            .map_or_else(|| self.uid.to_string(), |u| u.name)
    }
}

/// Where a workload runs: in a cgroup (intercepted when the agent's redirector is attached to it) and/or a
/// network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    pub cgroup: Option<&'a ChildCgroup>,
    pub netns: Option<&'a Path>,
}

/// What a finished workload printed.
#[derive(Debug, Clone)]
pub struct WorkloadOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Starts workloads through this binary's `launch` role.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// This binary (run as root: it enters the namespace, then drops privileges).
    exe: PathBuf,
    /// The binary workloads exec for `fetch`: [`Launcher::exe`], or a copy unprivileged users can execute.
    workload_exe: PathBuf,
}

impl Launcher {
    /// `exe` is the msp-demo binary. When an unprivileged user could not execute it where it lies (a checkout
    /// under `/root`), it is copied into `scratch` (made traversable) for the workloads.
    pub fn new(exe: &Path, scratch: &Path) -> Result<Launcher, HarnessError> {
        let workload_exe = if world_executable(exe) {
            exe.to_path_buf()
        } else {
            let bin = scratch.join("bin");
            std::fs::create_dir_all(&bin).map_err(|e| HarnessError::io("create", &bin, e))?;
            for dir in [scratch, bin.as_path()] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| HarnessError::io("chmod", dir, e))?;
            }
            let copy = bin.join("msp-demo");
            std::fs::copy(exe, &copy).map_err(|e| HarnessError::io("copy", exe, e))?;
            copy
        };
        Ok(Launcher {
            exe: exe.to_path_buf(),
            workload_exe,
        })
    }

    /// The executable `fetch` workloads run as (what an allowlist's `exePath` names).
    pub fn workload_exe(&self) -> &Path {
        &self.workload_exe
    }

    /// Runs `argv` as `user` at `place` and waits (at most `timeout`) for it to exit.
    pub async fn run(
        &self,
        place: Place<'_>,
        user: RunAs,
        argv: &[OsString],
        timeout: Duration,
    ) -> Result<WorkloadOutput, HarnessError> {
        let program = argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("launch");
        if let Some(ns) = place.netns {
            cmd.arg("--netns").arg(ns);
        }
        if user != RunAs::ROOT {
            cmd.args([
                "--uid",
                &user.uid.to_string(),
                "--gid",
                &user.gid.to_string(),
            ]);
        }
        cmd.arg("--")
            .args(argv)
            .env_clear()
            .env("PATH", WORKLOAD_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: program.clone(),
            source,
        })?;
        let failed = |message: String| HarnessError::Workload {
            program: program.clone(),
            message,
        };
        if let Some(cgroup) = place.cgroup {
            let pid = child.id().ok_or_else(|| failed("exited at once".into()))?;
            cgroup.add(pid)?;
        }
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(b"go\n")
                .await
                .map_err(|e| failed(format!("cannot release it: {e}")))?;
        }
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| HarnessError::Timeout {
                what: format!("workload `{program}`"),
                after: timeout,
            })?
            .map_err(|e| failed(e.to_string()))?;
        Ok(WorkloadOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// `count` `GET`s of `url` (`interval` apart) by one `msp-demo fetch` process as `user` at `place`.
    pub async fn fetch_many(
        &self,
        place: Place<'_>,
        user: RunAs,
        url: &str,
        count: u32,
        interval: Duration,
    ) -> Result<Vec<FetchResult>, HarnessError> {
        let mut argv: Vec<OsString> =
            vec![self.workload_exe.clone().into(), "fetch".into(), url.into()];
        if count != 1 {
            // After the URL, so a summary's four command-line words still name what was fetched.
            argv.extend([
                "--count".into(),
                count.to_string().into(),
                "--interval-ms".into(),
                interval.as_millis().to_string().into(),
            ]);
        }
        let timeout = WORKLOAD_TIMEOUT + interval * count;
        let out = self.run(place, user, &argv, timeout).await?;
        let results: Vec<FetchResult> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if results.len() != count as usize {
            return Err(HarnessError::Workload {
                program: "msp-demo fetch".into(),
                message: format!(
                    "{} of {count} results ({}): {}",
                    results.len(),
                    out.status,
                    out.stderr.trim()
                ),
            });
        }
        Ok(results)
    }

    /// One `GET` of `url` by a `msp-demo fetch` process as `user` at `place`.
    pub async fn fetch(
        &self,
        place: Place<'_>,
        user: RunAs,
        url: &str,
    ) -> Result<FetchResult, HarnessError> {
        let mut results = self.fetch_many(place, user, url, 1, Duration::ZERO).await?;
        results.pop().ok_or_else(|| HarnessError::Workload {
            program: "msp-demo fetch".into(),
            message: "no result".into(),
        })
    }
}

/// Whether every directory up to `exe` is world-traversable and `exe` world-executable.
fn world_executable(exe: &Path) -> bool {
    let mode_ok =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    exe.ancestors()
        .all(|p| p.as_os_str().is_empty() || mode_ok(p))
}

/// How to start an agent: this binary, its configuration, and where it runs.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The msp-demo binary (its `agent` role is `gpa run`).
    pub exe: PathBuf,
    pub config: gpa::config::Config,
    /// The network namespace it runs in (`/run/netns/<name>`); `None`: the harness's own.
    pub netns: Option<PathBuf>,
    /// Where `agent.json` and `agent.log` are written.
    pub dir: PathBuf,
}

/// A running agent process; killed (by pid) on drop if still running.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
    status_file: Option<PathBuf>,
}

impl AgentProcess {
    /// Writes `<dir>/agent.json` and starts `msp-demo agent --config <dir>/agent.json`, its standard error
    /// appended to `<dir>/agent.log`.
    pub fn start(spec: &AgentSpec) -> Result<AgentProcess, HarnessError> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| HarnessError::io("create", &spec.dir, e))?;
        let config_path = spec.dir.join("agent.json");
        let json = serde_json::to_vec_pretty(&spec.config).map_err(|e| HarnessError::Decode {
            what: "agent configuration".into(),
            message: e.to_string(),
        })?;
        std::fs::write(&config_path, json)
            .map_err(|e| HarnessError::io("write", &config_path, e))?;
        let log = spec.dir.join("agent.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| HarnessError::io("open", &log, e))?;
        let mut cmd = std::process::Command::new(&spec.exe);
        cmd.arg("agent").arg("--config").arg(&config_path);
        if let Some(ns) = &spec.netns {
            cmd.arg("--netns").arg(ns);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: spec.exe.display().to_string(),
                source,
            })?;
        Ok(AgentProcess {
            child,
            log,
            status_file: spec
                .config
                .log_dir()
                .map(|d| d.join(gpa::status::writer::STATUS_FILE)),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's `status.json` (spec §9.1), once written.
    pub fn status(&self) -> Option<AggregateStatus> {
        let text = std::fs::read(self.status_file.as_ref()?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The orderly stop: SIGTERM, then wait (killed after [`AGENT_STOP_TIMEOUT`]).
    pub async fn stop(mut self) -> Result<ExitStatus, HarnessError> {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.signal(Signal::SIGKILL);
                return Err(HarnessError::Timeout {
                    what: "the agent to stop after SIGTERM".into(),
                    after: AGENT_STOP_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An unplanned exit: SIGKILL, then reap.
    pub fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn signal(&mut self, signal: Signal) {
        if self.exited().is_none()
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "--- agent {} log tail ({}) ---\n{}\n---",
                self.child.id(),
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}
