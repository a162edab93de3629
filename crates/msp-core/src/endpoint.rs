//! The three fabric endpoints (spec §1.1) and the per-endpoint mode (spec §2.6).
//!
//! Wire spellings are parsed here once; after this boundary code matches on enums, never on strings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A fabric endpoint: a destination the agent intercepts and the host serves (spec §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `168.63.129.16:80` by default.
    WireServer,
    /// `168.63.129.16:32526` by default; follows the WireServer mode, rules and id (spec §2.6).
    HostGaPlugin,
    /// `169.254.169.254:80` by default.
    Imds,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::WireServer, Endpoint::HostGaPlugin, Endpoint::Imds];

    /// The label used in state strings and telemetry modules (spec §1.1).
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::WireServer => "WireServer",
            Endpoint::HostGaPlugin => "HostGA",
            Endpoint::Imds => "IMDS",
        }
    }

    /// WireServer and HostGAPlugin accept elevated callers only (spec §4.5).
    pub fn elevated_only(self) -> bool {
        matches!(self, Endpoint::WireServer | Endpoint::HostGaPlugin)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How an endpoint is protected (spec §2.6, §4.6). The single source of truth for the state string,
/// redirection and authorization.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Not redirected, rules not evaluated, host accepts unsigned requests.
    #[default]
    Disabled,
    /// Redirected and signed; denials are recorded and forwarded; the host logs failures.
    Audit,
    /// Redirected and signed; denials are refused; the host rejects unsigned requests.
    Enforce,
}

impl Mode {
    /// Parses a wire mode: trimmed, case-insensitive (spec §4.1). `None` for anything else.
    pub fn parse(s: &str) -> Option<Mode> {
        let s = s.trim();
        [Mode::Disabled, Mode::Audit, Mode::Enforce]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
    }

    /// Lowercase wire spelling: `disabled`, `audit`, `enforce`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disabled => "disabled",
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }

    /// Capitalised spelling used in the state string and computed rules (spec §2.4, §4.9).
    pub fn title(self) -> &'static str {
        match self {
            Mode::Disabled => "Disabled",
            Mode::Audit => "Audit",
            Mode::Enforce => "Enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured address of each fabric endpoint (spec §1.3): one source for redirection, the authorizer's
/// destination table and destination classification (spec §5.4). Defaults are the real addresses of §1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointAddrs {
    /// WireServer, default `168.63.129.16:80`.
    pub wireserver: SocketAddr,
    /// HostGAPlugin, default `168.63.129.16:32526`.
    pub hostga: SocketAddr,
    /// IMDS, default `169.254.169.254:80`.
    pub imds: SocketAddr,
}

impl Default for EndpointAddrs {
    fn default() -> Self {
        let fabric = IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16));
        EndpointAddrs {
            wireserver: SocketAddr::new(fabric, 80),
            hostga: SocketAddr::new(fabric, 32526),
            imds: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
        }
    }
}

impl EndpointAddrs {
    /// The configured address of `endpoint`.
    pub fn addr(&self, endpoint: Endpoint) -> SocketAddr {
        match endpoint {
            Endpoint::WireServer => self.wireserver,
            Endpoint::HostGaPlugin => self.hostga,
            Endpoint::Imds => self.imds,
        }
    }

    /// The endpoint configured at `addr`, if any. IPv4-mapped IPv6 addresses compare as their IPv4 form
    /// (spec §5.4); the first of WireServer, HostGAPlugin, IMDS wins if two are configured alike.
    pub fn endpoint_at(&self, addr: SocketAddr) -> Option<Endpoint> {
        let want = unmap(addr);
        Endpoint::ALL
            .into_iter()
            .find(|&e| unmap(self.addr(e)) == want)
    }
}

/// `[::ffff:a.b.c.d]:p` → `a.b.c.d:p`; any other address unchanged (spec §5.4).
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parse_is_trimmed_and_case_insensitive() {
        assert_eq!(Mode::parse(" Enforce "), Some(Mode::Enforce));
        assert_eq!(Mode::parse("AUDIT"), Some(Mode::Audit));
        assert_eq!(Mode::parse("disabled"), Some(Mode::Disabled));
        assert_eq!(Mode::parse("enforced"), None);
        assert_eq!(Mode::parse(""), None);
    }

    #[test]
    fn default_addrs_are_spec_1_1() {
        let a = EndpointAddrs::default();
        assert_eq!(a.wireserver.to_string(), "168.63.129.16:80");
        assert_eq!(a.hostga.to_string(), "168.63.129.16:32526");
        assert_eq!(a.imds.to_string(), "169.254.169.254:80");
        assert_eq!(a.endpoint_at(a.hostga), Some(Endpoint::HostGaPlugin));
        let mapped: SocketAddr = "[::ffff:169.254.169.254]:80".parse().unwrap();
        assert_eq!(a.endpoint_at(mapped), Some(Endpoint::Imds));
        assert_eq!(a.endpoint_at("169.254.169.254:81".parse().unwrap()), None);
    }
}
