//! The enforcement decision (spec §12.3, §12.4): given the endpoint, its mode and what verification found,
//! serve, serve-and-record, or refuse.
//!
//! Pure, and the only place where a mode turns into a verdict, so audit and enforce can never drift apart.
//! This module must never look at a request's bytes; verification is `msp_core::sign::verify_request`.

use msp_core::sign::Verified;
use msp_core::{Endpoint, Mode, Reason};

use crate::audit::Decision;

/// What the host does with a non-exempt request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it. `reason` is the failure an audit-mode endpoint recorded.
    Serve {
        decision: Decision,
        reason: Option<Reason>,
    },
    /// Refuse with this reason (its status: 401, or 403 for `NOT_ELEVATED`).
    Refuse(Reason),
}

/// Applies the mode to a verification result. `verification` is `None` when the endpoint is `disabled` and
/// nothing was checked.
pub fn decide(
    endpoint: Endpoint,
    mode: Mode,
    verification: Option<&Result<Verified, Reason>>,
) -> Verdict {
    let failure = match verification {
        None => None,
        Some(Err(reason)) => Some(*reason),
        // spec §12.3 step 6: WireServer and HostGAPlugin serve elevated callers only.
        Some(Ok(v)) if endpoint.elevated_only() && !v.is_root => Some(Reason::NotElevated),
        Some(Ok(_)) => None,
    };
    match (mode, failure) {
        (Mode::Disabled, _) => Verdict::Serve {
            decision: Decision::Unchecked,
            reason: None,
        },
        (_, None) => Verdict::Serve {
            decision: Decision::Allowed,
            reason: None,
        },
        (Mode::Audit, Some(reason)) => Verdict::Serve {
            decision: Decision::Audited,
            reason: Some(reason),
        },
        (Mode::Enforce, Some(reason)) => Verdict::Refuse(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msp_core::sign::KeyGuid;

    fn ok(is_root: bool) -> Result<Verified, Reason> {
        Ok(Verified {
            key_guid: KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap(),
            is_root,
        })
    }

    #[test]
    fn enforce_refuses_failures_and_non_root_on_wireserver_only() {
        let e = Endpoint::WireServer;
        assert_eq!(
            decide(e, Mode::Enforce, Some(&Err(Reason::SigMismatch))),
            Verdict::Refuse(Reason::SigMismatch)
        );
        assert_eq!(
            decide(e, Mode::Enforce, Some(&ok(false))),
            Verdict::Refuse(Reason::NotElevated)
        );
        assert!(matches!(
            decide(Endpoint::Imds, Mode::Enforce, Some(&ok(false))),
            Verdict::Serve {
                decision: Decision::Allowed,
                ..
            }
        ));
        assert_eq!(
            decide(Endpoint::HostGaPlugin, Mode::Enforce, Some(&ok(false))),
            Verdict::Refuse(Reason::NotElevated)
        );
    }

    #[test]
    fn audit_serves_and_records_disabled_serves() {
        assert_eq!(
            decide(Endpoint::Imds, Mode::Audit, Some(&Err(Reason::AuthMissing))),
            Verdict::Serve {
                decision: Decision::Audited,
                reason: Some(Reason::AuthMissing)
            }
        );
        assert_eq!(
            decide(Endpoint::Imds, Mode::Disabled, None),
            Verdict::Serve {
                decision: Decision::Unchecked,
                reason: None
            }
        );
    }
}
