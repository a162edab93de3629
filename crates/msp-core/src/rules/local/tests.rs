use super::*;
use crate::rules::DefaultAccess;

/// `{"id":"imds-rules-7","useLocalFileRules":true}` (spec §2.3, §4.7).
const OPTED_IN: &str = "eyJpZCI6ImltZHMtcnVsZXMtNyIsInVzZUxvY2FsRmlsZVJ1bGVzIjp0cnVlfQ==";

fn b64(json: &str) -> String {
    STANDARD.encode(json)
}

fn host(id: &str, default_access: &str, mode: &str) -> ItemDoc {
    parse_item(&format!(
        r#"{{"defaultAccess":"{default_access}","mode":"{mode}","id":"{id}","rules":{{
            "privileges":[{{"name":"p","path":"/metadata/identity"}}],
            "roles":[{{"name":"r","privileges":["p"]}}],
            "identities":[{{"name":"i","userName":"root"}}],
            "roleAssignments":[{{"role":"r","identities":["i"]}}]}}}}"#
    ))
    .unwrap()
}

const LOCAL: &[u8] = br#"{"id":"mine","defaultAccess":"allow","rules":{
    "privileges":[{"name":"p","path":"/metadata/instance"},{"name":"LocalFileRules_q","path":"/x"}],
    "roles":[{"name":"r","privileges":["p","LocalFileRules_q"]}],
    "identities":[{"name":"i","userName":"svc"}],
    "roleAssignments":[{"role":"r","identities":["i"]}]}}"#;

#[test]
fn effective_id_follows_spec_example() {
    assert_eq!(
        EffectiveId::decode(OPTED_IN),
        EffectiveId {
            id: "imds-rules-7-useLocalFileRules-true".into(),
            use_local_rules: true
        }
    );
    assert_eq!(
        EffectiveId::decode(&b64("{}")).id,
        "-useLocalFileRules-false"
    );
    let plain = EffectiveId::decode("ws-rules-3");
    assert_eq!(
        plain,
        EffectiveId {
            id: "ws-rules-3".into(),
            use_local_rules: false
        }
    );
    // Valid base64 of something that is not the opt-in object stays a plain id.
    for raw in [
        b64("[1]"),
        b64(r#"{"useLocalFileRules":"yes"}"#),
        "abcd".into(),
    ] {
        assert_eq!(
            EffectiveId::decode(&raw),
            EffectiveId {
                id: raw.clone(),
                use_local_rules: false
            }
        );
    }
}

#[test]
fn conf_050_local_rules_need_the_opt_in() {
    for id in [
        "plain-id".to_owned(),
        b64(r#"{"id":"x","useLocalFileRules":false}"#),
    ] {
        let (item, outcome) = resolve(
            host(&id, "deny", "enforce"),
            Some(LocalFile::Present(LOCAL)),
        );
        assert_eq!(outcome, LocalOutcome::NotOptedIn);
        assert!(!item.default_allowed());
        assert_eq!(item.privileges().keys().copied().collect::<Vec<_>>(), ["p"]);
    }
}

#[test]
fn conf_051_d7_a_local_mode_has_no_effect() {
    let local = br#"{"mode":"audit","defaultAccess":"deny"}"#;
    let (item, outcome) = resolve(
        host(OPTED_IN, "allow", "enforce"),
        Some(LocalFile::Present(local)),
    );
    assert_eq!(outcome, LocalOutcome::Merged);
    assert_eq!(item.mode(), Mode::Enforce);
    assert!(!item.default_allowed());
}

#[test]
fn conf_052_bad_local_files_fail_closed_with_the_host_mode() {
    let host = host(OPTED_IN, "allow", "audit");
    for file in [
        LocalFile::Present(b"{not json"),
        LocalFile::Present(br#"{"rules":{"roles":[{"name":"r"}]}}"#),
    ] {
        let (item, outcome) = resolve(host.clone(), Some(file));
        assert!(matches!(outcome, LocalOutcome::Invalid(_)), "{outcome:?}");
        assert_eq!(
            (item.id(), item.mode(), item.default_allowed()),
            ("imds-rules-7-useLocalFileRules-true", Mode::Audit, false)
        );
        assert!(item.privileges().is_empty());
    }
    let (item, outcome) = resolve(host.clone(), Some(LocalFile::Unreadable));
    assert_eq!(outcome, LocalOutcome::Unreadable);
    assert!(!item.default_allowed() && item.privileges().is_empty() && item.mode() == Mode::Audit);
    // Missing: the host item as is.
    let (item, outcome) = resolve(host.clone(), Some(LocalFile::Missing));
    assert_eq!(outcome, LocalOutcome::Missing);
    assert!(item.default_allowed());
    // A leading BOM is accepted.
    let (_, outcome) = resolve(host.clone(), Some(LocalFile::Present(b"\xEF\xBB\xBF{}")));
    assert_eq!(outcome, LocalOutcome::Merged);
}

#[test]
fn conf_053_local_names_are_prefixed_and_still_resolve() {
    let (item, outcome) = resolve(
        host(OPTED_IN, "deny", "enforce"),
        Some(LocalFile::Present(LOCAL)),
    );
    assert_eq!(outcome, LocalOutcome::Merged);
    assert_eq!(item.id(), "imds-rules-7-useLocalFileRules-true_mine");
    assert!(item.default_allowed());
    assert_eq!(
        item.privileges().keys().copied().collect::<Vec<_>>(),
        ["LocalFileRules_LocalFileRules_q", "LocalFileRules_p", "p"]
    );
    assert_eq!(
        item.identities().keys().copied().collect::<Vec<_>>(),
        ["LocalFileRules_i", "i"]
    );
    let assigned = item.privilege_assignments();
    assert_eq!(assigned["LocalFileRules_p"], ["LocalFileRules_i"]);
    assert_eq!(
        assigned["LocalFileRules_LocalFileRules_q"],
        ["LocalFileRules_i"]
    );
    assert_eq!(assigned["p"], ["i"]);
}

#[test]
fn a_host_name_colliding_with_a_prefixed_local_name_fails_closed() {
    let host = parse_item(&format!(
        r#"{{"defaultAccess":"allow","mode":"enforce","id":"{OPTED_IN}",
            "rules":{{"privileges":[{{"name":"LocalFileRules_p","path":"/a"}}]}}}}"#
    ))
    .unwrap();
    let (item, outcome) = resolve(
        host.clone(),
        Some(LocalFile::Present(
            br#"{"rules":{"privileges":[{"name":"p","path":"/b"}]}}"#,
        )),
    );
    assert!(
        matches!(
            outcome,
            LocalOutcome::Invalid(RulesError::DuplicateName { .. })
        ),
        "{outcome:?}"
    );
    assert!(!item.default_allowed());
}

#[test]
fn hostga_never_consults_local_files() {
    let (item, outcome) = resolve(host(OPTED_IN, "deny", "enforce"), None);
    assert_eq!(outcome, LocalOutcome::NotConsulted);
    assert_eq!(item.privileges().len(), 1);
}

#[test]
fn conf_037_invalid_host_items_fail_closed_keeping_id_and_mode() {
    let cases = [
        r#"{"defaultAccess":"allow","mode":"audit","id":"x","rules":{"roles":[{"name":"r","privileges":["nope"]}]}}"#.to_owned(),
        r#"{"defaultAccess":"allow","mode":"audit","id":"x","rules":{"identities":[{"name":"i"}]}}"#.to_owned(),
        r#"{"defaultAccess":"allow","mode":"audit","id":"x","defaultAccess":"allow"}"#.to_owned(),
        r#"{"defaultAccess":"allow","mode":"audit","id":"x\u0000"}"#.to_owned(),
        format!(r#"{{"defaultAccess":"allow","mode":"audit","id":"x","pad":"{}"}}"#, " ".repeat(MAX)),
    ];
    const MAX: usize = crate::rules::MAX_DOCUMENT_BYTES;
    for json in &cases {
        let built = build_item(json, Some(LocalFile::Missing));
        let message = built.error_message().unwrap();
        assert!(message.starts_with("host rules invalid: "), "{message}");
        assert_eq!(built.item.mode(), Mode::Audit, "{message}");
        assert!(
            !built.item.default_allowed() && built.item.privileges().is_empty(),
            "{message}"
        );
        assert_eq!(built.local, LocalOutcome::NotConsulted);
    }
    assert_eq!(build_item(&cases[0], None).item.id(), "x");
    // An unknown mode disables the endpoint (spec §2.6).
    let built = build_item(r#"{"defaultAccess":"allow","mode":"on","id":"x"}"#, None);
    assert_eq!(built.item.mode(), Mode::Disabled);
    assert!(built.host_error.is_some());
    // A valid item reports nothing.
    let built = build_item(
        r#"{"defaultAccess":"Deny","mode":"enforce","id":"x"}"#,
        None,
    );
    assert_eq!(
        (built.host_error, built.item.default_allowed()),
        (None, false)
    );
    assert_eq!(DefaultAccess::parse("DENY"), Some(DefaultAccess::Deny));
}

#[test]
fn computed_rules_serialise_in_the_spec_4_9_shape() {
    let item = CompiledItem::compile(host("ws-3", "deny", "enforce"));
    let json = serde_json::to_value(&item).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "id": "ws-3", "defaultAllowed": false, "mode": "Enforce",
            "privileges": {"p": {"name": "p", "path": "/metadata/identity", "queryParameters": {}}},
            "privilegeAssignments": {"p": ["i"]},
            "identities": {"i": {"name": "i", "userName": "root"}}
        })
    );
}
