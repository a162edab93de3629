//! Spooled event files (spec §11.2): events that could not be sent wait in `<eventFolder>/<unix nanos>.json`
//! (a JSON array), at most `maxEventFileCount` files, created like every agent file (exclusive, no-follow,
//! 0640) in a directory that is not group/other writable.
//!
//! Files are deleted once their events are queued again; a file that does not parse is deleted too (it can
//! never be sent). This module must never write an unredacted message: events are redacted when built.

use std::path::Path;

use super::event::Event;
use crate::storage::{self, ModeRule, SecureDir, StorageError};

/// Largest spool file read back, in bytes.
pub const MAX_SPOOL_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The event folder.
#[derive(Debug)]
pub struct Spool {
    dir: SecureDir,
    max_files: usize,
}

impl Spool {
    pub fn open(folder: &Path, max_files: usize) -> Result<Spool, StorageError> {
        Ok(Spool {
            dir: SecureDir::open_or_create(folder, storage::LOG_DIR_MODE)?,
            max_files,
        })
    }

    fn files(&self) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self
            .dir
            .list()?
            .into_iter()
            .filter(|n| {
                n.strip_suffix(".json").is_some_and(|stem| {
                    !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
                })
            })
            .collect();
        names.sort_by_key(|n| (n.len(), n.clone()));
        Ok(names)
    }

    /// Writes `events` as one file named `<unix nanos>.json`; returns false (events dropped) when the folder
    /// already holds `maxEventFileCount` files.
    pub fn write(&self, events: &[Event], unix_nanos: i64) -> Result<bool, StorageError> {
        if events.is_empty() {
            return Ok(true);
        }
        if self.files()?.len() >= self.max_files {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(events).unwrap_or_default();
        self.dir.write_atomic(
            &format!("{unix_nanos}.json"),
            &bytes,
            storage::SHARED_FILE_MODE,
        )?;
        Ok(true)
    }

    /// Reads every spooled file, oldest first, deleting each one read.
    pub fn take_all(&self) -> Result<Vec<Event>, StorageError> {
        let mut out = Vec::new();
        for name in self.files()? {
            let read = self
                .dir
                .read(&name, ModeRule::NotWritableByOthers, MAX_SPOOL_FILE_BYTES);
            if let Ok(Some((bytes, _))) = read
                && let Ok(events) = serde_json::from_slice::<Vec<Event>>(&bytes)
            {
                out.extend(events);
            }
            self.dir.remove(&name)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::telemetry::EventLevel;

    #[test]
    fn spool_round_trips_respects_the_cap_and_deletes_what_it_reads() {
        let root = tempfile::tempdir().unwrap();
        let folder = root.path().join("events");
        let spool = Spool::open(&folder, 2).unwrap();
        let e = |m: &str| Event::new(EventLevel::Info, "gpa", "x", m);
        assert!(spool.write(&[e("a"), e("b")], 100).unwrap());
        assert!(spool.write(&[e("c")], 200).unwrap());
        assert!(
            !spool.write(&[e("d")], 300).unwrap(),
            "maxEventFileCount reached"
        );
        let mode = std::fs::metadata(folder.join("100.json")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::write(folder.join("extension_1.json"), b"[]").unwrap();
        let msgs: Vec<String> = spool
            .take_all()
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(msgs, ["a", "b", "c"]);
        let left: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["extension_1.json"], "only our files are consumed");
    }
}
