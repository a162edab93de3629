//! The proxy's bounds (spec §8.4), each a named constant with its unit and the catalog row it defends, and the
//! configured timeouts as durations. Nothing here reads a clock or a socket.

use std::time::Duration;

use crate::config::Config;

/// Body of a signed or ordinary request, in bytes (spec §8.4; catalog A9): 413 before buffering.
pub const MAX_SIGNED_BODY: u64 = 102_400;
/// Body of an exempt request (spec §3.5), in bytes, streamed rather than buffered.
pub const MAX_EXEMPT_BODY: u64 = 104_857_600;
/// Request-target, in bytes (spec §8.4; catalog A3): 414 `URI_TOO_LONG`.
pub const MAX_TARGET: usize = 8 * 1024;
/// Whole request head, in bytes (spec §8.4; catalog A8): 431 `HEADERS_TOO_LARGE`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields of one request (spec §8.4; catalog A8): 431 `HEADERS_TOO_LARGE`.
pub const MAX_FIELDS: usize = 100;
/// Longest method token, in bytes; a longer one is a malformed request line (catalog A3).
pub const MAX_METHOD: usize = 32;
/// Upstream response head, in bytes; a larger one is 502 `UPSTREAM_PROTOCOL`.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Header fields of an upstream response; more is 502 `UPSTREAM_PROTOCOL`.
pub const MAX_RESPONSE_FIELDS: usize = 128;
/// A chunk-size line (size, extensions) or one trailer line, in bytes (catalog A3: unbounded lines).
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// All trailer lines of one chunked body together, in bytes.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Interim (1xx) responses skipped before the final one; more is 502 `UPSTREAM_PROTOCOL`.
pub const MAX_INTERIM_RESPONSES: usize = 8;
/// Initial per-connection buffer, in bytes; it grows to the head and body limits only when a request needs it.
pub const INITIAL_BUFFER: usize = 4 * 1024;
/// Room made, at most, for each read of a response body: what remains of a body of known length, or what a
/// chunked or close-delimited body has delivered so far, and at least [`INITIAL_BUFFER`] (a read may get more
/// when the buffer's allocation already has it). A large body then moves in a few reads and writes (a 64 KiB
/// response in one or two, not sixteen), each a wake-up of the client. The upstream buffer is freed, not kept,
/// once a response leaves it larger than [`POOLED_BUFFER_MAX`].
pub const BODY_READ: usize = 64 * 1024;
/// Request-buffer boxes pooled per runtime thread (catalog G1): requests in flight beyond it allocate their own,
/// freed afterwards. With [`POOLED_BUFFER_MAX`], a thread's pool holds at most 64 × 7 × 8 KiB = 3.5 MiB, however
/// large the requests were; a pooled box after an ordinary metadata request holds ~10 KiB.
pub const POOL_MAX_PER_THREAD: usize = 64;
/// Capacity, in bytes, above which a request buffer is freed instead of pooled, so a 64 KiB request does not pin
/// 64 KiB (catalog G1); the next request that needs it grows it again.
pub const POOLED_BUFFER_MAX: usize = 8 * 1024;
/// After an agent-generated response the proxy reads and discards at most this many bytes, for at most
/// [`LINGER_TIMEOUT`], before closing, so the client reads the response instead of a reset.
pub const LINGER_BYTES: usize = 256 * 1024;
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// File descriptors kept besides two per connection: the agent's own files (the 256 of spec §8.4, which asks for
/// at least `2 × maxConcurrentConnections + 256`) and the `/proc/<pid>` directories the identity cache holds open.
pub const FD_RESERVE: u64 = OWN_FILES + IDENTITY_CACHE_DIRS;
/// The agent's own files: logs, state, eBPF objects, the reactor, host calls, `/proc` reads in flight.
const OWN_FILES: u64 = 256;
/// `/proc/<pid>` directories the identity cache holds open at most (one per cached process instance).
pub const IDENTITY_CACHE_DIRS: u64 = crate::identity::INSTANCE_CACHE_MAX_ENTRIES as u64;
/// Back-off after a failed `accept` (e.g. out of descriptors), doubled up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The timeouts of spec §8.4, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Complete request head: from accept for the first request, from its first byte for later ones (catalog
    /// A10). Default 10 s.
    pub head: Duration,
    /// Keep-alive idle, from the end of a response to the next request's first byte. Default 60 s. Also bounds
    /// every wait for request body bytes.
    pub idle: Duration,
    /// Upstream connect. Default 5 s.
    pub upstream_connect: Duration,
    /// Upstream response head after the request was sent; also bounds every wait for response body bytes.
    /// Default 60 s.
    pub upstream_response: Duration,
}

impl Timeouts {
    pub fn from_config(config: &Config) -> Timeouts {
        Timeouts {
            head: Duration::from_secs(config.request_header_timeout_in_seconds),
            idle: Duration::from_secs(config.idle_connection_timeout_in_seconds),
            upstream_connect: Duration::from_secs(config.upstream_connect_timeout_in_seconds),
            upstream_response: Duration::from_secs(config.upstream_response_timeout_in_seconds),
        }
    }
}
