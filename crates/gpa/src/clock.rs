//! Wall-clock and uptime readings for the agent's I/O shells. Pure code takes these values as parameters; only
//! shells call this module.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the process start; the first call wins. `gpa run` calls it first thing.
pub fn mark_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the agent started (monotonic), the `<uptime>` of status messages.
pub fn uptime() -> Duration {
    mark_start().elapsed()
}

/// Milliseconds since the unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the unix epoch from the kernel's coarse clock: as of the last timer tick (a few
/// milliseconds old at most), and several times cheaper to read than [`unix_ms`]. For the request path: the
/// summaries' buckets and timestamps, which all read this one clock.
pub fn unix_ms_coarse() -> u64 {
    #[cfg(target_os = "linux")]
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE) {
        let (secs, nanos) = (t.tv_sec(), t.tv_nsec());
        if let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u64::try_from(nanos)) {
            return secs.saturating_mul(1000).saturating_add(nanos / 1_000_000);
        }
    }
    unix_ms()
}

/// Nanoseconds since the unix epoch (provisioning ticks, spool and rules file names).
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_the_wall_clock_as_of_the_last_tick() {
        let before = unix_ms();
        let coarse = unix_ms_coarse();
        let after = unix_ms();
        // A tick is at most 10 ms (HZ ≥ 100); the coarse clock never runs ahead of the precise one.
        assert!(coarse <= after, "{coarse} > {after}");
        assert!(
            coarse + 10 >= before,
            "{coarse} is more than a tick before {before}"
        );
    }
}
