//! Redaction of text that leaves the process (spec §11.4): logs, events, status documents, connection summaries,
//! and the command lines in claims (spec §6).
//!
//! Replaced with `***`: the value of a secret key (`sig`, `signature`, `password`, `pwd`, `secret`,
//! `client_secret`, `token`, `access_token`, `key`, any case) in `k=v` and `--k v` forms, the rest of a `Bearer `
//! token, and every run of 64 or more hex digits. Control characters (and the Unicode separators and direction
//! overrides that can fake a line or reorder it on screen) are escaped, so no input can forge a log line.
//!
//! Pure functions over `&str`; this module must never log, allocate without bound relative to its input, or fail.
//! It errs toward hiding too much: a value runs to the next `&`, `#`, `;`, quote, whitespace or control character.

/// What a secret becomes.
pub const REDACTED: &str = "***";

/// Keys whose values are secret, compared case-insensitively (spec §11.4).
pub const SECRET_KEYS: [&str; 9] = [
    "sig",
    "signature",
    "password",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "key",
];

/// Runs of at least this many hex digits are treated as key material or signatures (spec §11.4).
pub const MIN_HEX_RUN: usize = 64;

/// The authentication scheme whose token is hidden.
const BEARER: &str = "bearer";

/// Redacts free text: a URL, a header value, a log message.
pub fn redact(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    secret_spans(bytes, &mut spans);
    hex_spans(bytes, &mut spans);
    escape_control(&replace_spans(text, spans))
}

/// Redacts an argument vector word by word: `--key value` and `-key value` hide the next word whole (spaces
/// included), `Bearer` at the end of a word hides the next word, and each word is also redacted as text.
pub fn redact_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut hide_next = false;
    for arg in args {
        if hide_next && !arg.is_empty() {
            out.push(REDACTED.to_owned());
        } else {
            out.push(redact(arg));
        }
        hide_next = hide_next && arg.is_empty() || is_secret_flag(arg) || ends_with_bearer(arg);
    }
    out
}

/// Escapes control characters as `\n`, `\r`, `\t` or `\u{…}`; everything else is kept as is.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                out.push_str("\\u{");
                out.push_str(&format!("{:x}", u32::from(c)));
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out
}

/// Cuts `text` to at most `max` bytes without splitting a UTF-8 character.
pub fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// C0/C1 controls, DEL, line and paragraph separators, and bidirectional formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            u32::from(c),
            0x061c | 0x200e | 0x200f | 0x2028..=0x202e | 0x2066..=0x2069
        )
}

fn is_secret_key(word: &[u8]) -> bool {
    SECRET_KEYS
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(word))
}

/// `--password`, `-token`, any case.
fn is_secret_flag(arg: &str) -> bool {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
    name.is_some_and(|n| is_secret_key(n.as_bytes()))
}

/// `Bearer` or `Authorization: Bearer` as a whole word at the end.
fn ends_with_bearer(arg: &str) -> bool {
    let b = arg.as_bytes();
    b.len() >= BEARER.len()
        && b.get(b.len() - BEARER.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(BEARER.as_bytes()))
        && (b.len() == BEARER.len()
            || b.get(b.len() - BEARER.len() - 1)
                .is_some_and(|&p| !is_ident(p)))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_quote(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'`')
}

/// Where a `k=v` or `--k v` value ends.
fn ends_value(b: u8) -> bool {
    matches!(b, b'&' | b'#' | b';') || is_quote(b) || is_space(b) || b < 0x20 || b == 0x7f
}

/// Where a bearer token ends.
fn ends_token(b: u8) -> bool {
    matches!(b, b',' | b';') || is_quote(b) || is_space(b) || b < 0x20 || b == 0x7f
}

/// The end of the run starting at `from` whose bytes do not satisfy `stop`.
fn run_end(bytes: &[u8], from: usize, stop: fn(u8) -> bool) -> usize {
    bytes
        .iter()
        .skip(from)
        .position(|&b| stop(b))
        .map_or(bytes.len(), |n| from + n)
}

/// Byte ranges of secret values: `k=v`, `--k v`, `-k v`, `Bearer t`.
fn secret_spans(bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = bytes.get(i).is_some_and(|&b| is_ident(b))
            && (i == 0 || bytes.get(i - 1).is_some_and(|&p| !is_ident(p)));
        if !starts_word {
            i += 1;
            continue;
        }
        let end = run_end(bytes, i, |b| !is_ident(b));
        let word = bytes.get(i..end).unwrap_or_default();
        let next = bytes.get(end).copied();
        if is_secret_key(word) {
            if next == Some(b'=') {
                push_span(spans, end + 1, run_end(bytes, end + 1, ends_value));
            } else if next.is_some_and(is_space) && is_flag_start(bytes, i) {
                let value = run_end(bytes, end, |b| !is_space(b));
                push_span(spans, value, run_end(bytes, value, ends_value));
            }
        } else if word.eq_ignore_ascii_case(BEARER.as_bytes()) && next == Some(b' ') {
            let token = run_end(bytes, end, |b| b != b' ');
            push_span(spans, token, run_end(bytes, token, ends_token));
        }
        i = end;
    }
}

/// The word at `i` is preceded by one or two dashes that start a whitespace- or quote-separated token.
fn is_flag_start(bytes: &[u8], i: usize) -> bool {
    let dashes = bytes
        .get(..i)
        .unwrap_or_default()
        .iter()
        .rev()
        .take_while(|&&b| b == b'-')
        .count();
    let before = i - dashes;
    (1..=2).contains(&dashes)
        && (before == 0
            || bytes
                .get(before - 1)
                .is_some_and(|&b| is_space(b) || is_quote(b)))
}

fn push_span(spans: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    if end > start {
        spans.push((start, end));
    }
}

/// Byte ranges of hex runs of at least [`MIN_HEX_RUN`] digits.
fn hex_spans(bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i).is_some_and(u8::is_ascii_hexdigit) {
            let end = run_end(bytes, i, |b| !b.is_ascii_hexdigit());
            if end - i >= MIN_HEX_RUN {
                spans.push((i, end));
            }
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Replaces each union of overlapping spans with one [`REDACTED`]. Spans start and end next to ASCII bytes or at
/// the ends of the text, so every cut is on a character boundary.
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut iter = spans.into_iter().peekable();
    while let Some((start, mut end)) = iter.next() {
        while let Some(&(next_start, next_end)) = iter.peek() {
            if next_start > end {
                break;
            }
            end = end.max(next_end);
            iter.next();
        }
        out.push_str(text.get(copied..start).unwrap_or_default());
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests;
