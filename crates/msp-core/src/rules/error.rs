//! Why an allowlist document was refused (spec §4.2): one variant per check, each naming where it failed.

use std::fmt;

use crate::canon::CanonError;

use super::json::{MAX_ARRAY_LEN, MAX_DOCUMENT_BYTES, MAX_NESTING, MAX_STRING_BYTES};

/// Where in a document a check failed, e.g. `rules.roles[2].privileges[0]`; `document` for the whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JsonPath(String);

impl JsonPath {
    pub(super) fn new(rendered: String) -> JsonPath {
        JsonPath(rendered)
    }

    /// The rendered path; empty for the document itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "document"
        } else {
            &self.0
        })
    }
}

/// What was syntactically wrong with a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonSyntax {
    #[error("unexpected end of input")]
    UnexpectedEnd,
    #[error("unexpected character")]
    UnexpectedChar,
    #[error("invalid escape")]
    BadEscape,
    #[error("unpaired surrogate escape")]
    LoneSurrogate,
    #[error("invalid number")]
    BadNumber,
    #[error("raw control character in a string")]
    ControlInString,
    #[error("data after the document")]
    TrailingData,
    #[error("not UTF-8")]
    NotUtf8,
}

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Array,
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// An allowlist document (host item or local rules file) that failed a check of spec §4.2. The endpoint then
/// fails closed; `to_string()` is the text reported in `<endpoint>RulesError` (spec §9.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    // --- check 6: shape and bounds
    #[error("document is {size} bytes, over the limit of {MAX_DOCUMENT_BYTES}")]
    DocumentTooLarge { size: usize },
    #[error("{path}: invalid JSON at byte {offset}: {syntax}")]
    Syntax {
        path: JsonPath,
        offset: usize,
        syntax: JsonSyntax,
    },
    #[error("{path}: nested deeper than {MAX_NESTING} levels")]
    TooDeep { path: JsonPath },
    #[error("{path}: more than {MAX_ARRAY_LEN} entries")]
    ArrayTooLong { path: JsonPath },
    #[error("{path}: string longer than {MAX_STRING_BYTES} bytes")]
    StringTooLong { path: JsonPath },
    #[error("{path}: string contains NUL")]
    Nul { path: JsonPath },
    #[error("{path}: repeated key {key:?}")]
    RepeatedKey { path: JsonPath, key: String },
    // --- schema (spec §4.1)
    #[error("{path}: required field missing")]
    Missing { path: JsonPath },
    #[error("{path}: must be {expected}")]
    WrongType { path: JsonPath, expected: JsonType },
    #[error("{path}: must not be blank")]
    Blank { path: JsonPath },
    // --- check 1
    #[error("{path}: {value:?} is not allow or deny")]
    BadDefaultAccess { path: JsonPath, value: String },
    #[error("{path}: {value:?} is not disabled, audit or enforce")]
    BadMode { path: JsonPath, value: String },
    // --- check 2
    #[error("{path}: invalid path pattern: {source}")]
    BadPattern {
        path: JsonPath,
        #[source]
        source: CanonError,
    },
    #[error("{path}: undecodable query parameter: {source}")]
    BadQueryParameter {
        path: JsonPath,
        #[source]
        source: CanonError,
    },
    // --- checks 2–5: names and references
    #[error("{path}: name {name:?} is already defined")]
    DuplicateName { path: JsonPath, name: String },
    #[error("{path}: must list at least one entry")]
    EmptyList { path: JsonPath },
    #[error("{path}: {name:?} is listed twice")]
    RepeatedReference { path: JsonPath, name: String },
    #[error("{path}: undefined privilege {name:?}")]
    UndefinedPrivilege { path: JsonPath, name: String },
    #[error("{path}: undefined role {name:?}")]
    UndefinedRole { path: JsonPath, name: String },
    #[error("{path}: undefined identity {name:?}")]
    UndefinedIdentity { path: JsonPath, name: String },
    #[error("{path}: identity has no selector (userName, groupName, exePath or processName)")]
    NoSelector { path: JsonPath },
}

impl RulesError {
    /// Where the check failed (`None` for a document over the size limit), e.g. for a per-field error report.
    pub fn path(&self) -> Option<&JsonPath> {
        match self {
            RulesError::DocumentTooLarge { .. } => None,
            RulesError::Syntax { path, .. }
            | RulesError::TooDeep { path }
            | RulesError::ArrayTooLong { path }
            | RulesError::StringTooLong { path }
            | RulesError::Nul { path }
            | RulesError::RepeatedKey { path, .. }
            | RulesError::Missing { path }
            | RulesError::WrongType { path, .. }
            | RulesError::Blank { path }
            | RulesError::BadDefaultAccess { path, .. }
            | RulesError::BadMode { path, .. }
            | RulesError::BadPattern { path, .. }
            | RulesError::BadQueryParameter { path, .. }
            | RulesError::DuplicateName { path, .. }
            | RulesError::EmptyList { path }
            | RulesError::RepeatedReference { path, .. }
            | RulesError::UndefinedPrivilege { path, .. }
            | RulesError::UndefinedRole { path, .. }
            | RulesError::UndefinedIdentity { path, .. }
            | RulesError::NoSelector { path } => Some(path),
        }
    }
}
