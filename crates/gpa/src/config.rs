//! The agent's configuration file (spec §10): one typed struct, read once at start and passed down explicitly.
//!
//! Loading never panics: a missing `--config` file, unreadable or invalid JSON, a value of the wrong type, an
//! unknown key, an endpoint that is not an IP literal with a port, or a non-loopback listener each stop the agent
//! with a [`ConfigError`] naming the file and the key (conf 3, 89). This module must never read the environment
//! except through the [`Env`] it is given, and never hold global state.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The system-wide configuration file (spec §10.1).
pub const SYSTEM_CONFIG_PATH: &str = "/etc/azure/proxy-agent.json";
/// The fallback next to the executable (spec §10.1).
pub const EXE_DIR_CONFIG_NAME: &str = "proxy-agent.json";
/// A configuration file larger than this is refused, in bytes (bounded input, STYLE rule 15).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Where the fabric endpoints are (spec §1.3): one source for redirect policy, destination table and the `Host`
/// header of the agent's own calls.
pub use msp_core::endpoint::EndpointAddrs;

/// Why the configuration could not be used. Every variant names the file; every key-specific one the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{file}: configuration file not found")]
    Missing { file: PathBuf },
    #[error("{file}: cannot read the configuration file: {source}")]
    Unreadable {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { file: PathBuf },
    #[error("{file}: not a JSON object: {message}")]
    InvalidJson { file: PathBuf, message: String },
    #[error("{file}: unknown key `{key}`")]
    UnknownKey { file: PathBuf, key: String },
    #[error("{file}: key `{key}`: {message}")]
    InvalidValue {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{file}: key `{key}`: {value:?} is not an IP literal with a port (host names are refused)"
    )]
    NotIpLiteral {
        file: PathBuf,
        key: String,
        value: String,
    },
    #[error("{file}: key `{key}`: {value} is not a loopback address")]
    ListenerNotLoopback {
        file: PathBuf,
        key: String,
        value: SocketAddr,
    },
    #[error("{file}: key `{key}`: must be at least 1")]
    Zero { file: PathBuf, key: String },
    #[error("{file}: key `{key}`: {value} is more than the largest allowed, {max} ({meaning})")]
    ValueTooLarge {
        file: PathBuf,
        key: String,
        value: u64,
        max: u64,
        meaning: &'static str,
    },
}

/// A telemetry/log level as the configuration spells it (`Error`, `Warn`, `Info`, `Debug`, `Trace`;
/// case-insensitive on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn parse(s: &str) -> Option<LogLevel> {
        [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .into_iter()
        .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "Error",
            LogLevel::Warn => "Warn",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
        }
    }

    /// The `tracing` level of this level.
    pub fn level(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }

    /// The `tracing` level filter of this level.
    pub fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LogLevel::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?} is not Error, Warn, Info, Debug or Trace"))
        })
    }
}

/// What happens to redirection when the agent dies (spec §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectFailMode {
    /// Links and maps go with the process: traffic goes direct and unsigned (the host refuses it in enforce).
    #[default]
    Open,
    /// Links and maps are pinned in bpffs: callers get connection-refused while the agent is down.
    Closed,
}

/// The whole configuration file (spec §10.2). Every key is optional; the defaults are those of the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Logs, `status.json` and rules snapshot files. Default `/var/log/azure-proxy-agent`; empty → none of these
    /// files are written.
    pub log_folder: PathBuf,
    /// Telemetry spool (spec §11.2). Default `/var/log/azure-proxy-agent/events`.
    pub event_folder: PathBuf,
    /// Key directory (0700); the rules directory is its sibling `rules`. Default `/var/lib/azure-proxy-agent/keys`.
    pub latch_key_folder: PathBuf,
    /// Status file interval, in seconds. Default 60.
    pub monitor_interval_in_seconds: u64,
    /// Key keeper poll interval, in seconds (spec §2.8). Default 15.
    pub poll_key_status_interval_in_seconds: u64,
    /// Cap on spooled event files. Default 30.
    pub max_event_file_count: usize,
    /// Load this eBPF object instead of the embedded one (root-owned, not group/other writable). Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebpf_file_full_path: Option<PathBuf>,
    /// Accepted for compatibility; informative only. Default `ebpf_cgroup.o`.
    pub ebpf_program_name: String,
    /// Level of `ProxyAgent.log`. Default `Info`.
    pub file_log_level: LogLevel,
    /// Logs at or above this level also become telemetry events. Default unset (none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_log_level_for_events: Option<LogLevel>,
    /// Level for the system journal (standard error under systemd). Default `Info`.
    pub file_log_level_for_system_events: LogLevel,
    /// The one cgroup the hooks attach to (tests: a child cgroup). Default unset: the discovered root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
    /// Per-request stage traces in the log. Default false.
    pub enable_http_proxy_trace: bool,
    /// Accepted and ignored (spec §5.1); a value other than `enforce` is logged as a warning. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical_request_mode: Option<String>,
    /// Accepted and ignored, as in the reference.
    #[serde(
        rename = "hostGAPluginSupport",
        skip_serializing_if = "Option::is_none"
    )]
    pub host_ga_plugin_support: Option<serde_json::Value>,
    /// Accepted and ignored, as in the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_server_support: Option<serde_json::Value>,
    /// Accepted and ignored, as in the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<serde_json::Value>,
    /// WireServer, an IP literal with a port (spec §1.3). Default `168.63.129.16:80`.
    pub wire_server_endpoint: SocketAddr,
    /// HostGAPlugin, an IP literal with a port. Default `168.63.129.16:32526`.
    #[serde(rename = "hostGAPluginEndpoint")]
    pub host_ga_plugin_endpoint: SocketAddr,
    /// IMDS, an IP literal with a port. Default `169.254.169.254:80`.
    pub imds_endpoint: SocketAddr,
    /// The proxy listener, a loopback IP literal with a port (spec §1.2). Default `127.0.0.1:3080`.
    pub proxy_listen_address: SocketAddr,
    /// Bound on one whole own host call, in seconds (spec §2.1). Default 30.
    pub host_call_timeout_in_seconds: u64,
    /// Bound on a complete request head, in seconds (spec §8.4). Default 10.
    pub request_header_timeout_in_seconds: u64,
    /// Idle keep-alive bound, in seconds (spec §8.4). Default 60.
    pub idle_connection_timeout_in_seconds: u64,
    /// Upstream connect bound, in seconds (spec §8.4). Default 5.
    pub upstream_connect_timeout_in_seconds: u64,
    /// Upstream response-head bound, in seconds (spec §8.4). Default 60.
    pub upstream_response_timeout_in_seconds: u64,
    /// Concurrent proxied connections (spec §8.4). Default 16384.
    pub max_concurrent_connections: u64,
    /// `open` or `closed` (spec §7.5). Default `open`.
    pub redirect_fail_mode: RedirectFailMode,
    /// Send the status document to `msp-host` (spec §9.3). Default false.
    pub report_status_to_host: bool,
    /// The longest a proxied connection polls its socket for a request's or a response's first bytes before it
    /// sleeps, in microseconds; 0 turns polling off. Only a connection alone on its lane polls, one at a time, and
    /// none on a single CPU. Default 200, at most 1000 (docs/DECISIONS.md).
    pub proxy_busy_poll_in_microseconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_folder: PathBuf::from("/var/log/azure-proxy-agent"),
            event_folder: PathBuf::from("/var/log/azure-proxy-agent/events"),
            latch_key_folder: PathBuf::from("/var/lib/azure-proxy-agent/keys"),
            monitor_interval_in_seconds: 60,
            poll_key_status_interval_in_seconds: 15,
            max_event_file_count: 30,
            ebpf_file_full_path: None,
            ebpf_program_name: "ebpf_cgroup.o".to_owned(),
            file_log_level: LogLevel::Info,
            file_log_level_for_events: None,
            file_log_level_for_system_events: LogLevel::Info,
            cgroup_root: None,
            enable_http_proxy_trace: false,
            canonical_request_mode: None,
            host_ga_plugin_support: None,
            wire_server_support: None,
            imds_support: None,
            wire_server_endpoint: SocketAddr::from(([168, 63, 129, 16], 80)),
            host_ga_plugin_endpoint: SocketAddr::from(([168, 63, 129, 16], 32526)),
            imds_endpoint: SocketAddr::from(([169, 254, 169, 254], 80)),
            proxy_listen_address: SocketAddr::from(([127, 0, 0, 1], 3080)),
            host_call_timeout_in_seconds: 30,
            request_header_timeout_in_seconds: 10,
            idle_connection_timeout_in_seconds: 60,
            upstream_connect_timeout_in_seconds: 5,
            upstream_response_timeout_in_seconds: 60,
            max_concurrent_connections: 16_384,
            redirect_fail_mode: RedirectFailMode::Open,
            report_status_to_host: false,
            proxy_busy_poll_in_microseconds: 200,
        }
    }
}

/// The environment, as the loader sees it: `%VAR%` expansion and nothing else (a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Keys whose values must be IP literals with ports (spec §1.3).
const ENDPOINT_KEYS: [&str; 4] = [
    "wireServerEndpoint",
    "hostGAPluginEndpoint",
    "imdsEndpoint",
    "proxyListenAddress",
];

/// Keys that must be ≥ 1: a zero interval would spin, a zero timeout would fail every call.
/// The largest interval or timeout the configuration accepts, in seconds: one year. Longer ones mean "never" in
/// practice, and every deadline the agent computes from them stays far from what the clocks can hold.
pub const MAX_SECONDS: u64 = 365 * 86_400;

/// The longest `proxyBusyPollInMicroseconds`, in microseconds (1 ms): polling is for answers that come within
/// microseconds, and a longer poll would hold a lane's thread, and a vCPU, for longer than a wake-up costs.
pub const MAX_BUSY_POLL_MICROS: u64 = 1_000;

const NON_ZERO_KEYS: [&str; 8] = [
    "monitorIntervalInSeconds",
    "pollKeyStatusIntervalInSeconds",
    "hostCallTimeoutInSeconds",
    "requestHeaderTimeoutInSeconds",
    "idleConnectionTimeoutInSeconds",
    "upstreamConnectTimeoutInSeconds",
    "upstreamResponseTimeoutInSeconds",
    "maxConcurrentConnections",
];

impl Config {
    /// Loads the configuration per spec §10.1: `explicit` must exist; without it the system file, then the file
    /// next to the executable, then the defaults. Returns the file used, if any.
    pub fn load(
        explicit: Option<&Path>,
        env: &dyn Env,
    ) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let file = match explicit {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Missing {
                        file: path.to_owned(),
                    });
                }
                path.to_owned()
            }
            None => match default_locations().into_iter().find(|p| p.is_file()) {
                Some(p) => p,
                None => return Ok((Config::default(), None)),
            },
        };
        let bytes = read_bounded(&file)?;
        let config = Config::from_json(&file, &bytes, env)?;
        Ok((config, Some(file)))
    }

    /// Parses and validates one configuration document; `file` only names it in errors.
    pub fn from_json(file: &Path, bytes: &[u8], env: &dyn Env) -> Result<Config, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::InvalidJson {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(ConfigError::InvalidJson {
                file: file.to_owned(),
                message: "the top level is not an object".to_owned(),
            });
        };
        for value in object.values_mut() {
            expand_strings(value, env);
        }
        // One key at a time first, so an error always names its key (serde's own messages do not).
        for (key, value) in &object {
            let mut single = serde_json::Map::new();
            single.insert(key.clone(), value.clone());
            if let Err(e) = serde_json::from_value::<Config>(serde_json::Value::Object(single)) {
                return Err(key_error(file, key, value, &e));
            }
        }
        let config: Config = serde_json::from_value(serde_json::Value::Object(object.clone()))
            .map_err(|e| ConfigError::InvalidJson {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let listener = self.proxy_listen_address;
        if !listener.ip().is_loopback() {
            return Err(ConfigError::ListenerNotLoopback {
                file: file.to_owned(),
                key: "proxyListenAddress".to_owned(),
                value: listener,
            });
        }
        let numbers = [
            self.monitor_interval_in_seconds,
            self.poll_key_status_interval_in_seconds,
            self.host_call_timeout_in_seconds,
            self.request_header_timeout_in_seconds,
            self.idle_connection_timeout_in_seconds,
            self.upstream_connect_timeout_in_seconds,
            self.upstream_response_timeout_in_seconds,
            self.max_concurrent_connections,
        ];
        if let Some((key, _)) = NON_ZERO_KEYS.iter().zip(numbers).find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero {
                file: file.to_owned(),
                key: (*key).to_owned(),
            });
        }
        // Every key but the connection cap is in seconds.
        let too_large = NON_ZERO_KEYS
            .iter()
            .zip(numbers)
            .find(|(k, v)| k.ends_with("InSeconds") && *v > MAX_SECONDS);
        if let Some((key, value)) = too_large {
            return Err(ConfigError::ValueTooLarge {
                file: file.to_owned(),
                key: (*key).to_owned(),
                value,
                max: MAX_SECONDS,
                meaning: "one year",
            });
        }
        if self.proxy_busy_poll_in_microseconds > MAX_BUSY_POLL_MICROS {
            return Err(ConfigError::ValueTooLarge {
                file: file.to_owned(),
                key: "proxyBusyPollInMicroseconds".to_owned(),
                value: self.proxy_busy_poll_in_microseconds,
                max: MAX_BUSY_POLL_MICROS,
                meaning: "1 ms",
            });
        }
        Ok(())
    }

    /// The defaults as pretty JSON (`gpa config --print-defaults`).
    pub fn defaults_json() -> String {
        serde_json::to_string_pretty(&Config::default()).unwrap_or_default()
    }

    pub fn endpoints(&self) -> EndpointAddrs {
        EndpointAddrs {
            wireserver: self.wire_server_endpoint,
            hostga: self.host_ga_plugin_endpoint,
            imds: self.imds_endpoint,
        }
    }

    /// `logFolder`, or `None` when it is empty (spec §10.2: no log, status or rules files).
    pub fn log_dir(&self) -> Option<&Path> {
        (!self.log_folder.as_os_str().is_empty()).then_some(self.log_folder.as_path())
    }

    /// The rules directory: the sibling `rules` of the key directory (spec §2.8, §2.11).
    pub fn rules_dir(&self) -> PathBuf {
        match self.latch_key_folder.parent() {
            Some(parent) => parent.join("rules"),
            None => PathBuf::from("rules"),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_key_status_interval_in_seconds)
    }

    pub fn monitor_interval(&self) -> Duration {
        Duration::from_secs(self.monitor_interval_in_seconds)
    }

    pub fn host_call_timeout(&self) -> Duration {
        Duration::from_secs(self.host_call_timeout_in_seconds)
    }
}

/// `/etc/azure/proxy-agent.json`, then `<exe dir>/proxy-agent.json` (spec §10.1).
pub fn default_locations() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(SYSTEM_CONFIG_PATH)];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        out.push(dir.join(EXE_DIR_CONFIG_NAME));
    }
    out
}

fn read_bounded(file: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let unreadable = |source| ConfigError::Unreadable {
        file: file.to_owned(),
        source,
    };
    let f = std::fs::File::open(file).map_err(unreadable)?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            file: file.to_owned(),
        });
    }
    Ok(bytes)
}

fn key_error(
    file: &Path,
    key: &str,
    value: &serde_json::Value,
    e: &serde_json::Error,
) -> ConfigError {
    let message = e.to_string();
    if message.starts_with("unknown field") {
        return ConfigError::UnknownKey {
            file: file.to_owned(),
            key: key.to_owned(),
        };
    }
    if ENDPOINT_KEYS.contains(&key)
        && let Some(text) = value.as_str()
    {
        return ConfigError::NotIpLiteral {
            file: file.to_owned(),
            key: key.to_owned(),
            value: text.to_owned(),
        };
    }
    ConfigError::InvalidValue {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// Expands `%VAR%` in every string of `value` (spec §10.1). An undefined variable is left as written.
fn expand_strings(value: &mut serde_json::Value, env: &dyn Env) {
    match value {
        serde_json::Value::String(s) => *s = expand(s, env),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| expand_strings(v, env)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| expand_strings(v, env)),
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Env) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('%') {
        let (before, from_pct) = rest.split_at(start);
        out.push_str(before);
        let after = &from_pct[1..];
        match after.find('%') {
            Some(end) if end > 0 => {
                let name = &after[..end];
                match env.var(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push('%');
                        out.push_str(name);
                        out.push('%');
                    }
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
