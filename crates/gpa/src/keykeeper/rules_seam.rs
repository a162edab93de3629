//! Seam for `msp_core::rules` until it lands on `main`: the exact subset of its API the key keeper uses
//! (`build_item`, `Built`, `CompiledItem`, `Items`, `LocalFile`, `LocalOutcome`, `EffectiveId`, `RulesError`).
//!
//! TODO(merge): delete this file and replace its `mod` line with
//! `pub use msp_core::rules::{Built, CompiledItem, EffectiveId, Items, LocalFile, LocalOutcome, RulesError, build_item};`
//! Until then items are checked only for their head (`defaultAccess`, `mode`, `id`) and local files are parsed
//! as JSON objects; this file must never be used to decide a request.

use base64::Engine as _;
use serde::Serialize;

use msp_core::{Endpoint, Mode};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(String);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledItem {
    id: String,
    default_allowed: bool,
    #[serde(serialize_with = "mode_title")]
    mode: Mode,
}

fn mode_title<S: serde::Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.title())
}

impl CompiledItem {
    pub fn fail_closed(id: impl Into<String>, mode: Mode) -> CompiledItem {
        CompiledItem {
            id: id.into(),
            default_allowed: false,
            mode,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn default_allowed(&self) -> bool {
        self.default_allowed
    }
}

#[derive(Debug, Clone, Default)]
pub struct Items {
    pub wireserver: Option<CompiledItem>,
    pub imds: Option<CompiledItem>,
    pub hostga: Option<CompiledItem>,
}

impl Items {
    pub fn item(&self, endpoint: Endpoint) -> Option<&CompiledItem> {
        match endpoint {
            Endpoint::WireServer => self.wireserver.as_ref(),
            Endpoint::HostGaPlugin => self.hostga.as_ref(),
            Endpoint::Imds => self.imds.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveId {
    pub id: String,
    pub use_local_rules: bool,
}

impl EffectiveId {
    pub fn decode(raw: &str) -> EffectiveId {
        #[derive(serde::Deserialize)]
        struct OptIn {
            #[serde(default)]
            id: Option<String>,
            #[serde(default, rename = "useLocalFileRules")]
            use_local_file_rules: Option<bool>,
        }
        let opt_in = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .ok()
            .and_then(|json| serde_json::from_slice::<OptIn>(&json).ok());
        match opt_in {
            Some(o) => {
                let on = o.use_local_file_rules.unwrap_or(false);
                EffectiveId {
                    id: format!("{}-useLocalFileRules-{on}", o.id.unwrap_or_default()),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFile<'a> {
    Missing,
    Unreadable,
    Present(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutcome {
    NotConsulted,
    NotOptedIn,
    Missing,
    Merged,
    Unreadable,
    Invalid(RulesError),
}

#[derive(Debug, Clone)]
pub struct Built {
    pub item: CompiledItem,
    pub host_error: Option<RulesError>,
    pub local: LocalOutcome,
}

impl Built {
    pub fn error_message(&self) -> Option<String> {
        match (&self.host_error, &self.local) {
            (Some(e), _) => Some(format!("host rules invalid: {e}")),
            (None, LocalOutcome::Invalid(e)) => Some(format!("local rules file invalid: {e}")),
            (None, LocalOutcome::Unreadable) => Some("local rules file unreadable".to_owned()),
            _ => None,
        }
    }
}

fn head(json: &str) -> Result<(String, bool, Mode), RulesError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| RulesError(e.to_string()))?;
    let text = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| RulesError(format!("{k}: required field missing")))
    };
    let allow = match text("defaultAccess")?.trim().to_ascii_lowercase().as_str() {
        "allow" => true,
        "deny" => false,
        other => {
            return Err(RulesError(format!(
                "defaultAccess: {other:?} is not allow or deny"
            )));
        }
    };
    let mode = Mode::parse(text("mode")?).ok_or_else(|| RulesError("mode: invalid".to_owned()))?;
    Ok((text("id")?.to_owned(), allow, mode))
}

pub fn build_item(host_json: &str, file: Option<LocalFile<'_>>) -> Built {
    let (id, allow, mode) = match head(host_json) {
        Ok(h) => h,
        Err(e) => {
            let v: serde_json::Value = serde_json::from_str(host_json).unwrap_or_default();
            let id = v.get("id").and_then(|x| x.as_str()).unwrap_or_default();
            let mode = v
                .get("mode")
                .and_then(|x| x.as_str())
                .and_then(Mode::parse)
                .unwrap_or_default();
            return Built {
                item: CompiledItem::fail_closed(EffectiveId::decode(id).id, mode),
                host_error: Some(e),
                local: LocalOutcome::NotConsulted,
            };
        }
    };
    let effective = EffectiveId::decode(&id);
    let host = CompiledItem {
        id: effective.id.clone(),
        default_allowed: allow,
        mode,
    };
    let (item, local) = match file {
        None => (host, LocalOutcome::NotConsulted),
        Some(_) if !effective.use_local_rules => (host, LocalOutcome::NotOptedIn),
        Some(LocalFile::Missing) => (host, LocalOutcome::Missing),
        Some(LocalFile::Unreadable) => (
            CompiledItem::fail_closed(effective.id, mode),
            LocalOutcome::Unreadable,
        ),
        Some(LocalFile::Present(bytes)) => {
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes) {
                Ok(doc) => {
                    let id = match doc.get("id").and_then(|x| x.as_str()) {
                        Some(file_id) => format!("{}_{file_id}", effective.id),
                        None => effective.id,
                    };
                    let default_allowed = match doc.get("defaultAccess").and_then(|x| x.as_str()) {
                        Some(a) => a.trim().eq_ignore_ascii_case("allow"),
                        None => allow,
                    };
                    (
                        CompiledItem {
                            id,
                            default_allowed,
                            mode,
                        },
                        LocalOutcome::Merged,
                    )
                }
                Err(e) => (
                    CompiledItem::fail_closed(effective.id, mode),
                    LocalOutcome::Invalid(RulesError(e.to_string())),
                ),
            }
        }
    };
    Built {
        item,
        host_error: None,
        local,
    }
}
