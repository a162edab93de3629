//! Connection and failed-auth summaries (spec §8.6): every finished request is counted under its key in
//! 15-minute buckets kept for 4 hours; the first occurrence of a key in a bucket is reported to the caller so it
//! can send the full record as an Info event.
//!
//! Memory is bounded: at most [`MAX_KEYS_PER_BUCKET`] keys per bucket plus one overflow entry, at most
//! [`BUCKETS_KEPT`] buckets per kind. Time is a parameter (unix ms), so this store is pure and testable.
//!
//! Each entry's count is an atomic that [`Summaries::record`] hands out as a [`Counter`]: a connection that
//! finishes more requests under the same key in the same bucket counts them with one atomic add, without
//! building a record or taking the store's lock (the key of a connection's requests differs only by status).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use msp_core::Claims;
use msp_core::status::SummaryItem;
use serde::Serialize;

/// Bucket width, in milliseconds (spec §8.6).
pub const BUCKET_MS: u64 = 15 * 60 * 1000;
/// Buckets kept: 4 hours (spec §8.6).
pub const BUCKETS_KEPT: usize = 16;
/// Keys per bucket before the overflow entry takes the rest (spec §8.6, decided).
pub const MAX_KEYS_PER_BUCKET: usize = 1_000;
/// Error text in a summary record is cut to this many bytes (spec §8.4).
pub const MAX_ERROR_BYTES: usize = 4_096;
/// Items of each list in a status report to the host (spec §9.3).
pub const REPORT_CONNECTIONS: usize = 100;
pub const REPORT_FAILED: usize = 50;

/// Which list a finished request goes to (spec §8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryKind {
    /// `proxyConnectionSummary`.
    Connection,
    /// `failedAuthenticateSummary`: refusals at steps 7, 8, 10 of §8.2 and audit denials.
    FailedAuth,
}

/// The full record of one finished request (spec §8.6), as sent in the first-occurrence event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    pub id: u64,
    pub method: String,
    pub url: String,
    pub client_ip: String,
    pub client_port: u16,
    pub ip: String,
    pub port: u16,
    pub user_id: u64,
    pub user_name: String,
    pub user_groups: Vec<String>,
    pub process_full_path: String,
    pub process_cmd_line: String,
    pub run_as_elevated: bool,
    /// `"200 OK"` style.
    pub response_status: String,
    /// Milliseconds.
    pub elapsed_time: u64,
    pub error_details: String,
}

impl RequestRecord {
    /// Builds a record from the connection's claims and the request's outcome. The URL and error text are
    /// redacted and cut; the status is rendered `"<code> <reason>"`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        method: &str,
        url: &str,
        claims: &Claims,
        dest: SocketAddr,
        status: http::StatusCode,
        elapsed_ms: u64,
        error: &str,
    ) -> RequestRecord {
        let mut error_details = crate::telemetry::redact(error);
        crate::telemetry::truncate_utf8(&mut error_details, MAX_ERROR_BYTES);
        RequestRecord {
            id,
            method: method.to_owned(),
            url: crate::telemetry::redact(url),
            client_ip: claims.client_ip.clone(),
            client_port: claims.client_port,
            ip: dest.ip().to_string(),
            port: dest.port(),
            user_id: claims.user_id,
            user_name: claims.user_name.to_string(),
            user_groups: claims.user_groups.to_vec(),
            process_full_path: claims.process_full_path.to_string(),
            process_cmd_line: claims.process_cmd_line.to_string(),
            run_as_elevated: claims.run_as_elevated,
            response_status: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
            elapsed_time: elapsed_ms,
            error_details,
        }
    }

    /// `"<userName> <clientIp> <ip> <port> <processFullPath> <processCmdLine> <responseStatus>"` (spec §8.6).
    pub fn key(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.user_name,
            self.client_ip,
            self.ip,
            self.port,
            self.process_full_path,
            self.process_cmd_line,
            self.response_status
        )
    }

    fn item(&self) -> SummaryItem {
        SummaryItem {
            user_name: self.user_name.clone(),
            ip: self.ip.clone(),
            port: self.port,
            process_cmd_line: self.process_cmd_line.clone(),
            response_status: self.response_status.clone(),
            count: 0,
            user_groups: self.user_groups.clone(),
            process_full_path: self.process_full_path.clone(),
        }
    }
}

/// A handle on one entry's count in one bucket, returned when a request is recorded under a key.
#[derive(Debug, Clone)]
pub struct Counter {
    bucket: u64,
    count: Arc<AtomicU64>,
}

impl Counter {
    /// Counts one more request under the same key, if `now_ms` still falls in the entry's bucket; otherwise the
    /// caller records it in full (and gets a counter for the new bucket).
    pub fn add(&self, now_ms: u64) -> bool {
        if now_ms / BUCKET_MS != self.bucket {
            return false;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// An entry: the exported fields (their `count` unused) and the live count.
#[derive(Debug)]
struct Entry {
    item: SummaryItem,
    count: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Bucket {
    index: u64,
    entries: BTreeMap<String, Entry>,
    overflow: u64,
}

/// One list's buckets.
#[derive(Debug, Default)]
struct Buckets {
    buckets: VecDeque<Bucket>,
}

impl Buckets {
    fn record(&mut self, record: &RequestRecord, now_ms: u64) -> (bool, Option<Counter>) {
        let index = now_ms / BUCKET_MS;
        self.expire(now_ms);
        if self.buckets.back().is_none_or(|b| b.index != index) {
            self.buckets.push_back(Bucket {
                index,
                ..Bucket::default()
            });
        }
        let Some(bucket) = self.buckets.back_mut() else {
            return (false, None);
        };
        let key = record.key();
        let counter = |count: &Arc<AtomicU64>| Counter {
            bucket: index,
            count: count.clone(),
        };
        if let Some(entry) = bucket.entries.get(&key) {
            entry.count.fetch_add(1, Ordering::Relaxed);
            return (false, Some(counter(&entry.count)));
        }
        if bucket.entries.len() >= MAX_KEYS_PER_BUCKET {
            bucket.overflow += 1;
            return (false, None);
        }
        let count = Arc::new(AtomicU64::new(1));
        let handle = counter(&count);
        bucket.entries.insert(
            key,
            Entry {
                item: record.item(),
                count,
            },
        );
        (true, Some(handle))
    }

    fn expire(&mut self, now_ms: u64) {
        let oldest_kept = (now_ms / BUCKET_MS).saturating_sub(BUCKETS_KEPT as u64 - 1);
        while self.buckets.front().is_some_and(|b| b.index < oldest_kept) {
            self.buckets.pop_front();
        }
    }

    fn export(&mut self, now_ms: u64) -> Vec<SummaryItem> {
        self.expire(now_ms);
        let mut merged: BTreeMap<&str, SummaryItem> = BTreeMap::new();
        let mut overflow = 0;
        for bucket in &self.buckets {
            overflow += bucket.overflow;
            for (key, entry) in &bucket.entries {
                let count = entry.count.load(Ordering::Relaxed);
                merged
                    .entry(key.as_str())
                    .and_modify(|m| m.count += count)
                    .or_insert_with(|| SummaryItem {
                        count,
                        ..entry.item.clone()
                    });
            }
        }
        // BTreeMap iteration is key order; a stable sort by count keeps it among equal counts.
        let mut items: Vec<SummaryItem> = merged.into_values().collect();
        if overflow > 0 {
            items.push(SummaryItem {
                user_name: "overflow".to_owned(),
                ip: String::new(),
                port: 0,
                process_cmd_line: String::new(),
                response_status: String::new(),
                count: overflow,
                user_groups: Vec::new(),
                process_full_path: String::new(),
            });
        }
        items.sort_by_key(|i| std::cmp::Reverse(i.count));
        items
    }
}

/// Both lists.
#[derive(Debug, Default)]
pub struct Summaries {
    connections: Buckets,
    failed: Buckets,
}

impl Summaries {
    /// Counts one finished request; true when it is the first occurrence of its key in the current bucket.
    pub fn record(&mut self, kind: SummaryKind, record: &RequestRecord, now_ms: u64) -> bool {
        self.record_counted(kind, record, now_ms).0
    }

    /// [`Summaries::record`], also returning the entry's [`Counter`] (none once the bucket overflows).
    pub fn record_counted(
        &mut self,
        kind: SummaryKind,
        record: &RequestRecord,
        now_ms: u64,
    ) -> (bool, Option<Counter>) {
        match kind {
            SummaryKind::Connection => self.connections.record(record, now_ms),
            SummaryKind::FailedAuth => self.failed.record(record, now_ms),
        }
    }

    /// The exported items of a list: count descending, then key (spec §8.6).
    pub fn export(&mut self, kind: SummaryKind, now_ms: u64) -> Vec<SummaryItem> {
        match kind {
            SummaryKind::Connection => self.connections.export(now_ms),
            SummaryKind::FailedAuth => self.failed.export(now_ms),
        }
    }
}

#[cfg(test)]
mod tests;
