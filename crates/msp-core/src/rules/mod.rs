//! Allowlists (spec §4): strict parsing and validation of host items and local rules files, compilation, and
//! the one evaluator shared by the agent (authorize) and the host (audit, simulator).
//!
//! Flow: [`parse_item`] / [`parse_local_file`] (spec §4.1, §4.2) → [`CompiledItem`] (through [`resolve`] or
//! [`build_item`], spec §4.7) → [`authorize`] (spec §4.5) → [`decide`] (spec §4.3, §4.4) → [`Decision`].
//!
//! This module must never: accept a document partly, resolve duplicates by order, let the order of privileges
//! change a decision, compare identities other than byte-exact, match raw URL text (only canonical forms, via
//! `crate::canon`), or have a second code path for audit (audit is a [`Mode`](crate::Mode) given to the same
//! evaluator).

mod authorize;
mod compile;
mod decide;
mod doc;
mod error;
mod fnv;
mod json;
mod local;

pub use authorize::{Items, authorize, authorize_in};
pub use compile::CompiledItem;
pub use decide::{AllowedBy, Decision, decide, decide_in};
pub use doc::{
    DefaultAccess, Identity, ItemDoc, LocalDoc, Privilege, Role, RoleAssignment, RulesDoc,
    parse_item, parse_local_file,
};
pub use error::{JsonPath, JsonSyntax, JsonType, RulesError};
pub use json::{MAX_ARRAY_LEN, MAX_DOCUMENT_BYTES, MAX_NESTING, MAX_STRING_BYTES};
pub use local::{
    Built, EffectiveId, LOCAL_PREFIX, LocalFile, LocalOutcome, build_item, merge, resolve,
};

/// An exempt request (spec §3.5): exactly `PUT /vmagentlog` or `POST /machine/?comp=telemetrydata`, the
/// request-target compared ASCII-case-insensitively, the method exactly. Any other spelling or an extra
/// parameter is an ordinary request.
pub fn is_exempt(method: &str, target: &[u8]) -> bool {
    match method {
        "PUT" => target.eq_ignore_ascii_case(b"/vmagentlog"),
        "POST" => target.eq_ignore_ascii_case(b"/machine/?comp=telemetrydata"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_exempt;

    #[test]
    fn exempt_targets_are_exact() {
        assert!(is_exempt("PUT", b"/vmAgentLog"));
        assert!(is_exempt("POST", b"/machine/?comp=TelemetryData"));
        assert!(!is_exempt("POST", b"/vmagentlog"));
        assert!(!is_exempt("put", b"/vmagentlog"));
        assert!(!is_exempt("POST", b"/machine/?comp=telemetrydata&x=1"));
        assert!(!is_exempt("POST", b"/machine?comp=telemetrydata"));
        assert!(!is_exempt("PUT", b"/vmagentlog/"));
    }
}
