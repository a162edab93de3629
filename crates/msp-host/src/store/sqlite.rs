//! The embedded SQLite store (rusqlite, bundled): one file, mode 0600, in a directory of mode 0700.
//!
//! Schema changes are numbered migrations tracked in `PRAGMA user_version`. Opening refuses a file or directory
//! that group or others can access, a file that is not a database, and a schema newer than this build, each
//! with an error that names the path. This module must never be called from an async task.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use msp_core::Mode;
use msp_core::sign::{KeyGuid, SigningKey};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, types::Value as SqlValue};

use super::{
    Loaded, LoadedVm, MAX_AUDIT_ROWS, MAX_TELEMETRY_ROWS_PER_VM, Store, StoreError, VmRow,
};
use crate::audit::{AuditQuery, AuditRecord, Decision, MAX_AUDIT_QUERY_ROWS};
use crate::vm::StatusReport;
use crate::vm::keys::IssuedKey;
use crate::vm::profile::Profile;

/// Migrations, in order; `user_version` counts how many have run.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE vms (name TEXT PRIMARY KEY, vm_id TEXT NOT NULL, addresses TEXT NOT NULL, settings TEXT NOT NULL) STRICT;
CREATE TABLE latched_keys (vm TEXT PRIMARY KEY REFERENCES vms(name) ON DELETE CASCADE, guid TEXT NOT NULL,
    key BLOB NOT NULL, incarnation INTEGER NOT NULL, issued_ms INTEGER NOT NULL) STRICT;
CREATE TABLE profiles (name TEXT NOT NULL, version INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    document TEXT NOT NULL, PRIMARY KEY (name, version)) STRICT;
CREATE TABLE reports (vm TEXT PRIMARY KEY REFERENCES vms(name) ON DELETE CASCADE, received_ms INTEGER NOT NULL,
    document TEXT NOT NULL, overall TEXT NOT NULL, signed_by TEXT, provisioned_guid TEXT,
    any_success INTEGER NOT NULL) STRICT;
CREATE TABLE telemetry (seq INTEGER PRIMARY KEY, vm TEXT NOT NULL, at_ms INTEGER NOT NULL, payload BLOB NOT NULL) STRICT;
CREATE INDEX telemetry_vm ON telemetry (vm, seq);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, vm TEXT, source TEXT NOT NULL,
    endpoint TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, mode TEXT NOT NULL, decision TEXT NOT NULL,
    reason TEXT, status INTEGER NOT NULL, key_guid TEXT, key_owner TEXT) STRICT;
CREATE INDEX audit_time ON audit (time_ms);
CREATE INDEX audit_vm_time ON audit (vm, time_ms);
"#];

/// Audit batches between two retention sweeps.
const PRUNE_EVERY_BATCHES: u32 = 256;

/// The SQLite backend.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    batches_since_prune: u32,
}

fn io_dir(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Directory {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses anything group or others can reach.
fn check_private(path: &Path, want: u32) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(|e| io_dir(path, e))?;
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() || mode & 0o077 != 0 {
        return Err(StoreError::Permissions {
            path: path.display().to_string(),
            mode,
            want,
        });
    }
    Ok(())
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn unms(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating when missing) the store at `path`: the directory 0700, the file 0600.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|e| io_dir(parent, e))?;
            }
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io_dir(&dir, e))?;
        }
        check_private(&dir, 0o700)?;
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io_dir(path, e))?;
        }
        check_private(path, 0o600)?;
        let display = path.display().to_string();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: display.clone(),
            source,
        })?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: display.clone(),
            detail: e.to_string(),
        };
        conn.busy_timeout(Duration::from_secs(5)).map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(corrupt)?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            batches_since_prune: 0,
        };
        store.migrate(version)?;
        Ok(store)
    }

    fn migrate(&mut self, version: i64) -> Result<(), StoreError> {
        let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > supported {
            return Err(StoreError::NewerSchema {
                path: self.path.display().to_string(),
                found: version,
                supported,
            });
        }
        let start = usize::try_from(version).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql).map_err(|e| StoreError::Corrupt {
                path: self.path.display().to_string(),
                detail: format!("migration {} failed: {e}", i + 1),
            })?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
            tracing::info!(path = %self.path.display(), version = i + 1, "store migrated");
        }
        Ok(())
    }

    fn load_vms(&self) -> Result<Vec<LoadedVm>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT v.name, v.vm_id, v.addresses, v.settings, k.guid, k.key, k.incarnation, k.issued_ms,
                    r.received_ms, r.document, r.overall, r.signed_by, r.provisioned_guid, r.any_success
             FROM vms v LEFT JOIN latched_keys k ON k.vm = v.name LEFT JOIN reports r ON r.vm = v.name
             ORDER BY v.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                (
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<String>>(11)?,
                    r.get::<_, Option<String>>(12)?,
                    r.get::<_, Option<i64>>(13)?,
                ),
            ))
        })?;
        let bad = |what: &str, vm: &str| StoreError::Record(format!("VM {vm:?}: invalid {what}"));
        let mut out = Vec::new();
        for row in rows {
            let (name, vm_id, addresses, settings, guid, key, inc, issued, report) = row?;
            let addresses =
                serde_json::from_str(&addresses).map_err(|_| bad("addresses", &name))?;
            let settings = serde_json::from_str(&settings).map_err(|_| bad("settings", &name))?;
            let latched = match (guid, key, inc, issued) {
                (Some(guid), Some(key), Some(inc), Some(issued)) => {
                    let bytes: [u8; 32] = key.try_into().map_err(|_| bad("key", &name))?;
                    Some(IssuedKey {
                        guid: KeyGuid::parse(&guid).map_err(|_| bad("key guid", &name))?,
                        key: SigningKey::from_bytes(bytes),
                        incarnation: u32::try_from(inc).map_err(|_| bad("incarnation", &name))?,
                        issued: UNIX_EPOCH + Duration::from_millis(unms(issued)),
                    })
                }
                _ => None,
            };
            let report = match report {
                (Some(at), Some(doc), Some(overall), signed_by, provisioned_guid, Some(any)) => {
                    Some(StatusReport {
                        received_ms: unms(at),
                        document: serde_json::from_str(&doc).map_err(|_| bad("report", &name))?,
                        overall,
                        signed_by,
                        provisioned_guid,
                        any_success: any != 0,
                    })
                }
                _ => None,
            };
            out.push(LoadedVm {
                row: VmRow {
                    name,
                    vm_id,
                    addresses,
                    settings,
                },
                latched,
                report,
            });
        }
        Ok(out)
    }

    fn load_profiles(&self) -> Result<Vec<Profile>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, version, created_ms, document FROM profiles ORDER BY name, version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, version, created, doc) = row?;
            out.push(Profile {
                version: u32::try_from(version).map_err(|_| {
                    StoreError::Record(format!("profile {name:?}: invalid version"))
                })?,
                document: serde_json::from_str(&doc).map_err(|_| {
                    StoreError::Record(format!("profile {name:?}: invalid document"))
                })?,
                created_ms: unms(created),
                name,
            });
        }
        Ok(out)
    }

    fn upsert_vm(tx: &Connection, vm: &VmRow) -> Result<(), StoreError> {
        let addresses =
            serde_json::to_string(&vm.addresses).map_err(|e| StoreError::Record(e.to_string()))?;
        let settings =
            serde_json::to_string(&vm.settings).map_err(|e| StoreError::Record(e.to_string()))?;
        tx.execute(
            "INSERT INTO vms (name, vm_id, addresses, settings) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET vm_id = excluded.vm_id, addresses = excluded.addresses,
                                              settings = excluded.settings",
            params![vm.name, vm.vm_id, addresses, settings],
        )?;
        Ok(())
    }

    fn prune(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?1",
            params![MAX_AUDIT_ROWS],
        )?;
        Ok(())
    }
}

fn decision_from(s: &str) -> rusqlite::Result<Decision> {
    Decision::parse(s).ok_or_else(|| rusqlite::Error::InvalidColumnName(format!("decision {s:?}")))
}

fn mode_from(s: &str) -> rusqlite::Result<Mode> {
    Mode::parse(s).ok_or_else(|| rusqlite::Error::InvalidColumnName(format!("mode {s:?}")))
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            vms: self.load_vms()?,
            profiles: self.load_profiles()?,
        })
    }

    fn put_vm(&mut self, vm: &VmRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::upsert_vm(&tx, vm)?;
        tx.commit()?;
        Ok(())
    }

    fn latch_key(&mut self, vm: &str, key: &IssuedKey) -> Result<(), StoreError> {
        let issued = key
            .issued
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.conn.execute(
            "INSERT INTO latched_keys (vm, guid, key, incarnation, issued_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (vm) DO UPDATE SET guid = excluded.guid, key = excluded.key,
                 incarnation = excluded.incarnation, issued_ms = excluded.issued_ms",
            params![
                vm,
                key.guid.as_str(),
                &key.key.as_bytes()[..],
                key.incarnation,
                ms(issued)
            ],
        )?;
        Ok(())
    }

    fn reset_key(&mut self, vm: &VmRow) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM latched_keys WHERE vm = ?1", params![vm.name])?;
        Self::upsert_vm(&tx, vm)?;
        tx.commit()?;
        Ok(())
    }

    fn put_profile(&mut self, p: &Profile) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO profiles (name, version, created_ms, document) VALUES (?1, ?2, ?3, ?4)",
            params![p.name, p.version, ms(p.created_ms), p.document.to_string()],
        )?;
        Ok(())
    }

    fn put_report(&mut self, vm: &str, r: &StatusReport) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO reports (vm, received_ms, document, overall, signed_by, provisioned_guid, any_success)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (vm) DO UPDATE SET received_ms = excluded.received_ms, document = excluded.document,
                 overall = excluded.overall, signed_by = excluded.signed_by,
                 provisioned_guid = excluded.provisioned_guid, any_success = excluded.any_success",
            params![
                vm,
                ms(r.received_ms),
                r.document.to_string(),
                r.overall,
                r.signed_by,
                r.provisioned_guid,
                i64::from(r.any_success)
            ],
        )?;
        Ok(())
    }

    fn append_telemetry(&mut self, vm: &str, at_ms: u64, payload: &[u8]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO telemetry (vm, at_ms, payload) VALUES (?1, ?2, ?3)",
            params![vm, ms(at_ms), payload],
        )?;
        tx.execute(
            "DELETE FROM telemetry WHERE vm = ?1 AND seq NOT IN
                 (SELECT seq FROM telemetry WHERE vm = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![vm, MAX_TELEMETRY_ROWS_PER_VM],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn append_audit(&mut self, batch: &[AuditRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit (time_ms, vm, source, endpoint, method, path, mode, decision, reason, status,
                                    key_guid, key_owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for r in batch {
                stmt.execute(params![
                    ms(r.time_ms),
                    r.vm,
                    r.source,
                    r.endpoint,
                    r.method,
                    r.path,
                    r.mode.as_str(),
                    r.decision.as_str(),
                    r.reason,
                    r.status,
                    r.key_guid,
                    r.key_owner
                ])?;
            }
        }
        tx.commit()?;
        self.batches_since_prune += 1;
        if self.batches_since_prune >= PRUNE_EVERY_BATCHES {
            self.batches_since_prune = 0;
            self.prune()?;
        }
        Ok(())
    }

    fn query_audit(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = String::from(
            "SELECT seq, time_ms, vm, source, endpoint, method, path, mode, decision, reason, status, key_guid,
                    key_owner FROM audit WHERE 1 = 1",
        );
        let mut args: Vec<SqlValue> = Vec::new();
        let mut add = |clause: &str, v: SqlValue| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(vm) = &q.vm {
            add("vm =", SqlValue::Text(vm.clone()));
        }
        if let Some(e) = &q.endpoint {
            add("endpoint =", SqlValue::Text(e.to_ascii_lowercase()));
        }
        if let Some(d) = q.decision {
            add("decision =", SqlValue::Text(d.as_str().to_owned()));
        }
        if let Some(r) = &q.reason {
            add("reason =", SqlValue::Text(r.clone()));
        }
        if let Some(t) = q.since_ms {
            add("time_ms >=", SqlValue::Integer(ms(t)));
        }
        if let Some(t) = q.until_ms {
            add("time_ms <", SqlValue::Integer(ms(t)));
        }
        let limit = q.limit.unwrap_or(100).min(MAX_AUDIT_QUERY_ROWS);
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(AuditRecord {
                seq: r.get(0)?,
                time_ms: unms(r.get(1)?),
                vm: r.get(2)?,
                source: r.get(3)?,
                endpoint: r.get(4)?,
                method: r.get(5)?,
                path: r.get(6)?,
                mode: mode_from(&r.get::<_, String>(7)?)?,
                decision: decision_from(&r.get::<_, String>(8)?)?,
                reason: r.get(9)?,
                status: r.get(10)?,
                key_guid: r.get(11)?,
                key_owner: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn telemetry_count(&mut self, vm: &str) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM telemetry WHERE vm = ?1",
                params![vm],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.map_or(0, unms))
    }
}

/// Opens the SQLite store at `path` behind the [`Store`] seam.
pub fn open(path: &Path) -> Result<Box<dyn Store>, StoreError> {
    Ok(Box::new(SqliteStore::open(path)?))
}
