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

/// Text leaves the process only through these (spec §11.4): one redaction for logs, events, status and summaries.
pub(crate) use msp_core::redact::{redact, truncate_utf8};

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
