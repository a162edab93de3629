//! The key keeper (spec §2.8–§2.12, §4.7–§4.9, §7.4, §7.5): the async shell around the pure
//! [`machine::KeyKeeper`]. It performs the machine's actions (host calls, key files, rules, redirect policy,
//! snapshot, status, provisioning flags) and feeds their results back as events, one at a time.
//!
//! Each piece of state has one owner: this task owns the snapshot publisher, the key store and the rules
//! resolver. It must never log key bytes, never sign with a key it has dropped, and never hold a lock across
//! `.await`.

pub mod channel;
pub mod keystore;
pub mod machine;
pub mod rules;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msp_core::Endpoint;
use msp_core::status::{ModuleState, state_keys};
use msp_core::wire::{ChannelState, KeyStatus, Modes, SecureChannelState};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::channel::SecureChannel;
use self::keystore::{KeyStore, LastStatus};
use self::machine::{Action, Env, Event, KeyKeeper, Level, LocalKey};
use self::rules::RulesResolver;
use crate::config::EndpointAddrs;
use crate::snapshot::{HostClock, Items, ReadyKey, SnapshotPublisher};
use crate::status::provision::{KEY_LATCH_READY, Provisioning};
use crate::status::{Module, StatusBoard};
use crate::storage::{self, SecureDir};
use crate::telemetry::{EventLevel, EventSink};

/// Wake-ups from `/provision` and from `KEY_UNKNOWN` answers are each at most this frequent (spec §2.10, §9.6).
pub const WAKE_MIN_GAP: Duration = Duration::from_secs(1);

/// The redirect policy, as the key keeper drives it (spec §7.4). Implemented by `gpa::redirect`'s redirector;
/// a failed update must be reported as a failure.
pub trait PolicySink: Send + Sync {
    /// Sets the policy to exactly these destinations (one per endpoint whose mode is not `disabled`).
    fn set_policy(&self, destinations: &[SocketAddr]) -> Result<(), PolicyError>;
}

/// A redirect policy update failure, as the redirector reports it.
pub type PolicyError = Box<dyn std::error::Error + Send + Sync>;

/// The destinations `modes` redirect (spec §7.4).
pub fn destinations(modes: &Modes, endpoints: &EndpointAddrs) -> Vec<SocketAddr> {
    modes.redirected().map(|e| endpoints.addr(e)).collect()
}

#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    last: Mutex<Option<std::time::Instant>>,
}

impl Wake {
    fn fire(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < WAKE_MIN_GAP) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        drop(last);
        self.notify.notify_one();
        true
    }
}

/// What the proxy (and `/provision`) use to wake the key keeper.
#[derive(Debug, Clone, Default)]
pub struct KeeperHandle {
    provision: Arc<Wake>,
    key_unknown: Arc<Wake>,
}

impl KeeperHandle {
    /// A `/provision` notification (`x-ms-azure-notify`), at most once per second; true when delivered.
    pub fn notify(&self) -> bool {
        self.provision.fire()
    }

    /// A forwarded request came back `401` with `x-msp-reason: KEY_UNKNOWN`: poll now, at most once per second.
    pub fn key_unknown(&self) -> bool {
        self.key_unknown.fire()
    }
}

/// Everything the key keeper needs, wired by the lifecycle.
pub struct KeyKeeperTask {
    pub channel: SecureChannel,
    pub interval: Duration,
    pub key_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub endpoints: EndpointAddrs,
    pub publisher: SnapshotPublisher,
    pub board: Arc<StatusBoard>,
    pub provisioning: Arc<Provisioning>,
    pub policy: Arc<dyn PolicySink>,
    pub events: EventSink,
    pub handle: KeeperHandle,
}

/// The shell's own state.
struct Shell {
    task: KeyKeeperTask,
    rules: RulesResolver,
    store: Option<KeyStore>,
    /// Why the key directory could not be opened, for the status message (spec §2.11: "reports it").
    store_error: Option<String>,
    status: Option<KeyStatus>,
    shown: ChannelState,
    rules_errors: BTreeMap<Endpoint, String>,
    persisted: Option<Vec<u8>>,
    deadline: Option<Instant>,
}

impl KeyKeeperTask {
    /// Runs the poll loop until `cancel`; the module is then `STOPPED` (spec §2.8).
    pub async fn run(self, cancel: CancellationToken) {
        let rules = RulesResolver::new(self.rules_dir.clone(), self.events.clone());
        let mut shell = Shell {
            task: self,
            rules,
            store: None,
            store_error: None,
            status: None,
            shown: ChannelState::default(),
            rules_errors: BTreeMap::new(),
            persisted: None,
            deadline: None,
        };
        let restored = shell.prepare().await;
        let machine = KeyKeeper::new(shell.task.interval, restored);
        tokio::select! {
            () = cancel.cancelled() => {}
            () = shell.drive(machine) => {}
        }
        shell.task.board.set(
            Module::KeyLatch,
            ModuleState::Stopped,
            "poll_secure_channel_status task cancelled.",
        );
    }
}

impl Shell {
    /// Prepares both directories (spec §2.8) and restores the persisted status with its key (spec §7.5).
    async fn prepare(&mut self) -> Option<ReadyKey> {
        self.task.board.set(
            Module::KeyLatch,
            ModuleState::Running,
            "poll secure channel status task started.",
        );
        if let Err(e) = SecureDir::open_or_create(&self.task.rules_dir, storage::PRIVATE_DIR_MODE) {
            self.log(Level::Error, format!("rules directory unusable: {e}"));
        }
        let (status, key) = self.store()?.restore()?;
        // The rules snapshot file (two fsyncs) is written once the restored key is in force, not before.
        let rules_items = self
            .rules
            .resolve(&status)
            .await
            .map(|update| self.publish_rules(update));
        // The modes and rule ids of the persisted status apply at once; the state string stays `Unknown` until
        // the first successful poll (conf 8), also for `/provision` (spec §9.6).
        let channel = ChannelState {
            state: SecureChannelState::Unknown,
            ..status.derive()
        };
        let modes = channel.modes;
        self.task.publisher.publish(|s| {
            s.ready = true;
            s.channel = channel;
            s.key = Some(key.clone());
        });
        if let Err(e) = self
            .task
            .policy
            .set_policy(&destinations(&modes, &self.task.endpoints))
        {
            self.log(
                Level::Error,
                format!("Failed to update redirect policy: {e}"),
            );
        }
        self.task.provisioning.set_flag(KEY_LATCH_READY);
        self.log(
            Level::Info,
            format!(
                "Restored the last-known status with key {} - {}",
                key.guid,
                uptime_ms()
            ),
        );
        if let Some(items) = rules_items {
            self.write_rules_snapshot(&status, &items);
        }
        self.status = Some(status);
        self.update_states();
        Some(key)
    }

    async fn drive(&mut self, mut machine: KeyKeeper) {
        let mut queue = VecDeque::from([Event::Start]);
        loop {
            while let Some(event) = queue.pop_front() {
                let (next, actions) = machine.step(event, env());
                machine = next;
                for action in actions {
                    if let Some(event) = self.perform(action).await {
                        queue.push_back(event);
                    }
                }
            }
            let deadline = self
                .deadline
                .unwrap_or_else(|| Instant::now() + self.task.interval);
            let provision = self.task.handle.provision.clone();
            let key_unknown = self.task.handle.key_unknown.clone();
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => queue.push_back(Event::TimerFired),
                () = provision.notify.notified() => queue.push_back(Event::Notified),
                () = key_unknown.notify.notified() => queue.push_back(Event::KeyUnknown),
            }
        }
    }

    fn store(&mut self) -> Option<&KeyStore> {
        if self.store.is_none() {
            match KeyStore::open(&self.task.key_dir) {
                Ok(s) => {
                    self.store = Some(s);
                    self.store_error = None;
                }
                Err(e) => {
                    let message = format!("key directory unusable: {e}");
                    self.log(Level::Error, message.clone());
                    self.store_error = Some(message);
                }
            }
        }
        self.store.as_ref()
    }

    /// The status text for an unusable key directory, with the reason (catalog E2).
    fn store_error(&self) -> String {
        self.store_error
            .clone()
            .unwrap_or_else(|| "key directory unusable".to_owned())
    }

    fn log(&self, level: Level, message: String) {
        let ev = match level {
            Level::Info => {
                tracing::info!(module = "KeyKeeper", "{message}");
                EventLevel::Info
            }
            Level::Warn => {
                tracing::warn!(module = "KeyKeeper", "{message}");
                EventLevel::Warn
            }
            Level::Error => {
                tracing::error!(module = "KeyKeeper", "{message}");
                EventLevel::Error
            }
        };
        self.task.events.emit(ev, "KeyKeeper", &message);
    }

    fn date(&self) -> String {
        self.task.publisher.current().date_header()
    }

    /// `keyLatchStatus.states` (spec §9.2).
    fn update_states(&self) {
        let snap = self.task.publisher.current();
        let ids = &self.shown.rule_ids;
        let mut states = BTreeMap::from([
            (
                state_keys::SECURE_CHANNEL_STATE.to_owned(),
                self.shown.state.to_string(),
            ),
            (
                state_keys::WIRESERVER_RULE_ID.to_owned(),
                ids.wireserver.clone(),
            ),
            (state_keys::IMDS_RULE_ID.to_owned(), ids.imds.clone()),
            (state_keys::HOSTGA_RULE_ID.to_owned(), ids.hostga.clone()),
        ]);
        if let Some(key) = &snap.key {
            states.insert(state_keys::KEY_GUID.to_owned(), key.guid.to_string());
            if let Some(inc) = key.incarnation_id {
                states.insert(state_keys::KEY_INCARNATION_ID.to_owned(), inc.to_string());
            }
        }
        for (endpoint, error) in &self.rules_errors {
            let key = match endpoint {
                Endpoint::WireServer => state_keys::WIRESERVER_RULES_ERROR,
                Endpoint::Imds => state_keys::IMDS_RULES_ERROR,
                Endpoint::HostGaPlugin => state_keys::HOSTGA_RULES_ERROR,
            };
            states.insert(key.to_owned(), error.clone());
        }
        self.task.board.set_key_latch_states(states);
    }

    fn apply_rules(&mut self, update: rules::RulesUpdate, status: &KeyStatus) {
        let items = self.publish_rules(update);
        self.write_rules_snapshot(status, &items);
    }

    /// Puts resolved rules in force (spec §4.9: publish a new snapshot).
    fn publish_rules(&mut self, update: rules::RulesUpdate) -> Arc<Items> {
        self.rules_errors = update
            .errors
            .iter()
            .filter_map(|(e, m)| m.clone().map(|m| (*e, m)))
            .collect();
        let items = Arc::new(update.items);
        self.task.publisher.publish(|s| s.items = items.clone());
        items
    }

    /// Writes the rules snapshot file of spec §4.9 into the log folder, when there is one.
    fn write_rules_snapshot(&self, status: &KeyStatus, items: &Items) {
        if let (Some(dir), Some(input)) = (&self.task.log_dir, &status.authorization_rules)
            && let Err(e) = rules::write_rules_file(dir, input, items, crate::clock::unix_nanos())
        {
            tracing::warn!(error = %e, "cannot write the rules snapshot file");
        }
    }

    async fn fetch_status(&mut self) -> Event {
        let reply = match self.task.channel.status(self.date()).await {
            Ok(reply) => reply,
            Err(e) => return Event::StatusFailed(e.to_string()),
        };
        let now = Instant::now().into_std();
        if self.task.publisher.current().clock.needs_resync(now) {
            match HostClock::synced(reply.host_date.as_deref(), reply.date.as_deref(), now) {
                Ok(clock) => {
                    self.task.publisher.publish(|s| s.clock = clock);
                }
                Err(e) => self.log(Level::Warn, format!("host clock not synced: {e}")),
            }
        }
        if let Some(update) = self.rules.resolve(&reply.status).await {
            self.apply_rules(update, &reply.status);
        }
        if !self.task.publisher.current().ready {
            self.task.publisher.publish(|s| s.ready = true);
        }
        self.status = Some(reply.status.clone());
        Event::StatusReceived(Box::new(reply.status))
    }

    async fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::SetMessage(message) => {
                tracing::info!(module = "KeyKeeper", "{message}");
                self.task.board.set_message(Module::KeyLatch, message);
                None
            }
            Action::Log(level, message) => {
                self.log(level, message);
                None
            }
            Action::SetChannel(channel) => {
                self.shown = channel.clone();
                self.task.publisher.publish(|s| s.channel = channel);
                self.update_states();
                None
            }
            Action::PublishKey(key) => {
                self.task.publisher.publish(|s| s.key = key);
                self.update_states();
                None
            }
            Action::FetchStatus => Some(self.fetch_status().await),
            Action::CheckLocalKey(guid) => Some(Event::LocalKeyChecked(match self.store() {
                Some(store) => store.check(&guid),
                None => LocalKey::Refused(self.store_error()),
            })),
            Action::AcquireKey => Some(match self.task.channel.acquire(self.date()).await {
                Ok(key) => Event::KeyAcquired(key),
                Err(e) => Event::AcquireFailed(e.to_string()),
            }),
            Action::StoreKey(key) => Some(match self.store() {
                Some(store) => match store.store(&key) {
                    Ok(()) => Event::KeyStored,
                    Err(e) => Event::StoreFailed(e.to_string()),
                },
                None => Event::StoreFailed(self.store_error()),
            }),
            Action::AttestKey(key) => Some(match key.signing_parts() {
                Ok((guid, signing)) => {
                    let ready = ReadyKey {
                        guid,
                        key: signing,
                        incarnation_id: key.incarnation_id,
                    };
                    match self.task.channel.attest(self.date(), &ready).await {
                        Ok(()) => Event::KeyAttested,
                        Err(e) => Event::AttestFailed(e.to_string()),
                    }
                }
                Err(e) => Event::AttestFailed(e.to_string()),
            }),
            Action::ApplyPolicy(modes) => {
                let dests = destinations(&modes, &self.task.endpoints);
                Some(match self.task.policy.set_policy(&dests) {
                    Ok(()) => Event::PolicyApplied,
                    Err(e) => Event::PolicyFailed(e.to_string()),
                })
            }
            Action::ConfirmLatch => {
                self.task.provisioning.set_flag(KEY_LATCH_READY);
                None
            }
            Action::ResetLatch => {
                self.task.provisioning.reset_latch();
                None
            }
            Action::DeleteKeysExcept(keep) => {
                if let Some(store) = self.store() {
                    match store.delete_except(&keep) {
                        Ok(deleted) if !deleted.is_empty() => {
                            tracing::info!(?deleted, "old key files deleted");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.log(Level::Warn, format!("cannot delete old key files: {e}"))
                        }
                    }
                }
                None
            }
            Action::PersistStatus(guid) => {
                self.persist(guid.to_string());
                None
            }
            Action::ForgetStatus => {
                if self.persisted.as_deref() != Some(&[][..]) {
                    if let Some(store) = self.store()
                        && let Err(e) = store.forget_status()
                    {
                        tracing::warn!(error = %e, "cannot remove last-status.json");
                    }
                    self.persisted = Some(Vec::new());
                }
                None
            }
            Action::Sleep(delay) => {
                self.deadline = Some(Instant::now() + delay);
                None
            }
        }
    }

    fn persist(&mut self, key_guid: String) {
        let Some(status) = self.status.clone() else {
            return;
        };
        let last = LastStatus { key_guid, status };
        let bytes = serde_json::to_vec(&last).unwrap_or_default();
        if self.persisted.as_ref() == Some(&bytes) {
            return;
        }
        let Some(store) = self.store() else { return };
        match store.persist_status(&last) {
            Ok(()) => self.persisted = Some(bytes),
            Err(e) => tracing::warn!(error = %e, "cannot persist last-status.json"),
        }
    }
}

fn uptime_ms() -> u128 {
    crate::clock::uptime().as_millis()
}

fn env() -> Env {
    Env {
        uptime: crate::clock::uptime(),
        jitter: rand::random_range(-machine::MAX_JITTER..=machine::MAX_JITTER),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_are_delivered_at_most_once_per_second_each() {
        let handle = KeeperHandle::default();
        assert!(handle.notify());
        assert!(
            !handle.notify(),
            "a second notification within 1 s is dropped"
        );
        assert!(handle.key_unknown(), "KEY_UNKNOWN has its own budget");
        assert!(!handle.key_unknown());
        // The delivered one is stored until the key keeper next waits.
        tokio::time::timeout(
            Duration::from_millis(100),
            handle.provision.notify.notified(),
        )
        .await
        .expect("the stored notification wakes the next wait");
    }

    #[test]
    fn destinations_follow_the_modes() {
        use msp_core::Mode;
        let endpoints = crate::config::Config::default().endpoints();
        let modes = Modes::uniform(Mode::Disabled).with(Endpoint::Imds, Mode::Audit);
        assert_eq!(destinations(&modes, &endpoints), [endpoints.imds]);
        assert!(destinations(&Modes::uniform(Mode::Disabled), &endpoints).is_empty());
        assert_eq!(
            destinations(&Modes::uniform(Mode::Enforce), &endpoints).len(),
            3
        );
    }
}
