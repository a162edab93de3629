//! The upstream side (spec §8.1, §8.2 steps 12–13, §3.6): one connection to the original destination per
//! downstream connection, and the relay of each response with its own framing plus the marker
//! `x-ms-azure-host-authorization: value`.
//!
//! The response head is parsed by `httparse`; the body is relayed byte for byte, delimited by its
//! `Content-Length`, by the chunked coding (tracked, not re-encoded) or by the upstream's close. An upstream
//! `101` is refused (502 `UPSTREAM_PROTOCOL`): nothing is ever tunnelled. Interim `1xx` responses are dropped;
//! the proxy answered `Expect: 100-continue` itself. This module must never pool a connection across
//! downstream connections, relay a response whose framing it cannot determine, or pass on an upstream's own
//! `x-ms-azure-host-authorization`.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use msp_core::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
#[cfg(not(target_os = "linux"))]
use tokio::time::timeout_at;

use super::busy_poll::{Asleep, Polled, Poller, Wait};
use super::chunked::ChunkedDecoder;
use super::head::{parse_decimal, trim_ows};
use super::limits::{
    BODY_READ, INITIAL_BUFFER, MAX_INTERIM_RESPONSES, MAX_RESPONSE_FIELDS, MAX_RESPONSE_HEAD_BYTES,
};
use super::timer::{Deadline, Timer, after};

/// The relay marker (spec §3.6).
pub(super) const MARKER: &[u8] = b"x-ms-azure-host-authorization: value\r\n";

/// An open connection to the original destination. Its read buffer belongs to the request being relayed
/// (`Buffers::ubuf`): an idle upstream connection holds only its socket.
#[derive(Debug)]
pub(super) struct Upstream {
    stream: TcpStream,
    /// Until the first send: the handshake may still be under way, and must be done by this instant.
    connecting: Option<Instant>,
}

impl Upstream {
    /// Starts connecting; the handshake must be done within `limit` (spec §8.4), which the first
    /// [`send`](Self::send) checks: 502 `UPSTREAM_CONNECT` otherwise.
    pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> Result<Upstream, Reason> {
        let deadline = after(Instant::now(), limit);
        #[cfg(target_os = "linux")]
        let stream = start_connect(addr).map_err(|_| Reason::UpstreamConnect)?;
        #[cfg(not(target_os = "linux"))]
        let stream = match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                stream
            }
            _ => return Err(Reason::UpstreamConnect),
        };
        Ok(Upstream {
            stream,
            connecting: Some(deadline),
        })
    }

    /// Whether the host has kept the connection open: no close and no stray bytes since the last response.
    pub(super) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends `bytes` (the exact request head and body), within `limit`. A connection whose handshake failed or
    /// did not finish within the connect limit is 502 `UPSTREAM_CONNECT`, and so is a connection the host closed
    /// or reset; any other failure is 503 `UPSTREAM_SEND` (spec §8.5).
    pub(super) async fn send(
        &mut self,
        bytes: &[u8],
        limit: Duration,
        timer: &mut Timer,
    ) -> Result<(), Reason> {
        let rest = match self.connecting.take() {
            Some(deadline) => self.first_send(bytes, deadline, timer).await?,
            None => bytes,
        };
        match timer.within_for(limit, self.stream.write_all(rest)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(send_error(&e)),
            None => Err(Reason::UpstreamSend),
        }
    }

    /// The first send on a new connection, without first waiting for the socket to report writable: to a host on
    /// the same machine or next to it, the handshake is done by the time `connect` returns, so the request goes
    /// out at once (two syscalls and one wake-up fewer). Returns what is left to send.
    async fn first_send<'a>(
        &self,
        bytes: &'a [u8],
        deadline: Instant,
        timer: &mut Timer,
    ) -> Result<&'a [u8], Reason> {
        use std::io::ErrorKind;
        match send_now(&self.stream, bytes) {
            Ok(n) => return Ok(bytes.get(n..).unwrap_or_default()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(connect_error(&e)),
        }
        // Still connecting: wait for the outcome, as a plain connect would.
        let writable = self.stream.writable();
        if !matches!(
            timer.within(&mut Deadline::At(deadline), writable).await,
            Some(Ok(()))
        ) {
            return Err(Reason::UpstreamConnect);
        }
        match self.stream.take_error() {
            Ok(None) => Ok(bytes),
            _ => Err(Reason::UpstreamConnect),
        }
    }
}

/// How a failed first send maps to a reason: the handshake's own failures are `UPSTREAM_CONNECT`.
fn connect_error(e: &std::io::Error) -> Reason {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NotConnected
        | ErrorKind::ConnectionAborted => Reason::UpstreamConnect,
        _ => send_error(e),
    }
}

/// How a failed send maps to a reason: the host closing or resetting the connection is `UPSTREAM_CONNECT`.
fn send_error(e: &std::io::Error) -> Reason {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            Reason::UpstreamConnect
        }
        _ => Reason::UpstreamSend,
    }
}

/// A non-blocking `connect` (`TCP_NODELAY` set first, when it can be), registered with the reactor; the
/// handshake may still be under way.
#[cfg(target_os = "linux")]
fn start_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, connect, setsockopt,
        socket, sockopt::TcpNoDelay,
    };
    use std::os::fd::AsRawFd;

    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Tcp,
    )?;
    let _ = setsockopt(&fd, TcpNoDelay, &true);
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    TcpStream::from_std(std::net::TcpStream::from(fd))
}

/// One `send` now, whatever the reactor last saw of the socket.
#[cfg(target_os = "linux")]
fn send_now(stream: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    Ok(send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL)?)
}

#[cfg(not(target_os = "linux"))]
fn send_now(_: &TcpStream, _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::ErrorKind::WouldBlock.into())
}

/// How the relay of one response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Relayed {
    pub(super) status: u16,
    /// `401` with `x-msp-reason: KEY_UNKNOWN` (spec §2.10).
    pub(super) key_unknown: bool,
    /// The upstream connection may carry the next request.
    pub(super) upstream_open: bool,
    /// The downstream connection may carry the next request.
    pub(super) client_open: bool,
}

/// Why a relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayError {
    /// Before any response byte reached the client: answer with this reason. `nothing_received` marks an
    /// upstream that closed without sending a byte (a reused connection the host had just closed).
    BeforeHead {
        reason: Reason,
        nothing_received: bool,
    },
    /// After the head of a response with this status was relayed: the client connection can only be closed.
    AfterHead(u16),
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the relay needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange {
    /// A `HEAD` request: the response has no body whatever its headers say.
    pub(super) head_request: bool,
    /// The client connection may stay open after this response (HTTP/1.1 without `Connection: close`).
    pub(super) client_keep_alive: bool,
    /// Upstream response timeout: for the whole head, from when the relay first waits for it (the request
    /// has been sent by then), and for every wait for body bytes (spec §8.4).
    pub(super) response_timeout: Duration,
    /// Bound on every write to the client.
    pub(super) write_timeout: Duration,
}

/// The connection's side of a relay: its client socket, its timer, and the buffer the response head is
/// rewritten into.
pub(super) struct Client<'a> {
    pub(super) stream: &'a mut TcpStream,
    pub(super) timer: &'a mut Timer,
    pub(super) out: &'a mut Vec<u8>,
    pub(super) poller: Poller<'a>,
}

/// Reads the response to the request just sent into `buf` and relays it to the client, head rewritten per
/// spec §3.6.
pub(super) async fn relay(
    up: &mut Upstream,
    buf: &mut BytesMut,
    client: Client<'_>,
    x: Exchange,
) -> Result<Relayed, RelayError> {
    let mut deadline = Deadline::After(x.response_timeout);
    let mut interim = 0;
    let mut received_any = false;
    let (head_len, status, body, key_unknown, upstream_keep) = loop {
        match parse_response(buf, x.head_request, client.out, x.client_keep_alive) {
            Parsed::Complete(r) if (100..200).contains(&r.status) => {
                // 101 was refused in parse_response; other 1xx are interim: drop and read on.
                interim += 1;
                if interim > MAX_INTERIM_RESPONSES {
                    return Err(protocol());
                }
                buf.advance(r.head_len);
                continue;
            }
            Parsed::Complete(r) => break (r.head_len, r.status, r.body, r.key_unknown, r.keep),
            Parsed::Invalid => return Err(protocol()),
            Parsed::Partial => {}
        }
        if buf.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(protocol());
        }
        buf.reserve(INITIAL_BUFFER);
        // Only the response's first bytes are polled for; the rest of its head comes under its deadline.
        let polled = if !received_any && buf.is_empty() {
            client.poller.read(Wait::Response, &up.stream, || &mut *buf)
        } else {
            Polled::Sleep(Asleep::default())
        };
        let read = match polled {
            Polled::Read(read) => Some(read),
            Polled::Sleep(asleep) => {
                let read = up.stream.read_buf(buf);
                let (wait, timer) = (Wait::Response, &mut *client.timer);
                client
                    .poller
                    .sleep(wait, asleep, timer, &mut deadline, read)
                    .await
            }
        };
        match read {
            None => {
                return Err(RelayError::BeforeHead {
                    reason: Reason::UpstreamTimeout,
                    nothing_received: false,
                });
            }
            Some(Ok(0) | Err(_)) => {
                return Err(RelayError::BeforeHead {
                    reason: Reason::UpstreamConnect,
                    nothing_received: !received_any && buf.is_empty(),
                });
            }
            Some(Ok(_)) => received_any = true,
        }
    };
    buf.advance(head_len);
    let client_open = x.client_keep_alive && body != Body::UntilClose;
    let upstream_open = relay_body(up, buf, client, body, x)
        .await
        .map_err(|()| RelayError::AfterHead(status))?;
    Ok(Relayed {
        status,
        key_unknown,
        upstream_open: upstream_keep && upstream_open,
        client_open,
    })
}

fn protocol() -> RelayError {
    RelayError::BeforeHead {
        reason: Reason::UpstreamProtocol,
        nothing_received: false,
    }
}

/// Relays the body after the head already in `out`; returns whether the upstream connection is clean.
async fn relay_body(
    up: &mut Upstream,
    buf: &mut BytesMut,
    client: Client<'_>,
    body: Body,
    x: Exchange,
) -> Result<bool, ()> {
    let Client {
        stream: client,
        timer,
        out,
        ..
    } = client;
    let mut remaining = match body {
        Body::Length(n) => n,
        _ => 0,
    };
    let mut chunked = ChunkedDecoder::default();
    let mut relayed = 0;
    loop {
        // Move what belongs to this response from the upstream buffer to the client.
        let (take, done) = match body {
            Body::None => (0, true),
            Body::Length(_) => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                remaining -= n as u64;
                (n, remaining == 0)
            }
            Body::Chunked => {
                let mut used = 0;
                while used < buf.len() && !chunked.is_done() {
                    let rest = buf.get(used..).unwrap_or_default();
                    let p = chunked.decode(rest).map_err(|_| ())?;
                    used += p.consumed;
                    if p.consumed == 0 {
                        break;
                    }
                }
                (used, chunked.is_done())
            }
            Body::UntilClose => (buf.len(), false),
        };
        // The head goes out with the body's first bytes; later body bytes go out straight from `buf`.
        let bytes = buf.get(..take).unwrap_or_default();
        if !out.is_empty() {
            out.extend_from_slice(bytes);
            let written = write_all(client, out, x.write_timeout, timer).await;
            out.clear();
            written?;
        } else if !bytes.is_empty() {
            write_all(client, bytes, x.write_timeout, timer).await?;
        }
        buf.advance(take);
        relayed += take;
        if done {
            // Stray bytes after a complete response: the connection is no longer in a known state.
            return Ok(buf.is_empty());
        }
        let room = match body {
            Body::Length(_) => usize::try_from(remaining).unwrap_or(usize::MAX),
            _ => relayed,
        };
        buf.reserve(room.clamp(INITIAL_BUFFER, BODY_READ));
        let read = up.stream.read_buf(buf);
        match timer.within_for(x.response_timeout, read).await {
            Some(Ok(0)) if body == Body::UntilClose => return Ok(false),
            Some(Ok(0) | Err(_)) | None => return Err(()),
            Some(Ok(_)) => {}
        }
    }
}

/// Writes all of `bytes` to the client within `limit`.
async fn write_all(
    client: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
    timer: &mut Timer,
) -> Result<(), ()> {
    match timer.within_for(limit, client.write_all(bytes)).await {
        Some(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

struct Response {
    head_len: usize,
    status: u16,
    body: Body,
    key_unknown: bool,
    keep: bool,
}

enum Parsed {
    Partial,
    Invalid,
    Complete(Response),
}

/// Parses a response head; for a final response also writes the rewritten head into `out` (spec §3.6): the
/// upstream's `x-ms-azure-host-authorization`, `Connection`, `Keep-Alive` and the fields `Connection` names
/// are dropped, the marker is added, and `Connection: close` when the client connection ends after it.
fn parse_response(buf: &[u8], head_request: bool, out: &mut Vec<u8>, client_keep: bool) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial; // the relay's first look, before its first read
    }
    // Left uninitialised: httparse writes only the fields it parses, instead of 128 empty ones per call first.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let head_len = match parser.parse_response_with_uninit_headers(&mut response, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(status), Some(minor)) = (response.code, response.version) else {
        return Parsed::Invalid;
    };
    if status == 101 || !(100..600).contains(&status) {
        return Parsed::Invalid;
    }
    if (100..200).contains(&status) {
        return Parsed::Complete(Response {
            head_len,
            status,
            body: Body::None,
            key_unknown: false,
            keep: true,
        });
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut close = minor == 0;
    let mut key_unknown = false;
    let mut connection_names: Vec<&[u8]> = Vec::new();
    for f in response.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_decimal(trim_ows(f.value)) else {
                return Parsed::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return Parsed::Invalid;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = Some(f.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in f.value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    close = false;
                } else if !token.is_empty() {
                    connection_names.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-msp-reason") {
            key_unknown =
                status == 401 && trim_ows(f.value) == Reason::KeyUnknown.code().as_bytes();
        }
    }
    let body = if head_request || status == 204 || status == 304 {
        Body::None
    } else if let Some(te) = transfer_encoding {
        let last = te.rsplit(|&b| b == b',').next().map(trim_ows);
        if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
            Body::Chunked
        } else {
            Body::UntilClose
        }
    } else {
        match length {
            Some(n) => Body::Length(n),
            None => Body::UntilClose,
        }
    };
    let client_open = client_keep && body != Body::UntilClose;

    out.clear();
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    // Three digits: `status` is in 100..600 (checked above).
    for digit in [status / 100, status / 10 % 10, status % 10] {
        out.push(b'0' + u8::try_from(digit).unwrap_or(0));
    }
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in response.headers.iter() {
        let name = f.name.as_bytes();
        let framing = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        let dropped = name.eq_ignore_ascii_case(msp_core::sign::AUTHORIZATION_HEADER.as_bytes())
            || name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"keep-alive")
            || (!framing
                && connection_names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name)));
        if dropped {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(MARKER);
    if !client_open {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Complete(Response {
        head_len,
        status,
        body,
        key_unknown,
        keep: !close && body != Body::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(raw: &[u8], keep: bool) -> (String, Response) {
        let mut out = Vec::new();
        match parse_response(raw, false, &mut out, keep) {
            Parsed::Complete(r) => (String::from_utf8(out).unwrap(), r),
            _ => panic!("not complete"),
        }
    }

    #[test]
    fn conf_036_marker_replaces_the_upstreams_own() {
        let (head, r) = rewrite(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Ms-Azure-Host-Authorization: forged\r\n\
              Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nok",
            true,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-ms-azure-host-authorization: value\r\n\r\n"
        );
        assert_eq!((r.status, r.body, r.keep), (200, Body::Length(2), true));
    }

    #[test]
    fn status_line_is_relayed_as_received() {
        for status in [200u16, 204, 301, 404, 418, 503, 599] {
            let raw = format!("HTTP/1.1 {status} Some Reason\r\nContent-Length: 0\r\n\r\n");
            let (head, r) = rewrite(raw.as_bytes(), true);
            assert_eq!(r.status, status);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} Some Reason\r\n")),
                "{head}"
            );
        }
        let (head, _) = rewrite(b"HTTP/1.0 500 \r\nContent-Length: 0\r\n\r\n", true);
        assert!(head.starts_with("HTTP/1.0 500 \r\n"), "{head}");
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let (head, r) = rewrite(b"HTTP/1.1 200 OK\r\n\r\n", true);
        assert_eq!(r.body, Body::UntilClose);
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        let (_, r) = rewrite(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            true,
        );
        assert_eq!(r.body, Body::Chunked);
        let (_, r) = rewrite(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            true,
        );
        assert_eq!(r.body, Body::None);
        let (_, r) = rewrite(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", true);
        assert!(!r.keep, "HTTP/1.0 closes unless it says keep-alive");
        let (_, r) = rewrite(
            b"HTTP/1.1 401 Unauthorized\r\nx-msp-reason: KEY_UNKNOWN\r\nContent-Length: 0\r\n\r\n",
            true,
        );
        assert!(r.key_unknown);
        let mut out = Vec::new();
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                &mut out,
                true
            ),
            Parsed::Invalid
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                &mut out,
                true
            ),
            Parsed::Invalid
        ));
    }
}

/// The upstream connection's first send, which does not wait for the handshake to report done (real sockets).
#[cfg(all(test, target_os = "linux"))]
mod connect_tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// Polls `fut` once, with no reactor turn in between: `Ready` only if it never had to wait.
    fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
        pin!(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// The largest send and receive buffers a loopback TCP connection may grow to (`tcp_wmem`, `tcp_rmem`).
    fn socket_buffers_max() -> usize {
        let max = |name: &str| -> usize {
            let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap();
            text.split_whitespace().last().unwrap().parse().unwrap()
        };
        max("tcp_wmem") + max("tcp_rmem")
    }

    #[tokio::test]
    async fn a_fresh_connection_sends_at_once_without_waiting_for_the_reactor() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let Poll::Ready(Ok(mut up)) = poll_once(Upstream::connect(addr, LIMIT)) else {
            panic!("connect waited");
        };
        assert!(up.connecting.is_some());
        // The handshake is done once the listener has the connection (without a reactor turn here); a version
        // that waited for the reactor to report the socket writable would still be `Pending` below.
        let (mut s, _) = listener.accept().unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            poll_once(up.send(request, LIMIT, &mut Timer::new(Instant::now()))),
            Poll::Ready(Ok(()))
        ));
        assert!(up.stream.nodelay().unwrap());
        drop(up);
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, request);
    }

    #[tokio::test]
    async fn the_request_arrives_whole_when_the_first_send_takes_only_part_of_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // More than the connection's send and receive buffers can ever hold together: the first `send` cannot
        // take it all, the rest waits for the reader.
        let size = socket_buffers_max() + (1 << 20);
        let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let mut up = Upstream::connect(addr, LIMIT).await.unwrap();
        up.send(&request, LIMIT, &mut Timer::new(Instant::now()))
            .await
            .unwrap();
        drop(up);
        assert!(
            reader.join().unwrap() == request,
            "the upstream got other bytes"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_upstream_connect() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let result = match Upstream::connect(closed, LIMIT).await {
            Ok(mut up) => {
                let mut timer = Timer::new(Instant::now());
                up.send(b"GET / HTTP/1.1\r\n\r\n", LIMIT, &mut timer).await
            }
            Err(reason) => Err(reason),
        };
        assert_eq!(result, Err(Reason::UpstreamConnect));
    }

    /// A listener whose accept queue is full drops new SYNs, so the handshake stays under way: the first send
    /// finds the socket still connecting and waits, for the connect limit at most.
    fn full_listener() -> (backlog_0::Listener, std::net::TcpStream) {
        let listener = backlog_0::Listener::new();
        // The one connection a backlog of 0 admits fills the queue.
        let filler = std::net::TcpStream::connect(listener.addr).unwrap();
        (listener, filler)
    }

    #[tokio::test]
    async fn a_handshake_that_does_not_finish_within_the_connect_limit_is_upstream_connect() {
        let (listener, _filler) = full_listener();
        let started = std::time::Instant::now();
        let mut up = Upstream::connect(listener.addr, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(
            up.send(
                b"GET / HTTP/1.1\r\n\r\n",
                LIMIT,
                &mut Timer::new(Instant::now())
            )
            .await,
            Err(Reason::UpstreamConnect)
        );
        // Ended by the 300 ms connect limit, not the 60 s send limit.
        assert!(started.elapsed() < LIMIT / 2, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_handshake_that_finishes_late_still_carries_the_request() {
        let (listener, filler) = full_listener();
        let mut up = Upstream::connect(listener.addr, LIMIT).await.unwrap();
        let fd = listener.fd.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            // Make room once the agent's SYN has been dropped; the kernel's retransmission (1 s) then gets in.
            std::thread::sleep(Duration::from_millis(200));
            let queued = TcpListener::from(fd);
            let (first, _) = queued.accept().unwrap();
            drop((first, filler));
            let (mut s, _) = queued.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        up.send(
            b"GET /late HTTP/1.1\r\n\r\n",
            LIMIT,
            &mut Timer::new(Instant::now()),
        )
        .await
        .unwrap();
        drop(up);
        assert_eq!(reader.join().unwrap(), b"GET /late HTTP/1.1\r\n\r\n");
        drop(listener);
    }

    /// A listening socket with a backlog of 0, which `std` cannot make.
    mod backlog_0 {
        use std::net::SocketAddr;
        use std::os::fd::{AsRawFd, OwnedFd};

        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen,
            socket,
        };

        pub(super) struct Listener {
            pub(super) fd: OwnedFd,
            pub(super) addr: SocketAddr,
        }

        impl Listener {
            pub(super) fn new() -> Listener {
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .unwrap();
                bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
                listen(&fd, Backlog::new(0).unwrap()).unwrap();
                let bound: SockaddrIn = getsockname(fd.as_raw_fd()).unwrap();
                let addr = SocketAddr::from((bound.ip(), bound.port()));
                Listener { fd, addr }
            }
        }
    }
}
