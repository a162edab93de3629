//! The agent's lifecycle (`gpa::run`, spec §7.2, §7.5, §9.5, §1.2): start order, task tracking, shutdown.
//!
//! Order: the redirector (its skip table for our pid before any hook attaches, spec §7.2), then the listener
//! bind (5 × 1 s on address-in-use, then one last try), then the key keeper, the provisioning timer and the
//! telemetry/status-writer gate (provisioning or 60 s of uptime, whichever is first), then the proxy. Every task
//! is tracked and stops on one `CancellationToken`; SIGTERM/SIGINT drain and exit, and dropping the redirector
//! detaches everything (`redirectFailMode: open`).
//!
//! The redirector and the proxy plug in through [`Parts`]; [`Parts::default`] wires the eBPF redirector (its
//! records feed the proxy's attribution) and `gpa::proxy::serve`, and tests swap either. An orderly stop
//! detaches and unpins the redirector (spec §7.5). This module must never spawn an untracked task.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use msp_core::status::ModuleState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hostcall::HostClient;
use crate::keykeeper::channel::SecureChannel;
use crate::keykeeper::{KeeperHandle, KeyKeeperTask, PolicyError, PolicySink, destinations};
use crate::snapshot::{Snapshot, SnapshotPublisher};
use crate::status::provision::{LISTENER_READY, ProvisionHooks, REDIRECTOR_READY};
use crate::status::writer::{HostReporter, StatusWriter};
use crate::status::{Module, Provisioning, StatusBoard, StatusHub};
use crate::telemetry::EventSink;
use crate::telemetry::sender::TelemetrySender;
use crate::telemetry::spool::Spool;
use crate::unit::Unit;

/// Redirector start attempts and their spacing (spec §9.2 `ebpfProgramStatus`).
pub const REDIRECTOR_ATTEMPTS: u32 = 5;
pub const REDIRECTOR_RETRY: Duration = Duration::from_millis(10);
/// Listener bind retries on address-in-use, and their spacing (spec §1.2); one final attempt follows.
pub const BIND_RETRIES: u32 = 5;
pub const BIND_RETRY: Duration = Duration::from_secs(1);
/// Telemetry and the status writer start at this uptime if provisioning has not started them (spec §2.8).
pub const SERVICES_START_UPTIME: Duration = Duration::from_secs(60);
/// How long shutdown waits for tasks to finish after cancellation.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// What the proxy gets (spec §8): the bound listener and every shared handle it needs.
pub struct ProxyContext {
    pub config: Arc<Config>,
    /// Bound to `proxyListenAddress` (loopback only, spec §1.2).
    pub listener: TcpListener,
    /// Bound to `[::1]` at the same port when an endpoint is configured with a native IPv6 address (spec §7.1).
    pub listener_v6: Option<TcpListener>,
    /// Read one snapshot per request (see `crate::snapshot`).
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// `record(kind, &RequestRecord)` for every finished request; `board.count_request()`; `document()` for
    /// `/gpa-aggregated-status`.
    pub status: Arc<StatusHub>,
    /// `answer(time_tick, state)` for `/provision`.
    pub provisioning: Arc<Provisioning>,
    /// `notify()` for `/provision` with `x-ms-azure-notify`, `key_unknown()` on a `401 KEY_UNKNOWN`.
    pub keeper: KeeperHandle,
    pub events: EventSink,
    pub cancel: CancellationToken,
}

/// A started redirector as the agent sees it: the policy side (key keeper, provisioning) and the orderly stop.
pub trait RedirectorHandle: PolicySink {
    /// The orderly stop of spec §7.5: detach and unpin everything. Default: nothing to stop.
    fn stop(&self) -> Result<(), PolicyError> {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
impl RedirectorHandle for crate::redirect::Redirector {
    fn stop(&self) -> Result<(), PolicyError> {
        crate::redirect::Redirector::stop(self).map_err(Into::into)
    }
}

/// Starts the redirector: skip table first, then the hooks.
pub type StartRedirector =
    Box<dyn Fn(&Config) -> Result<Arc<dyn RedirectorHandle>, PolicyError> + Send + Sync>;
/// Serves the proxy until `ctx.cancel`.
pub type ServeProxy =
    Box<dyn FnOnce(ProxyContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The pluggable parts of the agent.
pub struct Parts {
    pub start_redirector: StartRedirector,
    pub serve_proxy: ServeProxy,
}

impl Default for Parts {
    /// The eBPF redirector of `gpa::redirect` and the proxy of `gpa::proxy`, sharing the redirector so the
    /// proxy can take each connection's attribution record (spec §7.3).
    fn default() -> Self {
        kernel_parts()
    }
}

#[cfg(target_os = "linux")]
fn kernel_parts() -> Parts {
    use crate::proxy::{Attributor, KernelAttributor, NoRecords};
    use crate::redirect::{RedirectConfig, Redirector};
    let started: Arc<std::sync::OnceLock<Arc<Redirector>>> = Arc::default();
    let for_proxy = started.clone();
    Parts {
        start_redirector: Box::new(move |config| {
            let redirector = Arc::new(Redirector::start(RedirectConfig::from_agent_config(
                config,
            ))?);
            // Only a successful start sets it, and the lifecycle starts at most one.
            let _ = started.set(redirector.clone());
            Ok(redirector as Arc<dyn RedirectorHandle>)
        }),
        serve_proxy: Box::new(move |ctx| {
            let attributor: Arc<dyn Attributor> = match for_proxy.get() {
                Some(redirector) => Arc::new(KernelAttributor::new(redirector.clone())),
                // No redirector: every connection is direct and gets 421 (spec §8.2 step 7).
                None => Arc::new(NoRecords),
            };
            Box::pin(crate::proxy::serve(ctx, attributor))
        }),
    }
}

#[cfg(not(target_os = "linux"))]
fn kernel_parts() -> Parts {
    Parts {
        start_redirector: Box::new(|_| Err("the eBPF redirector needs Linux".into())),
        serve_proxy: Box::new(|ctx| {
            Box::pin(crate::proxy::serve(ctx, Arc::new(crate::proxy::NoRecords)))
        }),
    }
}

/// Unblocks SIGTERM and SIGINT in the calling thread. A parent may start the agent with them blocked (the mask
/// survives `exec`, and every thread inherits it); the agent would then never see the stop it is sent. One thread
/// that takes them is enough: the kernel hands a signal sent to the process to a thread that does not block it.
fn unblock_stop_signals() -> nix::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&stop), None)
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    run_with_events(config, EventSink::new()).await
}

/// [`run`] with the event queue that the `fileLogLevelForEvents` log layer also feeds.
pub async fn run_with_events(config: Config, events: EventSink) -> Result<(), RunError> {
    let cancel = CancellationToken::new();
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    // Only now that both are handled: a stop sent while they were blocked is then taken, not fatal.
    if let Err(e) = unblock_stop_signals() {
        tracing::warn!(error = %e, "cannot unblock SIGTERM and SIGINT; a blocked stop signal will not be seen");
    }
    let signals = async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = int.recv() => tracing::info!("SIGINT received, stopping"),
            () = cancel.cancelled() => return,
        }
        cancel.cancel();
    };
    // The agent keeps running (and then drains) while the signal future only cancels it.
    tokio::join!(
        run_with(config, Parts::default(), events, cancel.clone()),
        signals
    );
    Ok(())
}

/// Starts every task of the agent and returns once `cancel` fired and the tasks drained.
pub async fn run_with(config: Config, parts: Parts, events: EventSink, cancel: CancellationToken) {
    crate::clock::mark_start();
    let config = Arc::new(config);
    let agent = Agent::start(config, parts, events, cancel.clone()).await;
    cancel.cancelled().await;
    agent.stop().await;
}

/// The running agent: its task tracker and the objects that must outlive the tasks.
pub struct Agent {
    tracker: TaskTracker,
    /// Stopped on the orderly stop; dropped without a stop (a crash) it detaches in `open` mode only.
    redirector: Option<Arc<dyn RedirectorHandle>>,
    pub board: Arc<StatusBoard>,
    pub provisioning: Arc<Provisioning>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub keeper: KeeperHandle,
}

/// A policy sink for when the redirector could not start: every update fails, and says why.
struct NoRedirector;

impl PolicySink for NoRedirector {
    fn set_policy(&self, _: &[SocketAddr]) -> Result<(), PolicyError> {
        Err("the redirector is not running".into())
    }
}

/// What provisioning does besides the tags (spec §9.5 steps 1 and 4).
struct Hooks {
    policy: Arc<dyn PolicySink>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    start: watch::Sender<bool>,
    /// Set when the agent runs as its own systemd unit (spec §9.5 steps 3 and 4).
    unit: Option<Unit>,
}

impl ProvisionHooks for Hooks {
    fn reapply_policy(&self) {
        let snap = self.snapshots.borrow().clone();
        if let Err(e) = self
            .policy
            .set_policy(&destinations(&snap.channel.modes, &snap.endpoints))
        {
            tracing::warn!(error = %e, "re-applying the redirect policy at provisioning failed");
        }
    }

    fn start_services(&self) {
        let started = self.start.send_replace(true);
        if let (false, Some(unit)) = (started, &self.unit) {
            unit.limit_cpu();
        }
    }

    fn finished(&self, error: &str) {
        if let Some(unit) = &self.unit {
            unit.announce(error);
        }
    }
}

impl Agent {
    /// Starts everything in the order of the module documentation. One function on purpose: the start order of
    /// spec §7.2/§7.5/§9.5 reads top to bottom here.
    pub async fn start(
        config: Arc<Config>,
        parts: Parts,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Agent {
        let tracker = TaskTracker::new();
        let board = Arc::new(StatusBoard::new());
        let endpoints = config.endpoints();
        let publisher =
            SnapshotPublisher::new(Snapshot::initial(endpoints, config.proxy_listen_address));
        let snapshots = publisher.subscribe();
        let keeper = KeeperHandle::default();

        let redirector = start_redirector(&parts.start_redirector, &config, &board).await;
        let policy: Arc<dyn PolicySink> = match &redirector {
            Some(r) => r.clone() as Arc<dyn PolicySink>,
            None => Arc::new(NoRedirector),
        };
        let (start_tx, mut start_rx) = watch::channel(false);
        let provisioning = Arc::new(Provisioning::new(
            board.clone(),
            events.clone(),
            config.latch_key_folder.clone(),
            Arc::new(Hooks {
                policy: policy.clone(),
                snapshots: snapshots.clone(),
                start: start_tx.clone(),
                unit: Unit::detect(),
            }),
        ));
        if redirector.is_some() {
            provisioning.set_flag(REDIRECTOR_READY);
        }

        let listener = bind_listener(config.proxy_listen_address, &board, &cancel).await;
        let listener_v6 = match &listener {
            // On failure the board says why and the flag stays unset.
            Some(v4) if needs_v6_listener(&config) => {
                bind_v6_listener(v4, &board, &cancel).await.map(Some)
            }
            Some(_) => Some(None),
            None => None,
        };
        if listener.is_some() && listener_v6.is_some() {
            provisioning.set_flag(LISTENER_READY);
        }

        let client = HostClient::new(config.host_call_timeout());
        let key_keeper = KeyKeeperTask {
            channel: SecureChannel {
                client,
                wireserver: endpoints.wireserver,
            },
            interval: config.poll_interval(),
            key_dir: config.latch_key_folder.clone(),
            rules_dir: config.rules_dir(),
            log_dir: config.log_dir().map(PathBuf::from),
            endpoints,
            publisher,
            board: board.clone(),
            provisioning: provisioning.clone(),
            policy,
            events: events.clone(),
            handle: keeper.clone(),
        };
        tracker.spawn(key_keeper.run(cancel.clone()));
        tracker.spawn(provisioning.clone().run_timer(cancel.clone()));

        // Telemetry and the status writer: at provisioning or at 60 s of uptime, whichever is first.
        let hub = Arc::new(StatusHub::new(board.clone(), events.clone()));
        {
            let (cancel, tracker2, config, hub, snapshots, board, events) = (
                cancel.clone(),
                tracker.clone(),
                config.clone(),
                hub.clone(),
                snapshots.clone(),
                board.clone(),
                events.clone(),
            );
            tracker.spawn(async move {
                let at_uptime = SERVICES_START_UPTIME.saturating_sub(crate::clock::uptime());
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(at_uptime) => {}
                    _ = start_rx.wait_for(|started| *started) => {}
                }
                start_services(
                    &tracker2, &config, hub, snapshots, board, events, client, &cancel,
                );
            });
        }

        if let Some(listener) = listener {
            let ctx = ProxyContext {
                config: config.clone(),
                listener,
                listener_v6: listener_v6.flatten(),
                snapshots: snapshots.clone(),
                status: hub,
                provisioning: provisioning.clone(),
                keeper: keeper.clone(),
                events,
                cancel: cancel.clone(),
            };
            tracker.spawn((parts.serve_proxy)(ctx));
        }
        tracker.close();
        Agent {
            tracker,
            redirector,
            board,
            provisioning,
            snapshots,
            keeper,
        }
    }

    /// Waits for every task to finish (after cancellation), then stops the redirector: the orderly stop of
    /// spec §7.5 detaches and unpins everything.
    pub async fn stop(self) {
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks did not finish within {DRAIN_TIMEOUT:?}; exiting anyway");
        }
        if let Some(redirector) = self.redirector
            && let Err(e) = redirector.stop()
        {
            tracing::error!(error = %e, "stopping the redirector failed");
        }
        tracing::info!("agent stopped");
    }
}

#[allow(clippy::too_many_arguments)]
fn start_services(
    tracker: &TaskTracker,
    config: &Config,
    hub: Arc<StatusHub>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    board: Arc<StatusBoard>,
    events: EventSink,
    client: HostClient,
    cancel: &CancellationToken,
) {
    let endpoints = config.endpoints();
    let reporter = config.report_status_to_host.then(|| HostReporter {
        client,
        endpoints,
        snapshots: snapshots.clone(),
    });
    let writer = StatusWriter {
        hub,
        log_dir: config.log_dir().map(PathBuf::from),
        interval: config.monitor_interval(),
        reporter,
    };
    let spool = match Spool::open(&config.event_folder, config.max_event_file_count) {
        Ok(spool) => Some(spool),
        Err(e) => {
            tracing::warn!(error = %e, "event folder unusable; unsent events are dropped");
            None
        }
    };
    let sender = TelemetrySender::new(client, endpoints, snapshots, events, spool, board);
    // The tracker may be closed already; spawning on a closed tracker still tracks the task.
    tracker.spawn(writer.run(cancel.clone()));
    tracker.spawn(sender.run(cancel.clone()));
}

async fn start_redirector(
    start: &StartRedirector,
    config: &Config,
    board: &StatusBoard,
) -> Option<Arc<dyn RedirectorHandle>> {
    let mut last = String::new();
    for attempt in 1..=REDIRECTOR_ATTEMPTS {
        match start(config) {
            Ok(r) => {
                board.set(
                    Module::Ebpf,
                    ModuleState::Running,
                    format!(
                        "Started Redirector with eBPF maps - {}",
                        crate::clock::uptime().as_millis()
                    ),
                );
                return Some(r);
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(attempt, error = %last, "redirector start failed");
                if attempt < REDIRECTOR_ATTEMPTS {
                    tokio::time::sleep(REDIRECTOR_RETRY).await;
                }
            }
        }
    }
    board.set(
        Module::Ebpf,
        ModuleState::Unknown,
        format!("Failed to start redirector: {last}"),
    );
    None
}

/// Whether an endpoint is configured with a native IPv6 address: the agent then also listens on `[::1]` (spec
/// §1.2, §7.1). IPv4-mapped addresses reach the IPv4 listener.
fn needs_v6_listener(config: &Config) -> bool {
    let endpoints = config.endpoints();
    [endpoints.wireserver, endpoints.hostga, endpoints.imds]
        .iter()
        .any(|a| matches!(a, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none()))
}

/// Binds `[::1]` at the IPv4 listener's port, with the same retry rule; on failure the listener module is
/// `STOPPED` with the error.
async fn bind_v6_listener(
    v4: &TcpListener,
    board: &StatusBoard,
    cancel: &CancellationToken,
) -> Option<TcpListener> {
    let port = v4.local_addr().map(|a| a.port()).unwrap_or(0);
    let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match bind_with_retry(addr, cancel).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind the IPv6 proxy listener");
            board.set(
                Module::Listener,
                ModuleState::Stopped,
                format!("Failed to bind {addr}: {e}"),
            );
            None
        }
    }
}

/// The bind retry rule of spec §1.2: up to 5 sleeps of 1 s after "address in use", then a final attempt; any
/// other error fails at once.
async fn bind_with_retry(
    addr: SocketAddr,
    cancel: &CancellationToken,
) -> std::io::Result<TcpListener> {
    let mut retries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && retries < BIND_RETRIES => {
                retries += 1;
                tracing::warn!(%addr, retries, "listener address in use; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Err(e),
                    () = tokio::time::sleep(BIND_RETRY) => {}
                }
            }
            other => return other,
        }
    }
}

/// Binds the listener with the retry rule of spec §1.2. On failure the listener module is `STOPPED` with the
/// error.
pub async fn bind_listener(
    addr: SocketAddr,
    board: &StatusBoard,
    cancel: &CancellationToken,
) -> Option<TcpListener> {
    let result = bind_with_retry(addr, cancel).await;
    match result {
        Ok(listener) => {
            board.set(
                Module::Listener,
                ModuleState::Running,
                format!(
                    "Started proxy listener {addr}, ready to accept request - {}",
                    crate::clock::uptime().as_millis()
                ),
            );
            Some(listener)
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind the proxy listener");
            board.set(
                Module::Listener,
                ModuleState::Stopped,
                format!("Failed to bind {addr}: {e}"),
            );
            None
        }
    }
}
