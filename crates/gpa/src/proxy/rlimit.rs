//! `RLIMIT_NOFILE` (spec §8.4, decided): at start the agent raises its soft limit to
//! `2 × maxConcurrentConnections + FD_RESERVE` (a downstream and an upstream socket per connection, plus the
//! agent's own files and the identity cache's directories: more than the spec's minimum of `2 × cap + 256`);
//! where the hard limit is lower it lowers its connection cap to fit and says so. This module must
//! never lower a limit or raise the hard one.

use super::limits::FD_RESERVE;

/// Raises the soft descriptor limit for `cap` connections; returns the cap that fits (at least 1).
pub fn raise_nofile_limit(cap: u64) -> u64 {
    let want = cap.saturating_mul(2).saturating_add(FD_RESERVE);
    match limits() {
        Ok((soft, _)) if soft >= want => cap,
        Ok((_, hard)) if hard >= want => match set_soft(want, hard) {
            Ok(()) => cap,
            Err(e) => {
                let fitted = fit(current_soft().unwrap_or(0));
                tracing::warn!(error = %e, wanted = want, cap = fitted, "cannot raise RLIMIT_NOFILE; connection cap lowered");
                fitted
            }
        },
        Ok((soft, hard)) => {
            let limit = if set_soft(hard, hard).is_ok() {
                hard
            } else {
                soft
            };
            let fitted = fit(limit).min(cap);
            tracing::warn!(
                hard,
                wanted = want,
                cap = fitted,
                "RLIMIT_NOFILE hard limit below 2 × maxConcurrentConnections + reserve; connection cap lowered"
            );
            fitted
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; keeping the configured connection cap");
            cap
        }
    }
}

/// The connection cap a descriptor limit allows.
fn fit(limit: u64) -> u64 {
    (limit.saturating_sub(FD_RESERVE) / 2).max(1)
}

fn limits() -> nix::Result<(u64, u64)> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
}

fn current_soft() -> nix::Result<u64> {
    limits().map(|(soft, _)| soft)
}

fn set_soft(soft: u64, hard: u64) -> nix::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_covers_two_sockets_per_connection() {
        let cap = raise_nofile_limit(1000);
        let (soft, hard) = limits().unwrap();
        if hard >= 2 * 1000 + FD_RESERVE {
            assert_eq!(cap, 1000);
            assert!(soft >= 2 * 1000 + FD_RESERVE);
        } else {
            assert_eq!(cap, fit(soft));
        }
        assert_eq!(fit(0), 1);
        assert_eq!(fit(2000 + FD_RESERVE), 1000);
        assert_eq!(fit(2000 + FD_RESERVE - 1), 999);
    }
}
