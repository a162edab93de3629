//! Starting and stopping a host: open the store, build the registry, bind the three front ends and the admin
//! API, and shut all of it down gracefully (in-flight requests finish, the audit log is flushed).
//!
//! This is also the in-process API the agent's tests and the demo use (`Host::start(HostConfig::test(dir))`).
//! It must never bind the admin API on a non-loopback address.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msp_core::Endpoint;
use msp_core::sign::SigningKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use crate::admin::client::AdminClient;
use crate::admin::{self, AdminState};
use crate::config::{ConfigError, HostConfig};
use crate::frontend::{self, Shared};
use crate::registry::{ChangeError, Registry};
use crate::store::{self, StoreError, StoreThread};

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error("VM configuration: {0}")]
    Vms(#[from] ChangeError),
    #[error("cannot start: {0}")]
    Runtime(String),
}

/// Entry point of the library API.
pub struct Host;

/// A started host: its bound addresses, an admin client, and [`RunningHost::shutdown`].
pub struct RunningHost {
    pub wireserver: SocketAddr,
    pub hostga: SocketAddr,
    pub imds: SocketAddr,
    pub admin_addr: SocketAddr,
    admin: AdminClient,
    cancel: CancellationToken,
    tracker: TaskTracker,
    registry: Option<Arc<Registry>>,
    store_thread: Option<StoreThread>,
}

/// Reads the admin token from `path`, creating it (0600, 32 random bytes as hex) when missing.
fn load_or_create_token(path: &Path) -> Result<Zeroizing<String>, HostError> {
    let err = |message: String| HostError::Token {
        path: path.to_path_buf(),
        message,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if meta.file_type().is_symlink() || meta.mode() & 0o077 != 0 {
                return Err(err(format!(
                    "must be a regular file of mode 0600, found mode {:o}",
                    meta.mode() & 0o7777
                )));
            }
            let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
            let token = Zeroizing::new(text.trim().to_owned());
            if token.len() < 16 {
                return Err(err("holds fewer than 16 characters".into()));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(bytes.as_mut_slice()).map_err(|e| err(e.to_string()))?;
            let token = Zeroizing::new(hex::encode(bytes.as_slice()));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(token.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "admin token created");
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, HostError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HostError::Bind { what, addr, source })
}

fn local(l: &TcpListener, what: &'static str, addr: SocketAddr) -> Result<SocketAddr, HostError> {
    l.local_addr()
        .map_err(|source| HostError::Bind { what, addr, source })
}

impl Host {
    /// Validates `cfg`, opens the store, binds every listener and starts serving.
    pub async fn start(cfg: HostConfig) -> Result<RunningHost, HostError> {
        cfg.validate("configuration")?;
        let path = cfg.store_path.clone();
        let opened = tokio::task::spawn_blocking(move || store::sqlite::open(&path))
            .await
            .map_err(|e| HostError::Runtime(e.to_string()))??;
        let (handle, store_thread, loaded) = store::spawn(opened)?;
        let registry = Arc::new(Registry::new(loaded, &cfg.declared_vms(), handle).await?);

        let token = match &cfg.admin_token {
            Some(t) => Zeroizing::new(t.clone()),
            None => {
                let path = cfg.token_file();
                tokio::task::spawn_blocking(move || load_or_create_token(&path))
                    .await
                    .map_err(|e| HostError::Runtime(e.to_string()))??
            }
        };

        let ws = bind("WireServer", cfg.wireserver_listen).await?;
        let ga = bind("HostGAPlugin", cfg.hostga_listen).await?;
        let imds = bind("IMDS", cfg.imds_listen).await?;
        let admin_listener = bind("the admin API", cfg.admin_listen).await?;
        let wireserver = local(&ws, "WireServer", cfg.wireserver_listen)?;
        let hostga = local(&ga, "HostGAPlugin", cfg.hostga_listen)?;
        let imds_addr = local(&imds, "IMDS", cfg.imds_listen)?;
        let admin_addr = local(&admin_listener, "the admin API", cfg.admin_listen)?;

        let mut token_key = Zeroizing::new([0u8; 32]);
        getrandom::fill(token_key.as_mut_slice()).map_err(|e| HostError::Runtime(e.to_string()))?;
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            window: cfg.freshness_window(),
            body_timeout: Duration::from_secs(cfg.body_timeout_secs),
            header_timeout: Duration::from_secs(cfg.header_timeout_secs),
            max_connections: cfg.max_connections,
            wireserver_endpoint: cfg.wireserver_endpoint.unwrap_or(wireserver),
            token_key: SigningKey::from_bytes(*token_key),
            imds_upstream: cfg.imds_upstream.clone(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(frontend::BODY_BUDGET_KIB)),
        });

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        for (listener, endpoint) in [
            (ws, Endpoint::WireServer),
            (ga, Endpoint::HostGaPlugin),
            (imds, Endpoint::Imds),
        ] {
            tracker.spawn(frontend::serve(
                listener,
                endpoint,
                shared.clone(),
                cancel.clone(),
                tracker.clone(),
            ));
        }
        let token = Arc::new(token);
        let app = admin::router(AdminState {
            registry: registry.clone(),
            token: token.clone(),
        });
        let admin_cancel = cancel.clone();
        tracker.spawn(async move {
            let served = axum::serve(admin_listener, app)
                .with_graceful_shutdown(async move { admin_cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        tracing::info!(%wireserver, %hostga, imds = %imds_addr, admin = %admin_addr,
                       store = %cfg.store_path.display(), vms = registry.vms().len(), "msp-host started");
        Ok(RunningHost {
            wireserver,
            hostga,
            imds: imds_addr,
            admin_addr,
            admin: AdminClient::new(admin_addr, token.as_str()),
            cancel,
            tracker,
            registry: Some(registry),
            store_thread: Some(store_thread),
        })
    }
}

impl RunningHost {
    /// An admin client bound to this host (address and token).
    pub fn admin(&self) -> AdminClient {
        self.admin.clone()
    }

    /// The bound address of a front end.
    pub fn endpoint(&self, e: Endpoint) -> SocketAddr {
        match e {
            Endpoint::WireServer => self.wireserver,
            Endpoint::HostGaPlugin => self.hostga,
            Endpoint::Imds => self.imds,
        }
    }

    /// Waits until everything queued for the store (audit records included) is written.
    pub async fn flush(&self) {
        if let Some(r) = &self.registry
            && let Err(e) = r.store().flush().await
        {
            tracing::warn!(error = %e, "store flush failed");
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded), flushes the audit log and closes the store.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.registry = None;
        if let Some(t) = self.store_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        tracing::info!("msp-host stopped");
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        // Without an explicit shutdown, at least stop serving; the store thread ends when its handles drop.
        self.cancel.cancel();
    }
}
