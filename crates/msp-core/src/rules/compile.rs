//! Compiled allowlist items (spec §4.2): the evaluator's index plus the "computed rules" view of spec §4.9.
//!
//! Privileges are indexed by their canonical path, so a request looks up each of its own segment prefixes
//! (`""`, `metadata`, `metadata/identity`, …) instead of scanning every privilege. Buckets and assigned
//! identities are kept in name order, so the order of the document never changes a decision (spec §4.3). The
//! index refers into the owned document by position: compiling copies no privilege or identity, and evaluating
//! allocates nothing per privilege.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::doc::{DefaultAccess, Identity, ItemDoc, Privilege, RulesDoc};
use super::fnv::FnvMap;
use super::local::EffectiveId;
use crate::{Claims, Mode};

/// One endpoint's allowlist, ready to evaluate; serialises as a computed item of spec §4.9.
#[derive(Debug, Clone)]
pub struct CompiledItem {
    id: String,
    default_allowed: bool,
    mode: Mode,
    /// The validated lists, in document order; the index points into them.
    pub(super) rules: RulesDoc,
    pub(super) index: Index,
}

/// The evaluator's view of an item.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// Canonical pattern (segments joined by `/`) → privileges with that pattern, in name order.
    pub(super) by_pattern: FnvMap<Box<str>, Vec<Entry>>,
    /// Identity names, shared with the decisions that cite them; parallel to `rules.identities`.
    pub(super) identity_names: Vec<Arc<str>>,
}

/// One privilege as the evaluator sees it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) name: Arc<str>,
    /// Position in `rules.privileges`.
    pub(super) privilege: usize,
    /// Assigned identities (positions in `rules.identities`), in name order.
    pub(super) identities: Box<[usize]>,
}

/// Every set selector matches, byte-exact; `exePath` component by component (spec §4.4). No case folding or
/// Unicode normalisation, so homoglyphs never match.
pub(super) fn identity_matches(identity: &Identity, claims: &Claims) -> bool {
    identity
        .user_name
        .as_deref()
        .is_none_or(|u| u == &*claims.user_name)
        && identity
            .process_name
            .as_deref()
            .is_none_or(|p| p == &*claims.process_name)
        && identity
            .group_name
            .as_deref()
            .is_none_or(|g| claims.user_groups.iter().any(|c| c == g))
        && identity
            .exe_path
            .as_deref()
            .is_none_or(|e| Path::new(e) == Path::new(&*claims.process_full_path))
}

impl CompiledItem {
    /// Compiles a validated host item on its own, under its effective id (spec §4.2, §4.7).
    pub fn compile(doc: ItemDoc) -> CompiledItem {
        let id = EffectiveId::decode(&doc.id).id;
        CompiledItem::build(id, doc.default_access, doc.mode, doc.rules)
    }

    /// The item that replaces an invalid one (spec §4.2): same id and mode, `defaultAccess: deny`, no rules.
    pub fn fail_closed(id: impl Into<String>, mode: Mode) -> CompiledItem {
        CompiledItem::build(id.into(), DefaultAccess::Deny, mode, RulesDoc::default())
    }

    pub(super) fn build(
        id: String,
        default_access: DefaultAccess,
        mode: Mode,
        rules: RulesDoc,
    ) -> CompiledItem {
        let index = Index::new(&rules);
        CompiledItem {
            id,
            default_allowed: default_access == DefaultAccess::Allow,
            mode,
            rules,
            index,
        }
    }

    /// The item id: effective id, or the merged id of spec §4.7.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `defaultAccess == allow`.
    pub fn default_allowed(&self) -> bool {
        self.default_allowed
    }

    /// The host's mode for this endpoint.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The validated lists the item was compiled from, in document order (local entries after host entries).
    pub fn rules(&self) -> &RulesDoc {
        &self.rules
    }

    /// Privileges by name.
    pub fn privileges(&self) -> BTreeMap<&str, &Privilege> {
        self.rules
            .privileges
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect()
    }

    /// Identities by name.
    pub fn identities(&self) -> BTreeMap<&str, &Identity> {
        self.rules
            .identities
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect()
    }

    /// Privilege name → names of the identities of every assignment whose role lists it, in name order.
    pub fn privilege_assignments(&self) -> BTreeMap<&str, Vec<&str>> {
        let identity = |i: usize| self.rules.identities.get(i).map(|id| id.name.as_str());
        self.index
            .by_pattern
            .values()
            .flatten()
            .filter(|e| !e.identities.is_empty())
            .map(|e| {
                (
                    &*e.name,
                    e.identities.iter().filter_map(|&i| identity(i)).collect(),
                )
            })
            .collect()
    }
}

impl Index {
    fn new(rules: &RulesDoc) -> Index {
        // Identity positions ranked by name, so assigned identities sort by name with integer compares.
        let mut by_name: Vec<usize> = (0..rules.identities.len()).collect();
        by_name.sort_by(|&a, &b| identity_name(rules, a).cmp(identity_name(rules, b)));
        let mut rank = vec![0; by_name.len()];
        for (r, &i) in by_name.iter().enumerate() {
            if let Some(slot) = rank.get_mut(i) {
                *slot = r;
            }
        }
        let identities: FnvMap<&str, usize> = rules
            .identities
            .iter()
            .enumerate()
            .map(|(i, id)| (id.name.as_str(), i))
            .collect();
        let roles: FnvMap<&str, &[String]> = rules
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.privileges.as_slice()))
            .collect();
        // Privilege → positions of the identities of every assignment whose role lists it.
        let mut assigned: FnvMap<&str, Vec<usize>> = FnvMap::default();
        for assignment in &rules.role_assignments {
            let ids = assignment
                .identities
                .iter()
                .filter_map(|n| identities.get(n.as_str()).copied());
            let ids: Vec<usize> = ids.collect();
            for privilege in roles
                .get(assignment.role.as_str())
                .copied()
                .unwrap_or_default()
            {
                assigned.entry(privilege.as_str()).or_default().extend(&ids);
            }
        }
        let mut by_pattern: FnvMap<Box<str>, Vec<Entry>> = FnvMap::default();
        for (at, privilege) in rules.privileges.iter().enumerate() {
            let mut ids = assigned.remove(privilege.name.as_str()).unwrap_or_default();
            ids.sort_by_key(|&i| rank.get(i).copied().unwrap_or(usize::MAX));
            ids.dedup();
            let entry = Entry {
                name: Arc::from(privilege.name.as_str()),
                privilege: at,
                identities: ids.into(),
            };
            match by_pattern.get_mut(privilege.pattern.joined()) {
                Some(bucket) => bucket.push(entry),
                None => {
                    by_pattern.insert(privilege.pattern.joined().into(), vec![entry]);
                }
            }
        }
        // Name order within each bucket: the order of the document never matters (spec §4.3).
        for bucket in by_pattern.values_mut() {
            bucket.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let identity_names = rules
            .identities
            .iter()
            .map(|i| Arc::from(i.name.as_str()))
            .collect();
        Index {
            by_pattern,
            identity_names,
        }
    }
}

fn identity_name(rules: &RulesDoc, at: usize) -> &str {
    rules
        .identities
        .get(at)
        .map(|i| i.name.as_str())
        .unwrap_or_default()
}

impl Serialize for CompiledItem {
    /// The computed item of spec §4.9: `id`, `defaultAllowed`, `mode` (`Enforce`, `Audit` or `Disabled`),
    /// `privileges` (name → privilege), `privilegeAssignments`, `identities` (name → identity).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut item = s.serialize_struct("CompiledItem", 6)?;
        item.serialize_field("id", &self.id)?;
        item.serialize_field("defaultAllowed", &self.default_allowed)?;
        item.serialize_field("mode", self.mode.title())?;
        item.serialize_field("privileges", &self.privileges())?;
        item.serialize_field("privilegeAssignments", &self.privilege_assignments())?;
        item.serialize_field("identities", &self.identities())?;
        item.end()
    }
}
