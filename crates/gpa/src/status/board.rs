//! The module status board (spec §9.2): every task reports its module's state and message here, and the status
//! writer, `/gpa-aggregated-status` and the host report read one consistent copy.
//!
//! A `std::sync::Mutex` is right here: critical sections are a few field writes, never held across `.await`.
//! Every change bumps a version on a `watch` channel so the writer can follow within a second. This board must
//! never hold key bytes or signatures: `states` carries only the key guid and incarnation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use msp_core::status::{KeyLatchStatus, ModuleState, ModuleStatus, ProxyAgentStatus};
use tokio::sync::watch;

/// The agent version reported in the status document and events.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The modules of the status document (spec §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Monitor,
    KeyLatch,
    Ebpf,
    Listener,
    Telemetry,
}

impl Module {
    /// The document's field name, used in `status.tag` lines (spec §9.5).
    pub fn field(self) -> &'static str {
        match self {
            Module::Monitor => "monitorStatus",
            Module::KeyLatch => "keyLatchStatus",
            Module::Ebpf => "ebpfProgramStatus",
            Module::Listener => "proxyListenerStatus",
            Module::Telemetry => "telemetryLoggerStatus",
        }
    }
}

/// Shared module states, the key latch `states` map and the request counter.
#[derive(Debug)]
pub struct StatusBoard {
    inner: Mutex<ProxyAgentStatus>,
    requests: AtomicU64,
    version: watch::Sender<u64>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard::new()
    }
}

impl StatusBoard {
    pub fn new() -> StatusBoard {
        let status = ProxyAgentStatus {
            version: AGENT_VERSION.to_owned(),
            key_latch_status: KeyLatchStatus {
                message: msp_core::status::STATUS_UNKNOWN_MESSAGE.to_owned(),
                ..KeyLatchStatus::default()
            },
            ..ProxyAgentStatus::default()
        };
        StatusBoard {
            inner: Mutex::new(status),
            requests: AtomicU64::new(0),
            version: watch::channel(0).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ProxyAgentStatus) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of plain fields; the data is still
        // whole, and the status must keep being reported.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Sets a module's state and message; a change wakes the status writer.
    pub fn set(&self, module: Module, state: ModuleState, message: impl Into<String>) {
        let message = message.into();
        let changed = self.with(|s| {
            let (cur_state, cur_message) = match module {
                Module::KeyLatch => (
                    &mut s.key_latch_status.status,
                    &mut s.key_latch_status.message,
                ),
                Module::Monitor => slot(&mut s.monitor_status),
                Module::Ebpf => slot(&mut s.ebpf_program_status),
                Module::Listener => slot(&mut s.proxy_listener_status),
                Module::Telemetry => slot(&mut s.telemetry_logger_status),
            };
            let changed = *cur_state != state || *cur_message != message;
            *cur_state = state;
            *cur_message = message;
            changed
        });
        if changed {
            self.changed();
        }
    }

    /// Sets a module's message, keeping its state.
    pub fn set_message(&self, module: Module, message: impl Into<String>) {
        let state = self.module(module).status;
        self.set(module, state, message);
    }

    /// One module's current status.
    pub fn module(&self, module: Module) -> ModuleStatus {
        self.with(|s| match module {
            Module::KeyLatch => ModuleStatus::new(
                s.key_latch_status.status,
                s.key_latch_status.message.clone(),
            ),
            Module::Monitor => s.monitor_status.clone(),
            Module::Ebpf => s.ebpf_program_status.clone(),
            Module::Listener => s.proxy_listener_status.clone(),
            Module::Telemetry => s.telemetry_logger_status.clone(),
        })
    }

    /// Replaces `keyLatchStatus.states` (spec §9.2).
    pub fn set_key_latch_states(&self, states: BTreeMap<String, String>) {
        let changed = self.with(|s| {
            let changed = s.key_latch_status.states != states;
            s.key_latch_status.states = states;
            changed
        });
        if changed {
            self.changed();
        }
    }

    /// Counts one HTTP request (`proxyConnectionsCount`, spec §8.2 step 1).
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The `proxyAgentStatus` object, evaluated (spec §9.2).
    pub fn proxy_agent_status(&self) -> ProxyAgentStatus {
        let mut status = self.with(|s| s.clone());
        status.proxy_connections_count = self.requests.load(Ordering::Relaxed);
        status.status = status.evaluate();
        status
    }

    /// A receiver that sees every change of a module or of `states`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

fn slot(m: &mut ModuleStatus) -> (&mut ModuleState, &mut String) {
    (&mut m.status, &mut m.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msp_core::status::OverallState;

    #[test]
    fn conf_084_overall_success_iff_latch_ebpf_and_listener_run() {
        let b = StatusBoard::new();
        assert_eq!(b.proxy_agent_status().status, OverallState::Error);
        b.set(Module::KeyLatch, ModuleState::Running, "ok");
        b.set(Module::Ebpf, ModuleState::Running, "ok");
        assert_eq!(b.proxy_agent_status().status, OverallState::Error);
        b.set(Module::Listener, ModuleState::Running, "ok");
        assert_eq!(b.proxy_agent_status().status, OverallState::Success);
        b.set(Module::Telemetry, ModuleState::Stopped, "x");
        assert_eq!(
            b.proxy_agent_status().status,
            OverallState::Success,
            "telemetry does not count"
        );
        b.set(
            Module::Ebpf,
            ModuleState::Unknown,
            "Failed to start redirector: x",
        );
        assert_eq!(b.proxy_agent_status().status, OverallState::Error);
    }

    #[test]
    fn changes_bump_the_version_and_repeats_do_not() {
        let b = StatusBoard::new();
        let rx = b.subscribe();
        b.set(Module::Monitor, ModuleState::Running, "m");
        assert_eq!(*rx.borrow(), 1);
        b.set(Module::Monitor, ModuleState::Running, "m");
        assert_eq!(*rx.borrow(), 1);
        b.set_message(Module::Monitor, "n");
        assert_eq!(*rx.borrow(), 2);
        assert_eq!(b.module(Module::Monitor).status, ModuleState::Running);
        b.count_request();
        b.count_request();
        assert_eq!(b.proxy_agent_status().proxy_connections_count, 2);
        assert_eq!(*rx.borrow(), 2, "requests are counted, not announced");
    }

    #[test]
    fn defaults_are_unknown_with_the_default_message() {
        let s = StatusBoard::new().proxy_agent_status();
        assert_eq!(s.version, AGENT_VERSION);
        assert_eq!(s.key_latch_status.message, "Status unknown.");
        assert_eq!(s.proxy_listener_status.status, ModuleState::Unknown);
    }
}
