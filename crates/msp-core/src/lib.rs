//! The MSP v1 protocol (`spec/msp-v1-wire.md`), pure: no I/O, no async, no clock, no randomness, no logging.
//!
//! Both halves build on it: the guest agent (`gpa`) to authorize and sign, the host (`msp-host`) to verify and
//! audit. Time and keys are always parameters, so every function here is deterministic and testable without a
//! network. This crate must never read a file, open a socket or call `SystemTime::now`.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod canon;
pub mod claims;
pub mod endpoint;
pub mod reason;
pub mod redact;
pub mod rules;
pub mod sign;
pub mod status;
pub mod wire;

pub use claims::Claims;
pub use endpoint::{Endpoint, Mode};
pub use reason::Reason;
