//! One downstream connection (spec §8.1, §8.4): attribution at accept, then requests one after another, each
//! through the steps of spec §8.2, until the client closes, a timeout fires, or the proxy answers itself.
//!
//! The connection's state lives in one box made at accept, so its task holds a pointer and the wait for the next
//! head; the request buffers come from a per-thread pool for each request and go back when its response is done
//! (`buffers`); the connection's claims are built once (spec §6). Every request is counted, recorded in the
//! summaries and logged once at debug level, on the `gpa::connection` target, without query strings, claims
//! values or key material. This module must never read `/proc` per request, hold a lock across `.await`, or keep
//! a connection open after a response the proxy generated itself.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use msp_core::canon::Destination;
use msp_core::{Claims, Reason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::buffers::OnDemand;
use super::busy_poll::{Asleep, Polled, Poller, Wait};
use super::decide::{Caller, Verdict, decide};
use super::forward::Outcome;
use super::head::{self, HeadError, Version};
use super::lanes::Seat;
use super::limits::{INITIAL_BUFFER, LINGER_BYTES, LINGER_TIMEOUT};
use super::relay::Upstream;
use super::response;
use super::stop::Watch;
use super::timer::{Deadline, Timer, after};
use super::{Attribution, Lookup, Shared};
use crate::clock;
use crate::logfile::CONNECTION_TARGET;
use crate::status::{Counter, RequestRecord, SummaryKind};

/// The status recorded in the summaries for a request whose client went away before any response (nginx's
/// "client closed request"); nothing is sent.
const CLIENT_GONE: u16 = 499;

/// The state of one downstream connection.
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) client: TcpStream,
    /// The client's address as accepted.
    peer: SocketAddr,
    pub(super) local: SocketAddr,
    /// When the connection was accepted, until its first head is read (that head's deadline runs from here).
    accepted_at: Option<Instant>,
    pub(super) caller: Caller,
    /// The request's buffers and head: taken when bytes arrive, given back when the response is done.
    pub(super) b: OnDemand,
    pub(super) upstream: Option<Upstream>,
    /// The summary counter of this connection's last recorded (kind, status), for repeats (spec §8.6).
    summary: Option<(SummaryKind, u16, Counter)>,
    /// A write to the client failed: nobody is reading any more.
    client_gone: bool,
    /// The one timer of every wait of this connection.
    pub(super) timer: Timer,
    stop: Watch,
    /// The connection's place under the cap (spec §8.4) and on its lane: given back when the connection ends. In
    /// this order: the permit is back before the seat tells the accepting lane it is idle, and a connection it
    /// then polls for is not refused for the place that just ended.
    pub(super) places: (OwnedSemaphorePermit, Seat),
}

/// What the accept loop knows about a connection it hands over.
pub(super) struct Accepted {
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// The address the client connected to (the listener's).
    pub(super) local: SocketAddr,
    pub(super) at: Instant,
}

/// How waiting for a request head ended.
enum HeadRead {
    /// A complete head of this many bytes is at the start of `rbuf`.
    Ready(usize),
    /// Refuse with this error, then close.
    Refuse(HeadError),
    /// The head did not complete in time after bytes arrived: 408.
    TimedOut,
    /// Close without answering: the client closed, went idle, or the agent is stopping.
    Close,
}

impl Conn {
    /// A connection just accepted, on the heap at once: its task then holds the box, never a second copy of
    /// the state. It is unattributed (a direct caller) until [`serve`] has looked up its record.
    pub(super) fn accepted(
        shared: Arc<Shared>,
        client: TcpStream,
        accepted: Accepted,
        places: (OwnedSemaphorePermit, Seat),
    ) -> Box<Conn> {
        let Accepted { peer, local, at } = accepted;
        let caller = caller(Attribution::Direct, peer, local, &shared);
        let timer = Timer::new(after(at, shared.timeouts.head));
        let stop = Watch::new(shared.stop.clone());
        Box::new(Conn {
            shared,
            client,
            peer,
            local,
            accepted_at: Some(at),
            caller,
            b: OnDemand::default(),
            upstream: None,
            summary: None,
            client_gone: false,
            timer,
            stop,
            places,
        })
    }

    /// Attribution at accept: takes the record and builds the claims once (spec §7.3, §6).
    async fn attribute(&mut self) {
        // What may block (/proc, NSS) runs off the reactor. Only its handle is held across the wait, which the
        // largest state of a connection's task is sized by.
        let blocking = match self.shared.attributor.clone().lookup(self.peer) {
            Lookup::Done(attribution) => return self.attributed(attribution),
            Lookup::Blocking(work) => self.shared.blocking.spawn_blocking(work),
        };
        self.attributed(blocking.await.unwrap_or(Attribution::Direct));
    }

    fn attributed(&mut self, attribution: Attribution) {
        // A connection reset before it was accepted gave up its client's address, which a new client may hold by
        // now with a pending record of its own (spec §7.3): a record taken for it is dropped, the connection is
        // unattributed (421), and the new client, whose record it was, fails closed too.
        match attribution {
            // Unattributed, as built at accept.
            Attribution::Direct => {}
            Attribution::Redirected { .. } if self.client.peer_addr().is_err() => {}
            attribution => self.caller = caller(attribution, self.peer, self.local, &self.shared),
        }
    }

    /// The connection's span for its log lines (debug, like the request lines).
    fn span(&self) -> tracing::Span {
        let peer = self.peer;
        let claims = &self.caller.claims;
        // Debug, like the request lines: made only when debug logging is on (`serve`).
        tracing::debug_span!(
            "conn",
            %peer,
            pid = claims.process_id,
            uid = claims.user_id,
            exe = %claims.process_full_path,
            dst = %self.caller.destination,
        )
    }
}

/// Serves one accepted connection to its end.
pub(super) async fn serve(mut conn: Box<Conn>) {
    conn.attribute().await;
    // The same target and level as the span's: at the default level there is none.
    if tracing::enabled!(tracing::Level::DEBUG) {
        // On the heap with the connection's future: the span is not held by the task of every connection.
        let span = conn.span();
        Box::pin(conn.run().instrument(span)).await;
    } else {
        conn.run().await;
    }
}

fn caller(
    attribution: Attribution,
    peer: SocketAddr,
    local: SocketAddr,
    shared: &Shared,
) -> Caller {
    let empty = || Claims::empty(peer.ip().to_string(), peer.port());
    match attribution {
        Attribution::Direct => Caller {
            original_dst: None,
            destination: Destination::Unknown(local.to_string()),
            dest_is_listener: true,
            claims: empty(),
            stale: None,
        },
        Attribution::Redirected {
            original_dst,
            identity,
        } => {
            let destination = Destination::of_addr(original_dst, &shared.endpoints);
            let dest_is_listener = original_dst == local || original_dst == shared.listen;
            let (claims, stale) = match identity {
                Ok(claims) => (claims, None),
                Err(e) => (empty(), Some(e.to_string())),
            };
            Caller {
                original_dst: Some(original_dst),
                destination,
                dest_is_listener,
                claims,
                stale,
            }
        }
    }
}

impl Conn {
    async fn run(mut self: Box<Self>) {
        loop {
            let head_len = match self.read_head().await {
                HeadRead::Ready(n) => n,
                HeadRead::Refuse(e) => return Box::pin(self.refuse_unparsed(e.reason())).await,
                HeadRead::TimedOut => {
                    return Box::pin(self.refuse_unparsed(Reason::HeaderTimeout)).await;
                }
                HeadRead::Close => return,
            };
            let b = &mut *self.b;
            b.head_buf.clear();
            b.head_buf
                .extend_from_slice(b.rbuf.get(..head_len).unwrap_or_default());
            b.rbuf.advance(head_len);
            if let Err(e) = head::parse_into(&b.head_buf, &mut b.head) {
                return Box::pin(self.refuse_unparsed(e.reason())).await;
            }
            // Boxed, like the closing paths: the request's futures (forward, relay, local answers) live on the
            // heap only while a request is in flight, so an idle connection's task holds just the head wait.
            if !Box::pin(self.request()).await || self.stop.is_stopped() {
                return Box::pin(self.close()).await;
            }
            // The response is done: the buffers go back to the pool until the next request's bytes arrive.
            self.b.release();
        }
    }

    /// Waits for a complete head (spec §8.4): from the accept for the first request, from its first byte for
    /// later ones, after at most the idle timeout of silence. A stop of the proxy closes a connection waiting here.
    async fn read_head(&mut self) -> HeadRead {
        // The connection's first request: the lane's reactor has just run (it accepted the connection).
        let first = self.accepted_at.is_some();
        // The wait's one deadline (an idle connection's task holds it): the head's, or until a later request's
        // first byte, the idle timeout's.
        let (mut deadline, mut head) = match self.accepted_at.take() {
            Some(at) => (Deadline::At(after(at, self.shared.timeouts.head)), true),
            None => (Deadline::After(self.shared.timeouts.idle), false),
        };
        let mut scanned = 0;
        loop {
            if !self.b.rbuf.is_empty() {
                if let Some(end) = head::find_end(&self.b.rbuf, scanned) {
                    return HeadRead::Ready(end);
                }
                scanned = self.b.rbuf.len();
                if let Err(e) = head::check_partial(&self.b.rbuf) {
                    return HeadRead::Refuse(e);
                }
                if !head {
                    // Counted from the first byte, which has just arrived.
                    head = true;
                    deadline = Deadline::After(self.shared.timeouts.head);
                }
            }
            if self.stop.is_stopped() {
                return HeadRead::Close;
            }
            let poller = Poller::new(&self.shared.polling, &self.places.1);
            // Only a head's first bytes are polled for; the rest comes under the head's deadline.
            let polled = if self.b.rbuf.is_empty() {
                if !first && poller.polls(Wait::Request) {
                    // What a sleep would do first: the lane's reactor and its other tasks run (the accept loop on
                    // lane 0, a close the host sent). The client is still reading the last response meanwhile.
                    tokio::task::yield_now().await;
                }
                poller.read(Wait::Request, &self.client, || {
                    make_room(&mut self.b.rbuf);
                    &mut self.b.rbuf
                })
            } else {
                Polled::Sleep(Asleep::default())
            };
            let read = match polled {
                Polled::Read(_) if self.stop.is_stopped() => return HeadRead::Close,
                Polled::Read(read) => Some(read),
                Polled::Sleep(asleep) => {
                    if self.b.rbuf.is_empty() {
                        // A poll that found nothing gives its box back: an idle connection holds none.
                        self.b.release();
                    }
                    poller
                        .sleep(
                            Wait::Request,
                            asleep,
                            &mut self.timer,
                            &mut deadline,
                            read_some(&mut self.client, &mut self.b, &mut self.stop),
                        )
                        .await
                }
            };
            match read {
                None if self.b.rbuf.is_empty() => return HeadRead::Close,
                None => return HeadRead::TimedOut,
                Some(Ok(0) | Err(_)) => return HeadRead::Close,
                Some(Ok(_)) => {}
            }
        }
    }

    /// One request, steps 1–13 of spec §8.2; returns whether the connection stays open.
    async fn request(&mut self) -> bool {
        let started = Instant::now();
        let id = self.shared.next_request_id();
        self.shared.status.board.count_request(); // step 1
        let b = &mut *self.b;
        let verdict = decide(
            &b.head_buf,
            &b.head,
            &self.caller,
            || self.shared.snapshots.borrow().clone(),
            &mut b.canonical,
        );
        let (status, reason, kind, detail, keep) = match verdict {
            Verdict::Refuse {
                reason,
                kind,
                detail,
            } => {
                self.answer_refusal(reason).await;
                (reason.status(), Some(reason), kind, detail, false)
            }
            Verdict::Local(local) => {
                let (status, reason) = self.serve_local(local).await;
                (
                    status,
                    reason,
                    SummaryKind::Connection,
                    String::new(),
                    false,
                )
            }
            Verdict::Forward(fwd) => {
                let outcome = self.forward(&fwd).await;
                let (status, reason, keep) = match outcome {
                    Outcome::Relayed { status, keep } => (status, None, keep),
                    Outcome::Refused(reason) => {
                        self.answer_refusal(reason).await;
                        (reason.status(), Some(reason), false)
                    }
                    Outcome::Broken { status: 0 } => (CLIENT_GONE, None, false),
                    Outcome::Broken { status } => (status, None, false),
                };
                // An audit denial is recorded as the refusal enforce would have given (spec §4.5, conf 41).
                match fwd.audit {
                    Some(would) => {
                        let detail = format!(
                            "audit: forwarded, upstream answered {status}; {}",
                            fwd.detail
                        );
                        (
                            would.status(),
                            Some(would),
                            SummaryKind::FailedAuth,
                            detail,
                            keep,
                        )
                    }
                    None => (status, reason, SummaryKind::Connection, fwd.detail, keep),
                }
            }
        };
        self.finish(id, started, status, reason, kind, &detail);
        keep
    }

    /// The summary entry and the connection log line of one finished request (spec §8.6).
    fn finish(
        &mut self,
        id: u64,
        started: Instant,
        status: u16,
        reason: Option<Reason>,
        kind: SummaryKind,
        detail: &str,
    ) {
        let target = self.b.head.target.of(&self.b.head_buf);
        // Within a connection the summary key differs only by status: a repeat is one atomic add.
        let counted = match &self.summary {
            Some((k, s, counter)) if *k == kind && *s == status => {
                counter.add(clock::unix_ms_coarse())
            }
            _ => false,
        };
        if !counted {
            let status_code =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            let record = RequestRecord::new(
                id,
                &String::from_utf8_lossy(self.b.head.method.of(&self.b.head_buf)),
                &String::from_utf8_lossy(target),
                &self.caller.claims,
                self.caller.original_dst.unwrap_or(self.local),
                status_code,
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                detail,
            );
            self.summary = self
                .shared
                .status
                .record_counted(kind, &record)
                .map(|counter| (kind, status, counter));
        }
        // Per request: debug only (info and above are for lifecycle events, STYLE rule 16).
        tracing::debug!(
            target: CONNECTION_TARGET,
            id,
            method = %String::from_utf8_lossy(self.b.head.method.of(&self.b.head_buf)),
            path = %String::from_utf8_lossy(msp_core::canon::raw_path(target)),
            status,
            reason = reason.map_or("", Reason::code),
            // Read only when the line is logged.
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }

    /// The downstream connection may carry another request after this one (spec §8.1: keep-alive on HTTP/1.1).
    pub(super) fn client_keep_alive(&self) -> bool {
        self.b.head.version == Version::Http11 && !self.b.head.close && !self.stop.is_stopped()
    }

    /// Reads more request bytes, waiting at most the idle timeout; false when the client is gone.
    pub(super) async fn fill(&mut self) -> bool {
        let rbuf = &mut self.b.rbuf;
        make_room(rbuf);
        let read = self.client.read_buf(rbuf);
        matches!(
            self.timer.within_for(self.shared.timeouts.idle, read).await,
            Some(Ok(n)) if n > 0
        )
    }

    /// Writes the refusal for `reason`; the connection closes after the request is recorded (spec §8.5).
    async fn answer_refusal(&mut self, reason: Reason) {
        response::refusal(reason, &mut self.b.out);
        self.write_out().await;
    }

    /// A refusal before step 1 (unparseable head, timeouts): answered, not counted.
    async fn refuse_unparsed(mut self: Box<Self>, reason: Reason) {
        tracing::debug!(target: CONNECTION_TARGET, reason = reason.code(), "request head refused");
        self.answer_refusal(reason).await;
        self.close().await;
    }

    /// Writes `out` to the client (bounded by the idle timeout); a failure leaves nothing to answer.
    pub(super) async fn write_out(&mut self) {
        self.upstream = None;
        let write = self.client.write_all(&self.b.out);
        let written = self
            .timer
            .within_for(self.shared.timeouts.idle, write)
            .await;
        self.b.out.clear();
        self.client_gone |= !matches!(written, Some(Ok(())));
    }

    /// Closes gracefully: FIN first, then a bounded drain of what the client still sends, so it reads the
    /// answer instead of a reset.
    async fn close(mut self: Box<Self>) {
        self.upstream = None;
        if self.client_gone {
            return;
        }
        let _ = self.client.shutdown().await;
        linger(&mut self.client, LINGER_TIMEOUT).await;
    }
}

/// Room for a read from the client: at least half an initial buffer, grown by a whole one.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < INITIAL_BUFFER / 2 {
        buf.reserve(INITIAL_BUFFER);
    }
}

/// Waits until the client socket is readable, then reads what is there into the read buffer. The buffers are
/// taken only then, and given straight back when nothing came (an idle connection holds no buffers). `Ok(0)`: the
/// client closed, or the proxy is stopping.
///
/// A plain poll on the socket's read readiness: unlike `readable()`, it keeps no waiter of its own in the
/// connection's task. The read itself is tokio's `poll_read`, which takes a read that leaves room in the buffer
/// as proof that the socket is drained: the wait for the next request then goes straight to the reactor instead
/// of through one more read that would block.
fn read_some<'a>(
    client: &'a mut TcpStream,
    b: &'a mut OnDemand,
    stop: &'a mut Watch,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    poll_fn(move |cx| {
        if stop.poll_stopped(cx) {
            return Poll::Ready(Ok(0));
        }
        ready!(client.poll_read_ready(cx))?;
        let buf = &mut b.rbuf;
        make_room(buf);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut *client), cx, buf);
        if read.is_pending() {
            b.release();
        }
        read
    })
}

/// Reads and discards at most [`LINGER_BYTES`] for at most `limit`.
async fn linger(client: &mut TcpStream, limit: Duration) {
    let deadline = Instant::now() + limit;
    // On the heap: a 4 KiB array here would sit in every connection's task for its whole life.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a held connection costs at scale is mostly its task: tokio puts a connection's future in a cell aligned
    /// to 128 bytes with 104 bytes of its own and the task tracker's 8 (tokio 1.54, x86_64, without
    /// `tokio_unstable`). Up to 272 bytes, the cell takes 384 bytes; the 440-byte future before session 18 took
    /// 640, and 768 on a lane it moved to. The future is 224 bytes in the test build and in the release build.
    #[test]
    fn a_connections_task_fits_a_384_byte_cell() {
        fn future_size<F: Future>(_: fn(Box<Conn>) -> F) -> usize {
            size_of::<F>()
        }
        let size = future_size(serve);
        assert!(size <= 272, "the future of a connection takes {size} bytes");
    }
}
