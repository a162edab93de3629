//! Telemetry (spec §11): the bounded event queue, spool files, XML payloads, and the sender that posts them to
//! the configured WireServer as unsigned exempt calls.
//!
//! Telemetry must never carry key bytes, signatures or unredacted secrets (conf 91), never block an emitting
//! task, and never sign with a key the key keeper has dropped (it reads the key from the current snapshot at
//! send time and keeps no copy).

pub mod event;
pub mod layer;
pub mod payload;
pub mod sender;
pub mod spool;

pub use event::{Event, EventLevel, EventSink};

/// Redacts text before it leaves the process (spec §11.4).
// TODO(merge): `pub(crate) use msp_core::redact::redact;` once it lands on main; this copy covers the same rules.
pub(crate) fn redact(text: &str) -> String {
    const SECRET_KEYS: [&str; 9] = [
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
    let is_secret = |k: &str| SECRET_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k));
    let mut out = String::with_capacity(text.len());
    let mut hidden_next_word = false;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if hidden_next_word {
            out.push_str("***");
            hidden_next_word = false;
            continue;
        }
        if let Some(flag) = word.strip_prefix("--")
            && is_secret(flag)
        {
            out.push_str(word);
            hidden_next_word = true;
            continue;
        }
        if word == "Bearer" {
            out.push_str(word);
            hidden_next_word = true;
            continue;
        }
        // k=v pairs inside the word, separated by & ? ; or start.
        let mut rest = word;
        while !rest.is_empty() {
            let cut = rest.find(['&', '?', ';']).map_or(rest.len(), |i| i + 1);
            let (piece, tail) = rest.split_at(cut);
            let (pair, sep) = match piece.strip_suffix(['&', '?', ';']) {
                Some(p) => (p, &piece[p.len()..]),
                None => (piece, ""),
            };
            match pair.split_once('=') {
                Some((k, _)) if is_secret(k.rsplit(['/', ' ']).next().unwrap_or(k)) => {
                    out.push_str(k);
                    out.push_str("=***");
                }
                _ => out.push_str(&hide_hex_runs(pair)),
            }
            out.push_str(sep);
            rest = tail;
        }
    }
    escape_control(&out)
}

/// Replaces every run of 64 or more hex digits with `***`.
fn hide_hex_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 64 {
            out.push_str("***");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Cuts `text` to at most `max` bytes on a UTF-8 boundary.
pub(crate) fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_091_redaction_covers_the_spec_11_4_forms() {
        assert_eq!(redact("GET /x?a=1&sig=abc&b=2"), "GET /x?a=1&sig=***&b=2");
        assert_eq!(
            redact("curl --password hunter2 -v"),
            "curl --password *** -v"
        );
        assert_eq!(
            redact("Authorization: Bearer eyJabc.def"),
            "Authorization: Bearer ***"
        );
        assert_eq!(redact(&"ab".repeat(32)), "***");
        assert_eq!(redact(&"ab".repeat(31)), "ab".repeat(31));
        assert_eq!(redact("a\nforged"), "a\\nforged");
        assert_eq!(redact("Token=x"), "Token=***");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "aé".to_owned();
        truncate_utf8(&mut s, 2);
        assert_eq!(s, "a");
    }
}
