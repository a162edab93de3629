//! Catalog E (state, files and faults) with the whole agent (real redirector and proxy) against a real host:
//! E1 modes and owners of everything the agent writes, E2 symlinks planted at its paths, E3 a full or read-only
//! state directory. E4, E5 and E6 are tested where they live (SECURITY.md lists each test).
#![cfg(target_os = "linux")]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpa::status::Module;
use msp_core::{Endpoint, Mode, Reason};
use msp_security::agent::{READY_TIMEOUT, TestAgent};
use msp_security::host::TestHost;
use msp_security::http::request;
use msp_security::tmpfs::Tmpfs;
use msp_security::{ProbeResult, probe, root_ready};

async fn imds_get(agent: &TestAgent, t: &TestHost) -> ProbeResult {
    let req = request(
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        t.host.imds,
        &[],
        b"",
    );
    probe!()
        .in_cgroup(&agent.cgroup)
        .tcp(t.host.imds, &req, 8000)
        .await
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every path under `dir` (not `dir` itself), with its metadata, not following symlinks.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(walk(&path));
        }
        out.push((path, meta));
    }
    out
}

/// The documented mode of a path the agent writes (spec §2.11, §4.9, §7.5, §9.1, §9.5), by its place.
fn documented_mode(root: &Path, path: &Path, is_dir: bool) -> u32 {
    let rel = path.strip_prefix(root).unwrap();
    let top = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    match (top, is_dir) {
        ("state", true) => 0o700,  // state/, state/keys, state/rules
        ("state", false) => 0o600, // <guid>.key, last-status.json, provisioned.tag, status.tag
        ("log", true) => 0o755,    // log/, log/events
        ("log", false) => 0o640,   // status.json, AuthorizationRules_*.json, spooled events
        _ => panic!("unexpected path {}", path.display()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e1_root_every_file_the_agent_writes_has_its_documented_owner_and_mode() {
    if !root_ready("e1_root_every_file_the_agent_writes_has_its_documented_owner_and_mode") {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let agent = TestAgent::start("e1", &t.host, |_| {}).await;
    agent.ready().await;
    assert_eq!(imds_get(&agent, &t).await.response().status, 200);
    let root = agent.dir.path().to_path_buf();
    let status = root.join("log/status.json");
    eventually("status.json", || status.exists()).await;
    let last = root.join("state/keys/last-status.json");
    eventually("last-status.json (after the next poll)", || last.exists()).await;
    let guid = agent.snapshot().key.clone().unwrap().guid;
    let key_file = root.join(format!("state/keys/{guid}.key"));

    let all = walk(&root);
    let names: Vec<&Path> = all.iter().map(|(p, _)| p.as_path()).collect();
    for must in [
        &key_file,
        &status,
        &root.join("state/rules"),
        &root.join("state/keys/last-status.json"),
    ] {
        assert!(
            names.contains(&must.as_path()),
            "missing {}: {names:?}",
            must.display()
        );
    }
    for (path, meta) in &all {
        assert!(
            !meta.file_type().is_symlink(),
            "{} is a symlink",
            path.display()
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "owner of {}",
            path.display()
        );
        let mode = meta.mode() & 0o7777;
        assert_eq!(
            mode,
            documented_mode(&root, path, meta.is_dir()),
            "mode of {}",
            path.display()
        );
        assert_eq!(mode & 0o002, 0, "{} is world-writable", path.display());
        if meta.is_file() {
            assert_eq!(mode & 0o004, 0, "{} is world-readable", path.display());
        }
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_root_symlinks_planted_at_the_key_and_status_paths_are_never_followed() {
    if !root_ready("e2_root_symlinks_planted_at_the_key_and_status_paths_are_never_followed") {
        return;
    }
    let t = TestHost::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let victim_dir = elsewhere.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    let victim_file = elsewhere.path().join("victim-file");
    std::fs::write(&victim_file, b"untouched").unwrap();

    // Planted before the agent starts: the key directory is a symlink to the attacker's directory, and
    // status.json a symlink to a file the attacker wants overwritten.
    let plant = |dir: &Path| {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::os::unix::fs::symlink(&victim_dir, dir.join("state/keys")).unwrap();
        std::os::unix::fs::symlink(&victim_file, dir.join("log/status.json")).unwrap();
    };
    let pre = tempfile::tempdir().unwrap();
    plant(pre.path());
    let root = pre.path().to_path_buf();
    let agent = TestAgent::start("e2", &t.host, |c| {
        c.latch_key_folder = root.join("state/keys");
        c.log_folder = root.join("log");
        c.event_folder = root.join("log/events");
    })
    .await;

    // The key directory is refused, so no key is stored, and without a stored key none is attested (spec §2.9):
    // the agent stays closed and says why.
    let board = agent.agent.as_ref().unwrap().board.clone();
    eventually("the key latch to report the refused directory", || {
        board.module(Module::KeyLatch).message.contains("symlink")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few polls and status writes
    assert!(agent.snapshot().key.is_none());
    assert_eq!(
        std::fs::read_dir(&victim_dir).unwrap().count(),
        0,
        "written through the key dir link"
    );
    assert_eq!(std::fs::read(&victim_file).unwrap(), b"untouched");
    // status.json is replaced as a file (rename never follows), never written through.
    let status = std::fs::symlink_metadata(root.join("log/status.json")).unwrap();
    if status.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(root.join("log/status.json")).unwrap(),
            victim_file
        );
    } else {
        assert_eq!(status.mode() & 0o7777, 0o640);
    }
    // A request meanwhile is refused, never forwarded unsigned in enforce.
    let r = imds_get(&agent, &t).await.response();
    assert_ne!(r.status, 200, "{r:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_root_a_read_only_or_full_state_directory_keeps_the_in_memory_key_and_never_falls_open()
{
    if !root_ready(
        "e3_root_a_read_only_or_full_state_directory_keeps_the_in_memory_key_and_never_falls_open",
    ) {
        return;
    }
    let t = TestHost::start().await;
    t.set_mode(Endpoint::Imds, Mode::Enforce).await;
    let base = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&base.path().join("fs"), "2m");
    let root = fs.path.clone();
    let agent = TestAgent::start("e3", &t.host, |c| {
        c.latch_key_folder = root.join("state/keys");
        c.log_folder = root.join("log");
        c.event_folder = root.join("log/events");
    })
    .await;
    agent.ready().await;
    assert_eq!(imds_get(&agent, &t).await.response().status, 200);
    let board = agent.agent.as_ref().unwrap().board.clone();
    eventually("status.json", || root.join("log/status.json").exists()).await;

    // Read-only: the latched key in memory keeps serving; the status module says it cannot write.
    fs.read_only();
    let r = imds_get(&agent, &t).await.response();
    assert_eq!(r.status, 200, "{r:?}");
    eventually("the monitor to report the failed write", || {
        board
            .module(Module::Monitor)
            .message
            .starts_with("Failed to write status file")
    })
    .await;
    assert!(agent.snapshot().key.is_some());

    // Full: the same.
    fs.read_write();
    fs.fill();
    let r = imds_get(&agent, &t).await.response();
    assert_eq!(r.status, 200, "{r:?}");

    // A rotation while the new key cannot be stored: the agent never attests a key it could not persist, the
    // old key is refused by the host, and nothing gets through unsigned or under a wrong key.
    fs.read_only();
    t.host.admin().reset_key("dev").await.unwrap();
    eventually("the latch to report the failed save", || {
        board
            .module(Module::KeyLatch)
            .message
            .contains("Failed to save key details")
    })
    .await;
    let r = imds_get(&agent, &t).await.response();
    assert_ne!(r.status, 200, "{r:?}");
    if r.status == 401 {
        assert_eq!(r.reason(), Some(Reason::KeyUnknown.code()));
    }
    agent.stop().await;
    drop(fs);
}
