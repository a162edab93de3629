//! Audit records: one per request decision on every front end (spec §12.4: every decision is written to the
//! host's audit log), and the query an operator runs over them.
//!
//! A record names the VM, the endpoint, the mode, the decision and the reason code. It never holds a query
//! string, a header value, a signature or key bytes: only the path, the method and, for key failures, the guid
//! and which VM owns it (spec §12.3 step 2: only the audit log tells another VM's key from an unknown one).

use std::fmt;

use msp_core::{Endpoint, Mode, Reason};
use serde::{Deserialize, Serialize};

/// Longest path kept in a record, in bytes (cut on a character boundary).
pub const MAX_AUDIT_PATH: usize = 1024;
/// Most records one query returns.
pub const MAX_AUDIT_QUERY_ROWS: u32 = 10_000;

/// What the host did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Signed, verified and served (or a secure-channel call that succeeded).
    Allowed,
    /// The endpoint is `disabled`: served without looking at a signature.
    Unchecked,
    /// An exempt request (spec §3.5), accepted unsigned in every mode.
    Exempt,
    /// Failed verification in `audit`: served, the reason recorded (spec §12.4).
    Audited,
    /// Refused (enforce failures, unknown VMs, limits, secure-channel refusals).
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unchecked => "unchecked",
            Decision::Exempt => "exempt",
            Decision::Audited => "audited",
            Decision::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        [
            Decision::Allowed,
            Decision::Unchecked,
            Decision::Exempt,
            Decision::Audited,
            Decision::Rejected,
        ]
        .into_iter()
        .find(|d| d.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The audit spelling of an endpoint: `wireserver`, `hostga`, `imds`.
pub fn endpoint_name(e: Endpoint) -> &'static str {
    match e {
        Endpoint::WireServer => "wireserver",
        Endpoint::HostGaPlugin => "hostga",
        Endpoint::Imds => "imds",
    }
}

/// Parses `wireserver`, `hostga` (or `hostgaplugin`) and `imds`, any case.
pub fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let s = s.to_ascii_lowercase();
    match s.as_str() {
        "wireserver" => Some(Endpoint::WireServer),
        "hostga" | "hostgaplugin" => Some(Endpoint::HostGaPlugin),
        "imds" => Some(Endpoint::Imds),
        _ => None,
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Store sequence number (0 before it is stored).
    #[serde(default)]
    pub seq: i64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The VM the source address maps to; `None` for `VM_UNKNOWN`.
    pub vm: Option<String>,
    /// Source IP address of the connection.
    pub source: String,
    /// `wireserver`, `hostga` or `imds`.
    pub endpoint: String,
    pub method: String,
    /// The path only: never the query (it may carry secrets).
    pub path: String,
    /// The endpoint's mode for this VM at the time (`disabled` when the VM is unknown).
    pub mode: Mode,
    pub decision: Decision,
    /// The reason code of a refusal or an audited failure.
    pub reason: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The key guid the request named, when it named one.
    pub key_guid: Option<String>,
    /// When that guid is another VM's key: that VM (spec §12.3 step 2).
    pub key_owner: Option<String>,
}

impl AuditRecord {
    pub fn reason(&self) -> Option<Reason> {
        self.reason.as_deref().and_then(Reason::from_code)
    }
}

/// Unix milliseconds now (record and report timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Cuts `path` to [`MAX_AUDIT_PATH`] bytes on a character boundary.
pub fn clip_path(path: &str) -> String {
    let mut end = path.len().min(MAX_AUDIT_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path.get(..end).unwrap_or_default().to_owned()
}

/// A filter over the audit log; every field optional, results newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    pub vm: Option<String>,
    /// `wireserver`, `hostga`, `imds`.
    pub endpoint: Option<String>,
    pub decision: Option<Decision>,
    pub reason: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<u64>,
    /// default 100, at most [`MAX_AUDIT_QUERY_ROWS`].
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in ["allowed", "unchecked", "exempt", "audited", "rejected"] {
            assert_eq!(Decision::parse(d).unwrap().as_str(), d);
        }
        for e in Endpoint::ALL {
            assert_eq!(parse_endpoint(endpoint_name(e)), Some(e));
        }
        assert_eq!(parse_endpoint("HostGAPlugin"), Some(Endpoint::HostGaPlugin));
    }

    #[test]
    fn paths_are_clipped_on_char_boundaries() {
        let long = "é".repeat(MAX_AUDIT_PATH);
        let clipped = clip_path(&long);
        assert!(clipped.len() <= MAX_AUDIT_PATH);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
