//! The one URL canonicaliser of this profile (spec §5): request-targets and privilege patterns alike.
//!
//! Pipeline (spec §5.2), stopping at the first error: step 0 [`traversal_guard`] (run by the proxy on every
//! request, outside [`canonicalize`]); 1 scheme; 2 method; 3 userinfo; 4 destination ([`classify_authority`]);
//! 5 path ([`canonicalize_path`]); 6 query ([`CanonicalQuery`]). Every failure is a typed [`CanonError`] whose
//! [`reason`](CanonError::reason) is the wire code.
//!
//! This module must never: alter the bytes that are forwarded or signed (signatures use the raw path, spec
//! §3.3), resolve a host name, replace invalid UTF-8, decode more than once, or panic on any input.

mod decode;
mod error;
mod host;
mod path;
mod query;
mod target;

use std::fmt;

pub use decode::traversal_guard;
pub use error::CanonError;
pub use host::{Destination, classify_authority};
pub use path::{CanonicalPath, canonicalize_path, canonicalize_pattern};
pub use query::{CanonicalQuery, decode_component};
pub use target::raw_path;

use crate::endpoint::EndpointAddrs;

/// A method the canonicaliser accepts (spec §5.2 step 2); matching is case-sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
}

impl Method {
    /// Every accepted method.
    pub const ALL: [Method; 7] = [
        Method::Get,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Head,
        Method::Options,
        Method::Patch,
    ];

    /// Parses an exact, uppercase method token; `get` is not `GET`.
    pub fn parse(token: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == token)
    }

    /// The method token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request in canonical form: what the rules match (spec §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalRequest {
    pub method: Method,
    /// The connection's destination (origin-form), equal to the absolute-form authority's class.
    pub destination: Destination,
    pub path: CanonicalPath,
    pub query: CanonicalQuery,
}

impl CanonicalRequest {
    /// The canonical origin-form target: rendered path and query (spec §5.2, §5.3).
    pub fn render_target(&self) -> String {
        format!("{}{}", self.path, self.query)
    }
}

/// One request as the proxy received it, with the connection's original destination (spec §4.5).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method token as sent.
    pub method: &'a str,
    /// The request-target as sent (origin-form or absolute-form).
    pub target: &'a [u8],
    /// The original destination of the connection, from the attribution record (spec §7.3).
    pub dest: &'a Destination,
    /// The configured endpoint addresses, to classify an absolute-form authority.
    pub addrs: &'a EndpointAddrs,
}

impl Request<'_> {
    /// [`canonicalize`] for this request.
    pub fn canonicalize(&self) -> Result<CanonicalRequest, CanonError> {
        canonicalize(self.method, self.target, self.dest, self.addrs)
    }
}

/// Runs steps 1–6 of spec §5.2 on a request-target. `conn_dest` is the connection's original destination: an
/// origin-form target inherits it, an absolute-form target must classify the same (else `CANON_HOST`, §5.4).
pub fn canonicalize(
    method: &str,
    target: &[u8],
    conn_dest: &Destination,
    addrs: &EndpointAddrs,
) -> Result<CanonicalRequest, CanonError> {
    let parts = target::split_target(target)?; // 1
    let method = Method::parse(method).ok_or(CanonError::MethodNotAllowed)?; // 2
    if let Some(authority) = parts.authority {
        // 3, 4
        if classify_authority(authority, addrs)? != *conn_dest {
            return Err(CanonError::HostMismatch);
        }
    }
    let path = canonicalize_path(parts.path)?; // 5
    let query = match parts.query {
        Some(raw) => CanonicalQuery::parse(raw)?,
        None => CanonicalQuery::default(),
    }; // 6
    Ok(CanonicalRequest {
        method,
        destination: conn_dest.clone(),
        path,
        query,
    })
}

#[cfg(test)]
mod tests;
