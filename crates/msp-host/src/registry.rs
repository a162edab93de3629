//! The in-memory registry of VMs, address routes, keys and profiles: what every request reads, kept in sync
//! with the store.
//!
//! Reads take a short `std` read lock and clone an `Arc` snapshot, so verification never waits on disk or on
//! a writer that is persisting. Writes are serialised by one async writer lock: they read the current value,
//! persist the change through the store thread, and only then publish the new snapshot, so what a request
//! sees has always been stored (E6). No `std` lock is ever held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use msp_core::sign::KeyGuid;
use serde_json::Value;

use crate::audit::now_ms;
use crate::cidr::Cidr;
use crate::store::{Loaded, StoreError, StoreHandle, VmRow};
use crate::vm::keys::{IssuedKey, KeyState, RandomError};
use crate::vm::profile::{self, MAX_PROFILE_VERSIONS, Profile};
use crate::vm::settings::{FieldError, ProfileRef, ProxyAgentSettings};
use crate::vm::{MAX_VM_ADDRESSES, StatusReport, Vm, valid_vm_name};

/// Most VMs one host serves (bounded memory, STYLE rule 15).
pub const MAX_VMS: usize = 65_536;
/// Most distinct profiles.
pub const MAX_PROFILES: usize = 4096;

/// Why a control-plane change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("invalid document")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChangeError {
    fn field(field: &str, message: impl Into<String>) -> ChangeError {
        ChangeError::Invalid(vec![FieldError::new(field, message)])
    }
}

/// Why a key could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("a key is latched")]
    Latched,
    #[error("the VM no longer exists")]
    VmGone,
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Why an attested key could not be latched.
#[derive(Debug, thiserror::Error)]
pub enum LatchError {
    #[error("the key is not pending")]
    NotPending,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct State {
    vms: HashMap<String, Arc<Vm>>,
    /// Address blocks, longest prefix first.
    routes: Vec<(Cidr, String)>,
    /// Latched guid (lowercase) → VM, to tell a foreign key from an unknown one in the audit log.
    key_owner: HashMap<String, String>,
    profiles: HashMap<String, BTreeMap<u32, Arc<Profile>>>,
}

impl State {
    fn rebuild_routes(&mut self) -> Result<(), ChangeError> {
        let mut routes: Vec<(Cidr, String)> = self
            .vms
            .values()
            .flat_map(|vm| vm.addresses.iter().map(|c| (*c, vm.name.clone())))
            .collect();
        let mut claimed: HashMap<Cidr, &str> = HashMap::new();
        for (c, vm) in &routes {
            if let Some(other) = claimed.insert(*c, vm) {
                return Err(ChangeError::Conflict(format!(
                    "address {c} is claimed by VM {other:?} and VM {vm:?}"
                )));
            }
        }
        routes.sort_by(|a, b| b.0.prefix().cmp(&a.0.prefix()).then_with(|| a.1.cmp(&b.1)));
        self.routes = routes;
        Ok(())
    }

    fn publish(&mut self, vm: Vm) {
        self.key_owner.retain(|_, owner| owner != &vm.name);
        if let Some(k) = &vm.keys.latched {
            self.key_owner
                .insert(k.guid.as_str().to_ascii_lowercase(), vm.name.clone());
        }
        self.vms.insert(vm.name.clone(), Arc::new(vm));
    }

    fn profile(&self, r: &ProfileRef) -> Option<Arc<Profile>> {
        let versions = self.profiles.get(&r.name)?;
        match r.version {
            Some(v) => versions.get(&v).cloned(),
            None => versions.values().next_back().cloned(),
        }
    }
}

/// Shared, cheap to clone through `Arc`.
pub struct Registry {
    state: RwLock<State>,
    writer: tokio::sync::Mutex<()>,
    store: StoreHandle,
}

fn new_vm_id() -> String {
    let mut b = [0u8; 16];
    // A vm id is an identifier, not a secret: fall back to the clock if the OS source is unavailable.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// A VM declared in configuration: name, address blocks, and the settings it starts with when new.
#[derive(Debug, Clone)]
pub struct DeclaredVm {
    pub name: String,
    pub addresses: Vec<Cidr>,
    pub settings: Option<ProxyAgentSettings>,
}

impl Registry {
    /// Builds the registry from what the store loaded plus the configured VMs (configuration decides their
    /// addresses; stored settings, keys and reports are kept). New configured VMs are persisted.
    pub async fn new(
        loaded: Loaded,
        declared: &[DeclaredVm],
        store: StoreHandle,
    ) -> Result<Registry, ChangeError> {
        let mut state = State::default();
        for p in loaded.profiles {
            state
                .profiles
                .entry(p.name.clone())
                .or_default()
                .insert(p.version, Arc::new(p));
        }
        for l in loaded.vms {
            let incarnation = l.row.settings.key_incarnation_id;
            let latched = l
                .latched
                .filter(|k| k.incarnation == incarnation)
                .map(Arc::new);
            state.publish(Vm {
                name: l.row.name,
                vm_id: l.row.vm_id,
                addresses: l.row.addresses,
                settings: l.row.settings,
                keys: KeyState::new(incarnation, latched),
                report: l.report.map(Arc::new),
            });
        }
        let mut changed = Vec::new();
        for d in declared {
            let vm = match state.vms.get(&d.name) {
                Some(existing) if existing.addresses == d.addresses => continue,
                Some(existing) => Vm {
                    addresses: d.addresses.clone(),
                    ..Vm::clone(existing)
                },
                None => {
                    let settings = d.settings.clone().unwrap_or_default();
                    Vm {
                        name: d.name.clone(),
                        vm_id: new_vm_id(),
                        addresses: d.addresses.clone(),
                        keys: KeyState::new(settings.key_incarnation_id, None),
                        settings,
                        report: None,
                    }
                }
            };
            changed.push(row_of(&vm));
            state.publish(vm);
        }
        state.rebuild_routes()?;
        for row in changed {
            store.put_vm(row).await?;
        }
        Ok(Registry {
            state: RwLock::new(state),
            writer: tokio::sync::Mutex::new(()),
            store,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-write; the data is still the last published value.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    /// The VM a source address belongs to: the longest matching prefix (spec §12.1).
    pub fn vm_for(&self, ip: IpAddr) -> Option<Arc<Vm>> {
        let state = self.read();
        let (_, name) = state.routes.iter().find(|(c, _)| c.contains(ip))?;
        state.vms.get(name).cloned()
    }

    pub fn vm(&self, name: &str) -> Option<Arc<Vm>> {
        self.read().vms.get(name).cloned()
    }

    pub fn vms(&self) -> Vec<Arc<Vm>> {
        let mut all: Vec<_> = self.read().vms.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The VM whose latched key has this guid, if any (for the audit log only).
    pub fn key_owner(&self, guid: &KeyGuid) -> Option<String> {
        self.read()
            .key_owner
            .get(&guid.as_str().to_ascii_lowercase())
            .cloned()
    }

    pub fn profile(&self, r: &ProfileRef) -> Option<Arc<Profile>> {
        self.read().profile(r)
    }

    /// The `KeyStatus` bytes of a VM (spec §2.3, §12.2).
    pub fn key_status(&self, vm: &Vm) -> Vec<u8> {
        let state = self.read();
        crate::vm::key_status::render(&vm.settings, &vm.keys, |r| state.profile(r))
    }

    /// Issues a pending key (spec §12.2). Pending keys live in memory only: after a restart the agent
    /// simply acquires again.
    pub fn issue_key(&self, vm: &str) -> Result<Arc<IssuedKey>, IssueError> {
        let mut state = self.write();
        let current = state.vms.get(vm).cloned().ok_or(IssueError::VmGone)?;
        if current.keys.latched.is_some() {
            return Err(IssueError::Latched);
        }
        let key = Arc::new(IssuedKey::generate(
            current.keys.incarnation,
            SystemTime::now(),
        )?);
        let next = Vm {
            keys: current.keys.with_pending(key.clone()),
            ..Vm::clone(&current)
        };
        state.publish(next);
        Ok(key)
    }

    /// Latches a pending key after its attestation verified (spec §12.2). Stored before it is used.
    pub async fn latch(&self, vm: &str, guid: &KeyGuid) -> Result<Arc<IssuedKey>, LatchError> {
        let _w = self.writer.lock().await;
        let current = self.vm(vm).ok_or(LatchError::NotPending)?;
        let key = current
            .keys
            .pending(guid)
            .cloned()
            .ok_or(LatchError::NotPending)?;
        self.store.latch_key(vm, key.clone()).await?;
        let mut state = self.write();
        // Re-read: a pending key may have been issued meanwhile; latching discards it too (spec §12.2).
        let current = state.vms.get(vm).cloned().ok_or(LatchError::NotPending)?;
        state.publish(Vm {
            keys: current.keys.with_latched(key.clone()),
            ..Vm::clone(&current)
        });
        Ok(key)
    }

    /// Discards the latched key and increments `keyIncarnationId` (spec §12.2): the old key is unknown from
    /// the moment this returns. Returns the new incarnation.
    pub async fn reset_key(&self, vm: &str) -> Result<u32, ChangeError> {
        let _w = self.writer.lock().await;
        let current = self.vm(vm).ok_or_else(|| ChangeError::NotFound {
            what: format!("VM {vm:?}"),
        })?;
        let incarnation = current
            .settings
            .key_incarnation_id
            .checked_add(1)
            .ok_or_else(|| {
                ChangeError::field("keyIncarnationId", "cannot be incremented further")
            })?;
        let mut settings = current.settings.clone();
        settings.key_incarnation_id = incarnation;
        self.apply_settings(&current, settings).await?;
        Ok(incarnation)
    }

    /// Stores new settings; a raised `keyIncarnationId` resets the key, a lowered one is refused.
    pub async fn put_settings(
        &self,
        vm: &str,
        settings: ProxyAgentSettings,
    ) -> Result<Arc<Vm>, ChangeError> {
        let _w = self.writer.lock().await;
        let current = self.vm(vm).ok_or_else(|| ChangeError::NotFound {
            what: format!("VM {vm:?}"),
        })?;
        self.validate_settings(&settings)?;
        if settings.key_incarnation_id < current.settings.key_incarnation_id {
            return Err(ChangeError::field(
                "keyIncarnationId",
                format!(
                    "must not decrease (current {})",
                    current.settings.key_incarnation_id
                ),
            ));
        }
        self.apply_settings(&current, settings).await?;
        self.vm(vm).ok_or_else(|| ChangeError::NotFound {
            what: format!("VM {vm:?}"),
        })
    }

    fn validate_settings(&self, settings: &ProxyAgentSettings) -> Result<(), ChangeError> {
        let state = self.read();
        let errors = settings.validate(|r| state.profile(r).is_some());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ChangeError::Invalid(errors))
        }
    }

    /// Caller holds the writer lock.
    async fn apply_settings(
        &self,
        current: &Vm,
        settings: ProxyAgentSettings,
    ) -> Result<(), ChangeError> {
        let reset = settings.key_incarnation_id != current.settings.key_incarnation_id;
        let next = Vm {
            keys: if reset {
                current.keys.reset_to(settings.key_incarnation_id)
            } else {
                current.keys.clone()
            },
            settings,
            ..current.clone()
        };
        if reset {
            self.store.reset_key(row_of(&next)).await?;
            tracing::info!(vm = %next.name, incarnation = next.keys.incarnation, "key reset");
        } else {
            self.store.put_vm(row_of(&next)).await?;
        }
        self.write().publish(next);
        Ok(())
    }

    /// Creates a VM or replaces its addresses (and settings, when given).
    pub async fn put_vm(
        &self,
        name: &str,
        addresses: Vec<Cidr>,
        settings: Option<ProxyAgentSettings>,
    ) -> Result<Arc<Vm>, ChangeError> {
        if !valid_vm_name(name) {
            return Err(ChangeError::field(
                "name",
                "1-64 characters of letters, digits, '.', '_' or '-'",
            ));
        }
        if addresses.is_empty() || addresses.len() > MAX_VM_ADDRESSES {
            return Err(ChangeError::field(
                "addresses",
                format!("between 1 and {MAX_VM_ADDRESSES} address blocks"),
            ));
        }
        if let Some(s) = &settings {
            self.validate_settings(s)?;
        }
        let _w = self.writer.lock().await;
        let current = self.vm(name);
        let next = match &current {
            Some(c) => {
                if let Some(s) = &settings
                    && s.key_incarnation_id != c.settings.key_incarnation_id
                {
                    return Err(ChangeError::field(
                        "proxyAgentSettings.keyIncarnationId",
                        "change it through the settings or reset-key",
                    ));
                }
                Vm {
                    addresses,
                    settings: settings.unwrap_or_else(|| c.settings.clone()),
                    ..Vm::clone(c)
                }
            }
            None => {
                if self.read().vms.len() >= MAX_VMS {
                    return Err(ChangeError::Conflict(format!("at most {MAX_VMS} VMs")));
                }
                let settings = settings.unwrap_or_default();
                Vm {
                    name: name.to_owned(),
                    vm_id: new_vm_id(),
                    addresses,
                    keys: KeyState::new(settings.key_incarnation_id, None),
                    settings,
                    report: None,
                }
            }
        };
        // Check the address table before persisting anything.
        {
            let mut trial = State {
                vms: self.read().vms.clone(),
                ..State::default()
            };
            trial.vms.insert(next.name.clone(), Arc::new(next.clone()));
            trial.rebuild_routes()?;
        }
        self.store.put_vm(row_of(&next)).await?;
        let mut state = self.write();
        state.publish(next);
        state.rebuild_routes()?;
        drop(state);
        self.vm(name).ok_or_else(|| ChangeError::NotFound {
            what: format!("VM {name:?}"),
        })
    }

    /// Validates and stores a new version of a profile; an invalid document leaves the previous version.
    pub async fn put_profile(&self, name: &str, text: &str) -> Result<Arc<Profile>, ChangeError> {
        profile::validate_name(name).map_err(|e| ChangeError::Invalid(vec![e]))?;
        let document = profile::validate_document(text).map_err(ChangeError::Invalid)?;
        let _w = self.writer.lock().await;
        let version = {
            let state = self.read();
            if !state.profiles.contains_key(name) && state.profiles.len() >= MAX_PROFILES {
                return Err(ChangeError::Conflict(format!(
                    "at most {MAX_PROFILES} profiles"
                )));
            }
            let last = state
                .profiles
                .get(name)
                .and_then(|v| v.keys().next_back().copied())
                .unwrap_or(0);
            if last >= MAX_PROFILE_VERSIONS {
                return Err(ChangeError::Conflict(format!(
                    "profile {name:?} has {MAX_PROFILE_VERSIONS} versions already"
                )));
            }
            last + 1
        };
        let p = Profile {
            name: name.to_owned(),
            version,
            created_ms: now_ms(),
            document,
        };
        self.store.put_profile(p.clone()).await?;
        let p = Arc::new(p);
        self.write()
            .profiles
            .entry(name.to_owned())
            .or_default()
            .insert(version, p.clone());
        Ok(p)
    }

    /// Every version of a profile, oldest first.
    pub fn profile_versions(&self, name: &str) -> Vec<Arc<Profile>> {
        self.read()
            .profiles
            .get(name)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Keeps an accepted status report as the VM's instance view (spec §9.3) and tracks provisioning (§12.1).
    /// `signed_by` is the latched guid the report verified under, if it did.
    pub async fn record_report(
        &self,
        vm: &str,
        document: Value,
        overall: String,
        signed_by: Option<String>,
    ) -> Result<(), ChangeError> {
        let _w = self.writer.lock().await;
        let current = self.vm(vm).ok_or_else(|| ChangeError::NotFound {
            what: format!("VM {vm:?}"),
        })?;
        let success = overall == "SUCCESS";
        let previous = current.report.as_deref();
        let provisioned_guid = match (&signed_by, success) {
            (Some(g), true) => Some(g.clone()),
            _ => previous.and_then(|r| r.provisioned_guid.clone()),
        };
        let report = StatusReport {
            received_ms: now_ms(),
            document,
            overall,
            signed_by,
            provisioned_guid,
            any_success: success || previous.is_some_and(|r| r.any_success),
        };
        self.store.put_report(vm, report.clone()).await?;
        let mut state = self.write();
        let current = state
            .vms
            .get(vm)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound {
                what: format!("VM {vm:?}"),
            })?;
        state.publish(Vm {
            report: Some(Arc::new(report)),
            ..Vm::clone(&current)
        });
        Ok(())
    }
}

fn row_of(vm: &Vm) -> VmRow {
    VmRow {
        name: vm.name.clone(),
        vm_id: vm.vm_id.clone(),
        addresses: vm.addresses.clone(),
        settings: vm.settings.clone(),
    }
}
