//! Steps 11–13 of spec §8.2 for an authorized request: read the body within its limit, rewrite the head
//! (spec §3.2), sign it with the decision's snapshot, send exactly the signed bytes to the original
//! destination, relay the response.
//!
//! The forwarded head is written by this module, field by field: the request line and every client field as
//! received (value without surrounding whitespace), minus hop-by-hop fields and the whole `x-ms-azure-host-*`
//! family, plus the agent's claims, date and signature. Nothing is added, dropped or rewritten after signing
//! (spec §3.2 step 6; conf 31). A chunked body is decoded (to sign it) and sent as one chunk; an exempt body is
//! streamed unsigned, chunk by chunk. This module must never send a byte upstream for a refused request, sign
//! a body it has not read whole, or pair a key with another snapshot's guid.

use msp_core::endpoint::unmap;
use msp_core::sign::{self, RequestParts};
use msp_core::{Claims, Reason};
use tokio::io::AsyncWriteExt;

use super::busy_poll::Poller;
use super::chunked::ChunkedDecoder;
use super::conn::Conn;
use super::decide::Forward;
use super::head::{Framing, RequestHead, starts_with_ignore_case};
use super::relay::{self, Exchange, RelayError, Upstream};
use super::response;
use crate::snapshot::Snapshot;

/// How a forwarded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The response was relayed; `keep` says whether the client connection stays open.
    Relayed { status: u16, keep: bool },
    /// Nothing was sent to the client yet: answer `reason` and close.
    Refused(Reason),
    /// The client connection can only be closed (it went away, or the response broke after its head).
    Broken { status: u16 },
}

/// Where the request body is once read.
enum Body {
    /// The first `n` bytes of the connection buffer.
    Buffered(usize),
    /// Decoded from chunks into the connection's body buffer.
    Decoded,
}

enum BodyError {
    TooLarge,
    Malformed,
    /// The client stopped sending (closed, failed or idle past the timeout): close without an answer.
    Gone,
}

impl Conn {
    /// Forwards an authorized request (spec §8.2 steps 11–13).
    pub(super) async fn forward(&mut self, fwd: &Forward) -> Outcome {
        if fwd.exempt {
            return self.forward_streamed(fwd).await;
        }
        let body = match self.read_body(fwd.limit).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => return Outcome::Refused(Reason::BodyTooLarge),
            Err(BodyError::Malformed) => return Outcome::Refused(Reason::BadRequest),
            Err(BodyError::Gone) => return Outcome::Broken { status: 0 },
        };
        let b = &mut *self.b;
        let (body_bytes, consumed) = match body {
            Body::Buffered(n) => (b.rbuf.get(..n).unwrap_or_default(), n),
            Body::Decoded => (b.body.as_slice(), 0),
        };
        let chunked = b.head.framing == Framing::Chunked;
        write_request(
            &mut b.send,
            &b.head_buf,
            &b.head,
            &self.caller.claims,
            &fwd.snapshot,
            Some(body_bytes),
            chunked,
        );
        bytes::Buf::advance(&mut b.rbuf, consumed);
        let idempotent = !matches!(self.b.head.method.of(&self.b.head_buf), b"POST" | b"PATCH");
        self.exchange(idempotent).await
    }

    /// Sends `self.b.send` upstream and relays the response; retries once on a fresh connection when a reused
    /// one turns out to have been closed by the host (spec §8.1).
    async fn exchange(&mut self, idempotent: bool) -> Outcome {
        for attempt in 0..2 {
            let reused = match self.upstream.as_ref() {
                Some(up) if up.is_open() => true,
                _ => {
                    self.upstream = None;
                    false
                }
            };
            if let Err(reason) = self.upstream_or_connect().await {
                return Outcome::Refused(reason);
            }
            let limit = self.shared.timeouts.upstream_response;
            let sent = match self.upstream.as_mut() {
                Some(up) => up.send(&self.b.send, limit, &mut self.timer).await,
                None => return Outcome::Refused(Reason::Internal),
            };
            if let Err(reason) = sent {
                self.upstream = None;
                if reused && attempt == 0 {
                    continue;
                }
                return Outcome::Refused(reason);
            }
            match self.relay().await {
                Err(RelayError::BeforeHead {
                    nothing_received: true,
                    ..
                }) if reused && attempt == 0 && idempotent => {
                    self.upstream = None;
                }
                result => return self.relayed(result),
            }
        }
        Outcome::Refused(Reason::UpstreamConnect)
    }

    async fn upstream_or_connect(&mut self) -> Result<&mut Upstream, Reason> {
        if self.upstream.is_none() {
            let dst = self
                .caller
                .original_dst
                .map(unmap)
                .ok_or(Reason::Internal)?;
            self.upstream =
                Some(Upstream::connect(dst, self.shared.timeouts.upstream_connect).await?);
        }
        self.upstream.as_mut().ok_or(Reason::Internal)
    }

    async fn relay(&mut self) -> Result<relay::Relayed, RelayError> {
        let x = Exchange {
            head_request: self.b.head.method.of(&self.b.head_buf) == b"HEAD",
            client_keep_alive: self.client_keep_alive(),
            response_timeout: self.shared.timeouts.upstream_response,
            write_timeout: self.shared.timeouts.idle,
        };
        let Some(up) = self.upstream.as_mut() else {
            return Err(RelayError::BeforeHead {
                reason: Reason::Internal,
                nothing_received: false,
            });
        };
        // A response is read only from bytes received after its request went out (a closed upstream's stray
        // bytes may still sit in a kept box).
        let b = &mut *self.b;
        b.ubuf.clear();
        let client = relay::Client {
            stream: &mut self.client,
            timer: &mut self.timer,
            out: &mut b.out,
            poller: Poller::new(&self.shared.polling, &self.places.1),
        };
        relay::relay(up, &mut b.ubuf, client, x).await
    }

    fn relayed(&mut self, result: Result<relay::Relayed, RelayError>) -> Outcome {
        match result {
            Ok(r) => {
                if !r.upstream_open {
                    self.upstream = None;
                }
                if r.key_unknown {
                    // spec §2.10: wake the key keeper (at most once per second, the handle's rule).
                    self.shared.keeper.key_unknown();
                }
                Outcome::Relayed {
                    status: r.status,
                    keep: r.client_open,
                }
            }
            Err(RelayError::BeforeHead { reason, .. }) => {
                self.upstream = None;
                Outcome::Refused(reason)
            }
            Err(RelayError::AfterHead(status)) => {
                self.upstream = None;
                Outcome::Broken { status }
            }
        }
    }

    /// An exempt request (spec §3.5): unsigned, streamed to the upstream as it arrives, up to 100 MiB. A
    /// chunked body that grows past the limit closes the upstream connection without completing the request.
    async fn forward_streamed(&mut self, fwd: &Forward) -> Outcome {
        let b = &mut *self.b;
        write_request(
            &mut b.send,
            &b.head_buf,
            &b.head,
            &self.caller.claims,
            &fwd.snapshot,
            None,
            false,
        );
        if !self.upstream.as_ref().is_some_and(Upstream::is_open) {
            self.upstream = None;
        }
        if let Err(reason) = self.upstream_or_connect().await {
            return Outcome::Refused(reason);
        }
        if let Err(e) = self.send_upstream().await {
            return Outcome::Refused(e);
        }
        if let Err(e) = self.continue_if_expected().await {
            self.upstream = None;
            return e;
        }
        let streamed = match self.b.head.framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.stream_length(n).await,
            Framing::Chunked => self.stream_chunked(fwd.limit).await,
        };
        if let Err(outcome) = streamed {
            self.upstream = None;
            return outcome;
        }
        let result = self.relay().await;
        self.relayed(result)
    }

    async fn send_upstream(&mut self) -> Result<(), Reason> {
        let limit = self.shared.timeouts.upstream_response;
        let Some(up) = self.upstream.as_mut() else {
            return Err(Reason::Internal);
        };
        let result = up.send(&self.b.send, limit, &mut self.timer).await;
        self.b.send.clear();
        result.inspect_err(|_| self.upstream = None)
    }

    async fn stream_length(&mut self, mut remaining: u64) -> Result<(), Outcome> {
        while remaining > 0 {
            if self.b.rbuf.is_empty() && !self.fill().await {
                return Err(Outcome::Broken { status: 0 });
            }
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.b.rbuf.len());
            let b = &mut *self.b;
            b.send
                .extend_from_slice(b.rbuf.get(..n).unwrap_or_default());
            bytes::Buf::advance(&mut b.rbuf, n);
            remaining -= n as u64;
            self.send_upstream().await.map_err(Outcome::Refused)?;
        }
        Ok(())
    }

    async fn stream_chunked(&mut self, limit: u64) -> Result<(), Outcome> {
        let mut decoder = ChunkedDecoder::default();
        let mut total = 0u64;
        loop {
            while !self.b.rbuf.is_empty() {
                let b = &mut *self.b;
                let p = decoder
                    .decode(&b.rbuf)
                    .map_err(|_| Outcome::Refused(Reason::BadRequest))?;
                let data = b.rbuf.get(p.data.clone()).unwrap_or_default();
                total += data.len() as u64;
                if total > limit {
                    return Err(Outcome::Refused(Reason::BodyTooLarge));
                }
                if !data.is_empty() {
                    push_chunk(&mut b.send, data);
                }
                bytes::Buf::advance(&mut b.rbuf, p.consumed);
                if p.done {
                    b.send.extend_from_slice(b"0\r\n\r\n");
                    return self.send_upstream().await.map_err(Outcome::Refused);
                }
                if p.consumed == 0 {
                    break;
                }
            }
            if !self.b.send.is_empty() {
                self.send_upstream().await.map_err(Outcome::Refused)?;
            }
            if !self.fill().await {
                return Err(Outcome::Broken { status: 0 });
            }
        }
    }

    /// Reads a buffered body within `limit` (spec §8.4): a `Content-Length` body stays in the connection
    /// buffer, a chunked one is decoded into the body buffer and refused as soon as it grows past the limit.
    async fn read_body(&mut self, limit: u64) -> Result<Body, BodyError> {
        match self.b.head.framing {
            Framing::None => Ok(Body::Buffered(0)),
            Framing::Length(n) => {
                // Step 4 already refused a declared length over the limit.
                let n = usize::try_from(n).map_err(|_| BodyError::TooLarge)?;
                if self.b.rbuf.len() < n {
                    self.continue_if_expected()
                        .await
                        .map_err(|_| BodyError::Gone)?;
                    let rbuf = &mut self.b.rbuf;
                    rbuf.reserve(n - rbuf.len());
                }
                while self.b.rbuf.len() < n {
                    if !self.fill().await {
                        return Err(BodyError::Gone);
                    }
                }
                Ok(Body::Buffered(n))
            }
            Framing::Chunked => {
                self.b.body.clear();
                let mut decoder = ChunkedDecoder::default();
                let mut asked = false;
                loop {
                    while !self.b.rbuf.is_empty() {
                        let b = &mut *self.b;
                        let p = decoder.decode(&b.rbuf).map_err(|_| BodyError::Malformed)?;
                        let data = b.rbuf.get(p.data.clone()).unwrap_or_default();
                        if (b.body.len() + data.len()) as u64 > limit {
                            return Err(BodyError::TooLarge);
                        }
                        b.body.extend_from_slice(data);
                        bytes::Buf::advance(&mut b.rbuf, p.consumed);
                        if p.done {
                            return Ok(Body::Decoded);
                        }
                        if p.consumed == 0 {
                            break;
                        }
                    }
                    if !asked {
                        asked = true;
                        self.continue_if_expected()
                            .await
                            .map_err(|_| BodyError::Gone)?;
                    }
                    if !self.fill().await {
                        return Err(BodyError::Gone);
                    }
                }
            }
        }
    }

    /// `Expect: 100-continue`: the client holds the body back until told to send it.
    async fn continue_if_expected(&mut self) -> Result<(), Outcome> {
        if !self.b.head.expect_continue || !self.b.rbuf.is_empty() {
            return Ok(());
        }
        self.b.head.expect_continue = false;
        let write = self.client.write_all(response::CONTINUE);
        match self
            .timer
            .within_for(self.shared.timeouts.idle, write)
            .await
        {
            Some(Ok(())) => Ok(()),
            _ => Err(Outcome::Broken { status: 0 }),
        }
    }
}

fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    // Writing to a `Vec` cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{:X}\r\n", data.len()));
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Whether a client field is forwarded (spec §3.2 steps 1–2).
fn forwarded(head_bytes: &[u8], head: &RequestHead, name: &[u8]) -> bool {
    !head.is_hop_by_hop(head_bytes, name)
        && !starts_with_ignore_case(name, sign::HOST_HEADER_PREFIX.as_bytes())
}

/// Writes the forwarded request into `out` (cleared first): head rewritten per spec §3.2, signed when the
/// snapshot has a key and a body is given (`None`: an exempt request, unsigned, body streamed later).
pub(super) fn write_request(
    out: &mut Vec<u8>,
    head_bytes: &[u8],
    head: &RequestHead,
    claims: &Claims,
    snapshot: &Snapshot,
    body: Option<&[u8]>,
    chunked: bool,
) {
    let method = head.method.of(head_bytes);
    let target = head.target.of(head_bytes);
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.push(b' ');
    out.extend_from_slice(head.version.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut date_buf = [0u8; sign::HOST_DATE_LEN];
    let date = snapshot.date_header_into(&mut date_buf);
    let claims_value = claims.host_claims_header();
    let kept = head
        .fields
        .iter()
        .map(|f| (f.name.of(head_bytes), f.value.of(head_bytes)))
        .filter(|(name, _)| forwarded(head_bytes, head, name));
    let added = [
        (sign::CLAIMS_HEADER.as_bytes(), claims_value.as_bytes()),
        (sign::DATE_HEADER.as_bytes(), date),
    ];
    let headers = kept.chain(added);
    for (name, value) in headers.clone() {
        out.extend_from_slice(name);
        out.push(b':');
        if !value.is_empty() {
            out.push(b' ');
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(key), Some(body)) = (&snapshot.key, body) {
        // Spec §3.3 over exactly the fields written above, the target as sent and the raw body.
        let signature = RequestParts {
            method,
            target,
            headers,
            body,
        }
        .sign(&key.key);
        out.extend_from_slice(sign::AUTHORIZATION_HEADER.as_bytes());
        out.extend_from_slice(b": ");
        sign::write_authorization_value(out, &key.guid, &signature);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        if chunked {
            if !body.is_empty() {
                push_chunk(out, body);
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(body);
        }
    }
}
