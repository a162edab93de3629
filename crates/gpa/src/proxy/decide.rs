//! Steps 2–10 of spec §8.2 for one parsed request: everything that is decided before a body byte is read or
//! an upstream byte is sent. Synchronous and free of I/O: the connection loop acts on the [`Verdict`].
//!
//! The order is the spec's, exactly, and every refusal happens here, before any upstream connection exists
//! (conf 76). The snapshot is read once, after the readiness step, and the same one is used for the decision
//! and for signing (spec §4.8). This module must never read the body, touch a socket or log.

use std::net::SocketAddr;
use std::sync::Arc;

use msp_core::canon::{self, CanonicalRequest, Destination, Method};
use msp_core::endpoint::unmap;
use msp_core::rules::{self, Decision};
use msp_core::{Claims, Endpoint, Reason};

use super::head::{Framing, RequestHead};
use super::limits::{MAX_EXEMPT_BODY, MAX_SIGNED_BODY};
use crate::snapshot::Snapshot;
use crate::status::SummaryKind;

/// The local endpoints served by the listener itself (spec §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `/provision` (spec §9.6).
    Provision,
    /// `/gpa-aggregated-status` (spec §9.2).
    AggregatedStatus,
}

/// Who is on the other end of a connection, established once at accept (spec §6, §7.3).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The original destination from the attribution record; `None` for a direct connection.
    pub original_dst: Option<SocketAddr>,
    /// The class of `original_dst` (spec §5.4); `Unknown` for a direct connection.
    pub destination: Destination,
    /// `original_dst` is the proxy listener itself.
    pub dest_is_listener: bool,
    /// The caller's claims; empty ones for a direct or stale connection (summaries only).
    pub claims: Claims,
    /// Why the identity is stale (spec §6); `None` when the claims are real or the connection is direct.
    pub stale: Option<String>,
}

impl Caller {
    fn attributed(&self) -> bool {
        self.original_dst.is_some()
    }

    /// Claims that may be authorized: attributed and not stale.
    pub fn verified_claims(&self) -> Option<&Claims> {
        (self.attributed() && self.stale.is_none()).then_some(&self.claims)
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Answer `reason` and close; record the request under `kind`.
    Refuse {
        reason: Reason,
        kind: SummaryKind,
        detail: String,
    },
    /// Serve a local endpoint.
    Local(Local),
    /// Forward: read the body within `limit`, sign with `snapshot` unless exempt, send, relay.
    Forward(Forward),
}

/// An authorized request, with the snapshot it was decided under.
#[derive(Debug)]
pub struct Forward {
    pub snapshot: Arc<Snapshot>,
    /// Exempt (spec §3.5): unsigned, up to 100 MiB, streamed.
    pub exempt: bool,
    pub limit: u64,
    /// In audit mode, the refusal enforce would have produced (recorded as a failed-auth entry, spec §4.5).
    pub audit: Option<Reason>,
    pub detail: String,
}

fn refuse(reason: Reason) -> Verdict {
    Verdict::Refuse {
        reason,
        kind: SummaryKind::Connection,
        detail: String::new(),
    }
}

/// Decides one request (spec §8.2 steps 2–10). `head` is the request's head bytes; `snapshots` is read only
/// when step 9 is reached. `slot` holds the canonical request while the rules match it (reused, not allocated,
/// from one request to the next).
pub fn decide(
    head: &[u8],
    parsed: &RequestHead,
    caller: &Caller,
    snapshot: impl FnOnce() -> Arc<Snapshot>,
    slot: &mut CanonicalRequest,
) -> Verdict {
    let method_bytes = parsed.method.of(head);
    let target = parsed.target.of(head);
    // 2: the seven methods, case-sensitive (spec §8.3).
    let Some(method) = std::str::from_utf8(method_bytes)
        .ok()
        .and_then(Method::parse)
    else {
        return refuse(Reason::MethodNotAllowed);
    };
    // 3: header values, Upgrade, Connection (spec §3.2, §8.1).
    if parsed.bad_header_value {
        return refuse(Reason::BadHeaderValue);
    }
    if parsed.upgrade {
        return refuse(Reason::UpgradeRefused);
    }
    if parsed.protected_connection {
        return refuse(Reason::ProtectedHeader);
    }
    // 4: a declared length within this request's limit, before any body byte is read (spec §8.4).
    let exempt = rules::is_exempt(method.as_str(), target);
    let limit = if exempt {
        MAX_EXEMPT_BODY
    } else {
        MAX_SIGNED_BODY
    };
    if let Framing::Length(n) = parsed.framing
        && n > limit
    {
        return refuse(Reason::BodyTooLarge);
    }
    // 5: the traversal guard, in every mode (spec §5.2 step 0).
    if let Err(e) = canon::traversal_guard(canon::raw_path(target)) {
        return refuse(e.reason());
    }
    // 6: local endpoints, on direct or WireServer-destined connections only (spec §8.2).
    let local = match target {
        b"/provision" => Some(Local::Provision),
        b"/gpa-aggregated-status" => Some(Local::AggregatedStatus),
        _ => None,
    };
    if let Some(local) = local
        && (!caller.attributed()
            || caller.destination == Destination::Endpoint(Endpoint::WireServer))
    {
        return Verdict::Local(local);
    }
    // 7: attribution.
    if !caller.attributed() {
        return Verdict::Refuse {
            reason: Reason::NoAttribution,
            kind: SummaryKind::FailedAuth,
            detail: "no attribution record for this connection".to_owned(),
        };
    }
    // 8: staleness.
    let Some(claims) = caller.verified_claims() else {
        return Verdict::Refuse {
            reason: Reason::IdentityStale,
            kind: SummaryKind::FailedAuth,
            detail: caller.stale.clone().unwrap_or_default(),
        };
    };
    // 9: readiness; the one snapshot of this request from here on.
    let snapshot = snapshot();
    if !snapshot.ready {
        return refuse(Reason::NotReady);
    }
    // 10: authorize (spec §4.5).
    let request = canon::Request {
        method: method.as_str(),
        target,
        dest: &caller.destination,
        addrs: &snapshot.endpoints,
    };
    let dest_is_listener = caller.dest_is_listener
        || caller
            .original_dst
            .is_some_and(|d| unmap(d) == unmap(snapshot.listen));
    let (audit, detail) =
        match rules::authorize_in(&request, dest_is_listener, claims, &snapshot.items, slot) {
            Decision::Allow { .. } => (None, String::new()),
            Decision::Deny { reason, privilege } => {
                return Verdict::Refuse {
                    reason,
                    kind: SummaryKind::FailedAuth,
                    detail: denial_detail(reason, privilege.as_deref()),
                };
            }
            Decision::AuditDeny { reason, privilege } => {
                (Some(reason), denial_detail(reason, privilege.as_deref()))
            }
        };
    Verdict::Forward(Forward {
        snapshot,
        exempt,
        limit,
        audit,
        detail,
    })
}

fn denial_detail(reason: Reason, privilege: Option<&str>) -> String {
    match privilege {
        Some(p) => format!("{reason} (privilege {p})"),
        None => reason.code().to_owned(),
    }
}
