//! Destination classification (spec §5.4): an authority becomes a fabric endpoint or `Unknown`, from IP
//! literals only. This module never resolves a name: a registered name is `Unknown(name)`, full stop.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::CanonError;
use crate::Endpoint;
use crate::endpoint::{EndpointAddrs, unmap};

/// Longest registered name we classify (RFC 1035 §2.3.4); anything longer is `CANON_HOST`.
const MAX_NAME_LEN: usize = 253;
/// Longest label of a registered name (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Where a request goes, as far as the rules are concerned (spec §4.5, §5.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One of the configured fabric endpoints.
    Endpoint(Endpoint),
    /// Anything else: `ip:port` (`[v6]:port`) for addresses, the lowercased name for registered names.
    Unknown(String),
}

impl Destination {
    /// Classifies a socket address against the configured endpoints; IPv4-mapped IPv6 unwraps to IPv4.
    pub fn of_addr(addr: SocketAddr, addrs: &EndpointAddrs) -> Destination {
        match addrs.endpoint_at(addr) {
            Some(endpoint) => Destination::Endpoint(endpoint),
            None => Destination::Unknown(unmap(addr).to_string()),
        }
    }

    /// The endpoint, when this is one.
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Destination::Endpoint(e) => Some(*e),
            Destination::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Endpoint(e) => write!(f, "{e}"),
            Destination::Unknown(what) => write!(f, "Unknown({what})"),
        }
    }
}

/// Classifies an absolute-form authority (spec §5.2 step 3, §5.4): userinfo is refused, the port defaults to
/// 80, IP forms are parsed the `inet_aton` way and compared with `addrs`, names are never resolved.
pub fn classify_authority(
    authority: &[u8],
    addrs: &EndpointAddrs,
) -> Result<Destination, CanonError> {
    if let Some(at) = authority.iter().position(|&b| b == b'@') {
        // `host:port@evil` is a host confusion, `user@host` plain userinfo (spec §5.2 step 3).
        let before = authority.get(..at).unwrap_or_default();
        return Err(if before.contains(&b':') {
            CanonError::BadHost
        } else {
            CanonError::UserinfoPresent
        });
    }
    let (host, port) = split_host_port(authority)?;
    let port = parse_port(port)?;
    match host {
        Host::V6(text) => {
            let text = std::str::from_utf8(text).map_err(|_| CanonError::BadHost)?;
            let ip: Ipv6Addr = text.parse().map_err(|_| CanonError::BadHost)?;
            Ok(Destination::of_addr(
                SocketAddr::new(IpAddr::V6(ip), port),
                addrs,
            ))
        }
        Host::Other(text) if looks_numeric(text) => {
            let ip = parse_inet_aton(text).ok_or(CanonError::BadHost)?;
            Ok(Destination::of_addr(
                SocketAddr::new(IpAddr::V4(ip), port),
                addrs,
            ))
        }
        Host::Other(text) => registered_name(text).map(Destination::Unknown),
    }
}

enum Host<'a> {
    /// Inside `[` `]`.
    V6(&'a [u8]),
    /// A dotted or numeric IPv4 form, or a registered name.
    Other(&'a [u8]),
}

/// Splits `host[:port]` / `[v6][:port]`; the port slice is `None` when there is no `:`.
fn split_host_port(authority: &[u8]) -> Result<(Host<'_>, Option<&[u8]>), CanonError> {
    if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest
            .iter()
            .position(|&b| b == b']')
            .ok_or(CanonError::BadHost)?;
        let inside = rest.get(..close).unwrap_or_default();
        let after = rest.get(close + 1..).unwrap_or_default();
        let port = match after.split_first() {
            None => None,
            Some((b':', port)) => Some(port),
            Some(_) => return Err(CanonError::BadHost),
        };
        return Ok((Host::V6(inside), port));
    }
    let (host, port) = match authority.iter().position(|&b| b == b':') {
        Some(colon) => (
            authority.get(..colon).unwrap_or_default(),
            authority.get(colon + 1..),
        ),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(CanonError::BadHost);
    }
    Ok((Host::Other(host), port))
}

/// Absent or empty → 80; decimal 1–65535 → that port; anything else → `CANON_PORT` (spec §5.4).
fn parse_port(port: Option<&[u8]>) -> Result<u16, CanonError> {
    let digits = match port {
        None | Some(b"") => return Ok(80),
        Some(digits) => digits,
    };
    let mut value: u32 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(CanonError::BadPort);
        }
        value = value.saturating_mul(10).saturating_add(u32::from(b - b'0'));
    }
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(CanonError::BadPort),
    }
}

/// A numeric part: decimal digits, or `0x`/`0X` followed by hex digits (possibly none, refused later).
fn is_numeric_part(part: &[u8]) -> bool {
    match part {
        [b'0', b'x' | b'X', hex @ ..] => hex.iter().all(u8::is_ascii_hexdigit),
        _ => !part.is_empty() && part.iter().all(u8::is_ascii_digit),
    }
}

/// A host is numeric when its last non-empty dot-separated part is: `1.2.3.4`, `0xa9fea9fe`, but also
/// `foo.123`, which no name may look like (it would be read as an address by some resolvers).
fn looks_numeric(host: &[u8]) -> bool {
    host.split(|&b| b == b'.')
        .rev()
        .find(|p| !p.is_empty())
        .is_some_and(is_numeric_part)
}

/// `inet_aton`: 1–4 parts, decimal, `0x` hex or leading-`0` octal; the last part fills the remaining bytes and
/// every part must be in range. `None` for anything else (spec §5.4).
fn parse_inet_aton(host: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 4];
    let mut count = 0usize;
    for part in host.split(|&b| b == b'.') {
        let slot = parts.get_mut(count)?;
        *slot = parse_number(part)?;
        count += 1;
    }
    let (head, last) = match parts.get(..count)? {
        [head @ .., last] => (head, *last),
        [] => return None,
    };
    if head.iter().any(|&p| p > 0xFF) {
        return None;
    }
    // The last part fills the bytes the others left: 32, 24, 16 or 8 bits.
    let last_fits = match head.len() {
        0 => true,
        1 => last <= 0x00FF_FFFF,
        2 => last <= 0xFFFF,
        _ => last <= 0xFF,
    };
    if !last_fits {
        return None;
    }
    let high = head
        .iter()
        .zip([24u32, 16, 8])
        .fold(0u32, |acc, (&p, shift)| acc | p << shift);
    Some(Ipv4Addr::from(high | last))
}

/// One `inet_aton` number, at most `u32::MAX`.
fn parse_number(part: &[u8]) -> Option<u32> {
    let (radix, digits) = match part {
        [b'0', b'x' | b'X', hex @ ..] => (16, hex),
        [b'0', octal @ ..] if !octal.is_empty() => (8, octal),
        _ => (10, part),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &b| {
        let digit = char::from(b).to_digit(radix)?;
        acc.checked_mul(radix)?.checked_add(digit)
    })
}

/// A registered name: dot-separated labels of ASCII letters, digits, `-` and `_`, lowercased; never resolved.
fn registered_name(host: &[u8]) -> Result<String, CanonError> {
    let valid_label = |l: &[u8]| {
        (1..=MAX_LABEL_LEN).contains(&l.len())
            && l.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > MAX_NAME_LEN || !host.split(|&b| b == b'.').all(valid_label) {
        return Err(CanonError::BadHost);
    }
    Ok(String::from_utf8_lossy(host).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(authority: &str) -> Result<Destination, CanonError> {
        classify_authority(authority.as_bytes(), &EndpointAddrs::default())
    }

    #[test]
    fn inet_aton_forms() {
        let ip = |s: &str| parse_inet_aton(s.as_bytes()).map(|a| a.to_string());
        assert_eq!(ip("2852039166").as_deref(), Some("169.254.169.254"));
        assert_eq!(ip("0xA9FEA9FE").as_deref(), Some("169.254.169.254"));
        assert_eq!(
            ip("0251.0376.0251.0376").as_deref(),
            Some("169.254.169.254")
        );
        assert_eq!(ip("169.254.43518").as_deref(), Some("169.254.169.254"));
        assert_eq!(ip("169.16689662").as_deref(), Some("169.254.169.254"));
        assert_eq!(ip("0").as_deref(), Some("0.0.0.0"));
        for bad in [
            "169.254.169.256",
            "1.2.3.4.5",
            "08",
            "0x",
            "1..2",
            "1.2.3.",
            "4294967296",
            "1.16777216",
        ] {
            assert_eq!(ip(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_and_ports() {
        assert_eq!(
            class("Metadata.Azure.Internal"),
            Ok(Destination::Unknown("metadata.azure.internal".into()))
        );
        assert_eq!(class("foo.123"), Err(CanonError::BadHost));
        assert_eq!(class("a b"), Err(CanonError::BadHost));
        assert_eq!(class(""), Err(CanonError::BadHost));
        assert_eq!(class(":80"), Err(CanonError::BadHost));
        assert_eq!(class("[::1"), Err(CanonError::BadHost));
        assert_eq!(class("[::1]x"), Err(CanonError::BadHost));
        assert_eq!(class("[fe80::1%25eth0]"), Err(CanonError::BadHost));
        assert_eq!(
            class("169.254.169.254:"),
            Ok(Destination::Endpoint(Endpoint::Imds))
        );
        assert_eq!(
            class("169.254.169.254:080"),
            Ok(Destination::Endpoint(Endpoint::Imds))
        );
        assert_eq!(class("169.254.169.254:65536"), Err(CanonError::BadPort));
        assert_eq!(class("169.254.169.254:8a"), Err(CanonError::BadPort));
        assert_eq!(
            class("169.254.169.254:81"),
            Ok(Destination::Unknown("169.254.169.254:81".into()))
        );
        assert_eq!(
            class("[::1]:80"),
            Ok(Destination::Unknown("[::1]:80".into()))
        );
    }
}
