//! The IMDS instance document as typed fields, serialised straight into the response body (one allocation)
//! instead of through a `serde_json::Value` tree (one map node and key string per field).
//!
//! Fields are declared in byte order of their JSON names, the order a `Value` object prints in, so the bytes
//! are the same either way (a test below checks it). This module must never put request data other than the
//! peer address into the document.

use std::net::IpAddr;

use serde::Serialize;

use crate::vm::Vm;

pub(super) const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";
pub(super) const RESOURCE_GROUP: &str = "openmsp";
/// Room reserved for the rendered document (it is ~1 KB with the dev names).
const DOC_CAPACITY: usize = 2048;

/// The resource id of a VM, as IMDS and tokens name it.
pub(super) fn resource_id(name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

#[derive(Serialize)]
pub(super) struct InstanceDoc<'a> {
    compute: Compute<'a>,
    network: Network,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Compute<'a> {
    az_environment: &'static str,
    location: &'static str,
    name: &'a str,
    offer: &'static str,
    os_profile: OsProfile<'a>,
    os_type: &'static str,
    provider: &'static str,
    publisher: &'static str,
    resource_group_name: &'static str,
    resource_id: String,
    sku: &'static str,
    subscription_id: &'static str,
    tags: &'static str,
    version: &'static str,
    vm_id: &'a str,
    vm_size: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OsProfile<'a> {
    computer_name: &'a str,
}

#[derive(Serialize)]
struct Network {
    interface: [Interface; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Interface {
    ipv4: Ipv4,
    ipv6: Ipv6,
    mac_address: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipv4 {
    ip_address: [Ipv4Address; 1],
    subnet: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipv4Address {
    private_ip_address: IpAddr,
    public_ip_address: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipv6 {
    ip_address: [(); 0],
}

impl<'a> InstanceDoc<'a> {
    pub(super) fn new(vm: &'a Vm, peer: IpAddr) -> InstanceDoc<'a> {
        InstanceDoc {
            compute: Compute {
                az_environment: "AzurePublicCloud",
                location: "openmsp",
                name: &vm.name,
                offer: "",
                os_profile: OsProfile {
                    computer_name: &vm.name,
                },
                os_type: "Linux",
                provider: "OpenMSP",
                publisher: "",
                resource_group_name: RESOURCE_GROUP,
                resource_id: resource_id(&vm.name),
                sku: "",
                subscription_id: SUBSCRIPTION,
                tags: "",
                version: "",
                vm_id: &vm.vm_id,
                vm_size: "Standard_D2s_v5",
            },
            network: Network {
                interface: [Interface {
                    ipv4: Ipv4 {
                        ip_address: [Ipv4Address {
                            private_ip_address: peer,
                            public_ip_address: "",
                        }],
                        subnet: [],
                    },
                    ipv6: Ipv6 { ip_address: [] },
                    mac_address: "",
                }],
            },
        }
    }

    /// The whole document as JSON text.
    pub(super) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOC_CAPACITY);
        // Serialising plain structs of strings into a Vec cannot fail.
        if serde_json::to_writer(&mut out, self).is_err() {
            out.clear();
        }
        out
    }

    /// The document as a tree, for sub-path lookups (`/metadata/instance/compute/vmId`).
    pub(super) fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::vm::keys::KeyState;
    use crate::vm::settings::ProxyAgentSettings;

    #[test]
    fn the_rendered_document_is_byte_for_byte_the_value_tree_it_replaced() {
        let vm = Vm {
            name: "dev".to_owned(),
            vm_id: "5c1c4b2e-0d5f-4a8e-9a51-3b2f8c7d1e90".to_owned(),
            addresses: Vec::new(),
            settings: ProxyAgentSettings::default(),
            keys: KeyState::new(0, None),
            report: None,
        };
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        // The document as the front end built it before, with `json!`.
        let before = json!({
            "compute": {
                "azEnvironment": "AzurePublicCloud", "location": "openmsp", "name": vm.name, "offer": "",
                "osType": "Linux", "osProfile": {"computerName": vm.name}, "provider": "OpenMSP",
                "publisher": "", "resourceGroupName": RESOURCE_GROUP, "resourceId": resource_id(&vm.name),
                "sku": "", "subscriptionId": SUBSCRIPTION, "tags": "", "version": "", "vmId": vm.vm_id,
                "vmSize": "Standard_D2s_v5"
            },
            "network": {"interface": [{
                "ipv4": {"ipAddress": [{"privateIpAddress": peer.to_string(), "publicIpAddress": ""}],
                         "subnet": []},
                "ipv6": {"ipAddress": []},
                "macAddress": ""
            }]}
        });
        let doc = InstanceDoc::new(&vm, peer);
        assert_eq!(String::from_utf8(doc.render()).unwrap(), before.to_string());
        assert_eq!(doc.to_value(), before);
    }
}
