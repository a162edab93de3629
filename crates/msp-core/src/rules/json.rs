//! A strict, bounded JSON reader for allowlist documents (spec §4.2 check 6).
//!
//! `serde_json` resolves repeated keys last-wins and has no size bounds of ours, so documents are read here into
//! a small tree instead: at most [`MAX_DOCUMENT_BYTES`], [`MAX_NESTING`] levels, [`MAX_ARRAY_LEN`] entries per
//! array, [`MAX_STRING_BYTES`] per string (keys too, after unescaping), no NUL, no repeated key in any object.
//! Recursion depth is bounded by [`MAX_NESTING`], so no input can exhaust the stack. This module never panics
//! and never guesses: the first violation ends the read with an error naming its path.

use super::error::{JsonPath, JsonSyntax, RulesError};

/// Largest document, in bytes (catalog D4).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Most entries in one array (catalog D4).
pub const MAX_ARRAY_LEN: usize = 4096;
/// Longest string or key, in bytes after unescaping (catalog D4).
pub const MAX_STRING_BYTES: usize = 4096;
/// Deepest nesting of arrays and objects; the document's own object is level 1 (catalog D4).
pub const MAX_NESTING: usize = 16;

/// A parsed JSON value. Numbers are validated but not kept: no allowlist field is numeric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number,
    String(String),
    Array(Vec<Json>),
    /// Entries in document order; keys are unique.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value of `key` in an object (`None` for absent keys and for non-objects).
    pub(super) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy)]
pub(super) enum Part<'a> {
    Key(&'a str),
    Index(usize),
}

/// Renders `rules.roles[2].privileges[0]`.
pub(super) fn render_path<'a>(parts: impl IntoIterator<Item = Part<'a>>) -> JsonPath {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Part::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    JsonPath::new(out)
}

/// A position in a document, as a chain of borrowed steps: free to extend, rendered only for an error.
#[derive(Debug, Clone, Copy)]
pub(super) struct At<'a> {
    parent: Option<&'a At<'a>>,
    part: Option<Part<'a>>,
}

impl<'a> At<'a> {
    /// The document itself.
    pub(super) const ROOT: At<'static> = At {
        parent: None,
        part: None,
    };

    pub(super) fn key(&'a self, key: &'a str) -> At<'a> {
        At {
            parent: Some(self),
            part: Some(Part::Key(key)),
        }
    }

    pub(super) fn index(&'a self, index: usize) -> At<'a> {
        At {
            parent: Some(self),
            part: Some(Part::Index(index)),
        }
    }

    pub(super) fn path(&self) -> JsonPath {
        let mut parts = Vec::new();
        let mut node = Some(self);
        while let Some(at) = node {
            parts.extend(at.part);
            node = at.parent;
        }
        render_path(parts.into_iter().rev())
    }
}

/// Reads one JSON document under the bounds of this module.
pub(super) fn parse(text: &str) -> Result<Json, RulesError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(RulesError::DocumentTooLarge { size: text.len() });
    }
    let mut parser = Parser {
        text,
        pos: 0,
        path: Vec::new(),
    };
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos < text.len() {
        return Err(parser.syntax(JsonSyntax::TrailingData));
    }
    Ok(value)
}

enum Seg {
    Key(String),
    Index(usize),
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// Where the reader is, for error messages.
    path: Vec<Seg>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn here(&self) -> JsonPath {
        render_path(self.path.iter().map(|s| match s {
            Seg::Key(k) => Part::Key(k),
            Seg::Index(i) => Part::Index(*i),
        }))
    }

    fn syntax(&self, syntax: JsonSyntax) -> RulesError {
        let syntax = if self.pos >= self.text.len() && syntax != JsonSyntax::TrailingData {
            JsonSyntax::UnexpectedEnd
        } else {
            syntax
        };
        RulesError::Syntax {
            path: self.here(),
            offset: self.pos,
            syntax,
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), RulesError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(JsonSyntax::UnexpectedChar))
        }
    }

    /// `depth` counts the arrays and objects already open around this value.
    fn value(&mut self, depth: usize) -> Result<Json, RulesError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.syntax(JsonSyntax::UnexpectedChar)),
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, RulesError> {
        if self
            .text
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.syntax(JsonSyntax::UnexpectedChar))
        }
    }

    fn number(&mut self) -> Result<Json, RulesError> {
        // RFC 8259 §6: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax(JsonSyntax::BadNumber)),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.require_digits()?;
        }
        Ok(Json::Number)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> Result<(), RulesError> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            Err(self.syntax(JsonSyntax::BadNumber))
        } else {
            Ok(())
        }
    }

    fn string(&mut self) -> Result<String, RulesError> {
        self.expect(b'"')?;
        // Most strings have no escape: one exact allocation.
        let rest = self.text.get(self.pos..).unwrap_or_default();
        let run = rest
            .bytes()
            .position(|b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(rest.len());
        if rest.as_bytes().get(run) == Some(&b'"') {
            // A raw NUL ends the run (it is a control byte), so only an escape can put one in a string.
            let text = rest.get(..run).unwrap_or_default();
            self.pos += run + 1;
            return if text.len() > MAX_STRING_BYTES {
                Err(RulesError::StringTooLong { path: self.here() })
            } else {
                Ok(text.to_owned())
            };
        }
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control byte; all are ASCII, so the slice ends on a
            // character boundary.
            let rest = self.text.get(self.pos..).unwrap_or_default();
            let run = rest
                .bytes()
                .position(|b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(rest.len());
            out.push_str(rest.get(..run).unwrap_or_default());
            self.pos += run;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(_) => return Err(self.syntax(JsonSyntax::ControlInString)),
                None => return Err(self.syntax(JsonSyntax::UnexpectedEnd)),
            }
            if out.len() > MAX_STRING_BYTES {
                return Err(RulesError::StringTooLong { path: self.here() });
            }
        }
        self.checked(out)
    }

    /// The bounds every string (and key) must meet.
    fn checked(&self, text: String) -> Result<String, RulesError> {
        if text.len() > MAX_STRING_BYTES {
            return Err(RulesError::StringTooLong { path: self.here() });
        }
        if text.contains('\0') {
            return Err(RulesError::Nul { path: self.here() });
        }
        Ok(text)
    }

    /// One escape after `\`.
    fn escape(&mut self) -> Result<char, RulesError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape();
            }
            _ => return Err(self.syntax(JsonSyntax::BadEscape)),
        };
        self.pos += 1;
        Ok(c)
    }

    /// `XXXX` after `\u`, with a following `\uXXXX` low surrogate when the first is a high one.
    fn unicode_escape(&mut self) -> Result<char, RulesError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self
                    .text
                    .get(self.pos..)
                    .is_some_and(|r| r.starts_with("\\u"))
                {
                    self.pos += 2;
                } else {
                    return Err(self.syntax(JsonSyntax::LoneSurrogate));
                }
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax(JsonSyntax::LoneSurrogate));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax(JsonSyntax::LoneSurrogate)),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.syntax(JsonSyntax::LoneSurrogate))
    }

    fn hex4(&mut self) -> Result<u32, RulesError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax(JsonSyntax::BadEscape))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.syntax(JsonSyntax::BadEscape));
        }
        let value =
            u32::from_str_radix(digits, 16).map_err(|_| self.syntax(JsonSyntax::BadEscape))?;
        self.pos += 4;
        Ok(value)
    }

    fn array(&mut self, depth: usize) -> Result<Json, RulesError> {
        if depth > MAX_NESTING {
            return Err(RulesError::TooDeep { path: self.here() });
        }
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            if items.len() == MAX_ARRAY_LEN {
                return Err(RulesError::ArrayTooLong { path: self.here() });
            }
            self.path.push(Seg::Index(items.len()));
            let item = self.value(depth)?;
            self.path.pop();
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.syntax(JsonSyntax::UnexpectedChar)),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, RulesError> {
        if depth > MAX_NESTING {
            return Err(RulesError::TooDeep { path: self.here() });
        }
        self.expect(b'{')?;
        let mut entries: Vec<(String, Json)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(entries));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.path.push(Seg::Key(key));
            let value = self.value(depth)?;
            let key = match self.path.pop() {
                Some(Seg::Key(key)) => key,
                _ => String::new(),
            };
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax(JsonSyntax::UnexpectedChar)),
            }
        }
        match repeated_key(&entries) {
            Some(key) => Err(RulesError::RepeatedKey {
                path: self.here(),
                key: key.to_owned(),
            }),
            None => Ok(Json::Object(entries)),
        }
    }
}

/// The first repeated key of an object. Small objects (all of a valid allowlist) are checked pairwise without
/// allocating; large ones by sorting, so no object costs O(n²).
fn repeated_key(entries: &[(String, Json)]) -> Option<&str> {
    const PAIRWISE_MAX: usize = 16;
    if entries.len() <= PAIRWISE_MAX {
        let mut rest = entries;
        while let Some(((key, _), tail)) = rest.split_first() {
            if tail.iter().any(|(k, _)| k == key) {
                return Some(key);
            }
            rest = tail;
        }
        return None;
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2)
        .find(|w| w.first() == w.get(1))
        .and_then(|w| w.first().copied())
}

#[cfg(test)]
mod tests;
