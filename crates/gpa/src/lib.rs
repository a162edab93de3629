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

/// Worker threads for this machine: one per core, at most [`MAX_WORKER_THREADS`]. The agent's runtime and the
/// proxy's lanes each start this many.
pub fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_WORKER_THREADS)
}
