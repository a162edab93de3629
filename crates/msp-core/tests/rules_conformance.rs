//! Conformance items 37, 49, 51, 52 and catalog D4/D7 end to end: raw JSON in, a decision out.

use base64::Engine as _;
use msp_core::canon::{Destination, Request};
use msp_core::endpoint::EndpointAddrs;
use msp_core::rules::{AllowedBy, Decision, Items, LocalFile, LocalOutcome, authorize, build_item};
use msp_core::{Claims, Endpoint, Mode, Reason};

fn root() -> Claims {
    Claims {
        user_id: 0,
        user_name: "root".into(),
        user_groups: ["root".into()].into(),
        process_id: 1,
        process_name: "curl".into(),
        process_full_path: "/usr/bin/curl".into(),
        process_cmd_line: "curl".into(),
        run_as_elevated: true,
        client_ip: "127.0.0.1".into(),
        client_port: 40000,
    }
}

fn ask(items: &Items, endpoint: Endpoint, target: &str) -> Decision {
    let dest = Destination::Endpoint(endpoint);
    let addrs = EndpointAddrs::default();
    let request = Request {
        method: "GET",
        target: target.as_bytes(),
        dest: &dest,
        addrs: &addrs,
    };
    authorize(&request, false, &root(), items)
}

fn opted_in_id(logical: &str) -> String {
    let json = format!(r#"{{"id":"{logical}","useLocalFileRules":true}}"#);
    base64::engine::general_purpose::STANDARD.encode(json)
}

fn ws_item(default_access: &str, mode: &str) -> String {
    format!(
        r#"{{"defaultAccess":"{default_access}","mode":"{mode}","id":"{}","rules":{{
            "privileges":[{{"name":"goalstate","path":"/machine","queryParameters":{{"comp":"goalstate"}}}}],
            "roles":[{{"name":"r","privileges":["goalstate"]}}],
            "identities":[{{"name":"root","userName":"root"}}],
            "roleAssignments":[{{"role":"r","identities":["root"]}}]}}}}"#,
        opted_in_id("ws-rules-3")
    )
}

/// A local file that lets root read `/machine/extensions`.
const LOCAL: &[u8] = br#"{"id":"local-1","rules":{
    "privileges":[{"name":"ext","path":"/machine/extensions"}],
    "roles":[{"name":"r","privileges":["ext"]}],
    "identities":[{"name":"root","userName":"root"}],
    "roleAssignments":[{"role":"r","identities":["root"]}]}}"#;

#[test]
fn conf_049_hostga_never_uses_local_files() {
    let host = ws_item("deny", "enforce");
    let ws = build_item(&host, Some(LocalFile::Present(LOCAL)));
    assert_eq!(ws.local, LocalOutcome::Merged);
    assert_eq!(ws.item.id(), "ws-rules-3-useLocalFileRules-true_local-1");
    let hostga = build_item(&host, None);
    assert_eq!(hostga.local, LocalOutcome::NotConsulted);
    let items = Items {
        wireserver: Some(ws.item),
        hostga: Some(hostga.item),
        imds: None,
    };
    let allowed = ask(&items, Endpoint::WireServer, "/machine/extensions");
    assert!(
        matches!(&allowed, Decision::Allow { by: AllowedBy::Privilege { privilege, .. } } if &**privilege == "LocalFileRules_ext"),
        "{allowed:?}"
    );
    let refused = ask(&items, Endpoint::HostGaPlugin, "/machine/extensions");
    assert_eq!(
        refused,
        Decision::Deny {
            reason: Reason::DefaultDeny,
            privilege: None
        }
    );
}

#[test]
fn conf_051_d7_an_enforce_item_with_a_local_audit_still_denies() {
    let ws = build_item(
        &ws_item("deny", "enforce"),
        Some(LocalFile::Present(br#"{"mode":"audit"}"#)),
    );
    assert_eq!(
        (ws.local.clone(), ws.item.mode()),
        (LocalOutcome::Merged, Mode::Enforce)
    );
    let items = Items {
        wireserver: Some(ws.item),
        ..Items::default()
    };
    let decision = ask(&items, Endpoint::WireServer, "/machine?comp=health");
    assert_eq!(
        decision,
        Decision::Deny {
            reason: Reason::DefaultDeny,
            privilege: None
        }
    );
}

#[test]
fn conf_052_bad_local_files_deny_with_the_host_mode_and_a_bom_is_accepted() {
    for (file, mode) in [
        (LocalFile::Present(b"{\"rules\": [}"), "audit"),
        (
            LocalFile::Present(br#"{"rules":{"identities":[{"name":"i"}]}}"#),
            "enforce",
        ),
        (LocalFile::Unreadable, "enforce"),
    ] {
        let ws = build_item(&ws_item("allow", mode), Some(file));
        assert!(
            ws.error_message().unwrap().starts_with("local rules file"),
            "{:?}",
            ws.local
        );
        assert_eq!(ws.item.mode(), Mode::parse(mode).unwrap());
        let items = Items {
            wireserver: Some(ws.item),
            ..Items::default()
        };
        let reason = ask(&items, Endpoint::WireServer, "/machine?comp=goalstate").reason();
        assert_eq!(reason, Some(Reason::DefaultDeny), "{file:?}");
    }
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(LOCAL);
    let ws = build_item(
        &ws_item("deny", "enforce"),
        Some(LocalFile::Present(&with_bom)),
    );
    assert_eq!(ws.local, LocalOutcome::Merged);
    assert_eq!(ws.error_message(), None);
}

/// Catalog D4: every kind of bad host document fails closed (deny), and says why.
#[test]
fn conf_037_d4_bad_documents_fail_closed_and_say_why() {
    let head = r#""defaultAccess":"allow","mode":"enforce","id":"imds-9""#;
    let deep = format!(r#"{{{head},"x":{}1{}}}"#, "[".repeat(20), "]".repeat(20));
    let huge = format!(r#"{{{head},"x":"{}"}}"#, "a".repeat(4096).repeat(300));
    let long_array = format!(
        r#"{{{head},"rules":{{"roles":[{}]}}}}"#,
        vec!["{}"; 4097].join(",")
    );
    let cases: Vec<(String, &str)> = vec![
        (
            format!(r#"{{{head},"rules":[]}}"#),
            "rules: must be an object",
        ),
        (
            format!(r#"{{{head},"rules":{{"privileges":[{{"name":"p","path":7}}]}}}}"#),
            "must be a string",
        ),
        (huge, "over the limit"),
        (deep, "nested deeper than 16"),
        (long_array, "more than 4096 entries"),
        (
            format!(r#"{{{head},"rules":{{"privileges":[{{"name":"p\u0000","path":"/"}}]}}}}"#),
            "NUL",
        ),
        (
            format!(
                r#"{{{head},"rules":{{"roleAssignments":[{{"role":"ghost","identities":["i"]}}]}}}}"#
            ),
            r#"undefined role "ghost""#,
        ),
        (
            format!(r#"{{{head},"rules":{{"identities":[{{"name":"i"}}]}}}}"#),
            "no selector",
        ),
        (
            format!(
                r#"{{{head},"rules":{{"privileges":[{{"name":"p","path":"/","path":"/x"}}]}}}}"#
            ),
            "repeated key",
        ),
    ];
    for (json, why) in cases {
        let built = build_item(&json, Some(LocalFile::Missing));
        let message = built
            .error_message()
            .unwrap_or_else(|| panic!("accepted: {json:.200}"));
        assert!(message.contains(why), "{message} (wanted {why})");
        assert_eq!(
            (built.item.id(), built.item.mode()),
            ("imds-9", Mode::Enforce),
            "{message}"
        );
        let items = Items {
            imds: Some(built.item),
            ..Items::default()
        };
        assert_eq!(
            ask(&items, Endpoint::Imds, "/metadata/instance"),
            Decision::Deny {
                reason: Reason::DefaultDeny,
                privilege: None
            },
            "{message}"
        );
    }
}

/// Text that is not JSON at all declares no mode, which makes the endpoint `disabled` (spec §2.6, §4.2). Host
/// items arrive inside a parsed `KeyStatus`, so in practice only the bounds and semantic checks above can fail.
#[test]
fn conf_037_an_item_with_no_readable_mode_disables_the_endpoint() {
    for json in [
        r#"{"defaultAccess":"allow","mode":"enforce","id":"x""#,
        "\u{FEFF}{}",
        r#"{"mode":"sometimes"}"#,
    ] {
        let built = build_item(json, None);
        assert!(built.host_error.is_some());
        assert_eq!(built.item.mode(), Mode::Disabled);
        let items = Items {
            imds: Some(built.item),
            ..Items::default()
        };
        assert_eq!(
            ask(&items, Endpoint::Imds, "/x"),
            Decision::Allow {
                by: AllowedBy::ModeDisabled
            }
        );
    }
}

mod totality {
    use msp_core::rules::{EffectiveId, build_item, parse_item, parse_local_file};
    use proptest::prelude::*;

    /// Pieces of allowlist JSON, so generated documents get past the first byte.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "\"name\"",
        "\"path\"",
        "\"rules\"",
        "\"privileges\"",
        "\"roles\"",
        "\"identities\"",
        "\"roleAssignments\"",
        "\"defaultAccess\"",
        "\"mode\"",
        "\"id\"",
        "\"allow\"",
        "\"enforce\"",
        "\"/a/..\"",
        "\"p\"",
        "null",
        "true",
        "1e5",
        "-0",
        " ",
        "\u{FEFF}",
    ];

    fn jsonish() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..80).prop_map(|p| p.concat())
    }

    proptest! {
        /// Rule documents are parsed without panicking whatever the input (spec §4.2, catalog D4).
        #[test]
        fn rules_parsing_is_total(text in prop_oneof![jsonish(), any::<String>()], bytes in any::<Vec<u8>>()) {
            let _ = parse_item(&text);
            let _ = build_item(&text, None);
            let _ = parse_local_file(text.as_bytes());
            let _ = parse_local_file(&bytes);
            let _ = EffectiveId::decode(&text);
        }
    }
}

/// Spec §4.3: the order of privileges, roles and assignments never changes the result, including which
/// privilege and identity a decision names.
#[test]
fn the_order_of_the_document_never_changes_a_decision() {
    let privileges = [
        r#"{"name":"b-inst","path":"/metadata/instance"}"#,
        r#"{"name":"a-inst","path":"/metadata/instance","queryParameters":{"format":"json"}}"#,
        r#"{"name":"root-all","path":"/"}"#,
        r#"{"name":"c-compute","path":"/metadata/instance/compute"}"#,
    ];
    let roles = [
        r#"{"name":"r1","privileges":["b-inst","a-inst"]}"#,
        r#"{"name":"r2","privileges":["c-compute","root-all"]}"#,
    ];
    let identities = [
        r#"{"name":"zed","userName":"root"}"#,
        r#"{"name":"amy","exePath":"/usr/bin/curl"}"#,
    ];
    let assignments = [
        r#"{"role":"r1","identities":["zed","amy"]}"#,
        r#"{"role":"r2","identities":["amy"]}"#,
    ];
    let item = |reverse: bool| {
        let list = |items: &[&str]| {
            let mut v = items.to_vec();
            if reverse {
                v.reverse();
            }
            v.join(",")
        };
        let json = format!(
            r#"{{"defaultAccess":"deny","mode":"enforce","id":"x","rules":{{"privileges":[{}],"roles":[{}],
                "identities":[{}],"roleAssignments":[{}]}}}}"#,
            list(&privileges),
            list(&roles),
            list(&identities),
            list(&assignments)
        );
        let built = build_item(&json, None);
        assert!(built.host_error.is_none(), "{:?}", built.host_error);
        Items {
            imds: Some(built.item),
            ..Items::default()
        }
    };
    let (forward, backward) = (item(false), item(true));
    let mut nobody = root();
    nobody.user_name = "nobody".into();
    nobody.process_full_path = "/usr/bin/wget".into();
    let targets = [
        "/metadata/instance?format=json",
        "/metadata/instance",
        "/metadata/instance/compute",
        "/other",
    ];
    for claims in [root(), nobody] {
        for target in targets {
            let dest = Destination::Endpoint(Endpoint::Imds);
            let addrs = EndpointAddrs::default();
            let request = Request {
                method: "GET",
                target: target.as_bytes(),
                dest: &dest,
                addrs: &addrs,
            };
            let a = authorize(&request, false, &claims, &forward);
            let b = authorize(&request, false, &claims, &backward);
            assert_eq!(a, b, "{target} as {}", claims.user_name);
        }
    }
    // The shortest matching prefix is tried first: root-all (`/`), whose only identity is amy.
    let dest = Destination::Endpoint(Endpoint::Imds);
    let addrs = EndpointAddrs::default();
    let request = Request {
        method: "GET",
        target: b"/metadata/instance?format=json",
        dest: &dest,
        addrs: &addrs,
    };
    match authorize(&request, false, &root(), &backward) {
        Decision::Allow {
            by:
                AllowedBy::Privilege {
                    privilege,
                    identity,
                },
        } => {
            assert_eq!((&*privilege, &*identity), ("root-all", "amy"));
        }
        other => panic!("{other:?}"),
    }
}
