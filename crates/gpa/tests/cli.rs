//! The `gpa` binary's configuration check (`gpa config --check`): nothing is started, nothing attached.

use std::process::Command;

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gpa"))
        .args(["config", "--check", "--config"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn config_check_names_a_valid_file_and_refuses_a_bad_one_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"idleConnectionTimeoutInSeconds": 120}"#).unwrap();
    let out = check(&good);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good.json: valid"), "{stdout}");

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"idleConnectionTimeoutInSeconds": 18446744073709551615}"#,
    )
    .unwrap();
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("idleConnectionTimeoutInSeconds"),
        "{stderr}"
    );

    let out = check(&dir.path().join("missing.json"));
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}
