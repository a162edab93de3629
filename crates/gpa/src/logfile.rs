//! `ProxyAgent.log` (spec §10.2): a size-rolled log file, 0640, created without following symlinks, in a
//! folder that is not group/other writable; every line is redacted (spec §11.4) before it is written.
//!
//! Rolling: when a write would pass [`ROLL_BYTES`], `ProxyAgent.log` becomes `ProxyAgent.log.1` (older files
//! shift up) and at most [`KEPT_FILES`] files exist. This writer must never write a key, a signature or an
//! unescaped control character, and a failed write never stops the agent.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use crate::storage::{self, SecureDir, StorageError};

/// Roll before the file passes this size, in bytes (spec §10.2: 10 MB).
pub const ROLL_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept, the live one included (spec §10.2).
pub const KEPT_FILES: usize = 5;
/// The agent's log file name (spec §10.2).
pub const LOG_FILE: &str = "ProxyAgent.log";
/// The per-request log file name (spec §10.2).
pub const CONNECTION_LOG_FILE: &str = "ProxyAgent.Connection.log";
/// Records with this `tracing` target go to [`CONNECTION_LOG_FILE`] instead of [`LOG_FILE`].
pub const CONNECTION_TARGET: &str = "gpa::connection";

#[derive(Debug)]
struct State {
    file: Option<File>,
    size: u64,
}

/// A rolling log file usable as a `tracing_subscriber` writer.
#[derive(Debug, Clone)]
pub struct RollingLog {
    path: PathBuf,
    roll_bytes: u64,
    state: Arc<Mutex<State>>,
}

impl RollingLog {
    /// Opens (creating) `<dir>/<name>`; the folder is created 0755 and checked.
    pub fn open(dir: &Path, name: &str) -> Result<RollingLog, StorageError> {
        SecureDir::open_or_create(dir, storage::LOG_DIR_MODE)?;
        let path = dir.join(name);
        let file = open_append(&path).ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        Ok(RollingLog {
            path,
            roll_bytes: ROLL_BYTES,
            state: Arc::new(Mutex::new(State { file, size })),
        })
    }

    /// The same log rolling at `bytes` instead of [`ROLL_BYTES`].
    pub fn with_roll_bytes(mut self, bytes: u64) -> RollingLog {
        self.roll_bytes = bytes;
        self
    }

    fn rolled(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn roll(&self, state: &mut State) {
        state.file = None;
        let _ = std::fs::remove_file(self.rolled(KEPT_FILES - 1));
        for n in (1..KEPT_FILES - 1).rev() {
            let _ = std::fs::rename(self.rolled(n), self.rolled(n + 1));
        }
        let _ = std::fs::rename(&self.path, self.rolled(1));
        state.file = open_append(&self.path).ok();
        state.size = 0;
    }

    fn write_line(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (text.as_ref(), ""),
        };
        let line = format!("{}{newline}", crate::telemetry::redact(body));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.size + line.len() as u64 > self.roll_bytes {
            self.roll(&mut state);
        }
        if let Some(file) = state.file.as_mut()
            && file.write_all(line.as_bytes()).is_ok()
        {
            state.size += line.len() as u64;
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(storage::SHARED_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
}

/// One `tracing` write: the formatted event, written as one redacted line.
pub struct LineWriter<'a> {
    log: &'a RollingLog,
    buf: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.log.write_line(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for RollingLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            log: self,
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn lines_are_redacted_and_the_file_is_0640() {
        let root = tempfile::tempdir().unwrap();
        let log = RollingLog::open(root.path(), LOG_FILE).unwrap();
        let hex = "4A404E635266556A586E3272357538782F413F4428472B4B6250645367566B59";
        writeln!(log.make_writer(), "key {hex} sig=abc").unwrap();
        let text = std::fs::read_to_string(root.path().join(LOG_FILE)).unwrap();
        assert_eq!(text, "key *** sig=***\n");
        assert_eq!(
            std::fs::metadata(root.path().join(LOG_FILE))
                .unwrap()
                .mode()
                & 0o777,
            0o640
        );
    }

    #[test]
    fn rolls_at_the_limit_and_keeps_five_files() {
        let root = tempfile::tempdir().unwrap();
        let log = RollingLog::open(root.path(), LOG_FILE)
            .unwrap()
            .with_roll_bytes(10 * 1024);
        let line = "x".repeat(1023);
        for _ in 0..(10 * 7) {
            writeln!(log.make_writer(), "{line}").unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ProxyAgent.log",
                "ProxyAgent.log.1",
                "ProxyAgent.log.2",
                "ProxyAgent.log.3",
                "ProxyAgent.log.4"
            ]
        );
        for n in &names {
            assert!(std::fs::metadata(root.path().join(n)).unwrap().len() <= 10 * 1024);
        }
    }

    #[test]
    fn a_symlink_at_the_log_path_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join(LOG_FILE)).unwrap();
        let log = RollingLog::open(root.path(), LOG_FILE).unwrap();
        writeln!(log.make_writer(), "hello").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
