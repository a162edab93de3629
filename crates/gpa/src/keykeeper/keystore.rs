//! Key files and the persisted last-known status in the key directory (spec §2.9, §2.10, §2.11, §7.5).
//!
//! A key file is `<guid>.key`, the pretty JSON of the `Key`, root-owned 0600; it is loaded only when it is a
//! regular file (not a symlink) with exactly that mode, holding a valid key whose guid equals the file name
//! (conf 21). Stored keys are read back and compared before they are attested. This module must never log key
//! bytes, and every buffer that held them is zeroed.

use std::path::Path;

use msp_core::sign::KeyGuid;
use msp_core::wire::{Key, KeyStatus};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::machine::LocalKey;
use crate::snapshot::ReadyKey;
use crate::storage::{self, ModeRule, SecureDir, StorageError};

/// Largest key file read, in bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Largest `last-status.json` read, in bytes (status documents may carry rules up to 1 MiB each).
pub const MAX_LAST_STATUS_BYTES: u64 = 4 * 1024 * 1024;
/// The persisted last-known status (spec §7.5).
pub const LAST_STATUS_FILE: &str = "last-status.json";
/// Key file suffix.
pub const KEY_SUFFIX: &str = ".key";

/// Why storing a key failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the key read back from {file} differs from the key written")]
    ReadBackMismatch { file: String },
}

/// `last-status.json`: the last status processed, with the guid of the key it belongs to (spec §7.5).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastStatus {
    pub key_guid: String,
    pub status: KeyStatus,
}

/// The key directory.
#[derive(Debug)]
pub struct KeyStore {
    dir: SecureDir,
}

impl KeyStore {
    /// Opens (creating 0700) and checks the key directory.
    pub fn open(path: &Path) -> Result<KeyStore, StorageError> {
        Ok(KeyStore {
            dir: SecureDir::open_or_create(path, storage::PRIVATE_DIR_MODE)?,
        })
    }

    fn file_name(guid: &str) -> String {
        format!("{guid}{KEY_SUFFIX}")
    }

    /// Spec §2.9 step 1.
    pub fn check(&self, guid: &KeyGuid) -> LocalKey {
        let name = KeyStore::file_name(guid.as_str());
        match self.dir.read(
            &name,
            ModeRule::Exactly(storage::PRIVATE_FILE_MODE),
            MAX_KEY_FILE_BYTES,
        ) {
            Ok(None) => LocalKey::Missing,
            Err(e) => LocalKey::Refused(e.to_string()),
            Ok(Some((bytes, _))) => {
                let bytes = Zeroizing::new(bytes);
                match Key::parse(&bytes) {
                    Ok(key) if key.guid.eq_ignore_ascii_case(guid.as_str()) => LocalKey::Found(key),
                    Ok(key) => LocalKey::Refused(format!(
                        "{name} holds the key {:?}, not {guid}",
                        key.guid
                    )),
                    Err(e) => LocalKey::Refused(format!("{name}: {e}")),
                }
            }
        }
    }

    /// Stores `key` as `<guid>.key`, reads it back and compares guid and key (spec §2.9 step 2).
    pub fn store(&self, key: &Key) -> Result<(), StoreError> {
        let name = KeyStore::file_name(&key.guid);
        let bytes = Zeroizing::new(serde_json::to_vec_pretty(key).unwrap_or_default());
        self.dir
            .write_atomic(&name, &bytes, storage::PRIVATE_FILE_MODE)?;
        let back = self
            .dir
            .read(
                &name,
                ModeRule::Exactly(storage::PRIVATE_FILE_MODE),
                MAX_KEY_FILE_BYTES,
            )?
            .map(|(b, _)| Zeroizing::new(b));
        let same = back
            .as_deref()
            .and_then(|b| Key::parse(b).ok())
            .is_some_and(|k| k.guid == key.guid && k.key == key.key);
        if same {
            Ok(())
        } else {
            Err(StoreError::ReadBackMismatch { file: name })
        }
    }

    /// Deletes key files other than those of `keep` (spec §2.10); returns the guids deleted.
    pub fn delete_except(&self, keep: &[KeyGuid]) -> Result<Vec<String>, StorageError> {
        let mut deleted = Vec::new();
        for name in self.dir.list()? {
            let Some(stem) = name.strip_suffix(KEY_SUFFIX) else {
                continue;
            };
            if keep.iter().any(|g| g.as_str().eq_ignore_ascii_case(stem)) {
                continue;
            }
            self.dir.remove(&name)?;
            deleted.push(stem.to_owned());
        }
        Ok(deleted)
    }

    /// Writes `last-status.json` (0600), replacing the previous one.
    pub fn persist_status(&self, last: &LastStatus) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(last).unwrap_or_default();
        self.dir
            .write_atomic(LAST_STATUS_FILE, &bytes, storage::PRIVATE_FILE_MODE)
    }

    pub fn forget_status(&self) -> Result<(), StorageError> {
        self.dir.remove(LAST_STATUS_FILE)
    }

    /// The persisted status and its key, only when both load and belong together (spec §7.5).
    pub fn restore(&self) -> Option<(KeyStatus, ReadyKey)> {
        let (bytes, _) = self
            .dir
            .read(
                LAST_STATUS_FILE,
                ModeRule::Exactly(storage::PRIVATE_FILE_MODE),
                MAX_LAST_STATUS_BYTES,
            )
            .ok()??;
        let last: LastStatus = serde_json::from_slice(&bytes).ok()?;
        last.status.validate().ok()?;
        if !last
            .status
            .latched_guid()
            .is_some_and(|g| g.eq_ignore_ascii_case(&last.key_guid))
        {
            return None;
        }
        let guid = KeyGuid::parse(&last.key_guid).ok()?;
        let LocalKey::Found(key) = self.check(&guid) else {
            return None;
        };
        let (guid, signing) = key.signing_parts().ok()?;
        Some((
            last.status,
            ReadyKey {
                guid,
                key: signing,
                incarnation_id: key.incarnation_id,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    const G1: &str = "9cf81e97-0316-4ad3-94a7-8ccbdee8ccbf";
    const G2: &str = "11111111-2222-3333-4444-555555555555";
    const HEX: &str = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";

    fn key(guid: &str) -> Key {
        Key::parse(
            format!(r#"{{"authorizationScheme":"Azure-HMAC-SHA256","guid":"{guid}","key":"{HEX}","issued":"x"}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn conf_026_stored_key_is_0600_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&root.path().join("keys")).unwrap();
        store.store(&key(G1)).unwrap();
        let path = root.path().join(format!("keys/{G1}.key"));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(
            matches!(store.check(&KeyGuid::parse(G1).unwrap()), LocalKey::Found(k) if k.guid == G1)
        );
        assert!(matches!(
            store.check(&KeyGuid::parse(G2).unwrap()),
            LocalKey::Missing
        ));
    }

    #[test]
    fn conf_021_symlink_wrong_mode_or_wrong_guid_key_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let store = KeyStore::open(&keys).unwrap();
        let g1 = KeyGuid::parse(G1).unwrap();
        // Wrong guid inside.
        store.store(&key(G2)).unwrap();
        std::fs::rename(
            keys.join(format!("{G2}.key")),
            keys.join(format!("{G1}.key")),
        )
        .unwrap();
        assert!(matches!(store.check(&g1), LocalKey::Refused(m) if m.contains("not 9cf81e97")));
        // Wrong mode.
        std::fs::set_permissions(
            keys.join(format!("{G1}.key")),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        assert!(matches!(store.check(&g1), LocalKey::Refused(m) if m.contains("mode 640")));
        // Symlink to a valid key file elsewhere.
        std::fs::remove_file(keys.join(format!("{G1}.key"))).unwrap();
        let elsewhere = root.path().join("other");
        let other = KeyStore::open(&elsewhere).unwrap();
        other.store(&key(G1)).unwrap();
        symlink(
            elsewhere.join(format!("{G1}.key")),
            keys.join(format!("{G1}.key")),
        )
        .unwrap();
        assert!(matches!(store.check(&g1), LocalKey::Refused(_)));
        // Not a key at all.
        std::fs::remove_file(keys.join(format!("{G1}.key"))).unwrap();
        std::fs::write(keys.join(format!("{G1}.key")), b"{}").unwrap();
        std::fs::set_permissions(
            keys.join(format!("{G1}.key")),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(store.check(&g1), LocalKey::Refused(_)));
    }

    #[test]
    fn delete_except_keeps_current_and_predecessor() {
        let root = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&root.path().join("keys")).unwrap();
        let g3 = "33333333-2222-3333-4444-555555555555";
        for g in [G1, G2, g3] {
            store.store(&key(g)).unwrap();
        }
        let deleted = store
            .delete_except(&[KeyGuid::parse(G2).unwrap(), KeyGuid::parse(g3).unwrap()])
            .unwrap();
        assert_eq!(deleted, [G1]);
        assert!(root.path().join(format!("keys/{G2}.key")).exists());
    }

    #[test]
    fn restore_needs_the_matching_key() {
        let root = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&root.path().join("keys")).unwrap();
        let status = KeyStatus::parse(
            format!(
                r#"{{"version":"1.0","authorizationScheme":"Azure-HMAC-SHA256","keyDeliveryMethod":"http",
                    "keyGuid":"{G1}","secureChannelState":"WireserverAndImds"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        store
            .persist_status(&LastStatus {
                key_guid: G1.to_owned(),
                status: status.clone(),
            })
            .unwrap();
        assert!(store.restore().is_none(), "no key file: not used");
        store.store(&key(G1)).unwrap();
        let (restored, key) = store.restore().unwrap();
        assert_eq!(key.guid.as_str(), G1);
        assert_eq!(restored.latched_guid(), Some(G1));
        store
            .persist_status(&LastStatus {
                key_guid: G2.to_owned(),
                status,
            })
            .unwrap();
        assert!(store.restore().is_none(), "status of another key: not used");
        store.forget_status().unwrap();
        assert!(store.restore().is_none());
    }
}
