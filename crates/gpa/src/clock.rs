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

/// Nanoseconds since the unix epoch (provisioning ticks, spool and rules file names).
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
