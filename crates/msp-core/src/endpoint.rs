//! The three fabric endpoints (spec §1.1) and the per-endpoint mode (spec §2.6).
//!
//! Wire spellings are parsed here once; after this boundary code matches on enums, never on strings.

use std::fmt;

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
}
