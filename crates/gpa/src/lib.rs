//! The Guest Proxy Agent (`gpa`): runs as root in the VM, latches the key, intercepts metadata connections with
//! eBPF, authorizes each request against the allowlist, signs and forwards it, and reports its health.

pub mod config;
pub mod keykeeper;
pub mod snapshot;
pub mod storage;
