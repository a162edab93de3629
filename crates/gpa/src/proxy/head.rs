//! The request-head parser (spec §8.1, §8.4; RFC 9112 §2–§7): pure functions over bytes, used by the
//! connection loop and by the fuzz target.
//!
//! [`find_end`] finds where a head ends (incrementally, so a dribbled head costs linear time), [`check_partial`]
//! refuses an unfinished head as soon as it is hopeless (414, 431, a request line that is not HTTP), and
//! [`parse`] checks a complete head strictly and returns spans into it. Everything that decides how the body is
//! framed is checked here, before any step of spec §8.2: `Content-Length` with `Transfer-Encoding`, differing
//! or non-numeric lengths, obsolete line folding, bare CR or LF line ends, asterisk- and authority-form targets
//! and any version but HTTP/1.0 and 1.1 are all 400 `BAD_REQUEST` (catalog A3, A4, A6). Header *values* with
//! bytes outside HTAB, SP and 0x21–0x7E are only flagged: spec §8.2 refuses them at step 3, after the method.
//!
//! This module must never panic on any input, allocate in proportion to anything but the number of fields, or
//! accept a head whose body framing another HTTP implementation could read differently.

use std::ops::Range;

use memchr::memchr;
use msp_core::Reason;
use msp_core::sign::HOST_HEADER_PREFIX;

use super::limits::{MAX_FIELDS, MAX_HEAD_BYTES, MAX_METHOD, MAX_TARGET};

/// Why a head was refused before any step of spec §8.2. The variant is the diagnosis; [`HeadError::reason`]
/// is the wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request line")]
    RequestLine,
    #[error("method is not a token of at most {MAX_METHOD} bytes")]
    Method,
    #[error("request-target holds a byte outside 0x21-0x7E")]
    Target,
    #[error("asterisk-form request-target")]
    AsteriskForm,
    #[error("authority-form request-target")]
    AuthorityForm,
    #[error("HTTP version is not 1.0 or 1.1")]
    Version,
    #[error("malformed header field line")]
    FieldLine,
    #[error("obsolete line folding")]
    ObsFold,
    #[error("line not ended by CRLF")]
    LineEnding,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("Content-Length is not one decimal number")]
    ContentLength,
    #[error("Transfer-Encoding other than a single `chunked` on HTTP/1.1")]
    TransferEncoding,
    #[error("Host missing or repeated")]
    Host,
    #[error("request-target longer than {MAX_TARGET} bytes")]
    UriTooLong,
    #[error("head larger than {MAX_HEAD_BYTES} bytes or more than {MAX_FIELDS} fields")]
    HeadersTooLarge,
}

impl HeadError {
    /// The reason code the proxy answers with (spec §8.5).
    pub fn reason(self) -> Reason {
        match self {
            HeadError::UriTooLong => Reason::UriTooLong,
            HeadError::HeadersTooLarge => Reason::HeadersTooLarge,
            _ => Reason::BadRequest,
        }
    }
}

/// A byte range of the head. `u32` keeps a field at 16 bytes; heads are far below 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(range: Range<usize>) -> Span {
        // Heads are bounded by MAX_HEAD_BYTES long before u32 runs out; saturate rather than wrap anyway.
        let to = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            start: to(range.start),
            end: to(range.end),
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The bytes of this span in `buf` (empty if `buf` is not the buffer it came from).
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }

    pub fn len(self) -> usize {
        self.range().len()
    }

    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// HTTP/1.0 or HTTP/1.1 (spec §8.1); nothing else is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    Http10,
    #[default]
    Http11,
}

impl Version {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3, requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// No `Content-Length`, no `Transfer-Encoding`: no body.
    #[default]
    None,
    Length(u64),
    Chunked,
}

/// One header field line: name as received, value without surrounding SP/HTAB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// A parsed request head: spans into the bytes given to [`parse`], plus what the proxy needs to decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Span,
    /// The request-target without its fragment: a `#…` is discarded before any step of spec §8.2.
    pub target: Span,
    pub version: Version,
    /// Field lines in received order.
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// Bytes of the head, leading empty lines and the final empty line included.
    pub len: usize,
    /// A header value holds a byte other than HTAB, SP or 0x21–0x7E (spec §3.2; refused at §8.2 step 3).
    pub bad_header_value: bool,
    /// An `Upgrade` field is present (spec §8.1; refused at step 3).
    pub upgrade: bool,
    /// `Connection` names `Host`, `Content-Length`, `Transfer-Encoding` or an `x-ms-azure-host-*` field
    /// (spec §3.2; refused at step 3).
    pub protected_connection: bool,
    /// `Connection: close`.
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Field names listed in `Connection` (other than `close` and `keep-alive`): hop-by-hop, removed (spec §3.2).
    pub connection_names: Vec<Span>,
}

impl RequestHead {
    /// Back to the default head, keeping the capacity of its field and `Connection` name lists.
    pub fn reset(&mut self) {
        let mut fields = std::mem::take(&mut self.fields);
        let mut connection_names = std::mem::take(&mut self.connection_names);
        fields.clear();
        connection_names.clear();
        *self = RequestHead {
            fields,
            connection_names,
            ..RequestHead::default()
        };
    }

    /// Whether a field named `name` (any case) is hop-by-hop for this request (spec §3.2 step 1).
    pub fn is_hop_by_hop(&self, head: &[u8], name: &[u8]) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self
                .connection_names
                .iter()
                .any(|s| s.of(head).eq_ignore_ascii_case(name))
    }

    /// The last value of the field `name` (any case).
    pub fn field<'h>(&self, head: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
        self.fields
            .iter()
            .rev()
            .find(|f| f.name.of(head).eq_ignore_ascii_case(name))
            .map(|f| f.value.of(head))
    }
}

/// Hop-by-hop fields always removed from forwarded requests (spec §3.2 step 1).
pub const HOP_BY_HOP: [&[u8]; 5] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authorization",
    b"te",
];

/// Fields a `Connection` header must never name (spec §3.2): 400 `PROTECTED_HEADER`.
const PROTECTED: [&[u8]; 3] = [b"host", b"content-length", b"transfer-encoding"];

/// Where the head in `buf` ends (the index after its empty line), looking only at bytes from `from` on, so a
/// caller can pass the length it had already scanned. A bare-LF empty line also ends a head, so [`parse`] can
/// refuse it instead of waiting for a CRLF that never comes.
pub fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = skip_empty_lines(buf).max(from.saturating_sub(2));
    let mut at = start;
    while let Some(offset) = memchr(b'\n', buf.get(at..)?) {
        let lf = at + offset;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

/// Refuses an unfinished head as soon as no ending can make it acceptable: a method that is not a token, a
/// request-target past [`MAX_TARGET`] (414), or more than [`MAX_HEAD_BYTES`] (431). Looks only at the first
/// line and the length, so calling it after every read stays cheap.
pub fn check_partial(buf: &[u8]) -> Result<(), HeadError> {
    let start = skip_empty_lines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    let window = rest
        .get(..(MAX_METHOD + MAX_TARGET + 16).min(rest.len()))
        .unwrap_or_default();
    let line = match window.iter().position(|&b| b == b'\n') {
        Some(lf) => window.get(..lf).unwrap_or_default(),
        None => window,
    };
    match line.iter().position(|&b| b == b' ') {
        None => {
            if line.len() > MAX_METHOD || !line.iter().all(|&b| is_tchar(b) || b == b'\r') {
                return Err(HeadError::Method);
            }
        }
        Some(sp) => {
            let method = line.get(..sp).unwrap_or_default();
            if method.is_empty()
                || method.len() > MAX_METHOD
                || !method.iter().all(|&b| is_tchar(b))
            {
                return Err(HeadError::Method);
            }
            let after = line.get(sp + 1..).unwrap_or_default();
            let target_len = after.iter().position(|&b| b == b' ').unwrap_or(after.len());
            if target_len > MAX_TARGET {
                return Err(HeadError::UriTooLong);
            }
        }
    }
    if buf.len() > MAX_HEAD_BYTES {
        return Err(HeadError::HeadersTooLarge);
    }
    Ok(())
}

/// Parses a complete head (as delimited by [`find_end`]). Never panics; any input that is not a head this
/// proxy accepts is an error.
pub fn parse(head: &[u8]) -> Result<RequestHead, HeadError> {
    let mut out = RequestHead::default();
    parse_into(head, &mut out)?;
    Ok(out)
}

/// [`parse`] into a reused value (its vectors keep their capacity across requests of a connection).
pub fn parse_into(head: &[u8], out: &mut RequestHead) -> Result<(), HeadError> {
    out.reset();
    out.len = head.len();

    let mut lines = Lines {
        buf: head,
        at: skip_empty_lines(head),
    };
    let request_line = lines.next_line()?.ok_or(HeadError::RequestLine)?;
    parse_request_line(head, request_line, out)?;
    if head.len() > MAX_HEAD_BYTES {
        return Err(HeadError::HeadersTooLarge);
    }
    loop {
        let line = lines.next_line()?.ok_or(HeadError::FieldLine)?;
        if line.is_empty() {
            break;
        }
        if out.fields.len() >= MAX_FIELDS {
            return Err(HeadError::HeadersTooLarge);
        }
        let (field, clean) = parse_field_line(head, line)?;
        out.bad_header_value |= !clean;
        out.fields.push(field);
    }
    if lines.at != head.len() {
        return Err(HeadError::FieldLine); // bytes after the empty line are not part of a head
    }
    check_fields(head, out)
}

/// Iterates over lines ending in CRLF; a bare LF, or a CR that does not end the line, is refused.
struct Lines<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Lines<'_> {
    /// The next line's range (without CRLF), `None` at the end of the buffer.
    fn next_line(&mut self) -> Result<Option<Range<usize>>, HeadError> {
        let Some(rest) = self.buf.get(self.at..).filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let lf = memchr(b'\n', rest).ok_or(HeadError::LineEnding)?;
        if lf == 0 || rest.get(lf - 1) != Some(&b'\r') {
            return Err(HeadError::LineEnding);
        }
        let line = self.at..self.at + lf - 1;
        self.at += lf + 1;
        Ok(Some(line))
    }
}

fn parse_request_line(
    head: &[u8],
    line: Range<usize>,
    out: &mut RequestHead,
) -> Result<(), HeadError> {
    let bytes = head.get(line.clone()).unwrap_or_default();
    let sp1 = memchr(b' ', bytes).ok_or(HeadError::RequestLine)?;
    let method = bytes.get(..sp1).unwrap_or_default();
    if method.is_empty() || method.len() > MAX_METHOD || !all_tchar(method) {
        return Err(HeadError::Method);
    }
    let after = bytes.get(sp1 + 1..).unwrap_or_default();
    let sp2 = memchr(b' ', after).ok_or(HeadError::RequestLine)?;
    let target = after.get(..sp2).unwrap_or_default();
    if target.is_empty() {
        return Err(HeadError::RequestLine);
    }
    if target.len() > MAX_TARGET {
        return Err(HeadError::UriTooLong);
    }
    if !all_visible(target) {
        return Err(HeadError::Target);
    }
    out.version = match after.get(sp2 + 1..).unwrap_or_default() {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(HeadError::Version),
    };
    target_form(method, target)?;
    let target_start = line.start + sp1 + 1;
    let kept = memchr(b'#', target).unwrap_or(target.len());
    out.method = Span::new(line.start..line.start + sp1);
    out.target = Span::new(target_start..target_start + kept);
    Ok(())
}

/// Origin-form (`/…`) and absolute-form (`scheme://…`) only (spec §8.1). Authority-form is CONNECT's own
/// form (RFC 9112 §3.2.3), so `CONNECT host:443` is a well-formed request that step 2 refuses with 405
/// (conf 74, catalog A4); with any other method it is malformed.
fn target_form(method: &[u8], target: &[u8]) -> Result<(), HeadError> {
    if target.first() == Some(&b'/') {
        return Ok(());
    }
    if target == b"*" {
        return Err(HeadError::AsteriskForm);
    }
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "://" for an authority.
    let scheme_len = target
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(target.len());
    let starts_alpha = target.first().is_some_and(u8::is_ascii_alphabetic);
    let absolute = starts_alpha
        && target
            .get(scheme_len..)
            .is_some_and(|r| r.starts_with(b"://"));
    if absolute || method == b"CONNECT" {
        Ok(())
    } else {
        Err(HeadError::AuthorityForm)
    }
}

/// One field line, and whether its value holds only bytes a header value may hold (spec §3.2).
fn parse_field_line(head: &[u8], line: Range<usize>) -> Result<(Field, bool), HeadError> {
    let bytes = head.get(line.clone()).unwrap_or_default();
    if matches!(bytes.first(), Some(b' ' | b'\t')) {
        return Err(HeadError::ObsFold);
    }
    let colon = memchr(b':', bytes).ok_or(HeadError::FieldLine)?;
    let name = bytes.get(..colon).unwrap_or_default();
    // RFC 9112 §5.1: no whitespace between the name and the colon; a name is a token.
    if name.is_empty() || !all_tchar(name) {
        return Err(HeadError::FieldLine);
    }
    let value = bytes.get(colon + 1..).unwrap_or_default();
    // The surrounding SP and HTAB are value bytes too, so checking the untrimmed value is the same check.
    let clean = all_value_bytes(value);
    let trimmed = ows_trimmed(value);
    let value_start = line.start + colon + 1;
    let field = Field {
        name: Span::new(line.start..line.start + colon),
        value: Span::new(value_start + trimmed.start..value_start + trimmed.end),
    };
    Ok((field, clean))
}

/// Framing, `Host`, `Connection`, `Upgrade` and `Expect` (RFC 9112 §3.2, §6; spec §3.2, §8.1).
fn check_fields(head: &[u8], out: &mut RequestHead) -> Result<(), HeadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0usize;
    for field in &out.fields {
        let name = field.name.of(head);
        let value = field.value.of(head);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in list_items(head, field.value).map(|s| s.of(head)) {
                // Exactly one coding in all, and it is `chunked`: anything else could be read two ways.
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::TransferEncoding);
                }
                chunked = true;
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for item in list_items(head, field.value).filter(|s| !s.is_empty()) {
                let token = item.of(head);
                if token.eq_ignore_ascii_case(b"close") {
                    out.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    // keep-alive is hop-by-hop already; any other name becomes hop-by-hop here.
                    out.protected_connection |=
                        PROTECTED.iter().any(|p| token.eq_ignore_ascii_case(p))
                            || starts_with_ignore_case(token, HOST_HEADER_PREFIX.as_bytes());
                    out.connection_names.push(item);
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            out.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"expect")
            && value.eq_ignore_ascii_case(b"100-continue")
        {
            out.expect_continue = true;
        }
    }
    if transfer_encoding && !chunked {
        return Err(HeadError::TransferEncoding); // an empty Transfer-Encoding value
    }
    if transfer_encoding && length.is_some() {
        return Err(HeadError::LengthAndChunked);
    }
    if transfer_encoding && out.version == Version::Http10 {
        return Err(HeadError::TransferEncoding);
    }
    // RFC 9112 §3.2: exactly one Host on HTTP/1.1, at most one on HTTP/1.0.
    let hosts_ok = match out.version {
        Version::Http11 => hosts == 1,
        Version::Http10 => hosts <= 1,
    };
    if !hosts_ok {
        return Err(HeadError::Host);
    }
    out.framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::None,
    };
    Ok(())
}

/// `1*DIGIT` as a `u64`; no sign, no spaces, no list, no overflow.
pub fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// The comma-separated items of a list value (RFC 9110 §5.6.1) as spans, each without surrounding OWS. Empty
/// items are kept: callers decide (`Transfer-Encoding: chunked,` is refused, an empty `Connection` item skipped).
fn list_items(head: &[u8], value: Span) -> impl Iterator<Item = Span> + '_ {
    let base = value.range().start;
    let mut start = 0;
    value.of(head).split(|&b| b == b',').map(move |piece| {
        let piece_start = base + start;
        start += piece.len() + 1;
        let trimmed = ows_trimmed(piece);
        Span::new(piece_start + trimmed.start..piece_start + trimmed.end)
    })
}

fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match (buf.get(at), buf.get(at + 1)) {
            (Some(b'\r'), Some(b'\n')) => at += 2,
            (Some(b'\n'), _) => at += 1,
            _ => return at,
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`, as a table: one load per byte instead of a range test and a search of the
/// punctuation list (the head parser checks every method and field-name byte).
// Evaluated at compile time: an index out of range would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x80 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
};

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    // A `u8` index is always inside the 256 entries; `get` keeps the proxy path free of indexing.
    TCHAR.get(usize::from(b)).copied().unwrap_or(false)
}

fn all_tchar(v: &[u8]) -> bool {
    v.iter().all(|&b| is_tchar(b))
}

/// Whether `v` holds only visible ASCII, 0x21–0x7E. Without an early exit the compiler checks many bytes a step.
fn all_visible(v: &[u8]) -> bool {
    v.iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) <= 0x7e - 0x21))
}

/// Whether `v` holds only bytes a header value may hold (spec §3.2): HTAB, SP, 0x21–0x7E.
fn all_value_bytes(v: &[u8]) -> bool {
    v.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(0x20) <= 0x5e) | (b == b'\t'))
    })
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub fn trim_ows(v: &[u8]) -> &[u8] {
    v.get(ows_trimmed(v)).unwrap_or_default()
}

/// The range of `v` without leading and trailing SP/HTAB.
fn ows_trimmed(v: &[u8]) -> Range<usize> {
    let start = v.iter().position(|&b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    start..end
}

pub fn starts_with_ignore_case(v: &[u8], prefix: &[u8]) -> bool {
    v.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests;
