//! The canonicaliser (spec §5): total on any bytes, idempotent on its own renderings, and the traversal guard
//! never panics. A slot reused from one input to the next, as the agent reuses one from request to request,
//! canonicalises each input exactly as a fresh one, and holds nothing after an error. Input: byte 0 picks the
//! connection's destination, the rest is `METHOD SP request-target`.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use msp_core::Endpoint;
use msp_core::canon::{self, CanonicalRequest, Destination};
use msp_core::endpoint::EndpointAddrs;

thread_local! {
    static SLOT: RefCell<CanonicalRequest> = RefCell::new(CanonicalRequest::default());
}

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
    let fresh = canon::canonicalize(method, target, &dest, &addrs);
    SLOT.with_borrow_mut(|slot| {
        match canon::canonicalize_into(method, target, &dest, &addrs, slot) {
            Ok(()) => assert_eq!(Ok(&*slot), fresh.as_ref(), "a reused slot differs"),
            Err(e) => {
                assert_eq!(Err(&e), fresh.as_ref(), "a reused slot fails differently");
                assert_eq!(
                    *slot,
                    CanonicalRequest::default(),
                    "an error left a request behind"
                );
            }
        }
    });
    if let Ok(c) = fresh {
        // Idempotent on its rendering (spec §5.8): canonicalising the canonical target changes nothing.
        let rendered = c.render_target();
        let again = canon::canonicalize(method, rendered.as_bytes(), &dest, &addrs)
            .expect("a canonical rendering canonicalises");
        assert_eq!(again.render_target(), rendered, "not a fixed point");
        assert_eq!(again.path, c.path);
        assert_eq!(again.query, c.query);
    }
});
