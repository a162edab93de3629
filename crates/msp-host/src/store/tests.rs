//! The store thread's audit batching over a backend that records what it was asked to write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use msp_core::Mode;

use super::*;
use crate::audit::Decision;

/// Records each audit transaction's paths; every other operation succeeds and stores nothing.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

impl Recorder {
    fn batches(&self) -> Vec<Vec<String>> {
        self.0.lock().unwrap().clone()
    }
    fn paths(&self) -> Vec<String> {
        self.batches().concat()
    }
}

impl Store for Recorder {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::default())
    }
    fn put_vm(&mut self, _: &VmRow) -> Result<(), StoreError> {
        Ok(())
    }
    fn latch_key(&mut self, _: &str, _: &IssuedKey) -> Result<(), StoreError> {
        Ok(())
    }
    fn reset_key(&mut self, _: &VmRow) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_profile(&mut self, _: &Profile) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_report(&mut self, _: &str, _: &StatusReport) -> Result<(), StoreError> {
        Ok(())
    }
    fn append_telemetry(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn append_audit(&mut self, batch: &[AuditRecord]) -> Result<(), StoreError> {
        let paths = batch.iter().map(|r| r.path.clone()).collect();
        self.0.lock().unwrap().push(paths);
        Ok(())
    }
    fn query_audit(&mut self, _: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self.paths().into_iter().map(|path| record(&path)).collect())
    }
    fn telemetry_count(&mut self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
}

fn record(path: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time_ms: 1,
        vm: Some("vm".to_owned()),
        source: "127.0.0.1".to_owned(),
        endpoint: "imds".to_owned(),
        method: "GET".to_owned(),
        path: path.to_owned(),
        mode: Mode::Enforce,
        decision: Decision::Allowed,
        reason: None,
        status: 200,
        key_guid: None,
        key_owner: None,
    }
}

fn paths(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/r{i}")).collect()
}

#[tokio::test]
async fn audit_records_land_in_order_without_any_other_operation() {
    let recorder = Recorder::default();
    let (handle, thread, _) = spawn(Box::new(recorder.clone())).unwrap();
    for p in paths(100) {
        handle.audit(record(&p)).await;
    }
    // Nothing else is sent: the thread's own timer must write them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while recorder.paths().len() < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(AUDIT_FLUSH_INTERVAL).await;
    }
    assert_eq!(recorder.paths(), paths(100));
    // Batched: far fewer transactions than records.
    assert!(
        recorder.batches().len() < 100,
        "{:?}",
        recorder.batches().len()
    );
    drop(handle);
    thread.join();
}

#[tokio::test]
async fn a_query_or_flush_sees_every_record_appended_before_it() {
    let recorder = Recorder::default();
    let (handle, thread, _) = spawn(Box::new(recorder.clone())).unwrap();
    handle.audit(record("/a")).await;
    handle.audit(record("/b")).await;
    let seen = handle.query_audit(AuditQuery::default()).await.unwrap();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/a", "/b"]
    );
    handle.audit(record("/c")).await;
    handle.flush().await.unwrap();
    assert_eq!(recorder.paths(), ["/a", "/b", "/c"]);
    drop(handle);
    thread.join();
}

#[tokio::test]
async fn shutdown_writes_the_records_still_waiting() {
    let recorder = Recorder::default();
    let (handle, thread, _) = spawn(Box::new(recorder.clone())).unwrap();
    for p in paths(5) {
        handle.audit(record(&p)).await;
    }
    drop(handle);
    thread.join();
    assert_eq!(recorder.paths(), paths(5));
}

#[tokio::test]
async fn a_full_buffer_makes_appenders_wait_and_loses_nothing() {
    let recorder = Recorder::default();
    let (handle, thread, _) = spawn(Box::new(recorder.clone())).unwrap();
    let n = AUDIT_BUFFER_FULL * 2 + 7;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let handle = handle.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    handle.audit(record(&format!("/{w}/{i}"))).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    handle.flush().await.unwrap();
    let written = recorder.paths();
    assert_eq!(written.len(), 4 * n);
    for w in 0..4 {
        let mine: Vec<_> = written
            .iter()
            .filter(|p| p.starts_with(&format!("/{w}/")))
            .cloned()
            .collect();
        assert_eq!(
            mine,
            (0..n).map(|i| format!("/{w}/{i}")).collect::<Vec<_>>()
        );
    }
    assert!(
        recorder
            .batches()
            .iter()
            .all(|b| b.len() <= MAX_AUDIT_BATCH)
    );
    drop(handle);
    thread.join();
}
