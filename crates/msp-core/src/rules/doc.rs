//! Allowlist documents (spec §4.1): host items and local rules files, read strictly and validated against every
//! check of spec §4.2 before anything is compiled from them.
//!
//! This module never accepts a document partly: one failed check refuses the whole document (the caller then
//! fails closed). It never resolves duplicate names or keys by order, and never drops an unknown reference.

use serde::Serialize;

use super::error::{JsonPath, JsonSyntax, JsonType, RulesError};
use super::fnv::FnvSet;
use super::json::{self, At, Json};
use crate::Mode;
use crate::canon::{CanonicalPath, canonicalize_pattern, decode_component};

/// `defaultAccess` (spec §4.1): what a request that touches no privilege gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAccess {
    Allow,
    Deny,
}

impl DefaultAccess {
    /// Trimmed, case-insensitive `allow` or `deny`.
    pub fn parse(text: &str) -> Option<DefaultAccess> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("allow") {
            Some(DefaultAccess::Allow)
        } else if text.eq_ignore_ascii_case("deny") {
            Some(DefaultAccess::Deny)
        } else {
            None
        }
    }
}

/// A validated host item (`authorizationRules.{imds,wireserver,hostga}`, spec §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemDoc {
    /// The raw host id (plain, or base64 of the local-rules opt-in, spec §4.7).
    pub id: String,
    pub default_access: DefaultAccess,
    pub mode: Mode,
    pub rules: RulesDoc,
}

/// A validated local rules file (spec §4.7). It has no mode: only the host sets one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDoc {
    pub id: Option<String>,
    pub default_access: Option<DefaultAccess>,
    pub rules: RulesDoc,
}

/// The four lists of an item's `rules`; an absent list is empty (spec §4.1). Names are unique per list and every
/// reference is defined in the same document. Only the parsers of this module (and the merge of spec §4.7) fill
/// one, so a `RulesDoc` outside it is always a validated one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RulesDoc {
    pub(crate) privileges: Vec<Privilege>,
    pub(crate) roles: Vec<Role>,
    pub(crate) identities: Vec<Identity>,
    pub(crate) role_assignments: Vec<RoleAssignment>,
}

impl RulesDoc {
    /// Privileges, in document order.
    pub fn privileges(&self) -> &[Privilege] {
        &self.privileges
    }

    /// Roles, in document order.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Identities, in document order.
    pub fn identities(&self) -> &[Identity] {
        &self.identities
    }

    /// Role assignments, in document order.
    pub fn role_assignments(&self) -> &[RoleAssignment] {
        &self.role_assignments
    }
}

/// A URL privilege: a path prefix plus required query parameters (spec §4.1, §5.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Privilege {
    pub name: String,
    /// As written in the document.
    pub path: String,
    /// As written in the document, in document order.
    #[serde(serialize_with = "pairs_as_map")]
    pub query_parameters: Vec<(String, String)>,
    /// `path` canonicalised (spec §5.5).
    #[serde(skip)]
    pub pattern: CanonicalPath,
    /// `query_parameters` decoded and lowercased (spec §5.5).
    #[serde(skip)]
    pub query: Vec<(String, String)>,
}

/// A named set of privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub privileges: Vec<String>,
}

/// A caller selector; set selectors must all match, unset ones are wildcards (spec §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
}

/// Grants a role to identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub role: String,
    pub identities: Vec<String>,
}

fn pairs_as_map<S: serde::Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// Reads and validates a host item from its raw JSON text: every check of spec §4.2.
pub fn parse_item(text: &str) -> Result<ItemDoc, RulesError> {
    let root = json::parse(text)?;
    let at = At::ROOT;
    expect_object(&root, at)?;
    let default_access = default_access(
        required_str(&root, "defaultAccess", at)?,
        at.key("defaultAccess"),
    )?;
    let mode_text = required_str(&root, "mode", at)?;
    let mode = Mode::parse(mode_text).ok_or_else(|| RulesError::BadMode {
        path: at.key("mode").path(),
        value: mode_text.to_owned(),
    })?;
    let id = required_str(&root, "id", at)?.to_owned();
    let rules = rules_doc(field(&root, "rules"), at.key("rules"))?;
    Ok(ItemDoc {
        id,
        default_access,
        mode,
        rules,
    })
}

/// Reads and validates a local rules file (spec §4.7): a leading UTF-8 BOM is skipped, `mode` is ignored,
/// `defaultAccess`, `id` and `rules` are optional, and `id`, when present, is non-blank.
pub fn parse_local_file(bytes: &[u8]) -> Result<LocalDoc, RulesError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.len() > json::MAX_DOCUMENT_BYTES {
        return Err(RulesError::DocumentTooLarge { size: bytes.len() });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RulesError::Syntax {
        path: Default::default(),
        offset: e.valid_up_to(),
        syntax: JsonSyntax::NotUtf8,
    })?;
    let root = json::parse(text)?;
    let at = At::ROOT;
    expect_object(&root, at)?;
    let default_access = match optional_str(&root, "defaultAccess", at)? {
        Some(text) => Some(default_access(text, at.key("defaultAccess"))?),
        None => None,
    };
    let id = match optional_str(&root, "id", at)? {
        Some(id) => Some(non_blank(id, at.key("id"))?.to_owned()),
        None => None,
    };
    let rules = rules_doc(field(&root, "rules"), at.key("rules"))?;
    Ok(LocalDoc {
        id,
        default_access,
        rules,
    })
}

fn default_access(text: &str, at: At<'_>) -> Result<DefaultAccess, RulesError> {
    DefaultAccess::parse(text).ok_or_else(|| RulesError::BadDefaultAccess {
        path: at.path(),
        value: text.to_owned(),
    })
}

/// A field's value; `null` counts as absent.
fn field<'j>(object: &'j Json, key: &str) -> Option<&'j Json> {
    object.get(key).filter(|v| **v != Json::Null)
}

fn expect_object(value: &Json, at: At<'_>) -> Result<(), RulesError> {
    match value {
        Json::Object(_) => Ok(()),
        _ => Err(RulesError::WrongType {
            path: at.path(),
            expected: JsonType::Object,
        }),
    }
}

fn optional_str<'j>(
    object: &'j Json,
    key: &str,
    at: At<'_>,
) -> Result<Option<&'j str>, RulesError> {
    match field(object, key) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => Err(RulesError::WrongType {
            path: at.key(key).path(),
            expected: JsonType::String,
        }),
    }
}

fn required_str<'j>(object: &'j Json, key: &str, at: At<'_>) -> Result<&'j str, RulesError> {
    optional_str(object, key, at)?.ok_or_else(|| RulesError::Missing {
        path: at.key(key).path(),
    })
}

fn non_blank<'s>(text: &'s str, at: At<'_>) -> Result<&'s str, RulesError> {
    if text.trim().is_empty() {
        Err(RulesError::Blank { path: at.path() })
    } else {
        Ok(text)
    }
}

/// A required, non-blank string field (a name, a reference or a path).
fn required_name<'j>(object: &'j Json, key: &str, at: At<'_>) -> Result<&'j str, RulesError> {
    non_blank(required_str(object, key, at)?, at.key(key))
}

/// An array field; absent or `null` is empty.
fn array<'j>(object: &'j Json, key: &str, at: At<'_>) -> Result<&'j [Json], RulesError> {
    match field(object, key) {
        None => Ok(&[]),
        Some(Json::Array(items)) => Ok(items),
        Some(_) => Err(RulesError::WrongType {
            path: at.key(key).path(),
            expected: JsonType::Array,
        }),
    }
}

fn rules_doc(rules: Option<&Json>, at: At<'_>) -> Result<RulesDoc, RulesError> {
    let Some(rules) = rules else {
        return Ok(RulesDoc::default());
    };
    expect_object(rules, at)?;
    let privileges = privileges(array(rules, "privileges", at)?, at.key("privileges"))?;
    let privilege_names: FnvSet<&str> = privileges.iter().map(|p| p.name.as_str()).collect();
    let roles = roles(
        array(rules, "roles", at)?,
        at.key("roles"),
        &privilege_names,
    )?;
    let identities = identities(array(rules, "identities", at)?, at.key("identities"))?;
    let role_names: FnvSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let identity_names: FnvSet<&str> = identities.iter().map(|i| i.name.as_str()).collect();
    let role_assignments = assignments(
        array(rules, "roleAssignments", at)?,
        at.key("roleAssignments"),
        &role_names,
        &identity_names,
    )?;
    Ok(RulesDoc {
        privileges,
        roles,
        identities,
        role_assignments,
    })
}

/// Checks that `name` is new in `seen` (spec §4.2 checks 2–4).
fn unique<'j>(seen: &mut FnvSet<&'j str>, name: &'j str, at: At<'_>) -> Result<(), RulesError> {
    if seen.insert(name) {
        Ok(())
    } else {
        Err(RulesError::DuplicateName {
            path: at.key("name").path(),
            name: name.to_owned(),
        })
    }
}

fn privileges(items: &[Json], at: At<'_>) -> Result<Vec<Privilege>, RulesError> {
    let mut seen = FnvSet::default();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = at.index(i);
        expect_object(item, at)?;
        let name = required_name(item, "name", at)?;
        unique(&mut seen, name, at)?;
        let path = required_name(item, "path", at)?;
        let pattern = canonicalize_pattern(path).map_err(|source| RulesError::BadPattern {
            path: at.key("path").path(),
            source,
        })?;
        let (query_parameters, query) =
            query_parameters(field(item, "queryParameters"), at.key("queryParameters"))?;
        out.push(Privilege {
            name: name.to_owned(),
            path: path.to_owned(),
            query_parameters,
            pattern,
            query,
        });
    }
    Ok(out)
}

type Pairs = Vec<(String, String)>;

/// `queryParameters`: string → string, keys and values non-blank and decodable (spec §4.2 check 2, §5.5).
fn query_parameters(value: Option<&Json>, at: At<'_>) -> Result<(Pairs, Pairs), RulesError> {
    let entries = match value {
        None => return Ok((Vec::new(), Vec::new())),
        Some(Json::Object(entries)) => entries,
        Some(_) => {
            return Err(RulesError::WrongType {
                path: at.path(),
                expected: JsonType::Object,
            });
        }
    };
    let mut raw = Vec::with_capacity(entries.len());
    let mut canonical = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let at = at.key(key);
        let Json::String(value) = value else {
            return Err(RulesError::WrongType {
                path: at.path(),
                expected: JsonType::String,
            });
        };
        non_blank(key, at)?;
        non_blank(value, at)?;
        let decode = |text: &str| {
            decode_component(text.as_bytes()).map_err(|source| RulesError::BadQueryParameter {
                path: at.path(),
                source,
            })
        };
        canonical.push((decode(key)?, decode(value)?));
        raw.push((key.clone(), value.clone()));
    }
    Ok((raw, canonical))
}

/// A non-empty list of non-blank, unrepeated references, each defined in `defined` (spec §4.2 checks 3, 5).
fn references(
    object: &Json,
    key: &str,
    at: At<'_>,
    defined: &FnvSet<&str>,
    undefined: fn(JsonPath, String) -> RulesError,
) -> Result<Vec<String>, RulesError> {
    let list_at = at.key(key);
    let items = match field(object, key) {
        None => {
            return Err(RulesError::Missing {
                path: list_at.path(),
            });
        }
        Some(Json::Array(items)) => items,
        Some(_) => {
            return Err(RulesError::WrongType {
                path: list_at.path(),
                expected: JsonType::Array,
            });
        }
    };
    if items.is_empty() {
        return Err(RulesError::EmptyList {
            path: list_at.path(),
        });
    }
    let mut seen = FnvSet::default();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = list_at.index(i);
        let Json::String(reference) = item else {
            return Err(RulesError::WrongType {
                path: at.path(),
                expected: JsonType::String,
            });
        };
        non_blank(reference, at)?;
        if !seen.insert(reference.as_str()) {
            return Err(RulesError::RepeatedReference {
                path: at.path(),
                name: reference.clone(),
            });
        }
        if !defined.contains(reference.as_str()) {
            return Err(undefined(at.path(), reference.clone()));
        }
        out.push(reference.clone());
    }
    Ok(out)
}

fn roles(items: &[Json], at: At<'_>, privileges: &FnvSet<&str>) -> Result<Vec<Role>, RulesError> {
    let mut seen = FnvSet::default();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = at.index(i);
        expect_object(item, at)?;
        let name = required_name(item, "name", at)?;
        unique(&mut seen, name, at)?;
        let privileges = references(item, "privileges", at, privileges, |path, name| {
            RulesError::UndefinedPrivilege { path, name }
        })?;
        out.push(Role {
            name: name.to_owned(),
            privileges,
        });
    }
    Ok(out)
}

fn identities(items: &[Json], at: At<'_>) -> Result<Vec<Identity>, RulesError> {
    let mut seen = FnvSet::default();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = at.index(i);
        expect_object(item, at)?;
        let name = required_name(item, "name", at)?;
        unique(&mut seen, name, at)?;
        // A present selector must be non-blank: an empty `exePath` would otherwise match every process whose
        // executable could not be read (spec §6).
        let selector = |key: &str| -> Result<Option<String>, RulesError> {
            match optional_str(item, key, at)? {
                Some(value) => Ok(Some(non_blank(value, at.key(key))?.to_owned())),
                None => Ok(None),
            }
        };
        let identity = Identity {
            name: name.to_owned(),
            user_name: selector("userName")?,
            group_name: selector("groupName")?,
            exe_path: selector("exePath")?,
            process_name: selector("processName")?,
        };
        if identity.user_name.is_none()
            && identity.group_name.is_none()
            && identity.exe_path.is_none()
            && identity.process_name.is_none()
        {
            return Err(RulesError::NoSelector { path: at.path() });
        }
        out.push(identity);
    }
    Ok(out)
}

fn assignments(
    items: &[Json],
    at: At<'_>,
    roles: &FnvSet<&str>,
    identities: &FnvSet<&str>,
) -> Result<Vec<RoleAssignment>, RulesError> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = at.index(i);
        expect_object(item, at)?;
        let role = required_name(item, "role", at)?;
        if !roles.contains(role) {
            return Err(RulesError::UndefinedRole {
                path: at.key("role").path(),
                name: role.to_owned(),
            });
        }
        let identities = references(item, "identities", at, identities, |path, name| {
            RulesError::UndefinedIdentity { path, name }
        })?;
        out.push(RoleAssignment {
            role: role.to_owned(),
            identities,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
