//! Evil twins (spec §5.8, catalog D1–D3): mutants of a request that must keep its decision, and negative twins
//! that may (and here must) change it.
//!
//! The positive mutations are built to preserve the canonical form, so the property is stronger than the spec's
//! "same decision or a typed CANON error": without the proxy's traversal guard a mutant gets exactly the
//! original decision; through the proxy it gets that decision or `CANON_TRAVERSAL`.

use msp_core::canon::{Destination, Request, raw_path, traversal_guard};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{Decision, Items, authorize, build_item};
use msp_core::{Claims, Endpoint, Reason};
use proptest::prelude::*;

const IMDS_ITEM: &str = r#"{"defaultAccess":"deny","mode":"enforce","id":"imds","rules":{
  "privileges":[{"name":"mi-token","path":"/metadata/identity","queryParameters":{"api-version":"2018-02-01"}},
                {"name":"instance","path":"/metadata/instance"},
                {"name":"scheduled","path":"/metadata/scheduledevents","queryParameters":{"api-version":"2020-07-01"}}],
  "roles":[{"name":"tokens","privileges":["mi-token"]},{"name":"inventory","privileges":["instance","scheduled"]}],
  "identities":[{"name":"app","userName":"svc-app","exePath":"/usr/bin/python3"},{"name":"curl","exePath":"/usr/bin/curl"}],
  "roleAssignments":[{"role":"tokens","identities":["app"]},{"role":"inventory","identities":["curl"]}]}}"#;

const WS_ITEM: &str = r#"{"defaultAccess":"allow","mode":"enforce","id":"ws","rules":{
  "privileges":[{"name":"goalstate","path":"/machine","queryParameters":{"comp":"goalstate"}},
                {"name":"certs","path":"/machine","queryParameters":{"comp":"certificates"}}],
  "roles":[{"name":"g","privileges":["goalstate"]},{"name":"c","privileges":["certs"]}],
  "identities":[{"name":"root","userName":"root"},{"name":"waagent","processName":"waagent"}],
  "roleAssignments":[{"role":"g","identities":["root"]},{"role":"c","identities":["waagent"]}]}}"#;

fn items() -> Items {
    let ws = build_item(WS_ITEM, None);
    let imds = build_item(IMDS_ITEM, None);
    assert!(ws.host_error.is_none() && imds.host_error.is_none());
    Items {
        hostga: Some(ws.item.clone()),
        wireserver: Some(ws.item),
        imds: Some(imds.item),
    }
}

fn claims(user: &str, exe: &str, elevated: bool) -> Claims {
    let name = exe.rsplit('/').next().unwrap_or_default().to_owned();
    Claims {
        user_id: if elevated { 0 } else { 1000 },
        user_name: user.into(),
        user_groups: [user.to_owned()].into(),
        process_id: 77,
        process_name: name.into(),
        process_full_path: exe.into(),
        process_cmd_line: "undefined".into(),
        run_as_elevated: elevated,
        client_ip: "127.0.0.1".to_owned(),
        client_port: 50000,
    }
}

/// A request kept in parts, so that every mutation knows whether it edits the path or the query.
#[derive(Debug, Clone)]
struct Twin {
    endpoint: Endpoint,
    /// `scheme://authority` of an absolute-form target.
    origin: Option<String>,
    path: String,
    query: Vec<String>,
    claims: usize,
}

impl Twin {
    fn target(&self) -> String {
        let query = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query.join("&"))
        };
        format!(
            "{}{}{}",
            self.origin.as_deref().unwrap_or_default(),
            self.path,
            query
        )
    }
}

/// (endpoint, path, query pieces, claims index): allows, rule denials and default outcomes.
const BASES: &[(Endpoint, &str, &[&str], usize)] = &[
    (
        Endpoint::Imds,
        "/metadata/identity/oauth2/token",
        &[
            "api-version=2018-02-01",
            "resource=https%3A%2F%2Fvault.azure.net+x",
        ],
        0,
    ),
    (
        Endpoint::Imds,
        "/metadata/identity/oauth2/token",
        &[
            "api-version=2018-02-01",
            "resource=https%3A%2F%2Fvault.azure.net+x",
        ],
        1,
    ),
    (
        Endpoint::Imds,
        "/metadata/identity/oauth2/token",
        &["resource=a+b"],
        0,
    ),
    (
        Endpoint::Imds,
        "/metadata/instance/compute",
        &["api-version=2021-02-01", "format=json"],
        1,
    ),
    (
        Endpoint::Imds,
        "/metadata/instance/compute",
        &["api-version=2021-02-01", "format=json"],
        0,
    ),
    (
        Endpoint::Imds,
        "/metadata/scheduledevents",
        &["api-version=2020-07-01"],
        1,
    ),
    (Endpoint::Imds, "/metadata/versions", &[], 1),
    (
        Endpoint::Imds,
        "/metadata/instance/network/interface/0/ipv4/ipAddress/0/publicIpAddress",
        &["api-version=2017-08-01", "format=text"],
        1,
    ),
    (Endpoint::WireServer, "/machine", &["comp=goalstate"], 2),
    (
        Endpoint::WireServer,
        "/machine",
        &["comp=certificates", "incarnation=3"],
        2,
    ),
    (
        Endpoint::WireServer,
        "/machine",
        &["comp=certificates", "incarnation=3"],
        3,
    ),
    (Endpoint::WireServer, "/machine/", &["comp=health"], 2),
    (Endpoint::HostGaPlugin, "/vmSettings", &[], 2),
    (Endpoint::HostGaPlugin, "/machine", &["comp=goalstate"], 3),
];

fn all_claims() -> [Claims; 4] {
    [
        claims("svc-app", "/usr/bin/python3", false),
        claims("svc-app", "/usr/bin/curl", false),
        claims("root", "/usr/bin/curl", true),
        claims("root", "/usr/sbin/waagent", true),
    ]
}

fn base(i: usize) -> Twin {
    let (endpoint, path, query, claims) = BASES[i % BASES.len()];
    Twin {
        endpoint,
        origin: None,
        path: path.into(),
        query: query.iter().map(|q| q.to_string()).collect(),
        claims,
    }
}

/// `authorize`, optionally behind the proxy's traversal guard (spec §8.2 step 5).
fn decide(twin: &Twin, with_guard: bool, items: &Items) -> Decision {
    let target = twin.target();
    if with_guard && let Err(e) = traversal_guard(raw_path(target.as_bytes())) {
        return Decision::Deny {
            reason: e.reason(),
            privilege: None,
        };
    }
    let addrs = EndpointAddrs::default();
    let dest = Destination::Endpoint(twin.endpoint);
    let request = Request {
        method: "GET",
        target: target.as_bytes(),
        dest: &dest,
        addrs: &addrs,
    };
    authorize(&request, false, &all_claims()[twin.claims], items)
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip the case of a letter in the path.
    PathCase(usize),
    /// Replace a path character (not `%`, not the leading `/`, not an escape's digit) by `%XX`, either hex case.
    PathEncode(usize, bool),
    /// Insert `./`, `x/../` or `/` after a `/`.
    DotSegment(usize, usize),
    /// Append `;param` to a segment.
    SegmentParam(usize, String),
    TrailingSlash,
    /// Flip the case of a letter in a query piece.
    QueryCase(usize, usize),
    /// Replace a query character other than `%`, `&`, `=`, `+` (and escape digits) by `%XX`.
    QueryEncode(usize, usize, bool),
    /// `%20` for `+`, or the reverse.
    PlusSpace(usize, usize),
    Reorder(usize),
    /// A parameter whose key no privilege names.
    ExtraParam(u8),
    /// Absolute-form with another spelling of the destination (spec §5.4).
    HostForm(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let n = any::<usize>();
    prop_oneof![
        n.prop_map(Mutation::PathCase),
        (n, any::<bool>()).prop_map(|(i, u)| Mutation::PathEncode(i, u)),
        (n, 0usize..3).prop_map(|(i, k)| Mutation::DotSegment(i, k)),
        (n, "[a-z0-9=]{0,6}").prop_map(|(i, p)| Mutation::SegmentParam(i, p)),
        Just(Mutation::TrailingSlash),
        (n, n).prop_map(|(p, i)| Mutation::QueryCase(p, i)),
        (n, n, any::<bool>()).prop_map(|(p, i, u)| Mutation::QueryEncode(p, i, u)),
        (n, n).prop_map(|(p, i)| Mutation::PlusSpace(p, i)),
        n.prop_map(Mutation::Reorder),
        any::<u8>().prop_map(Mutation::ExtraParam),
        (n, n).prop_map(|(f, s)| Mutation::HostForm(f, s)),
    ]
}

/// Byte positions of `text` that are the two digits of a well-formed `%XX` escape.
fn escape_digits(text: &str) -> Vec<bool> {
    let b = text.as_bytes();
    let mut marks = vec![false; b.len()];
    for i in 0..b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            marks[i + 1] = true;
            marks[i + 2] = true;
        }
    }
    marks
}

fn pick(candidates: &[usize], seed: usize) -> Option<usize> {
    (!candidates.is_empty()).then(|| candidates[seed % candidates.len()])
}

fn flip_case(text: &mut String, seed: usize) {
    let letters: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_alphabetic())
        .map(|(i, _)| i)
        .collect();
    if let Some(i) = pick(&letters, seed) {
        let mut bytes = std::mem::take(text).into_bytes();
        bytes[i] ^= 0x20;
        *text = String::from_utf8(bytes).unwrap();
    }
}

fn encode_at(text: &mut String, seed: usize, upper: bool, skip_leading: bool, protected: &[u8]) {
    let digits = escape_digits(text);
    let candidates: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|&(i, b)| {
            (!skip_leading || i != 0) && !digits[i] && b != b'%' && !protected.contains(&b)
        })
        .map(|(i, _)| i)
        .collect();
    if let Some(i) = pick(&candidates, seed) {
        let b = text.as_bytes()[i];
        let escape = if upper {
            format!("%{b:02X}")
        } else {
            format!("%{b:02x}")
        };
        text.replace_range(i..=i, &escape);
    }
}

/// Spellings of the configured address of `endpoint` (spec §5.4, catalog C7).
fn host_forms(endpoint: Endpoint) -> Vec<String> {
    let addr = EndpointAddrs::default().addr(endpoint);
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        unreachable!()
    };
    let [a, b, c, d] = ip.octets();
    let n = u32::from(ip);
    let hosts = [
        format!("{ip}"),
        format!("{n}"),
        format!("0x{n:x}"),
        format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
        format!("{a}.{b}.{}", n & 0xFFFF),
        format!("[::ffff:{ip}]"),
        format!("[::ffff:{:x}:{:x}]", n >> 16, n & 0xFFFF),
    ];
    let port = addr.port();
    hosts
        .iter()
        .flat_map(|h| {
            let mut v = vec![format!("{h}:{port}")];
            if port == 80 {
                v.push(h.clone());
            }
            v
        })
        .collect()
}

fn apply(twin: &mut Twin, m: &Mutation) {
    match m {
        Mutation::PathCase(seed) => flip_case(&mut twin.path, *seed),
        Mutation::PathEncode(seed, upper) => encode_at(&mut twin.path, *seed, *upper, true, b""),
        Mutation::DotSegment(seed, kind) => {
            let slashes: Vec<usize> = twin.path.match_indices('/').map(|(i, _)| i).collect();
            if let Some(i) = pick(&slashes, *seed) {
                twin.path.insert_str(i + 1, ["./", "x/../", "/"][*kind]);
            }
        }
        Mutation::SegmentParam(seed, param) => {
            let mut ends: Vec<usize> = twin
                .path
                .match_indices('/')
                .map(|(i, _)| i)
                .filter(|&i| i > 0)
                .collect();
            ends.push(twin.path.len());
            if let Some(i) = pick(&ends, *seed) {
                twin.path.insert_str(i, &format!(";{param}"));
            }
        }
        Mutation::TrailingSlash => {
            if !twin.path.ends_with('/') {
                twin.path.push('/');
            }
        }
        Mutation::QueryCase(piece, seed) => {
            if let Some(p) = pick(&(0..twin.query.len()).collect::<Vec<_>>(), *piece) {
                flip_case(&mut twin.query[p], *seed);
            }
        }
        Mutation::QueryEncode(piece, seed, upper) => {
            if let Some(p) = pick(&(0..twin.query.len()).collect::<Vec<_>>(), *piece) {
                encode_at(&mut twin.query[p], *seed, *upper, false, b"&=+");
            }
        }
        Mutation::PlusSpace(piece, seed) => {
            if let Some(p) = pick(&(0..twin.query.len()).collect::<Vec<_>>(), *piece) {
                let text = &mut twin.query[p];
                let digits = escape_digits(text);
                let plus: Vec<usize> = text.match_indices('+').map(|(i, _)| i).collect();
                let spaces: Vec<usize> = text
                    .match_indices("%20")
                    .map(|(i, _)| i)
                    .filter(|&i| !digits[i])
                    .collect();
                if let Some(i) = pick(&plus, *seed) {
                    text.replace_range(i..=i, "%20");
                } else if let Some(i) = pick(&spaces, *seed) {
                    text.replace_range(i..i + 3, "+");
                }
            }
        }
        Mutation::Reorder(seed) => {
            if !twin.query.is_empty() {
                let len = twin.query.len();
                twin.query.rotate_left(seed % len);
                if (seed / len) % 2 == 1 {
                    twin.query.reverse();
                }
            }
        }
        Mutation::ExtraParam(n) => twin.query.push(format!("zz{n}=v{n}")),
        Mutation::HostForm(form, scheme) => {
            let forms = host_forms(twin.endpoint);
            let scheme = ["http", "HTTP", "hTtP"][scheme % 3];
            twin.origin = Some(format!("{scheme}://{}", forms[form % forms.len()]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn d1_evil_twins_keep_the_decision(which in any::<usize>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let items = items();
        let original = base(which);
        let want = decide(&original, true, &items);
        prop_assert!(!matches!(want.reason(), Some(r) if r.code().starts_with("CANON_")), "base {:?}", want);
        let mut twin = original.clone();
        for m in &mutations {
            apply(&mut twin, m);
        }
        prop_assert_eq!(&decide(&twin, false, &items), &want, "twin {} of {}", twin.target(), original.target());
        let through_proxy = decide(&twin, true, &items);
        prop_assert!(
            through_proxy == want || through_proxy.reason() == Some(Reason::CanonTraversal),
            "twin {} of {}: {:?} vs {:?}", twin.target(), original.target(), through_proxy, want
        );
    }
}

/// The bases cover every kind of outcome, so the property above is not vacuous.
#[test]
fn bases_cover_allow_rule_deny_and_defaults() {
    let items = items();
    let reasons: Vec<Option<Reason>> = (0..BASES.len())
        .map(|i| decide(&base(i), true, &items).reason())
        .collect();
    for want in [None, Some(Reason::RuleDeny), Some(Reason::DefaultDeny)] {
        assert!(reasons.contains(&want), "{want:?} missing from {reasons:?}");
    }
}

/// Each positive mutation kind, applied alone to an allowed request, keeps the allow (not a CANON error).
#[test]
fn d1_every_mutation_kind_keeps_an_allow() {
    let items = items();
    let original = base(0);
    let want = decide(&original, true, &items);
    assert!(matches!(want, Decision::Allow { .. }), "{want:?}");
    let kinds = [
        Mutation::PathCase(3),
        Mutation::PathEncode(5, true),
        Mutation::PathEncode(9, false),
        Mutation::DotSegment(1, 0),
        Mutation::SegmentParam(1, "jsessionid=1".into()),
        Mutation::TrailingSlash,
        Mutation::QueryCase(0, 2),
        Mutation::QueryEncode(0, 1, false),
        Mutation::PlusSpace(1, 0),
        Mutation::Reorder(1),
        Mutation::ExtraParam(7),
        Mutation::HostForm(3, 1),
    ];
    for m in kinds {
        let mut twin = original.clone();
        apply(&mut twin, &m);
        assert_ne!(twin.target(), original.target(), "{m:?} changed nothing");
        assert_eq!(
            decide(&twin, true, &items),
            want,
            "{m:?}: {}",
            twin.target()
        );
    }
    for kind in 1..3 {
        let mut twin = original.clone();
        apply(&mut twin, &Mutation::DotSegment(1, kind));
        assert_eq!(
            decide(&twin, true, &items).reason(),
            Some(Reason::CanonTraversal),
            "{}",
            twin.target()
        );
        assert_eq!(decide(&twin, false, &items), want, "{}", twin.target());
    }
}

/// Negative twins (spec §5.8) change the decision: here each turns an allow into a denial.
#[test]
fn d1_d2_negative_twins_lose_the_allow() {
    let items = items();
    let allowed = |target: &str, endpoint, claims| {
        let twin = Twin {
            endpoint,
            origin: None,
            path: target.into(),
            query: vec![],
            claims,
        };
        matches!(decide(&twin, true, &items), Decision::Allow { .. })
    };
    assert!(allowed(
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
        Endpoint::Imds,
        0
    ));
    // Double encoding: one segment `metadata%2fidentity`, no privilege.
    assert!(!allowed(
        "/metadata%252Fidentity/oauth2/token?api-version=2018-02-01",
        Endpoint::Imds,
        0
    ));
    // Another segment (catalog D2: prefix confusion).
    assert!(!allowed(
        "/metadata/identity-x/oauth2/token?api-version=2018-02-01",
        Endpoint::Imds,
        0
    ));
    assert!(!allowed(
        "/metadata/identityx?api-version=2018-02-01",
        Endpoint::Imds,
        0
    ));
    // A missing required parameter.
    assert!(!allowed(
        "/metadata/identity/oauth2/token?api=2018-02-01",
        Endpoint::Imds,
        0
    ));
    // A repeated key with another value (spec §4.4).
    assert!(!allowed(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&api-version=2019-08-01",
        Endpoint::Imds,
        0
    ));
    assert!(allowed("/machine?comp=goalstate", Endpoint::WireServer, 2));
    assert!(!allowed(
        "/machine?comp=goalstate&comp=certificates",
        Endpoint::WireServer,
        2
    ));
    // An embedded query is refused, never matched (spec §5.2 step 5.7).
    assert!(!allowed(
        "/metadata/identity%3Fapi-version=2018-02-01",
        Endpoint::Imds,
        0
    ));
}
