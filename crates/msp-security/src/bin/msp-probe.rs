//! `msp-probe`: the attacker's process in the catalog tests. It first puts itself where the test says (a child
//! cgroup, a network namespace the test created, new cgroup and user namespaces, another uid), then does one
//! thing: a TCP exchange with raw bytes, a UDP datagram, a raw IP packet, or a file read. It prints one JSON line
//! with what happened and exits. Setup is single-threaded on purpose (`unshare(CLONE_NEWUSER)` requires it);
//! only the `load` action starts threads, after it.
//!
//! It must never dial anything but the address the test gave it, and the tests only give loopback addresses or
//! addresses inside a network namespace they created.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

/// Longest response kept, in bytes; a test never needs more (catalog responses are heads and short bodies).
const MAX_RESPONSE: usize = 256 * 1024;
/// Longest a probe waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
struct Args {
    /// Join this cgroup (write our pid to its `cgroup.procs`) before anything else.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Enter the network namespace `/run/netns/<name>` (one the test created).
    #[arg(long)]
    netns: Option<String>,
    /// `unshare -Cr`: new cgroup and user namespaces (as an unprivileged container would).
    #[arg(long)]
    unshare_cgroup_user: bool,
    /// Ignored: text a test wants on the probe's command line (a secret, control characters).
    #[arg(long)]
    note: Option<String>,
    /// Drop to this uid and gid (and no supplementary groups) after joining, before any unshare.
    #[arg(long)]
    uid: Option<u32>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Connects, sends `send` (hex), optionally shuts down the write side, and reads until EOF or `read_ms`.
    Tcp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "")]
        send: String,
        /// Use an `AF_INET6` socket and connect to the IPv4-mapped form of `to`.
        #[arg(long)]
        mapped: bool,
        /// Read for at most this long.
        #[arg(long, default_value_t = 5000)]
        read_ms: u64,
        /// Send in chunks of this many bytes, `dribble_ms` apart (slowloris).
        #[arg(long)]
        chunk: Option<usize>,
        #[arg(long, default_value_t = 0)]
        dribble_ms: u64,
        /// Send the head (through the first empty line) at once, then the rest one byte every N ms.
        #[arg(long)]
        head_then_dribble_ms: Option<u64>,
    },
    /// Sends one UDP datagram (`send`, hex) to `to`; with `connect`, `connect()`s the socket first.
    Udp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "")]
        send: String,
        #[arg(long)]
        connect: bool,
    },
    /// Sends one raw IP packet (protocol `proto`, payload `send` in hex) to `to`'s address.
    Raw {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 6)]
        proto: i32,
        #[arg(long, default_value = "")]
        send: String,
    },
    /// Opens `count` keep-alive connections, sends `send` (one request, hex) on each and reads one response,
    /// keeps them all open, then does it once more on every connection (catalog G1).
    Many {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        send: String,
        #[arg(long)]
        count: usize,
    },
    /// `conns` threads send `send` (hex) over keep-alive connections for `secs` seconds and count the answers
    /// by status (catalog G2).
    Load {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        send: String,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        secs: u64,
    },
    /// Reads a file.
    Read {
        #[arg(long)]
        path: PathBuf,
    },
}

fn main() {
    let args = Args::parse();
    let out = match run(args) {
        Ok(v) => v,
        Err(e) => error_json("setup", &e),
    };
    println!("{out}");
}

fn error_json(stage: &str, e: &std::io::Error) -> serde_json::Value {
    json!({"ok": false, "stage": stage, "kind": format!("{:?}", e.kind()), "errno": e.raw_os_error().unwrap_or(0), "error": e.to_string()})
}

fn run(args: Args) -> std::io::Result<serde_json::Value> {
    if let Some(cgroup) = &args.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), b"0")?;
    }
    if let Some(name) = &args.netns {
        let ns = std::fs::File::open(PathBuf::from("/run/netns").join(name))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    }
    if let Some(uid) = args.uid {
        let (u, g) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(uid),
        );
        nix::unistd::setgroups(&[])?;
        nix::unistd::setresgid(g, g, g)?;
        nix::unistd::setresuid(u, u, u)?;
        // A uid change makes the process non-dumpable, which leaves its `/proc/self` files root's; an
        // unprivileged `unshare -r` must write its own uid_map.
        nix::sys::prctl::set_dumpable(true)?;
    }
    if args.unshare_cgroup_user {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        nix::sched::unshare(
            nix::sched::CloneFlags::CLONE_NEWCGROUP | nix::sched::CloneFlags::CLONE_NEWUSER,
        )?;
        // Map ourselves to root inside, like `unshare -r`.
        std::fs::write("/proc/self/setgroups", b"deny")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    }
    let cgroupns = std::fs::read_link("/proc/self/ns/cgroup")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut v = match args.action {
        Action::Tcp {
            to,
            send,
            mapped,
            read_ms,
            chunk,
            dribble_ms,
            head_then_dribble_ms,
        } => {
            let send = decode(&send)?;
            let pacing = match head_then_dribble_ms {
                Some(ms) => Pacing::HeadThenBytes(Duration::from_millis(ms)),
                None => Pacing::Chunks(
                    chunk.unwrap_or(send.len()),
                    Duration::from_millis(dribble_ms),
                ),
            };
            tcp(to, &send, mapped, Duration::from_millis(read_ms), pacing)
        }
        Action::Udp { to, send, connect } => udp(to, &decode(&send)?, connect),
        Action::Raw { to, proto, send } => raw(to, proto, &decode(&send)?),
        Action::Many { to, send, count } => many(to, &decode(&send)?, count),
        Action::Load {
            to,
            send,
            conns,
            secs,
        } => load(to, &decode(&send)?, conns, Duration::from_secs(secs)),
        Action::Read { path } => match std::fs::read(&path) {
            Ok(bytes) => json!({"ok": true, "len": bytes.len()}),
            Err(e) => error_json("read", &e),
        },
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("pid".into(), json!(std::process::id()));
        obj.insert("cgroupns".into(), json!(cgroupns));
    }
    Ok(v)
}

fn decode(hex_text: &str) -> std::io::Result<Vec<u8>> {
    hex::decode(hex_text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn connect(to: SocketAddr, mapped: bool) -> std::io::Result<TcpStream> {
    if !mapped {
        return TcpStream::connect_timeout(&to, CONNECT_TIMEOUT);
    }
    let SocketAddr::V4(v4) = to else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--mapped needs an IPv4 address",
        ));
    };
    let target = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
    // std's IPv6 sockets are dual-stack by default (IPV6_V6ONLY off), so this is the mapped connect of spec §7.1.
    TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
}

/// How a probe paces what it sends.
enum Pacing {
    /// Pieces of this size, this far apart.
    Chunks(usize, Duration),
    /// The head at once, then one byte at a time, this far apart.
    HeadThenBytes(Duration),
}

impl Pacing {
    fn pieces<'a>(&self, send: &'a [u8]) -> (Vec<&'a [u8]>, Duration) {
        match *self {
            Pacing::Chunks(size, gap) => (send.chunks(size.max(1)).collect(), gap),
            Pacing::HeadThenBytes(gap) => {
                let head = send
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(send.len(), |i| i + 4);
                let (first, rest) = send.split_at(head);
                (std::iter::once(first).chain(rest.chunks(1)).collect(), gap)
            }
        }
    }
}

fn tcp(
    to: SocketAddr,
    send: &[u8],
    mapped: bool,
    read_for: Duration,
    pacing: Pacing,
) -> serde_json::Value {
    let mut stream = match connect(to, mapped) {
        Ok(s) => s,
        Err(e) => return error_json("connect", &e),
    };
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut write_error = None;
    let (pieces, gap) = pacing.pieces(send);
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            std::thread::sleep(gap);
        }
        if let Err(e) = stream.write_all(piece) {
            write_error = Some(e.to_string());
            break;
        }
    }
    let (response, closed, read_error) = read_response(&mut stream, read_for);
    json!({
        "ok": true,
        "local": local,
        "peer": peer,
        "response": String::from_utf8_lossy(&response),
        "closed": closed,
        "write_error": write_error,
        "read_error": read_error,
    })
}

/// Reads until EOF, an error, or `read_for`; says whether the peer closed.
fn read_response(stream: &mut TcpStream, read_for: Duration) -> (Vec<u8>, bool, Option<String>) {
    let deadline = Instant::now() + read_for;
    let mut buf = Vec::new();
    let mut piece = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (buf, false, None);
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return (buf, false, Some(e.to_string()));
        }
        match stream.read(&mut piece) {
            Ok(0) => return (buf, true, None),
            Ok(n) => {
                buf.extend_from_slice(piece.get(..n).unwrap_or_default());
                if buf.len() > MAX_RESPONSE {
                    return (buf, false, None);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (buf, false, None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (buf, true, Some(e.to_string()));
            }
            Err(e) => return (buf, false, Some(e.to_string())),
        }
    }
}

fn udp(to: SocketAddr, send: &[u8], connect: bool) -> serde_json::Value {
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let result = UdpSocket::bind(bind).and_then(|s| {
        let n = if connect {
            s.connect(to)?;
            s.send(send)?
        } else {
            s.send_to(send, to)?
        };
        Ok((s, n))
    });
    match result {
        Ok((s, n)) => {
            json!({"ok": true, "sent": n, "local": s.local_addr().map(|a| a.to_string()).unwrap_or_default()})
        }
        Err(e) => error_json("send", &e),
    }
}

fn raw(to: SocketAddr, proto: i32, send: &[u8]) -> serde_json::Value {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, sendto};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = to else {
        return json!({"ok": false, "stage": "setup", "error": "raw needs IPv4"});
    };
    let protocol = match proto {
        libc::IPPROTO_TCP => nix::sys::socket::SockProtocol::Tcp,
        _ => nix::sys::socket::SockProtocol::Udp,
    };
    let fd = match nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        Some(protocol),
    ) {
        Ok(fd) => fd,
        Err(e) => return error_json("socket", &e.into()),
    };
    match sendto(
        fd.as_raw_fd(),
        send,
        &SockaddrIn::from(v4),
        MsgFlags::empty(),
    ) {
        Ok(n) => json!({"ok": true, "sent": n}),
        Err(e) => error_json("send", &e.into()),
    }
}

/// Most bytes of a response head or body `exchange` accepts (the catalog's responses are small).
const MAX_EXCHANGE: usize = 1024 * 1024;

/// Sends one request and reads one `Content-Length`-framed response; returns its status.
fn exchange(stream: &mut TcpStream, send: &[u8]) -> std::io::Result<u16> {
    stream.write_all(send)?;
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut piece)?;
        if n == 0 || buf.len() > MAX_EXCHANGE {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(piece.get(..n).unwrap_or_default());
    };
    let head =
        String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length.min(MAX_EXCHANGE) {
        let n = stream.read(&mut piece)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(status)
}

fn many(to: SocketAddr, send: &[u8], count: usize) -> serde_json::Value {
    let mut streams = Vec::with_capacity(count);
    let (mut first_ok, mut second_ok, mut failed) = (0usize, 0usize, Vec::new());
    for _ in 0..count {
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                match exchange(&mut s, send) {
                    Ok(200) => first_ok += 1,
                    Ok(other) => failed.push(format!("status {other}")),
                    Err(e) => failed.push(e.to_string()),
                }
                streams.push(s);
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    for s in &mut streams {
        match exchange(s, send) {
            Ok(200) => second_ok += 1,
            Ok(other) => failed.push(format!("second: status {other}")),
            Err(e) => failed.push(format!("second: {e}")),
        }
    }
    failed.truncate(10);
    json!({"ok": true, "open": streams.len(), "first_ok": first_ok, "second_ok": second_ok, "failed": failed})
}

fn load(to: SocketAddr, send: &[u8], conns: usize, secs: Duration) -> serde_json::Value {
    let deadline = Instant::now() + secs;
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let send = send.to_vec();
            std::thread::spawn(move || {
                let mut counts = std::collections::BTreeMap::<String, u64>::new();
                let mut stream: Option<TcpStream> = None;
                while Instant::now() < deadline {
                    let s = match stream.as_mut() {
                        Some(s) => s,
                        None => match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
                            Ok(s) => {
                                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                stream.insert(s)
                            }
                            Err(e) => {
                                *counts
                                    .entry(format!("connect: {:?}", e.kind()))
                                    .or_default() += 1;
                                continue;
                            }
                        },
                    };
                    match exchange(s, &send) {
                        Ok(status) => *counts.entry(status.to_string()).or_default() += 1,
                        Err(e) => {
                            *counts.entry(format!("io: {:?}", e.kind())).or_default() += 1;
                            stream = None;
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::<String, u64>::new();
    for w in workers {
        if let Ok(counts) = w.join() {
            for (k, v) in counts {
                *total.entry(k).or_default() += v;
            }
        }
    }
    json!({"ok": true, "counts": total})
}
