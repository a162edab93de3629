use proptest::prelude::*;

use super::*;

#[test]
fn query_secrets_are_hidden_in_every_case() {
    assert_eq!(
        redact("/machine?comp=goalstate&sig=abc%2F123&x=1"),
        "/machine?comp=goalstate&sig=***&x=1"
    );
    assert_eq!(
        redact("GET /a?SIG=1&Signature=2&token=3#frag"),
        "GET /a?SIG=***&Signature=***&token=***#frag"
    );
    assert_eq!(
        redact("client_secret=s3cr3t access_token=t0k key=k pwd=p"),
        "client_secret=*** access_token=*** key=*** pwd=***"
    );
}

#[test]
fn key_names_inside_longer_words_are_not_secrets() {
    assert_eq!(
        redact("monkey=1&keyboard=2&signed=3&tokens=4"),
        "monkey=1&keyboard=2&signed=3&tokens=4"
    );
    // `secret` preceded by `_` is part of another identifier, but `client_secret` itself is listed.
    assert_eq!(
        redact("my_secret=1 client_secret=2"),
        "my_secret=1 client_secret=***"
    );
}

#[test]
fn flag_values_are_hidden() {
    assert_eq!(
        redact("tool --password hunter2 --user bob"),
        "tool --password *** --user bob"
    );
    assert_eq!(redact("tool -token abc"), "tool -token ***");
    assert_eq!(redact("tool --password=hunter2"), "tool --password=***");
    // Not a flag: a word ending in dashes before it, or no whitespace after it.
    assert_eq!(redact("a---password x"), "a---password x");
}

#[test]
fn bearer_tokens_and_long_hex_runs_are_hidden() {
    assert_eq!(
        redact("Authorization: Bearer eyJhbGciOi.x_y-z, next"),
        "Authorization: Bearer ***, next"
    );
    assert_eq!(redact("bearer  abc"), "bearer  ***");
    let hex64 = "0123456789abcdef".repeat(4);
    assert_eq!(redact(&format!("k {hex64} v")), "k *** v");
    let hex63 = &hex64[1..];
    assert_eq!(redact(hex63), hex63, "63 digits are not enough");
    assert_eq!(redact(&format!("sig={hex64}")), "sig=***");
}

#[test]
fn control_characters_are_escaped() {
    assert_eq!(
        redact("a\nb\rc\td\u{1b}[31m\u{7f}"),
        "a\\nb\\rc\\td\\u{1b}[31m\\u{7f}"
    );
    assert_eq!(
        escape_control("x\u{2028}y\u{202e}z"),
        "x\\u{2028}y\\u{202e}z"
    );
    assert_eq!(escape_control("é ünïcode"), "é ünïcode");
}

#[test]
fn args_hide_the_word_after_a_secret_flag_whole() {
    let args = redact_args(["mysql", "--password", "two words", "-u", "root"]);
    assert_eq!(args, ["mysql", "--password", "***", "-u", "root"]);
    let args = redact_args(["curl", "-H", "Authorization: Bearer", "tok en"]);
    assert_eq!(args, ["curl", "-H", "Authorization: Bearer", "***"]);
    let args = redact_args(["curl", "http://x/?sig=abc&a=b", "--token=zz"]);
    assert_eq!(args, ["curl", "http://x/?sig=***&a=b", "--token=***"]);
    // A flag at the end hides nothing further and does not panic.
    assert_eq!(redact_args(["x", "--key"]), ["x", "--key"]);
}

#[test]
fn truncation_respects_utf8_boundaries() {
    let mut s = "aé".repeat(3); // a(1) é(2) ...
    truncate_utf8(&mut s, 2);
    assert_eq!(s, "a");
    let mut s = "abc".to_owned();
    truncate_utf8(&mut s, 10);
    assert_eq!(s, "abc");
}

proptest! {
    #[test]
    fn never_panics_and_never_emits_control_characters(text in any::<String>()) {
        let out = redact(&text);
        prop_assert!(!out.chars().any(needs_escape));
    }

    #[test]
    fn args_never_emit_control_characters(args in proptest::collection::vec(any::<String>(), 0..6)) {
        let out = redact_args(args.iter().map(String::as_str));
        prop_assert_eq!(out.len(), args.len());
        prop_assert!(out.iter().all(|a| !a.chars().any(needs_escape)));
    }

    #[test]
    fn secret_values_never_survive(
        key in proptest::sample::select(SECRET_KEYS.to_vec()),
        upper in any::<bool>(),
        value in "[A-Za-z0-9%._~+/-]{12,40}",
        prefix in "[a-z]{0,8}",
        suffix in "[a-z]{0,8}",
    ) {
        let key = if upper { key.to_ascii_uppercase() } else { key.to_owned() };
        for text in [
            format!("/p?{prefix}=1&{key}={value}&{suffix}=2"),
            format!("cmd --{key} {value} {suffix}"),
            format!("Authorization: Bearer {value}"),
        ] {
            let out = redact(&text);
            prop_assert!(!out.contains(&value), "{} -> {}", text, out);
            prop_assert!(out.contains(REDACTED));
        }
    }

    #[test]
    fn hex_runs_of_64_or_more_never_survive(hex in "[0-9a-fA-F]{64,200}", pad in "[g-z ]{0,10}") {
        let out = redact(&format!("{pad}{hex}{pad}"));
        prop_assert!(!out.contains(&hex[..64]));
    }

    #[test]
    fn text_without_secrets_is_unchanged(text in "[g-zG-Z0-9 ./:?,(){}<>]{0,80}") {
        // No `=`, no dash (so no flag), no hex run long enough, no control characters.
        prop_assume!(!text.to_ascii_lowercase().contains("bearer"));
        prop_assert_eq!(redact(&text), text);
    }

    #[test]
    fn redaction_is_idempotent_without_control_characters(text in "[ -~]{0,120}") {
        let once = redact(&text);
        prop_assert_eq!(redact(&once), once.clone());
    }
}
