//! The per-destination authorizer of spec §4.5: destination, exemption and elevation first, then the item.
//!
//! This function never lets a request for a non-fabric destination through, never applies local rules to
//! HostGAPlugin, and never turns a `NOT_ELEVATED` or `DEST_FORBIDDEN` into an audit-only record.

use super::compile::CompiledItem;
use super::decide::{AllowedBy, Decision, decide_in};
use super::is_exempt;
use crate::canon::{CanonicalRequest, Destination, Request};
use crate::{Claims, Endpoint, Reason};

/// The compiled items of one snapshot (spec §4.8), one per destination.
#[derive(Debug, Clone, Default)]
pub struct Items {
    /// The effective WireServer item: the host item, merged with a local file when opted in (spec §4.7).
    pub wireserver: Option<CompiledItem>,
    /// The effective IMDS item, likewise.
    pub imds: Option<CompiledItem>,
    /// The WireServer **host** item compiled alone, never merged with local rules: HostGAPlugin requests are
    /// decided by it (spec §4.5, §4.7). The status's own `hostga` item is validated but not applied (§2.6).
    pub hostga: Option<CompiledItem>,
}

impl Items {
    /// The item that decides requests to `endpoint`.
    pub fn item(&self, endpoint: Endpoint) -> Option<&CompiledItem> {
        match endpoint {
            Endpoint::WireServer => self.wireserver.as_ref(),
            Endpoint::HostGaPlugin => self.hostga.as_ref(),
            Endpoint::Imds => self.imds.as_ref(),
        }
    }
}

/// Authorizes one request (spec §4.5). `request.dest` is the original destination from the attribution record;
/// `listener_is_dest` says that destination is the proxy listener itself.
pub fn authorize(
    request: &Request<'_>,
    listener_is_dest: bool,
    claims: &Claims,
    items: &Items,
) -> Decision {
    authorize_in(
        request,
        listener_is_dest,
        claims,
        items,
        &mut CanonicalRequest::default(),
    )
}

/// [`authorize`], canonicalising into `slot`: the proxy keeps one per request buffer set, so that authorizing a
/// request does not allocate (issue 8).
pub fn authorize_in(
    request: &Request<'_>,
    listener_is_dest: bool,
    claims: &Claims,
    items: &Items,
    slot: &mut CanonicalRequest,
) -> Decision {
    let endpoint = match request.dest {
        Destination::Endpoint(endpoint) if !listener_is_dest => *endpoint,
        _ => return Decision::deny(Reason::DestForbidden),
    };
    if claims.run_as_elevated && is_exempt(request.method, request.target) {
        return Decision::Allow {
            by: AllowedBy::Exempt,
        };
    }
    if endpoint.elevated_only() && !claims.run_as_elevated {
        return Decision::deny(Reason::NotElevated);
    }
    decide_in(items.item(endpoint), request, claims, slot)
}
