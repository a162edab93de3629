//! Percent-decoding, the byte checks and the buffer helper shared by path and query (spec §5.2 steps 5.2–5.5,
//! §5.3), and the traversal guard of step 0. Decoding happens exactly once: a decoded `%` never starts another
//! escape.

use super::CanonError;

/// `buf` emptied, as a `String` that keeps its capacity: what a reused slot keeps after an error.
pub(super) fn emptied(mut buf: Vec<u8>) -> String {
    buf.clear();
    String::from_utf8(buf).unwrap_or_default()
}

/// The value of one ASCII hex digit.
pub(super) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte an escape at `raw[i]` (`%` `h` `l`) stands for, if it is a well-formed escape.
fn escape_at(raw: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*raw.get(i + 1)?)?;
    let lo = hex_value(*raw.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Step 0 (spec §5.2): a raw path holding `//`, or `..` after one lenient decode (a `%` that starts no
/// well-formed escape is kept as is), is refused with [`CanonError::PathTraversal`].
pub fn traversal_guard(raw_path: &[u8]) -> Result<(), CanonError> {
    let mut prev_slash = false;
    let mut prev_dot = false;
    let mut i = 0;
    while let Some(&b) = raw_path.get(i) {
        let slash = b == b'/';
        if slash && prev_slash {
            return Err(CanonError::PathTraversal);
        }
        let (byte, width) = match b {
            b'%' => escape_at(raw_path, i).map_or((b, 1), |decoded| (decoded, 3)),
            _ => (b, 1),
        };
        let dot = byte == b'.';
        if dot && prev_dot {
            return Err(CanonError::PathTraversal);
        }
        prev_dot = dot;
        // Only raw slashes count for `//`: an escaped one (`%2F`) does not.
        prev_slash = slash;
        i += width;
    }
    Ok(())
}

/// Step 5.2: decodes every `%XX` once (and `+` as SP when `plus_is_space`, spec §5.3), appending to `out`. The
/// decoded bytes are never more than the raw ones, so a buffer of `raw.len()` never grows.
pub(super) fn percent_decode_into(
    raw: &[u8],
    plus_is_space: bool,
    out: &mut Vec<u8>,
) -> Result<(), CanonError> {
    // Most paths and parameters hold no escape at all: copy them in one go.
    if !raw
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        out.extend_from_slice(raw);
        return Ok(());
    }
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => {
                out.push(escape_at(raw, i).ok_or(CanonError::MalformedPercent)?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Steps 5.3–5.5 on decoded bytes: overlong leads, then UTF-8 validity (never replaced), then control
/// characters. ASCII, the usual case, can fail only the last.
pub(super) fn check_text(decoded: &[u8]) -> Result<(), CanonError> {
    if !decoded.is_ascii() {
        let overlong = decoded.iter().enumerate().any(|(i, &b)| {
            let next = decoded.get(i + 1).copied().unwrap_or(0);
            matches!(b, 0xC0 | 0xC1)
                || (b == 0xE0 && (0x80..=0x9F).contains(&next))
                || (b == 0xF0 && (0x80..=0x8F).contains(&next))
        });
        if overlong {
            return Err(CanonError::OverlongUtf8);
        }
        std::str::from_utf8(decoded).map_err(|_| CanonError::InvalidUtf8)?;
    }
    // Multi-byte UTF-8 sequences only hold bytes >= 0x80, so a byte test finds exactly the control characters.
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7F) {
        return Err(CanonError::ControlChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_refuses_double_slash_and_dot_dot_in_any_spelling() {
        for bad in [
            "//a",
            "/a//",
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/.%2e",
            "/a..b",
            "/%2E.",
        ] {
            assert_eq!(
                traversal_guard(bad.as_bytes()),
                Err(CanonError::PathTraversal),
                "{bad}"
            );
        }
        for ok in [
            "/",
            "/a/./b",
            "/a.b/c.d",
            "/a%2F%2Fb",
            "/%.%.",
            "/%2.",
            "/.%2",
        ] {
            assert_eq!(traversal_guard(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    fn percent_decode(raw: &[u8], plus_is_space: bool) -> Result<Vec<u8>, CanonError> {
        let mut out = b"kept".to_vec();
        percent_decode_into(raw, plus_is_space, &mut out)?;
        assert!(out.starts_with(b"kept"), "appends");
        Ok(out.split_off(4))
    }

    #[test]
    fn decode_is_single_pass() {
        assert_eq!(percent_decode(b"%252F", false).unwrap(), b"%2F");
        assert_eq!(percent_decode(b"a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode(b"a+b", true).unwrap(), b"a b");
        assert_eq!(
            percent_decode(b"%2", false),
            Err(CanonError::MalformedPercent)
        );
        assert_eq!(
            percent_decode(b"%zz", false),
            Err(CanonError::MalformedPercent)
        );
    }

    #[test]
    fn text_checks_run_in_spec_order() {
        assert_eq!(check_text(&[0xC0, 0xAF]), Err(CanonError::OverlongUtf8));
        assert_eq!(
            check_text(&[0xE0, 0x9F, 0xBF]),
            Err(CanonError::OverlongUtf8)
        );
        assert_eq!(
            check_text(&[0xF0, 0x8F, 0xBF, 0xBF]),
            Err(CanonError::OverlongUtf8)
        );
        assert_eq!(check_text(&[b'\n', 0xFF]), Err(CanonError::InvalidUtf8));
        assert_eq!(check_text(&[b'a', 0x7F]), Err(CanonError::ControlChar));
        assert_eq!(check_text("ı".as_bytes()), Ok(()));
    }
}
