//! The key keeper's poll loop (spec §2.8–§2.10) as a pure state machine: `step(self, event, env)` consumes the
//! machine and returns the next one plus the [`Action`]s the shell performs (STYLE rule 2).
//!
//! Time (uptime) and randomness (jitter) arrive in [`Env`]; I/O results arrive as [`Event`]s. The phases are
//! named for what they wait for. This module must never perform I/O, read a clock, log, or drop a transition:
//! `applied_state` is only advanced once the redirect policy was applied (Deviation, spec §2.8).

use std::time::Duration;

use msp_core::sign::KeyGuid;
use msp_core::wire::{ChannelState, Key, KeyStatus, Modes, SecureChannelState};

use crate::snapshot::ReadyKey;

/// While the state is `Unknown` and uptime is below this, polls are 1 s apart and never back off (spec §2.8).
pub const STARTUP_PHASE: Duration = Duration::from_secs(300);
/// The delay between polls during the start-up phase (spec §2.8).
pub const STARTUP_DELAY: Duration = Duration::from_secs(1);
/// The back-off never exceeds this many poll intervals (spec §2.8, extension).
pub const MAX_BACKOFF_FACTOR: u32 = 8;
/// Jitter bounds: j is uniform in [-0.1, +0.1] (spec §2.8).
pub const MAX_JITTER: f64 = 0.1;

/// Inputs from the outside world that the machine may not read itself.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    /// Time since the agent process started (monotonic).
    pub uptime: Duration,
    /// A uniform sample in [-0.1, +0.1] for the back-off jitter.
    pub jitter: f64,
}

/// What the local key file check found (spec §2.9 step 1).
#[derive(Debug)]
pub enum LocalKey {
    /// A valid root-owned 0600 `<guid>.key` whose guid equals its name.
    Found(Key),
    /// No such file.
    Missing,
    /// A file exists but was refused (symlink, owner, mode, content, guid); the text says why.
    Refused(String),
}

/// Results of the shell's I/O, and wake-ups.
#[derive(Debug)]
pub enum Event {
    /// The task started: first iteration, no delay.
    Start,
    /// The sleep of the last [`Action::Sleep`] ended.
    TimerFired,
    /// A `/provision` notification (spec §2.8, §9.6).
    Notified,
    /// The proxy saw `401 KEY_UNKNOWN`: poll now (spec §2.10, extension).
    KeyUnknown,
    /// `GET /secure-channel/status` succeeded and validated (spec §2.3).
    StatusReceived(Box<KeyStatus>),
    /// The status call failed; the text is the error.
    StatusFailed(String),
    LocalKeyChecked(LocalKey),
    /// `POST /secure-channel/key` answered 200 with a valid key.
    KeyAcquired(Key),
    AcquireFailed(String),
    /// The key was stored, read back and compared.
    KeyStored,
    StoreFailed(String),
    /// The attestation answered 200.
    KeyAttested,
    AttestFailed(String),
    PolicyApplied,
    PolicyFailed(String),
}

/// A log record the shell writes and also turns into a telemetry event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Set the key latch module's message (`keyLatchStatus.message`).
    SetMessage(String),
    /// Log and emit a telemetry event (module `KeyKeeper`).
    Log(Level, String),
    /// The derived state string, modes and rule ids are now in force (status board and snapshot).
    SetChannel(ChannelState),
    /// Publish this key (or none) in the next snapshot; `None` drops every in-memory copy (spec §2.10).
    PublishKey(Option<ReadyKey>),
    FetchStatus,
    /// Check `<key dir>/<guid>.key` (spec §2.9 step 1).
    CheckLocalKey(KeyGuid),
    AcquireKey,
    /// Store, read back and compare (spec §2.9 step 2, §2.11).
    StoreKey(Key),
    /// `POST /secure-channel/key/<guid>/key-attestation`, signed with this key.
    AttestKey(Key),
    /// Set the redirect policy to exactly the endpoints these modes redirect (spec §7.4).
    ApplyPolicy(Modes),
    /// Set `KEY_LATCH_READY` (spec §9.4).
    ConfirmLatch,
    /// A notification while `disabled`/`Unknown`: clear `KEY_LATCH_READY`, `finished_tick` := 0, restart the
    /// 120 s provisioning timer (spec §2.8, §9.5).
    ResetLatch,
    /// Delete key files other than these (spec §2.10).
    DeleteKeysExcept(Vec<KeyGuid>),
    /// Persist the status just processed with this key's guid as `last-status.json` (spec §7.5).
    PersistStatus(KeyGuid),
    /// Remove `last-status.json`: nothing may be served from it (state `disabled`).
    ForgetStatus,
    /// Sleep this long, cut short by a notification.
    Sleep(Duration),
}

/// What one poll iteration has found so far.
#[derive(Debug, Clone, Default)]
struct Iteration {
    /// The host's latched guid in this status.
    host_guid: Option<String>,
    key_needed: bool,
    acquired: bool,
    became_ready: bool,
    /// This iteration moves the applied state (as opposed to a plain latch confirmation).
    transition: bool,
}

/// The phase: what the machine waits for next.
#[derive(Debug)]
enum Phase {
    Idle,
    /// Waiting for the timer; the poll is due at this uptime.
    Sleeping {
        wake_at: Duration,
    },
    AwaitingStatus,
    AwaitingLocalKey(Iteration),
    AwaitingKey(Iteration),
    AwaitingStore(Iteration, Key),
    AwaitingAttestation(Iteration, Key),
    AwaitingPolicy(Iteration),
}

/// The key keeper.
#[derive(Debug)]
pub struct KeyKeeper {
    interval: Duration,
    phase: Phase,
    /// The stored state (`Unknown` until the first successful poll, or after a notification reset).
    channel: ChannelState,
    /// `applied_state` of spec §2.8: the state whose policy was last applied successfully.
    applied: Option<SecureChannelState>,
    transition_failed: bool,
    key: Option<ReadyKey>,
    /// k: consecutive failed iterations.
    failures: u32,
    last_summary: Option<String>,
    acquired_last_iteration: bool,
    /// The (guid, status incarnation) last warned about, so the warning is not repeated every poll.
    incarnation_warned: Option<(String, Option<u32>)>,
    /// The message says the last poll failed; the next successful poll says so (Deviation: the reference keeps
    /// the failure message while it is healthy again).
    poll_failing: bool,
}

impl KeyKeeper {
    /// A fresh key keeper; `restored` is the key loaded with `last-status.json` (spec §7.5).
    pub fn new(interval: Duration, restored: Option<ReadyKey>) -> KeyKeeper {
        KeyKeeper {
            interval,
            phase: Phase::Idle,
            channel: ChannelState::default(),
            applied: None,
            transition_failed: false,
            key: restored,
            failures: 0,
            last_summary: None,
            acquired_last_iteration: false,
            incarnation_warned: None,
            poll_failing: false,
        }
    }

    /// The stored state (what `secureChannelState` shows).
    pub fn state(&self) -> SecureChannelState {
        self.channel.state
    }

    pub fn key(&self) -> Option<&ReadyKey> {
        self.key.as_ref()
    }

    /// Consecutive failed iterations (k of spec §2.8).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the machine waits for the timer (notifications are delivered only then).
    pub fn is_sleeping(&self) -> bool {
        matches!(self.phase, Phase::Sleeping { .. })
    }

    /// Consumes the machine with one event. One `match` over (phase, event) on purpose: it is the transition
    /// table of spec §2.8–§2.9, read top to bottom; the work of each arm lives in the helpers below.
    pub fn step(mut self, event: Event, env: Env) -> (KeyKeeper, Vec<Action>) {
        let mut out = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        self.phase = match (phase, event) {
            (Phase::Idle, Event::Start) => {
                out.push(Action::SetMessage(
                    "poll secure channel status task started.".to_owned(),
                ));
                out.push(Action::FetchStatus);
                Phase::AwaitingStatus
            }
            (Phase::Sleeping { .. }, Event::TimerFired | Event::KeyUnknown) => {
                out.push(Action::FetchStatus);
                Phase::AwaitingStatus
            }
            (Phase::Sleeping { wake_at }, Event::Notified) => {
                self.on_notified(wake_at, env, &mut out)
            }
            (Phase::Sleeping { wake_at }, Event::PolicyApplied) => Phase::Sleeping { wake_at },
            (Phase::Sleeping { wake_at }, Event::PolicyFailed(e)) => {
                self.transition_failed = true;
                out.push(Action::Log(
                    Level::Error,
                    format!("Failed to update redirect policy: {e}"),
                ));
                Phase::Sleeping { wake_at }
            }
            (Phase::AwaitingStatus, Event::StatusFailed(e)) => {
                self.poll_failing = true;
                out.push(Action::SetMessage(format!(
                    "Failed to get key status - {e}"
                )));
                self.end_iteration(None, env, &mut out)
            }
            (Phase::AwaitingStatus, Event::StatusReceived(status)) => {
                if std::mem::take(&mut self.poll_failing) {
                    // Later messages of this iteration (a key step, a transition) replace this one.
                    out.push(Action::SetMessage(format!(
                        "Key status received again after failed polls. - {}",
                        env.uptime.as_millis()
                    )));
                }
                self.on_status(&status, env, &mut out)
            }
            (Phase::AwaitingLocalKey(iter), Event::LocalKeyChecked(found)) => match found {
                LocalKey::Found(key) => self.on_ready(
                    iter,
                    key,
                    "Found key details from local and ready to use.",
                    env,
                    &mut out,
                ),
                LocalKey::Missing => {
                    out.push(Action::AcquireKey);
                    Phase::AwaitingKey(iter)
                }
                LocalKey::Refused(e) => {
                    let guid = iter.host_guid.clone().unwrap_or_default();
                    out.push(Action::SetMessage(format!(
                        "Failed to check the key '{guid}' details saved locally: {e}"
                    )));
                    out.push(Action::AcquireKey);
                    Phase::AwaitingKey(iter)
                }
            },
            (Phase::AwaitingKey(mut iter), Event::KeyAcquired(key)) => {
                iter.acquired = true;
                match key.signing_parts() {
                    Ok(_) => {
                        out.push(Action::StoreKey(key.clone()));
                        Phase::AwaitingStore(iter, key)
                    }
                    Err(e) => {
                        out.push(Action::SetMessage(format!(
                            "Failed to acquire key details: {e}"
                        )));
                        self.after_key(iter, env, &mut out)
                    }
                }
            }
            (Phase::AwaitingKey(iter), Event::AcquireFailed(e)) => {
                out.push(Action::SetMessage(format!(
                    "Failed to acquire key details: {e}"
                )));
                self.after_key(iter, env, &mut out)
            }
            (Phase::AwaitingStore(iter, key), Event::KeyStored) => {
                out.push(Action::AttestKey(key.clone()));
                Phase::AwaitingAttestation(iter, key)
            }
            (Phase::AwaitingStore(iter, _), Event::StoreFailed(e)) => {
                out.push(Action::SetMessage(format!(
                    "Failed to save key details to file: {e}"
                )));
                self.after_key(iter, env, &mut out)
            }
            (Phase::AwaitingAttestation(iter, key), Event::KeyAttested) => self.on_ready(
                iter,
                key,
                "Successfully attest the key and ready to use.",
                env,
                &mut out,
            ),
            (Phase::AwaitingAttestation(iter, _), Event::AttestFailed(e)) => {
                out.push(Action::SetMessage(format!("Failed to attest the key: {e}")));
                self.after_key(iter, env, &mut out)
            }
            (Phase::AwaitingPolicy(iter), Event::PolicyApplied) => {
                if iter.transition {
                    self.applied = Some(self.channel.state);
                    self.transition_failed = false;
                }
                self.after_policy(&iter, env, &mut out);
                self.end_iteration(Some(&iter), env, &mut out)
            }
            (Phase::AwaitingPolicy(iter), Event::PolicyFailed(e)) => {
                self.transition_failed = true;
                out.push(Action::Log(
                    Level::Error,
                    format!("Failed to update redirect policy: {e}"),
                ));
                self.after_policy(&iter, env, &mut out);
                self.end_iteration(Some(&iter), env, &mut out)
            }
            // Notifications outside a sleep are delivered by the shell at the next sleep; anything else out of
            // phase is a shell bug, ignored so the loop keeps its state.
            (phase, event) => {
                out.push(Action::Log(
                    Level::Warn,
                    format!(
                        "key keeper ignored {} while {}",
                        event_name(&event),
                        phase_name(&phase)
                    ),
                ));
                phase
            }
        };
        (self, out)
    }

    fn on_notified(&mut self, wake_at: Duration, env: Env, out: &mut Vec<Action>) -> Phase {
        if self.channel.state.is_unknown_or_disabled() {
            self.channel.state = SecureChannelState::Unknown;
            // The next poll must run the transition again so the latch is re-confirmed (spec §2.8).
            self.applied = None;
            out.push(Action::ResetLatch);
            out.push(Action::SetChannel(self.channel.clone()));
            out.push(Action::FetchStatus);
            Phase::AwaitingStatus
        } else {
            out.push(Action::ConfirmLatch);
            out.push(Action::ApplyPolicy(self.channel.modes));
            out.push(Action::Sleep(wake_at.saturating_sub(env.uptime)));
            Phase::Sleeping { wake_at }
        }
    }

    fn on_status(&mut self, status: &KeyStatus, env: Env, out: &mut Vec<Action>) -> Phase {
        let channel = status.derive();
        let summary = status.summary(&channel);
        if self.last_summary.as_deref() != Some(summary.as_str()) {
            out.push(Action::Log(
                Level::Warn,
                format!("Got key status successfully: {summary}."),
            ));
            for name in status.unknown_required_claims() {
                out.push(Action::Log(
                    Level::Warn,
                    format!("requiredClaimsHeaderPairs names an unknown claim {name:?}; ignored"),
                ));
            }
            self.last_summary = Some(summary);
        }
        let host_guid = status.latched_guid().map(str::to_owned);
        if let (Some(key), Some(guid)) = (&self.key, &host_guid)
            && key.guid.as_str().eq_ignore_ascii_case(guid)
            && status.key_incarnation_id != key.incarnation_id
        {
            let seen = Some((guid.clone(), status.key_incarnation_id));
            if self.incarnation_warned != seen {
                out.push(Action::Log(
                    Level::Warn,
                    format!(
                        "keyIncarnationId {:?} of the status differs from the key's {:?} while keyGuid {guid} is \
                         unchanged",
                        status.key_incarnation_id, key.incarnation_id
                    ),
                ));
                self.incarnation_warned = seen;
            }
        }
        self.channel = channel.clone();
        out.push(Action::SetChannel(channel));
        let key_needed =
            self.channel.state != SecureChannelState::Disabled && !self.holds(host_guid.as_deref());
        let iter = Iteration {
            host_guid,
            key_needed,
            ..Iteration::default()
        };
        if !key_needed {
            return self.after_key(iter, env, out);
        }
        match iter.host_guid.as_deref().map(KeyGuid::parse) {
            Some(Ok(guid)) => {
                out.push(Action::CheckLocalKey(guid));
                Phase::AwaitingLocalKey(iter)
            }
            _ => {
                out.push(Action::AcquireKey);
                Phase::AwaitingKey(iter)
            }
        }
    }

    /// The key in memory is the one the host reports latched.
    fn holds(&self, host_guid: Option<&str>) -> bool {
        match (&self.key, host_guid) {
            (Some(key), Some(guid)) => key.guid.as_str().eq_ignore_ascii_case(guid),
            _ => false,
        }
    }

    fn on_ready(
        &mut self,
        mut iter: Iteration,
        key: Key,
        message: &str,
        env: Env,
        out: &mut Vec<Action>,
    ) -> Phase {
        let (guid, signing) = match key.signing_parts() {
            Ok(parts) => parts,
            Err(e) => {
                out.push(Action::SetMessage(format!(
                    "Failed to acquire key details: {e}"
                )));
                return self.after_key(iter, env, out);
            }
        };
        let ready = ReadyKey {
            guid,
            key: signing,
            incarnation_id: key.incarnation_id,
        };
        let predecessor = self.key.replace(ready.clone()).map(|k| k.guid);
        iter.became_ready = true;
        out.push(Action::PublishKey(Some(ready)));
        out.push(Action::SetMessage(format!(
            "{message} - {}",
            env.uptime.as_millis()
        )));
        // Spec §2.10: once a new key is ready, only it and its predecessor stay on disk.
        let mut keep = vec![guid];
        keep.extend(predecessor);
        out.push(Action::DeleteKeysExcept(keep));
        self.after_key(iter, env, out)
    }

    /// The transition step of spec §2.8; runs whether or not the key step succeeded (Deviation).
    fn after_key(&mut self, mut iter: Iteration, env: Env, out: &mut Vec<Action>) -> Phase {
        let state = self.channel.state;
        iter.transition = self.applied != Some(state) || self.transition_failed;
        let key_ready = state != SecureChannelState::Disabled && self.key.is_some();
        if iter.transition && self.transition_failed {
            out.push(Action::Log(
                Level::Warn,
                "redirect policy was not update successfully before, retrying now".to_owned(),
            ));
        }
        if iter.became_ready || (iter.transition && key_ready) {
            out.push(Action::ConfirmLatch);
        }
        if iter.transition || iter.became_ready {
            out.push(Action::ApplyPolicy(self.channel.modes));
            return Phase::AwaitingPolicy(iter);
        }
        self.end_iteration(Some(&iter), env, out)
    }

    fn after_policy(&mut self, iter: &Iteration, env: Env, out: &mut Vec<Action>) {
        if iter.transition && self.channel.state == SecureChannelState::Disabled {
            // Dropped whether or not the policy update worked: after `disabled` nothing is signed (conf 24).
            if self.key.take().is_some() {
                out.push(Action::PublishKey(None));
            }
            out.push(Action::ConfirmLatch);
            out.push(Action::SetMessage(format!(
                "Customer has not enforce the secure channel state. - {}",
                env.uptime.as_millis()
            )));
        }
    }

    /// Spec §2.9 *(decided)*: failed when a key was needed and none became ready, or when it acquired a key
    /// and the previous iteration had acquired one too.
    fn iteration_failed(&self, iter: &Iteration) -> bool {
        (iter.key_needed && !iter.became_ready) || (iter.acquired && self.acquired_last_iteration)
    }

    fn end_iteration(
        &mut self,
        iter: Option<&Iteration>,
        env: Env,
        out: &mut Vec<Action>,
    ) -> Phase {
        let succeeded = iter.is_some_and(|i| !self.iteration_failed(i));
        self.acquired_last_iteration = iter.is_some_and(|i| i.acquired);
        self.failures = if succeeded {
            0
        } else {
            self.failures.saturating_add(1)
        };
        match (self.channel.state, iter) {
            (SecureChannelState::Disabled, Some(_)) => out.push(Action::ForgetStatus),
            (SecureChannelState::Unknown | SecureChannelState::Disabled, _) | (_, None) => {}
            (_, Some(iter)) => {
                // Persisted only with the key it belongs to (spec §7.5).
                if self.holds(iter.host_guid.as_deref())
                    && let Some(key) = &self.key
                {
                    out.push(Action::PersistStatus(key.guid));
                }
            }
        }
        let delay = poll_delay(
            self.channel.state,
            env.uptime,
            self.failures,
            self.interval,
            env.jitter,
        );
        out.push(Action::Sleep(delay));
        Phase::Sleeping {
            wake_at: env.uptime + delay,
        }
    }
}

/// The delay before the next poll (spec §2.8): 1 s while `Unknown` in the first 300 s of uptime (never backed
/// off); otherwise the interval, or after k ≥ 1 failed iterations `min(interval · 2^k · (1 + j), 8 · interval)`.
pub fn poll_delay(
    state: SecureChannelState,
    uptime: Duration,
    failures: u32,
    interval: Duration,
    jitter: f64,
) -> Duration {
    if state == SecureChannelState::Unknown && uptime < STARTUP_PHASE {
        return STARTUP_DELAY;
    }
    if failures == 0 {
        return interval;
    }
    let cap = interval * MAX_BACKOFF_FACTOR;
    // 2^4 already exceeds the cap of 8 even with -10 % jitter, so larger exponents change nothing.
    let growth = f64::from(1u32 << failures.min(4));
    let factor = growth * (1.0 + jitter.clamp(-MAX_JITTER, MAX_JITTER));
    interval.mul_f64(factor).min(cap)
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Start => "Start",
        Event::TimerFired => "TimerFired",
        Event::Notified => "Notified",
        Event::KeyUnknown => "KeyUnknown",
        Event::StatusReceived(_) => "StatusReceived",
        Event::StatusFailed(_) => "StatusFailed",
        Event::LocalKeyChecked(_) => "LocalKeyChecked",
        Event::KeyAcquired(_) => "KeyAcquired",
        Event::AcquireFailed(_) => "AcquireFailed",
        Event::KeyStored => "KeyStored",
        Event::StoreFailed(_) => "StoreFailed",
        Event::KeyAttested => "KeyAttested",
        Event::AttestFailed(_) => "AttestFailed",
        Event::PolicyApplied => "PolicyApplied",
        Event::PolicyFailed(_) => "PolicyFailed",
    }
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Idle => "Idle",
        Phase::Sleeping { .. } => "Sleeping",
        Phase::AwaitingStatus => "AwaitingStatus",
        Phase::AwaitingLocalKey(_) => "AwaitingLocalKey",
        Phase::AwaitingKey(_) => "AwaitingKey",
        Phase::AwaitingStore(..) => "AwaitingStore",
        Phase::AwaitingAttestation(..) => "AwaitingAttestation",
        Phase::AwaitingPolicy(_) => "AwaitingPolicy",
    }
}

#[cfg(test)]
mod tests;
