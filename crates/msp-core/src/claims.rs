//! The caller identity of one redirected connection (spec §6).
//!
//! Built once per connection by the agent (`gpa::identity`) from the kernel's attribution record plus NSS and
//! `/proc`; read by the rules (identity selectors), the signer (`isRoot`) and the summaries. Only `isRoot`
//! ever reaches the host (spec §3.2); the full object stays local.
//!
//! What describes the user and the process instance is shared (`Arc`): the agent builds it once per instance and
//! every connection of that instance holds the same strings, so 10,000 connections of one client cost one copy
//! (issue 8). Only the client's address is per connection.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The placeholder for unknown strings in empty claims (spec §6).
pub const EMPTY: &str = "empty";
/// The user name when the uid has no passwd entry, and the command line when it is unreadable (spec §6).
pub const UNDEFINED: &str = "undefined";

/// Who made a connection: uid/gid/pid from the kernel record at `connect()`, names and paths looked up later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Real uid recorded in the kernel during `connect()`.
    pub user_id: u64,
    /// passwd name of `user_id`; [`UNDEFINED`] when there is none.
    pub user_name: Arc<str>,
    /// NSS group list of (`user_name`, primary gid).
    pub user_groups: Arc<[String]>,
    /// TGID recorded during `connect()`.
    pub process_id: u32,
    /// Last component of `process_full_path`.
    pub process_name: Arc<str>,
    /// Target of `/proc/<pid>/exe`; empty when unavailable.
    pub process_full_path: Arc<str>,
    /// First 4 words of the command line, redacted, at most 1,024 bytes; [`UNDEFINED`] when unavailable.
    pub process_cmd_line: Arc<str>,
    /// The real uid at `connect()` was 0.
    pub run_as_elevated: bool,
    /// Peer address of the accepted socket.
    pub client_ip: String,
    /// Peer port of the accepted socket.
    pub client_port: u16,
}

impl Claims {
    /// Claims of a connection without an attribution record: used only in summaries, never authorized (spec §6).
    pub fn empty(client_ip: String, client_port: u16) -> Claims {
        let empty: Arc<str> = EMPTY.into();
        Claims {
            user_id: 0,
            user_name: empty.clone(),
            user_groups: Arc::new([]),
            process_id: 0,
            process_name: empty.clone(),
            process_full_path: empty.clone(),
            process_cmd_line: empty,
            run_as_elevated: false,
            client_ip,
            client_port,
        }
    }

    /// The exact `x-ms-azure-host-claims` value for these claims (spec §3.2 step 3).
    pub fn host_claims_header(&self) -> &'static str {
        host_claims_header(self.run_as_elevated)
    }
}

/// `{ "isRoot": "true"}` or `{ "isRoot": "false"}`: one space after `{` and after `:`, none before `}`.
pub fn host_claims_header(is_root: bool) -> &'static str {
    if is_root {
        r#"{ "isRoot": "true"}"#
    } else {
        r#"{ "isRoot": "false"}"#
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_claims_header_is_byte_exact() {
        assert_eq!(host_claims_header(true), "{ \"isRoot\": \"true\"}");
        assert_eq!(host_claims_header(false), "{ \"isRoot\": \"false\"}");
    }

    #[test]
    fn empty_claims_are_not_elevated() {
        let c = Claims::empty("127.0.0.1".into(), 4000);
        assert!(!c.run_as_elevated);
        assert_eq!(&*c.user_name, "empty");
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("runAsElevated").is_some());
        assert!(json.get("processCmdLine").is_some());
    }
}
