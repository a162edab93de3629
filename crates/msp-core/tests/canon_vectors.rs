//! Golden vectors of spec §5.7 and beyond, one loop test per data file in `tests/vectors/`.

use msp_core::canon::{
    Destination, canonicalize, canonicalize_path, classify_authority, raw_path, traversal_guard,
};
use msp_core::endpoint::EndpointAddrs;
use msp_core::{Endpoint, Reason};
use serde_json::Value;

fn cases(file: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(file).expect("vector file is JSON");
    doc["cases"].as_array().expect("cases array").clone()
}

fn str_field<'a>(case: &'a Value, key: &str) -> Option<&'a str> {
    case.get(key).and_then(Value::as_str)
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn class_name(dest: &Destination) -> String {
    match dest {
        Destination::Endpoint(e) => e.label().to_owned(),
        Destination::Unknown(what) => format!("Unknown({what})"),
    }
}

fn endpoint(label: &str) -> Destination {
    let e = Endpoint::ALL
        .into_iter()
        .find(|e| e.label() == label)
        .expect("endpoint label");
    Destination::Endpoint(e)
}

#[test]
fn conf_059_path_vectors() {
    let all = cases(include_str!("vectors/canon_paths.json"));
    assert!(all.len() >= 17);
    for case in all {
        let input = match str_field(&case, "input_hex") {
            Some(h) => hex(h),
            None => str_field(&case, "input").unwrap().as_bytes().to_vec(),
        };
        let got = canonicalize_path(&input)
            .map(|p| p.render())
            .map_err(|e| e.reason().code());
        let want = match str_field(&case, "expect") {
            Some(rendering) => Ok(rendering.to_owned()),
            None => Err(str_field(&case, "error").unwrap()),
        };
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn conf_059_host_vectors() {
    let addrs = EndpointAddrs::default();
    for case in cases(include_str!("vectors/canon_hosts.json")) {
        let authority = str_field(&case, "authority").unwrap();
        let got = classify_authority(authority.as_bytes(), &addrs)
            .map(|d| class_name(&d))
            .map_err(|e| e.reason().code());
        let want = match str_field(&case, "class") {
            Some(class) => Ok(class.to_owned()),
            None => Err(str_field(&case, "error").unwrap()),
        };
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn conf_060_target_vectors() {
    let addrs = EndpointAddrs::default();
    for case in cases(include_str!("vectors/canon_targets.json")) {
        let conn = endpoint(str_field(&case, "conn").unwrap());
        let method = str_field(&case, "method").unwrap();
        let target = str_field(&case, "target").unwrap().as_bytes();
        match canonicalize(method, target, &conn, &addrs) {
            Ok(c) => {
                assert_eq!(
                    Some(c.render_target().as_str()),
                    str_field(&case, "expect"),
                    "{case}"
                );
                assert_eq!(c.destination, conn, "{case}");
            }
            Err(e) => {
                let reason: Reason = e.reason();
                assert_eq!(Some(reason.code()), str_field(&case, "error"), "{case}");
                assert_eq!(
                    Some(u64::from(reason.status())),
                    case["status"].as_u64(),
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn conf_058_traversal_vectors() {
    for case in cases(include_str!("vectors/canon_traversal.json")) {
        let target = str_field(&case, "target").unwrap().as_bytes();
        let got = traversal_guard(raw_path(target)).map_err(|e| e.reason());
        match str_field(&case, "error") {
            Some(code) => {
                let reason = got.expect_err(&case.to_string());
                assert_eq!((reason.code(), reason.status()), (code, 400), "{case}");
            }
            None => assert_eq!(got, Ok(()), "{case}"),
        }
    }
}

#[test]
fn conf_059_configured_addresses_replace_the_defaults() {
    // Spec §1.3: the loopback test addresses drive classification exactly like the real ones.
    let addrs = EndpointAddrs {
        wireserver: "127.0.0.16:8080".parse().unwrap(),
        hostga: "127.0.0.16:32526".parse().unwrap(),
        imds: "127.0.0.254:8080".parse().unwrap(),
    };
    let class = |a: &str| {
        classify_authority(a.as_bytes(), &addrs)
            .map(|d| class_name(&d))
            .unwrap()
    };
    assert_eq!(class("127.0.0.254:8080"), "IMDS");
    assert_eq!(class("0x7f0000fe:8080"), "IMDS");
    assert_eq!(class("[::ffff:127.0.0.16]:8080"), "WireServer");
    assert_eq!(class("127.16:32526"), "HostGA");
    assert_eq!(class("169.254.169.254"), "Unknown(169.254.169.254:80)");
}
