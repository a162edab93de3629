use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use msp_core::Mode;
use msp_core::status::ModuleState;

use super::*;

#[derive(Default)]
struct CountingHooks {
    policy: AtomicUsize,
    started: AtomicUsize,
    finished: Mutex<Vec<String>>,
}

impl ProvisionHooks for CountingHooks {
    fn reapply_policy(&self) {
        self.policy.fetch_add(1, Ordering::SeqCst);
    }
    fn start_services(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn finished(&self, error: &str) {
        self.finished.lock().unwrap().push(error.to_owned());
    }
}

fn setup() -> (
    tempfile::TempDir,
    Arc<Provisioning>,
    Arc<CountingHooks>,
    Arc<StatusBoard>,
) {
    let root = tempfile::tempdir().unwrap();
    let board = Arc::new(StatusBoard::new());
    let hooks = Arc::new(CountingHooks::default());
    let p = Arc::new(Provisioning::new(
        board.clone(),
        EventSink::new(),
        root.path().join("keys"),
        hooks.clone(),
    ));
    (root, p, hooks, board)
}

const ENFORCE: SecureChannelState = SecureChannelState::Enabled {
    wireserver: Mode::Enforce,
    imds: Mode::Enforce,
};

#[test]
fn conf_087_answer_follows_the_finished_formula() {
    assert!(provision_answer(5, 5, SecureChannelState::Unknown, "").finished);
    assert!(!provision_answer(4, 5, SecureChannelState::Unknown, "").finished);
    assert!(!provision_answer(4, 5, SecureChannelState::Disabled, "").finished);
    assert!(
        provision_answer(4, 5, ENFORCE, "").finished,
        "a known state with a finish counts"
    );
    assert!(!provision_answer(0, 5, ENFORCE, "").finished);
    assert!(
        provision_answer(0, 0, SecureChannelState::Unknown, "").finished,
        "no tick: always finished"
    );
    let json = serde_json::to_string(&provision_answer(1, 0, ENFORCE, "x")).unwrap();
    assert_eq!(json, r#"{"finished":true,"errorMessage":"x"}"#);
    assert_eq!(parse_time_tick(Some(b" -12 ")), -12);
    assert_eq!(parse_time_tick(Some(b"abc")), 0);
    assert_eq!(parse_time_tick(None), 0);
}

#[test]
fn conf_086_all_flags_write_the_tags_with_an_empty_status_tag() {
    let (root, p, hooks, _) = setup();
    p.set_flag(REDIRECTOR_READY);
    p.set_flag(LISTENER_READY);
    assert_eq!(p.finished_tick(), 0);
    assert!(!root.path().join("keys/provisioned.tag").exists());
    p.set_flag(KEY_LATCH_READY);
    assert!(p.finished_tick() > 0);
    let keys = root.path().join("keys");
    assert_eq!(std::fs::read(keys.join("status.tag")).unwrap(), b"");
    assert!(
        !std::fs::read(keys.join("provisioned.tag"))
            .unwrap()
            .is_empty()
    );
    for tag in ["status.tag", "provisioned.tag"] {
        assert_eq!(
            std::fs::metadata(keys.join(tag)).unwrap().mode() & 0o777,
            0o600,
            "{tag}"
        );
    }
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o777, 0o700);
    assert_eq!(hooks.policy.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        *hooks.finished.lock().unwrap(),
        [""],
        "announced once, as a success"
    );
    let a = p.answer(
        crate::clock::unix_nanos() + 1_000_000_000,
        SecureChannelState::Unknown,
    );
    assert!(
        !a.finished,
        "a later tick with state Unknown is not finished"
    );
    assert!(
        p.answer(crate::clock::unix_nanos() + 1_000_000_000, ENFORCE)
            .finished
    );
}

#[test]
fn reset_latch_clears_the_flag_and_the_finish() {
    let (_root, p, _, _) = setup();
    p.set_flag(ALL_READY);
    assert!(p.finished_tick() > 0);
    p.reset_latch();
    assert_eq!(p.finished_tick(), 0);
    assert_eq!(p.flags(), REDIRECTOR_READY | LISTENER_READY);
}

#[tokio::test(start_paused = true)]
async fn conf_086_latch_timeout_writes_the_missing_lines_once_per_timer() {
    let (root, p, hooks, board) = setup();
    board.set(
        Module::KeyLatch,
        ModuleState::Running,
        "Failed to get key status - <refused>",
    );
    p.set_flag(REDIRECTOR_READY | LISTENER_READY);
    let cancel = CancellationToken::new();
    let timer = tokio::spawn(p.clone().run_timer(cancel.clone()));
    tokio::time::sleep(PROVISION_TIMEOUT - Duration::from_secs(1)).await;
    assert!(!root.path().join("keys/status.tag").exists());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tag = std::fs::read_to_string(root.path().join("keys/status.tag")).unwrap();
    assert_eq!(
        tag,
        "keyLatchStatus - Failed to get key status - &lt;refused&gt;\r\n"
    );
    assert!(p.finished_tick() > 0);
    assert_eq!(p.answer(0, SecureChannelState::Unknown).error_message, tag);
    assert_eq!(hooks.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        *hooks.finished.lock().unwrap(),
        std::slice::from_ref(&tag),
        "announced with the error lines"
    );
    // Once per timer: no second write until a reset.
    std::fs::remove_file(root.path().join("keys/status.tag")).unwrap();
    tokio::time::sleep(PROVISION_TIMEOUT * 2).await;
    assert!(!root.path().join("keys/status.tag").exists());
    p.reset_latch();
    tokio::time::sleep(PROVISION_TIMEOUT + Duration::from_secs(1)).await;
    assert!(
        root.path().join("keys/status.tag").exists(),
        "a reset restarts the timer"
    );
    cancel.cancel();
    timer.await.unwrap();
}
