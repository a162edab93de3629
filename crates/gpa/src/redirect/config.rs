//! Configuration of the redirector: the slice of the agent configuration (spec §10.2) it needs. Plain data with
//! the spec's defaults; it never reads the environment or a file.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// Default `proxyListenAddress` (spec §1.2).
pub const DEFAULT_LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3080);

/// `redirectFailMode` (spec §7.5): what callers see while the agent is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectFailMode {
    /// Links die with the process; traffic then goes direct and unsigned (the host refuses it in enforce).
    #[default]
    Open,
    /// Links and maps are pinned in bpffs; callers get connection-refused until the agent is back.
    Closed,
}

impl RedirectFailMode {
    /// The configuration spelling: `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectFailMode::Open => "open",
            RedirectFailMode::Closed => "closed",
        }
    }

    /// Parses the configuration spelling, case-insensitively; `None` for anything else.
    pub fn parse(s: &str) -> Option<RedirectFailMode> {
        [RedirectFailMode::Open, RedirectFailMode::Closed]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
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
    fn fail_mode_spellings() {
        assert_eq!(
            RedirectFailMode::parse("Closed"),
            Some(RedirectFailMode::Closed)
        );
        assert_eq!(
            RedirectFailMode::parse("open"),
            Some(RedirectFailMode::Open)
        );
        assert_eq!(RedirectFailMode::parse("failClosedOnExit"), None);
        assert_eq!(
            RedirectConfig::default().listener.to_string(),
            "127.0.0.1:3080"
        );
    }
}
