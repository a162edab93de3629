//! The VM model: who a VM is (name, id, source addresses), its MSP settings, its keys and its last status
//! report (spec §12.1), plus access-control profiles.
//!
//! Values here are immutable snapshots; the registry replaces them whole. This module must never do I/O.

pub mod key_status;
pub mod keys;
pub mod profile;
pub mod settings;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cidr::Cidr;
use keys::KeyState;
use settings::ProxyAgentSettings;

/// A VM name: 1–64 bytes of `[A-Za-z0-9._-]`.
pub const MAX_VM_NAME: usize = 64;
/// Address blocks per VM.
pub const MAX_VM_ADDRESSES: usize = 64;

/// Whether `name` is usable as a VM name (also a URL path segment of the admin API).
pub fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The last accepted status report of a VM (spec §9.3).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// Unix milliseconds at receipt.
    pub received_ms: u64,
    /// The whole aggregate status document (spec §9.2) as received.
    pub document: Value,
    /// Its `proxyAgentStatus.status`.
    pub overall: String,
    /// The guid of the latched key it was signed with, when it verified.
    pub signed_by: Option<String>,
    /// The latched guid under which a `SUCCESS` report signed with it arrived (spec §12.1), kept across later
    /// reports until the key changes.
    pub provisioned_guid: Option<String>,
    /// A `SUCCESS` report arrived at all (what "provisioned" means while MSP is off).
    pub any_success: bool,
}

/// One VM at one moment.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    /// A stable random id, served as IMDS `compute.vmId`.
    pub vm_id: String,
    pub addresses: Vec<Cidr>,
    pub settings: ProxyAgentSettings,
    pub keys: KeyState,
    pub report: Option<Arc<StatusReport>>,
}

impl Vm {
    /// Provisioned (spec §12.1): with MSP on, a key is latched and a `SUCCESS` report signed with it has
    /// arrived; with MSP off, any `SUCCESS` report has arrived.
    pub fn provisioned(&self) -> bool {
        let Some(report) = &self.report else {
            return false;
        };
        if !self.settings.enabled {
            return report.any_success;
        }
        match (&self.keys.latched, &report.provisioned_guid) {
            (Some(k), Some(g)) => k.guid.as_str().eq_ignore_ascii_case(g),
            _ => false,
        }
    }

    /// The admin view of this VM ("GET VM").
    pub fn view(&self) -> VmView {
        VmView {
            name: self.name.clone(),
            vm_id: self.vm_id.clone(),
            addresses: self.addresses.clone(),
            proxy_agent_settings: self.settings.clone(),
            key: KeyView {
                incarnation_id: self.keys.incarnation,
                latched_guid: self
                    .keys
                    .latched
                    .as_ref()
                    .map(|k| k.guid.as_str().to_owned()),
                pending: self.keys.pending.len(),
            },
            provisioned: self.provisioned(),
            instance_view: self.report.as_ref().map(|r| InstanceView {
                received_ms: r.received_ms,
                signed_by: r.signed_by.clone(),
                proxy_agent_status: r
                    .document
                    .get("proxyAgentStatus")
                    .cloned()
                    .unwrap_or(Value::Null),
            }),
        }
    }
}

/// What the admin API shows of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    pub name: String,
    pub vm_id: String,
    pub addresses: Vec<Cidr>,
    pub proxy_agent_settings: ProxyAgentSettings,
    pub key: KeyView,
    pub provisioned: bool,
    pub instance_view: Option<InstanceView>,
}

/// Key facts of a VM, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub incarnation_id: u32,
    pub latched_guid: Option<String>,
    pub pending: usize,
}

/// The instance view: the `proxyAgentStatus` object last reported (spec §9.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub received_ms: u64,
    pub signed_by: Option<String>,
    pub proxy_agent_status: Value,
}
