//! The one configuration struct of `msp-host`: listen addresses, store path, admin token, limits and the VMs
//! it serves (address blocks → VM).
//!
//! Loaded from a JSON file (`--config`) with every key optional and unknown keys refused, or built in code
//! ([`HostConfig::dev`], [`HostConfig::test`]). Validation errors name the file and the field. This module
//! must never read the environment or bind a socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::registry::DeclaredVm;
use crate::vm::settings::ProxyAgentSettings;
use crate::vm::valid_vm_name;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

/// A VM served by this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Source address blocks of the VM (`10.0.0.4`, `10.0.0.0/24`); the longest matching prefix wins.
    pub addresses: Vec<Cidr>,
    /// Settings the VM starts with the first time it is seen; later changes go through the admin API and are
    /// kept in the store. default: MSP on, v2, WireServer and IMDS in enforce.
    #[serde(default)]
    pub settings: Option<ProxyAgentSettings>,
}

/// Configuration of one `msp-host` process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HostConfig {
    /// WireServer front end. default `168.63.129.16:80`; port 0 picks a free port.
    pub wireserver_listen: SocketAddr,
    /// HostGAPlugin front end. default `168.63.129.16:32526`.
    pub hostga_listen: SocketAddr,
    /// IMDS front end. default `169.254.169.254:80`.
    pub imds_listen: SocketAddr,
    /// Admin API; must be a loopback address. default `127.0.0.1:8787`.
    pub admin_listen: SocketAddr,
    /// The WireServer address the VMs use, named in the goal state's SharedConfig URL. default: the bound
    /// WireServer address.
    pub wireserver_endpoint: Option<SocketAddr>,
    /// SQLite store. default `/var/lib/msp-host/msp-host.db` (the directory is created 0700).
    pub store_path: PathBuf,
    /// Admin bearer token file; created (0600, 32 random bytes as hex) when missing. default
    /// `<store dir>/admin.token`. Ignored when `adminToken` is set.
    pub admin_token_file: Option<PathBuf>,
    /// Admin bearer token given inline (at least 16 characters). default: none, the file is used.
    pub admin_token: Option<String>,
    /// Freshness window W of `x-ms-azure-host-date`, seconds (spec §12.3). default 300.
    pub freshness_window_secs: u64,
    /// Time to receive a complete request head, also the keep-alive idle limit, seconds. default 30.
    pub header_timeout_secs: u64,
    /// Time to receive a request body, seconds. default 60.
    pub body_timeout_secs: u64,
    /// Concurrent connections per front end. default 16,384.
    pub max_connections: usize,
    /// Forward verified IMDS requests under a path prefix to a real metadata service instead of serving
    /// them. default: none, IMDS is served by this host.
    pub imds_upstream: Option<UpstreamConfig>,
    /// VMs and their address blocks.
    pub vms: Vec<VmConfig>,
}

/// An upstream metadata service that verified IMDS requests are forwarded to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// IP literal and port of the upstream service.
    pub address: SocketAddr,
    /// Requests whose path starts with this prefix are forwarded. default `/metadata/`.
    #[serde(default = "metadata_prefix")]
    pub path_prefix: String,
}

fn metadata_prefix() -> String {
    "/metadata/".to_owned()
}

/// The `--dev` WireServer address (DESIGN.md: tests and the demo use loopback).
pub const DEV_WIRESERVER: &str = "127.0.0.16:8080";
pub const DEV_HOSTGA: &str = "127.0.0.16:32526";
pub const DEV_IMDS: &str = "127.0.0.254:8080";
pub const DEV_ADMIN: &str = "127.0.0.1:8787";
/// The VM every loopback source belongs to under `--dev`.
pub const DEV_VM: &str = "dev";

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| unreachable!("built-in address literals parse"))
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            wireserver_listen: addr("168.63.129.16:80"),
            hostga_listen: addr("168.63.129.16:32526"),
            imds_listen: addr("169.254.169.254:80"),
            admin_listen: addr(DEV_ADMIN),
            wireserver_endpoint: None,
            store_path: PathBuf::from("/var/lib/msp-host/msp-host.db"),
            admin_token_file: None,
            admin_token: None,
            freshness_window_secs: 300,
            header_timeout_secs: 30,
            body_timeout_secs: 60,
            max_connections: 16_384,
            imds_upstream: None,
            vms: Vec::new(),
        }
    }
}

impl HostConfig {
    /// The `--dev` profile: loopback front ends (WireServer `127.0.0.16:8080`, HostGAPlugin
    /// `127.0.0.16:32526`, IMDS `127.0.0.254:8080`), admin on `127.0.0.1:8787`, the store under `state_dir`, and
    /// one VM `dev` for all of `127.0.0.0/8`.
    pub fn dev(state_dir: impl AsRef<Path>) -> HostConfig {
        let dir = state_dir.as_ref();
        HostConfig {
            wireserver_listen: addr(DEV_WIRESERVER),
            hostga_listen: addr(DEV_HOSTGA),
            imds_listen: addr(DEV_IMDS),
            admin_listen: addr(DEV_ADMIN),
            store_path: dir.join("store").join("msp-host.db"),
            vms: vec![VmConfig {
                name: DEV_VM.to_owned(),
                addresses: vec![
                    "127.0.0.0/8"
                        .parse()
                        .unwrap_or_else(|_| unreachable!("literal block parses")),
                ],
                settings: None,
            }],
            ..HostConfig::default()
        }
    }

    /// [`HostConfig::dev`] with every port 0, so parallel tests never collide; read the bound addresses
    /// from the running host.
    pub fn test(state_dir: impl AsRef<Path>) -> HostConfig {
        let mut c = HostConfig::dev(state_dir);
        for a in [
            &mut c.wireserver_listen,
            &mut c.hostga_listen,
            &mut c.imds_listen,
            &mut c.admin_listen,
        ] {
            a.set_port(0);
        }
        c
    }

    /// Reads a JSON configuration file; every key is optional, unknown keys are refused.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let cfg: HostConfig = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            file: file.clone(),
            message: e.to_string(),
        })?;
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Checks what serde cannot. `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| ConfigError::Field {
            file: file.to_owned(),
            field: field.to_owned(),
            message,
        };
        if !self.admin_listen.ip().is_loopback() {
            return Err(field(
                "adminListen",
                format!("{} is not a loopback address", self.admin_listen),
            ));
        }
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(field("adminToken", "must be at least 16 characters".into()));
        }
        if self.freshness_window_secs == 0 {
            return Err(field("freshnessWindowSecs", "must be positive".into()));
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return Err(field(
                "headerTimeoutSecs",
                "timeouts must be positive".into(),
            ));
        }
        if let Some(u) = &self.imds_upstream
            && !u.path_prefix.starts_with('/')
        {
            return Err(field(
                "imdsUpstream.pathPrefix",
                "must start with '/'".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(field("maxConnections", "must be positive".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, vm) in self.vms.iter().enumerate() {
            if !valid_vm_name(&vm.name) {
                return Err(field(
                    &format!("vms[{i}].name"),
                    "1-64 characters of letters, digits, '.', '_' or '-'".into(),
                ));
            }
            if !names.insert(vm.name.as_str()) {
                return Err(field(
                    &format!("vms[{i}].name"),
                    format!("duplicate VM {:?}", vm.name),
                ));
            }
            if vm.addresses.is_empty() {
                return Err(field(
                    &format!("vms[{i}].addresses"),
                    "at least one address block".into(),
                ));
            }
            if let Some(s) = &vm.settings {
                if let Some(e) = s.validate(|_| true).first() {
                    return Err(field(
                        &format!("vms[{i}].settings.{}", e.field),
                        e.message.clone(),
                    ));
                }
                if s.wire_server.profile.is_some()
                    || s.imds.profile.is_some()
                    || s.host_ga.profile.is_some()
                {
                    return Err(field(
                        &format!("vms[{i}].settings"),
                        "profiles are attached through the admin API, not the configuration".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn freshness_window(&self) -> Duration {
        Duration::from_secs(self.freshness_window_secs)
    }

    pub(crate) fn declared_vms(&self) -> Vec<DeclaredVm> {
        self.vms
            .iter()
            .map(|v| DeclaredVm {
                name: v.name.clone(),
                addresses: v.addresses.clone(),
                settings: v.settings.clone(),
            })
            .collect()
    }

    /// Where the admin token lives when it is not inline.
    pub fn token_file(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| {
            self.store_path
                .parent()
                .map_or_else(|| PathBuf::from("admin.token"), |d| d.join("admin.token"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_profile_is_loopback_with_a_default_vm() {
        let c = HostConfig::dev("/tmp/x");
        assert_eq!(c.wireserver_listen.to_string(), "127.0.0.16:8080");
        assert_eq!(c.hostga_listen.to_string(), "127.0.0.16:32526");
        assert_eq!(c.imds_listen.to_string(), "127.0.0.254:8080");
        assert_eq!(c.vms[0].addresses[0].to_string(), "127.0.0.0/8");
        c.validate("dev").unwrap();
        assert_eq!(HostConfig::test("/tmp/x").imds_listen.port(), 0);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"adminListen": "10.0.0.1:80"}"#).unwrap();
        let e = HostConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("adminListen"), "{e}");
        std::fs::write(&p, r#"{"bogus": 1}"#).unwrap();
        let e = HostConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("bogus"), "{e}");
        std::fs::write(&p, r#"{"vms": [{"name": "a", "addresses": ["nope"]}]}"#).unwrap();
        assert!(HostConfig::load(&p).is_err());
    }
}
