//! Durable state: VM models, latched keys, profiles, status reports, telemetry and the audit log.
//!
//! [`Store`] is the seam for other backends (SQLite now, PostgreSQL later). The store runs on one dedicated
//! thread that owns the backend; async code talks to it through [`StoreHandle`] and never touches the disk
//! itself, so verification never waits on I/O (the registry keeps what requests need in memory). Audit records
//! do not travel through the queue one by one: they wait in an [`audit_buffer`] and are written together in one
//! transaction, at most [`AUDIT_FLUSH_INTERVAL`] after the first, before any other store operation (so a query
//! or a flush sees every record appended before it), and at shutdown. This module must never log key bytes.

mod audit_buffer;
pub mod sqlite;

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use audit_buffer::{AuditBuffer, Pushed};

use crate::audit::{AuditQuery, AuditRecord};
use crate::cidr::Cidr;
use crate::vm::StatusReport;
use crate::vm::keys::IssuedKey;
use crate::vm::profile::Profile;
use crate::vm::settings::ProxyAgentSettings;

pub use sqlite::SqliteStore;

pub use audit_buffer::{AUDIT_BUFFER_FULL, AUDIT_FLUSH_INTERVAL};

/// Capacity of the queue to the store thread; senders wait when it is full.
pub const STORE_QUEUE: usize = 8192;
/// Most audit records written in one transaction.
pub const MAX_AUDIT_BATCH: usize = 4096;
/// Audit rows kept; the oldest beyond it are deleted.
pub const MAX_AUDIT_ROWS: i64 = 2_000_000;
/// Telemetry payloads kept per VM.
pub const MAX_TELEMETRY_ROWS_PER_VM: i64 = 1000;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "store path {path} has mode {mode:o}; it must not be accessible to group or others (chmod {want:o})"
    )]
    Permissions { path: String, mode: u32, want: u32 },
    #[error("store {path} cannot be opened: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path} is not a usable msp-host database: {detail}")]
    Corrupt { path: String, detail: String },
    #[error(
        "store {path} has schema version {found}, newer than this msp-host supports ({supported})"
    )]
    NewerSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("store record is invalid: {0}")]
    Record(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread has stopped")]
    Stopped,
}

/// A VM's durable description.
#[derive(Debug, Clone)]
pub struct VmRow {
    pub name: String,
    pub vm_id: String,
    pub addresses: Vec<Cidr>,
    pub settings: ProxyAgentSettings,
}

/// A VM as loaded at start.
#[derive(Debug)]
pub struct LoadedVm {
    pub row: VmRow,
    pub latched: Option<IssuedKey>,
    pub report: Option<StatusReport>,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub vms: Vec<LoadedVm>,
    pub profiles: Vec<Profile>,
}

/// A storage backend. Calls run on the store thread, one at a time.
pub trait Store: Send + 'static {
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Creates or replaces a VM's description (settings included).
    fn put_vm(&mut self, vm: &VmRow) -> Result<(), StoreError>;
    /// Records the latched key of a VM, replacing any earlier one.
    fn latch_key(&mut self, vm: &str, key: &IssuedKey) -> Result<(), StoreError>;
    /// Discards a VM's latched key and stores its settings (with the new incarnation) atomically.
    fn reset_key(&mut self, vm: &VmRow) -> Result<(), StoreError>;
    fn put_profile(&mut self, profile: &Profile) -> Result<(), StoreError>;
    fn put_report(&mut self, vm: &str, report: &StatusReport) -> Result<(), StoreError>;
    fn append_telemetry(&mut self, vm: &str, at_ms: u64, payload: &[u8]) -> Result<(), StoreError>;
    fn append_audit(&mut self, batch: &[AuditRecord]) -> Result<(), StoreError>;
    fn query_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Number of telemetry payloads stored for a VM.
    fn telemetry_count(&mut self, vm: &str) -> Result<u64, StoreError>;
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    /// Records wait in the audit buffer: write them within [`AUDIT_FLUSH_INTERVAL`], or at once (`now`).
    AuditPending {
        now: bool,
    },
    PutVm(VmRow, Reply<()>),
    Latch(String, Arc<IssuedKey>, Reply<()>),
    Reset(VmRow, Reply<()>),
    PutProfile(Profile, Reply<()>),
    PutReport(String, StatusReport, Reply<()>),
    Telemetry(String, u64, Vec<u8>),
    QueryAudit(AuditQuery, Reply<Vec<AuditRecord>>),
    TelemetryCount(String, Reply<u64>),
    Flush(Reply<()>),
}

/// The async side of the store thread. Cloneable; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Op>,
    audit: Arc<AuditBuffer>,
}

/// The store thread; join it after dropping every [`StoreHandle`] to be sure the audit log is flushed.
pub struct StoreThread(thread::JoinHandle<()>);

impl StoreThread {
    /// Waits for the thread to drain its queue and exit.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("store thread panicked");
        }
    }
}

/// Starts the store thread over `store`, returning what it loaded.
pub fn spawn(mut store: Box<dyn Store>) -> Result<(StoreHandle, StoreThread, Loaded), StoreError> {
    let loaded = store.load()?;
    let (tx, rx) = mpsc::channel(STORE_QUEUE);
    let audit = Arc::new(AuditBuffer::default());
    // The thread's own timer for the audit flush; nothing else runs on it.
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| StoreError::Record(format!("cannot start the store thread's timer: {e}")))?;
    let buffer = audit.clone();
    let thread = thread::Builder::new()
        .name("msp-host-store".to_owned())
        .spawn(move || timer.block_on(run(store, rx, &buffer)))
        .map_err(|e| StoreError::Record(format!("cannot start the store thread: {e}")))?;
    Ok((StoreHandle { tx, audit }, StoreThread(thread), loaded))
}

/// The store thread: applies operations in order, writing the waiting audit records before each one, when
/// they fall due, and once more when the last handle is gone.
async fn run(mut store: Box<dyn Store>, mut rx: mpsc::Receiver<Op>, audit: &AuditBuffer) {
    // When the records waiting in the buffer must be written.
    let mut due: Option<Instant> = None;
    loop {
        let op = match due {
            Some(at) => tokio::select! {
                op = rx.recv() => op,
                () = tokio::time::sleep_until(at) => {
                    due = None;
                    write_audit(store.as_mut(), audit);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(op) = op else { break };
        match op {
            Op::AuditPending { now: false } => {
                due.get_or_insert_with(|| Instant::now() + AUDIT_FLUSH_INTERVAL);
            }
            Op::AuditPending { now: true } => {
                due = None;
                write_audit(store.as_mut(), audit);
            }
            op => {
                due = None;
                write_audit(store.as_mut(), audit);
                apply(store.as_mut(), op);
            }
        }
    }
    write_audit(store.as_mut(), audit);
}

/// Writes every waiting audit record, [`MAX_AUDIT_BATCH`] per transaction.
fn write_audit(store: &mut dyn Store, audit: &AuditBuffer) {
    let records = audit.take();
    for batch in records.chunks(MAX_AUDIT_BATCH) {
        if let Err(e) = store.append_audit(batch) {
            tracing::error!(error = %e, records = batch.len(), "audit records could not be written");
        }
    }
}

fn apply(store: &mut dyn Store, op: Op) {
    // A dropped reply means the requester went away; the write itself still happened.
    match op {
        Op::AuditPending { .. } => {}
        Op::PutVm(vm, reply) => drop(reply.send(store.put_vm(&vm))),
        Op::Latch(vm, key, reply) => drop(reply.send(store.latch_key(&vm, &key))),
        Op::Reset(vm, reply) => drop(reply.send(store.reset_key(&vm))),
        Op::PutProfile(p, reply) => drop(reply.send(store.put_profile(&p))),
        Op::PutReport(vm, r, reply) => drop(reply.send(store.put_report(&vm, &r))),
        Op::Telemetry(vm, at, payload) => {
            if let Err(e) = store.append_telemetry(&vm, at, &payload) {
                tracing::warn!(error = %e, vm, "telemetry payload could not be stored");
            }
        }
        Op::QueryAudit(q, reply) => drop(reply.send(store.query_audit(&q))),
        Op::TelemetryCount(vm, reply) => drop(reply.send(store.telemetry_count(&vm))),
        Op::Flush(reply) => drop(reply.send(Ok(()))),
    }
}

impl StoreHandle {
    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues an audit record; waits only while [`AUDIT_BUFFER_FULL`] records are waiting. Only the first
    /// record of a batch (and a full buffer) wakes the store thread.
    pub async fn audit(&self, record: AuditRecord) {
        if self.tx.is_closed() {
            tracing::error!("audit record lost: the store thread has stopped");
            return;
        }
        self.audit
            .push(record, |pushed| {
                let op = Op::AuditPending {
                    now: pushed == Pushed::Full,
                };
                // A full queue holds operations that write the buffer before they run, so the nudge is not
                // needed then.
                if let Err(mpsc::error::TrySendError::Closed(_)) = self.tx.try_send(op) {
                    tracing::error!("audit record lost: the store thread has stopped");
                }
            })
            .await;
    }

    pub async fn put_vm(&self, vm: VmRow) -> Result<(), StoreError> {
        self.call(|r| Op::PutVm(vm, r)).await
    }

    pub async fn latch_key(&self, vm: &str, key: Arc<IssuedKey>) -> Result<(), StoreError> {
        self.call(|r| Op::Latch(vm.to_owned(), key, r)).await
    }

    pub async fn reset_key(&self, vm: VmRow) -> Result<(), StoreError> {
        self.call(|r| Op::Reset(vm, r)).await
    }

    pub async fn put_profile(&self, p: Profile) -> Result<(), StoreError> {
        self.call(|r| Op::PutProfile(p, r)).await
    }

    pub async fn put_report(&self, vm: &str, report: StatusReport) -> Result<(), StoreError> {
        self.call(|r| Op::PutReport(vm.to_owned(), report, r)).await
    }

    pub async fn telemetry(&self, vm: &str, at_ms: u64, payload: Vec<u8>) {
        if self
            .tx
            .send(Op::Telemetry(vm.to_owned(), at_ms, payload))
            .await
            .is_err()
        {
            tracing::warn!("telemetry payload lost: the store thread has stopped");
        }
    }

    pub async fn query_audit(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.call(|r| Op::QueryAudit(q, r)).await
    }

    pub async fn telemetry_count(&self, vm: &str) -> Result<u64, StoreError> {
        self.call(|r| Op::TelemetryCount(vm.to_owned(), r)).await
    }

    /// Resolves once everything queued before it (audit records included) is written.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(Op::Flush).await
    }
}

#[cfg(test)]
mod tests;
