//! Configuration of the redirector: the slice of the agent configuration (spec §10.2) it needs. Plain data with
//! the spec's defaults; it never reads the environment or a file.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// Default `proxyListenAddress` (spec §1.2).
pub const DEFAULT_LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3080);

/// `redirectFailMode` (spec §7.5), as the configuration file spells it: one enum for both.
pub use crate::config::RedirectFailMode;

/// The configuration spelling of a fail mode: `open` or `closed`.
pub fn fail_mode_name(mode: RedirectFailMode) -> &'static str {
    match mode {
        RedirectFailMode::Open => "open",
        RedirectFailMode::Closed => "closed",
    }
}

/// What [`Redirector::start`](super::Redirector) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// `cgroupRoot`: the one cgroup to attach to. Default: the cgroup2 mount named in `/proc/self/mountinfo`,
    /// else `/sys/fs/cgroup` (spec §7.1). Tests set a child cgroup they created.
    pub cgroup_root: Option<PathBuf>,
    /// `proxyListenAddress`: an IPv4 loopback address (default `127.0.0.1:3080`). Native IPv6 endpoints are sent
    /// to `[::1]` at the same port (spec §7.1).
    pub listener: SocketAddr,
    /// `ebpfFileFullPath`: load this object instead of the embedded one; it must be a regular file owned by root
    /// and not writable by group or others.
    pub object_path: Option<PathBuf>,
    /// `redirectFailMode` (default `open`).
    pub fail_mode: RedirectFailMode,
}

impl RedirectConfig {
    /// The redirector's part of the agent configuration (spec §10.2).
    pub fn from_agent_config(config: &crate::config::Config) -> RedirectConfig {
        RedirectConfig {
            cgroup_root: config.cgroup_root.clone(),
            listener: config.proxy_listen_address,
            object_path: config.ebpf_file_full_path.clone(),
            fail_mode: config.redirect_fail_mode,
        }
    }
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            cgroup_root: None,
            listener: SocketAddr::V4(DEFAULT_LISTENER),
            object_path: None,
            fail_mode: RedirectFailMode::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_agent_configuration() {
        let agent = crate::config::Config::default();
        assert_eq!(
            RedirectConfig::from_agent_config(&agent),
            RedirectConfig::default()
        );
        assert_eq!(
            RedirectConfig::default().listener.to_string(),
            "127.0.0.1:3080"
        );
        assert_eq!(fail_mode_name(RedirectFailMode::Closed), "closed");
    }
}
