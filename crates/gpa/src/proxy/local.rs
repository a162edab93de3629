//! The two paths the listener serves itself (spec §1.2): `/provision` (spec §9.6) and
//! `/gpa-aggregated-status` (spec §9.2), on direct or WireServer-destined connections (spec §8.2 step 6).
//!
//! Both need a `Metadata` header (400 `METADATA_HEADER_REQUIRED`); the status document also needs an elevated
//! caller (403 `NOT_ELEVATED`: a direct or stale connection has no claims). This module must never put key
//! material into an answer, or wake the key keeper more than the handle allows.

use msp_core::Reason;

use super::conn::Conn;
use super::decide::Local;
use super::response;
use crate::status::provision::parse_time_tick;

/// `x-ms-azure-time-tick`: the caller's tick, unix nanoseconds (spec §9.6).
const TIME_TICK: &[u8] = b"x-ms-azure-time-tick";
/// `x-ms-azure-notify`: wake the key keeper when not finished (spec §9.6).
const NOTIFY: &[u8] = b"x-ms-azure-notify";

impl Conn {
    /// Answers a local endpoint and closes; returns the status and the reason of a refusal.
    pub(super) async fn serve_local(&mut self, local: Local) -> (u16, Option<Reason>) {
        let head_only = self.b.head.method.of(&self.b.head_buf) == b"HEAD";
        let refusal = if self.b.head.field(&self.b.head_buf, b"metadata").is_none() {
            Some(Reason::MetadataHeaderRequired)
        } else if local == Local::AggregatedStatus
            && !self
                .caller
                .verified_claims()
                .is_some_and(|c| c.run_as_elevated)
        {
            Some(Reason::NotElevated)
        } else {
            None
        };
        if let Some(reason) = refusal {
            response::refusal(reason, &mut self.b.out);
            self.write_out().await;
            return (reason.status(), Some(reason));
        }
        let body = match local {
            Local::Provision => {
                let tick = parse_time_tick(self.b.head.field(&self.b.head_buf, TIME_TICK));
                let state = self.shared.snapshots.borrow().channel.state;
                let answer = self.shared.provisioning.answer(tick, state);
                if !answer.finished && self.b.head.field(&self.b.head_buf, NOTIFY).is_some() {
                    self.shared.keeper.notify();
                }
                serde_json::to_vec(&answer)
            }
            Local::AggregatedStatus => serde_json::to_vec(&self.shared.status.document()),
        };
        match body {
            Ok(body) => {
                response::json_ok(&body, head_only, &mut self.b.out);
                self.write_out().await;
                (200, None)
            }
            Err(_) => {
                response::refusal(Reason::Internal, &mut self.b.out);
                self.write_out().await;
                (500, Some(Reason::Internal))
            }
        }
    }
}
