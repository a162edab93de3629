use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn conf_026_directories_are_created_0700_and_files_0600() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("state/keys");
    let dir = SecureDir::open_or_create(&keys, PRIVATE_DIR_MODE).unwrap();
    assert_eq!(mode_of(&keys), 0o700);
    dir.write_atomic("a.key", b"{}", PRIVATE_FILE_MODE).unwrap();
    let path = keys.join("a.key");
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), geteuid().as_raw());
    assert!(!keys.join("a.key.tmp").exists(), "no temporary left behind");
    dir.write_atomic("status.json", b"x", SHARED_FILE_MODE)
        .unwrap();
    assert_eq!(mode_of(&keys.join("status.json")), 0o640);
}

#[test]
fn write_replaces_and_read_returns_content() {
    let root = tempfile::tempdir().unwrap();
    let dir = SecureDir::open_or_create(&root.path().join("k"), PRIVATE_DIR_MODE).unwrap();
    dir.write_atomic("f", b"one", PRIVATE_FILE_MODE).unwrap();
    dir.write_atomic("f", b"two", PRIVATE_FILE_MODE).unwrap();
    let (bytes, id) = dir
        .read("f", ModeRule::Exactly(PRIVATE_FILE_MODE), 1024)
        .unwrap()
        .unwrap();
    assert_eq!(bytes, b"two");
    assert_eq!(id.size, 3);
    assert!(
        dir.read("missing", ModeRule::Exactly(0o600), 10)
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        dir.read("f", ModeRule::Exactly(0o600), 2),
        Err(StorageError::FileTooLarge { .. })
    ));
}

#[test]
fn a_stale_tmp_file_does_not_block_writes() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("k");
    let dir = SecureDir::open_or_create(&path, PRIVATE_DIR_MODE).unwrap();
    std::fs::write(path.join("f.tmp"), b"stale").unwrap();
    dir.write_atomic("f", b"new", PRIVATE_FILE_MODE).unwrap();
    assert_eq!(std::fs::read(path.join("f")).unwrap(), b"new");
}

#[test]
fn conf_027_e2_symlink_at_the_key_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let keys = root.path().join("keys");
    symlink(&target, &keys).unwrap();
    let err = SecureDir::open_or_create(&keys, PRIVATE_DIR_MODE).unwrap_err();
    assert!(
        matches!(err, StorageError::DirNotDirectory { .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn conf_027_e2_symlink_at_a_key_path_is_never_written_through() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("keys");
    let dir = SecureDir::open_or_create(&keys, PRIVATE_DIR_MODE).unwrap();
    let victim = root.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, keys.join("g.key")).unwrap();
    symlink(&victim, keys.join("g.key.tmp")).unwrap();
    // Reading refuses the link instead of following it.
    assert!(matches!(
        dir.read("g.key", ModeRule::Exactly(0o600), 1024),
        Err(StorageError::FileNotRegular { .. })
    ));
    // Writing replaces the link itself; the target keeps its bytes.
    dir.write_atomic("g.key", b"secret", PRIVATE_FILE_MODE)
        .unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        !std::fs::symlink_metadata(keys.join("g.key"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode_of(&keys.join("g.key")), 0o600);
}

#[test]
fn group_or_other_writable_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = SecureDir::open_or_create(&keys, PRIVATE_DIR_MODE).unwrap_err();
    assert!(
        matches!(err, StorageError::DirWritableByOthers { mode: 0o770, .. }),
        "{err:?}"
    );
}

#[test]
fn conf_021_wrong_mode_or_owner_file_is_not_read() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("keys");
    let dir = SecureDir::open_or_create(&keys, PRIVATE_DIR_MODE).unwrap();
    std::fs::write(keys.join("loose"), b"x").unwrap();
    std::fs::set_permissions(keys.join("loose"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        dir.read("loose", ModeRule::Exactly(0o600), 10),
        Err(StorageError::FileWrongMode { mode: 0o644, .. })
    ));
    std::fs::set_permissions(keys.join("loose"), std::fs::Permissions::from_mode(0o662)).unwrap();
    assert!(matches!(
        dir.read("loose", ModeRule::NotWritableByOthers, 10),
        Err(StorageError::FileWritableByOthers { .. })
    ));
    if geteuid().is_root() {
        std::fs::set_permissions(keys.join("loose"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::chown(keys.join("loose"), Some(65534), None).unwrap();
        assert!(matches!(
            dir.read("loose", ModeRule::Exactly(0o600), 10),
            Err(StorageError::FileWrongOwner { uid: 65534, .. })
        ));
        std::os::unix::fs::chown(&keys, Some(65534), None).unwrap();
        assert!(matches!(
            SecureDir::open(&keys),
            Err(StorageError::DirWrongOwner { .. })
        ));
    }
}

#[test]
fn names_are_single_components() {
    let root = tempfile::tempdir().unwrap();
    let dir = SecureDir::open_or_create(&root.path().join("k"), PRIVATE_DIR_MODE).unwrap();
    for bad in ["", ".", "..", "../x", "a/b"] {
        assert!(
            matches!(
                dir.write_atomic(bad, b"", 0o600),
                Err(StorageError::BadName { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn list_and_remove() {
    let root = tempfile::tempdir().unwrap();
    let dir = SecureDir::open_or_create(&root.path().join("k"), PRIVATE_DIR_MODE).unwrap();
    dir.write_atomic("a", b"", 0o600).unwrap();
    dir.write_atomic("b", b"", 0o600).unwrap();
    let mut names = dir.list().unwrap();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    dir.remove("a").unwrap();
    dir.remove("a").unwrap();
    assert_eq!(dir.list().unwrap(), ["b"]);
    assert!(dir.stat("b", ModeRule::Exactly(0o600)).unwrap().is_some());
    assert!(dir.stat("a", ModeRule::Exactly(0o600)).unwrap().is_none());
}
