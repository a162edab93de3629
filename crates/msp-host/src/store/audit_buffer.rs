//! The in-memory side of the audit log: request handlers append records here, and the store thread takes them
//! all at once and writes them in one transaction, [`AUDIT_FLUSH_INTERVAL`] after the first one arrived (or
//! at once when [`AUDIT_BUFFER_FULL`] are waiting, before any other store operation, and at shutdown).
//!
//! Appending is a push under an uncontended lock: a request neither waits for the disk nor wakes the store
//! thread, except the first record of a batch, which tells the thread to arm its timer. When the buffer is full
//! appenders wait for room; a record is never dropped. This module must never do I/O.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::audit::AuditRecord;

/// Longest time an audit record waits in memory before the store thread writes it (the durability trade:
/// a crash of the process, not an orderly stop, loses at most this much of the log; docs/DECISIONS.md).
pub const AUDIT_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Records waiting in memory at which the store thread writes at once and appenders start to wait.
pub const AUDIT_BUFFER_FULL: usize = 8192;

/// What [`AuditBuffer::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// The buffer was empty: the store thread has to be told to arm its timer.
    First,
    /// Appended behind records already waiting.
    Queued,
    /// Appended, and the buffer is now full: the store thread has to write at once.
    Full,
}

/// Records not yet handed to the store thread.
#[derive(Debug, Default)]
pub(super) struct AuditBuffer {
    records: Mutex<Vec<AuditRecord>>,
    /// Signalled after every take, for appenders waiting on a full buffer.
    room: Notify,
}

impl AuditBuffer {
    fn lock(&self) -> MutexGuard<'_, Vec<AuditRecord>> {
        // A panic while holding this lock cannot leave the Vec half-updated; keep the records.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the record out of `slot` into the buffer, or leaves it there (`None`) when the buffer is full.
    pub(super) fn try_push(&self, slot: &mut Option<AuditRecord>) -> Option<Pushed> {
        let mut records = self.lock();
        if records.len() >= AUDIT_BUFFER_FULL {
            return None;
        }
        records.extend(slot.take());
        Some(match records.len() {
            1 => Pushed::First,
            AUDIT_BUFFER_FULL => Pushed::Full,
            _ => Pushed::Queued,
        })
    }

    /// Appends `record`, waiting for room while the buffer is full; `nudge` is called when the store thread
    /// must act ([`Pushed::First`], [`Pushed::Full`], or a full buffer found on the way in).
    pub(super) async fn push(&self, record: AuditRecord, mut nudge: impl FnMut(Pushed)) {
        let mut slot = Some(record);
        loop {
            // Register for the wake-up before looking, so a take between the look and the wait is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(&mut slot) {
                Some(Pushed::Queued) => return,
                Some(pushed) => return nudge(pushed),
                None => {
                    nudge(Pushed::Full);
                    room.await;
                }
            }
        }
    }

    /// Everything waiting, oldest first, leaving the buffer empty; wakes appenders waiting for room.
    pub(super) fn take(&self) -> Vec<AuditRecord> {
        let taken = std::mem::take(&mut *self.lock());
        self.room.notify_waiters();
        taken
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use msp_core::Mode;

    use super::*;
    use crate::audit::Decision;

    fn record() -> AuditRecord {
        AuditRecord {
            seq: 0,
            time_ms: 1,
            vm: None,
            source: "127.0.0.1".to_owned(),
            endpoint: "imds".to_owned(),
            method: "GET".to_owned(),
            path: "/".to_owned(),
            mode: Mode::Disabled,
            decision: Decision::Rejected,
            reason: None,
            status: 403,
            key_guid: None,
            key_owner: None,
        }
    }

    #[test]
    fn first_queued_full_then_refused_until_taken() {
        let b = AuditBuffer::default();
        let push = |b: &AuditBuffer| {
            let mut slot = Some(record());
            let pushed = b.try_push(&mut slot);
            // The record moved into the buffer exactly when it was accepted.
            assert_eq!(slot.is_none(), pushed.is_some());
            pushed
        };
        assert_eq!(push(&b), Some(Pushed::First));
        assert_eq!(push(&b), Some(Pushed::Queued));
        while b.len() < AUDIT_BUFFER_FULL - 1 {
            assert_eq!(push(&b), Some(Pushed::Queued));
        }
        assert_eq!(push(&b), Some(Pushed::Full));
        assert_eq!(push(&b), None);
        assert_eq!(b.take().len(), AUDIT_BUFFER_FULL);
        assert_eq!(push(&b), Some(Pushed::First));
    }

    #[tokio::test]
    async fn a_waiting_appender_resumes_after_a_take() {
        let b = std::sync::Arc::new(AuditBuffer::default());
        while b.len() < AUDIT_BUFFER_FULL {
            let _ = b.try_push(&mut Some(record()));
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.push(record(), |p| drop(tx.send(p))).await })
        };
        assert_eq!(rx.recv().await, Some(Pushed::Full));
        assert!(!waiter.is_finished());
        assert_eq!(b.take().len(), AUDIT_BUFFER_FULL);
        waiter.await.unwrap();
        assert_eq!(b.len(), 1);
    }
}
