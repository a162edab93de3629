//! Path canonicalisation (spec §5.2 step 5) for request paths and privilege patterns (spec §5.5).
//!
//! A canonical path is a list of lowercase ASCII segments plus a trailing-slash bit. Segments never hold `/`
//! (a decoded `%2F` splits), so they are stored joined by `/` in one string and a segment-aware prefix test is a
//! string comparison with a boundary check. This module never resolves anything against a file system.

use std::fmt;

use super::CanonError;
use super::decode::{check_text, emptied, percent_decode_into};

/// The canonical form of a path: what the matcher compares (spec §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CanonicalPath {
    /// Segments joined by `/`, without a leading `/`; empty for the root.
    joined: String,
    /// The raw path was longer than 1 and ended in `/` (never set for the root).
    trailing_slash: bool,
}

impl CanonicalPath {
    /// Segments joined by `/`, without a leading `/`: `metadata/identity`; `""` for the root.
    pub fn joined(&self) -> &str {
        &self.joined
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.joined.split('/').filter(|s| !s.is_empty())
    }

    /// Whether the raw path ended in `/`. Rendered, but never compared by the matcher (spec §4.4).
    pub fn trailing_slash(&self) -> bool {
        self.trailing_slash
    }

    /// The root path, keeping the buffer.
    pub(super) fn clear(&mut self) {
        self.joined.clear();
        self.trailing_slash = false;
    }

    /// The bytes of heap this path keeps.
    pub(super) fn capacity_bytes(&self) -> usize {
        self.joined.capacity()
    }

    /// No segment at all: `/`, which as a pattern matches every path.
    pub fn is_root(&self) -> bool {
        self.joined.is_empty()
    }

    /// Segment-aware prefix (spec §4.4): `/metadata` is a prefix of `/metadata/instance`, not of `/metadata-x`.
    pub fn is_prefix_of(&self, other: &CanonicalPath) -> bool {
        let (p, o) = (self.joined.as_str(), other.joined.as_str());
        p.is_empty() || (o.starts_with(p) && matches!(o.as_bytes().get(p.len()), None | Some(b'/')))
    }

    /// The rendering: `/` + segments joined by `/` with `%`, `#` and SP escaped, plus `/` when the bit is set.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        // Escaping `%` keeps the rendering canonical under a second pass (spec §5.8): `%2f` renders `%252f`.
        let mut rest = self.joined.as_str();
        while let Some(at) = rest.find(['%', '#', ' ']) {
            let (plain, tail) = rest.split_at(at);
            f.write_str(plain)?;
            let mut chars = tail.chars();
            f.write_str(match chars.next() {
                Some('%') => "%25",
                Some('#') => "%23",
                _ => "%20",
            })?;
            rest = chars.as_str();
        }
        f.write_str(rest)?;
        if self.trailing_slash {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// Canonicalises a raw request path (spec §5.2 step 5): decode once, check bytes, lowercase, resolve segments.
/// One buffer holds the decoded path and then, resolved in place, the joined segments.
pub fn canonicalize_path(raw: &[u8]) -> Result<CanonicalPath, CanonError> {
    let mut path = CanonicalPath::default();
    canonicalize_path_into(raw, &mut path)?;
    Ok(path)
}

/// [`canonicalize_path`] into `out`, reusing its buffer: a request path costs no allocation once `out` has held
/// one as long. After an error `out` is the root path, and keeps its buffer.
pub fn canonicalize_path_into(raw: &[u8], out: &mut CanonicalPath) -> Result<(), CanonError> {
    let mut bytes = std::mem::take(&mut out.joined).into_bytes();
    bytes.clear();
    bytes.reserve(raw.len());
    out.trailing_slash = false;
    match canonical_bytes(raw, &mut bytes) {
        Ok(()) => {
            // Step 5.6 admitted only ASCII, so this cannot fail.
            out.joined = String::from_utf8(bytes).map_err(|_| CanonError::NonAscii)?;
            // 5.1, 5.10: the trailing-slash bit comes from the raw bytes, and the root has none.
            out.trailing_slash =
                raw.len() > 1 && raw.last() == Some(&b'/') && !out.joined.is_empty();
            Ok(())
        }
        Err(e) => {
            out.joined = emptied(bytes);
            Err(e)
        }
    }
}

/// Steps 5.2–5.9 into `bytes` (empty): the joined segments, ASCII and lowercase.
fn canonical_bytes(raw: &[u8], bytes: &mut Vec<u8>) -> Result<(), CanonError> {
    // 5.2–5.5
    percent_decode_into(raw, false, bytes)?;
    check_text(bytes)?;
    // 5.6, 5.7
    if !bytes.is_ascii() {
        return Err(CanonError::NonAscii);
    }
    if bytes.contains(&b'?') {
        return Err(CanonError::EmbeddedQuery);
    }
    // 5.8
    bytes.make_ascii_lowercase();
    // 5.9
    let kept = resolve_segments(bytes)?;
    bytes.truncate(kept);
    Ok(())
}

/// Step 5.9 in place: drops empty and `.` segments and `;` parameters, resolves `..`, and moves the kept
/// segments, joined by `/`, to the front of `path`; returns their length.
///
/// What is kept never overtakes what is still to be read: every piece after the first starts after a `/` of
/// its own, and contributes at most that `/` and itself.
fn resolve_segments(path: &mut [u8]) -> Result<usize, CanonError> {
    let mut kept = 0;
    let mut start = 0;
    while start <= path.len() {
        let rest = path.get(start..).unwrap_or_default();
        let end = start + rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let piece = path.get(start..end).unwrap_or_default();
        let segment = piece.split(|&b| b == b';').next().unwrap_or_default();
        match segment {
            b"" | b"." => {}
            b".." => {
                if kept == 0 {
                    return Err(CanonError::PathUnderflow);
                }
                let joined = path.get(..kept).unwrap_or_default();
                kept = joined.iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
            _ if segment.ends_with(b".") || segment.contains(&b' ') => {
                return Err(CanonError::AmbiguousSegment);
            }
            _ => {
                // After the first kept segment, take the `/` in front of this piece along.
                let from = if kept == 0 { start } else { start - 1 };
                let to = start + segment.len();
                path.copy_within(from..to, kept);
                kept += to - from;
            }
        }
        start = end + 1;
    }
    Ok(kept)
}

/// Canonicalises a privilege `path` (spec §5.5): step 5 with a missing leading `/` added.
pub fn canonicalize_pattern(path: &str) -> Result<CanonicalPath, CanonError> {
    if path.starts_with('/') {
        canonicalize_path(path.as_bytes())
    } else {
        canonicalize_path(format!("/{path}").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, CanonError> {
        canonicalize_path(raw.as_bytes()).map(|p| p.render())
    }

    #[test]
    fn segments_resolve_and_render() {
        assert_eq!(canon("/a/b/./c/../d;x=1/").unwrap(), "/a/b/d/");
        assert_eq!(canon("/a/..").unwrap(), "/");
        assert_eq!(canon("//").unwrap(), "/");
        assert_eq!(canon("/a%23b/%2525").unwrap(), "/a%23b/%2525");
        assert_eq!(canon("/;x/a").unwrap(), "/a");
        assert_eq!(canon("/a/..;x/b").unwrap(), "/b");
    }

    #[test]
    fn ambiguous_segments_are_refused() {
        assert_eq!(canon("/token."), Err(CanonError::AmbiguousSegment));
        assert_eq!(canon("/a/.../b"), Err(CanonError::AmbiguousSegment));
        assert_eq!(canon("/a%20b"), Err(CanonError::AmbiguousSegment));
        assert_eq!(canon("/a b"), Err(CanonError::AmbiguousSegment));
    }

    /// A reused path holds only the last one; an error leaves the root, without a trailing slash, and keeps
    /// the buffer.
    #[test]
    fn a_reused_path_holds_only_the_last_one() {
        let mut path = canonicalize_path(b"/Metadata/Identity/oauth2/token/").unwrap();
        canonicalize_path_into(b"/a", &mut path).unwrap();
        assert_eq!(path, canonicalize_path(b"/a").unwrap());
        canonicalize_path_into(b"/metadata/instance/", &mut path).unwrap();
        let capacity = path.capacity_bytes();
        assert_eq!(
            canonicalize_path_into(b"/a/../..", &mut path),
            Err(CanonError::PathUnderflow)
        );
        assert!(path.is_root() && !path.trailing_slash());
        assert_eq!(path.capacity_bytes(), capacity, "the buffer is kept");
    }

    #[test]
    fn prefix_is_segment_aware() {
        let p = |s: &str| canonicalize_path(s.as_bytes()).unwrap();
        assert!(p("/metadata").is_prefix_of(&p("/metadata/instance")));
        assert!(p("/metadata").is_prefix_of(&p("/metadata/")));
        assert!(!p("/metadata").is_prefix_of(&p("/metadata-x")));
        assert!(!p("/metadata/instance").is_prefix_of(&p("/metadata")));
        assert!(p("/").is_prefix_of(&p("/anything/at/all")));
    }

    #[test]
    fn patterns_get_a_leading_slash() {
        assert_eq!(
            canonicalize_pattern("metadata/Identity").unwrap().render(),
            "/metadata/identity"
        );
        assert_eq!(canonicalize_pattern("").unwrap().render(), "/");
    }
}
