//! `msp-demo`: the MSP demo (the README's main command) and the harness the end-to-end suite shares with it.
//!
//! The harness starts the real pieces and cleans up after them, also on failure: child cgroups
//! ([`cgroup`]), network namespaces with the real metadata addresses inside them only ([`netns`]), the agent
//! as its own process and workloads placed in the intercepted cgroup under chosen users ([`process`],
//! [`roles`]), and `msp-host` in a namespace ([`fabric`]). The demo ([`demo`]) runs the same pieces on
//! loopback and narrates what MSP does.
//!
//! Safety (DESIGN.md): traffic goes only to loopback or to addresses inside namespaces created here; eBPF is
//! attached only to cgroups created here; processes are signalled only by the pid the harness started.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod demo;
pub mod error;
pub mod fabric;
pub mod fetch;
pub mod netns;
pub mod prereq;
pub mod process;
pub mod roles;
pub mod wait;

pub use error::HarnessError;
