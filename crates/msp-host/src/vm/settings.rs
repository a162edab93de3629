//! A VM's `proxyAgentSettings`: what the owner chose for MSP on that VM (spec §12.1) and how it is validated.
//!
//! Pure data and validation. The host enforces exactly the modes derived here ([`ProxyAgentSettings::mode`]),
//! and the status document it serves (`vm::key_status`) is derived from the same settings, so the agent and
//! the host can never disagree about a mode. This module must never touch keys or the store.

use msp_core::{Endpoint, Mode};
use serde::{Deserialize, Serialize};

/// Which `KeyStatus` shape the VM is served (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusVersion {
    /// `version: "1.0"` with a `secureChannelState`; no rules.
    V1,
    /// `version: "2.0"` with `secureChannelEnabled` and `authorizationRules`.
    #[default]
    V2,
}

/// A reference to an access-control profile: its name and a version, or the latest one when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Mode and allowlist of WireServer or IMDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSettings {
    /// default `enforce`: a new VM is default-closed.
    #[serde(default = "enforce")]
    pub mode: Mode,
    /// The allowlist served as this endpoint's item; without one the item allows every admitted caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileRef>,
}

fn enforce() -> Mode {
    Mode::Enforce
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            mode: Mode::Enforce,
            profile: None,
        }
    }
}

/// HostGAPlugin has no mode of its own: it follows WireServer (spec §2.6, §12.4). Its item is served for the
/// agent to validate but is not applied in v1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostGaSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileRef>,
}

/// The MSP settings of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyAgentSettings {
    /// Master switch; default true. Off: every endpoint is `disabled` (spec §2.6).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// default `v2`.
    #[serde(default)]
    pub status_version: StatusVersion,
    /// Incarnation of the VM's key (spec §2.10); raising it resets the key (spec §12.2). default 1.
    #[serde(default = "one")]
    pub key_incarnation_id: u32,
    #[serde(default)]
    pub wire_server: EndpointSettings,
    #[serde(default)]
    pub imds: EndpointSettings,
    #[serde(default)]
    pub host_ga: HostGaSettings,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl Default for ProxyAgentSettings {
    fn default() -> Self {
        ProxyAgentSettings {
            enabled: true,
            status_version: StatusVersion::V2,
            key_incarnation_id: 1,
            wire_server: EndpointSettings::default(),
            imds: EndpointSettings::default(),
            host_ga: HostGaSettings::default(),
        }
    }
}

/// One reason a settings or profile document was refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The v1 `secureChannelState` for a pair of modes (spec §2.6, read backwards). `None`: v1 cannot express it.
pub fn v1_state(enabled: bool, wire_server: Mode, imds: Mode) -> Option<&'static str> {
    if !enabled {
        return Some("Disabled");
    }
    match (wire_server, imds) {
        (Mode::Disabled, Mode::Disabled) => Some("Disabled"),
        (Mode::Enforce, Mode::Audit) => Some("Wireserver"),
        (Mode::Enforce, Mode::Enforce) => Some("WireserverAndImds"),
        (Mode::Audit, Mode::Audit) => Some("Audit"),
        _ => None,
    }
}

impl ProxyAgentSettings {
    /// The mode the host enforces for `endpoint` (spec §2.6): everything is `disabled` while MSP is off, and
    /// HostGAPlugin follows WireServer.
    pub fn mode(&self, endpoint: Endpoint) -> Mode {
        if !self.enabled {
            return Mode::Disabled;
        }
        match endpoint {
            Endpoint::WireServer | Endpoint::HostGaPlugin => self.wire_server.mode,
            Endpoint::Imds => self.imds.mode,
        }
    }

    /// Checks what serde cannot: v1 expressibility and profile reference shapes. `profile_exists` answers
    /// whether a referenced profile (and version) is stored.
    pub fn validate(&self, profile_exists: impl Fn(&ProfileRef) -> bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.status_version == StatusVersion::V1
            && v1_state(self.enabled, self.wire_server.mode, self.imds.mode).is_none()
        {
            errors.push(FieldError::new(
                "statusVersion",
                format!(
                    "v1 cannot express wireServer {} with imds {}; use v2, or one of disabled/disabled, \
                     enforce/audit, enforce/enforce, audit/audit",
                    self.wire_server.mode, self.imds.mode
                ),
            ));
        }
        let refs = [
            ("wireServer.profile", &self.wire_server.profile),
            ("imds.profile", &self.imds.profile),
            ("hostGa.profile", &self.host_ga.profile),
        ];
        for (field, profile) in refs {
            if let Some(p) = profile
                && !profile_exists(p)
            {
                let what = match p.version {
                    Some(v) => format!("profile {:?} version {v} does not exist", p.name),
                    None => format!("profile {:?} does not exist", p.name),
                };
                errors.push(FieldError::new(field, what));
            }
        }
        errors
    }
}

/// Parses a settings document, naming the offending field on failure (serde's own messages do not).
pub fn parse_settings(value: &serde_json::Value) -> Result<ProxyAgentSettings, Vec<FieldError>> {
    match ProxyAgentSettings::deserialize(value) {
        Ok(s) => Ok(s),
        Err(e) => {
            let mut errors = diagnose(value);
            if errors.is_empty() {
                errors.push(FieldError::new("", e.to_string()));
            }
            Err(errors)
        }
    }
}

fn diagnose(value: &serde_json::Value) -> Vec<FieldError> {
    use serde_json::Value;
    let mut errors = Vec::new();
    let Some(obj) = value.as_object() else {
        return vec![FieldError::new("", "must be a JSON object")];
    };
    let mode_ok = |v: &Value| {
        v.as_str()
            .is_some_and(|s| matches!(s, "disabled" | "audit" | "enforce"))
    };
    let endpoint = |prefix: &str, v: &Value, has_mode: bool, errors: &mut Vec<FieldError>| {
        let Some(o) = v.as_object() else {
            errors.push(FieldError::new(prefix, "must be an object"));
            return;
        };
        for (k, sub) in o {
            let field = format!("{prefix}.{k}");
            match k.as_str() {
                "mode" if has_mode => {
                    if !mode_ok(sub) {
                        errors.push(FieldError::new(
                            field,
                            "must be \"disabled\", \"audit\" or \"enforce\"",
                        ));
                    }
                }
                "profile" => {
                    if !sub.is_null() && ProfileRef::deserialize(sub).is_err() {
                        errors.push(FieldError::new(
                            field,
                            "must be {\"name\": <string>, \"version\": <positive integer>?}",
                        ));
                    }
                }
                _ => errors.push(FieldError::new(field, "unknown field")),
            }
        }
    };
    for (k, v) in obj {
        match k.as_str() {
            "enabled" if !v.is_boolean() => {
                errors.push(FieldError::new(k.as_str(), "must be a boolean"))
            }
            "statusVersion" if !matches!(v.as_str(), Some("v1" | "v2")) => {
                errors.push(FieldError::new(k.as_str(), "must be \"v1\" or \"v2\""))
            }
            "keyIncarnationId" if v.as_u64().is_none_or(|n| u32::try_from(n).is_err()) => errors
                .push(FieldError::new(
                    k.as_str(),
                    "must be an integer from 0 to 4294967295",
                )),
            "wireServer" | "imds" => endpoint(k, v, true, &mut errors),
            "hostGa" => endpoint(k, v, false, &mut errors),
            "enabled" | "statusVersion" | "keyIncarnationId" => {}
            _ => errors.push(FieldError::new(k.as_str(), "unknown field")),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_default_closed_v2() {
        let s: ProxyAgentSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, ProxyAgentSettings::default());
        assert_eq!(s.mode(Endpoint::Imds), Mode::Enforce);
        assert_eq!(s.mode(Endpoint::HostGaPlugin), Mode::Enforce);
    }

    #[test]
    fn disabled_switch_disables_every_endpoint() {
        let s = ProxyAgentSettings {
            enabled: false,
            ..Default::default()
        };
        for e in Endpoint::ALL {
            assert_eq!(s.mode(e), Mode::Disabled);
        }
    }

    #[test]
    fn v1_refuses_inexpressible_modes_naming_the_field() {
        let mut s = ProxyAgentSettings {
            status_version: StatusVersion::V1,
            ..Default::default()
        };
        s.wire_server.mode = Mode::Audit;
        let errors = s.validate(|_| true);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "statusVersion");
        s.imds.mode = Mode::Audit;
        assert!(s.validate(|_| true).is_empty());
    }

    #[test]
    fn parse_errors_name_the_field() {
        let fields = |doc: &str| -> Vec<String> {
            parse_settings(&serde_json::from_str(doc).unwrap())
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect()
        };
        assert_eq!(fields(r#"{"enabled": "yes"}"#), ["enabled"]);
        assert_eq!(fields(r#"{"imds": {"mode": "on"}}"#), ["imds.mode"]);
        assert_eq!(
            fields(r#"{"wireServer": {"profile": 3}}"#),
            ["wireServer.profile"]
        );
        assert_eq!(fields(r#"{"hostGa": {"mode": "audit"}}"#), ["hostGa.mode"]);
        assert_eq!(fields(r#"{"keyIncarnationId": -1}"#), ["keyIncarnationId"]);
        assert_eq!(fields(r#"{"statusVersion": "v3"}"#), ["statusVersion"]);
        assert_eq!(fields(r#"{"bogus": 1}"#), ["bogus"]);
    }

    #[test]
    fn unknown_fields_and_profiles_are_refused() {
        assert!(serde_json::from_str::<ProxyAgentSettings>(r#"{"enabeld": true}"#).is_err());
        let s: ProxyAgentSettings =
            serde_json::from_str(r#"{"imds": {"mode": "audit", "profile": {"name": "p"}}}"#)
                .unwrap();
        let errors = s.validate(|_| false);
        assert_eq!(errors[0].field, "imds.profile");
    }
}
