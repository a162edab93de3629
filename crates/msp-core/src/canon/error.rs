//! The canonicaliser's error taxonomy (spec §5.6): one variant per diagnosis, each mapped to a stable reason code.

use crate::Reason;

/// Why a request-target (or a privilege pattern) has no canonical form. The variant is the diagnosis; its
/// [`reason`](CanonError::reason) is the wire code and, through [`Reason::status`], the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CanonError {
    /// Step 0: the raw path holds `//`, or `..` after one lenient decode.
    #[error("path traversal: `//` or `..` in the raw path")]
    PathTraversal,
    /// A segment ending in `.` or holding a space: servers disagree on what it names.
    #[error("ambiguous path segment (ends in `.` or holds a space)")]
    AmbiguousSegment,
    /// An absolute-form target whose scheme is not `http`, or a target in no supported form.
    #[error("scheme is not http")]
    SchemeNotHttp,
    /// A method outside `GET POST PUT DELETE HEAD OPTIONS PATCH`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `user@host` in the authority.
    #[error("userinfo in the authority")]
    UserinfoPresent,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    MalformedPercent,
    /// An overlong UTF-8 lead (`C0`, `C1`, `E0 80..9F`, `F0 80..8F`) after decoding.
    #[error("overlong UTF-8")]
    OverlongUtf8,
    /// Bytes that are not UTF-8 after decoding; never replaced.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A non-ASCII character in the path.
    #[error("non-ASCII character in the path")]
    NonAscii,
    /// A character below U+0020, or U+007F.
    #[error("control character")]
    ControlChar,
    /// `..` with no segment left to remove.
    #[error("path climbs above the root")]
    PathUnderflow,
    /// A `?` inside the decoded path (`%3F`): a query smuggled into the path.
    #[error("query embedded in the path")]
    EmbeddedQuery,
    /// An authority host that is neither a valid IP form nor a valid registered name.
    #[error("bad host")]
    BadHost,
    /// An absolute-form host that classifies differently from the connection's destination (spec §5.4).
    #[error("host does not match the connection's destination")]
    HostMismatch,
    /// A port that is not decimal 1–65535.
    #[error("bad port")]
    BadPort,
}

impl CanonError {
    /// The stable reason code (spec §5.6).
    pub fn reason(self) -> Reason {
        match self {
            CanonError::PathTraversal => Reason::CanonTraversal,
            CanonError::AmbiguousSegment => Reason::CanonSegment,
            CanonError::SchemeNotHttp => Reason::CanonScheme,
            CanonError::MethodNotAllowed => Reason::CanonMethod,
            CanonError::UserinfoPresent => Reason::CanonUserinfo,
            CanonError::MalformedPercent => Reason::CanonPct,
            CanonError::OverlongUtf8 => Reason::CanonOverlong,
            CanonError::InvalidUtf8 => Reason::CanonUtf8,
            CanonError::NonAscii => Reason::CanonNonAscii,
            CanonError::ControlChar => Reason::CanonCtrl,
            CanonError::PathUnderflow => Reason::CanonUnderflow,
            CanonError::EmbeddedQuery => Reason::CanonEmbq,
            CanonError::BadHost | CanonError::HostMismatch => Reason::CanonHost,
            CanonError::BadPort => Reason::CanonPort,
        }
    }
}
