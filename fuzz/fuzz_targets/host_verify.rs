//! The host's verification (spec §12.3, `msp_core::sign::verify_request` as `msp-host` calls it) over any
//! request head: parsed with `httparse`, verified under a fixed key; then the same request signed with that key
//! must verify, and with any other key must not.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use msp_core::sign::{self, KeyGuid, RequestParts, SigningKey};

const GUID: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
const MAX_FIELDS: usize = 128;

fuzz_target!(|data: &[u8]| {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(data) else {
        // Also feed the raw bytes to the header parsers the host uses.
        let _ = sign::parse_authorization(data);
        let _ = sign::parse_is_root(data);
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = sign::parse_host_date(s);
        }
        return;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return;
    };
    let body = &data[head_len..];
    let headers: Vec<(&[u8], &[u8])> = req
        .headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    let parts = RequestParts {
        method: method.as_bytes(),
        target: target.as_bytes(),
        headers: headers.iter().copied(),
        body,
    };
    let key = SigningKey::from_bytes([7; 32]);
    let guid = KeyGuid::parse(GUID).expect("literal guid");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_745_409_600);
    let window = Duration::from_secs(300);
    let _ = sign::verify_request(&parts, |_| Some(key.clone()), now, window);

    // Sign what was received (minus any authorization header) and verify it.
    let unsigned: Vec<(&[u8], &[u8])> = headers
        .iter()
        .copied()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(sign::AUTHORIZATION_HEADER.as_bytes()))
        .collect();
    let signed_parts = RequestParts {
        headers: unsigned.iter().copied(),
        ..parts
    };
    let signature = signed_parts.sign(&key);
    assert!(signed_parts.verify(&key, &signature));
    assert!(!signed_parts.verify(&SigningKey::from_bytes([8; 32]), &signature));
    let auth = sign::authorization_value(&guid, &signature);
    let (g, s) = sign::parse_authorization(auth.as_bytes()).expect("own header parses");
    assert_eq!(g.as_str(), GUID);
    assert_eq!(s.to_hex(), signature.to_hex());
});
