//! Harness for the proxy's integration tests: a full agent (key keeper, snapshot, status, the real proxy) in
//! this process against the real in-process `msp_host`, with the attribution seam fed by the test instead of
//! the kernel, and a recording stand-in for an "original destination" that shows the exact bytes it received.
//!
//! Every address is loopback: the host on 127.0.0.16 / 127.0.0.254, the recorder on 127.0.0.254, the proxy on
//! 127.0.0.1, all on ports the kernel picks.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpa::config::Config;
use gpa::identity::{IdentityError, StaleReason};
use gpa::keykeeper::{PolicyError, PolicySink};
use gpa::lifecycle::{Agent, Parts, RedirectorHandle};
use gpa::proxy::chunked::ChunkedDecoder;
use gpa::proxy::{Attribution, Attributor};
use gpa::snapshot::Snapshot;
use gpa::status::StatusHub;
use gpa::telemetry::EventSink;
use msp_core::Claims;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

// === attribution seam ===

/// Who the fake kernel says made a connection.
#[derive(Debug, Clone)]
pub enum Who {
    /// uid 0, `/usr/bin/curl`.
    Root,
    /// uid 1000 `alice`, `/usr/bin/python3`.
    User,
    /// A record exists but the process is gone (spec §6).
    Stale,
    /// No record: a direct connection.
    Direct,
}

pub fn claims(who: &Who, client: SocketAddr) -> Claims {
    let root = matches!(who, Who::Root);
    Claims {
        user_id: if root { 0 } else { 1000 },
        user_name: if root { "root" } else { "alice" }.into(),
        user_groups: [if root { "root" } else { "alice" }.to_owned()].into(),
        process_id: 4242,
        process_name: if root { "curl" } else { "python3" }.into(),
        process_full_path: if root {
            "/usr/bin/curl"
        } else {
            "/usr/bin/python3"
        }
        .into(),
        process_cmd_line: "client --token ***".into(),
        run_as_elevated: root,
        client_ip: client.ip().to_string(),
        client_port: client.port(),
    }
}

/// Attribution records registered by the test under the client's address, taken once like the kernel's.
#[derive(Default)]
pub struct FakeKernel {
    records: Mutex<HashMap<SocketAddr, (SocketAddr, Who)>>,
    pub taken: AtomicUsize,
}

impl Attributor for FakeKernel {
    fn attribute(&self, peer: SocketAddr) -> Attribution {
        let Some((dst, who)) = self.records.lock().unwrap().remove(&peer) else {
            return Attribution::Direct;
        };
        self.taken.fetch_add(1, Ordering::Relaxed);
        let identity = match who {
            Who::Stale => Err(IdentityError::Stale {
                pid: 4242,
                reason: StaleReason::Exited,
            }),
            Who::Direct => return Attribution::Direct,
            ref who => Ok(claims(who, peer)),
        };
        Attribution::Redirected {
            original_dst: dst,
            identity,
        }
    }
}

#[derive(Default)]
struct NoPolicy;

impl PolicySink for NoPolicy {
    fn set_policy(&self, _: &[SocketAddr]) -> Result<(), PolicyError> {
        Ok(())
    }
}

impl RedirectorHandle for NoPolicy {}

// === recording original destination ===

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The raw head, request line to empty line.
    pub head: Vec<u8>,
    /// The body, decoded when it came chunked.
    pub body: Vec<u8>,
    /// The raw body bytes as they came on the wire.
    pub raw_body: Vec<u8>,
}

impl Recorded {
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    /// Every field as (lowercase name, value), in received order.
    pub fn fields(&self) -> Vec<(String, String)> {
        let text = self.head_text();
        text.split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect()
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.fields()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These bytes, keeping the connection open.
    Bytes(Vec<u8>),
    /// These bytes, then close.
    BytesThenClose(Vec<u8>),
    /// Nothing, ever (the connection stays open).
    Silence,
    /// These bytes after this pause, keeping the connection open.
    Late(Duration, Vec<u8>),
}

/// A loopback HTTP/1.1 server that records every request byte for byte.
pub struct Recorder {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Connections whose other side closed, or that the recorder closed after its reply.
    pub ended: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub reply: Arc<Mutex<Reply>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const OK_REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

impl Recorder {
    pub async fn start(ip: &str) -> Recorder {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(Reply::Bytes(OK_REPLY.to_vec())));
        let (c, e, r, p) = (
            connections.clone(),
            ended.clone(),
            requests.clone(),
            reply.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (e, r, p) = (e.clone(), r.clone(), p.clone());
                tokio::spawn(async move {
                    serve_recorded(stream, r, p).await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Recorder {
            addr,
            connections,
            ended,
            requests,
            reply,
            task,
        }
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits up to the step timeout until `n` connections have ended; how many had then.
    pub async fn wait_ended(&self, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let ended = self.ended.load(Ordering::SeqCst);
            if ended >= n || tokio::time::Instant::now() >= deadline {
                return ended;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded().pop().expect("a recorded request")
    }
}

async fn serve_recorded(
    mut stream: TcpStream,
    requests: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<Reply>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
            return;
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let chunked = text.contains("\r\ntransfer-encoding: chunked");
        let (body, raw_body) = if chunked {
            let mut decoder = ChunkedDecoder::default();
            let (mut body, mut raw) = (Vec::new(), Vec::new());
            loop {
                while !buf.is_empty() && !decoder.is_done() {
                    let p = decoder.decode(&buf).unwrap();
                    body.extend_from_slice(&buf[p.data.clone()]);
                    raw.extend(buf.drain(..p.consumed));
                    if p.consumed == 0 {
                        break;
                    }
                }
                if decoder.is_done() {
                    break;
                }
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            (body, raw)
        } else {
            let n = length.unwrap_or(0);
            while buf.len() < n {
                if !read_more(&mut stream, &mut buf).await {
                    return;
                }
            }
            let body: Vec<u8> = buf.drain(..n).collect();
            (body.clone(), body)
        };
        requests.lock().unwrap().push(Recorded {
            head,
            body,
            raw_body,
        });
        let reply = reply.lock().unwrap().clone();
        match reply {
            Reply::Bytes(b) => {
                if stream.write_all(&b).await.is_err() {
                    return;
                }
            }
            Reply::BytesThenClose(b) => {
                let _ = stream.write_all(&b).await;
                return;
            }
            Reply::Silence => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Reply::Late(pause, b) => {
                tokio::time::sleep(pause).await;
                if stream.write_all(&b).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

async fn read_until_head_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

// === the agent under test ===

/// What a test varies.
pub struct Options {
    /// IMDS is the recorder (true) or the real host's IMDS (false).
    pub imds_recorder: bool,
    /// WireServer is unreachable (a closed port): the agent never becomes ready.
    pub wireserver_unreachable: bool,
    pub header_timeout: u64,
    pub idle_timeout: u64,
    pub upstream_response_timeout: u64,
    pub max_connections: u64,
    pub poll_interval: u64,
    pub busy_poll_us: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            imds_recorder: true,
            wireserver_unreachable: false,
            header_timeout: 10,
            idle_timeout: 60,
            upstream_response_timeout: 60,
            max_connections: 16_384,
            poll_interval: 1,
            busy_poll_us: Config::default().proxy_busy_poll_in_microseconds,
        }
    }
}

/// The agent with the real proxy, the real host and a recorder.
pub struct TestAgent {
    pub agent: Option<Agent>,
    pub cancel: CancellationToken,
    pub proxy: SocketAddr,
    pub hub: Arc<StatusHub>,
    pub kernel: Arc<FakeKernel>,
    pub host: msp_host::RunningHost,
    pub recorder: Recorder,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl TestAgent {
    pub async fn start(opts: Options) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let host = msp_host::Host::start(msp_host::HostConfig::test(dir.path().join("host")))
            .await
            .unwrap();
        let recorder = Recorder::start("127.0.0.254").await;
        let wireserver = if opts.wireserver_unreachable {
            let l = std::net::TcpListener::bind("127.0.0.16:0").unwrap();
            l.local_addr().unwrap() // closed when `l` drops: nothing listens there
        } else {
            host.wireserver
        };
        let config = Config {
            log_folder: dir.path().join("log"),
            event_folder: dir.path().join("log/events"),
            latch_key_folder: dir.path().join("state/keys"),
            poll_key_status_interval_in_seconds: opts.poll_interval,
            host_call_timeout_in_seconds: 2,
            wire_server_endpoint: wireserver,
            host_ga_plugin_endpoint: host.hostga,
            imds_endpoint: if opts.imds_recorder {
                recorder.addr
            } else {
                host.imds
            },
            proxy_listen_address: "127.0.0.1:0".parse().unwrap(),
            request_header_timeout_in_seconds: opts.header_timeout,
            idle_connection_timeout_in_seconds: opts.idle_timeout,
            upstream_response_timeout_in_seconds: opts.upstream_response_timeout,
            max_concurrent_connections: opts.max_connections,
            proxy_busy_poll_in_microseconds: opts.busy_poll_us,
            ..Config::default()
        };
        TestAgent::start_with(config, host, recorder, dir).await
    }

    pub async fn start_with(
        config: Config,
        host: msp_host::RunningHost,
        recorder: Recorder,
        dir: tempfile::TempDir,
    ) -> TestAgent {
        let kernel = Arc::new(FakeKernel::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let attributor: Arc<dyn Attributor> = kernel.clone();
        let parts = Parts {
            start_redirector: Box::new(|_| Ok(Arc::new(NoPolicy) as Arc<dyn RedirectorHandle>)),
            serve_proxy: Box::new(move |ctx| {
                let _ = tx.send((ctx.listener.local_addr().unwrap(), ctx.status.clone()));
                Box::pin(gpa::proxy::serve(ctx, attributor))
            }),
        };
        let cancel = CancellationToken::new();
        let agent = Agent::start(
            Arc::new(config.clone()),
            parts,
            EventSink::new(),
            cancel.clone(),
        )
        .await;
        let (proxy, hub) = rx.await.expect("the proxy started");
        TestAgent {
            agent: Some(agent),
            cancel,
            proxy,
            hub,
            kernel,
            host,
            recorder,
            config,
            dir,
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.agent.as_ref().unwrap().snapshots.borrow().clone()
    }

    /// Waits until a status poll succeeded and a key is latched.
    pub async fn ready(&self) -> Arc<Snapshot> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let snap = self.snapshot();
            if snap.ready && snap.key.is_some() {
                return snap;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent not ready with a key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the snapshot satisfies `f` (e.g. a mode change applied).
    pub async fn wait_snapshot(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !f(&self.snapshot()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the status document satisfies `f`. A request's summary entry is recorded once its response has
    /// been relayed, so it may trail the client by a moment.
    pub async fn wait_document(
        &self,
        what: &str,
        f: impl Fn(&msp_core::status::AggregateStatus) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + STEP;
        while !f(&self.hub.document()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client connection to the proxy that the fake kernel attributes to `who`, as if it had dialled `dst`.
    pub async fn connect(&self, dst: SocketAddr, who: Who) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = socket.local_addr().unwrap();
        if !matches!(who, Who::Direct) {
            self.kernel
                .records
                .lock()
                .unwrap()
                .insert(local, (dst, who));
        }
        socket.connect(self.proxy).await.unwrap()
    }

    /// Sends `request` on a fresh connection attributed to `who` for `dst` and reads one response.
    pub async fn send(&self, dst: SocketAddr, who: Who, request: &[u8]) -> Response {
        let mut stream = self.connect(dst, who).await;
        stream.write_all(request).await.unwrap();
        read_response(&mut stream).await
    }

    pub fn imds(&self) -> SocketAddr {
        self.config.imds_endpoint
    }

    pub fn wireserver(&self) -> SocketAddr {
        self.config.wire_server_endpoint
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
    }
}

// === client side ===

/// One response as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub raw: Vec<u8>,
    pub head: String,
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn reason(&self) -> Option<String> {
        self.header("x-msp-reason")
    }

    /// Status and reason code, e.g. `(403, "NOT_ELEVATED")`.
    pub fn refusal(&self) -> (u16, String) {
        (self.status, self.reason().unwrap_or_default())
    }
}

/// Reads one response: its head, then a body by `Content-Length`, chunked, or until close.
pub async fn read_response(stream: &mut TcpStream) -> Response {
    tokio::time::timeout(STEP, read_response_inner(stream))
        .await
        .expect("a response within the step timeout")
}

async fn read_response_inner(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let end = read_until_head_end(stream, &mut buf)
        .await
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head[9..12].parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let length = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let mut body: Vec<u8> = buf[end..].to_vec();
    if lower.contains("\r\ntransfer-encoding: chunked") {
        let mut decoder = ChunkedDecoder::default();
        let mut raw = body;
        body = Vec::new();
        loop {
            let p = decoder.decode(&raw).unwrap();
            body.extend_from_slice(&raw[p.data.clone()]);
            raw.drain(..p.consumed);
            if decoder.is_done() {
                break;
            }
            if p.consumed == 0 && !read_more(stream, &mut raw).await {
                break;
            }
        }
    } else if let Some(n) = length {
        while body.len() < n && read_more(stream, &mut body).await {}
    } else {
        while read_more(stream, &mut body).await {}
    }
    let mut raw = buf[..end].to_vec();
    raw.extend_from_slice(&body);
    Response {
        raw,
        head,
        status,
        body,
    }
}

/// Whether the peer closed the connection (EOF) within the step timeout.
pub async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(STEP, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A GET for `target` with `Host` and `Metadata: true`.
pub fn get(target: &str, host: SocketAddr) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nMetadata: true\r\n\r\n").into_bytes()
}
