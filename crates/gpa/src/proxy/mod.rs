//! The proxy (spec §8): the listener on `proxyListenAddress`, and for every redirected connection the path
//! attribution → claims → per request: parse → method → headers → limits → traversal guard → local endpoints
//! → attribution → staleness → readiness → authorize → rewrite + sign → forward → relay.
//!
//! Layout: [`head`] (the pure request-head parser) and [`chunked`] (the pure chunked decoder) frame requests;
//! [`decide`] runs steps 2–10 of §8.2 without I/O; `conn` owns one connection and its buffers, `forward` reads
//! bodies, rewrites, signs and sends, `relay` owns the upstream connection and relays responses, `local`
//! serves `/provision` and `/gpa-aggregated-status`, [`response`] writes the proxy's own answers. `lanes` runs
//! the accept loop and the connections on single-threaded runtimes, one per core (up to 4).
//!
//! The HTTP codec is our own, not hyper's: spec §3.2 step 6 requires that exactly the signed header set
//! reaches the host (hyper's client adds and rewrites `Host`, `Content-Length`, `Transfer-Encoding`), and §8
//! fixes statuses that hyper's server decides itself or normalises away (408 only for partial heads, 414, 431
//! at 100 fields, 400 with a reason code for each framing ambiguity, the exact 405). Request heads are parsed
//! by [`head`] (pure, fuzzable), response heads by `httparse`; bodies are framed by us, responses relayed with
//! their own framing.
//!
//! This module must never: send a byte upstream for a refused request (conf 76), open an upstream connection
//! before a request is authorized, share an upstream connection between downstream connections, read `/proc`
//! or take a lock per request beyond the snapshot read and the summary record, or spawn an untracked task.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod buffers;
mod busy_poll;
pub mod chunked;
mod conn;
pub mod decide;
mod forward;
pub mod head;
mod lanes;
pub mod limits;
mod local;
mod relay;
pub mod response;
mod rlimit;
mod stop;
mod timer;

#[cfg(target_os = "linux")]
mod kernel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use msp_core::Claims;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use self::busy_poll::{Accepted, Asleep};
use self::lanes::Lanes;
use crate::config::EndpointAddrs;
use crate::identity::IdentityError;
use crate::keykeeper::KeeperHandle;
use crate::lifecycle::ProxyContext;
use crate::snapshot::Snapshot;
use crate::status::{Provisioning, StatusHub};

#[cfg(target_os = "linux")]
pub use kernel::KernelAttributor;
pub use limits::Timeouts;
pub use rlimit::raise_nofile_limit;

/// Connections refused with 503 `OVERLOADED` that may linger at once; beyond that they are just closed.
const OVERLOAD_ANSWERS: usize = 64;

/// Who made a connection, as far as the proxy can tell at accept (spec §6, §7.3).
#[derive(Debug)]
pub enum Attribution {
    /// No attribution record: a direct connection to the listener (421 `NO_ATTRIBUTION`, spec §8.2 step 7).
    Direct,
    /// A redirected connection: its original destination, and the caller's claims or why they are stale.
    Redirected {
        original_dst: SocketAddr,
        identity: Result<Claims, IdentityError>,
    },
}

/// The seam between the proxy and the kernel: turns an accepted connection's peer address into its
/// attribution. The redirector-backed implementation is [`KernelAttributor`]; tests inject their own.
///
/// `attribute` is called once per connection on a blocking thread: implementations may read `/proc` and call NSS.
pub trait Attributor: Send + Sync + 'static {
    fn attribute(&self, peer: SocketAddr) -> Attribution;

    /// Called on the reactor for every accepted connection: the attribution when it can be had without blocking
    /// (from caches), else the blocking work. The default sends everything to [`Attributor::attribute`].
    fn lookup(self: Arc<Self>, peer: SocketAddr) -> Lookup {
        Lookup::Blocking(Box::new(move || self.attribute(peer)))
    }
}

/// A connection's attribution at once, or the work that finds it, which may block (it runs off the reactor).
pub enum Lookup {
    Done(Attribution),
    Blocking(Box<dyn FnOnce() -> Attribution + Send>),
}

/// No redirector: every connection is direct.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecords;

impl Attributor for NoRecords {
    fn attribute(&self, _: SocketAddr) -> Attribution {
        Attribution::Direct
    }
}

/// What every connection of one proxy shares.
pub(crate) struct Shared {
    pub(crate) timeouts: Timeouts,
    /// The configured listener (spec §1.2).
    pub(crate) listen: SocketAddr,
    pub(crate) endpoints: EndpointAddrs,
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(crate) status: Arc<StatusHub>,
    pub(crate) provisioning: Arc<Provisioning>,
    pub(crate) keeper: KeeperHandle,
    pub(crate) attributor: Arc<dyn Attributor>,
    /// The runtime the proxy was started on, whose blocking pool runs every lane's identity lookups: one cap
    /// for all of them.
    pub(crate) blocking: tokio::runtime::Handle,
    /// The polling of a connection alone on its lane (`busy_poll`).
    pub(crate) polling: busy_poll::Polling,
    /// Set when the proxy stops accepting; read by every request (graceful stop).
    stop: Arc<stop::Stop>,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Serves the proxy until `ctx.cancel`, then lets open connections finish their current request.
pub async fn serve(ctx: ProxyContext, attributor: Arc<dyn Attributor>) {
    let cap = raise_nofile_limit(ctx.config.max_concurrent_connections);
    let shared = Arc::new(Shared {
        timeouts: Timeouts::from_config(&ctx.config),
        listen: ctx.config.proxy_listen_address,
        endpoints: ctx.config.endpoints(),
        snapshots: ctx.snapshots,
        status: ctx.status,
        provisioning: ctx.provisioning,
        keeper: ctx.keeper,
        attributor,
        blocking: tokio::runtime::Handle::current(),
        polling: busy_poll::Polling::new(
            Duration::from_micros(ctx.config.proxy_busy_poll_in_microseconds),
            crate::worker_threads(),
        ),
        stop: Arc::default(),
        next_id: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(
        usize::try_from(cap)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS),
    ));
    let overload = Arc::new(Semaphore::new(OVERLOAD_ANSWERS));
    let tracker = TaskTracker::new();
    let lanes = Arc::new(Lanes::start(crate::worker_threads()));
    tracing::info!(
        listener = %shared.listen,
        max_connections = cap,
        lanes = lanes.count(),
        busy_poll_us = shared.polling.limit().as_micros(),
        "proxy serving"
    );
    let accepting = Accepting {
        shared: shared.clone(),
        permits,
        overload,
        tracker: tracker.clone(),
        cancel: ctx.cancel,
        lanes: lanes.clone(),
    };
    // The listeners move to the accepting lane's reactor (the same descriptors). Should this future be dropped, the
    // accept loop ends with it, and the lanes, with every connection still on them, once the loop has.
    let v6 = ctx.listener_v6.map(|l| l.into_std()).transpose();
    match (ctx.listener.into_std(), v6) {
        (Ok(v4), Ok(v6)) => {
            let accept_loop = lanes.accepting().spawn(accepting.run(v4, v6));
            if let Err(e) = AbortOnDropHandle::new(accept_loop).await {
                tracing::error!(error = %e, "the proxy's accept loop failed");
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot take the listener off the agent's runtime; the proxy stops");
        }
    }
    // Connections between requests close now; the others after the request they are serving.
    shared.stop.stop();
    tracker.close();
    tracker.wait().await;
    drop(lanes);
    tracing::info!("proxy stopped");
}

/// What the accept loop needs, on the accepting lane.
struct Accepting {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    overload: Arc<Semaphore>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    lanes: Arc<Lanes>,
}

impl Accepting {
    /// Accepts until cancelled, then drops the listeners: new connections are refused from then on.
    async fn run(self, v4: std::net::TcpListener, v6: Option<std::net::TcpListener>) {
        let listeners = TcpListener::from_std(v4).and_then(|v4| {
            let v6 = v6.map(TcpListener::from_std).transpose()?;
            Ok((v4, v6))
        });
        let (v4, v6) = match listeners {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen on the proxy's accepting lane; the proxy stops");
                return;
            }
        };
        let shared = &self.shared;
        let mut backoff = limits::ACCEPT_BACKOFF_MIN;
        let v4 = Listening::new(&v4, shared.listen);
        let v6 = v6.as_ref().map(|l| {
            Listening::new(
                l,
                (std::net::Ipv6Addr::LOCALHOST, shared.listen.port()).into(),
            )
        });
        let lane = self.lanes.accepting_tally();
        let listenings: Vec<&Listening<'_>> = std::iter::once(&v4).chain(v6.as_ref()).collect();
        let listeners: Vec<&TcpListener> = listenings.iter().map(|l| l.listener).collect();
        let mut waiting = Asleep::default();
        loop {
            let accepted = tokio::select! {
                () = self.cancel.cancelled() => break,
                r = v4.accept() => r,
                r = accept_opt(v6.as_ref()) => r,
                // The lane's last connection ended: the next one may come soon (a client that reconnects).
                () = lane.idle() => {
                    match shared.polling.accept(lane, &listeners) {
                        Accepted::Got(Ok((stream, i))) => match listenings.get(i).and_then(|l| l.polled(stream)) {
                            Some(accepted) => Ok(accepted),
                            // Reset before it was accepted: nothing to answer, and no record is taken for it (a
                            // new client at its address keeps its own for its own connection).
                            None => continue,
                        },
                        Accepted::Got(Err(e)) => Err(e),
                        Accepted::Sleep(asleep) => {
                            if asleep.since().is_some() {
                                waiting = asleep;
                            }
                            continue;
                        }
                    }
                }
            };
            let (stream, peer, local) = match accepted {
                Ok(pair) => {
                    // Only a wait that ended in a connection says how long the lane waits for one.
                    shared
                        .polling
                        .slept_accept(lane, std::mem::take(&mut waiting));
                    backoff = limits::ACCEPT_BACKOFF_MIN;
                    pair
                }
                Err(e) => {
                    // Out of descriptors or memory: wait a little instead of spinning (catalog G1).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(limits::ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let at = conn::Accepted {
                peer,
                local,
                at: Instant::now(),
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => self.place(stream, at, permit),
                Err(_) => {
                    tracing::warn!(%peer, "connection cap reached; answering 503 OVERLOADED");
                    if let Ok(answering) = self.overload.clone().try_acquire_owned() {
                        self.tracker.spawn(async move {
                            overloaded(stream).await;
                            drop(answering);
                        });
                    }
                }
            }
        }
    }

    /// Starts serving an accepted connection on its lane; a connection for another lane moves to its reactor.
    fn place(&self, stream: TcpStream, at: conn::Accepted, permit: OwnedSemaphorePermit) {
        let shared = self.shared.clone();
        let placed = self.lanes.pick();
        let moves = placed.index != 0;
        // Made in the lane's context: its socket and its timer belong to the lane's reactor from the start, and the
        // task of a connection is the same on every lane.
        placed.spawn(|seat| {
            let stream = if moves {
                match stream.into_std().and_then(TcpStream::from_std) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(peer = %at.peer, error = %e, "cannot move a connection to its lane; closing it");
                        return None;
                    }
                }
            } else {
                stream
            };
            let conn = conn::Conn::accepted(shared, stream, at, (permit, seat));
            Some(self.tracker.track_future(conn::serve(conn)))
        });
    }
}

/// A listener and what every connection accepted on it shares, found once instead of per connection.
struct Listening<'a> {
    listener: &'a TcpListener,
    /// The listener's address as bound: every accepted socket's local address unless it is a wildcard, and the
    /// fallback of a connection that cannot say its own.
    bound: SocketAddr,
    /// Accepted sockets inherit `TCP_NODELAY` from the listener (Linux); if it could not be set there, each
    /// connection sets it.
    nodelay_inherited: bool,
}

impl<'a> Listening<'a> {
    fn new(listener: &'a TcpListener, configured: SocketAddr) -> Listening<'a> {
        let bound = listener.local_addr().unwrap_or(configured);
        let nodelay_inherited = match set_listener_nodelay(listener) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener; setting it per connection");
                false
            }
        };
        Listening {
            listener,
            bound,
            nodelay_inherited,
        }
    }

    /// The next connection, `TCP_NODELAY` on, with its peer and local addresses.
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok(self.accepted(stream, peer))
    }

    /// A connection accepted while polling (non-blocking), registered with this lane's reactor; `None` if it was
    /// reset before (no peer any more) or cannot be registered.
    fn polled(&self, stream: std::net::TcpStream) -> Option<(TcpStream, SocketAddr, SocketAddr)> {
        let peer = stream.peer_addr().ok()?;
        match TcpStream::from_std(stream) {
            Ok(stream) => Some(self.accepted(stream, peer)),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot register a polled connection; closing it");
                None
            }
        }
    }

    fn accepted(&self, stream: TcpStream, peer: SocketAddr) -> (TcpStream, SocketAddr, SocketAddr) {
        if !self.nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        let local = match self.fixed_local() {
            Some(local) => local,
            None => stream.local_addr().unwrap_or(self.bound),
        };
        (stream, peer, local)
    }

    /// The local address of every connection, when the listener is bound to one address (not a wildcard, whose
    /// connections are asked).
    fn fixed_local(&self) -> Option<SocketAddr> {
        Some(self.bound).filter(|a| !a.ip().is_unspecified())
    }
}

#[cfg(target_os = "linux")]
fn set_listener_nodelay(listener: &TcpListener) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::TcpNoDelay};
    Ok(setsockopt(listener, TcpNoDelay, &true)?)
}

#[cfg(not(target_os = "linux"))]
fn set_listener_nodelay(_: &TcpListener) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

async fn accept_opt(
    listening: Option<&Listening<'_>>,
) -> std::io::Result<(TcpStream, SocketAddr, SocketAddr)> {
    match listening {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// 503 `OVERLOADED`, then a graceful close (spec §8.4).
async fn overloaded(mut stream: TcpStream) {
    let mut out = Vec::new();
    response::refusal(msp_core::Reason::Overloaded, &mut out);
    let limit = limits::LINGER_TIMEOUT;
    if matches!(
        tokio::time::timeout(limit, stream.write_all(&out)).await,
        Ok(Ok(()))
    ) {
        let _ = stream.shutdown().await;
        let mut sink = vec![0u8; 1024];
        let _ = tokio::time::timeout(limit, async {
            while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted connection has `TCP_NODELAY` (else a response written in two parts waits for the client's
    /// delayed ACK) and the local address it connected to, on a listener bound to an address and on a wildcard
    /// one.
    #[tokio::test]
    async fn accepted_connections_have_nodelay_and_their_local_address() {
        // The wildcard bind is to port 0 and only ever reached through loopback.
        for bind in ["127.0.0.1:0", "0.0.0.0:0"] {
            let listener = TcpListener::bind(bind).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let listening = Listening::new(&listener, bind.parse().unwrap());
            assert_eq!(
                listening.fixed_local().is_some(),
                bind.starts_with("127."),
                "{bind}"
            );
            let target = SocketAddr::from(([127, 0, 0, 1], port));
            let client = TcpStream::connect(target).await.unwrap();
            let (stream, peer, local) = listening.accept().await.unwrap();
            assert!(stream.nodelay().unwrap(), "{bind}");
            assert_eq!(peer, client.local_addr().unwrap(), "{bind}");
            assert_eq!(local, target, "{bind}");
        }
    }
}
