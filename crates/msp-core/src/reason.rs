//! Stable reason codes and the HTTP status each one maps to, for the agent (spec §8.5) and the host (spec §12).
//!
//! These strings appear in `x-msp-reason` headers, JSON error bodies, summaries and audit logs, and tests
//! assert them: never rename one. Each crate maps a refusal to a response through [`Reason::status`] only.

use std::fmt;

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal), )*) => {
        /// A typed reason for refusing (or, in audit mode, recording) a request.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The stable wire code, e.g. `NOT_ELEVATED`.
            pub fn code(self) -> &'static str {
                match self { $( Reason::$variant => $code, )* }
            }

            /// The HTTP status a response refusing for this reason carries.
            pub fn status(self) -> u16 {
                match self { $( Reason::$variant => $status, )* }
            }
        }
    };
}

reasons! {
    // --- agent: request framing and headers (spec §8.1, §3.2)
    /// Malformed request line or header, smuggling-prone framing, unsupported target form.
    BadRequest = ("BAD_REQUEST", 400),
    /// A header value with a byte other than HTAB, SP or 0x21–0x7E.
    BadHeaderValue = ("BAD_HEADER_VALUE", 400),
    /// An `Upgrade` header: nothing is ever tunnelled.
    UpgradeRefused = ("UPGRADE_REFUSED", 400),
    /// `Connection` names `Host`, `Content-Length`, `Transfer-Encoding` or an `x-ms-azure-host-*` header.
    ProtectedHeader = ("PROTECTED_HEADER", 400),
    /// A local endpoint, or IMDS on the host, requires a `Metadata` header.
    MetadataHeaderRequired = ("METADATA_HEADER_REQUIRED", 400),
    // --- canonicalisation (spec §5.6)
    CanonTraversal = ("CANON_TRAVERSAL", 400),
    CanonSegment = ("CANON_SEGMENT", 400),
    CanonScheme = ("CANON_SCHEME", 405),
    CanonMethod = ("CANON_METHOD", 405),
    CanonUserinfo = ("CANON_USERINFO", 400),
    CanonPct = ("CANON_PCT", 400),
    CanonOverlong = ("CANON_OVERLONG", 400),
    CanonUtf8 = ("CANON_UTF8", 400),
    CanonNonAscii = ("CANON_NON_ASCII", 400),
    CanonCtrl = ("CANON_CTRL", 400),
    CanonUnderflow = ("CANON_UNDERFLOW", 400),
    CanonEmbq = ("CANON_EMBQ", 400),
    CanonHost = ("CANON_HOST", 400),
    CanonPort = ("CANON_PORT", 400),
    // --- authorization (spec §4.5, §6)
    /// A non-root caller to WireServer or HostGAPlugin, or a non-root status report to the host.
    NotElevated = ("NOT_ELEVATED", 403),
    /// The request touched a privilege but no assigned identity matched.
    RuleDeny = ("RULE_DENY", 403),
    /// No privilege matched and `defaultAccess` is `deny`.
    DefaultDeny = ("DEFAULT_DENY", 403),
    /// The destination is not a fabric endpoint (or is the listener itself).
    DestForbidden = ("DEST_FORBIDDEN", 403),
    /// The process that connected exited, or its pid was reused, before the agent read it.
    IdentityStale = ("IDENTITY_STALE", 403),
    // --- agent: method, limits, attribution, readiness (spec §8.2–§8.5)
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405),
    HeaderTimeout = ("HEADER_TIMEOUT", 408),
    BodyTooLarge = ("BODY_TOO_LARGE", 413),
    UriTooLong = ("URI_TOO_LONG", 414),
    HeadersTooLarge = ("HEADERS_TOO_LARGE", 431),
    /// A connection with no kernel attribution record (a direct connect to the listener).
    NoAttribution = ("NO_ATTRIBUTION", 421),
    SigningFailed = ("SIGNING_FAILED", 500),
    Internal = ("INTERNAL", 500),
    UpstreamConnect = ("UPSTREAM_CONNECT", 502),
    UpstreamProtocol = ("UPSTREAM_PROTOCOL", 502),
    UpstreamSend = ("UPSTREAM_SEND", 503),
    NotReady = ("NOT_READY", 503),
    Overloaded = ("OVERLOADED", 503),
    UpstreamTimeout = ("UPSTREAM_TIMEOUT", 504),
    // --- host verification (spec §12.2, §12.3)
    AuthMissing = ("AUTH_MISSING", 401),
    AuthMalformed = ("AUTH_MALFORMED", 401),
    /// Not this VM's latched key (another VM's, an old one, or none). 404 on the attestation route.
    KeyUnknown = ("KEY_UNKNOWN", 401),
    DateMissing = ("DATE_MISSING", 401),
    DateSkew = ("DATE_SKEW", 401),
    ClaimsInvalid = ("CLAIMS_INVALID", 401),
    SigMismatch = ("SIG_MISMATCH", 401),
    /// The source address maps to no VM.
    VmUnknown = ("VM_UNKNOWN", 403),
    /// A second key request after latching: a latched key is never handed out again.
    KeyLatched = ("KEY_LATCHED", 409),
    // --- host services (msp-host, extension)
    /// IMDS refuses requests carrying `X-Forwarded-For` (they came through a proxy, spec §12.4).
    ForwardedRefused = ("FORWARDED_REFUSED", 400),
    /// IMDS: `api-version` missing or not a supported version.
    ApiVersionInvalid = ("API_VERSION_INVALID", 400),
    /// The host serves nothing at this path (or not with this method).
    NotFound = ("NOT_FOUND", 404),
    /// A request body did not arrive within the host's body timeout.
    BodyTimeout = ("BODY_TIMEOUT", 408),
}

impl Reason {
    /// Looks a wire code up, e.g. from an upstream `x-msp-reason` header.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn statuses_follow_spec_8_5() {
        assert_eq!(Reason::NoAttribution.status(), 421);
        assert_eq!(Reason::CanonScheme.status(), 405);
        assert_eq!(Reason::CanonTraversal.status(), 400);
        assert_eq!(Reason::UpstreamSend.status(), 503);
        assert_eq!(Reason::KeyLatched.status(), 409);
    }
}
