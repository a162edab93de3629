//! The sample workload: one plain HTTP/1.1 `GET` to a metadata URL, the way an SDK or cloud-init would send it
//! (`Metadata: true`, no signature), reported as one JSON line per request.
//!
//! It runs as its own process (`msp-demo fetch`), launched into the intercepted cgroup or outside it, as root
//! or as an unprivileged user, so the kernel attributes the connection to it. Only IP-literal `http://` URLs
//! are accepted: the harness points it at loopback or at addresses inside a namespace it created. The exchange
//! is `msp_host::client`'s (bounded body, one timeout over the whole exchange).

use std::net::SocketAddr;

use msp_host::client::{self, Request, Response};
use serde::{Deserialize, Serialize};

/// Characters of the body kept in the report.
pub const BODY_PREVIEW: usize = 160;
/// The response marker the agent adds to relayed responses (spec §3.6).
pub const MARKER_HEADER: &str = "x-ms-azure-host-authorization";
/// The reason-code header of refusals (spec §8.5, §12.4).
pub const REASON_HEADER: &str = "x-msp-reason";

/// What one request got: a status, or the error that prevented one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchResult {
    /// HTTP status, when a response head arrived.
    pub status: Option<u16>,
    /// `x-msp-reason` of a refusal (agent or host).
    pub reason: Option<String>,
    /// The agent's response marker was present: the request went through the agent.
    pub via_agent: bool,
    /// The start of the body.
    pub body: String,
    /// Connect or I/O failure.
    pub error: Option<String>,
}

impl FetchResult {
    fn failed(error: impl ToString) -> FetchResult {
        FetchResult {
            status: None,
            reason: None,
            via_agent: false,
            body: String::new(),
            error: Some(error.to_string()),
        }
    }

    /// `200`, `403 RULE_DENY`, `refused: …`: for one-line reports.
    pub fn brief(&self) -> String {
        match (self.status, &self.reason, &self.error) {
            (Some(s), Some(r), _) => format!("{s} {r}"),
            (Some(s), None, _) => s.to_string(),
            (None, _, Some(e)) => format!("failed: {e}"),
            (None, _, None) => "no answer".to_owned(),
        }
    }
}

/// Why a URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?}: only http://<ip>:<port>/<path> URLs are accepted")]
    Shape(String),
}

/// Splits `http://<ip>[:<port>]/<target>` into the address and the request-target.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), UrlError> {
    let bad = || UrlError::Shape(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, target) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .or_else(|_| {
            authority
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 80))
        })
        .map_err(|_| bad())?;
    Ok((addr, target.to_owned()))
}

/// The `Host` header for `addr` (spec §1.3: the port only when it is not 80).
fn host_header(addr: SocketAddr) -> String {
    match addr.port() {
        80 => addr.ip().to_string(),
        _ => addr.to_string(),
    }
}

/// Sends one `GET` with `Metadata: true` on a new connection and reads the whole response.
pub async fn get(addr: SocketAddr, target: &str) -> FetchResult {
    let request = Request::new("GET", target)
        .header("Host", &host_header(addr))
        .header("Metadata", "true")
        .header("Connection", "close");
    match client::send(addr, None, &request).await {
        Ok(response) => FetchResult::from(&response),
        Err(e) => FetchResult::failed(e),
    }
}

fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(BODY_PREVIEW)
        .collect()
}

impl From<&Response> for FetchResult {
    fn from(r: &Response) -> FetchResult {
        FetchResult {
            status: Some(r.status),
            reason: r.header(REASON_HEADER).map(str::to_owned),
            via_agent: r.header(MARKER_HEADER).is_some(),
            body: preview(&r.body),
            error: None,
        }
    }
}

/// Parses a response head as `curl -D -` prints it.
pub fn parse_response(raw: &[u8]) -> FetchResult {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let body_start = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => raw.len(),
        Err(e) => return FetchResult::failed(format!("malformed response: {e}")),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    FetchResult {
        status: response.code,
        reason: header(REASON_HEADER),
        via_agent: header(MARKER_HEADER).is_some(),
        body: preview(raw.get(body_start..).unwrap_or_default()),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_an_ip_literal() {
        let (addr, target) = parse_url("http://169.254.169.254/metadata/instance?a=b").unwrap();
        assert_eq!(addr.to_string(), "169.254.169.254:80");
        assert_eq!(target, "/metadata/instance?a=b");
        let (addr, target) = parse_url("http://127.0.0.254:8080").unwrap();
        assert_eq!((addr.port(), target.as_str()), (8080, "/"));
        assert!(parse_url("http://metadata.example/x").is_err());
        assert!(parse_url("https://127.0.0.1/x").is_err());
    }

    #[test]
    fn responses_yield_status_reason_and_marker() {
        let r = parse_response(
            b"HTTP/1.1 403 Forbidden\r\nx-msp-reason: RULE_DENY\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (Some(403), Some("RULE_DENY"))
        );
        assert!(!r.via_agent);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nx-ms-azure-host-authorization: value\r\n\r\n{\"a\":1}",
        );
        assert_eq!(
            (r.status, r.via_agent, r.body.as_str()),
            (Some(200), true, "{\"a\":1}")
        );
        assert_eq!(parse_response(b"garbage\r\n\r\n").status, None);
    }
}
