//! Compiled allowlist items (spec §4.2): the evaluator's index plus the "computed rules" view of spec §4.9.
//!
//! Privileges are indexed by their canonical path, so a request looks up each of its own segment prefixes
//! (`""`, `metadata`, `metadata/identity`, …) instead of scanning every privilege. Buckets, identities and
//! assignments are kept in name order, so the order of the document never changes a decision (spec §4.3).
//! Nothing here allocates per request.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::doc::{DefaultAccess, Identity, ItemDoc, Privilege, RulesDoc};
use super::local::EffectiveId;
use crate::{Claims, Mode};

/// A fixed-key hasher: `msp-core` has no randomness, and only the host's own rules are ever inserted.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// One endpoint's allowlist, ready to evaluate; serialises as a computed item of spec §4.9.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledItem {
    id: String,
    default_allowed: bool,
    #[serde(serialize_with = "mode_title")]
    mode: Mode,
    privileges: BTreeMap<String, Privilege>,
    /// Privilege name → names of the identities of every assignment whose role lists it.
    privilege_assignments: BTreeMap<String, Vec<String>>,
    identities: BTreeMap<String, Identity>,
    #[serde(skip)]
    pub(super) index: Index,
}

fn mode_title<S: serde::Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.title())
}

/// The evaluator's view of an item.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    /// Canonical pattern (segments joined by `/`) → privileges with that pattern, in name order.
    pub(super) by_pattern: HashMap<Box<str>, Vec<Entry>, FixedHasher>,
    /// Identities in name order; [`Entry::identities`] index into it.
    pub(super) matchers: Vec<Matcher>,
}

/// One privilege as the evaluator sees it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) name: Arc<str>,
    /// Required parameters, decoded and lowercased (spec §5.5).
    pub(super) query: Box<[(Box<str>, Box<str>)]>,
    /// Assigned identities (indices into [`Index::matchers`]), ascending, i.e. in name order.
    pub(super) identities: Box<[usize]>,
}

/// One identity's selectors (spec §4.4); `None` is a wildcard.
#[derive(Debug, Clone)]
pub(super) struct Matcher {
    pub(super) name: Arc<str>,
    user_name: Option<Box<str>>,
    group_name: Option<Box<str>>,
    exe_path: Option<Box<str>>,
    process_name: Option<Box<str>>,
}

impl Matcher {
    /// Every set selector matches, byte-exact; `exePath` component by component (spec §4.4). No case folding
    /// or Unicode normalisation, so homoglyphs never match.
    pub(super) fn matches(&self, claims: &Claims) -> bool {
        self.user_name
            .as_deref()
            .is_none_or(|u| u == claims.user_name)
            && self
                .process_name
                .as_deref()
                .is_none_or(|p| p == claims.process_name)
            && self
                .group_name
                .as_deref()
                .is_none_or(|g| claims.user_groups.iter().any(|c| c == g))
            && self
                .exe_path
                .as_deref()
                .is_none_or(|e| Path::new(e) == Path::new(&claims.process_full_path))
    }
}

impl CompiledItem {
    /// Compiles a validated host item on its own, under its effective id (spec §4.2, §4.7).
    pub fn compile(doc: &ItemDoc) -> CompiledItem {
        let id = EffectiveId::decode(&doc.id).id;
        CompiledItem::build(id, doc.default_access, doc.mode, &doc.rules)
    }

    /// The item that replaces an invalid one (spec §4.2): same id and mode, `defaultAccess: deny`, no rules.
    pub fn fail_closed(id: impl Into<String>, mode: Mode) -> CompiledItem {
        CompiledItem::build(id.into(), DefaultAccess::Deny, mode, &RulesDoc::default())
    }

    pub(super) fn build(
        id: String,
        default_access: DefaultAccess,
        mode: Mode,
        rules: &RulesDoc,
    ) -> CompiledItem {
        let privileges: BTreeMap<String, Privilege> = rules
            .privileges
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let identities: BTreeMap<String, Identity> = rules
            .identities
            .iter()
            .map(|i| (i.name.clone(), i.clone()))
            .collect();
        let roles: BTreeMap<&str, &[String]> = rules
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.privileges.as_slice()))
            .collect();

        let mut assigned: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for assignment in &rules.role_assignments {
            for privilege in roles
                .get(assignment.role.as_str())
                .copied()
                .unwrap_or_default()
            {
                assigned
                    .entry(privilege)
                    .or_default()
                    .extend(assignment.identities.iter().map(String::as_str));
            }
        }

        let matchers: Vec<Matcher> = identities.values().map(matcher).collect();
        let position: BTreeMap<&str, usize> = identities
            .keys()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut by_pattern: HashMap<Box<str>, Vec<Entry>, FixedHasher> = HashMap::default();
        for (name, privilege) in &privileges {
            let names = assigned.get(name.as_str());
            let entry = Entry {
                name: Arc::from(name.as_str()),
                query: privilege
                    .query
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
                identities: names
                    .into_iter()
                    .flatten()
                    .filter_map(|n| position.get(n).copied())
                    .collect(),
            };
            by_pattern
                .entry(privilege.pattern.joined().into())
                .or_default()
                .push(entry);
        }
        let privilege_assignments = assigned
            .into_iter()
            .map(|(p, ids)| (p.to_owned(), ids.into_iter().map(str::to_owned).collect()))
            .collect();

        CompiledItem {
            id,
            default_allowed: default_access == DefaultAccess::Allow,
            mode,
            privileges,
            privilege_assignments,
            identities,
            index: Index {
                by_pattern,
                matchers,
            },
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

    /// Privileges by name.
    pub fn privileges(&self) -> &BTreeMap<String, Privilege> {
        &self.privileges
    }

    /// Identities by name.
    pub fn identities(&self) -> &BTreeMap<String, Identity> {
        &self.identities
    }

    /// Privilege name → assigned identity names, in name order.
    pub fn privilege_assignments(&self) -> &BTreeMap<String, Vec<String>> {
        &self.privilege_assignments
    }
}

fn matcher(identity: &Identity) -> Matcher {
    let boxed = |s: &Option<String>| s.as_deref().map(Box::from);
    Matcher {
        name: Arc::from(identity.name.as_str()),
        user_name: boxed(&identity.user_name),
        group_name: boxed(&identity.group_name),
        exe_path: boxed(&identity.exe_path),
        process_name: boxed(&identity.process_name),
    }
}
