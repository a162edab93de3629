//! The query multimap (spec §5.3): decoded once (`+` is SP), lowercased, keys sorted, values in order.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};

use smallvec::SmallVec;

use super::CanonError;
use super::decode::{check_text, emptied, percent_decode_into};

/// Pairs a query keeps inline; more spill to the heap.
const INLINE_PAIRS: usize = 4;

/// The canonical query: `(key, value)` pairs sorted by key (stable, so each key's values keep their order).
///
/// The decoded keys and values sit back to back in one string and the pairs' places in it are sorted on the
/// stack, so a query of up to `INLINE_PAIRS` (4) parameters costs one allocation, and none when
/// [`parse_into`](Self::parse_into) reuses a query (issue 8).
#[derive(Clone, Default)]
pub struct CanonicalQuery {
    /// Every kept key and value, decoded and lowercased, in request order.
    text: String,
    /// Where each pair lies in `text`, sorted by key.
    pairs: SmallVec<[Pair; INLINE_PAIRS]>,
}

/// One pair: the key is `text[start..split]`, the value `text[split..end]`.
#[derive(Debug, Clone, Copy)]
struct Pair {
    start: usize,
    split: usize,
    end: usize,
}

impl CanonicalQuery {
    /// Parses a raw query (the bytes after `?`): split on `&`, skip empty pieces, split at the first `=`, decode
    /// and lowercase both sides, skip empty keys (spec §5.3).
    pub fn parse(raw: &[u8]) -> Result<CanonicalQuery, CanonError> {
        let mut query = CanonicalQuery::default();
        query.parse_into(raw)?;
        Ok(query)
    }

    /// [`parse`](Self::parse) into `self`, reusing its buffers: a query costs no allocation once `self` has held
    /// one as long. After an error `self` is empty, and keeps its buffers.
    pub fn parse_into(&mut self, raw: &[u8]) -> Result<(), CanonError> {
        let mut text = std::mem::take(&mut self.text).into_bytes();
        text.clear();
        text.reserve(raw.len());
        self.pairs.clear();
        if let Err(e) = decode_pairs(raw, &mut text, &mut self.pairs) {
            self.pairs.clear();
            self.text = emptied(text);
            return Err(e);
        }
        // Each component is valid UTF-8 on its own, so their concatenation is too.
        match String::from_utf8(text) {
            Ok(text) => {
                self.text = text;
                let text = &self.text;
                self.pairs
                    .sort_by(|a: &Pair, b| a.key(text).cmp(b.key(text)));
                Ok(())
            }
            Err(e) => {
                self.pairs.clear();
                self.text = emptied(e.into_bytes());
                Err(CanonError::InvalidUtf8)
            }
        }
    }

    /// No parameter, keeping the buffers.
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.pairs.clear();
    }

    /// The bytes of heap this query keeps: the text's buffer, and the pairs' when more than `INLINE_PAIRS`
    /// spilled to the heap.
    pub(super) fn capacity_bytes(&self) -> usize {
        let pairs = if self.pairs.spilled() {
            self.pairs.capacity() * size_of::<Pair>()
        } else {
            0
        };
        self.text.capacity() + pairs
    }

    /// No parameter at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// All pairs, sorted by key.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.pairs
            .iter()
            .map(|p| (p.key(&self.text), p.value(&self.text)))
    }

    /// The values of `key` (already canonical: lowercase, decoded), in request order.
    pub fn values<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let text = &self.text;
        let start = self.pairs.partition_point(|p| p.key(text) < key);
        let pairs = self.pairs.get(start..).unwrap_or_default();
        let end = pairs.partition_point(|p| p.key(text) == key);
        pairs
            .get(..end)
            .unwrap_or_default()
            .iter()
            .map(|p| p.value(text))
    }

    /// The rendering: empty, or `?` and `key=value` pairs joined by `&`, escaped so that it parses back to
    /// the same multimap (spec §5.3, §5.8).
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl Pair {
    fn key(self, text: &str) -> &str {
        text.get(self.start..self.split).unwrap_or_default()
    }

    fn value(self, text: &str) -> &str {
        text.get(self.split..self.end).unwrap_or_default()
    }
}

/// Prints the sorted pairs, not their offsets.
impl fmt::Debug for CanonicalQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pairs()).finish()
    }
}

/// Two queries are equal when their sorted pairs are, whatever order the request gave the keys in.
impl PartialEq for CanonicalQuery {
    fn eq(&self, other: &Self) -> bool {
        self.pairs().eq(other.pairs())
    }
}

impl Eq for CanonicalQuery {}

impl Hash for CanonicalQuery {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.pairs.len());
        for pair in self.pairs() {
            pair.hash(state);
        }
    }
}

impl fmt::Display for CanonicalQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.pairs().enumerate() {
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
    let mut text = Vec::with_capacity(raw.len());
    decode_component_into(raw, &mut text)?;
    String::from_utf8(text).map_err(|_| CanonError::InvalidUtf8)
}

/// Splits a raw query into pairs: their decoded, lowercased text back to back in `text`, their places in `pairs`
/// in request order.
fn decode_pairs(
    raw: &[u8],
    text: &mut Vec<u8>,
    pairs: &mut SmallVec<[Pair; INLINE_PAIRS]>,
) -> Result<(), CanonError> {
    for piece in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match piece.iter().position(|&b| b == b'=') {
            Some(at) => (
                piece.get(..at).unwrap_or_default(),
                piece.get(at + 1..).unwrap_or_default(),
            ),
            None => (piece, &b""[..]),
        };
        let start = text.len();
        decode_component_into(key, text)?;
        let split = text.len();
        decode_component_into(value, text)?;
        if split == start {
            text.truncate(start);
        } else {
            let end = text.len();
            pairs.push(Pair { start, split, end });
        }
    }
    Ok(())
}

/// [`decode_component`], appended to `out`.
fn decode_component_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), CanonError> {
    let start = out.len();
    percent_decode_into(raw, true, out)?;
    let decoded = out.get_mut(start..).unwrap_or_default();
    check_text(decoded)?;
    decoded.make_ascii_lowercase();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> CanonicalQuery {
        CanonicalQuery::parse(raw.as_bytes()).unwrap()
    }

    /// A reused query holds exactly what a fresh parse holds, its text included, and an error empties it
    /// without giving up its buffer.
    #[test]
    fn a_reused_query_holds_only_the_last_one() {
        let mut query =
            q("resource=https%3A%2F%2Fmanagement.azure.com%2F&api-version=2018-02-01&z=1");
        query.parse_into(b"B=2&a=1").unwrap();
        let fresh = q("B=2&a=1");
        assert_eq!(query.text, fresh.text, "no bytes of the earlier query");
        assert_eq!(query.render(), "?a=1&b=2");
        let capacity = query.capacity_bytes();
        assert_eq!(query.parse_into(b"a=1&b=%FF"), Err(CanonError::InvalidUtf8));
        assert!(query.is_empty() && query.text.is_empty());
        assert_eq!(query.capacity_bytes(), capacity, "the buffer is kept");
        assert_eq!(
            query.parse_into(b"a=%zz"),
            Err(CanonError::MalformedPercent)
        );
        assert!(query.is_empty() && query.text.is_empty());
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
    fn equality_is_of_the_multimap_not_the_request_order() {
        use std::hash::BuildHasher;
        let (a, b) = (q("b=1&a=2&a=3"), q("a=2&B=1&a=3"));
        assert_eq!(a, b);
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        assert_ne!(a, q("a=3&a=2&b=1"), "a key's values keep their order");
    }

    #[test]
    fn many_pairs_spill_without_loss() {
        let query = q("f=6&e=5&d=4&c=3&b=2&a=1&a=0");
        assert_eq!(query.pairs().len(), 7);
        assert_eq!(query.render(), "?a=1&a=0&b=2&c=3&d=4&e=5&f=6");
        assert_eq!(query.values("a").collect::<Vec<_>>(), ["1", "0"]);
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
