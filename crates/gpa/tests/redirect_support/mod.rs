//! Harness for the redirector's root tests: a child cgroup per test (removed on drop, also when the test fails),
//! client processes placed inside it, stand-ins for a metadata endpoint and for the proxy, and bpftool views.
//!
//! Clients are this test binary re-executed in a child role (see `child.rs`): the harness spawns one, writes its
//! pid into the test cgroup's `cgroup.procs`, then tells it to go; the harness itself stays outside the cgroup.
//! Every address is loopback (or inside a network namespace a child created).
#![allow(dead_code, unreachable_pub)]

pub mod child;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gpa::redirect::{
    PIN_ROOT, RedirectConfig, RedirectFailMode, Redirector, discover_cgroup2_root,
};

/// Env var naming the child role; set only for re-executed clients.
pub const ROLE_ENV: &str = "GPA_TEST_ROLE";
/// How long a test waits for any one thing a child or the kernel should do.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    format!(
        "gpa-test-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether root/eBPF tests can run here. Under `CI=true` a missing capability fails the test instead.
pub fn root_ready(test: &str) -> bool {
    let problem = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("no kernel BTF")
    } else if !discover_cgroup2_root().join("cgroup.procs").exists() {
        Some("no cgroup2 hierarchy")
    } else {
        None
    };
    match problem {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: CI=true but {why}")
        }
        Some(why) => {
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// Removes empty cgroups named `{prefix}<tag>-<pid>-<n>` whose creating test process is gone: left behind when a
/// test binary was killed before its drop guards ran. Once per process; a cgroup with processes in it cannot be
/// removed and stays, as does anything whose pid is alive.
fn sweep_orphaned_cgroups(prefix: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(discover_cgroup2_root()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                continue;
            };
            let mut parts = rest.rsplit('-');
            let (Some(_), Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && std::fs::remove_dir(entry.path()).is_ok()
            {
                eprintln!(
                    "removed a test cgroup left by a killed run: {}",
                    entry.path().display()
                );
            }
        }
    });
}

/// A child cgroup of the cgroup2 root, removed on drop (after its processes are gone).
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> TestCgroup {
        sweep_orphaned_cgroups("gpa-test-");
        let path = discover_cgroup2_root().join(unique(tag));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.path.display()));
    }

    /// The cgroup id (inode number), which names the pin directory.
    pub fn id(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&self.path).unwrap())
    }

    pub fn config(&self, listener: SocketAddr, fail_mode: RedirectFailMode) -> RedirectConfig {
        RedirectConfig {
            cgroup_root: Some(self.path.clone()),
            listener,
            object_path: None,
            fail_mode,
        }
    }

    /// Programs attached to this cgroup, by name, as bpftool lists them.
    pub fn attached(&self) -> Vec<String> {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.path)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut names: Vec<String> = text
            .split("\"name\":")
            .skip(1)
            .filter_map(|rest| {
                rest.trim_start()
                    .strip_prefix('"')?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Kill whatever is left inside (only this test's clients ever are), then remove the directory.
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + STEP_TIMEOUT;
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes a cgroup's pin directory on drop, so a failed `closed`-mode test leaves nothing attached.
pub struct PinGuard {
    pub dir: PathBuf,
}

impl PinGuard {
    pub fn new(cgroup: &TestCgroup) -> PinGuard {
        PinGuard {
            dir: Path::new(PIN_ROOT).join(cgroup.id().to_string()),
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A stand-in for a metadata endpoint on a loopback address: answers every connection with `direct\n`.
pub struct Endpoint {
    pub addr: SocketAddr,
}

impl Endpoint {
    pub fn start(ip: &str) -> Endpoint {
        let listener =
            TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).expect("bind endpoint");
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(b"direct\n");
            }
        });
        Endpoint { addr }
    }
}

/// What the proxy stand-in saw on one accepted connection.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
}

/// A stand-in for the proxy listener on `127.0.0.1:<ephemeral>`.
pub struct Proxy {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

impl Proxy {
    pub fn bind() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        Proxy { listener, addr }
    }

    /// Accepts one connection, waiting at most [`STEP_TIMEOUT`].
    pub fn accept(&self) -> Accepted {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::try_from(STEP_TIMEOUT).unwrap()).expect("poll");
        assert_eq!(ready, 1, "proxy: nothing to accept within {STEP_TIMEOUT:?}");
        let (stream, peer) = self.listener.accept().expect("accept");
        Accepted { stream, peer }
    }
}

/// Starts a redirector for `cgroup` that sends `endpoints` to `proxy`.
pub fn start_redirector(
    cgroup: &TestCgroup,
    proxy: &Proxy,
    endpoints: &[SocketAddr],
) -> Redirector {
    let redirector = Redirector::start(cgroup.config(proxy.addr, RedirectFailMode::Open))
        .expect("start redirector");
    redirector.set_policy(endpoints).expect("set policy");
    redirector
}

/// One `@@ key=value …` line from a child.
pub type Report = HashMap<String, String>;

/// A re-executed client process.
pub struct ChildProc {
    pub child: Child,
    pub pid: u32,
    stdin: Option<ChildStdin>,
    reports: mpsc::Receiver<Report>,
}

/// How to spawn a client.
#[derive(Default)]
pub struct Spawn<'a> {
    pub role: &'a str,
    /// Extra arguments placed before the test-harness ones (they end up in the client's command line).
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
    pub uid: Option<u32>,
    pub cgroup: Option<&'a TestCgroup>,
    /// Run the child through this wrapper command (e.g. `unshare -C`), which must exec it in place.
    pub wrapper: Vec<&'a str>,
}

impl Spawn<'_> {
    pub fn run(self) -> ChildProc {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.args(&self.args)
            .args([
                "--exact",
                "child_role_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE_ENV, self.role)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid); // std also drops supplementary groups when root changes uid
        }
        let mut child = cmd.spawn().expect("spawn child");
        let pid = child.id();
        if let Some(cgroup) = self.cgroup {
            cgroup.add(pid);
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, reports) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("@@ ") {
                    let report = rest
                        .split(' ')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    if tx.send(report).is_err() {
                        break;
                    }
                }
            }
        });
        ChildProc {
            child,
            pid,
            stdin: Some(stdin),
            reports,
        }
    }
}

impl ChildProc {
    /// The next report, within [`STEP_TIMEOUT`].
    pub fn report(&self) -> Report {
        self.reports
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("child {}: no report: {e}", self.pid))
    }

    /// Closes the child's stdin, which ends a client that holds its connection.
    pub fn release(&mut self) {
        self.stdin.take();
    }

    /// Releases the child and waits for it to exit.
    pub fn finish(mut self) {
        self.release();
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "child {} did not exit", self.pid);
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one line from a stream (with a timeout).
pub fn read_line(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Polls `f` until it holds or [`STEP_TIMEOUT`] passes.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A free loopback port right now (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `prog args` with the given stdin; for holders of a client's socket.
pub fn exec_with_stdin(prog: &str, args: &[&str], stdin: Stdio) -> std::io::Error {
    Command::new(prog).args(args).stdin(stdin).exec()
}
