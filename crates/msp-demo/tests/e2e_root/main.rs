//! The end-to-end suite: the operator scenarios of the product brief (the MSP FAQ) against the real pieces,
//! as root, in network namespaces this suite creates.
//!
//! Each test builds a [`Fabric`](msp_demo::fabric::Fabric): a "host" namespace running `msp-host` on the
//! real default addresses (168.63.129.16, 169.254.169.254, which exist only there), one or two "vm"
//! namespaces joined to it by veth pairs, each with an agent (`gpa run`, default endpoint addresses) whose
//! redirector is attached to a cgroup the test owns, and workloads in that cgroup. Everything is torn down
//! by drop guards, also when a test fails. Without root (or cgroup-bpf, BTF, iproute2) the tests skip with
//! the reason, except under `CI=true`, where that is a failure.

mod allowlist;
mod default_closed;
mod demo;
mod enablement;
mod harness;
mod health;
mod keys;
mod provisioning;
mod support;
mod switch;
