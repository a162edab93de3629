//! The `KeyStatus` document a VM is served at `GET /secure-channel/status` (spec §2.3), derived from its settings,
//! its profiles and its latched key.
//!
//! Deterministic: same settings, profiles and key give the same bytes. This module must never put key bytes
//! in the document; only the latched guid and the incarnation leave the host here.

use std::sync::Arc;

use msp_core::wire::{AuthorizationRules, KeyStatus};
use serde_json::Value;
use serde_json::value::RawValue;

use super::keys::KeyState;
use super::profile::Profile;
use super::settings::{ProfileRef, ProxyAgentSettings, StatusVersion, v1_state};
use msp_core::Mode;
use msp_core::sign::SCHEME;

/// The id of an item served when an endpoint has no profile: it admits every caller the agent admits.
pub const DEFAULT_ITEM_ID: &str = "openmsp-default";

/// Renders the status document. `profile` resolves a reference (latest version when none is given); a
/// reference that no longer resolves is served as a deny-all item, never as allow-all.
pub fn render(
    settings: &ProxyAgentSettings,
    keys: &KeyState,
    profile: impl Fn(&ProfileRef) -> Option<Arc<Profile>>,
) -> Vec<u8> {
    let mut doc = KeyStatus {
        version: "2.0".to_owned(),
        authorization_scheme: SCHEME.to_owned(),
        key_delivery_method: "http".to_owned(),
        key_guid: keys.latched.as_ref().map(|k| k.guid.as_str().to_owned()),
        key_incarnation_id: Some(keys.incarnation),
        required_claims_header_pairs: Some(vec!["isRoot".to_owned()]),
        secure_channel_state: None,
        secure_channel_enabled: None,
        authorization_rules: None,
    };
    match settings.status_version {
        StatusVersion::V1 => {
            doc.version = "1.0".to_owned();
            // Validation keeps v1 settings expressible; a stale combination is served as the stricter state.
            let state = v1_state(
                settings.enabled,
                settings.wire_server.mode,
                settings.imds.mode,
            )
            .unwrap_or("WireserverAndImds");
            doc.secure_channel_state = Some(state.to_owned());
        }
        StatusVersion::V2 => {
            doc.secure_channel_enabled = Some(settings.enabled);
            if settings.enabled {
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
                doc.authorization_rules = Some(AuthorizationRules {
                    imds: raw(&item(&settings.imds.profile, settings.imds.mode)),
                    wireserver: raw(&wireserver),
                    hostga: raw(&hostga),
                });
            }
        }
    }
    serde_json::to_vec(&doc).unwrap_or_else(|_| unreachable!("plain structs always serialise"))
}

fn raw(v: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(v).ok()
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
    fn the_agent_parser_accepts_every_shape() {
        for (version, enabled) in [
            (StatusVersion::V1, true),
            (StatusVersion::V2, true),
            (StatusVersion::V2, false),
        ] {
            let s = ProxyAgentSettings {
                status_version: version,
                enabled,
                ..Default::default()
            };
            let bytes = render(&s, &KeyState::new(1, None), |_| None);
            let parsed = KeyStatus::parse(&bytes).unwrap();
            parsed.validate().unwrap();
        }
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
        assert!(doc.get("authorizationRules").is_none_or(Value::is_null));
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
