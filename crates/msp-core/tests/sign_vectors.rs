//! Golden vectors of spec §3.8 (conformance item 33), loaded from `tests/vectors/sign.json`.

use msp_core::sign::{self, KeyGuid, RequestParts, SigningKey};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    key: String,
    date: String,
    hmac: Vec<HmacVector>,
    requests: Vec<RequestVector>,
    targets: Vec<TargetVector>,
    queries: Vec<QueryVector>,
}

#[derive(Deserialize)]
struct HmacVector {
    name: String,
    message: String,
    signature: String,
}

#[derive(Deserialize)]
struct RequestVector {
    name: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    input: String,
    input_len: usize,
    signature: String,
    guid: Option<String>,
    authorization: Option<String>,
}

#[derive(Deserialize)]
struct TargetVector {
    name: String,
    target: String,
    path: String,
    canon_query: String,
}

#[derive(Deserialize)]
struct QueryVector {
    raw: String,
    canon: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("vectors/sign.json")).expect("vectors parse")
}

fn parts<'a>(
    method: &'a str,
    target: &'a str,
    headers: &'a [(String, String)],
    body: &'a str,
) -> RequestParts<'a, impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone> {
    RequestParts {
        method: method.as_bytes(),
        target: target.as_bytes(),
        headers: headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        body: body.as_bytes(),
    }
}

#[test]
fn conf_033_hmac_primitive_v0() {
    let v = vectors();
    let key = SigningKey::from_hex(&v.key).unwrap();
    for h in &v.hmac {
        assert_eq!(
            sign::hmac(&key, h.message.as_bytes()).to_hex(),
            h.signature,
            "{}",
            h.name
        );
    }
}

#[test]
fn conf_033_request_vectors_v1_to_v3_inputs_and_signatures() {
    let v = vectors();
    let key = SigningKey::from_hex(&v.key).unwrap();
    for r in &v.requests {
        let p = parts(&r.method, &r.target, &r.headers, &r.body);
        let input = p.signature_input();
        assert_eq!(String::from_utf8_lossy(&input), r.input, "{} input", r.name);
        assert_eq!(input.len(), r.input_len, "{} input length", r.name);
        let sig = p.sign(&key);
        assert_eq!(sig.to_hex(), r.signature, "{} signature", r.name);
        assert!(p.verify(&key, &sig), "{} verifies", r.name);
        if let (Some(guid), Some(auth)) = (&r.guid, &r.authorization) {
            let guid = KeyGuid::parse(guid).unwrap();
            assert_eq!(
                &sign::authorization_value(&guid, &sig),
                auth,
                "{} header",
                r.name
            );
        }
    }
}

#[test]
fn conf_033_lowercase_key_hex_signs_the_same() {
    let v = vectors();
    let upper = SigningKey::from_hex(&v.key).unwrap();
    let lower = SigningKey::from_hex(&v.key.to_lowercase()).unwrap();
    assert_eq!(upper, lower);
}

#[test]
fn conf_033_target_vectors_v4_path_and_query() {
    for t in vectors().targets {
        let no_headers: [(String, String); 0] = [];
        let input = parts("GET", &t.target, &no_headers, "").signature_input();
        let expected = format!("GET\n\n{}\n{}", t.path, t.canon_query);
        assert_eq!(String::from_utf8_lossy(&input), expected, "{}", t.name);
    }
}

#[test]
fn conf_033_query_vectors_v5() {
    for q in vectors().queries {
        let target = if q.raw.is_empty() {
            "/p".to_owned()
        } else {
            format!("/p?{}", q.raw)
        };
        let no_headers: [(String, String); 0] = [];
        let input = parts("GET", &target, &no_headers, "").signature_input();
        assert_eq!(
            String::from_utf8_lossy(&input),
            format!("GET\n\n/p\n{}", q.canon),
            "raw {:?}",
            q.raw
        );
    }
}

#[test]
fn conf_095_host_accepts_v1_to_v3_within_window() {
    let v = vectors();
    let key = SigningKey::from_hex(&v.key).unwrap();
    let date = sign::parse_host_date(&v.date).unwrap();
    for r in &v.requests {
        let guid = KeyGuid::parse(
            r.guid
                .as_deref()
                .unwrap_or("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf"),
        )
        .unwrap();
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(sign::AUTHORIZATION_HEADER))
            .cloned()
            .collect();
        headers.push((
            sign::AUTHORIZATION_HEADER.into(),
            format!("Azure-HMAC-SHA256 {guid} {}", r.signature),
        ));
        let p = parts(&r.method, &r.target, &headers, &r.body);
        for skew in [0i64, 300, -300] {
            let now = if skew >= 0 {
                date + std::time::Duration::from_secs(skew as u64)
            } else {
                date - std::time::Duration::from_secs((-skew) as u64)
            };
            let got = sign::verify_request(
                &p,
                |g| (g == &guid).then(|| key.clone()),
                now,
                sign::DEFAULT_FRESHNESS_WINDOW,
            );
            let verified = got.unwrap_or_else(|e| panic!("{} at skew {skew}: {e}", r.name));
            assert_eq!(verified.key_guid, guid);
        }
    }
}
