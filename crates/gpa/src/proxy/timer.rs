//! One timer per connection for all of its waits (the limits of spec §8.4: head, idle, body, upstream
//! response, writes).
//!
//! A wait that is done at once reads no clock and touches no timer. A wait that has to wait arms the
//! connection's timer, which then moves forward from one wait to the next. Moving a registered timer later is an
//! atomic update of its entry (tokio's `Sleep::reset`), where a timer made and dropped per wait takes the lock of
//! the runtime's timer wheel twice. So the waits of a keep-alive request take no lock: the connection's timer is
//! registered once, when it first waits, and removed once, when it closes. A deadline earlier than the armed one
//! (a head that arrives in pieces) registers again.
//!
//! This module must never let a wait run past its deadline, or start counting a limit later than the moment its
//! wait first had to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

/// When a wait gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// At this instant.
    At(Instant),
    /// This long after the wait first has to wait. It becomes [`Deadline::At`] then, so later waits under the
    /// same `Deadline` share its end (the reads of one response head, of one request head).
    After(Duration),
}

impl Deadline {
    /// Counts a limit not yet fixed from `from`, when its wait began before it had to wait (a poll first).
    pub(super) fn count_from(&mut self, from: Instant) {
        if let Deadline::After(limit) = *self {
            *self = Deadline::At(after(from, limit));
        }
    }

    /// The instant, fixed now if it was not yet.
    fn fix(&mut self) -> Instant {
        match *self {
            Deadline::At(at) => at,
            Deadline::After(limit) => {
                let at = after(Instant::now(), limit);
                *self = Deadline::At(at);
                at
            }
        }
    }
}

/// `from + limit`, with the limit capped at about 30 years (tokio's own far future). The configuration caps its
/// timeouts at a year, but a `Config` built in code is not validated, and tokio rounds a deadline up by one more
/// millisecond: an instant near the clock's end would overflow there.
pub(super) fn after(from: Instant, limit: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    from.checked_add(limit.min(FAR)).unwrap_or(from)
}

/// A connection's timer. Made unarmed: nothing is registered until a wait has to wait.
pub(super) struct Timer(Pin<Box<Sleep>>);

impl Timer {
    /// A timer whose first deadline would be `at`; it is registered only when a wait arms it.
    pub(super) fn new(at: Instant) -> Timer {
        Timer(Box::pin(sleep_until(at)))
    }

    /// Runs `fut` until it is done, or until `deadline` passes (`None`). `fut` is polled first, so a future
    /// that is ready is never timed out.
    pub(super) fn within<'t, F: Future>(
        &'t mut self,
        deadline: &'t mut Deadline,
        fut: F,
    ) -> Within<'t, F> {
        Within {
            fut,
            timer: self,
            deadline,
            armed: false,
        }
    }

    /// [`within`](Self::within) a limit counted from when `fut` first has to wait.
    pub(super) async fn within_for<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Option<F::Output> {
        self.within(&mut Deadline::After(limit), fut).await
    }
}

pin_project! {
    /// [`Timer::within`]'s wait. A named future rather than an `async fn`, so that `fut` is held once: an idle
    /// keep-alive connection's task holds this wait for as long as the connection stays open.
    pub(super) struct Within<'t, F> {
        #[pin]
        fut: F,
        timer: &'t mut Timer,
        deadline: &'t mut Deadline,
        armed: bool,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !*this.armed {
            *this.armed = true;
            this.timer.0.as_mut().reset(this.deadline.fix());
        }
        this.timer.0.as_mut().poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_is_never_timed_out_and_arms_nothing() {
        let mut timer = Timer::new(Instant::now());
        // The deadline is already past, but the future is ready: polled first, it wins.
        let mut deadline = Deadline::After(Duration::ZERO);
        assert_eq!(timer.within(&mut deadline, async { 7 }).await, Some(7));
        assert_eq!(
            deadline,
            Deadline::After(Duration::ZERO),
            "no wait, no clock read, nothing armed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline_and_later_waits_share_it() {
        let mut timer = Timer::new(Instant::now());
        let start = Instant::now();
        let mut deadline = Deadline::After(Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(3)).await;
        let slept = timer
            .within(&mut deadline, tokio::time::sleep(Duration::from_secs(4)))
            .await;
        assert_eq!(slept, Some(()), "done within its limit");
        let Deadline::At(at) = deadline else {
            panic!("a wait that waited fixes its deadline");
        };
        assert_eq!(at, start + Duration::from_secs(13), "counted from the wait");

        // A second wait under the same deadline ends where the first one's would have.
        assert_eq!(timer.within(&mut deadline, pending::<()>()).await, None);
        assert_eq!(Instant::now(), start + Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_moves_forward_and_back_between_waits() {
        let mut timer = Timer::new(Instant::now() + Duration::from_secs(1));
        let start = Instant::now();
        for limit in [60, 5, 30, 1] {
            let begun = Instant::now();
            assert_eq!(
                timer
                    .within_for(Duration::from_secs(limit), pending::<()>())
                    .await,
                None
            );
            assert_eq!(
                Instant::now() - begun,
                Duration::from_secs(limit),
                "each wait ends at its own limit, earlier or later than the last"
            );
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(96));
    }

    #[tokio::test(start_paused = true)]
    async fn a_registered_timer_moves_later_and_earlier_after_early_finishes() {
        let mut timer = Timer::new(Instant::now());
        let start = Instant::now();
        let one = || tokio::time::sleep(Duration::from_secs(1));
        // Registered at +60 s, done after 1 s; then moved later (+61 s from the start), done again.
        assert_eq!(
            timer.within_for(Duration::from_secs(60), one()).await,
            Some(())
        );
        assert_eq!(
            timer.within_for(Duration::from_secs(60), one()).await,
            Some(())
        );
        // Moved earlier, still registered at +62 s: it must end at +2 + 5 s, not at the later deadline.
        assert_eq!(
            timer
                .within_for(Duration::from_secs(5), pending::<()>())
                .await,
            None
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_too_large_to_add_wait_without_panicking() {
        let mut timer = Timer::new(Instant::now());
        let huge_limits = [
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            Duration::from_secs(i64::MAX.unsigned_abs()),
        ];
        for huge in huge_limits {
            let done = timer
                .within_for(huge, tokio::time::sleep(Duration::from_secs(86_400)))
                .await;
            assert_eq!(done, Some(()), "{huge:?}");
        }
    }
}
