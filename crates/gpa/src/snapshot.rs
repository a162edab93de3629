//! The read-mostly state every request needs, as one immutable [`Snapshot`] (spec §4.8, STYLE rule 9).
//!
//! # For the proxy
//!
//! ```text
//! let snap: Arc<Snapshot> = snapshots.borrow().clone();   // once per request, then only `snap`
//! snap.ready                      // §8.2 step 9: false → 503 NOT_READY
//! snap.items.item(endpoint)       // §4.5: HostGAPlugin already maps to the WireServer *host* item
//! snap.channel.modes.get(endpoint)// the single source of truth for the mode (§2.6)
//! snap.key                        // Some(ReadyKey { guid, key, incarnation_id }) → sign (§3.1); None → unsigned
//! snap.date_header()              // x-ms-azure-host-date from the host clock anchor (§2.12)
//! snap.endpoints / snap.listen    // configured fabric addresses and listener (§1.3)
//! ```
//!
//! A request reads exactly one snapshot and uses its key, guid and rules for the whole authorization and
//! signing, so a reload never changes a decision in progress and a key is never paired with another key's guid
//! (conf 23, 56). Only the key keeper publishes; everyone else holds a `watch::Receiver`. A snapshot never
//! changes after it is published, and it is never written to disk or logged (its key prints as `***`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use msp_core::sign::{self, KeyGuid, SigningKey};
use msp_core::wire::ChannelState;
use tokio::sync::watch;

use crate::config::EndpointAddrs;
pub use msp_core::rules::{CompiledItem, Items};

/// A clock sync is refreshed from a status response only when older than this (spec §2.12).
pub const CLOCK_RESYNC_AFTER: Duration = Duration::from_secs(15 * 60);

/// A latched key, ready to sign: guid, key and incarnation always travel together (spec §2.9 step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyKey {
    pub guid: KeyGuid,
    pub key: SigningKey,
    /// The key's own `incarnationId` (spec §2.10: the status document reports this one).
    pub incarnation_id: Option<u32>,
}

/// One published version of the agent's read-mostly state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increases by one with every publication.
    pub epoch: u64,
    /// A status poll succeeded in this process, or the persisted last-known status was loaded (spec §7.5, §8.2
    /// step 9).
    pub ready: bool,
    /// State string, modes and rule ids of the status in force.
    pub channel: ChannelState,
    /// The ready key, or `None` (no key yet, or dropped on `disabled`).
    pub key: Option<ReadyKey>,
    /// The compiled item of each endpoint (spec §4.8).
    pub items: Arc<Items>,
    /// The host clock anchor (spec §2.12).
    pub clock: HostClock,
    /// Configured fabric endpoints (spec §1.3).
    pub endpoints: EndpointAddrs,
    /// Configured proxy listener (spec §1.2).
    pub listen: SocketAddr,
}

impl Snapshot {
    /// The initial snapshot: not ready, state `Unknown`, no key, no items.
    pub fn initial(endpoints: EndpointAddrs, listen: SocketAddr) -> Snapshot {
        Snapshot {
            epoch: 0,
            ready: false,
            channel: ChannelState::default(),
            key: None,
            items: Arc::new(Items::default()),
            clock: HostClock::default(),
            endpoints,
            listen,
        }
    }

    /// The value of `x-ms-azure-host-date` now (spec §2.12).
    pub fn date_header(&self) -> String {
        self.clock.date_header(Instant::now(), SystemTime::now())
    }

    /// [`Snapshot::date_header`] into `buf`, for the request path: no allocation, and formatted once per second
    /// per thread.
    pub fn date_header_into<'b>(&self, buf: &'b mut [u8; sign::HOST_DATE_LEN]) -> &'b [u8] {
        thread_local! {
            static LAST: Cell<sign::HostDateCache> = const { Cell::new(sign::HostDateCache::new()) };
        }
        let now = self.clock.now();
        let len = LAST
            .try_with(|last| {
                let mut cache = last.get();
                let len = copy_into(cache.format(now), buf);
                last.set(cache);
                len
            })
            // A thread being torn down has no cache left: format directly.
            .unwrap_or_else(|_| sign::format_host_date_into(now, buf).len());
        buf.get(..len).unwrap_or_default()
    }
}

/// Copies `text` (a host date, at most `HOST_DATE_LEN` bytes) to the front of `buf`; returns its length.
fn copy_into(text: &[u8], buf: &mut [u8; sign::HOST_DATE_LEN]) -> usize {
    match buf.get_mut(..text.len()) {
        Some(front) => {
            front.copy_from_slice(text);
            text.len()
        }
        None => 0,
    }
}

/// Why a host date could not be taken from a status response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("x-ms-azure-host-date is present but malformed: {0}")]
    HostDateMalformed(#[source] sign::SignError),
    #[error("Date is malformed: {0}")]
    DateMalformed(#[source] sign::SignError),
    #[error("the response carries neither x-ms-azure-host-date nor Date")]
    NoDate,
}

/// The host clock: an anchor `(host_utc, monotonic instant)` set from a status response (spec §2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostClock {
    anchor: Option<(SystemTime, Instant)>,
}

impl HostClock {
    /// Host time at monotonic `now`: `host_utc + (now − instant)`, or `local_now` before the first sync.
    pub fn host_time(&self, now: Instant, local_now: SystemTime) -> SystemTime {
        match self.anchor {
            Some((host_utc, at)) => host_utc + now.saturating_duration_since(at),
            None => local_now,
        }
    }

    /// [`HostClock::host_time`] now, reading only the clock it needs: the monotonic one once synced, the wall
    /// clock before.
    pub fn now(&self) -> SystemTime {
        match self.anchor {
            Some(_) => self.host_time(Instant::now(), SystemTime::UNIX_EPOCH),
            None => SystemTime::now(),
        }
    }

    /// `Www, DD Mmm YYYY HH:MM:SS GMT` of [`HostClock::host_time`].
    pub fn date_header(&self, now: Instant, local_now: SystemTime) -> String {
        sign::format_host_date(self.host_time(now, local_now))
    }

    /// A status response may resync the clock only when the last sync is older than 15 minutes or never
    /// happened (spec §2.12).
    pub fn needs_resync(&self, now: Instant) -> bool {
        self.anchor
            .is_none_or(|(_, at)| now.saturating_duration_since(at) >= CLOCK_RESYNC_AFTER)
    }

    /// The clock after a sync from a response's headers received at `now`: `x-ms-azure-host-date` first; only
    /// when it is absent (or not visible ASCII) the `Date` header. A present but unparseable host date fails the
    /// sync without fallback (conf 28).
    pub fn synced(
        host_date: Option<&[u8]>,
        date: Option<&[u8]>,
        now: Instant,
    ) -> Result<HostClock, ClockError> {
        let visible = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .map(str::to_owned)
        };
        let host_utc = match host_date.and_then(visible) {
            Some(text) => sign::parse_host_date(&text).map_err(ClockError::HostDateMalformed)?,
            None => match date.and_then(visible) {
                Some(text) => sign::parse_host_date(&text).map_err(ClockError::DateMalformed)?,
                None => return Err(ClockError::NoDate),
            },
        };
        Ok(HostClock {
            anchor: Some((host_utc, now)),
        })
    }
}

/// The single writer of snapshots: keeps the parts and publishes a new immutable version on every change.
#[derive(Debug)]
pub struct SnapshotPublisher {
    tx: watch::Sender<Arc<Snapshot>>,
    next: Snapshot,
}

impl SnapshotPublisher {
    pub fn new(initial: Snapshot) -> SnapshotPublisher {
        let (tx, _) = watch::channel(Arc::new(initial.clone()));
        SnapshotPublisher { tx, next: initial }
    }

    /// A receiver for readers (proxy, telemetry, status report, provisioning).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Applies `change` to a copy of the current parts and publishes it with the next epoch.
    pub fn publish(&mut self, change: impl FnOnce(&mut Snapshot)) -> Arc<Snapshot> {
        change(&mut self.next);
        self.next.epoch += 1;
        let snap = Arc::new(self.next.clone());
        self.tx.send_replace(snap.clone());
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Wed, 23 Apr 2025 12:00:00 GMT";

    #[test]
    fn conf_028_dates_follow_the_host_clock_from_the_last_response() {
        let t0 = Instant::now();
        let clock = HostClock::synced(Some(DATE.as_bytes()), None, t0).unwrap();
        let local = SystemTime::UNIX_EPOCH; // far off on purpose: must not be used once synced
        assert_eq!(clock.date_header(t0, local), DATE);
        assert_eq!(
            clock.date_header(t0 + Duration::from_millis(61_500), local),
            "Wed, 23 Apr 2025 12:01:01 GMT"
        );
    }

    /// The request path formats its date through a per-thread cache shared by every snapshot: each snapshot's
    /// requests must still carry the date of its own clock, however the snapshots alternate.
    #[test]
    fn conf_028_request_dates_follow_each_snapshot_clock_through_the_thread_cache() {
        let now = Instant::now();
        let synced_to = |date: &str| {
            let mut snap =
                Snapshot::initial(EndpointAddrs::default(), ([127, 0, 0, 1], 3080).into());
            snap.clock = HostClock::synced(Some(date.as_bytes()), None, now).unwrap();
            snap
        };
        let snapshots = [
            synced_to(DATE),
            synced_to("Thu, 24 Apr 2025 08:30:00 GMT"),
            Snapshot::initial(EndpointAddrs::default(), ([127, 0, 0, 1], 3080).into()),
        ];
        let mut buf = [0u8; sign::HOST_DATE_LEN];
        for _ in 0..3 {
            for snap in &snapshots {
                // A second may end between the calls: the date is one of the two around it.
                let before = snap.date_header();
                let sent = snap.date_header_into(&mut buf).to_vec();
                let after = snap.date_header();
                assert!(
                    sent == before.as_bytes() || sent == after.as_bytes(),
                    "{:?} is neither {before:?} nor {after:?}",
                    String::from_utf8_lossy(&sent)
                );
            }
        }
    }

    #[test]
    fn conf_028_unparseable_host_date_does_not_fall_back_to_date() {
        let now = Instant::now();
        let err = HostClock::synced(Some(b"yesterday"), Some(DATE.as_bytes()), now).unwrap_err();
        assert!(matches!(err, ClockError::HostDateMalformed(_)), "{err:?}");
        // RFC 850 is not the profile's format either.
        let err =
            HostClock::synced(Some(b"Wednesday, 23-Apr-25 12:00:00 GMT"), None, now).unwrap_err();
        assert!(matches!(err, ClockError::HostDateMalformed(_)));
    }

    #[test]
    fn conf_028_date_is_used_only_when_host_date_is_absent_or_not_visible_ascii() {
        let now = Instant::now();
        let c = HostClock::synced(None, Some(DATE.as_bytes()), now).unwrap();
        assert_eq!(c.date_header(now, SystemTime::UNIX_EPOCH), DATE);
        let c = HostClock::synced(Some(b"Wed,\x0123"), Some(DATE.as_bytes()), now).unwrap();
        assert_eq!(c.date_header(now, SystemTime::UNIX_EPOCH), DATE);
        assert_eq!(HostClock::synced(None, None, now), Err(ClockError::NoDate));
    }

    #[test]
    fn conf_028_local_time_before_the_first_sync_and_resync_every_15_minutes() {
        let now = Instant::now();
        let clock = HostClock::default();
        let local = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
        assert_eq!(
            clock.date_header(now, local),
            "Fri, 02 Jan 1970 00:00:00 GMT"
        );
        assert!(clock.needs_resync(now));
        let synced = HostClock::synced(Some(DATE.as_bytes()), None, now).unwrap();
        assert!(!synced.needs_resync(now + Duration::from_secs(14 * 60 + 59)));
        assert!(synced.needs_resync(now + CLOCK_RESYNC_AFTER));
    }

    #[test]
    fn publisher_increments_epoch_and_readers_see_whole_versions() {
        let endpoints = crate::config::Config::default().endpoints();
        let mut p = SnapshotPublisher::new(Snapshot::initial(
            endpoints,
            "127.0.0.1:3080".parse().unwrap(),
        ));
        let rx = p.subscribe();
        let held = rx.borrow().clone();
        let key = ReadyKey {
            guid: KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap(),
            key: SigningKey::from_bytes([7; 32]),
            incarnation_id: Some(1),
        };
        let s1 = p.publish(|s| {
            s.ready = true;
            s.key = Some(key.clone());
        });
        assert_eq!(s1.epoch, 1);
        assert_eq!(rx.borrow().epoch, 1);
        assert!(
            held.key.is_none() && !held.ready,
            "a held snapshot never changes"
        );
        let s2 = p.publish(|s| s.key = None);
        assert_eq!(s2.epoch, 2);
        assert!(s1.key.is_some());
        assert!(format!("{s1:?}").contains("***") && !format!("{s1:?}").contains("0707"));
    }
}
