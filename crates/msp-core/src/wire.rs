//! JSON of the secure-channel API (spec §2.3 `KeyStatus`, §2.7 `Key`) and what a status means: the state string,
//! the per-endpoint modes and the rule ids (spec §2.4–§2.6).
//!
//! Wire strings are parsed here once, case rules included; after this module code matches on [`Mode`] and
//! [`SecureChannelState`]. Authorization items stay raw JSON: a bad item must never fail the whole status, so
//! `rules` validates each one on its own (spec §4.2). Key bytes are held in [`SecretString`], which zeroes itself
//! and never prints.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::sign::{self, KeyGuid, SigningKey};
use crate::{Endpoint, Mode};

/// Body of `POST /secure-channel/key` (spec §2.2).
pub const KEY_REQUEST_BODY: &str = r#"{"authorizationScheme": "Azure-HMAC-SHA256"}"#;

/// Why a `KeyStatus` or `Key` was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("invalid JSON: {message}")]
    Json { message: String },
    #[error("version {version:?} is not supported (expected \"1.0\" or \"2.0\")")]
    VersionUnsupported { version: String },
    #[error("version {version} requires the field {field}")]
    MissingField {
        version: &'static str,
        field: &'static str,
    },
    #[error("secureChannelState {value:?} is not disabled, wireserver, wireserverandimds or audit")]
    SecureChannelStateInvalid { value: String },
    #[error("authorizationScheme {value:?} is not {}", sign::SCHEME)]
    SchemeUnsupported { value: String },
    #[error("keyDeliveryMethod {value:?} is not http or vtpm")]
    DeliveryMethodUnsupported { value: String },
    #[error("key: {source}")]
    KeyInvalid {
        #[source]
        source: sign::SignError,
    },
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> Self {
        WireError::Json {
            message: e.to_string(),
        }
    }
}

// === impl SecretString ===

/// A string that holds key material: zeroed on drop, `Debug` prints `***`, serialised only where the protocol
/// itself carries it (the `Key` response and the agent's 0600 key file).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> SecretString {
        SecretString(Zeroizing::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

// === KeyStatus (spec §2.3) ===

/// The answer of `GET /secure-channel/status`. Unknown fields are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// `"1.0"` (carries `secureChannelState`) or `"2.0"` (carries `secureChannelEnabled`).
    pub version: String,
    pub authorization_scheme: String,
    /// `http` or `vtpm`; both mean the key is fetched over HTTP.
    pub key_delivery_method: String,
    /// Guid of the key latched on the host; null or empty when none.
    #[serde(default)]
    pub key_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_incarnation_id: Option<u32>,
    #[serde(default)]
    pub required_claims_header_pairs: Option<Vec<String>>,
    /// v1: `Disabled`, `Wireserver`, `WireserverAndImds` or `Audit`, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_channel_state: Option<String>,
    /// v2: the master switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_channel_enabled: Option<bool>,
    /// v2: one raw item per endpoint (spec §4.1), validated by `rules` one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_rules: Option<AuthorizationRules>,
}

/// `authorizationRules` of a v2 status: raw JSON items, so that one bad item fails closed on its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthorizationRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireserver: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostga: Option<Box<RawValue>>,
}

impl AuthorizationRules {
    /// The host item that governs `endpoint`'s rules: HostGAPlugin uses the WireServer item (spec §2.6).
    pub fn item_for(&self, endpoint: Endpoint) -> Option<&RawValue> {
        match endpoint {
            Endpoint::WireServer | Endpoint::HostGaPlugin => self.wireserver.as_deref(),
            Endpoint::Imds => self.imds.as_deref(),
        }
    }
}

/// The v1 `secureChannelState` values (spec §2.3 rule 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V1State {
    Disabled,
    WireServer,
    WireServerAndImds,
    Audit,
}

impl V1State {
    fn parse(s: &str) -> Option<V1State> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Some(V1State::Disabled),
            "wireserver" => Some(V1State::WireServer),
            "wireserverandimds" => Some(V1State::WireServerAndImds),
            "audit" => Some(V1State::Audit),
            _ => None,
        }
    }
}

impl KeyStatus {
    /// Parses and validates a status body (spec §2.3 rules 1–4). A failure fails the poll iteration and must
    /// leave every earlier decision in place.
    pub fn parse(body: &[u8]) -> Result<KeyStatus, WireError> {
        let status: KeyStatus = serde_json::from_slice(body)?;
        status.validate()?;
        Ok(status)
    }

    /// Spec §2.3 rules 1–4 (rule 5 is [`KeyStatus::unknown_required_claims`]).
    pub fn validate(&self) -> Result<(), WireError> {
        match self.version.as_str() {
            "1.0" if self.secure_channel_state.is_none() => {
                return Err(WireError::MissingField {
                    version: "1.0",
                    field: "secureChannelState",
                });
            }
            "2.0" if self.secure_channel_enabled.is_none() => {
                return Err(WireError::MissingField {
                    version: "2.0",
                    field: "secureChannelEnabled",
                });
            }
            "1.0" | "2.0" => {}
            other => {
                return Err(WireError::VersionUnsupported {
                    version: other.to_owned(),
                });
            }
        }
        if let Some(state) = &self.secure_channel_state
            && V1State::parse(state).is_none()
        {
            return Err(WireError::SecureChannelStateInvalid {
                value: state.clone(),
            });
        }
        if self.authorization_scheme != sign::SCHEME {
            return Err(WireError::SchemeUnsupported {
                value: self.authorization_scheme.clone(),
            });
        }
        if !matches!(self.key_delivery_method.as_str(), "http" | "vtpm") {
            return Err(WireError::DeliveryMethodUnsupported {
                value: self.key_delivery_method.clone(),
            });
        }
        Ok(())
    }

    /// Claim names other than `isRoot` in `requiredClaimsHeaderPairs`: logged as a warning, otherwise ignored.
    pub fn unknown_required_claims(&self) -> impl Iterator<Item = &str> {
        self.required_claims_header_pairs
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|n| *n != "isRoot")
    }

    /// The latched key's guid, when the host reports one (null and empty mean none).
    pub fn latched_guid(&self) -> Option<&str> {
        self.key_guid.as_deref().filter(|g| !g.is_empty())
    }

    /// State string, modes and rule ids of this status (spec §2.4–§2.6). Call on a validated status.
    pub fn derive(&self) -> ChannelState {
        let v2_rules = match (
            self.version.as_str(),
            self.secure_channel_enabled,
            &self.authorization_rules,
        ) {
            ("2.0", Some(true), Some(rules)) => Some(rules),
            _ => None,
        };
        let rule_ids = RuleIds::of(self.authorization_rules.as_ref());
        if let Some(rules) = v2_rules {
            let wireserver = item_head(rules.wireserver.as_deref()).mode;
            let imds = item_head(rules.imds.as_deref()).mode;
            return ChannelState {
                state: SecureChannelState::Enabled { wireserver, imds },
                modes: Modes {
                    wireserver,
                    hostga: wireserver,
                    imds,
                },
                rule_ids,
            };
        }
        let v1 = (self.version == "1.0").then(|| {
            self.secure_channel_state
                .as_deref()
                .and_then(V1State::parse)
        });
        let (state, modes) = match v1.flatten() {
            Some(V1State::WireServer) => (
                SecureChannelState::WireServer,
                Modes::uniform(Mode::Enforce).with(Endpoint::Imds, Mode::Audit),
            ),
            Some(V1State::WireServerAndImds) => (
                SecureChannelState::WireServerAndImds,
                Modes::uniform(Mode::Enforce),
            ),
            Some(V1State::Audit) => (SecureChannelState::Audit, Modes::uniform(Mode::Audit)),
            Some(V1State::Disabled) | None => {
                (SecureChannelState::Disabled, Modes::uniform(Mode::Disabled))
            }
        };
        ChannelState {
            state,
            modes,
            rule_ids,
        }
    }

    /// The text of the "Got key status successfully: <summary>." event (spec §2.8).
    pub fn summary(&self, derived: &ChannelState) -> String {
        format!(
            "authorizationScheme: {}, keyDeliveryMethod: {}, keyGuid: {}, secureChannelState: {}, version: {}, \
             WireServerMode: {}, IMDSMode: {}",
            self.authorization_scheme,
            self.key_delivery_method,
            self.latched_guid().unwrap_or("None"),
            derived.state,
            self.version,
            derived.modes.wireserver,
            derived.modes.imds,
        )
    }
}

/// The two fields of an item that the state string needs, read leniently: an item whose `mode` is missing,
/// not a string or not a known mode counts as `Disabled` (spec §2.6), and a non-string `id` as empty.
struct ItemHead {
    mode: Mode,
    id: String,
}

fn item_head(raw: Option<&RawValue>) -> ItemHead {
    #[derive(Deserialize)]
    struct Head {
        mode: Option<serde_json::Value>,
        id: Option<serde_json::Value>,
    }
    // A repeated `mode` or `id` key is a deserialisation error here, so such an item counts as Disabled: the
    // endpoint is then not intercepted and the host, not the agent, decides (spec §12.4).
    let head = raw.and_then(|r| serde_json::from_str::<Head>(r.get()).ok());
    let text =
        |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map(str::to_owned);
    ItemHead {
        mode: head
            .as_ref()
            .and_then(|h| text(h.mode.as_ref()))
            .and_then(|m| Mode::parse(&m))
            .unwrap_or_default(),
        id: head
            .as_ref()
            .and_then(|h| text(h.id.as_ref()))
            .unwrap_or_default(),
    }
}

/// The state string of spec §2.4, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecureChannelState {
    /// No successful poll yet in this process, or reset by a notification.
    #[default]
    Unknown,
    /// v1 `disabled`, or v2 not enabled / without rules: rendered `disabled`, lowercase.
    Disabled,
    /// v1 `wireserver`.
    WireServer,
    /// v1 `wireserverandimds`.
    WireServerAndImds,
    /// v1 `audit`.
    Audit,
    /// v2 enabled with rules: `WireServer <W> -  IMDS <I> - HostGA <W>` (two spaces before `IMDS`).
    Enabled { wireserver: Mode, imds: Mode },
}

impl SecureChannelState {
    /// `Unknown` or `disabled`: no key is needed and a notification resets the state (spec §2.8).
    pub fn is_unknown_or_disabled(self) -> bool {
        matches!(
            self,
            SecureChannelState::Unknown | SecureChannelState::Disabled
        )
    }
}

impl fmt::Display for SecureChannelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecureChannelState::Unknown => f.write_str("Unknown"),
            SecureChannelState::Disabled => f.write_str("disabled"),
            SecureChannelState::WireServer => f.write_str("wireserver"),
            SecureChannelState::WireServerAndImds => f.write_str("wireserverandimds"),
            SecureChannelState::Audit => f.write_str("audit"),
            SecureChannelState::Enabled { wireserver, imds } => {
                write!(
                    f,
                    "WireServer {} -  IMDS {} - HostGA {}",
                    wireserver.title(),
                    imds.title(),
                    wireserver.title()
                )
            }
        }
    }
}

/// The mode of each endpoint (spec §2.6): the single source of truth for redirection and authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    pub wireserver: Mode,
    pub hostga: Mode,
    pub imds: Mode,
}

impl Modes {
    pub fn uniform(mode: Mode) -> Modes {
        Modes {
            wireserver: mode,
            hostga: mode,
            imds: mode,
        }
    }

    pub fn get(&self, endpoint: Endpoint) -> Mode {
        match endpoint {
            Endpoint::WireServer => self.wireserver,
            Endpoint::HostGaPlugin => self.hostga,
            Endpoint::Imds => self.imds,
        }
    }

    pub fn with(mut self, endpoint: Endpoint, mode: Mode) -> Modes {
        match endpoint {
            Endpoint::WireServer => self.wireserver = mode,
            Endpoint::HostGaPlugin => self.hostga = mode,
            Endpoint::Imds => self.imds = mode,
        }
        self
    }

    /// The endpoints that are redirected: every one whose mode is not `disabled` (spec §7.4).
    pub fn redirected(&self) -> impl Iterator<Item = Endpoint> + '_ {
        Endpoint::ALL
            .into_iter()
            .filter(|e| self.get(*e) != Mode::Disabled)
    }
}

/// The raw host rule ids (spec §2.5); empty when absent. HostGA repeats the WireServer id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleIds {
    pub wireserver: String,
    pub imds: String,
    pub hostga: String,
}

impl RuleIds {
    fn of(rules: Option<&AuthorizationRules>) -> RuleIds {
        let id = |raw: Option<&Box<RawValue>>| item_head(raw.map(|b| &**b)).id;
        let wireserver = id(rules.and_then(|r| r.wireserver.as_ref()));
        RuleIds {
            imds: id(rules.and_then(|r| r.imds.as_ref())),
            hostga: wireserver.clone(),
            wireserver,
        }
    }
}

/// Everything a status means to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelState {
    pub state: SecureChannelState,
    pub modes: Modes,
    pub rule_ids: RuleIds,
}

// === Key (spec §2.7) ===

/// The answer of `POST /secure-channel/key`, also the agent's key file (pretty JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    pub authorization_scheme: String,
    pub guid: String,
    /// Hex of the 32-byte HMAC key, either case.
    pub key: SecretString,
    /// Nominally ISO 8601 UTC; never parsed strictly (`2021-05-05T 12:00:00Z` occurs).
    pub issued: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation_id: Option<u32>,
}

impl Key {
    /// Parses and validates an acquire response or a key file.
    pub fn parse(body: &[u8]) -> Result<Key, WireError> {
        let key: Key = serde_json::from_slice(body)?;
        key.signing_parts()?;
        Ok(key)
    }

    /// The guid and the HMAC key, validated (spec §2.7): the scheme, an 8-4-4-4-12 guid and 32 bytes of hex.
    pub fn signing_parts(&self) -> Result<(KeyGuid, SigningKey), WireError> {
        if self.authorization_scheme != sign::SCHEME {
            return Err(WireError::SchemeUnsupported {
                value: self.authorization_scheme.clone(),
            });
        }
        let guid = KeyGuid::parse(&self.guid).map_err(|source| WireError::KeyInvalid { source })?;
        let key = SigningKey::from_hex(self.key.expose())
            .map_err(|source| WireError::KeyInvalid { source })?;
        Ok((guid, key))
    }
}

#[cfg(test)]
mod tests;
