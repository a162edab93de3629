//! Signature verification per second per core (target ≥ 200,000/s): `msp_core::sign::verify_request` over a
//! V1-shaped IMDS request, alone, starting from the `http::HeaderMap` the front end has, and through the front
//! end's own `msp_host::verify_head`.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use msp_core::sign::{KeyGuid, RequestParts, SigningKey, format_host_date, verify_request};

const TARGET: &str = "/metadata/instance?api-version=2021-02-01&format=json";

fn signed_headers(key: &SigningKey, guid: &KeyGuid) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = vec![
        ("Host".into(), "169.254.169.254".into()),
        ("Metadata".into(), "true".into()),
        ("User-Agent".into(), "curl/8.5.0".into()),
        ("Accept".into(), "*/*".into()),
        ("Content-Length".into(), "0".into()),
        (
            "x-ms-azure-host-claims".into(),
            r#"{ "isRoot": "false"}"#.into(),
        ),
        (
            "x-ms-azure-host-date".into(),
            format_host_date(SystemTime::now()),
        ),
    ];
    let fields: Vec<(&[u8], &[u8])> = h
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let sig = RequestParts {
        method: b"GET",
        target: TARGET.as_bytes(),
        headers: fields.iter().copied(),
        body: b"",
    }
    .sign(key);
    h.push((
        "x-ms-azure-host-authorization".into(),
        msp_core::sign::authorization_value(guid, &sig),
    ));
    h
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes([0x5a; 32]);
    let guid = KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap();
    let headers = signed_headers(&key, &guid);
    let window = msp_core::sign::DEFAULT_FRESHNESS_WINDOW;
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));

    let fields: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    g.bench_function("verify_request_imds_v1_shape", |b| {
        b.iter(|| {
            let parts = RequestParts {
                method: b"GET",
                target: TARGET.as_bytes(),
                headers: fields.iter().copied(),
                body: b"",
            };
            let r = verify_request(&parts, |_| Some(key.clone()), SystemTime::now(), window);
            black_box(r.is_ok())
        })
    });

    let mut map = HeaderMap::new();
    for (n, v) in &headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    // How the front end read its map before `verify_head` (a copied list of fields); the name is kept so the
    // history in BENCHMARKS.md lines up.
    g.bench_function("verify_from_headermap_as_the_front_end", |b| {
        b.iter(|| {
            let fields: Vec<(&[u8], &[u8])> = map
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .collect();
            let parts = RequestParts {
                method: b"GET",
                target: TARGET.as_bytes(),
                headers: fields.iter().copied(),
                body: b"",
            };
            let r = verify_request(&parts, |_| Some(key.clone()), SystemTime::now(), window);
            black_box(r.is_ok())
        })
    });

    let method = http::Method::GET;
    g.bench_function("verify_head_the_front_ends_own", |b| {
        b.iter(|| {
            let (named, r) = msp_host::verify_head(
                &method,
                black_box(TARGET),
                &map,
                b"",
                SystemTime::now(),
                window,
                |_| Some(key.clone()),
            );
            black_box((named, r.is_ok()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
