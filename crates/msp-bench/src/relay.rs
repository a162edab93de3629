//! The bare relay (`msp-bench relay`): the floor of any proxy in the agent's place. It relays bytes between each
//! accepted connection and a new connection to the host, and does nothing else: no HTTP, no identity, no
//! rules, no signing. Measured as a third side of every workload, it shows how much of the agent's added
//! latency and CPU is its own work and how much is the second loopback hop that every local proxy adds
//! (BENCHMARKS.md, "The floor of a local proxy").
//!
//! Two ways, the cheapest one for the workload:
//! - [`Mode::Threads`]: a blocking thread per direction, so a request costs one `read` and one `write` per hop
//!   and no readiness polling: the cheapest relay per request for a few long-lived connections;
//! - [`Mode::Tokio`]: the agent's runtime (tokio, as many worker threads as the agent starts) with
//!   `copy_bidirectional`, for many connections or a new connection per request, where a thread pair per
//!   connection would cost more than the relay itself.
//!
//! It listens on a loopback address and connects only to its `--to` address, also loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};

use serde::{Deserialize, Serialize};

use crate::worker::connect;

/// Buffer per direction, bytes (a 64 KiB response passes in one read when the socket has it all).
const BUFFER: usize = 64 * 1024;

/// How the relay moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A blocking thread per direction of each connection.
    Threads,
    /// One tokio runtime with the agent's thread count.
    Tokio,
}

/// Binds a loopback port, prints `listening <address>` on standard output, and relays every connection to
/// `to`, connecting from `from`, until the process is stopped.
pub fn main(to: SocketAddr, from: Ipv4Addr, mode: Mode) -> std::io::Result<()> {
    if !to.ip().is_loopback() || !from.is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--to {to} and --from {from} must be loopback addresses"),
        ));
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    match mode {
        Mode::Threads => threads(&listener, to, from),
        Mode::Tokio => tokio_relay(listener, to, from),
    }
}

fn threads(listener: &TcpListener, to: SocketAddr, from: Ipv4Addr) -> std::io::Result<()> {
    for client in listener.incoming() {
        let pair = client.and_then(|client| {
            client.set_nodelay(true)?;
            let upstream = connect(to, Some(from))?;
            Ok((client, upstream))
        });
        let (client, upstream) = match pair {
            Ok(p) => p,
            Err(e) => {
                eprintln!("msp-bench relay: {e}");
                continue;
            }
        };
        let (client2, upstream2) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || pump(client, upstream));
        std::thread::spawn(move || pump(upstream2, client2));
    }
    Ok(())
}

/// Copies `from` to `to` until `from` ends or fails, then ends `to`'s sending side.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.get(..n).is_none_or(|b| to.write_all(b).is_err()) {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn tokio_relay(listener: TcpListener, to: SocketAddr, from: Ipv4Addr) -> std::io::Result<()> {
    // The agent's own cap, so the floor runs the runtime the agent has.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(gpa::worker_threads())
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let relayed = async {
                    client.set_nodelay(true)?;
                    // A loopback connect completes within the call: no reactor turn to wait for.
                    let upstream = connect(to, Some(from))?;
                    upstream.set_nonblocking(true)?;
                    let mut upstream = tokio::net::TcpStream::from_std(upstream)?;
                    tokio::io::copy_bidirectional_with_sizes(
                        &mut client,
                        &mut upstream,
                        BUFFER,
                        BUFFER,
                    )
                    .await
                };
                if let Err(e) = relayed.await {
                    eprintln!("msp-bench relay: {e}");
                }
            });
        }
    })
}
