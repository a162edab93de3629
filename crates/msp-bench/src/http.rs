//! The load generator's HTTP/1.1: one request rendered once, and a minimal strict reader of the responses the
//! host and the agent send (status, `Content-Length` framing, the relay marker of spec §3.6).
//!
//! Pure functions over bytes. It must never accept a response it cannot frame exactly: a benchmark that
//! miscounts bytes measures nothing.

/// The relay marker the agent adds to every relayed response (spec §3.6); the direct path never has it.
pub const MARKER_NAME: &[u8] = b"x-ms-azure-host-authorization";
/// `x-msp-reason`, the reason code on refusals.
const REASON_NAME: &[u8] = b"x-msp-reason";
/// Largest response head the reader accepts, bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed status line")]
    StatusLine,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error(
        "response without Content-Length (chunked or until-close framing is not expected here)"
    )]
    NoLength,
    #[error("bad Content-Length")]
    BadLength,
}

/// What the reader needs from a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head, the empty line included.
    pub head_len: usize,
    pub content_length: usize,
    /// The relay marker is present.
    pub marker: bool,
    /// `x-msp-reason`, when present.
    pub reason: Option<String>,
    /// `Connection: close`.
    pub close: bool,
}

impl ResponseHead {
    /// Head plus body.
    pub fn total(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// A GET request for `path` to `host`, with `Metadata: true`; `close` adds `Connection: close`.
pub fn get(path: &str, host: &str, close: bool) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nMetadata: true\r\nUser-Agent: msp-bench\r\n"
    );
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Where the head in `buf` ends (after `\r\n\r\n`), scanning from `from`.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// Parses a complete response head (`buf` starts with it and holds at least `end` bytes).
pub fn parse_head(buf: &[u8], end: usize) -> Result<ResponseHead, HttpError> {
    let head = buf.get(..end).ok_or(HttpError::StatusLine)?;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or(HttpError::StatusLine)?;
    let status = status_line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix(b"HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(HttpError::StatusLine)?;
    let mut length = None;
    let mut marker = false;
    let mut reason = None;
    let mut close = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(HttpError::BadLength)?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case(MARKER_NAME) {
            marker = value == b"value";
        } else if name.eq_ignore_ascii_case(REASON_NAME) {
            reason = Some(String::from_utf8_lossy(value).into_owned());
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    let content_length = match (length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err(HttpError::NoLength),
    };
    Ok(ResponseHead {
        status,
        head_len: end,
        content_length,
        marker,
        reason,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_length_marker_and_reason() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nx-msp-reason: RULE_DENY\r\n\
                    X-Ms-Azure-Host-Authorization: value\r\nConnection: close\r\n\r\n";
        let end = head_end(raw, 0).unwrap();
        assert_eq!(end, raw.len());
        let h = parse_head(raw, end).unwrap();
        assert_eq!(
            (h.status, h.content_length, h.marker, h.close),
            (403, 0, true, true)
        );
        assert_eq!(h.reason.as_deref(), Some("RULE_DENY"));
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(raw, raw.len()), Err(HttpError::NoLength));
        let raw = b"SSH-2.0\r\n\r\n";
        assert_eq!(parse_head(raw, raw.len()), Err(HttpError::StatusLine));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r", 0), None);
    }
}
