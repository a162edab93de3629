//! `msp-host`: plays WireServer, HostGAPlugin and IMDS for one or many VMs, latches one key per VM and, in
//! Enforce mode, rejects every request not signed with that VM's key (spec §12). Default-closed: with no
//! agent, or no key latched yet, only the secure-channel API and exempt requests get through.
//!
//! In-process use (the agent's tests, the demo):
//!
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> Result<(), msp_host::HostError> {
//! use msp_core::{Endpoint, Mode};
//! let host = msp_host::Host::start(msp_host::HostConfig::test(dir)).await?;
//! let admin = host.admin();
//! admin.set_mode("dev", Endpoint::Imds, Mode::Audit).await.ok();
//! println!("WireServer at {}", host.wireserver);
//! host.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! This crate must never send traffic anywhere: it only answers.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod admin;
pub mod audit;
pub mod cidr;
pub mod client;
pub mod config;
mod frontend;
mod host;
pub mod registry;
pub mod store;
pub mod vm;

pub use admin::client::{AdminClient, AdminError, ProfileInfo};
pub use config::{HostConfig, VmConfig};
pub use frontend::policy;
pub use frontend::{MAX_BODY, MAX_EXEMPT_BODY, MAX_HEAD_BYTES, MAX_HEAD_FIELDS, verify_head};
pub use host::{Host, HostError, RunningHost};
