//! Access-control profiles: versioned allowlists in the §4.1 item format, validated per §4.2 before they are
//! stored, and rendered as the items of a VM's `KeyStatus` (spec §2.3).
//!
//! A profile's own `mode` is never served: the VM's settings choose the mode (one source of truth with what the
//! host enforces). This module must never accept a document that the agent would replace by a fail-closed item.

use serde_json::Value;

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
    // The strict checker requires a mode on host items; a profile's is a placeholder the VM overrides. It is
    // spliced into the original text, so the repeated-key and NUL checks still see the bytes the owner sent.
    let checked = if map.contains_key("mode") {
        text.to_owned()
    } else {
        with_placeholder_mode(text)
    };
    map.entry("mode")
        .or_insert_with(|| Value::String("enforce".to_owned()));
    let with_mode = Value::Object(map);
    item_check::check(&checked)?;
    Ok(with_mode)
}

/// `text` is a JSON object (checked by the caller); adds `"mode":"enforce"` right after its opening brace.
fn with_placeholder_mode(text: &str) -> String {
    let (lead, rest) = text.split_at(text.find('{').map_or(0, |i| i + 1));
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{lead}\"mode\":\"enforce\"{sep}{rest}")
}

/// The single call site of the strict §4.2 validator, `msp_core::rules::parse_item`: the same checks the agent
/// applies, so a profile the host accepts is one every agent compiles.
mod item_check {
    use super::FieldError;

    pub(super) fn check(text: &str) -> Result<(), Vec<FieldError>> {
        msp_core::rules::parse_item(text).map(drop).map_err(|e| {
            let field = e.path().map(ToString::to_string).unwrap_or_default();
            vec![FieldError::new(field, e.to_string())]
        })
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
        assert_eq!(fields(r#"{"defaultAccess":"allow"}"#), ["id"]);
        assert_eq!(
            fields(r#"{"defaultAccess":"allow","id":"x","mode":"on"}"#),
            ["mode"]
        );
        assert_eq!(
            fields(
                r#"{"defaultAccess":"allow","id":"x","rules":{"roles":[{"name":"r","privileges":["nope"]}]}}"#
            ),
            ["rules.roles[0].privileges[0]"]
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
