//! `processCmdLine` (spec §6): the first 4 NUL-separated words of `/proc/<pid>/cmdline`, redacted (spec §11.4),
//! control characters escaped, joined by spaces, at most 1,024 bytes cut on a UTF-8 boundary. Pure: it never
//! reads `/proc` itself, and never shows a secret it cannot see whole.
use msp_core::redact::{REDACTED, redact_args, truncate_utf8};

/// Words of the command line kept (spec §6).
pub const CMDLINE_MAX_WORDS: usize = 4;
/// Bytes of `processCmdLine` at most (spec §6, decided).
pub const CMDLINE_MAX_BYTES: usize = 1024;

/// Formats raw `/proc/<pid>/cmdline` bytes. `truncated` says the read stopped at its limit, so the last word may
/// be a fragment: it is hidden whole rather than shown cut (a cut secret would escape the redaction rules).
pub fn format_cmdline(raw: &[u8], truncated: bool) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let words: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    let last = words.len().saturating_sub(1);
    let texts: Vec<String> = words
        .iter()
        .take(CMDLINE_MAX_WORDS)
        .enumerate()
        .map(|(i, w)| {
            if truncated && i == last {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(w).into_owned()
            }
        })
        .collect();
    let mut line = redact_args(texts.iter().map(String::as_str)).join(" ");
    truncate_utf8(&mut line, CMDLINE_MAX_BYTES);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_065_keeps_four_words_and_hides_secrets() {
        let raw = b"/usr/bin/tool\0--password\0hunter2\0--verbose\0fifth\0";
        assert_eq!(
            format_cmdline(raw, false),
            "/usr/bin/tool --password *** --verbose"
        );
        let raw = b"curl\0-H\0Metadata:true\0http://169.254.169.254/x?sig=abc&api-version=1\0";
        assert_eq!(
            format_cmdline(raw, false),
            "curl -H Metadata:true http://169.254.169.254/x?sig=***&api-version=1"
        );
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert_eq!(
            format_cmdline(b"evil\nINFO fake\0x\0", false),
            "evil\\nINFO fake x"
        );
    }

    #[test]
    fn output_is_at_most_1024_bytes_on_a_char_boundary() {
        let mut raw = "é".repeat(600).into_bytes(); // 1,200 bytes
        raw.push(0);
        let line = format_cmdline(&raw, false);
        assert!(line.len() <= CMDLINE_MAX_BYTES);
        assert_eq!(line.len(), 1024);
        assert!(line.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_cut_last_word_is_hidden() {
        assert_eq!(
            format_cmdline(b"prog\0--x\0abcdef0123", true),
            "prog --x ***"
        );
        assert_eq!(format_cmdline(b"", false), "");
    }
}
