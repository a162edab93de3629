//! `msp-bench`: the end-to-end benchmark of the agent against the direct path (issue 8, BENCHMARKS.md).
//!
//! It starts `msp-host` and `gpa run` from the built binaries, with the redirector on a child cgroup the bench
//! owns, and drives the same IMDS request through the agent (redirected, authorized, signed, verified by the
//! host), direct to the host (endpoint disabled), and through a bare relay that only copies bytes ([`relay`],
//! the floor of any local proxy), in alternating rounds, from worker processes ([`worker`]). It reports rates,
//! latency percentiles, the latency the agent adds, the agent's CPU per request and memory, the stripped
//! binary's size and cold starts, as JSON and Markdown ([`report`]).
//!
//! Traffic goes only to loopback addresses. This crate must never leave a process or a cgroup behind
//! ([`cleanup`]), or report a run in which a request failed as a success.
#![cfg(target_os = "linux")]

pub mod cgroup;
pub mod cleanup;
pub mod driver;
pub mod http;
pub mod procfs;
pub mod progress;
pub mod relay;
pub mod report;
pub mod stack;
pub mod stats;
pub mod upstream;
pub mod worker;
pub mod workload;
