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

/// Requests with more fields and query pairs than signing sorts on the stack, and names longer than its
/// lowercase buffer, sign the input of spec §3.3 all the same: a client may send that many.
#[test]
fn conf_033_many_fields_and_pairs_sign_the_spec_input() {
    let long_name = format!("X-{}", "Long".repeat(40));
    // 40 fields in reverse order, uppercase, one of them twice (the last value counts) and one authorization.
    let mut headers: Vec<(String, String)> = (0..40)
        .rev()
        .map(|i| (format!("X-Field-{i:02}"), format!(" v{i} ")))
        .collect();
    headers.push(("x-field-07".to_owned(), "later".to_owned()));
    headers.push((long_name.clone(), "long".to_owned()));
    headers.push((sign::AUTHORIZATION_HEADER.to_owned(), "left out".to_owned()));
    // 30 pairs in reverse order; `K05=same` twice (one kept), `k05=same` once more in another case.
    let mut pairs: Vec<String> = (0..30).rev().map(|i| format!("K{i:02}=v{i}")).collect();
    pairs.extend(["K05=same", "k05=same", "K05=a"].map(str::to_owned));
    let target = format!("/p?{}", pairs.join("&"));

    let mut expected = String::from("GET\n\n");
    let mut fields: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-field-{i:02}"), format!("v{i}")))
        .collect();
    fields.push((long_name.to_ascii_lowercase(), "long".to_owned()));
    if let Some(f) = fields.iter_mut().find(|(n, _)| n == "x-field-07") {
        f.1 = "later".to_owned();
    }
    fields.sort();
    for (name, value) in fields {
        expected.push_str(&format!("{name}:{value}\n"));
    }
    let mut query: Vec<String> = (0..30).map(|i| format!("k{i:02}=v{i}")).collect();
    query.extend(["k05=a", "k05=same"].map(str::to_owned));
    query.sort_by_key(|p| p.replace('=', ""));
    expected.push_str("/p\n");
    expected.push_str(&query.join("&"));

    let input = parts("GET", &target, &headers, "").signature_input();
    assert_eq!(String::from_utf8_lossy(&input), expected);
}
