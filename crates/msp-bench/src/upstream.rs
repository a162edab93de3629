//! The loopback upstream behind the host's `imdsUpstream` (the host as a gateway, spec §12): answers every
//! request with a fixed [`LARGE_BODY`]-byte JSON document, so the 64 KiB workload measures relaying a large
//! response. Runs on its own thread with a current-thread runtime; stops when dropped. It must never listen
//! on anything but loopback.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Body of every upstream response, bytes.
pub const LARGE_BODY: usize = 64 * 1024;
/// Request heads larger than this close the connection.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// The running upstream.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> std::io::Result<Upstream> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let response = response();
        let thread = std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let serve = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(serve(stream, response.clone()));
                        }
                    };
                    tokio::select! {
                        () = serve => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Upstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The whole response: a JSON document of exactly [`LARGE_BODY`] bytes.
fn response() -> std::sync::Arc<Vec<u8>> {
    let prefix = br#"{"blob":""#;
    let suffix = br#""}"#;
    let mut body = Vec::with_capacity(LARGE_BODY);
    body.extend_from_slice(prefix);
    body.resize(LARGE_BODY - suffix.len(), b'x');
    body.extend_from_slice(suffix);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    std::sync::Arc::new(out)
}

/// Answers each request head (bodies are not expected: the workload sends GET) until the peer closes.
async fn serve(mut stream: TcpStream, response: std::sync::Arc<Vec<u8>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        match crate::http::head_end(&buf, 0) {
            Some(end) => {
                buf.drain(..end);
                if stream.write_all(&response).await.is_err() {
                    return;
                }
            }
            None if buf.len() > MAX_REQUEST_HEAD => return,
            None => match stream.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            },
        }
    }
}
