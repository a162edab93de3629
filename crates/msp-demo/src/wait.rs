//! Bounded polling: the harness waits for the system to reach a state, never for a fixed time.

use std::future::Future;
use std::time::Duration;

use crate::error::HarnessError;

/// How often a condition is re-checked.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `probe` until it yields `Some`, at most `limit`.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: limit,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
