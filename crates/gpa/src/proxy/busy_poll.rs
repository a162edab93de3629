//! Polling a socket for a peer's first bytes for a few microseconds before sleeping on the reactor.
//!
//! On a VM, waking a thread that sleeps can cost more than the answer it waits for takes to arrive: the idle vCPU
//! halts, and the peer's send then wakes it through the hypervisor. A direct call pays two such wake-ups; one
//! through the agent pays four (the agent on the request, the host, the agent on the response, the client). Where
//! the guest kernel polls before it halts an idle vCPU (`haltpoll`), that hides most of the cost for every
//! process; where it does not (the bench machine boots with `haltpoll.guest_halt_poll_ns=0`), the agent's hop
//! pays it in full. Measured there (BENCHMARKS.md, history item 43): at 1 keep-alive connection the agent went
//! from ~0.6× of the direct path to ~1.06×, and a new connection from +176…+215 to +71…+79 µs over direct, for
//! +8…+25 µs more CPU per request at 1 connection (~95 µs more per 64 KiB response, whose first bytes take
//! longest).
//!
//! So a connection that is alone on its lane reads its socket without waiting, again and again, for at most its
//! lane's *budget* for that wait, and only then sleeps. The accepting lane does the same for the next
//! connection once its last connection has ended (a client that reconnects for each request). Only a wait's
//! first bytes are polled for (the rest of a head comes under the wait's deadline, which counts from the start
//! of the poll). Bounds, so that polling does not take what others need:
//! - at most one connection of the whole agent polls at a time (one vCPU), and none on a single CPU;
//! - never while another connection shares the lane, and the accepting lane polls for a connection only while it
//!   has none open: a poll holds the lane's thread (on lane 0 it delays the accept loop by at most the budget; on
//!   the fallback lane, the agent's own runtime, it holds one of its workers);
//! - each budget follows how long that wait lasted lately, like the kernel's halt polling: a wait that a poll of
//!   the limit would have caught doubles the budget (from an eighth of the limit, up to the limit), a wait that
//!   outlasted the limit halves it, and below an eighth of the limit it is none. A lane whose peer answers slowly
//!   (a remote host) or whose clients pause between requests stops polling after a few waits, and still times its
//!   waits to start again.
//!
//! This module must never poll while another connection shares the lane, leave the agent's polling turn taken,
//! or read into no room.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::lanes::{Seat, Tally};
use super::timer::{Deadline, Timer, Within};
use crate::config::MAX_BUSY_POLL_MICROS;

/// The proxy's polling: the longest any wait polls, and whether a connection is polling now.
pub(crate) struct Polling {
    /// Zero: polling is off.
    limit: Duration,
    busy: AtomicBool,
}

/// A wait a connection can poll for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The client's next request (or its first).
    Request,
    /// The head of the upstream's response to the request just sent.
    Response,
    /// The next connection, on the accepting lane once it has none open.
    Accept,
}

/// What a lane has learned of its waits: the budget of each, in nanoseconds.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    request: AtomicU32,
    response: AtomicU32,
    accept: AtomicU32,
}

/// How polling ended.
#[derive(Debug)]
pub(super) enum Polled {
    /// What the read while polling returned: bytes, the end of the stream, or an error.
    Read(std::io::Result<usize>),
    /// Nothing arrived, or the connection did not poll: wait on the reactor, then pass this to
    /// [`Poller::slept`].
    Sleep(Asleep),
}

/// When a wait began, if polling timed it.
#[derive(Debug, Default)]
pub(super) struct Asleep(Option<Instant>);

impl Asleep {
    /// When the wait began, if polling timed it: its deadline counts from then.
    pub(super) fn since(&self) -> Option<Instant> {
        self.0
    }
}

impl Polling {
    /// Polling for at most `limit` per wait (capped at [`MAX_BUSY_POLL_MICROS`]), on Linux with at least two
    /// CPUs: on one, a poll only keeps the peer it waits for from running.
    pub(crate) fn new(limit: Duration, cpus: usize) -> Polling {
        let limit = if cfg!(target_os = "linux") && cpus >= 2 {
            limit.min(Duration::from_micros(MAX_BUSY_POLL_MICROS))
        } else {
            Duration::ZERO
        };
        Polling {
            limit,
            busy: AtomicBool::new(false),
        }
    }

    /// The longest any wait polls (zero: off).
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// The one gate of every poll: `attempt` runs with the budget that `budgets` hold for `wait`, if polling is
    /// on, the waiter `may` poll, the budget is not none, and the agent's turn is free. A wait that does not poll
    /// only because its budget is none is still timed.
    fn poll<T>(
        &self,
        budgets: &Budgets,
        wait: Wait,
        may: bool,
        attempt: impl FnOnce(Duration) -> Option<T>,
    ) -> Result<T, Asleep> {
        if self.limit.is_zero() || !may {
            return Err(Asleep(None));
        }
        let budget = budgets.get(wait);
        if budget.is_zero() {
            // Not polling, but timing the wait: a short one turns polling on.
            return Err(Asleep(Some(Instant::now())));
        }
        let Some(_turn) = Turn::take(&self.busy) else {
            return Err(Asleep(None));
        };
        let start = Instant::now();
        attempt(budget).ok_or(Asleep(Some(start)))
    }

    /// Learns from a wait that polling did not end, once the reactor has ended it.
    fn learn(&self, budgets: &Budgets, wait: Wait, asleep: Asleep) {
        if let Asleep(Some(since)) = asleep {
            budgets.learn(wait, since.elapsed(), self.limit);
        }
    }

    /// Accepts on `listeners` without waiting, until a connection comes or the accepting lane's budget is spent,
    /// if the lane has no open connection.
    pub(super) fn accept(&self, lane: &Tally, listeners: &[&TcpListener]) -> Accepted {
        let idle = lane.open() == 0;
        match self.poll(lane.budgets(), Wait::Accept, idle, |budget| {
            accept_within(listeners, budget)
        }) {
            Ok(result) => Accepted::Got(result),
            Err(asleep) => Accepted::Sleep(asleep),
        }
    }

    /// Learns from a wait for a connection that polling did not end, once the reactor has ended it.
    pub(super) fn slept_accept(&self, lane: &Tally, asleep: Asleep) {
        self.learn(lane.budgets(), Wait::Accept, asleep);
    }
}

/// How polling for a connection ended.
#[derive(Debug)]
pub(super) enum Accepted {
    /// The connection accepted while polling (non-blocking, not yet registered), or the error of the accept.
    Got(std::io::Result<(std::net::TcpStream, usize)>),
    /// Nothing came, or the lane did not poll.
    Sleep(Asleep),
}

/// One connection's polling: the proxy's, and the connection's seat on its lane.
#[derive(Clone, Copy)]
pub(super) struct Poller<'a> {
    polling: &'a Polling,
    seat: &'a Seat,
}

impl<'a> Poller<'a> {
    pub(super) fn new(polling: &'a Polling, seat: &'a Seat) -> Poller<'a> {
        Poller { polling, seat }
    }

    /// Whether a read for `wait` would poll now (another connection may still take the turn first).
    pub(super) fn polls(self, wait: Wait) -> bool {
        !self.polling.limit.is_zero()
            && self.seat.alone()
            && !self.seat.budgets().get(wait).is_zero()
    }

    /// Reads `stream` into the buffer that `buf` gives, without waiting, until bytes arrive or the lane's budget
    /// for `wait` is spent. `buf` is called only if the connection polls.
    pub(super) fn read<'b>(
        self,
        wait: Wait,
        stream: &TcpStream,
        buf: impl FnOnce() -> &'b mut BytesMut,
    ) -> Polled {
        let budgets = self.seat.budgets();
        match self
            .polling
            .poll(budgets, wait, self.seat.alone(), |budget| {
                read_within(stream, buf(), budget)
            }) {
            Ok(result) => Polled::Read(result),
            Err(asleep) => Polled::Sleep(asleep),
        }
    }

    /// Waits on the reactor for what polling did not get, within `deadline`, which counts from the start of the
    /// poll; then learns how long the wait took. After a timed poll the deadline is fixed here, from the poll's
    /// start, so the wait is to be awaited at once.
    pub(super) fn sleep<'t, F: Future>(
        self,
        wait: Wait,
        asleep: Asleep,
        timer: &'t mut Timer,
        deadline: &'t mut Deadline,
        read: F,
    ) -> Slept<'a, 't, F> {
        if let Some(since) = asleep.since() {
            deadline.count_from(since);
        }
        Slept {
            within: timer.within(deadline, read),
            learn: Some((self, wait, asleep)),
        }
    }

    /// Learns from a wait that polling did not end, once the reactor has ended it.
    pub(super) fn slept(self, wait: Wait, asleep: Asleep) {
        self.polling.learn(self.seat.budgets(), wait, asleep);
    }
}

pin_project! {
    /// [`Poller::sleep`]'s wait: a named future, so that the read is held once (an idle keep-alive connection
    /// holds this wait for as long as it stays open).
    pub(super) struct Slept<'a, 't, F> {
        #[pin]
        within: Within<'t, F>,
        // Taken when the wait ends, to learn from it once.
        learn: Option<(Poller<'a>, Wait, Asleep)>,
    }
}

impl<F: Future> Future for Slept<'_, '_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let read = ready!(this.within.poll(cx));
        if let Some((poller, wait, asleep)) = this.learn.take() {
            poller.slept(wait, asleep);
        }
        Poll::Ready(read)
    }
}

/// The agent's one polling turn, given back when dropped.
struct Turn<'a>(&'a AtomicBool);

impl<'a> Turn<'a> {
    fn take(busy: &'a AtomicBool) -> Option<Turn<'a>> {
        (!busy.swap(true, Ordering::Acquire)).then_some(Turn(busy))
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Budgets {
    fn slot(&self, wait: Wait) -> &AtomicU32 {
        match wait {
            Wait::Request => &self.request,
            Wait::Response => &self.response,
            Wait::Accept => &self.accept,
        }
    }

    fn get(&self, wait: Wait) -> Duration {
        Duration::from_nanos(u64::from(self.slot(wait).load(Ordering::Relaxed)))
    }

    fn set(&self, wait: Wait, budget: Duration) {
        let nanos = u32::try_from(budget.as_nanos()).unwrap_or(u32::MAX);
        self.slot(wait).store(nanos, Ordering::Relaxed);
    }

    /// The budget after a wait of `waited` that polling did not end.
    fn learn(&self, wait: Wait, waited: Duration, limit: Duration) {
        let budget = self.get(wait);
        let next = if waited <= limit {
            (budget * 2).clamp(limit / 8, limit)
        } else if budget / 2 < limit / 8 {
            Duration::ZERO
        } else {
            budget / 2
        };
        self.set(wait, next);
    }
}

/// Reads what arrives on `stream` into `buf` within `budget`; `None` if nothing did.
#[cfg(target_os = "linux")]
fn read_within(
    stream: &TcpStream,
    buf: &mut BytesMut,
    budget: Duration,
) -> Option<std::io::Result<usize>> {
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;

    // The process clock, not tokio's: a runtime whose time is paused (tests) must not poll forever.
    let start = std::time::Instant::now();
    let len = buf.len();
    // Never a read into no room, which would look like the end of the stream. The callers make room for a read.
    buf.reserve(1);
    // The read goes to initialised bytes: the spare room is zeroed once per poll, not per attempt.
    buf.resize(buf.capacity(), 0);
    let result = loop {
        let room = buf.get_mut(len..).unwrap_or_default();
        match recv(stream.as_raw_fd(), room, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => break Some(Ok(n)),
            Err(Errno::EAGAIN) if start.elapsed() < budget => std::hint::spin_loop(),
            Err(Errno::EAGAIN) => break None,
            Err(Errno::EINTR) => {}
            Err(e) => break Some(Err(e.into())),
        }
    };
    let read = match &result {
        Some(Ok(n)) => *n,
        _ => 0,
    };
    buf.truncate(len + read);
    result
}

/// Accepts on the first of `listeners` that has a connection, within `budget`: the stream and the listener's
/// index; `None` if none came.
#[cfg(target_os = "linux")]
fn accept_within(
    listeners: &[&TcpListener],
    budget: Duration,
) -> Option<std::io::Result<(std::net::TcpStream, usize)>> {
    use nix::errno::Errno;
    use nix::sys::socket::{SockFlag, accept4};

    let start = std::time::Instant::now();
    loop {
        for (i, listener) in listeners.iter().enumerate() {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            match accept4(*listener, flags) {
                Ok(fd) => return Some(Ok((std::net::TcpStream::from(fd), i))),
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
        if start.elapsed() >= budget {
            return None;
        }
        std::hint::spin_loop();
    }
}

#[cfg(not(target_os = "linux"))]
fn accept_within(
    _: &[&TcpListener],
    _: Duration,
) -> Option<std::io::Result<(std::net::TcpStream, usize)>> {
    None
}

#[cfg(not(target_os = "linux"))]
fn read_within(_: &TcpStream, _: &mut BytesMut, _: Duration) -> Option<std::io::Result<usize>> {
    None
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const LIMIT: Duration = Duration::from_micros(100);

    fn budget_after(start: Duration, waits: &[Duration]) -> Duration {
        let b = Budgets::default();
        b.set(Wait::Response, start);
        for w in waits {
            b.learn(Wait::Response, *w, LIMIT);
        }
        assert_eq!(
            b.get(Wait::Request),
            Duration::ZERO,
            "each wait learns alone"
        );
        b.get(Wait::Response)
    }

    #[test]
    fn short_waits_double_the_budget_up_to_the_limit_and_long_ones_halve_it_to_none() {
        let short = Duration::from_micros(40);
        let long = Duration::from_millis(2);
        assert_eq!(budget_after(Duration::ZERO, &[short]), LIMIT / 8);
        assert_eq!(budget_after(Duration::ZERO, &[short; 2]), LIMIT / 4);
        assert_eq!(budget_after(Duration::ZERO, &[short; 4]), LIMIT);
        assert_eq!(
            budget_after(Duration::ZERO, &[short; 9]),
            LIMIT,
            "never past the limit"
        );
        assert_eq!(
            budget_after(LIMIT / 2, &[LIMIT]),
            LIMIT,
            "the limit still counts"
        );
        assert_eq!(budget_after(LIMIT, &[long]), LIMIT / 2);
        assert_eq!(budget_after(LIMIT, &[long, long]), LIMIT / 4);
        assert_eq!(budget_after(LIMIT, &[long, long, long]), LIMIT / 8);
        assert_eq!(budget_after(LIMIT, &[long; 4]), Duration::ZERO);
        assert_eq!(budget_after(Duration::ZERO, &[long]), Duration::ZERO);
        assert_eq!(budget_after(LIMIT, &[long, long, short]), LIMIT / 2);
    }

    #[test]
    fn one_cpu_turns_polling_off_and_the_limit_is_capped() {
        assert_eq!(Polling::new(LIMIT, 1).limit(), Duration::ZERO);
        assert_eq!(Polling::new(LIMIT, 2).limit(), LIMIT);
        let most = Duration::from_micros(MAX_BUSY_POLL_MICROS);
        assert_eq!(Polling::new(Duration::from_secs(5), 2).limit(), most);
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_poll_reads_what_arrives_and_gives_up_after_its_budget() {
        let (mut client, server) = pair().await;
        let mut buf = BytesMut::from(&b"kept"[..]);
        let start = std::time::Instant::now();
        assert!(read_within(&server, &mut buf, Duration::from_millis(2)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert_eq!(&buf[..], b"kept", "nothing read, nothing added");

        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = BytesMut::from(&b"kept"[..]);
        assert_eq!(buf.capacity(), buf.len(), "a full buffer");
        let mut read = 0;
        while read < 18 {
            let got = read_within(&server, &mut buf, Duration::from_secs(5));
            let n = got.expect("the bytes are there").unwrap();
            assert!(n > 0, "bytes, not the end of the stream");
            read += n;
            buf.reserve(64);
        }
        assert_eq!(&buf[..], b"keptGET / HTTP/1.1\r\n\r\n");

        drop(client);
        let got = read_within(&server, &mut buf, Duration::from_secs(5));
        assert_eq!(
            got.unwrap().unwrap(),
            0,
            "the end of the stream ends the poll"
        );
    }

    fn untimed(p: &Polled) -> bool {
        matches!(p, Polled::Sleep(Asleep(None)))
    }

    #[tokio::test]
    async fn only_a_connection_alone_on_its_lane_polls_and_only_once_a_wait_was_short() {
        let (mut client, server) = pair().await;
        client.write_all(b"x").await.unwrap();
        // The byte is there before anyone polls: whoever reads the socket gets it at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The longest limit: the wait timed below lasts microseconds, unless the test's thread stalls for 1 ms.
        let limit = Duration::from_micros(MAX_BUSY_POLL_MICROS);
        let polling = Polling::new(limit, 2);
        let mut buf = BytesMut::new();

        let shared = Seat::on_one_lane(2);
        let p = Poller::new(&polling, &shared[0]);
        let got = p.read(Wait::Request, &server, || &mut buf);
        assert!(untimed(&got), "another connection shares the lane: {got:?}");

        let alone = Seat::on_one_lane(1);
        let p = Poller::new(&polling, &alone[0]);
        let Polled::Sleep(asleep) = p.read(Wait::Request, &server, || &mut buf) else {
            panic!("a lane that has learned nothing yet does not poll");
        };
        assert!(asleep.since().is_some(), "but it times the wait");
        assert!(buf.is_empty());
        p.slept(Wait::Request, asleep);
        assert_eq!(alone[0].budgets().get(Wait::Request), limit / 8);
        assert_eq!(alone[0].budgets().get(Wait::Response), Duration::ZERO);

        let turn = Turn::take(&polling.busy).unwrap();
        let got = p.read(Wait::Request, &server, || &mut buf);
        assert!(untimed(&got), "another connection is polling: {got:?}");
        drop(turn);

        let got = p.read(Wait::Request, &server, || &mut buf);
        assert!(matches!(got, Polled::Read(Ok(1))), "{got:?}");
        assert_eq!(&buf[..], b"x");
        assert!(
            Turn::take(&polling.busy).is_some(),
            "the poll gave its turn back"
        );

        let off = Polling::new(Duration::ZERO, 2);
        client.write_all(b"y").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let p = Poller::new(&off, &alone[0]);
        assert!(untimed(&p.read(Wait::Request, &server, || &mut buf)));
    }

    #[tokio::test]
    async fn the_accepting_lane_polls_for_the_next_connection_only_once_it_has_none_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listeners = [&listener, &other];
        let limit = Duration::from_micros(MAX_BUSY_POLL_MICROS);
        let polling = Polling::new(limit, 2);
        let lane = Tally::default();
        let _client = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();

        let Accepted::Sleep(asleep) = polling.accept(&lane, &listeners) else {
            panic!("a lane that has learned nothing yet does not poll");
        };
        assert!(asleep.since().is_some(), "but it times the wait");
        lane.budgets().learn(Wait::Accept, Duration::ZERO, limit);
        assert_eq!(lane.budgets().get(Wait::Accept), limit / 8);

        let seats = Seat::on_one_lane(1);
        let open = seats[0].tally();
        assert!(
            matches!(
                polling.accept(open, &listeners),
                Accepted::Sleep(Asleep(None))
            ),
            "a lane with an open connection does not poll"
        );

        let got = polling.accept(&lane, &listeners);
        let Accepted::Got(Ok((stream, 1))) = got else {
            panic!("the connection on the second listener: {got:?}");
        };
        assert_eq!(stream.local_addr().unwrap(), other.local_addr().unwrap());
        assert!(
            Turn::take(&polling.busy).is_some(),
            "the poll gave its turn back"
        );

        let start = std::time::Instant::now();
        assert!(matches!(
            polling.accept(&lane, &listeners),
            Accepted::Sleep(Asleep(Some(_)))
        ));
        assert!(
            start.elapsed() >= limit / 8,
            "nothing more came within the budget"
        );
    }
}
