//! The canonicaliser (spec §5): total on any bytes, idempotent on its own renderings, and the traversal guard
//! never panics. Input: byte 0 picks the connection's destination, the rest is `METHOD SP request-target`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_core::Endpoint;
use msp_core::canon::{self, Destination};
use msp_core::endpoint::EndpointAddrs;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let addrs = EndpointAddrs::default();
    let dest = match selector % 4 {
        0 => Destination::Endpoint(Endpoint::Imds),
        1 => Destination::Endpoint(Endpoint::WireServer),
        2 => Destination::Endpoint(Endpoint::HostGaPlugin),
        _ => Destination::Unknown("10.0.0.1:80".into()),
    };
    let (method, target) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b"GET"[..], rest),
    };
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    let _ = canon::traversal_guard(canon::raw_path(target));
    let _ = canon::canonicalize_path(target);
    if let Ok(c) = canon::canonicalize(method, target, &dest, &addrs) {
        // Idempotent on its rendering (spec §5.8): canonicalising the canonical target changes nothing.
        let rendered = c.render_target();
        let again = canon::canonicalize(method, rendered.as_bytes(), &dest, &addrs)
            .expect("a canonical rendering canonicalises");
        assert_eq!(again.render_target(), rendered, "not a fixed point");
        assert_eq!(again.path, c.path);
        assert_eq!(again.query, c.query);
    }
});
