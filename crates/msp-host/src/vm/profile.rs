//! Access-control profiles: versioned allowlists in the §4.1 item format, validated per §4.2 before they are
//! stored, and rendered as the items of a VM's `KeyStatus` (spec §2.3).
//!
//! A profile's own `mode` is never served: the VM's settings choose the mode (one source of truth with what the
//! host enforces). This module must never accept a document that the agent would replace by a fail-closed item.

use serde_json::{Map, Value};

use super::settings::FieldError;
use msp_core::Mode;

/// A profile document is at most this many bytes (spec §4.2 check 6).
pub const MAX_PROFILE_BYTES: usize = 1 << 20;
/// Profile names are at most this many bytes of `[A-Za-z0-9._-]`.
pub const MAX_PROFILE_NAME: usize = 128;
/// Versions kept per profile; a PUT beyond it is refused (bounded store, STYLE rule 15).
pub const MAX_PROFILE_VERSIONS: u32 = 10_000;

/// One stored version of a profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub name: String,
    pub version: u32,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// The validated item, as submitted.
    pub document: Value,
}

impl Profile {
    /// The item served to a VM: the document with `mode` set from the VM's settings (spec §2.6).
    pub fn item(&self, mode: Mode) -> Value {
        let mut item = self.document.clone();
        if let Value::Object(map) = &mut item {
            map.insert("mode".to_owned(), Value::String(mode.as_str().to_owned()));
        }
        item
    }
}

/// A profile name: 1–128 bytes of ASCII letters, digits, `.`, `_`, `-`.
pub fn validate_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROFILE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            "1-128 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

/// Validates a submitted item (spec §4.1, §4.2). A missing `mode` is accepted: the VM settings supply it.
pub fn validate_document(text: &str) -> Result<Value, Vec<FieldError>> {
    if text.len() > MAX_PROFILE_BYTES {
        return Err(vec![FieldError::new(
            "",
            format!("document is larger than {MAX_PROFILE_BYTES} bytes"),
        )]);
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| vec![FieldError::new("", format!("not JSON: {e}"))])?;
    let Value::Object(mut map) = value else {
        return Err(vec![FieldError::new("", "an item must be a JSON object")]);
    };
    // The strict checker requires a mode on host items; the profile's is a placeholder the VM overrides.
    map.entry("mode")
        .or_insert_with(|| Value::String("enforce".to_owned()));
    let with_mode = Value::Object(map);
    let rendered = with_mode.to_string();
    // Both the repeated-key check and the rules checks need the original text; the mode placeholder is
    // validated on the re-rendered value, which cannot repeat keys.
    item_check::check(text).and_then(|()| item_check::check(&rendered))?;
    Ok(with_mode)
}

/// The single call site of the strict §4.2 validator. Interim: a local structural check until
/// `msp_core::rules::parse_item` lands; the swap is this one module.
mod item_check {
    use super::*;

    pub(super) fn check(text: &str) -> Result<(), Vec<FieldError>> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| vec![FieldError::new("", format!("not JSON: {e}"))])?;
        let mut errors = Vec::new();
        let Value::Object(item) = &value else {
            return Err(vec![FieldError::new("", "an item must be a JSON object")]);
        };
        match str_field(item, "defaultAccess").map(|s| s.trim().to_ascii_lowercase()) {
            Some(s) if s == "allow" || s == "deny" => {}
            _ => errors.push(FieldError::new(
                "defaultAccess",
                "must be \"allow\" or \"deny\"",
            )),
        }
        if let Some(m) = item.get("mode")
            && m.as_str().and_then(Mode::parse).is_none()
        {
            errors.push(FieldError::new(
                "mode",
                "must be \"disabled\", \"audit\" or \"enforce\"",
            ));
        }
        if str_field(item, "id").is_none_or(|s| s.trim().is_empty()) {
            errors.push(FieldError::new("id", "required, a non-blank string"));
        }
        if let Some(rules) = item.get("rules") {
            match rules {
                Value::Object(rules) => check_rules(rules, &mut errors),
                Value::Null => {}
                _ => errors.push(FieldError::new("rules", "must be an object")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        obj.get(key).and_then(Value::as_str)
    }

    /// Names of the objects in `rules.<array>`, each required non-blank and unique.
    fn names(rules: &Map<String, Value>, array: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(v) = rules.get(array) else {
            return out;
        };
        let Some(entries) = v.as_array() else {
            errors.push(FieldError::new(
                format!("rules.{array}"),
                "must be an array",
            ));
            return out;
        };
        for (i, e) in entries.iter().enumerate() {
            let field = format!("rules.{array}[{i}].name");
            match e.get("name").and_then(Value::as_str) {
                Some(n) if !n.trim().is_empty() => {
                    if out.iter().any(|o| o == n) {
                        errors.push(FieldError::new(field, format!("duplicate name {n:?}")));
                    }
                    out.push(n.to_owned());
                }
                _ => errors.push(FieldError::new(field, "required, a non-blank string")),
            }
        }
        out
    }

    fn check_refs(
        rules: &Map<String, Value>,
        array: &str,
        list: &str,
        defined: &[String],
        errors: &mut Vec<FieldError>,
    ) {
        let Some(entries) = rules.get(array).and_then(Value::as_array) else {
            return;
        };
        for (i, e) in entries.iter().enumerate() {
            let field = format!("rules.{array}[{i}].{list}");
            let refs = e.get(list).and_then(Value::as_array);
            let Some(refs) = refs.filter(|r| !r.is_empty()) else {
                errors.push(FieldError::new(field, "required, a non-empty array"));
                continue;
            };
            for r in refs {
                match r.as_str() {
                    Some(name) if defined.iter().any(|d| d == name) => {}
                    _ => errors.push(FieldError::new(
                        field.clone(),
                        format!("{r} is not defined in this document"),
                    )),
                }
            }
        }
    }

    fn check_rules(rules: &Map<String, Value>, errors: &mut Vec<FieldError>) {
        let privileges = names(rules, "privileges", errors);
        let roles = names(rules, "roles", errors);
        let identities = names(rules, "identities", errors);
        if let Some(ps) = rules.get("privileges").and_then(Value::as_array) {
            for (i, p) in ps.iter().enumerate() {
                if p.get("path")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s.trim().is_empty())
                {
                    errors.push(FieldError::new(
                        format!("rules.privileges[{i}].path"),
                        "required, a non-blank string",
                    ));
                }
            }
        }
        check_refs(rules, "roles", "privileges", &privileges, errors);
        if let Some(ids) = rules.get("identities").and_then(Value::as_array) {
            for (i, id) in ids.iter().enumerate() {
                let has_selector = ["userName", "groupName", "exePath", "processName"]
                    .iter()
                    .any(|k| {
                        id.get(*k)
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.trim().is_empty())
                    });
                if !has_selector {
                    errors.push(FieldError::new(
                        format!("rules.identities[{i}]"),
                        "needs at least one of userName, groupName, exePath, processName",
                    ));
                }
            }
        }
        if let Some(ras) = rules.get("roleAssignments").and_then(Value::as_array) {
            for (i, ra) in ras.iter().enumerate() {
                match ra.get("role").and_then(Value::as_str) {
                    Some(r) if roles.iter().any(|d| d == r) => {}
                    _ => errors.push(FieldError::new(
                        format!("rules.roleAssignments[{i}].role"),
                        "must name a role defined in this document",
                    )),
                }
            }
        }
        check_refs(rules, "roleAssignments", "identities", &identities, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_item_keeps_its_content_and_gets_the_vm_mode() {
        let doc = r#"{"defaultAccess":"deny","id":"imds-rules-7","rules":{
            "privileges":[{"name":"p","path":"/metadata/identity"}],
            "roles":[{"name":"r","privileges":["p"]}],
            "identities":[{"name":"i","userName":"root"}],
            "roleAssignments":[{"role":"r","identities":["i"]}]}}"#;
        let v = validate_document(doc).unwrap();
        let p = Profile {
            name: "x".into(),
            version: 1,
            created_ms: 0,
            document: v,
        };
        let item = p.item(Mode::Audit);
        assert_eq!(item["mode"], "audit");
        assert_eq!(item["id"], "imds-rules-7");
    }

    #[test]
    fn errors_name_the_field() {
        let fields = |doc: &str| -> Vec<String> {
            validate_document(doc)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(r#"{"id":"x"}"#), ["defaultAccess"]);
        assert_eq!(fields(r#"{"defaultAccess":"allow","id":" "}"#), ["id"]);
        assert_eq!(
            fields(r#"{"defaultAccess":"allow","id":"x","mode":"on"}"#),
            ["mode"]
        );
        assert_eq!(
            fields(
                r#"{"defaultAccess":"allow","id":"x","rules":{"roles":[{"name":"r","privileges":["nope"]}]}}"#
            ),
            ["rules.roles[0].privileges"]
        );
        assert_eq!(fields("[]"), [""]);
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("imds-rules_1.2").is_ok());
        assert!(validate_name("../x").is_err());
        assert!(validate_name("").is_err());
    }
}
