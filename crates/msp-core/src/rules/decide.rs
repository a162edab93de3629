//! The decision of spec §4.3 with the matching of §4.4: one evaluator for enforce and audit alike; the mode
//! only changes what a denial becomes.
//!
//! This function never looks at raw request text beyond handing it to the canonicaliser, never consults the
//! order of the document, and never allocates per privilege.

use std::sync::Arc;

use super::compile::{CompiledItem, Entry, identity_matches};
use super::doc::Privilege;
use crate::canon::{CanonicalQuery, CanonicalRequest, Request};
use crate::{Claims, Mode, Reason};

/// The outcome of authorizing one request, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward (and sign).
    Allow { by: AllowedBy },
    /// Refuse with `reason` before any byte goes upstream. `privilege` names the privilege the request touched
    /// without a matching identity (`RULE_DENY`).
    Deny {
        reason: Reason,
        privilege: Option<Arc<str>>,
    },
    /// Audit mode: what enforce would have refused; recorded, then forwarded (spec §4.5).
    AuditDeny {
        reason: Reason,
        privilege: Option<Arc<str>>,
    },
}

/// Why a request was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedBy {
    /// The destination has no item (v1): an admitted caller is allowed (spec §4.5).
    NoItem,
    /// The item's mode is `disabled`: rules are not evaluated (spec §4.3).
    ModeDisabled,
    /// An exempt request from an elevated caller (spec §3.5).
    Exempt,
    /// A privilege touched and granted the request, and this assigned identity matched the caller.
    Privilege {
        privilege: Arc<str>,
        identity: Arc<str>,
    },
    /// No privilege touched the request and `defaultAccess` is `allow`.
    DefaultAccess,
}

impl Decision {
    /// The request goes upstream: allowed, or denied in audit only.
    pub fn forwards(&self) -> bool {
        matches!(self, Decision::Allow { .. } | Decision::AuditDeny { .. })
    }

    /// The reason of a denial (enforced or audited).
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, .. } | Decision::AuditDeny { reason, .. } => Some(*reason),
        }
    }

    pub(super) fn deny(reason: Reason) -> Decision {
        Decision::Deny {
            reason,
            privilege: None,
        }
    }
}

/// A denial before the mode is applied.
struct Refusal {
    reason: Reason,
    privilege: Option<Arc<str>>,
}

/// Decides one request against one item (spec §4.3). `item` is `None` when the destination has no item.
pub fn decide(item: Option<&CompiledItem>, request: &Request<'_>, claims: &Claims) -> Decision {
    decide_in(item, request, claims, &mut CanonicalRequest::default())
}

/// [`decide`], canonicalising into `slot` (see [`crate::canon::canonicalize_into`]): the same decision, without
/// an allocation once `slot` has held as long a request.
pub fn decide_in(
    item: Option<&CompiledItem>,
    request: &Request<'_>,
    claims: &Claims,
    slot: &mut CanonicalRequest,
) -> Decision {
    let Some(item) = item else {
        return Decision::Allow {
            by: AllowedBy::NoItem,
        };
    };
    if item.mode() == Mode::Disabled {
        return Decision::Allow {
            by: AllowedBy::ModeDisabled,
        };
    }
    let verdict = match request.canonicalize_into(slot) {
        Ok(()) => evaluate(item, slot, claims),
        Err(e) => Err(Refusal {
            reason: e.reason(),
            privilege: None,
        }),
    };
    match verdict {
        Ok(by) => Decision::Allow { by },
        Err(Refusal { reason, privilege }) if item.mode() == Mode::Audit => {
            Decision::AuditDeny { reason, privilege }
        }
        Err(Refusal { reason, privilege }) => Decision::Deny { reason, privilege },
    }
}

/// The loop of spec §4.3 over the privileges whose pattern is a segment prefix of the request path: shortest
/// prefix first, then name order, so the first allow (and the reported denial) never depends on document order.
fn evaluate(
    item: &CompiledItem,
    request: &CanonicalRequest,
    claims: &Claims,
) -> Result<AllowedBy, Refusal> {
    let mut touched: Option<&Arc<str>> = None;
    let rules = &item.rules;
    for prefix in segment_prefixes(request.path.joined()) {
        let Some(bucket) = item.index.by_pattern.get(prefix) else {
            continue;
        };
        for entry in bucket {
            let Some(privilege) = rules.privileges.get(entry.privilege) else {
                continue;
            };
            if !touches(privilege, &request.query) {
                continue;
            }
            touched.get_or_insert(&entry.name);
            if !grants(privilege, &request.query) {
                continue;
            }
            if let Some(identity) = matching_identity(item, entry, claims) {
                return Ok(AllowedBy::Privilege {
                    privilege: entry.name.clone(),
                    identity,
                });
            }
        }
    }
    match touched {
        Some(privilege) => Err(Refusal {
            reason: Reason::RuleDeny,
            privilege: Some(privilege.clone()),
        }),
        None if item.default_allowed() => Ok(AllowedBy::DefaultAccess),
        None => Err(Refusal {
            reason: Reason::DefaultDeny,
            privilege: None,
        }),
    }
}

/// `""`, then every `/`-bounded prefix of `joined`, then `joined` itself: `""`, `a`, `a/b` for `a/b`.
fn segment_prefixes(joined: &str) -> impl Iterator<Item = &str> {
    let cuts = joined.match_indices('/').map(|(at, _)| at);
    let whole = (!joined.is_empty()).then_some(joined.len());
    std::iter::once(0)
        .chain(cuts)
        .chain(whole)
        .filter_map(|end| joined.get(..end))
}

/// The first assigned identity, in name order, that matches the caller.
fn matching_identity(item: &CompiledItem, entry: &Entry, claims: &Claims) -> Option<Arc<str>> {
    let matches = |i: usize| {
        item.rules
            .identities
            .get(i)
            .is_some_and(|id| identity_matches(id, claims))
    };
    let at = entry.identities.iter().copied().find(|&i| matches(i))?;
    item.index.identity_names.get(at).cloned()
}

/// Every required key is present with at least one equal value (spec §4.4).
fn touches(privilege: &Privilege, query: &CanonicalQuery) -> bool {
    privilege
        .query
        .iter()
        .all(|(k, v)| query.values(k).any(|x| x == v))
}

/// Every required key is present and all its values are equal (spec §4.4).
fn grants(privilege: &Privilege, query: &CanonicalQuery) -> bool {
    privilege.query.iter().all(|(k, v)| {
        let mut values = query.values(k).peekable();
        values.peek().is_some() && values.all(|x| x == v)
    })
}

#[cfg(test)]
mod tests {
    use super::segment_prefixes;

    #[test]
    fn prefixes_are_segment_bounded() {
        assert_eq!(segment_prefixes("").collect::<Vec<_>>(), [""]);
        assert_eq!(segment_prefixes("a").collect::<Vec<_>>(), ["", "a"]);
        assert_eq!(
            segment_prefixes("ab/c/de").collect::<Vec<_>>(),
            ["", "ab", "ab/c", "ab/c/de"]
        );
    }
}
