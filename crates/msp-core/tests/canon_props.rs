//! Property tests of the canonicaliser (spec §5.8, conformance 61), in the default `cargo test`.

use std::net::Ipv4Addr;

use msp_core::Endpoint;
use msp_core::canon::{
    CanonError, CanonicalQuery, CanonicalRequest, Destination, canonicalize, canonicalize_into,
    canonicalize_path, classify_authority, raw_path, traversal_guard,
};
use msp_core::endpoint::EndpointAddrs;
use proptest::prelude::*;

/// Bytes that matter to URL parsing, plus some that must be refused.
const URLISH: &[u8] =
    b"/%.?#;&=+@:[]0123456789abcdefxABCDEFX zZ\x00\x0a\x7f\xc0\xaf\xc4\xb1\xe0\x80\xf0\xff";

fn urlish_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(URLISH), 0..max)
}

/// Tokens that usually canonicalise, so the fixed-point properties see many successes.
const TOKENS: &[&str] = &[
    "/", "/", ".", "..", ";", "a", "B", "x.y", "%2F", "%2f", "%25", "%2525", "%23", "%20", "+",
    "&", "=", "%3D", "%26", "%2B", "%C3%A9", "#", "~", "%7e", "metadata", "Identity", "%3B", "?",
    "%41",
];

fn token_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..max)
        .prop_map(|t| t.concat().into_bytes())
}

/// Mostly tokens, sometimes raw URL-ish bytes.
fn fixed_point_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => token_bytes(24), 1 => urlish_bytes(64)]
}

/// Either any bytes at all or bytes drawn from [`URLISH`], which reach deeper into the pipeline.
fn target_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        urlish_bytes(200)
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        Just("get".to_owned()),
        "[A-Z]{0,8}",
        any::<String>()
    ]
}

/// Targets for a reused slot: mostly ones that canonicalise, with and without a query, some that do not.
fn slot_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => "(/[a-zA-Z.]{1,6}){0,4}/?(\\?([a-zA-Z]{1,3}(=[a-z0-9]{0,3})?&?){0,5})?".prop_map(String::into_bytes),
        2 => (fixed_point_input(), prop::option::of(fixed_point_input())).prop_map(|(path, query)| {
            let mut target = [b"/".as_slice(), &path].concat();
            if let Some(query) = query {
                target.push(b'?');
                target.extend_from_slice(&query);
            }
            target
        }),
        1 => target_bytes(),
    ]
}

fn imds() -> Destination {
    Destination::Endpoint(Endpoint::Imds)
}

proptest! {
    #[test]
    fn conf_061_canonicalisation_is_total(method in method(), target in target_bytes()) {
        let addrs = EndpointAddrs::default();
        // Every entry point returns, with a value or a typed error, on any bytes.
        let _ = canonicalize(&method, &target, &imds(), &addrs);
        let _ = canonicalize(&method, &[b"http://".as_slice(), &target].concat(), &imds(), &addrs);
        let _ = traversal_guard(raw_path(&target));
        let _ = canonicalize_path(&target);
        let _ = CanonicalQuery::parse(&target);
        let _ = classify_authority(&target, &addrs);
    }

    /// The proxy keeps one slot per request buffer set and canonicalises every request into it: each must come
    /// out exactly as from a fresh slot, and a failed one must leave no request behind for the rules to match.
    #[test]
    fn a_reused_slot_canonicalises_each_request_like_a_fresh_one(
        requests in prop::collection::vec((method(), slot_target()), 1..16)
    ) {
        let addrs = EndpointAddrs::default();
        let mut slot = CanonicalRequest::default();
        for (method, target) in &requests {
            let fresh = canonicalize(method, target, &imds(), &addrs);
            let reused = canonicalize_into(method, target, &imds(), &addrs, &mut slot);
            match (reused, fresh) {
                (Ok(()), Ok(fresh)) => prop_assert_eq!(&slot, &fresh),
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(&slot, &CanonicalRequest::default());
                }
                (reused, fresh) => prop_assert!(false, "reused {:?}, fresh {:?}", reused, fresh),
            }
        }
    }

    #[test]
    fn conf_061_path_rendering_is_a_fixed_point(raw in fixed_point_input()) {
        let raw = [b"/".as_slice(), &raw].concat();
        if let Ok(first) = canonicalize_path(&raw) {
            let rendered = first.render();
            let second = canonicalize_path(rendered.as_bytes());
            prop_assert_eq!(second.as_ref(), Ok(&first), "rendering {:?}", rendered);
        }
    }

    #[test]
    fn conf_061_query_rendering_is_a_fixed_point(raw in fixed_point_input()) {
        if let Ok(first) = CanonicalQuery::parse(&raw) {
            let rendered = first.render();
            let second = CanonicalQuery::parse(rendered.strip_prefix('?').unwrap_or_default().as_bytes());
            prop_assert_eq!(second.as_ref(), Ok(&first), "rendering {:?}", rendered);
        }
    }

    #[test]
    fn conf_061_request_rendering_is_a_fixed_point(path in fixed_point_input(), query in fixed_point_input()) {
        let target = [b"/".as_slice(), &path, b"?", &query].concat();
        let addrs = EndpointAddrs::default();
        if let Ok(first) = canonicalize("GET", &target, &imds(), &addrs) {
            let rendered = first.render_target();
            prop_assert_eq!(canonicalize("GET", rendered.as_bytes(), &imds(), &addrs), Ok(first));
        }
    }

    /// Strict UTF-8 (spec §5.8): a byte sequence that is not UTF-8, raw or percent-encoded, is always an error,
    /// never replaced, in the path and in the query.
    #[test]
    fn invalid_utf8_is_always_an_error(
        prefix in "[a-z/]{0,10}",
        bad in prop_oneof![
            (0x80u8..=0xBF).prop_map(|b| vec![b]),
            (0xF5u8..=0xFF).prop_map(|b| vec![b]),
            (0xC2u8..=0xDF).prop_map(|b| vec![b, b'a']),
            (0xE1u8..=0xEF).prop_map(|b| vec![b, 0x80]),
            Just(vec![0xED, 0xA0, 0x80]),
        ],
        encode in any::<bool>(),
    ) {
        let bad: Vec<u8> = if encode {
            bad.iter().flat_map(|b| format!("%{b:02X}").into_bytes()).collect()
        } else {
            bad
        };
        let path = [b"/".as_slice(), prefix.as_bytes(), &bad].concat();
        let err = canonicalize_path(&path).unwrap_err();
        prop_assert!(matches!(err, CanonError::InvalidUtf8 | CanonError::OverlongUtf8), "{:?}", err);
        let query = [b"k=".as_slice(), prefix.as_bytes(), &bad].concat();
        let err = CanonicalQuery::parse(&query).unwrap_err();
        prop_assert!(matches!(err, CanonError::InvalidUtf8 | CanonError::OverlongUtf8), "{:?}", err);
    }

    /// Dotted, decimal, hex, octal, short and IPv4-mapped IPv6 forms of one address classify alike, with the
    /// defaults and with that address configured as IMDS (spec §5.8, catalog C7).
    #[test]
    fn numeric_host_forms_classify_alike(ip in any::<u32>(), port in prop_oneof![Just(80u16), 1u16..]) {
        let forms = forms_of(ip, port);
        let defaults = EndpointAddrs::default();
        let configured = EndpointAddrs { imds: (Ipv4Addr::from(ip), port).into(), ..defaults };
        for addrs in [defaults, configured] {
            let first = classify_authority(forms[0].as_bytes(), &addrs);
            prop_assert!(first.is_ok(), "{}: {:?}", forms[0], first);
            for form in &forms[1..] {
                prop_assert_eq!(&classify_authority(form.as_bytes(), &addrs), &first, "{} vs {}", form, forms[0]);
            }
        }
        let configured_class = classify_authority(forms[0].as_bytes(), &configured).unwrap();
        prop_assert_eq!(configured_class, Destination::Endpoint(Endpoint::Imds));
    }
}

/// Every spelling of `ip:port` that spec §5.4 accepts.
fn forms_of(ip: u32, port: u16) -> Vec<String> {
    let [a, b, c, d] = ip.to_be_bytes();
    let low16 = ip & 0xFFFF;
    let low24 = ip & 0xFF_FFFF;
    let hosts = [
        format!("{a}.{b}.{c}.{d}"),
        format!("{ip}"),
        format!("0x{ip:x}"),
        format!("0X{ip:08X}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("{a}.{b}.{low16}"),
        format!("{a}.{low24}"),
        format!("0x{a:x}.{b}.0{c:o}.0x{d:X}"),
        format!("[::ffff:{a}.{b}.{c}.{d}]"),
        format!("[::ffff:{:x}:{:x}]", ip >> 16, low16),
        format!("[0:0:0:0:0:FFFF:{a}.{b}.{c}.{d}]"),
    ];
    let mut forms: Vec<String> = hosts.iter().map(|h| format!("{h}:{port}")).collect();
    if port == 80 {
        forms.extend(
            hosts
                .iter()
                .flat_map(|h| [h.clone(), format!("{h}:"), format!("{h}:0080")]),
        );
    }
    forms
}

/// The fixed-point properties are only as good as the share of inputs that canonicalise: keep it substantial.
#[test]
fn fixed_point_inputs_mostly_canonicalise() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = token_bytes(24);
    let ok = (0..1000)
        .filter(|_| {
            let raw = strategy.new_tree(&mut runner).unwrap().current();
            canonicalize_path(&[b"/".as_slice(), &raw].concat()).is_ok()
        })
        .count();
    assert!(ok > 300, "only {ok} of 1000 token paths canonicalised");
}
