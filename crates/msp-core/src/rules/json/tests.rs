use super::*;

fn err(text: &str) -> RulesError {
    parse(text).unwrap_err()
}

#[test]
fn reads_ordinary_json() {
    let doc =
        parse(r#" {"a": [1, -2.5e+3, true, false, null, "x\u00e9\ud83d\ude00\n"], "b": {}} "#)
            .unwrap();
    let Some(Json::Array(items)) = doc.get("a") else {
        panic!("{doc:?}")
    };
    assert_eq!(items.len(), 6);
    assert_eq!(items[5], Json::String("xé😀\n".into()));
    assert_eq!(doc.get("b"), Some(&Json::Object(vec![])));
}

#[test]
fn d4_repeated_keys_are_refused_at_any_depth() {
    assert_eq!(
        err(r#"{"a":1,"a":2}"#),
        RulesError::RepeatedKey {
            path: JsonPath::default(),
            key: "a".into()
        }
    );
    let e = err(r#"{"rules":{"roles":[{"name":"r","name":"s"}]}}"#);
    assert_eq!(e.to_string(), r#"rules.roles[0]: repeated key "name""#);
    // Large objects take the sorting path.
    let mut keys: Vec<String> = (0..40).map(|i| format!(r#""k{i}":{i}"#)).collect();
    assert!(parse(&format!("{{{}}}", keys.join(","))).is_ok());
    keys.push(r#""k17":0"#.into());
    assert_eq!(
        err(&format!("{{{}}}", keys.join(","))),
        RulesError::RepeatedKey {
            path: JsonPath::default(),
            key: "k17".into()
        }
    );
    // Escapes are decoded before comparing.
    assert!(matches!(
        err(r#"{"a":1,"\u0061":2}"#),
        RulesError::RepeatedKey { .. }
    ));
}

#[test]
fn d4_bounds() {
    let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
    assert!(matches!(err(&deep), RulesError::TooDeep { .. }));
    let ok = format!("{}{}", "[".repeat(16), "]".repeat(16));
    assert!(parse(&ok).is_ok());
    // Far deeper than any stack would survive: refused at level 17 without recursing further.
    assert!(matches!(
        err(&"[".repeat(1_000_000)),
        RulesError::TooDeep { .. }
    ));
    let long = format!("[{}]", vec!["0"; MAX_ARRAY_LEN + 1].join(","));
    assert!(matches!(err(&long), RulesError::ArrayTooLong { .. }));
    assert!(parse(&format!("[{}]", vec!["0"; MAX_ARRAY_LEN].join(","))).is_ok());
    let s = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_STRING_BYTES + 1));
    assert_eq!(err(&s).to_string(), "k: string longer than 4096 bytes");
    assert!(parse(&format!(r#""{}""#, "x".repeat(MAX_STRING_BYTES))).is_ok());
    let big = format!(r#""{}""#, " ".repeat(MAX_DOCUMENT_BYTES));
    assert!(matches!(err(&big), RulesError::DocumentTooLarge { .. }));
    assert!(matches!(err(r#"{"k":"a\u0000b"}"#), RulesError::Nul { .. }));
}

#[test]
fn syntax_errors_are_typed() {
    let syntax = |text: &str| match err(text) {
        RulesError::Syntax { syntax, .. } => syntax,
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(syntax(""), JsonSyntax::UnexpectedEnd);
    assert_eq!(syntax("{"), JsonSyntax::UnexpectedEnd);
    assert_eq!(syntax("{} x"), JsonSyntax::TrailingData);
    assert_eq!(syntax("[01]"), JsonSyntax::UnexpectedChar);
    assert_eq!(syntax("[1.]"), JsonSyntax::BadNumber);
    assert_eq!(syntax("[-]"), JsonSyntax::BadNumber);
    assert_eq!(syntax(r#"["\x"]"#), JsonSyntax::BadEscape);
    assert_eq!(syntax(r#"["\ud800"]"#), JsonSyntax::LoneSurrogate);
    assert_eq!(syntax(r#"["\udc00"]"#), JsonSyntax::LoneSurrogate);
    assert_eq!(syntax("[\"a\nb\"]"), JsonSyntax::ControlInString);
    assert_eq!(syntax("[tru]"), JsonSyntax::UnexpectedChar);
    assert_eq!(syntax("{'a':1}"), JsonSyntax::UnexpectedChar);
    assert_eq!(syntax("[1,]"), JsonSyntax::UnexpectedChar);
}
