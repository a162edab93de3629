//! Local rules files (spec §4.7): the opt-in carried by the host id, the merge, and the resolution table, as pure
//! functions. Reading the file (and its ownership and mode checks) is the agent's job; it hands the outcome in
//! as a [`LocalFile`].
//!
//! This module never lets a local file set the mode, never merges into HostGAPlugin, and never lets a local
//! name collide with a host name.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::compile::CompiledItem;
use super::doc::{
    Identity, ItemDoc, LocalDoc, Privilege, Role, RoleAssignment, RulesDoc, parse_item,
    parse_local_file,
};
use super::error::{JsonPath, RulesError};
use crate::Mode;

/// The prefix given to every local name and every reference to one (spec §4.7).
pub const LOCAL_PREFIX: &str = "LocalFileRules_";

/// A host item id with its local-rules opt-in decoded (spec §4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveId {
    /// `<logical id>-useLocalFileRules-<true|false>`, or the raw id when it carries no opt-in.
    pub id: String,
    /// Whether local rules files refine this item.
    pub use_local_rules: bool,
}

#[derive(Deserialize)]
struct OptIn {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "useLocalFileRules")]
    use_local_file_rules: Option<bool>,
}

impl EffectiveId {
    /// Decodes the id as standard base64 of `{"id": …, "useLocalFileRules": …}` (missing fields: empty, false);
    /// anything else is a plain id with local rules off.
    pub fn decode(raw: &str) -> EffectiveId {
        let opt_in = STANDARD
            .decode(raw)
            .ok()
            .and_then(|json| serde_json::from_slice::<OptIn>(&json).ok());
        match opt_in {
            Some(OptIn {
                id,
                use_local_file_rules,
            }) => {
                let on = use_local_file_rules.unwrap_or(false);
                EffectiveId {
                    id: format!("{}-useLocalFileRules-{on}", id.unwrap_or_default()),
                    use_local_rules: on,
                }
            }
            None => EffectiveId {
                id: raw.to_owned(),
                use_local_rules: false,
            },
        }
    }
}

/// What the agent found at the local rules path this poll (spec §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFile<'a> {
    /// No file, or one ignored as unsafe (symlink, not root-owned, group/other writable).
    Missing,
    /// The file exists but its metadata or content could not be read.
    Unreadable,
    /// The file's bytes.
    Present(&'a [u8]),
}

/// How the local file took part in an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    /// Not looked at: HostGAPlugin, or the host item itself was invalid.
    NotConsulted,
    /// The host id does not opt in.
    NotOptedIn,
    /// Opted in, no file: the host item applies.
    Missing,
    /// Opted in, merged.
    Merged,
    /// Opted in, unreadable: fail closed.
    Unreadable,
    /// Opted in, invalid: fail closed.
    Invalid(RulesError),
}

/// Merges a local file into a host item (spec §4.7): the id becomes `<effective id>_<file id>` when the file has
/// an id, a file `defaultAccess` replaces the host's, and the local lists are appended with every name and
/// reference prefixed [`LOCAL_PREFIX`], also when already prefixed. The mode stays the host's.
pub fn merge(host: ItemDoc, local: LocalDoc) -> Result<CompiledItem, RulesError> {
    let effective = EffectiveId::decode(&host.id).id;
    let id = match &local.id {
        Some(file_id) => format!("{effective}_{file_id}"),
        None => effective,
    };
    let prefixed = |name: &str| format!("{LOCAL_PREFIX}{name}");
    let prefix_all = |names: &[String]| names.iter().map(|n| prefixed(n)).collect::<Vec<_>>();
    let mut rules = host.rules.clone();
    let RulesDoc {
        privileges,
        roles,
        identities,
        role_assignments,
    } = &local.rules;
    rules
        .privileges
        .extend(privileges.iter().map(|p| Privilege {
            name: prefixed(&p.name),
            ..p.clone()
        }));
    rules.roles.extend(roles.iter().map(|r| Role {
        name: prefixed(&r.name),
        privileges: prefix_all(&r.privileges),
    }));
    rules.identities.extend(identities.iter().map(|i| Identity {
        name: prefixed(&i.name),
        ..i.clone()
    }));
    rules
        .role_assignments
        .extend(role_assignments.iter().map(|a| RoleAssignment {
            role: prefixed(&a.role),
            identities: prefix_all(&a.identities),
        }));
    // A host name that already carries the prefix could still collide: refuse rather than pick one.
    check_unique(rules.privileges.iter().map(|p| &p.name), "rules.privileges")?;
    check_unique(rules.roles.iter().map(|r| &r.name), "rules.roles")?;
    check_unique(rules.identities.iter().map(|i| &i.name), "rules.identities")?;
    let default_access = local.default_access.unwrap_or(host.default_access);
    Ok(CompiledItem::build(id, default_access, host.mode, rules))
}

fn check_unique<'a>(names: impl Iterator<Item = &'a String>, list: &str) -> Result<(), RulesError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(RulesError::DuplicateName {
                path: JsonPath::new(list.to_owned()),
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// The effective item of one endpoint (spec §4.7 table) for a valid host item. `file` is `None` where local
/// rules never apply (HostGAPlugin).
pub fn resolve(host: ItemDoc, file: Option<LocalFile<'_>>) -> (CompiledItem, LocalOutcome) {
    let effective = EffectiveId::decode(&host.id);
    let mode = host.mode;
    let Some(file) = file else {
        return (CompiledItem::compile(host), LocalOutcome::NotConsulted);
    };
    if !effective.use_local_rules {
        return (CompiledItem::compile(host), LocalOutcome::NotOptedIn);
    }
    let fail_closed = || CompiledItem::fail_closed(effective.id.clone(), mode);
    match file {
        LocalFile::Missing => (CompiledItem::compile(host), LocalOutcome::Missing),
        LocalFile::Unreadable => (fail_closed(), LocalOutcome::Unreadable),
        LocalFile::Present(bytes) => {
            match parse_local_file(bytes).and_then(|local| merge(host, local)) {
                Ok(item) => (item, LocalOutcome::Merged),
                Err(e) => (fail_closed(), LocalOutcome::Invalid(e)),
            }
        }
    }
}

/// One endpoint's item from a status poll: the raw host item plus the local file state.
#[derive(Debug, Clone)]
pub struct Built {
    /// What decides requests; fail-closed when the host item or an opted-in local file is invalid.
    pub item: CompiledItem,
    /// Why the host item was refused.
    pub host_error: Option<RulesError>,
    /// What the local file contributed.
    pub local: LocalOutcome,
}

impl Built {
    /// The text for `<endpoint>RulesError` (spec §9.2), while the item is fail-closed.
    pub fn error_message(&self) -> Option<String> {
        match (&self.host_error, &self.local) {
            (Some(e), _) => Some(format!("host rules invalid: {e}")),
            (None, LocalOutcome::Invalid(e)) => Some(format!("local rules file invalid: {e}")),
            (None, LocalOutcome::Unreadable) => Some("local rules file unreadable".to_owned()),
            _ => None,
        }
    }
}

/// Parses, validates and resolves one host item (spec §4.2, §4.7). An invalid item becomes the fail-closed item
/// with the id and mode it declares; a mode that is not `disabled`, `audit` or `enforce` counts as `Disabled`
/// (spec §2.6).
pub fn build_item(host_json: &str, file: Option<LocalFile<'_>>) -> Built {
    match parse_item(host_json) {
        Ok(doc) => {
            let (item, local) = resolve(doc, file);
            Built {
                item,
                host_error: None,
                local,
            }
        }
        Err(e) => {
            let (id, mode) = declared_id_and_mode(host_json);
            let item = CompiledItem::fail_closed(EffectiveId::decode(&id).id, mode);
            Built {
                item,
                host_error: Some(e),
                local: LocalOutcome::NotConsulted,
            }
        }
    }
}

/// The `id` and `mode` an invalid item declares, read leniently (`serde_json`, last key wins).
fn declared_id_and_mode(host_json: &str) -> (String, Mode) {
    let value: serde_json::Value = serde_json::from_str(host_json).unwrap_or_default();
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str);
    let id = text("id").unwrap_or_default().to_owned();
    let mode = text("mode").and_then(Mode::parse).unwrap_or(Mode::Disabled);
    (id, mode)
}

#[cfg(test)]
mod tests;
