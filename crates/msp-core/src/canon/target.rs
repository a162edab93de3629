//! Splitting a request-target into its parts (RFC 9112 §3.2): origin-form `/path?query` or absolute-form
//! `http://authority/path?query`. Nothing is decoded here; a fragment (`#…`) is cut off first (spec §8.1).

use memchr::{memchr, memchr2};

use super::CanonError;

/// The raw parts of a request-target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target<'a> {
    /// The authority of an absolute-form target; `None` for origin-form.
    pub(super) authority: Option<&'a [u8]>,
    /// The raw path (possibly empty).
    pub(super) path: &'a [u8],
    /// The raw query after the first `?`, if there is a `?`.
    pub(super) query: Option<&'a [u8]>,
}

/// Spec §5.2 step 1: origin-form (starts with `/`, or is empty), or absolute-form with the scheme `http` in any
/// case. Any other scheme, or a target in neither form, is `CANON_SCHEME`; `http:` without `//authority` is
/// `CANON_HOST`.
pub(super) fn split_target(target: &[u8]) -> Result<Target<'_>, CanonError> {
    let target = without_fragment(target);
    if target.is_empty() || target.starts_with(b"/") {
        let (path, query) = split_query(target);
        return Ok(Target {
            authority: None,
            path,
            query,
        });
    }
    let colon = memchr(b':', target).ok_or(CanonError::SchemeNotHttp)?;
    let (scheme, rest) = target.split_at(colon);
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(CanonError::SchemeNotHttp);
    }
    let rest = rest.strip_prefix(b"://").ok_or(CanonError::BadHost)?;
    let end = memchr2(b'/', b'?', rest).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    let (path, query) = split_query(path_and_query);
    Ok(Target {
        authority: Some(authority),
        path,
        query,
    })
}

/// The raw path of a request-target, for the traversal guard (spec §5.2 step 0): the bytes before the first `?`
/// of an origin-form target, or the path component of an absolute-form one. Of a target in no supported form
/// it returns everything before the first `?` after any `scheme://`, so the guard still sees every byte that
/// could be a path (canonicalisation refuses such a target later).
pub fn raw_path(target: &[u8]) -> &[u8] {
    match split_target(target) {
        Ok(parts) => parts.path,
        Err(_) => {
            let target = without_fragment(target);
            let after_scheme = match target.windows(3).position(|w| w == b"://") {
                Some(at) => target.get(at + 3..).unwrap_or_default(),
                None => target,
            };
            split_query(after_scheme).0
        }
    }
}

fn without_fragment(target: &[u8]) -> &[u8] {
    match memchr(b'#', target) {
        Some(hash) => target.split_at(hash).0,
        None => target,
    }
}

fn split_query(path_and_query: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr(b'?', path_and_query) {
        Some(q) => {
            let (path, query) = path_and_query.split_at(q);
            (path, query.get(1..))
        }
        None => (path_and_query, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let t = split_target(b"/a/b?x=1?y#frag").unwrap();
        assert_eq!(
            (t.authority, t.path, t.query),
            (None, &b"/a/b"[..], Some(&b"x=1?y"[..]))
        );
        let t = split_target(b"HTTP://169.254.169.254?x").unwrap();
        assert_eq!(
            (t.authority, t.path, t.query),
            (Some(&b"169.254.169.254"[..]), &b""[..], Some(&b"x"[..]))
        );
        let t = split_target(b"http://h:80/p").unwrap();
        assert_eq!(
            (t.authority, t.path, t.query),
            (Some(&b"h:80"[..]), &b"/p"[..], None)
        );
        assert_eq!(split_target(b"https://h/"), Err(CanonError::SchemeNotHttp));
        assert_eq!(split_target(b"*"), Err(CanonError::SchemeNotHttp));
        assert_eq!(split_target(b"h:80"), Err(CanonError::SchemeNotHttp));
        assert_eq!(split_target(b"http:/x"), Err(CanonError::BadHost));
        assert_eq!(raw_path(b"http://h//a?q"), b"//a");
        assert_eq!(raw_path(b"ftp://h//a?q"), b"h//a");
        assert_eq!(raw_path(b"https://h/x"), b"h/x");
    }
}
