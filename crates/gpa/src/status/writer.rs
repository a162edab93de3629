//! The status writer (spec §9.1, §9.3): writes `<logFolder>/status.json` at once, every
//! `monitorIntervalInSeconds`, and within 1 s of any module change (at most once per second), atomically and
//! 0640; and, with `reportStatusToHost`, sends the same document to the configured WireServer each run.
//!
//! It must never write key bytes or signatures (the document has none), never follow a symlink at the status
//! path, and never retry a failed report before its next run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msp_core::status::{AggregateStatus, ModuleState};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StatusHub;
use super::board::Module;
use super::summary::{REPORT_CONNECTIONS, REPORT_FAILED};
use crate::config::EndpointAddrs;
use crate::hostcall::{HostCallError, HostClient, OwnCall};
use crate::snapshot::Snapshot;
use crate::storage::{self, SecureDir};

/// The status file's name in `logFolder` (spec §9.1).
pub const STATUS_FILE: &str = "status.json";
/// Change-driven writes are at least this far apart (spec §9.1, decided).
pub const MIN_WRITE_GAP: Duration = Duration::from_secs(1);

/// Sends the document to `msp-host` (spec §9.3, extension).
pub struct HostReporter {
    pub client: HostClient,
    pub endpoints: EndpointAddrs,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl HostReporter {
    /// `PUT /machine?comp=proxyagentstatus`, signed when a key is ready, summaries cut to 100 and 50.
    pub async fn report(&self, doc: &AggregateStatus) -> Result<(), HostCallError> {
        let mut doc = doc.clone();
        doc.proxy_connection_summary.truncate(REPORT_CONNECTIONS);
        doc.failed_authenticate_summary.truncate(REPORT_FAILED);
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let snap = self.snapshots.borrow().clone();
        let call = OwnCall {
            method: http::Method::PUT,
            dest: self.endpoints.wireserver,
            target: "/machine?comp=proxyagentstatus".to_owned(),
            headers: vec![("content-type", "application/json; charset=utf-8".to_owned())],
            body: Bytes::from(body),
            date: snap.date_header(),
            sign: snap.key.as_ref(),
        };
        self.client
            .call(call)
            .await
            .and_then(|r| r.expect(|s| s.is_success()))
            .map(drop)
    }
}

/// The writer task.
pub struct StatusWriter {
    pub hub: Arc<StatusHub>,
    /// `None` when `logFolder` is empty: no file, the report still runs.
    pub log_dir: Option<PathBuf>,
    pub interval: Duration,
    pub reporter: Option<HostReporter>,
}

impl StatusWriter {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.hub.board.subscribe();
        loop {
            let written_at = Instant::now();
            self.mark_monitor();
            changes.borrow_and_update();
            self.write_document().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(written_at + self.interval) => {}
                changed = changes.changed() => {
                    if changed.is_err() { return; }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep_until(written_at + MIN_WRITE_GAP) => {}
                    }
                }
            }
        }
    }

    /// One run: the file, then the report.
    pub async fn write_once(&self) {
        self.mark_monitor();
        self.write_document().await;
    }

    /// Sets the monitor message before the document is built, so the file shows the message it is written with
    /// and writing it is not itself a change.
    fn mark_monitor(&self) {
        if let Some(dir) = &self.log_dir {
            let message = format!(
                "Aggregate status written to status file: {}",
                dir.join(STATUS_FILE).display()
            );
            self.hub
                .board
                .set(Module::Monitor, ModuleState::Running, message);
        }
    }

    async fn write_document(&self) {
        let doc = self.hub.document();
        if let Some(dir) = &self.log_dir {
            let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            let written = SecureDir::open_or_create(dir, storage::LOG_DIR_MODE)
                .and_then(|d| d.write_atomic(STATUS_FILE, &bytes, storage::SHARED_FILE_MODE));
            if let Err(e) = written {
                let message = format!("Failed to write status file: {e}");
                self.hub
                    .board
                    .set(Module::Monitor, ModuleState::Running, message);
            }
        }
        if let Some(reporter) = &self.reporter
            && let Err(e) = reporter.report(&doc).await
        {
            tracing::warn!(error = %e, "status report to the host failed");
        }
    }
}

#[cfg(test)]
mod tests;
