use super::*;
use std::time::Duration;

const KEY: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
const GUID: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
const DATE: &str = "Wed, 23 Apr 2025 12:00:00 GMT";

fn key() -> SigningKey {
    SigningKey::from_hex(KEY).unwrap()
}

/// A signed request: headers plus a valid authorization header for them.
fn signed(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let sig = {
        let p = RequestParts {
            method: b"GET",
            target: b"/metadata/instance?api-version=2021-02-01",
            headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            body: b"",
        };
        p.sign(&key())
    };
    headers.push((
        AUTHORIZATION_HEADER.into(),
        authorization_value(&KeyGuid::parse(GUID).unwrap(), &sig),
    ));
    headers
}

fn base_headers() -> Vec<(String, String)> {
    vec![
        ("Host".into(), "169.254.169.254".into()),
        ("Metadata".into(), "true".into()),
        (
            CLAIMS_HEADER.into(),
            crate::claims::host_claims_header(true).into(),
        ),
        (DATE_HEADER.into(), DATE.into()),
    ]
}

fn verify_at(
    headers: &[(String, String)],
    now: SystemTime,
) -> std::result::Result<Verified, Reason> {
    let p = RequestParts {
        method: b"GET",
        target: b"/metadata/instance?api-version=2021-02-01",
        headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        body: b"",
    };
    let guid = KeyGuid::parse(GUID).unwrap();
    verify_request(
        &p,
        |g| (g == &guid).then(key),
        now,
        DEFAULT_FRESHNESS_WINDOW,
    )
}

fn date() -> SystemTime {
    parse_host_date(DATE).unwrap()
}

#[test]
fn b8_valid_request_verifies_with_is_root() {
    let v = verify_at(&signed(base_headers()), date()).unwrap();
    assert!(v.is_root);
}

#[test]
fn conf_094_missing_authorization_is_auth_missing() {
    assert_eq!(verify_at(&base_headers(), date()), Err(Reason::AuthMissing));
}

#[test]
fn b8_malformed_authorization_is_auth_malformed() {
    for bad in [
        "Azure-HMAC-SHA256",
        "Bearer 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf ee133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5726",
        "Azure-HMAC-SHA256 not-a-guid ee133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5726",
        "Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf zz133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5726",
        "Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf ee13",
        "Azure-HMAC-SHA256  9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf ee133dcab0d113119c8fa056fd21c9dab7b467840afe7f5d9ee04e0f79fd5726",
    ] {
        let mut h = base_headers();
        h.push((AUTHORIZATION_HEADER.into(), bad.into()));
        assert_eq!(verify_at(&h, date()), Err(Reason::AuthMalformed), "{bad}");
    }
}

#[test]
fn conf_094_unknown_guid_is_key_unknown() {
    let mut h = signed(base_headers());
    let last = h.last_mut().unwrap();
    last.1 = last.1.replace(GUID, "00000000-0000-0000-0000-000000000000");
    assert_eq!(verify_at(&h, date()), Err(Reason::KeyUnknown));
}

#[test]
fn conf_094_date_301_seconds_off_is_date_skew_either_way() {
    let h = signed(base_headers());
    assert!(verify_at(&h, date() + Duration::from_secs(300)).is_ok());
    assert_eq!(
        verify_at(&h, date() + Duration::from_secs(301)),
        Err(Reason::DateSkew)
    );
    assert_eq!(
        verify_at(&h, date() - Duration::from_secs(301)),
        Err(Reason::DateSkew)
    );
    // Host time is truncated to whole seconds before comparing.
    assert!(verify_at(&h, date() + Duration::from_millis(300_999)).is_ok());
}

#[test]
fn b8_missing_or_obsolete_date_is_date_missing() {
    for date_value in [
        None,
        Some("Wednesday, 23-Apr-25 12:00:00 GMT"),
        Some("2025-04-23T12:00:00Z"),
    ] {
        let mut h: Vec<_> = base_headers()
            .into_iter()
            .filter(|(n, _)| n != DATE_HEADER)
            .collect();
        if let Some(d) = date_value {
            h.push((DATE_HEADER.into(), d.into()));
        }
        assert_eq!(
            verify_at(&signed(h), date()),
            Err(Reason::DateMissing),
            "{date_value:?}"
        );
    }
}

#[test]
fn b8_claims_must_carry_string_is_root() {
    for claims in [
        r#"{"isRoot": true}"#,
        r#"{"isRoot": "yes"}"#,
        "not json",
        "{}",
    ] {
        let mut h = base_headers();
        h.retain(|(n, _)| n != CLAIMS_HEADER);
        h.push((CLAIMS_HEADER.into(), claims.into()));
        assert_eq!(
            verify_at(&signed(h), date()),
            Err(Reason::ClaimsInvalid),
            "{claims}"
        );
    }
}

#[test]
fn b4_tampered_header_is_sig_mismatch() {
    let mut h = signed(base_headers());
    let claims = h.iter_mut().find(|(n, _)| n == CLAIMS_HEADER).unwrap();
    claims.1 = crate::claims::host_claims_header(false).into();
    assert_eq!(verify_at(&h, date()), Err(Reason::SigMismatch));
}

#[test]
fn signature_verifies_only_with_its_own_key() {
    let h = signed(base_headers());
    let p = RequestParts {
        method: b"GET",
        target: b"/metadata/instance?api-version=2021-02-01",
        headers: h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        body: b"",
    };
    let sig = p.sign(&key());
    assert!(p.verify(&key(), &sig));
    let mut other = *key().as_bytes();
    other[0] ^= 1;
    assert!(!p.verify(&SigningKey::from_bytes(other), &sig));
}

#[test]
fn key_hex_must_be_exactly_32_bytes() {
    assert!(SigningKey::from_hex(&KEY[..62]).is_err());
    assert!(SigningKey::from_hex(&format!("{KEY}00")).is_err());
    assert!(SigningKey::from_hex(&KEY.replace('4', "g")).is_err());
    assert_eq!(format!("{:?}", key()), "SigningKey(***)");
}

#[test]
fn guid_shape_is_checked() {
    assert!(KeyGuid::parse(GUID).is_ok());
    assert!(KeyGuid::parse(&GUID.to_uppercase()).is_ok());
    assert!(KeyGuid::parse("9cf81e9703164ad394a78ccbdee8ccbf").is_err());
    assert!(KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbg").is_err());
    assert!(KeyGuid::parse("").is_err());
}

#[test]
fn guid_is_kept_as_received_and_exactly_36_bytes() {
    let upper = GUID.to_uppercase();
    for text in [GUID, upper.as_str()] {
        let g = KeyGuid::parse(text).unwrap();
        assert_eq!(g.as_str(), text);
        assert_eq!(g.to_string(), text);
        assert_eq!(format!("{g:?}"), format!("KeyGuid({text:?})"));
        assert_eq!(KeyGuid::parse(&g.to_string()), Ok(g));
    }
    assert_ne!(KeyGuid::parse(GUID), KeyGuid::parse(&upper), "case is kept");
    let too_short = &GUID[..35];
    let too_long = format!("{GUID}0");
    let dash_moved = "9cf81e970-316-4ad3-94a7-8ccbdee8ccbf";
    // 36 bytes, not 36 ASCII characters: `é` takes two.
    let not_ascii = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccé";
    assert_eq!(not_ascii.len(), 36);
    for bad in [too_short, too_long.as_str(), dash_moved, not_ascii] {
        assert_eq!(
            KeyGuid::parse(bad),
            Err(SignError::GuidMalformed { guid: bad.into() }),
            "{bad}"
        );
    }
}

#[test]
fn guids_order_and_hash_as_their_text() {
    use std::hash::{BuildHasher, RandomState};
    let lower = KeyGuid::parse(GUID).unwrap();
    let upper = KeyGuid::parse(&GUID.to_uppercase()).unwrap();
    let zeros = KeyGuid::parse("00000000-0000-0000-0000-000000000000").unwrap();
    assert!(zeros < upper && upper < lower, "byte order of the text");
    let state = RandomState::new();
    assert_eq!(state.hash_one(lower), state.hash_one(GUID));
}

#[test]
fn is_root_reads_json_strings_escaped_or_not() {
    let cases: [(&[u8], Option<bool>); 13] = [
        (br#"{ "isRoot": "true"}"#, Some(true)),
        (br#"{"isRoot":"false"}"#, Some(false)),
        (br#"{"isRoot": "tr\u0075e"}"#, Some(true)),
        (br#"{"isRoot": "f\u0061lse", "other": 1}"#, Some(false)),
        (br#"{"isRoot": "True"}"#, None),
        (br#"{"isRoot": true}"#, None),
        (br#"{"isRoot": "true", "isRoot": "true"}"#, None),
        (br#"{"isroot": "true"}"#, None),
        (br#"{"isRoot": "true"} x"#, None),
        (b"{\"isRoot\": \"tr\xffe\"}", None),
        // spec §12.3 step 4: a JSON object; serde's derive alone would read these arrays as the struct.
        (br#"["true"]"#, None),
        (br#" ["false"]"#, None),
        (b" \r\n\t{\"isRoot\": \"true\"}", Some(true)),
    ];
    for (value, expected) in cases {
        assert_eq!(
            parse_is_root(value),
            expected,
            "{}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn each_host_header_counts_its_last_value_in_any_case() {
    let stale = "Wed, 23 Apr 2025 11:00:00 GMT";
    let fresh_last = signed(vec![
        (DATE_HEADER.into(), stale.into()),
        ("X-MS-Azure-Host-Claims".into(), "{}".into()),
        ("X-MS-AZURE-HOST-DATE".into(), DATE.into()),
        (CLAIMS_HEADER.into(), r#"{"isRoot": "false"}"#.into()),
    ]);
    assert_eq!(verify_at(&fresh_last, date()).map(|v| v.is_root), Ok(false));
    let stale_last = signed(vec![
        (DATE_HEADER.into(), DATE.into()),
        (CLAIMS_HEADER.into(), r#"{"isRoot": "false"}"#.into()),
        ("X-MS-Azure-Host-Date".into(), stale.into()),
    ]);
    assert_eq!(verify_at(&stale_last, date()), Err(Reason::DateSkew));
    let mut broken_auth_last = signed(base_headers());
    broken_auth_last.push(("X-MS-Azure-Host-Authorization".into(), "x".into()));
    assert_eq!(
        verify_at(&broken_auth_last, date()),
        Err(Reason::AuthMalformed)
    );
}

/// The cache is keyed by the whole second, not by the order of calls: a later second formats again, and so does
/// an earlier one (a host clock resynced backwards), including dates clamped at either end of the range.
#[test]
fn a_cached_host_date_is_always_the_date_of_its_own_second() {
    let mut cache = HostDateCache::new();
    let t = date();
    let ms = Duration::from_millis;
    let times = [
        t,
        t + ms(999),
        t + ms(1_000),
        t + ms(1_500),
        t - ms(1),
        t,
        UNIX_EPOCH - ms(5_000),
        UNIX_EPOCH,
        UNIX_EPOCH + LAST_HOST_DATE + ms(86_400_000),
        t,
    ];
    for at in times {
        assert_eq!(cache.format(at), format_host_date(at).as_bytes(), "{at:?}");
    }
    assert_eq!(cache.format(t + ms(999)), DATE.as_bytes());
    assert_eq!(
        cache.format(t + ms(1_000)),
        b"Wed, 23 Apr 2025 12:00:01 GMT"
    );
}

#[test]
fn host_date_round_trips_and_rejects_other_forms() {
    let t = date();
    assert_eq!(format_host_date(t), DATE);
    assert!(parse_host_date(" Wed, 23 Apr 2025 12:00:00 GMT").is_err());
    assert!(parse_host_date("Sun Nov  6 08:49:37 1994").is_err());
}

#[test]
fn trim_ows_keeps_inner_whitespace() {
    assert_eq!(trim_ows(b" \ta b\t "), b"a b");
    assert_eq!(trim_ows(b"   "), b"");
    assert_eq!(trim_ows(b""), b"");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn signing_never_panics_and_verifies(method in proptest::collection::vec(any::<u8>(), 0..16),
                                             target in proptest::collection::vec(any::<u8>(), 0..256),
                                             headers in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..32)), 0..8),
                                             body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = RequestParts {
                method: &method,
                target: &target,
                headers: headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                body: &body,
            };
            let sig = p.sign(&key());
            prop_assert!(p.verify(&key(), &sig));
        }

        #[test]
        fn header_order_between_names_does_not_matter(values in proptest::collection::vec("[a-z]{1,8}", 3)) {
            let names = ["a-one", "b-two", "c-three"];
            let fwd: Vec<(&[u8], &[u8])> = names.iter().zip(&values).map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
            let rev: Vec<(&[u8], &[u8])> = fwd.iter().rev().copied().collect();
            let a = RequestParts { method: b"GET", target: b"/", headers: fwd.iter().copied(), body: b"" };
            let b = RequestParts { method: b"GET", target: b"/", headers: rev.iter().copied(), body: b"" };
            prop_assert_eq!(a.signature_input(), b.signature_input());
        }

        /// Any number of fields and query pairs (past the stack's capacity), names longer than the lowercase
        /// buffer, repeats in any case: the input is spec §3.3's, built here from its rules with ordered maps.
        #[test]
        fn signature_input_follows_the_spec_rules(
            headers in proptest::collection::vec(("[A-Za-z-]{1,3}|[A-Za-z]{60,70}", "[ a-z0-9]{0,6}"), 0..40),
            pairs in proptest::collection::vec(("[A-Za-z0-9]{0,3}|[A-Z]{60,70}", "[a-zA-Z0-9%]{0,4}"), 0..40),
        ) {
            let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let target = format!("/p?{}", query.join("&"));
            let parts = RequestParts {
                method: b"GET",
                target: target.as_bytes(),
                headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                body: b"",
            };
            let mut fields = std::collections::BTreeMap::new();
            for (name, value) in &headers {
                fields.insert(name.to_ascii_lowercase(), value.trim_matches([' ', '\t']).to_owned());
            }
            let mut entries = std::collections::BTreeMap::new();
            for (key, value) in pairs.iter().filter(|(k, _)| !k.is_empty()) {
                entries.insert(format!("{}{value}", key.to_ascii_lowercase()), key.len());
            }
            let mut expected = String::from("GET\n\n");
            for (name, value) in fields {
                expected.push_str(&format!("{name}:{value}\n"));
            }
            expected.push_str("/p\n");
            let rendered: Vec<String> = entries
                .iter()
                .map(|(concat, &len)| match concat.split_at(len) {
                    (key, "") => key.to_owned(),
                    (key, value) => format!("{key}={value}"),
                })
                .collect();
            expected.push_str(&rendered.join("&"));
            let input = parts.signature_input();
            prop_assert_eq!(String::from_utf8_lossy(&input), expected);
        }

        #[test]
        fn parse_authorization_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_authorization(&bytes);
        }

        /// The in-place parser accepts exactly what splitting the text on single spaces accepts (its earlier
        /// form), over values near the valid shape: shifted separators, wrong lengths, bad digits, tabs.
        #[test]
        fn parse_authorization_is_split_on_single_spaces(
            lead in "[ \t]{0,2}",
            scheme in prop_oneof![Just(SCHEME.to_owned()), "Azure-HMAC-SHA25[0-9 ]"],
            sep1 in prop_oneof![Just(" ".to_owned()), "[ \t]{0,2}"],
            guid in prop_oneof![Just(GUID.to_owned()), Just(GUID.to_uppercase()), "[0-9a-fA-F -]{35,37}"],
            sep2 in prop_oneof![Just(" ".to_owned()), "[ \t]{0,2}"],
            sig in prop_oneof!["[0-9a-fA-F]{64}", "[0-9a-gA-G \t]{63,65}"],
            trail in "[ \t]{0,2}",
        ) {
            let value = format!("{lead}{scheme}{sep1}{guid}{sep2}{sig}{trail}");
            let split_on_spaces = || -> Option<(KeyGuid, String)> {
                let mut parts = value.trim_matches([' ', '\t']).split(' ');
                let (Some(s), Some(g), Some(t), None) = (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return None;
                };
                let mut tag = [0u8; 32];
                hex::decode_to_slice(t, &mut tag).ok()?;
                (s == SCHEME).then_some(())?;
                Some((KeyGuid::parse(g).ok()?, hex::encode(tag)))
            };
            let parsed = parse_authorization(value.as_bytes()).ok().map(|(g, t)| (g, t.to_hex()));
            prop_assert_eq!(parsed, split_on_spaces(), "{:?}", value);
        }
    }
}

/// The request path's date and authorization writers give exactly the text of the allocating ones, from the
/// epoch to the last year a host date can name, and dates outside that range are clamped instead of panicking.
#[test]
fn writers_without_allocation_match_the_formatters() {
    for secs in [0, 1_795_000_000, 253_402_300_799] {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        let mut buf = [0u8; HOST_DATE_LEN];
        assert_eq!(
            format_host_date_into(t, &mut buf),
            format_host_date(t).as_bytes()
        );
    }
    // Out of httpdate's range (it panics there): clamped to the nearest date a host date can name.
    let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    assert_eq!(format_host_date(far), "Fri, 31 Dec 9999 23:59:59 GMT");
    let before = UNIX_EPOCH - Duration::from_secs(1);
    let mut buf = [0u8; HOST_DATE_LEN];
    assert_eq!(
        format_host_date_into(before, &mut buf),
        b"Thu, 01 Jan 1970 00:00:00 GMT"
    );
    let key = SigningKey::from_bytes([3u8; 32]);
    let guid = KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap();
    let signature = hmac(&key, b"message");
    let mut out = b"prefix ".to_vec();
    write_authorization_value(&mut out, &guid, &signature);
    let value = format!("{SCHEME} {guid} {}", signature.to_hex());
    assert_eq!(out, [b"prefix ".as_slice(), value.as_bytes()].concat());
    assert_eq!(authorization_value(&guid, &signature), value);
}
