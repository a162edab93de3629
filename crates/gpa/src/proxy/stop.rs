//! The proxy's stop, as its connections see it: a flag that every request reads without a lock, and the
//! wakers of the connections, registered once each, which a stop wakes so that the ones waiting for their next
//! request close at once.
//!
//! A clone of the agent's `CancellationToken` per connection did this with locks on every request, shared by all
//! connections: its flag sits behind a mutex, and each wait for the next head entered and left one waiter list.
//!
//! This module must never let a connection that checked the flag after registering miss a stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use slab::Slab;

/// Set once, when the proxy stops accepting.
#[derive(Debug, Default)]
pub(super) struct Stop {
    stopped: AtomicBool,
    wakers: Mutex<Slab<Waker>>,
}

impl Stop {
    /// Sets the flag, then wakes every registered connection: each sees the flag when it next runs. The wakers
    /// are copied out and woken after the lock: a woken connection that ends at once removes its waker under the
    /// same lock, and must not wait for every other connection's wake-up.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.wakers().iter().map(|(_, w)| w.clone()).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn wakers(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's view of the stop. Its task's waker is registered on the first
/// [`poll_stopped`](Self::poll_stopped) and removed when the connection ends. A tokio task's waker stays the same
/// for the task's life, so one registration serves every later wait; a poll with another waker registers that
/// one instead.
#[derive(Debug)]
pub(super) struct Watch {
    stop: Arc<Stop>,
    registered: Option<(usize, Waker)>,
}

impl Watch {
    pub(super) fn new(stop: Arc<Stop>) -> Watch {
        Watch {
            stop,
            registered: None,
        }
    }

    /// Whether the proxy is stopping.
    pub(super) fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Whether the proxy is stopping; from the first call on, a stop wakes the calling task. The flag is read
    /// after the registration: a stop that comes between them finds the waker (the lock orders the two).
    pub(super) fn poll_stopped(&mut self, cx: &Context<'_>) -> bool {
        let waker = cx.waker();
        match &mut self.registered {
            Some((_, known)) if known.will_wake(waker) => {}
            Some((key, known)) => {
                let mut wakers = self.stop.wakers();
                if let Some(slot) = wakers.get_mut(*key) {
                    slot.clone_from(waker);
                }
                known.clone_from(waker);
            }
            None => {
                let key = self.stop.wakers().insert(waker.clone());
                self.registered = Some((key, waker.clone()));
            }
        }
        self.stop.is_stopped()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some((key, _)) = self.registered.take() {
            self.stop.wakers().try_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// Waits until the proxy stops, as a connection's head wait does.
    async fn stopped(watch: &mut Watch) {
        poll_fn(|cx| {
            if watch.poll_stopped(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_stop_wakes_every_waiting_connection_and_ended_ones_leave() {
        let stop = Arc::new(Stop::default());
        let mut gone = Watch::new(stop.clone());
        poll_fn(|cx| {
            assert!(!gone.poll_stopped(cx));
            Poll::Ready(())
        })
        .await;
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let mut watch = Watch::new(stop.clone());
                tokio::spawn(async move { stopped(&mut watch).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(gone);
        assert_eq!(stop.wakers().len(), 3, "the ended connection left");
        assert!(waiting.iter().all(|t| !t.is_finished()));

        stop.stop();
        for task in waiting {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("a stop wakes a waiting connection")
                .unwrap();
        }
        assert!(stop.wakers().is_empty(), "every connection left");
    }

    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_poll_with_another_waker_moves_the_registration() {
        let stop = Arc::new(Stop::default());
        let (first, second) = (
            Arc::new(Flag(AtomicBool::new(false))),
            Arc::new(Flag(AtomicBool::new(false))),
        );
        let mut watch = Watch::new(stop.clone());
        for flag in [&first, &first, &second] {
            let waker = Waker::from(flag.clone());
            assert!(!watch.poll_stopped(&Context::from_waker(&waker)));
        }
        assert_eq!(stop.wakers().len(), 1, "one slot per connection");
        stop.stop();
        assert!(second.0.load(Ordering::SeqCst), "the latest waker is woken");
        assert!(!first.0.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_connection_that_registers_after_the_stop_sees_it() {
        let stop = Arc::new(Stop::default());
        stop.stop();
        let mut late = Watch::new(stop.clone());
        assert!(late.is_stopped());
        stopped(&mut late).await;
    }
}
