use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// base64 of {"id":"imds-rules-7","useLocalFileRules":true}
const OPT_IN: &str = "eyJpZCI6ImltZHMtcnVsZXMtNyIsInVzZUxvY2FsRmlsZVJ1bGVzIjp0cnVlfQ==";

fn status(ws_id: &str) -> KeyStatus {
    KeyStatus::parse(
        format!(
            r#"{{"version":"2.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
                "keyGuid":null,"secureChannelEnabled":true,"authorizationRules":{{
                "wireserver":{{"defaultAccess":"allow","mode":"enforce","id":"{ws_id}"}},
                "imds":{{"defaultAccess":"allow","mode":"audit","id":"plain-imds"}}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn setup() -> (tempfile::TempDir, PathBuf, RulesResolver) {
    let root = tempfile::tempdir().unwrap();
    let rules = root.path().join("rules");
    SecureDir::open_or_create(&rules, storage::PRIVATE_DIR_MODE).unwrap();
    let resolver = RulesResolver::new(rules.clone(), EventSink::new());
    (root, rules, resolver)
}

fn write_local(rules: &Path, body: &[u8], mode: u32) {
    let path = rules.join("WireServer_Rules.json");
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ws_id(update: &RulesUpdate) -> String {
    update.items.wireserver.as_ref().unwrap().id().to_owned()
}

#[tokio::test]
async fn conf_050_local_rules_are_ignored_unless_the_host_opts_in() {
    let (_root, rules, mut r) = setup();
    write_local(&rules, br#"{"id":"local","defaultAccess":"deny"}"#, 0o600);
    let u = r.resolve(&status("ws-rules-3")).await.unwrap();
    assert_eq!(ws_id(&u), "ws-rules-3");
    assert!(u.items.wireserver.as_ref().unwrap().default_allowed());
    let u = r.resolve(&status(OPT_IN)).await.unwrap();
    assert_eq!(ws_id(&u), "imds-rules-7-useLocalFileRules-true_local");
    assert!(
        !u.items.wireserver.as_ref().unwrap().default_allowed(),
        "file defaultAccess replaces the host's"
    );
    assert_eq!(
        u.items.hostga.as_ref().unwrap().id(),
        "imds-rules-7-useLocalFileRules-true",
        "conf 49: HostGAPlugin uses the host item, never merged"
    );
}

#[tokio::test]
async fn items_are_rebuilt_only_when_something_changed() {
    let (_root, rules, mut r) = setup();
    write_local(&rules, br#"{"id":"a"}"#, 0o600);
    assert!(r.resolve(&status(OPT_IN)).await.is_some());
    assert!(
        r.resolve(&status(OPT_IN)).await.is_none(),
        "same inputs: no rebuild"
    );
    write_local(&rules, br#"{"id":"bb"}"#, 0o600);
    let u = r.resolve(&status(OPT_IN)).await.expect("file changed");
    assert!(ws_id(&u).ends_with("_bb"));
    std::fs::remove_file(rules.join("WireServer_Rules.json")).unwrap();
    let u = r.resolve(&status(OPT_IN)).await.expect("file deleted");
    assert_eq!(ws_id(&u), "imds-rules-7-useLocalFileRules-true");
}

#[tokio::test]
async fn conf_052_invalid_local_file_fails_closed_and_is_retried_each_poll() {
    let (_root, rules, mut r) = setup();
    write_local(&rules, b"{not json", 0o600);
    let u = r.resolve(&status(OPT_IN)).await.unwrap();
    let item = u.items.wireserver.as_ref().unwrap();
    assert!(!item.default_allowed(), "fail closed");
    assert_eq!(item.mode(), msp_core::Mode::Enforce, "host mode kept");
    assert!(
        u.errors[0]
            .1
            .as_deref()
            .unwrap()
            .contains("local rules file invalid")
    );
    assert!(
        r.resolve(&status(OPT_IN)).await.is_some(),
        "previous parse failed: re-resolved"
    );
    write_local(&rules, b"\xEF\xBB\xBF{\"id\":\"ok\"}", 0o600);
    let u = r.resolve(&status(OPT_IN)).await.unwrap();
    assert!(ws_id(&u).ends_with("_ok"), "a leading BOM is accepted");
    assert_eq!(u.errors[0].1, None);
}

#[tokio::test]
async fn conf_054_unsafe_local_file_is_treated_as_missing_and_reported() {
    let (_root, rules, mut r) = setup();
    write_local(&rules, br#"{"id":"evil","defaultAccess":"allow"}"#, 0o666);
    let u = r.resolve(&status(OPT_IN)).await.unwrap();
    assert_eq!(
        ws_id(&u),
        "imds-rules-7-useLocalFileRules-true",
        "host item only"
    );
    let err = u.errors[0].1.as_deref().unwrap();
    assert!(
        err.contains("WireServer_Rules.json ignored") && err.contains("writable"),
        "{err}"
    );
    std::fs::remove_file(rules.join("WireServer_Rules.json")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", rules.join("WireServer_Rules.json")).unwrap();
    let u = r.resolve(&status(OPT_IN)).await.unwrap();
    assert!(u.errors[0].1.as_deref().unwrap().contains("symlink"));
}

#[test]
fn conf_057_rules_file_name_follows_spec_4_9() {
    assert_eq!(
        rules_file_name(1_745_409_600_123_456_789),
        "AuthorizationRules_2025-04-23T12.00.00.123-1745409600123456789.json"
    );
}

#[tokio::test]
async fn conf_057_at_most_five_rules_files_0640() {
    let (root, _rules, mut r) = setup();
    let log = root.path().join("log");
    let st = status("w");
    let u = r.resolve(&st).await.unwrap();
    let input = st.authorization_rules.clone().unwrap();
    for i in 0..7 {
        write_rules_file(
            &log,
            &input,
            &u.items,
            1_745_409_600_000_000_000 + i * 1_000_000,
        )
        .unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5);
    assert!(
        names[0].contains("12.00.00.002"),
        "the two oldest were deleted: {names:?}"
    );
    for n in &names {
        assert_eq!(
            std::fs::metadata(log.join(n)).unwrap().mode() & 0o777,
            0o640
        );
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join(&names[4])).unwrap()).unwrap();
    assert_eq!(doc["inputRules"]["wireserver"]["id"], "w");
    assert_eq!(doc["computedRules"]["wireserver"]["mode"], "Enforce");
    assert_eq!(doc["computedRules"]["imds"]["defaultAllowed"], true);
}
