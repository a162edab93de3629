//! Status, instance view and provisioning (spec §9): the module board, the summaries, the aggregate document,
//! the `status.json` writer and host report, readiness flags and provisioning, and the `gpa status` client.
//!
//! Nothing here may ever hold key bytes or signatures; the document carries only the key guid and incarnation.

pub mod board;
pub mod client;
pub mod provision;
pub mod summary;
pub mod writer;

use std::sync::{Arc, Mutex};

use msp_core::status::AggregateStatus;

pub use board::{Module, StatusBoard};
pub use provision::{ProvisionAnswer, Provisioning};
pub use summary::{Counter, RequestRecord, SummaryKind};

use crate::telemetry::{EventLevel, EventSink};

/// What the proxy and the writer share: the board plus the summaries.
#[derive(Debug)]
pub struct StatusHub {
    pub board: Arc<StatusBoard>,
    summaries: Mutex<summary::Summaries>,
    events: EventSink,
}

impl StatusHub {
    pub fn new(board: Arc<StatusBoard>, events: EventSink) -> StatusHub {
        StatusHub {
            board,
            summaries: Mutex::new(summary::Summaries::default()),
            events,
        }
    }

    /// Records one finished request (spec §8.6); the first occurrence of its key in a bucket also goes out as an
    /// Info event carrying the full record. The proxy calls this for every request it finishes.
    pub fn record(&self, kind: SummaryKind, record: &RequestRecord) {
        self.record_counted(kind, record);
    }

    /// [`StatusHub::record`], returning the entry's counter: the connection counts later requests under the same
    /// key with [`Counter::add`], lock-free, without building their records.
    pub fn record_counted(&self, kind: SummaryKind, record: &RequestRecord) -> Option<Counter> {
        let (first, counter) = self
            .summaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_counted(kind, record, crate::clock::unix_ms_coarse());
        if first {
            let module = match kind {
                SummaryKind::Connection => "ConnectionSummary",
                SummaryKind::FailedAuth => "FailedAuthenticateSummary",
            };
            let text = serde_json::to_string(record).unwrap_or_default();
            self.events.emit(EventLevel::Info, module, &text);
        }
        counter
    }

    /// The aggregate status document now (spec §9.2), served at `/gpa-aggregated-status` and written to
    /// `status.json`.
    pub fn document(&self) -> AggregateStatus {
        let now = crate::clock::unix_ms();
        let mut summaries = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        AggregateStatus {
            timestamp: msp_core::status::format_timestamp(now),
            proxy_agent_status: self.board.proxy_agent_status(),
            proxy_connection_summary: summaries.export(SummaryKind::Connection, now),
            failed_authenticate_summary: summaries.export(SummaryKind::FailedAuth, now),
        }
    }
}
