//! A scripted fake host for unit tests: accepts on a loopback port, records each raw request, and answers
//! with whatever the test's responder returns (or never answers).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as received.
#[derive(Debug, Clone)]
#[allow(dead_code)] // every field is recorded; each test reads what it checks
pub(crate) struct Recorded {
    pub method: String,
    pub target: String,
    /// Names lowercased, in received order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer: raw response bytes, or `None` to hold the connection open without answering.
pub(crate) type Responder = Arc<dyn Fn(&Recorded) -> Option<Vec<u8>> + Send + Sync>;

pub(crate) struct FakeHost {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

impl FakeHost {
    pub(crate) async fn start(responder: Responder) -> FakeHost {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let req = loop {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut parsed = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(len)) = parsed.parse(&buf) {
                        let hs: Vec<(String, String)> = parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        let cl: usize = hs
                            .iter()
                            .find(|(n, _)| n == "content-length")
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= len + cl {
                            break Some(Recorded {
                                method: parsed.method.unwrap_or("").to_owned(),
                                target: parsed.path.unwrap_or("").to_owned(),
                                headers: hs,
                                body: buf[len..len + cl].to_vec(),
                            });
                        }
                    }
                };
                let Some(req) = req else { continue };
                recorded.lock().unwrap().push(req.clone());
                match responder(&req) {
                    Some(bytes) => {
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.shutdown().await;
                    }
                    None => held.push(stream),
                }
            }
        });
        FakeHost {
            addr,
            requests,
            task,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}
