//! The query multimap (spec §5.3): decoded once (`+` is SP), lowercased, keys sorted, values in order.

use std::fmt::{self, Write as _};

use super::CanonError;
use super::decode::{into_text, percent_decode};

/// The canonical query: `(key, value)` pairs sorted by key (stable, so each key's values keep their order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CanonicalQuery {
    pairs: Vec<(String, String)>,
}

impl CanonicalQuery {
    /// Parses a raw query (the bytes after `?`): split on `&`, skip empty pieces, split at the first `=`, decode
    /// and lowercase both sides, skip empty keys (spec §5.3).
    pub fn parse(raw: &[u8]) -> Result<CanonicalQuery, CanonError> {
        let mut pairs = Vec::new();
        for piece in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (key, value) = match piece.iter().position(|&b| b == b'=') {
                Some(at) => (
                    piece.get(..at).unwrap_or_default(),
                    piece.get(at + 1..).unwrap_or_default(),
                ),
                None => (piece, &b""[..]),
            };
            let key = decode_component(key)?;
            let value = decode_component(value)?;
            if !key.is_empty() {
                pairs.push((key, value));
            }
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(CanonicalQuery { pairs })
    }

    /// No parameter at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// All pairs, sorted by key.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The values of `key` (already canonical: lowercase, decoded), in request order.
    pub fn values<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let start = self.pairs.partition_point(|(k, _)| k.as_str() < key);
        let pairs = self.pairs.get(start..).unwrap_or_default();
        let end = pairs.partition_point(|(k, _)| k.as_str() == key);
        pairs
            .get(..end)
            .unwrap_or_default()
            .iter()
            .map(|(_, v)| v.as_str())
    }

    /// The rendering: empty, or `?` and `key=value` pairs joined by `&`, escaped so that it parses back to
    /// the same multimap (spec §5.3, §5.8).
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CanonicalQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            f.write_char(if i == 0 { '?' } else { '&' })?;
            write_escaped(f, key)?;
            f.write_char('=')?;
            write_escaped(f, value)?;
        }
        Ok(())
    }
}

/// Escapes `%`, `&`, `=`, `+`, `#`, SP and every non-ASCII byte as `%XX`, uppercase hex (spec §5.3).
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut rest = text;
    while let Some(at) =
        rest.find(|c: char| matches!(c, '%' | '&' | '=' | '+' | '#' | ' ') || !c.is_ascii())
    {
        let (plain, tail) = rest.split_at(at);
        f.write_str(plain)?;
        let mut chars = tail.chars();
        let c = chars.next().unwrap_or_default();
        let mut utf8 = [0u8; 4];
        for &b in c.encode_utf8(&mut utf8).as_bytes() {
            f.write_char('%')?;
            for nibble in [b >> 4, b & 0xF] {
                f.write_char(char::from(
                    HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ))?;
            }
        }
        rest = chars.as_str();
    }
    f.write_str(rest)
}

/// Decodes one query key or value (or a privilege's `queryParameters` entry, spec §5.5): `+` is SP, one
/// percent-decode, overlong/UTF-8/control checks, ASCII-lowercase. Non-ASCII is allowed.
pub fn decode_component(raw: &[u8]) -> Result<String, CanonError> {
    let mut text = into_text(percent_decode(raw, true)?)?;
    text.make_ascii_lowercase();
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> CanonicalQuery {
        CanonicalQuery::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn multimap_is_sorted_decoded_and_lowercased() {
        let query = q("b=2&&A=X&=skip&a=%41+b&c&b=1");
        assert_eq!(query.render(), "?a=x&a=a%20b&b=2&b=1&c=");
        assert_eq!(query.values("a").collect::<Vec<_>>(), ["x", "a b"]);
        assert_eq!(query.values("b").collect::<Vec<_>>(), ["2", "1"]);
        assert_eq!(query.values("c").collect::<Vec<_>>(), [""]);
        assert_eq!(query.values("d").count(), 0);
    }

    #[test]
    fn rendering_escapes_what_would_reparse_differently() {
        let query = q("k=%26%3D%2B%23%25%20%C3%A9");
        assert_eq!(query.render(), "?k=%26%3D%2B%23%25%20%C3%A9");
        assert_eq!(q(&query.render()[1..]), query);
    }

    #[test]
    fn query_errors_are_typed() {
        assert_eq!(
            CanonicalQuery::parse(b"a=%zz"),
            Err(CanonError::MalformedPercent)
        );
        assert_eq!(
            CanonicalQuery::parse(b"a=%C0%AF"),
            Err(CanonError::OverlongUtf8)
        );
        assert_eq!(
            CanonicalQuery::parse(b"a=%FF"),
            Err(CanonError::InvalidUtf8)
        );
        assert_eq!(
            CanonicalQuery::parse(b"a=%0A"),
            Err(CanonError::ControlChar)
        );
    }
}
