//! Host rules documents (spec §4.1, §4.2): parse, validate, compile, and decide a fixed set of requests, for
//! every byte string. An invalid item must come out fail-closed: it allows nothing that canonicalises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_core::canon::{Destination, Request};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{self, Decision, Items};
use msp_core::{Claims, Endpoint};

fn claims(root: bool) -> Claims {
    Claims {
        user_id: if root { 0 } else { 1000 },
        user_name: if root { "root".into() } else { "app".into() },
        user_groups: ["adm".to_owned()].into(),
        process_id: 42,
        process_name: "curl".into(),
        process_full_path: "/usr/bin/curl".into(),
        process_cmd_line: "curl".into(),
        run_as_elevated: root,
        client_ip: "127.0.0.1".into(),
        client_port: 40000,
    }
}

const TARGETS: [&str; 5] = [
    "/metadata/identity/oauth2/token?api-version=2018-02-01",
    "/metadata/instance",
    "/machine?comp=goalstate",
    "/Metadata/Identity-x",
    "/",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = rules::parse_item(&String::from_utf8_lossy(data));
        return;
    };
    let built = rules::build_item(text, None);
    let items = Items {
        wireserver: Some(built.item.clone()),
        imds: Some(built.item.clone()),
        hostga: Some(built.item.clone()),
    };
    let addrs = EndpointAddrs::default();
    for endpoint in [Endpoint::Imds, Endpoint::WireServer] {
        let dest = Destination::Endpoint(endpoint);
        for target in TARGETS {
            for root in [false, true] {
                let req = Request {
                    method: "GET",
                    target: target.as_bytes(),
                    dest: &dest,
                    addrs: &addrs,
                };
                let d = rules::authorize(&req, false, &claims(root), &items);
                if built.host_error.is_some() && built.item.mode() == msp_core::Mode::Enforce {
                    assert!(
                        !matches!(d, Decision::Allow { .. })
                            || rules::is_exempt("GET", target.as_bytes()),
                        "a fail-closed item allowed {target}: {d:?}"
                    );
                }
            }
        }
    }
});
