//! Runs `msp-probe` (the attacker process) with the placement a test asks for, and reads its one JSON line.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::cgroup::TestCgroup;
use crate::http::HttpResponse;
use crate::netns::NetNs;

/// A probe invocation being built.
#[derive(Debug, Clone)]
pub struct Probe {
    exe: PathBuf,
    args: Vec<String>,
}

/// What a probe reported.
#[derive(Debug, Clone)]
pub struct ProbeResult(pub serde_json::Value);

impl Probe {
    pub fn new(exe: impl AsRef<Path>) -> Probe {
        Probe {
            exe: exe.as_ref().to_path_buf(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Probe {
        self.args.push(a.into());
        self
    }

    /// Puts `text` on the probe's command line (as its 3rd word: `<exe> --note <text>`), where the agent reads
    /// it for `processCmdLine`.
    pub fn note(mut self, text: &str) -> Probe {
        self.args.insert(0, "--note".into());
        self.args.insert(1, text.into());
        self
    }

    /// Joins `cgroup` before acting (so the redirector sees its connects).
    pub fn in_cgroup(self, cgroup: &TestCgroup) -> Probe {
        self.arg("--cgroup").arg(cgroup.path.display().to_string())
    }

    /// Enters `netns` before acting.
    pub fn in_netns(self, netns: &NetNs) -> Probe {
        self.arg("--netns").arg(netns.name.clone())
    }

    /// Drops to `uid` (and gid `uid`, no supplementary groups) before acting.
    pub fn as_uid(self, uid: u32) -> Probe {
        self.arg("--uid").arg(uid.to_string())
    }

    /// `unshare -Cr` before acting.
    pub fn unshare_cgroup_user(self) -> Probe {
        self.arg("--unshare-cgroup-user")
    }

    async fn run(self, action: Vec<String>) -> ProbeResult {
        let mut attempts = 0;
        let out = loop {
            let spawned = tokio::process::Command::new(&self.exe)
                .args(&self.args)
                .args(&action)
                .kill_on_drop(true)
                .output()
                .await;
            match spawned {
                // A test that just wrote a copy of the probe (a renamed tool) can meet ETXTBSY: a child that another
                // test thread forks at that moment holds the copy's write descriptor until it execs. It passes.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => {
                    break other.unwrap_or_else(|e| panic!("spawn {}: {e}", self.exe.display()));
                }
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "probe printed no JSON ({e}): stdout {stdout:?} stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        ProbeResult(value)
    }

    /// Connects to `to`, sends `send`, reads for at most `read_ms`.
    pub fn tcp(
        self,
        to: SocketAddr,
        send: &[u8],
        read_ms: u64,
    ) -> impl Future<Output = ProbeResult> + Send + 'static {
        self.tcp_args(to, send, read_ms, &[])
    }

    /// [`Probe::tcp`] with extra `tcp` arguments (`--mapped`, `--chunk N --dribble-ms M`).
    pub fn tcp_args(
        self,
        to: SocketAddr,
        send: &[u8],
        read_ms: u64,
        extra: &[&str],
    ) -> impl Future<Output = ProbeResult> + Send + 'static {
        let mut action = vec![
            "tcp".to_owned(),
            "--to".into(),
            to.to_string(),
            "--send".into(),
            hex::encode(send),
            "--read-ms".into(),
            read_ms.to_string(),
        ];
        action.extend(extra.iter().map(|s| (*s).to_owned()));
        self.run(action)
    }

    /// Sends one datagram; `connect` calls `connect()` first (which runs the kernel's connect hooks).
    pub async fn udp(self, to: SocketAddr, send: &[u8], connect: bool) -> ProbeResult {
        let mut action = vec![
            "udp".to_owned(),
            "--to".into(),
            to.to_string(),
            "--send".into(),
            hex::encode(send),
        ];
        if connect {
            action.push("--connect".into());
        }
        self.run(action).await
    }

    pub async fn raw(self, to: SocketAddr, proto: i32, send: &[u8]) -> ProbeResult {
        self.run(vec![
            "raw".into(),
            "--to".into(),
            to.to_string(),
            "--proto".into(),
            proto.to_string(),
            "--send".into(),
            hex::encode(send),
        ])
        .await
    }

    /// `count` keep-alive connections, two requests on each (catalog G1).
    pub fn many(
        self,
        to: SocketAddr,
        send: &[u8],
        count: usize,
    ) -> impl Future<Output = ProbeResult> + Send + 'static {
        self.run(vec![
            "many".into(),
            "--to".into(),
            to.to_string(),
            "--send".into(),
            hex::encode(send),
            "--count".into(),
            count.to_string(),
        ])
    }

    /// `conns` keep-alive connections sending `send` for `secs` seconds (catalog G2).
    pub fn load(
        self,
        to: SocketAddr,
        send: &[u8],
        conns: usize,
        secs: u64,
    ) -> impl Future<Output = ProbeResult> + Send + 'static {
        self.run(vec![
            "load".into(),
            "--to".into(),
            to.to_string(),
            "--send".into(),
            hex::encode(send),
            "--conns".into(),
            conns.to_string(),
            "--secs".into(),
            secs.to_string(),
        ])
    }

    pub async fn read(self, path: &Path) -> ProbeResult {
        self.run(vec![
            "read".into(),
            "--path".into(),
            path.display().to_string(),
        ])
        .await
    }
}

impl ProbeResult {
    /// Whether the action itself succeeded (connected, sent, read).
    pub fn ok(&self) -> bool {
        self.0["ok"].as_bool() == Some(true)
    }

    /// The errno of a failed action (0 when it succeeded).
    pub fn errno(&self) -> i32 {
        self.0["errno"]
            .as_i64()
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or(0)
    }

    /// The raw bytes the peer sent (lossy UTF-8).
    pub fn response_text(&self) -> &str {
        self.0["response"].as_str().unwrap_or_default()
    }

    /// The first HTTP response the peer sent.
    pub fn response(&self) -> HttpResponse {
        HttpResponse::parse(self.response_text().as_bytes())
            .unwrap_or_else(|| panic!("no HTTP response in {:?}", self.0))
    }

    /// Whether the peer closed the connection (EOF or reset) within the read time.
    pub fn closed(&self) -> bool {
        self.0["closed"].as_bool() == Some(true)
    }

    pub fn field(&self, name: &str) -> &str {
        self.0[name].as_str().unwrap_or_default()
    }
}
