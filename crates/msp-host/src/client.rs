//! A minimal HTTP/1.1 client over loopback: raw requests, byte-exact, optionally from a chosen source address
//! and optionally signed with `msp_core::sign` the way the agent signs (spec §3.2–§3.4).
//!
//! Used by the admin CLI, by tests that play the agent, and by the benchmarks. It sends exactly the header
//! set it is given (no `Host`, `Date` or `Content-Length` is added behind the caller's back, except the
//! `Content-Length` of [`Request::to_bytes`] when the caller set none). Every await has a timeout. It must
//! never be pointed at a non-loopback address by tests (DESIGN.md).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use msp_core::sign::{
    AUTHORIZATION_HEADER, CLAIMS_HEADER, DATE_HEADER, KeyGuid, RequestParts, SigningKey,
    authorization_value, format_host_date,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Bound on one whole exchange.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted, bytes.
pub const MAX_RESPONSE: usize = 64 << 20;
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_FIELDS: usize = 64;

/// A request as raw parts; headers are sent in order, duplicates kept.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Removes every header of this name (any case).
    pub fn without(mut self, name: &str) -> Request {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Adds what the agent adds (spec §3.2 steps 3–4): claims for `is_root` and the host date `date`, plus
    /// `Content-Length`; replaces any earlier values.
    pub fn agent_headers(self, is_root: bool, date: SystemTime) -> Request {
        let len = self.body.len().to_string();
        self.without(CLAIMS_HEADER)
            .without(DATE_HEADER)
            .without("content-length")
            .header("Content-Length", &len)
            .header(CLAIMS_HEADER, msp_core::claims::host_claims_header(is_root))
            .header(DATE_HEADER, &format_host_date(date))
    }

    /// Signs the request as it stands (spec §3.3, §3.4) and sets `x-ms-azure-host-authorization`.
    pub fn sign(self, guid: &KeyGuid, key: &SigningKey) -> Request {
        let req = self.without(AUTHORIZATION_HEADER);
        let sig = {
            let fields: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect();
            RequestParts {
                method: req.method.as_bytes(),
                target: req.target.as_bytes(),
                headers: fields.iter().copied(),
                body: &req.body,
            }
            .sign(key)
        };
        let value = authorization_value(guid, &sig);
        req.header(AUTHORIZATION_HEADER, &value)
    }

    /// The bytes on the wire. A `Content-Length` is added only when the caller set none and there is a body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.target).as_bytes());
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        let has_len = self.headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        if !has_len && !self.body.is_empty() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response: status, headers in order, body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The last value of a header (any case), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP exchange timed out")
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// A keep-alive connection.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `server`, from `local` (an address of this machine, port chosen by the OS) when given.
    pub async fn open(server: SocketAddr, local: Option<IpAddr>) -> io::Result<Connection> {
        let connect = async {
            let socket = if server.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = local {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            socket.connect(server).await
        };
        let stream = tokio::time::timeout(CLIENT_TIMEOUT, connect)
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
        })
    }

    /// Sends raw request bytes and reads one response.
    pub async fn send_raw(&mut self, raw: &[u8]) -> io::Result<Response> {
        tokio::time::timeout(CLIENT_TIMEOUT, async {
            self.stream.get_mut().write_all(raw).await?;
            self.read_response().await
        })
        .await
        .map_err(|_| timed_out())?
    }

    pub async fn send(&mut self, req: &Request) -> io::Result<Response> {
        self.send_raw(&req.to_bytes()).await
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        let (status, headers, head_len) = loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            let mut resp = httparse::Response::new(&mut fields);
            match resp.parse(&buf).map_err(|e| bad(&e.to_string()))? {
                httparse::Status::Complete(len) => {
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), h.value.to_vec()))
                        .collect::<Vec<_>>();
                    break (resp.code.unwrap_or(0), headers, len);
                }
                httparse::Status::Partial if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(bad("response head too large"));
                }
                httparse::Status::Partial => {}
            }
        };
        let mut rest = buf.split_off(head_len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        };
        let body = if let Some(len) = find("content-length") {
            let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
            if len > MAX_RESPONSE {
                return Err(bad("response too large"));
            }
            while rest.len() < len {
                let mut chunk = vec![0u8; (len - rest.len()).min(64 * 1024)];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "body cut short",
                    ));
                }
                rest.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            rest.truncate(len);
            rest
        } else if find("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            self.read_chunked(rest).await?
        } else {
            self.stream.read_to_end(&mut rest).await?;
            rest
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    async fn read_chunked(&mut self, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            // Need a full size line.
            let line_end = loop {
                if let Some(i) = buf
                    .get(pos..)
                    .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
                {
                    break pos + i;
                }
                self.fill(&mut buf).await?;
            };
            let line =
                String::from_utf8_lossy(buf.get(pos..line_end).unwrap_or_default()).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim().to_owned();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| bad("bad chunk size"))?;
            pos = line_end + 2;
            if size == 0 {
                // Skip trailers up to the blank line.
                loop {
                    if let Some(i) = buf
                        .get(pos..)
                        .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
                    {
                        if i == 0 {
                            return Ok(body);
                        }
                        pos += i + 2;
                    } else {
                        self.fill(&mut buf).await?;
                    }
                }
            }
            if body.len() + size > MAX_RESPONSE {
                return Err(bad("response too large"));
            }
            while buf.len() < pos + size + 2 {
                self.fill(&mut buf).await?;
            }
            body.extend_from_slice(buf.get(pos..pos + size).unwrap_or_default());
            pos += size + 2;
        }
    }

    async fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(())
    }
}

/// One request on a fresh connection from `local` (or any local address).
pub async fn send(
    server: SocketAddr,
    local: Option<IpAddr>,
    req: &Request,
) -> io::Result<Response> {
    let mut c = Connection::open(server, local).await?;
    c.send(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_matches_golden_vector_v3() {
        // spec §3.8 V3: the attestation request, signed with the vector key at the vector date.
        let key = SigningKey::from_hex(
            "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59",
        )
        .unwrap();
        let guid = KeyGuid::parse("9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf").unwrap();
        let date = msp_core::sign::parse_host_date("Wed, 23 Apr 2025 12:00:00 GMT").unwrap();
        let req = Request::new(
            "POST",
            "/secure-channel/key/9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf/key-attestation",
        )
        .header("Host", "168.63.129.16")
        .header("Metadata", "True")
        .agent_headers(true, date)
        .sign(&guid, &key);
        assert_eq!(
            req.headers.last().unwrap().1,
            "Azure-HMAC-SHA256 9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf 71a091e6c9e21a0e3972a3b5a481c4d7a578f4d4f28c810636f7e43387bfb8e0"
        );
    }
}
