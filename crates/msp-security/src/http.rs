//! Raw HTTP for the attacks a client library would normalise away: exact bytes out, the response parsed
//! strictly (status, headers, `Content-Length` body) and the rest of the stream kept, so a test can show that a
//! smuggled second request got no answer of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most header fields parsed in a response.
const MAX_FIELDS: usize = 64;

/// One parsed response, and the bytes that followed it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes after this response (a second response would start here).
    pub rest: Vec<u8>,
}

impl HttpResponse {
    /// Parses the first response in `bytes`; `None` when there is no complete head.
    pub fn parse(bytes: &[u8]) -> Option<HttpResponse> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(head) = resp.parse(bytes).ok()? else {
            return None;
        };
        let status = resp.code?;
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let after = bytes.get(head..).unwrap_or_default();
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(after.len());
        Some(HttpResponse {
            status,
            headers,
            body: after.get(..len).unwrap_or_default().to_vec(),
            rest: after.get(len..).unwrap_or_default().to_vec(),
        })
    }

    /// The value of `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `x-msp-reason` code.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-msp-reason")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts status, reason code and `Connection: close`: the shape of every refusal the proxy generates
    /// (spec §8.5).
    pub fn assert_refusal(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "status of {self:?}");
        assert_eq!(self.reason(), Some(reason), "reason of {self:?}");
        assert_eq!(
            self.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("close"),
            "Connection of {self:?}"
        );
    }
}

/// What a raw exchange saw: every byte the peer sent, and whether it closed within the time.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl Exchange {
    pub fn response(&self) -> HttpResponse {
        HttpResponse::parse(&self.bytes).unwrap_or_else(|| {
            panic!(
                "no HTTP response in {:?}",
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    /// How many responses the bytes hold (status lines at response boundaries).
    pub fn response_count(&self) -> usize {
        let mut n = 0;
        let mut rest = self.bytes.clone();
        while let Some(r) = HttpResponse::parse(&rest) {
            n += 1;
            rest = r.rest;
        }
        n
    }
}

/// Sends `bytes` from the test process (not redirected) and reads until close or `read_for`.
pub async fn exchange(to: SocketAddr, bytes: &[u8], read_for: Duration) -> Exchange {
    let mut stream = TcpStream::connect(to).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    read_until_close(&mut stream, read_for).await
}

/// Reads until EOF (or a reset) or `read_for`.
pub async fn read_until_close(stream: &mut TcpStream, read_for: Duration) -> Exchange {
    let deadline = Instant::now() + read_for;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => {
                return Exchange {
                    bytes,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Exchange {
                    bytes,
                    closed: true,
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

/// A request with `Host: <to>`, `Metadata: true` and `Connection: close` (and `Content-Length` for a body).
pub fn request(
    method: &str,
    target: &str,
    to: SocketAddr,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {to}\r\nMetadata: true\r\nConnection: close\r\n"
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}
