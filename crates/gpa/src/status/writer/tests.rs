use std::os::unix::fs::MetadataExt;

use super::*;
use crate::status::StatusBoard;
use crate::telemetry::EventSink;

fn inode(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[tokio::test(start_paused = true)]
async fn conf_083_status_json_written_at_once_on_change_and_every_interval_0640() {
    let root = tempfile::tempdir().unwrap();
    let log_dir = root.path().join("log");
    let board = Arc::new(StatusBoard::new());
    let hub = Arc::new(StatusHub::new(board.clone(), EventSink::new()));
    let writer = StatusWriter {
        hub,
        log_dir: Some(log_dir.clone()),
        interval: Duration::from_secs(60),
        reporter: None,
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(writer.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let path = log_dir.join(STATUS_FILE);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        doc["proxyAgentStatus"]["monitorStatus"]["status"],
        "RUNNING"
    );
    let settled = inode(&path);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        inode(&path),
        settled,
        "no change, no write before the interval"
    );

    board.set(
        Module::Listener,
        ModuleState::Running,
        "Started proxy listener 127.0.0.1:3080 - 5",
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        doc["proxyAgentStatus"]["proxyListenerStatus"]["status"], "RUNNING",
        "within 1 s of a change"
    );
    let after_change = inode(&path);

    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_ne!(
        inode(&path),
        after_change,
        "rewritten every monitor interval"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"key\""), "no key material in the document");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn empty_log_folder_writes_no_file() {
    let board = Arc::new(StatusBoard::new());
    let writer = StatusWriter {
        hub: Arc::new(StatusHub::new(board.clone(), EventSink::new())),
        log_dir: None,
        interval: Duration::from_secs(60),
        reporter: None,
    };
    writer.write_once().await;
    assert_eq!(board.module(Module::Monitor).status, ModuleState::Unknown);
}
