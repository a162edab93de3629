//! Responses the proxy generates itself (spec §8.3, §8.5, §9.2, §9.6), as exact bytes.
//!
//! Every one carries `Connection: close` (the proxy closes after it), every non-2xx one `x-msp-reason`, and the
//! body is empty except for 405 (the text of §8.3) and the local endpoints. None carries the relay marker of
//! §3.6. This module must never put request data, key material or claims into a response.

use msp_core::Reason;

/// The body of every 405 (spec §8.3).
pub const METHOD_NOT_ALLOWED_BODY: &str = "Method Not Allowed";
/// The `Allow` value of every 405 (spec §8.3).
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";
/// The content type of the local endpoints' JSON (spec §9.2, §9.6).
pub const JSON: &str = "application/json; charset=utf-8";
/// The interim response sent before reading a body the client holds back for it (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Writes the refusal for `reason` into `out` (cleared first).
pub fn refusal(reason: Reason, out: &mut Vec<u8>) {
    out.clear();
    let status = reason.status();
    if status == 405 {
        // Spec §8.3, byte for byte, whatever the code (§8.5: every 405 has this shape).
        out.extend_from_slice(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: ");
        out.extend_from_slice(ALLOW.as_bytes());
        out.extend_from_slice(
            b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nx-msp-reason: ",
        );
        out.extend_from_slice(reason.code().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(METHOD_NOT_ALLOWED_BODY.as_bytes());
        return;
    }
    status_line(status, out);
    out.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\nx-msp-reason: ");
    out.extend_from_slice(reason.code().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// A 200 with a JSON body (the local endpoints). `head_only` leaves the body out (a `HEAD` request).
pub fn json_ok(body: &[u8], head_only: bool, out: &mut Vec<u8>) {
    out.clear();
    status_line(200, out);
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(JSON.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

fn status_line(status: u16, out: &mut Vec<u8>) {
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(phrase.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(reason: Reason) -> String {
        let mut out = Vec::new();
        refusal(reason, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn conf_074_the_405_is_byte_exact() {
        assert_eq!(
            text(Reason::MethodNotAllowed),
            "HTTP/1.1 405 Method Not Allowed\r\n\
             Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Connection: close\r\n\
             x-msp-reason: METHOD_NOT_ALLOWED\r\n\
             \r\n\
             Method Not Allowed"
        );
        assert!(
            text(Reason::CanonScheme)
                .ends_with("x-msp-reason: CANON_SCHEME\r\n\r\nMethod Not Allowed")
        );
    }

    #[test]
    fn conf_081_refusals_close_and_carry_the_reason() {
        assert_eq!(
            text(Reason::NoAttribution),
            "HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\nConnection: close\r\n\
             x-msp-reason: NO_ATTRIBUTION\r\n\r\n"
        );
        for &r in Reason::ALL
            .iter()
            .filter(|r| r.status() >= 400 && r.status() < 600)
        {
            let t = text(r);
            assert!(t.contains("\r\nConnection: close\r\n"), "{t}");
            assert!(
                t.contains(&format!("\r\nx-msp-reason: {}\r\n", r.code())),
                "{t}"
            );
            assert!(
                !t.to_ascii_lowercase()
                    .contains("x-ms-azure-host-authorization")
            );
        }
    }

    #[test]
    fn json_ok_has_length_type_and_close() {
        let mut out = Vec::new();
        json_ok(b"{}", false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\n{}"
        );
    }
}
