//! Resolving the effective allowlist items each poll (spec §4.7, §4.8) and writing rules snapshot files
//! (spec §4.9).
//!
//! Local files are tracked per endpoint as Missing, Present(mtime, size, inode) or Error; an item is rebuilt
//! only when the host item, the opt-in or the file state changed, or when the previous parse failed. A local
//! file that is a symlink, not owned by the agent or group/other writable is treated as Missing and reported.
//! This module must never let a local file widen HostGAPlugin's rules or set a mode, and never write a rules
//! file with key material (there is none in items).

use std::path::{Path, PathBuf};
use std::time::Duration;

use msp_core::Endpoint;
use msp_core::wire::{AuthorizationRules, KeyStatus};
use serde::Serialize;

use crate::storage::{self, FileIdentity, ModeRule, SecureDir, StorageError};
use crate::telemetry::{EventLevel, EventSink};
use msp_core::rules::{Built, EffectiveId, Items, LocalFile, LocalOutcome, build_item};

/// Parse attempts of a local file per resolution (spec §4.7).
pub const LOCAL_FILE_ATTEMPTS: u32 = 3;
/// Pause between attempts (spec §4.7).
pub const LOCAL_FILE_RETRY: Duration = Duration::from_millis(50);
/// Largest local rules file read: the 1 MiB document limit plus a BOM (spec §4.2 check 6).
pub const MAX_LOCAL_FILE_BYTES: u64 = 1024 * 1024 + 3;
/// Rules snapshot files kept in `logFolder` (spec §4.9).
pub const MAX_RULES_FILES: usize = 5;
/// Prefix of rules snapshot files (spec §4.9).
pub const RULES_FILE_PREFIX: &str = "AuthorizationRules_";

/// The local file of an endpoint (spec §4.7).
pub fn local_file_name(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::WireServer => Some("WireServer_Rules.json"),
        Endpoint::Imds => Some("IMDS_Rules.json"),
        Endpoint::HostGaPlugin => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum FileState {
    /// Not opted in: the file is not looked at.
    #[default]
    NotConsulted,
    Missing,
    /// Ignored as unsafe (symlink, owner, mode): treated as Missing, reported.
    Unsafe(String),
    /// Metadata unreadable.
    Error(String),
    Present(FileIdentity),
}

#[derive(Debug, Default)]
struct Tracked {
    host: Option<String>,
    opt_in: bool,
    file: FileState,
    parse_failed: bool,
    built: Option<Built>,
    error: Option<String>,
}

/// What changed items look like to the rest of the agent.
#[derive(Debug, Clone)]
pub struct RulesUpdate {
    pub items: Items,
    /// `wireServerRulesError`, `imdsRulesError`, `hostGARulesError` (spec §9.2).
    pub errors: [(Endpoint, Option<String>); 3],
}

/// Per-endpoint tracking across polls.
#[derive(Debug)]
pub struct RulesResolver {
    rules_dir: PathBuf,
    events: EventSink,
    wireserver: Tracked,
    imds: Tracked,
    /// The WireServer host item compiled alone, and the status's own `hostga` item check.
    hostga: Tracked,
    hostga_own: Option<String>,
}

impl RulesResolver {
    pub fn new(rules_dir: PathBuf, events: EventSink) -> RulesResolver {
        RulesResolver {
            rules_dir,
            events,
            wireserver: Tracked::default(),
            imds: Tracked::default(),
            hostga: Tracked::default(),
            hostga_own: None,
        }
    }

    /// Re-resolves the items of `status`; `None` when nothing changed (spec §4.8).
    pub async fn resolve(&mut self, status: &KeyStatus) -> Option<RulesUpdate> {
        let raw = |f: fn(&AuthorizationRules) -> Option<&serde_json::value::RawValue>| {
            status
                .authorization_rules
                .as_ref()
                .and_then(f)
                .map(|r| r.get().to_owned())
        };
        let ws = raw(|r| r.wireserver.as_deref());
        let imds = raw(|r| r.imds.as_deref());
        let hostga_own = raw(|r| r.hostga.as_deref());
        let mut changed = false;
        changed |= self
            .resolve_endpoint(Endpoint::WireServer, ws.clone())
            .await;
        changed |= self.resolve_endpoint(Endpoint::Imds, imds).await;
        if self.hostga.host != ws || self.hostga_own != hostga_own {
            self.hostga.built = ws.as_deref().map(|json| build_item(json, None));
            self.hostga.host = ws;
            // The status's own `hostga` item is validated but never applied (spec §2.6).
            let own_error = hostga_own
                .as_deref()
                .and_then(|json| build_item(json, None).host_error)
                .map(|e| format!("hostga item invalid (not applied): {e}"));
            self.hostga.error = self
                .hostga
                .built
                .as_ref()
                .and_then(Built::error_message)
                .or(own_error);
            self.hostga_own = hostga_own;
            changed = true;
        }
        changed.then(|| RulesUpdate {
            items: Items {
                wireserver: self.wireserver.built.as_ref().map(|b| b.item.clone()),
                imds: self.imds.built.as_ref().map(|b| b.item.clone()),
                hostga: self.hostga.built.as_ref().map(|b| b.item.clone()),
            },
            errors: [
                (Endpoint::WireServer, self.wireserver.error.clone()),
                (Endpoint::Imds, self.imds.error.clone()),
                (Endpoint::HostGaPlugin, self.hostga.error.clone()),
            ],
        })
    }

    fn tracked(&mut self, endpoint: Endpoint) -> &mut Tracked {
        match endpoint {
            Endpoint::WireServer => &mut self.wireserver,
            Endpoint::Imds => &mut self.imds,
            Endpoint::HostGaPlugin => &mut self.hostga,
        }
    }

    fn file_state(&self, name: &str) -> FileState {
        let dir = match SecureDir::open(&self.rules_dir) {
            Ok(dir) => dir,
            Err(StorageError::DirOpen {
                errno: nix::errno::Errno::ENOENT,
                ..
            }) => return FileState::Missing,
            Err(e) => return FileState::Unsafe(format!("rules directory refused: {e}")),
        };
        match dir.stat(name, ModeRule::NotWritableByOthers) {
            Ok(None) => FileState::Missing,
            Ok(Some(identity)) => FileState::Present(identity),
            Err(
                e @ (StorageError::FileNotRegular { .. }
                | StorageError::FileWrongOwner { .. }
                | StorageError::FileWritableByOthers { .. }),
            ) => FileState::Unsafe(e.to_string()),
            Err(e) => FileState::Error(e.to_string()),
        }
    }

    async fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        SecureDir::open(&self.rules_dir)?
            .read(name, ModeRule::NotWritableByOthers, MAX_LOCAL_FILE_BYTES)
            .map(|r| r.map(|(bytes, _)| bytes))
    }

    /// Returns whether the endpoint's item was rebuilt.
    async fn resolve_endpoint(&mut self, endpoint: Endpoint, host: Option<String>) -> bool {
        let Some(name) = local_file_name(endpoint) else {
            return false;
        };
        let opt_in = host.as_deref().is_some_and(|json| {
            let id = serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
                .unwrap_or_default();
            EffectiveId::decode(&id).use_local_rules
        });
        let file = if opt_in {
            self.file_state(name)
        } else {
            FileState::NotConsulted
        };
        let module = endpoint.label();
        let prev = self.tracked(endpoint);
        let rebuild =
            prev.host != host || prev.opt_in != opt_in || prev.file != file || prev.parse_failed;
        if !rebuild {
            return false;
        }
        let (prev_opt_in, prev_file) = (prev.opt_in, prev.file.clone());
        if prev_opt_in != opt_in {
            self.events.emit(
                EventLevel::Info,
                module,
                &format!("LocalFileRulesStateChanged: useLocalFileRules switched to {opt_in}"),
            );
        }
        if opt_in && prev_file != file {
            let what = match &file {
                FileState::Present(_) if matches!(prev_file, FileState::Present(_)) => {
                    "changed".to_owned()
                }
                FileState::Present(_) => "found".to_owned(),
                FileState::Missing if matches!(prev_file, FileState::Present(_)) => {
                    "deleted".to_owned()
                }
                FileState::Missing | FileState::NotConsulted => "missing".to_owned(),
                FileState::Unsafe(e) => format!("ignored as unsafe: {e}"),
                FileState::Error(e) => format!("metadata unreadable: {e}"),
            };
            self.events.emit(
                EventLevel::Info,
                module,
                &format!("LocalFileRulesStateChanged: {name} {what}"),
            );
        }
        let mut parse_failed = false;
        let mut unsafe_error = None;
        let built = match (&host, &file) {
            (None, _) => None,
            (Some(json), FileState::NotConsulted | FileState::Missing) => {
                Some(build_item(json, Some(LocalFile::Missing)))
            }
            (Some(json), FileState::Unsafe(e)) => {
                unsafe_error = Some(format!("local rules file {name} ignored: {e}"));
                Some(build_item(json, Some(LocalFile::Missing)))
            }
            (Some(json), FileState::Error(e)) => {
                self.events.emit(
                    EventLevel::Warn,
                    module,
                    &format!("LocalRulesFileMetadataReadFailed: {name}: {e}"),
                );
                Some(build_item(json, Some(LocalFile::Unreadable)))
            }
            (Some(json), FileState::Present(_)) => {
                let built = self.parse_with_retries(json, name, module).await;
                parse_failed = matches!(
                    built.local,
                    LocalOutcome::Invalid(_) | LocalOutcome::Unreadable
                );
                Some(built)
            }
        };
        let tracked = self.tracked(endpoint);
        tracked.error = built
            .as_ref()
            .and_then(Built::error_message)
            .or(unsafe_error);
        tracked.built = built;
        tracked.host = host;
        tracked.opt_in = opt_in;
        tracked.file = file;
        tracked.parse_failed = parse_failed;
        true
    }

    /// Up to [`LOCAL_FILE_ATTEMPTS`] reads and parses, [`LOCAL_FILE_RETRY`] apart (spec §4.7).
    async fn parse_with_retries(&self, host_json: &str, name: &str, module: &str) -> Built {
        let mut last = None;
        for attempt in 1..=LOCAL_FILE_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(LOCAL_FILE_RETRY).await;
            }
            let built = match self.read_file(name).await {
                Ok(Some(bytes)) => build_item(host_json, Some(LocalFile::Present(&bytes))),
                Ok(None) => build_item(host_json, Some(LocalFile::Missing)),
                Err(_) => build_item(host_json, Some(LocalFile::Unreadable)),
            };
            match &built.local {
                LocalOutcome::Invalid(_) | LocalOutcome::Unreadable => last = Some(built),
                _ => {
                    self.events.emit(
                        EventLevel::Info,
                        module,
                        &format!("LocalRulesFileParseSuccess: {name}"),
                    );
                    return built;
                }
            }
        }
        let built = last.unwrap_or_else(|| build_item(host_json, Some(LocalFile::Unreadable)));
        let why = built.error_message().unwrap_or_default();
        self.events.emit(
            EventLevel::Warn,
            module,
            &format!("LocalRulesFileParseFailed: {name}: {why}"),
        );
        built
    }
}

/// `AuthorizationRules_<YYYY-MM-DDTHH.MM.SS.mmm>-<unix nanoseconds>.json` (spec §4.9).
pub fn rules_file_name(unix_nanos: i64) -> String {
    let ms = u64::try_from(unix_nanos / 1_000_000).unwrap_or(0);
    let stamp = msp_core::status::format_timestamp(ms).replace(':', ".");
    format!("{RULES_FILE_PREFIX}{stamp}-{unix_nanos}.json")
}

#[derive(Serialize)]
struct ComputedRules<'a> {
    wireserver: Option<&'a msp_core::rules::CompiledItem>,
    imds: Option<&'a msp_core::rules::CompiledItem>,
    hostga: Option<&'a msp_core::rules::CompiledItem>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RulesFile<'a> {
    input_rules: &'a AuthorizationRules,
    computed_rules: ComputedRules<'a>,
}

/// Writes a rules snapshot file after deleting the oldest so that at most [`MAX_RULES_FILES`] exist afterwards
/// (spec §4.9): exclusive, no-follow, 0640.
pub fn write_rules_file(
    log_dir: &Path,
    input: &AuthorizationRules,
    items: &Items,
    unix_nanos: i64,
) -> Result<String, StorageError> {
    let dir = SecureDir::open_or_create(log_dir, storage::LOG_DIR_MODE)?;
    let mut existing: Vec<String> = dir
        .list()?
        .into_iter()
        .filter(|n| n.starts_with(RULES_FILE_PREFIX) && n.ends_with(".json"))
        .collect();
    // The timestamp prefix sorts chronologically.
    existing.sort();
    let excess = (existing.len() + 1).saturating_sub(MAX_RULES_FILES);
    for name in existing.iter().take(excess) {
        dir.remove(name)?;
    }
    let doc = RulesFile {
        input_rules: input,
        computed_rules: ComputedRules {
            wireserver: items.wireserver.as_ref(),
            imds: items.imds.as_ref(),
            hostga: items.hostga.as_ref(),
        },
    };
    let name = rules_file_name(unix_nanos);
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    dir.write_atomic(&name, &bytes, storage::SHARED_FILE_MODE)?;
    Ok(name)
}

#[cfg(test)]
mod tests;
