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
pub use path::{CanonicalPath, canonicalize_path, canonicalize_path_into, canonicalize_pattern};
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

/// An empty slot for [`canonicalize_into`]: `GET /` to an unknown destination, never the result of a request.
impl Default for CanonicalRequest {
    fn default() -> Self {
        CanonicalRequest {
            method: Method::Get,
            destination: Destination::Unknown(String::new()),
            path: CanonicalPath::default(),
            query: CanonicalQuery::default(),
        }
    }
}

impl CanonicalRequest {
    /// Back to [`CanonicalRequest::default`], keeping the path's and the query's buffers.
    pub fn clear(&mut self) {
        self.method = Method::Get;
        self.destination = Destination::Unknown(String::new());
        self.path.clear();
        self.query.clear();
    }

    /// Bytes of heap the slot keeps between requests: its path's and query's buffers.
    pub fn capacity_bytes(&self) -> usize {
        self.path.capacity_bytes() + self.query.capacity_bytes()
    }

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

    /// [`canonicalize_into`] for this request.
    pub fn canonicalize_into(&self, out: &mut CanonicalRequest) -> Result<(), CanonError> {
        canonicalize_into(self.method, self.target, self.dest, self.addrs, out)
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
    let mut out = CanonicalRequest::default();
    canonicalize_into(method, target, conn_dest, addrs, &mut out)?;
    Ok(out)
}

/// [`canonicalize`] into `out`, reusing its path and query buffers, so that a proxy that keeps one
/// [`CanonicalRequest`] per request slot canonicalises without allocating. After an error `out` is cleared
/// ([`CanonicalRequest::clear`]): no part of the failed request, or of an earlier one, is left to match.
pub fn canonicalize_into(
    method: &str,
    target: &[u8],
    conn_dest: &Destination,
    addrs: &EndpointAddrs,
    out: &mut CanonicalRequest,
) -> Result<(), CanonError> {
    let filled = out.fill(method, target, conn_dest, addrs);
    if filled.is_err() {
        out.clear();
    }
    filled
}

impl CanonicalRequest {
    /// Steps 1–6 into `self`; on an error, part of `self` may already hold the new request.
    fn fill(
        &mut self,
        method: &str,
        target: &[u8],
        conn_dest: &Destination,
        addrs: &EndpointAddrs,
    ) -> Result<(), CanonError> {
        let parts = target::split_target(target)?; // 1
        self.method = Method::parse(method).ok_or(CanonError::MethodNotAllowed)?; // 2
        if let Some(authority) = parts.authority {
            // 3, 4
            if classify_authority(authority, addrs)? != *conn_dest {
                return Err(CanonError::HostMismatch);
            }
        }
        canonicalize_path_into(parts.path, &mut self.path)?; // 5
        match parts.query {
            Some(raw) => self.query.parse_into(raw)?,
            None => self.query.clear(),
        } // 6
        self.destination.clone_from(conn_dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
