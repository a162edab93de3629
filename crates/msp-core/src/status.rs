//! The aggregate status document (spec §9.2): what `status.json`, `/gpa-aggregated-status`, `gpa status` and the
//! host's instance view show operators.
//!
//! Field names are exactly the spec's. This module only models and evaluates the document; writing it, serving it
//! and timing it are the agent's job. Nothing here may ever hold key bytes or signatures.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A module's state (spec §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModuleState {
    #[default]
    Unknown,
    Running,
    Stopped,
}

/// The overall `status`: `SUCCESS` iff key latch, eBPF program and listener are all `RUNNING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OverallState {
    /// Before the first evaluation.
    #[default]
    Unknown,
    Success,
    Error,
}

/// The default message of a module that has not reported yet.
pub const STATUS_UNKNOWN_MESSAGE: &str = "Status unknown.";

/// One module's status and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub status: ModuleState,
    pub message: String,
}

impl Default for ModuleStatus {
    fn default() -> Self {
        ModuleStatus {
            status: ModuleState::Unknown,
            message: STATUS_UNKNOWN_MESSAGE.to_owned(),
        }
    }
}

impl ModuleStatus {
    pub fn new(status: ModuleState, message: impl Into<String>) -> ModuleStatus {
        ModuleStatus {
            status,
            message: message.into(),
        }
    }
}

/// Well-known keys of `keyLatchStatus.states` (spec §9.2). Readers match them case-insensitively.
pub mod state_keys {
    pub const SECURE_CHANNEL_STATE: &str = "secureChannelState";
    pub const WIRESERVER_RULE_ID: &str = "wireServerRuleId";
    pub const IMDS_RULE_ID: &str = "imdsRuleId";
    pub const HOSTGA_RULE_ID: &str = "hostGARuleId";
    pub const KEY_GUID: &str = "keyGuid";
    pub const KEY_INCARNATION_ID: &str = "keyIncarnationId";
    pub const WIRESERVER_RULES_ERROR: &str = "wireServerRulesError";
    pub const IMDS_RULES_ERROR: &str = "imdsRulesError";
    pub const HOSTGA_RULES_ERROR: &str = "hostGARulesError";
}

/// The key keeper's status: a module status plus the `states` string map.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyLatchStatus {
    pub status: ModuleState,
    pub message: String,
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

impl KeyLatchStatus {
    /// Looks a `states` key up case-insensitively (`WireserverRuleId` finds `wireServerRuleId`).
    pub fn state(&self, key: &str) -> Option<&str> {
        self.states
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// The `proxyAgentStatus` object: the instance view's message (spec §9.3).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyAgentStatus {
    pub version: String,
    pub status: OverallState,
    pub monitor_status: ModuleStatus,
    pub key_latch_status: KeyLatchStatus,
    pub ebpf_program_status: ModuleStatus,
    pub proxy_listener_status: ModuleStatus,
    pub telemetry_logger_status: ModuleStatus,
    /// Counts HTTP requests, despite its name.
    pub proxy_connections_count: u64,
}

impl ProxyAgentStatus {
    /// `SUCCESS` iff key latch, eBPF program and listener are all `RUNNING`, else `ERROR` (spec §9.2).
    pub fn evaluate(&self) -> OverallState {
        let running = [
            self.key_latch_status.status,
            self.ebpf_program_status.status,
            self.proxy_listener_status.status,
        ]
        .iter()
        .all(|s| *s == ModuleState::Running);
        if running {
            OverallState::Success
        } else {
            OverallState::Error
        }
    }
}

/// One exported summary item: exactly the eight fields of spec §8.6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryItem {
    pub user_name: String,
    pub ip: String,
    pub port: u16,
    pub process_cmd_line: String,
    /// `"200 OK"` style.
    pub response_status: String,
    pub count: u64,
    pub user_groups: Vec<String>,
    pub process_full_path: String,
}

/// The whole document of `status.json` and `/gpa-aggregated-status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregateStatus {
    /// UTC `YYYY-MM-DDTHH:MM:SS.mmm`, no zone suffix ([`format_timestamp`]).
    pub timestamp: String,
    pub proxy_agent_status: ProxyAgentStatus,
    #[serde(default)]
    pub proxy_connection_summary: Vec<SummaryItem>,
    #[serde(default)]
    pub failed_authenticate_summary: Vec<SummaryItem>,
}

/// Formats unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmm` (status, events; spec §9.2, §11.1).
pub fn format_timestamp(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
