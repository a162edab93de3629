use super::*;

/// A valid item with one of each; tests replace parts of it.
fn item(rules: &str) -> String {
    format!(r#"{{"defaultAccess":"deny","mode":"enforce","id":"r1","rules":{rules}}}"#)
}

const FULL: &str = r#"{
  "privileges":[{"name":"p1","path":"/metadata/identity","queryParameters":{"api-version":"2018-02-01"}},
                {"name":"p2","path":"machine"}],
  "roles":[{"name":"r1","privileges":["p1","p2"]}],
  "identities":[{"name":"i1","userName":"root"},{"name":"i2","exePath":"/usr/bin/curl","groupName":"adm"}],
  "roleAssignments":[{"role":"r1","identities":["i1","i2"]}]}"#;

fn error_of(rules: &str) -> String {
    parse_item(&item(rules)).unwrap_err().to_string()
}

#[test]
fn a_full_item_parses_with_canonical_patterns() {
    let doc = parse_item(&item(FULL)).unwrap();
    assert_eq!(
        (doc.id.as_str(), doc.default_access, doc.mode),
        ("r1", DefaultAccess::Deny, Mode::Enforce)
    );
    assert_eq!(doc.rules.privileges[1].pattern.render(), "/machine");
    assert_eq!(
        doc.rules.privileges[0].query,
        [("api-version".to_owned(), "2018-02-01".to_owned())]
    );
    assert_eq!(
        doc.rules.identities[1].exe_path.as_deref(),
        Some("/usr/bin/curl")
    );
}

#[test]
fn default_access_and_mode_are_trimmed_and_case_insensitive() {
    let doc = parse_item(r#"{"defaultAccess":" Allow ","mode":"AUDIT","id":"x"}"#).unwrap();
    assert_eq!(
        (doc.default_access, doc.mode),
        (DefaultAccess::Allow, Mode::Audit)
    );
    assert_eq!(doc.rules, RulesDoc::default());
    let e = parse_item(r#"{"defaultAccess":"allowed","mode":"audit","id":"x"}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"defaultAccess: "allowed" is not allow or deny"#
    );
    let e = parse_item(r#"{"defaultAccess":"allow","mode":"enforced","id":"x"}"#).unwrap_err();
    assert!(matches!(e, RulesError::BadMode { .. }), "{e}");
}

#[test]
fn conf_038_absent_or_null_lists_are_empty() {
    let doc = parse_item(&item(
        r#"{"privileges":[{"name":"p","path":"/"}],"roles":null}"#,
    ))
    .unwrap();
    assert_eq!(doc.rules.privileges.len(), 1);
    assert!(
        doc.rules.roles.is_empty()
            && doc.rules.identities.is_empty()
            && doc.rules.role_assignments.is_empty()
    );
    assert!(
        parse_item(&item("null"))
            .unwrap()
            .rules
            .privileges
            .is_empty()
    );
}

#[test]
fn required_fields_and_types_are_named() {
    assert_eq!(
        parse_item(r#"{"mode":"audit","id":"x"}"#)
            .unwrap_err()
            .to_string(),
        "defaultAccess: required field missing"
    );
    assert_eq!(
        parse_item(r#"{"defaultAccess":"deny","mode":"audit"}"#)
            .unwrap_err()
            .to_string(),
        "id: required field missing"
    );
    assert_eq!(
        parse_item("[]").unwrap_err().to_string(),
        "document: must be an object"
    );
    assert_eq!(
        error_of(r#"{"privileges":{}}"#),
        "rules.privileges: must be an array"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p"}]}"#),
        "rules.privileges[0].path: required field missing"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":1,"path":"/"}]}"#),
        "rules.privileges[0].name: must be a string"
    );
    assert_eq!(
        error_of(r#"{"roles":[{"name":"r"}]}"#),
        "rules.roles[0].privileges: required field missing"
    );
}

#[test]
fn names_must_be_non_blank_and_unique() {
    assert_eq!(
        error_of(r#"{"privileges":[{"name":" ","path":"/"}]}"#),
        "rules.privileges[0].name: must not be blank"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":""}]}"#),
        "rules.privileges[0].path: must not be blank"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":"/a"},{"name":"p","path":"/b"}]}"#),
        r#"rules.privileges[1].name: name "p" is already defined"#
    );
    assert_eq!(
        error_of(r#"{"identities":[{"name":"i","userName":"a"},{"name":"i","userName":"b"}]}"#),
        r#"rules.identities[1].name: name "i" is already defined"#
    );
}

#[test]
fn patterns_and_query_parameters_are_checked() {
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":"/a/../.."}]}"#),
        "rules.privileges[0].path: invalid path pattern: path climbs above the root"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":"/a","queryParameters":{"k":"%zz"}}]}"#),
        "rules.privileges[0].queryParameters.k: undecodable query parameter: malformed percent-encoding"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":"/a","queryParameters":{"k":""}}]}"#),
        "rules.privileges[0].queryParameters.k: must not be blank"
    );
    assert_eq!(
        error_of(r#"{"privileges":[{"name":"p","path":"/a","queryParameters":{"k":1}}]}"#),
        "rules.privileges[0].queryParameters.k: must be a string"
    );
}

#[test]
fn references_must_be_defined_unrepeated_and_present() {
    let p = r#""privileges":[{"name":"p1","path":"/"}]"#;
    assert_eq!(
        error_of(&format!(
            r#"{{{p},"roles":[{{"name":"r","privileges":["p1","p9"]}}]}}"#
        )),
        r#"rules.roles[0].privileges[1]: undefined privilege "p9""#
    );
    let e = parse_item(&item(&format!(
        r#"{{{p},"roles":[{{"name":"r","privileges":["p9"]}}]}}"#
    )))
    .unwrap_err();
    assert_eq!(
        e.path().map(JsonPath::as_str),
        Some("rules.roles[0].privileges[0]")
    );
    assert_eq!(
        error_of(&format!(
            r#"{{{p},"roles":[{{"name":"r","privileges":["p1","p1"]}}]}}"#
        )),
        r#"rules.roles[0].privileges[1]: "p1" is listed twice"#
    );
    assert_eq!(
        error_of(&format!(
            r#"{{{p},"roles":[{{"name":"r","privileges":[]}}]}}"#
        )),
        "rules.roles[0].privileges: must list at least one entry"
    );
    assert_eq!(
        error_of(r#"{"roleAssignments":[{"role":"r","identities":["i"]}]}"#),
        r#"rules.roleAssignments[0].role: undefined role "r""#
    );
    let ri =
        r#""roles":[{"name":"r","privileges":["p1"]}],"identities":[{"name":"i","userName":"u"}]"#;
    assert_eq!(
        error_of(&format!(
            r#"{{{p},{ri},"roleAssignments":[{{"role":"r","identities":["j"]}}]}}"#
        )),
        r#"rules.roleAssignments[0].identities[0]: undefined identity "j""#
    );
    assert_eq!(
        error_of(&format!(
            r#"{{{p},{ri},"roleAssignments":[{{"role":"r","identities":[]}}]}}"#
        )),
        "rules.roleAssignments[0].identities: must list at least one entry"
    );
}

#[test]
fn identities_need_a_non_blank_selector() {
    assert_eq!(
        error_of(r#"{"identities":[{"name":"i"}]}"#),
        "rules.identities[0]: identity has no selector (userName, groupName, exePath or processName)"
    );
    assert_eq!(
        error_of(r#"{"identities":[{"name":"i","userName":null}]}"#),
        error_of(r#"{"identities":[{"name":"i"}]}"#)
    );
    assert_eq!(
        error_of(r#"{"identities":[{"name":"i","userName":"root","exePath":""}]}"#),
        "rules.identities[0].exePath: must not be blank"
    );
}

#[test]
fn local_files_skip_a_bom_and_ignore_mode() {
    let doc =
        parse_local_file(b"\xEF\xBB\xBF{\"mode\":\"not-a-mode\",\"defaultAccess\":\"allow\"}")
            .unwrap();
    assert_eq!(
        (doc.id, doc.default_access),
        (None, Some(DefaultAccess::Allow))
    );
    assert_eq!(parse_local_file(b"{}").unwrap().rules, RulesDoc::default());
    assert_eq!(
        parse_local_file(br#"{"id":" "}"#).unwrap_err().to_string(),
        "id: must not be blank"
    );
    assert!(matches!(
        parse_local_file(b"{\"id\":\"\xFF\"}").unwrap_err(),
        RulesError::Syntax {
            syntax: JsonSyntax::NotUtf8,
            offset: 7,
            ..
        }
    ));
    // A BOM anywhere else is not whitespace.
    assert!(parse_local_file(b" \xEF\xBB\xBF{}").is_err());
}
