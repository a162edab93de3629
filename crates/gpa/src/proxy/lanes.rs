//! The proxy's lanes: a single-threaded runtime on a thread of its own per worker, each serving whole
//! connections. Lane 0 also accepts; every accepted connection goes to the lane with the fewest open
//! connections, the accepting one on a tie, and stays there to its end.
//!
//! Why not the agent's multi-thread runtime: a connection is one task that hands no work to another between its
//! request and its response, so that runtime's work stealing buys it nothing, while its bookkeeping runs on every
//! park and wake-up. Measured on 2 vCPUs (BENCHMARKS.md, history item 42): at 16 and 64 keep-alive connections
//! the agent reached 0.60–0.63× of the direct path instead of 0.50–0.55×, with less CPU per request; at 1
//! connection, and for a new connection per request, no change. The runtime the agent starts with keeps the
//! rest: the key keeper, the status writer, and the blocking pool for identity lookups (one cap for all lanes).
//!
//! If a lane cannot start (no thread, no epoll), the proxy runs on the runtime it was started from, as before.
//! This module must never move a connection after it has started serving it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

use super::busy_poll::Budgets;

/// The lanes of one proxy. Dropping it ends their threads, and drops whatever still runs on them: the proxy drops
/// it only after its task tracker has seen every connection end.
pub(super) struct Lanes {
    /// Lane 0, which accepts.
    accepting: Lane,
    others: Vec<Lane>,
}

struct Lane {
    handle: Handle,
    tally: Arc<Tally>,
    /// Dropped to end the lane's thread (`None` for the fallback lane, the caller's runtime).
    _end: Option<oneshot::Sender<()>>,
}

impl Lanes {
    /// Starts `count` lanes (at least one). Lanes that cannot start are left out and logged; with none, the
    /// caller's runtime serves as the only lane.
    pub(super) fn start(count: usize) -> Lanes {
        let mut lanes = (0..count.max(1)).filter_map(|index| {
            Lane::start(index)
                .inspect_err(
                    |e| tracing::warn!(lane = index, error = %e, "cannot start a proxy lane"),
                )
                .ok()
        });
        let accepting = lanes.next().unwrap_or_else(|| {
            tracing::warn!("no proxy lane started; the proxy runs on the agent's runtime");
            Lane {
                handle: Handle::current(),
                tally: Arc::default(),
                _end: None,
            }
        });
        Lanes {
            accepting,
            others: lanes.collect(),
        }
    }

    /// How many lanes serve connections.
    pub(super) fn count(&self) -> usize {
        1 + self.others.len()
    }

    /// The accepting lane's runtime.
    pub(super) fn accepting(&self) -> &Handle {
        &self.accepting.handle
    }

    /// The accepting lane's tally.
    pub(super) fn accepting_tally(&self) -> &Tally {
        &self.accepting.tally
    }

    /// The lane a new connection goes to: the fewest open connections, the accepting lane on a tie.
    pub(super) fn pick(&self) -> Placed<'_> {
        let mut placed = Placed {
            index: 0,
            lane: &self.accepting,
        };
        let mut fewest = self.accepting.tally.open();
        for (i, lane) in self.others.iter().enumerate() {
            let open = lane.tally.open();
            if open < fewest {
                fewest = open;
                placed = Placed { index: i + 1, lane };
            }
        }
        placed
    }
}

/// A lane chosen for one connection.
pub(super) struct Placed<'a> {
    /// 0 is the accepting lane: a connection placed there needs no move to another reactor.
    pub(super) index: usize,
    lane: &'a Lane,
}

impl Placed<'_> {
    /// Runs the connection that `connection` makes on the lane, if it makes one. It is made in the lane's runtime
    /// context (sockets and timers made there belong to the lane's reactor), and gets the lane's [`Seat`], which it
    /// must hold to its end.
    pub(super) fn spawn<F>(self, connection: impl FnOnce(Seat) -> Option<F>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.lane.tally.open.fetch_add(1, Ordering::Relaxed);
        let seat = Seat(self.lane.tally.clone());
        let made = {
            let _lane = self.lane.handle.enter();
            connection(seat)
        };
        // Spawned as made: a future wrapped around it would hold a second copy of the connection's state (session
        // 15 measured 896 instead of 383 bytes per task at 9,776 held connections; BENCHMARKS.md items 42 and 45).
        if let Some(task) = made {
            drop(self.lane.handle.spawn(task));
        }
    }
}

/// What a lane keeps: its open connections, and what it learned of how long their waits last.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// Connections placed on this lane and not yet ended.
    open: AtomicUsize,
    budgets: Budgets,
    /// Told when the last open connection ends.
    idle: Notify,
}

impl Tally {
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Done once the lane's count of open connections has fallen to none since the last wait that was done
    /// (several such falls make one). A lane that has had no connection yet is never told.
    pub(super) async fn idle(&self) {
        self.idle.notified().await;
    }
}

/// A connection's place on its lane: the lane counts the connection as open until its seat is dropped.
pub(super) struct Seat(Arc<Tally>);

impl Seat {
    /// Whether no other connection is open on this lane.
    pub(super) fn alone(&self) -> bool {
        self.0.open() == 1
    }

    /// The lane's polling budgets.
    pub(super) fn budgets(&self) -> &Budgets {
        &self.0.budgets
    }

    /// The lane's tally.
    #[cfg(test)]
    pub(super) fn tally(&self) -> &Tally {
        &self.0
    }

    /// `n` seats on one lane of their own, outside any runtime.
    #[cfg(test)]
    pub(super) fn on_one_lane(n: usize) -> Vec<Seat> {
        let tally = Arc::new(Tally::default());
        tally.open.store(n, Ordering::Relaxed);
        (0..n).map(|_| Seat(tally.clone())).collect()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Lane {
    /// The runtime is built on the lane's own thread, so a failed start never drops a runtime on the caller's
    /// (tokio refuses to drop one inside another's async context).
    fn start(index: usize) -> std::io::Result<Lane> {
        let (started, starting) = std::sync::mpsc::sync_channel(1);
        let (end, ended) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("gpa-lane-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                // Serves until the proxy drops its lanes; dropping the runtime then drops what is left on it.
                runtime.block_on(async move {
                    let _ = ended.await;
                });
            })?;
        // A wait of one runtime build, once per lane at the proxy's start.
        let handle = starting.recv().map_err(|_| {
            std::io::Error::other("the lane's thread ended before its runtime started")
        })??;
        Ok(Lane {
            handle,
            tally: Arc::default(),
            _end: Some(end),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const STEP: Duration = Duration::from_secs(5);

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(str::to_owned)
    }

    /// Places one connection that reports the thread it runs on and then waits for `end`. It also reports where
    /// the runtime it was made in runs its tasks: the lane's, so that its socket and timer are the lane's too.
    async fn place(lanes: &Lanes) -> (usize, Option<String>, oneshot::Sender<()>) {
        let placed = lanes.pick();
        let index = placed.index;
        let (report, reported) = oneshot::channel();
        let (end, ended) = oneshot::channel::<()>();
        placed.spawn(|seat| {
            let made_in = Handle::current();
            Some(async move {
                let _seat = seat;
                let context = made_in.spawn(async { thread_name() }).await.ok().flatten();
                let _ = report.send((thread_name(), context));
                let _ = ended.await;
            })
        });
        let (thread, context) = timeout(STEP, reported)
            .await
            .expect("the lane runs its connection")
            .unwrap();
        assert_eq!(
            thread, context,
            "made in the context of the lane it runs on"
        );
        (index, thread, end)
    }

    #[tokio::test]
    async fn connections_go_to_the_least_busy_lane_and_an_ended_one_gives_its_place_back() {
        let lanes = Lanes::start(2);
        assert_eq!(lanes.count(), 2);
        let mut open = Vec::new();
        // On a tie the accepting lane takes the connection.
        for expected in [0, 1, 0, 1] {
            let (index, thread, end) = place(&lanes).await;
            assert_eq!(index, expected);
            assert_eq!(
                thread,
                Some(format!("gpa-lane-{expected}")),
                "its own thread"
            );
            open.push(end);
        }
        // Lane 1 ends a connection: it has the fewest again once its task is done.
        drop(open.swap_remove(1));
        let deadline = tokio::time::Instant::now() + STEP;
        while lanes.pick().index != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place is given back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (index, thread, _end) = place(&lanes).await;
        assert_eq!((index, thread.as_deref()), (1, Some("gpa-lane-1")));
    }

    /// What the proxy relies on when it ends: dropping the lanes ends their threads, and with them whatever
    /// still runs there.
    #[tokio::test]
    async fn dropping_the_lanes_ends_what_still_runs_on_them() {
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let lanes = Lanes::start(2);
        let (dropped, gone) = std::sync::mpsc::channel();
        for lane in 0..2 {
            let placed = lanes.pick();
            assert_eq!(placed.index, lane, "one on each lane");
            let guard = Dropped(dropped.clone());
            placed.spawn(|seat| {
                Some(async move {
                    let _seat = seat;
                    let _guard = guard;
                    std::future::pending::<()>().await;
                })
            });
        }
        drop(lanes);
        for _ in 0..2 {
            gone.recv_timeout(STEP)
                .expect("a lane's task is dropped with the lane");
        }
    }

    #[tokio::test]
    async fn a_lane_is_told_when_its_last_connection_ends() {
        let mut seats = Seat::on_one_lane(2);
        let tally = seats[0].0.clone();
        drop(seats.pop());
        let early = timeout(Duration::from_millis(20), tally.idle()).await;
        assert!(early.is_err(), "one connection is still open");
        drop(seats.pop());
        let told = timeout(Duration::from_secs(5), tally.idle()).await;
        assert!(told.is_ok(), "the last one ended");
    }
}
