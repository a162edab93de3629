//! Readiness flags and provisioning (spec §9.4, §9.5) and the pure `/provision` answer (spec §9.6).
//!
//! Whenever a flag update leaves all three flags set, provisioning finishes: the redirect policy is re-applied,
//! `finished_tick` recorded, `provisioned.tag` and `status.tag` written (0600, key directory) and telemetry plus
//! the status writer started. If 120 s pass after the timer started without all flags, the files are written
//! with the error lines, once per timer. This module must never write the tags anywhere but the checked key
//! directory, and never block the caller for longer than two small file writes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msp_core::wire::SecureChannelState;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::board::{Module, StatusBoard};
use crate::storage::{self, SecureDir};
use crate::telemetry::{EventLevel, EventSink};

/// Hooks attached (spec §9.4).
pub const REDIRECTOR_READY: u8 = 1;
/// Latch confirmed: key ready, or state `disabled` (spec §9.4).
pub const KEY_LATCH_READY: u8 = 2;
/// Listener bound (spec §9.4).
pub const LISTENER_READY: u8 = 4;
/// All three flags.
pub const ALL_READY: u8 = REDIRECTOR_READY | KEY_LATCH_READY | LISTENER_READY;
/// Provisioning times out this long after the timer started (spec §9.5).
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(120);
/// Written in the key directory when provisioning finishes (spec §2.11, §9.5).
pub const PROVISIONED_TAG: &str = "provisioned.tag";
/// Empty on success, else one line per missing flag (spec §9.5).
pub const STATUS_TAG: &str = "status.tag";

/// What finishing provisioning does besides writing the tags (spec §9.5 steps 1 and 4).
pub trait ProvisionHooks: Send + Sync {
    /// Re-applies the redirect policy from the current modes.
    fn reapply_policy(&self);
    /// Starts telemetry and the status writer if not yet started (idempotent).
    fn start_services(&self);
    /// Provisioning finished (all flags set, or the timer expired): `error` is the `status.tag` text, empty on
    /// success (spec §9.5 step 3: the console announcement, when the agent is its own unit).
    fn finished(&self, error: &str);
}

/// The `/provision` answer (spec §9.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionAnswer {
    pub finished: bool,
    pub error_message: String,
}

/// `finished = finished_tick >= time_tick || (state ∉ {disabled, Unknown} && finished_tick > 0)` (spec §9.6).
pub fn provision_answer(
    finished_tick: i64,
    time_tick: i64,
    state: SecureChannelState,
    error_message: &str,
) -> ProvisionAnswer {
    ProvisionAnswer {
        finished: finished_tick >= time_tick
            || (!state.is_unknown_or_disabled() && finished_tick > 0),
        error_message: error_message.to_owned(),
    }
}

/// `x-ms-azure-time-tick`: a signed integer of unix nanoseconds; missing or invalid → 0 (spec §9.6).
pub fn parse_time_tick(value: Option<&[u8]>) -> i64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

#[derive(Debug)]
struct State {
    flags: u8,
    finished_tick: i64,
    error_message: String,
    timer_fired: bool,
}

/// Readiness flags, the provisioning timer and the tags.
pub struct Provisioning {
    state: Mutex<State>,
    board: Arc<StatusBoard>,
    events: EventSink,
    key_dir: PathBuf,
    hooks: Arc<dyn ProvisionHooks>,
    timer: watch::Sender<Instant>,
}

impl Provisioning {
    pub fn new(
        board: Arc<StatusBoard>,
        events: EventSink,
        key_dir: PathBuf,
        hooks: Arc<dyn ProvisionHooks>,
    ) -> Provisioning {
        Provisioning {
            state: Mutex::new(State {
                flags: 0,
                finished_tick: 0,
                error_message: String::new(),
                timer_fired: false,
            }),
            board,
            events,
            key_dir,
            hooks,
            timer: watch::channel(Instant::now()).0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn flags(&self) -> u8 {
        self.with(|s| s.flags)
    }

    pub fn finished_tick(&self) -> i64 {
        self.with(|s| s.finished_tick)
    }

    /// Sets `flag`; when all three are then set, provisioning finishes (spec §9.5).
    pub fn set_flag(&self, flag: u8) {
        let all = self.with(|s| {
            s.flags |= flag;
            s.flags == ALL_READY
        });
        if all {
            self.finish();
        }
    }

    pub fn clear_flag(&self, flag: u8) {
        self.with(|s| s.flags &= !flag);
    }

    /// A notification while `disabled`/`Unknown`: clear `KEY_LATCH_READY`, `finished_tick` := 0, restart the
    /// 120 s timer (spec §2.8, §9.5).
    pub fn reset_latch(&self) {
        self.with(|s| {
            s.flags &= !KEY_LATCH_READY;
            s.finished_tick = 0;
            s.timer_fired = false;
        });
        self.timer.send_replace(Instant::now());
    }

    /// The `/provision` answer for a caller's tick and the key keeper's state (spec §9.6).
    pub fn answer(&self, time_tick: i64, state: SecureChannelState) -> ProvisionAnswer {
        self.with(|s| provision_answer(s.finished_tick, time_tick, state, &s.error_message))
    }

    /// Steps 1–4 of spec §9.5 after all flags are set.
    fn finish(&self) {
        self.hooks.reapply_policy();
        self.write_tags(ALL_READY);
        self.hooks.start_services();
    }

    /// Records `finished_tick` and writes the tags with one error line per flag missing from `flags`.
    fn write_tags(&self, flags: u8) {
        let mut error = String::new();
        for (flag, module) in [
            (REDIRECTOR_READY, Module::Ebpf),
            (KEY_LATCH_READY, Module::KeyLatch),
            (LISTENER_READY, Module::Listener),
        ] {
            if flags & flag == 0 {
                let message = self.board.module(module).message;
                error.push_str(&format!(
                    "{} - {}\r\n",
                    module.field(),
                    crate::telemetry::payload::escape(&message)
                ));
            }
        }
        let tick = crate::clock::unix_nanos();
        self.with(|s| {
            s.finished_tick = tick;
            s.error_message = error.clone();
        });
        let completed = msp_core::status::format_timestamp(crate::clock::unix_ms());
        let written =
            SecureDir::open_or_create(&self.key_dir, storage::PRIVATE_DIR_MODE).and_then(|dir| {
                dir.write_atomic(
                    PROVISIONED_TAG,
                    completed.as_bytes(),
                    storage::PRIVATE_FILE_MODE,
                )?;
                dir.write_atomic(STATUS_TAG, error.as_bytes(), storage::PRIVATE_FILE_MODE)
            });
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write provisioning tags");
        }
        if error.is_empty() {
            tracing::info!(module = "Provisioning", "Provision finished successfully");
        } else {
            tracing::error!(module = "Provisioning", status = %error.trim_end(), "provision finished with errors");
            self.events.emit(EventLevel::Error, "Provisioning", &error);
        }
        self.hooks.finished(&error);
    }

    /// The 120 s timer: on expiry without all flags, writes the tags with the error lines, once per timer.
    pub async fn run_timer(self: Arc<Self>, cancel: CancellationToken) {
        let mut restarts = self.timer.subscribe();
        loop {
            let deadline = *restarts.borrow_and_update() + PROVISION_TIMEOUT;
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = restarts.changed() => {
                    if changed.is_err() { return; }
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
            let expire = self.with(|s| {
                let expire = s.flags != ALL_READY && !s.timer_fired;
                s.timer_fired = true;
                expire.then_some(s.flags)
            });
            if let Some(flags) = expire {
                self.write_tags(flags);
                self.hooks.start_services();
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = restarts.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests;
