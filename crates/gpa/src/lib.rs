//! The Guest Proxy Agent (`gpa`): runs as root in the VM, latches the key, intercepts metadata connections with
//! eBPF, authorizes each request against the allowlist, signs and forwards it, and reports its health.

pub mod clock;
pub mod config;
pub mod hostcall;
pub mod identity;
pub mod keykeeper;
pub mod lifecycle;
pub mod logfile;
pub mod proxy;
pub mod redirect;
pub mod snapshot;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod unit;

#[cfg(test)]
mod test_host;

pub use lifecycle::run;

/// Runtime worker threads at most. Proxying metadata calls is kernel-bound per connection and needs few threads;
/// each worker costs a stack, a malloc arena and up to 3.5 MiB of pooled request buffers (`proxy::limits`), so the
/// agent must not grow with the VM's core count (catalog G1).
pub const MAX_WORKER_THREADS: usize = 4;
