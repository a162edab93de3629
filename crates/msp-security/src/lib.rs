//! The security catalog (`spec/security-catalog.md`) as tests, and the harness they share.
//!
//! Every test in `tests/` is named after the catalog row it covers (`a6_…`, `c9_root_…`) and asserts the exact
//! outcome the row demands: a status code and reason code, an errno, a file mode, an audit record. They run
//! hermetically: a real `msp-host` on loopback (or inside a network namespace the test created), the real eBPF
//! redirector attached to a child cgroup the test created, and the attacker as a separate process
//! (`msp-probe`) placed in that cgroup, namespace or uid.
//!
//! This crate is test-only (`publish = false`, not a default member). Its harness must never send traffic to
//! an address other than loopback or one inside a network namespace a test created, never attach eBPF outside a
//! child cgroup a test created, and never signal a process it did not start.
#![cfg(target_os = "linux")]

pub mod agent;
pub mod cgroup;
pub mod env;
pub mod host;
pub mod http;
pub mod intercept;
pub mod netns;
pub mod probe;
pub mod tmpfs;

pub use cgroup::TestCgroup;
pub use env::{root_ready, unique};
pub use netns::NetNs;
pub use probe::{Probe, ProbeResult};

/// A [`Probe`] for the `msp-probe` binary of this package (expands `CARGO_BIN_EXE_msp-probe` in the test).
#[macro_export]
macro_rules! probe {
    () => {
        $crate::probe::Probe::new(env!("CARGO_BIN_EXE_msp-probe"))
    };
}
