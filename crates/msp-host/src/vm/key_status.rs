//! The `KeyStatus` document a VM is served at `GET /secure-channel/status` (spec §2.3), derived from its settings,
//! its profiles and its latched key.
//!
//! Deterministic: same settings, profiles and key give the same bytes. This module must never put key bytes
//! in the document; only the latched guid and the incarnation leave the host here.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::keys::KeyState;
use super::profile::Profile;
use super::settings::{ProfileRef, ProxyAgentSettings, StatusVersion, v1_state};
use msp_core::Mode;
use msp_core::sign::SCHEME;

/// The id of an item served when an endpoint has no profile: it admits every caller the agent admits.
pub const DEFAULT_ITEM_ID: &str = "openmsp-default";

/// Interim mirror of `msp_core::wire::KeyStatus` (same field names and shapes, spec §2.3); replaced by it when
/// that type lands.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyStatusDoc {
    version: &'static str,
    authorization_scheme: &'static str,
    key_delivery_method: &'static str,
    key_guid: Option<String>,
    key_incarnation_id: Option<u32>,
    required_claims_header_pairs: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure_channel_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure_channel_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_rules: Option<Option<Rules>>,
}

#[derive(Debug, Serialize)]
struct Rules {
    imds: Value,
    wireserver: Value,
    hostga: Value,
}

/// Renders the status document. `profile` resolves a reference (latest version when none is given); a
/// reference that no longer resolves is served as a deny-all item, never as allow-all.
pub fn render(
    settings: &ProxyAgentSettings,
    keys: &KeyState,
    profile: impl Fn(&ProfileRef) -> Option<Arc<Profile>>,
) -> Vec<u8> {
    let key_guid = keys.latched.as_ref().map(|k| k.guid.as_str().to_owned());
    let mut doc = KeyStatusDoc {
        version: "2.0",
        authorization_scheme: SCHEME,
        key_delivery_method: "http",
        key_guid,
        key_incarnation_id: Some(keys.incarnation),
        required_claims_header_pairs: Some(vec!["isRoot"]),
        secure_channel_state: None,
        secure_channel_enabled: None,
        authorization_rules: None,
    };
    match settings.status_version {
        StatusVersion::V1 => {
            doc.version = "1.0";
            // Validation keeps v1 settings expressible; a stale combination is served as the stricter state.
            doc.secure_channel_state = Some(
                v1_state(
                    settings.enabled,
                    settings.wire_server.mode,
                    settings.imds.mode,
                )
                .unwrap_or("WireserverAndImds"),
            );
        }
        StatusVersion::V2 => {
            doc.secure_channel_enabled = Some(settings.enabled);
            doc.authorization_rules = Some(settings.enabled.then(|| {
                let ws_mode = settings.wire_server.mode;
                let item = |r: &Option<ProfileRef>, mode: Mode| match r {
                    None => default_item(mode),
                    Some(r) => profile(r).map_or_else(|| deny_item(r, mode), |p| p.item(mode)),
                };
                let wireserver = item(&settings.wire_server.profile, ws_mode);
                let hostga = match &settings.host_ga.profile {
                    Some(_) => item(&settings.host_ga.profile, ws_mode),
                    None => wireserver.clone(),
                };
                Rules {
                    imds: item(&settings.imds.profile, settings.imds.mode),
                    wireserver,
                    hostga,
                }
            }));
        }
    }
    serde_json::to_vec(&doc).unwrap_or_else(|_| unreachable!("plain structs always serialise"))
}

fn default_item(mode: Mode) -> Value {
    serde_json::json!({"defaultAccess": "allow", "mode": mode.as_str(), "id": DEFAULT_ITEM_ID})
}

fn deny_item(r: &ProfileRef, mode: Mode) -> Value {
    serde_json::json!({"defaultAccess": "deny", "mode": mode.as_str(), "id": format!("{}-missing", r.name)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::keys::IssuedKey;
    use std::time::SystemTime;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn v2_enabled_has_items_with_the_vm_modes_and_the_latched_guid() {
        let mut s = ProxyAgentSettings::default();
        s.imds.mode = Mode::Audit;
        let key = Arc::new(IssuedKey::generate(3, SystemTime::UNIX_EPOCH).unwrap());
        let keys = KeyState::new(3, Some(key.clone()));
        let doc = parse(&render(&s, &keys, |_| None));
        assert_eq!(doc["version"], "2.0");
        assert_eq!(doc["authorizationScheme"], "Azure-HMAC-SHA256");
        assert_eq!(doc["keyGuid"], key.guid.as_str());
        assert_eq!(doc["keyIncarnationId"], 3);
        assert_eq!(doc["secureChannelEnabled"], true);
        assert_eq!(doc["authorizationRules"]["imds"]["mode"], "audit");
        assert_eq!(doc["authorizationRules"]["wireserver"]["mode"], "enforce");
        assert_eq!(doc["authorizationRules"]["hostga"]["id"], DEFAULT_ITEM_ID);
        assert!(doc.get("secureChannelState").is_none());
    }

    #[test]
    fn v2_disabled_has_null_rules_and_null_guid() {
        let s = ProxyAgentSettings {
            enabled: false,
            ..Default::default()
        };
        let doc = parse(&render(&s, &KeyState::new(1, None), |_| None));
        assert_eq!(doc["secureChannelEnabled"], false);
        assert!(doc["authorizationRules"].is_null());
        assert!(doc["keyGuid"].is_null());
    }

    #[test]
    fn v1_carries_the_state_string_and_no_v2_fields() {
        let mut s = ProxyAgentSettings {
            status_version: StatusVersion::V1,
            ..Default::default()
        };
        s.imds.mode = Mode::Audit;
        let doc = parse(&render(&s, &KeyState::new(1, None), |_| None));
        assert_eq!(doc["version"], "1.0");
        assert_eq!(doc["secureChannelState"], "Wireserver");
        assert!(doc.get("secureChannelEnabled").is_none());
        assert!(doc.get("authorizationRules").is_none());
    }

    #[test]
    fn a_missing_profile_is_served_deny_all() {
        let mut s = ProxyAgentSettings::default();
        s.imds.profile = Some(ProfileRef {
            name: "gone".into(),
            version: None,
        });
        let doc = parse(&render(&s, &KeyState::new(1, None), |_| None));
        assert_eq!(doc["authorizationRules"]["imds"]["defaultAccess"], "deny");
    }
}
