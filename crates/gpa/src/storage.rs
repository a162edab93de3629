//! Files the agent owns on disk (spec §2.11): the key directory, the rules directory, the log folder, and every
//! file written into them (keys, tags, `last-status.json`, `status.json`, rules snapshots).
//!
//! A directory is opened once, without following a symlink at its last component, and checked on the open
//! descriptor; every later operation is relative to that descriptor (`openat`, `renameat`, `unlinkat`), so a
//! symlink planted at the directory or at a file path is refused and nothing is ever written through it
//! (conf 27, catalog E2). Files are created as `<name>.tmp` with `O_CREAT|O_EXCL|O_NOFOLLOW` and their final mode
//! from the first byte, written, `fsync`ed, renamed, and the directory `fsync`ed (conf 26). This module must never
//! follow a symlink, widen a mode, or hold key bytes longer than the caller's buffer.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, fsync, geteuid, unlinkat};

/// Mode of the key and rules directories (spec §2.11).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the log folder and event folder: not group/other writable (spec §10.2).
pub const LOG_DIR_MODE: u32 = 0o755;
/// Mode of key files, tag files and `last-status.json` (spec §2.11, §7.5).
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of `status.json`, rules snapshots, logs and event files (spec §4.9, §9.1, §10.2).
pub const SHARED_FILE_MODE: u32 = 0o640;
/// The suffix of a file being written; never read back.
pub const TMP_SUFFIX: &str = ".tmp";

/// Why a directory or file was refused or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{path}: cannot create or open the directory: {errno}")]
    DirOpen { path: PathBuf, errno: Errno },
    #[error("{path}: is a symlink or not a directory; refused")]
    DirNotDirectory { path: PathBuf },
    #[error("{path}: owned by uid {uid}, not by the agent (uid {expected}); refused")]
    DirWrongOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error("{path}: mode {mode:o} is group/other writable; refused")]
    DirWritableByOthers { path: PathBuf, mode: u32 },
    #[error("{path}: is a symlink or not a regular file; refused")]
    FileNotRegular { path: PathBuf },
    #[error("{path}: owned by uid {uid}, not by the agent (uid {expected}); refused")]
    FileWrongOwner {
        path: PathBuf,
        uid: u32,
        expected: u32,
    },
    #[error("{path}: mode {mode:o}, expected {expected:o}; refused")]
    FileWrongMode {
        path: PathBuf,
        mode: u32,
        expected: u32,
    },
    #[error("{path}: mode {mode:o} is group/other writable; refused")]
    FileWritableByOthers { path: PathBuf, mode: u32 },
    #[error("{path}: larger than {max} bytes")]
    FileTooLarge { path: PathBuf, max: u64 },
    #[error("{path}: {op} failed: {errno}")]
    Io {
        path: PathBuf,
        op: &'static str,
        errno: Errno,
    },
    #[error("{name:?} is not a plain file name")]
    BadName { name: String },
}

/// What a file's mode must be for [`SecureDir::read`] to accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRule {
    /// Exactly this mode (key files: 0600).
    Exactly(u32),
    /// Not group/other writable (local rules files, spec §4.7).
    NotWritableByOthers,
}

/// The identity of a file's current content, for change tracking (spec §4.7: mtime, size, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub mtime_ns: i128,
    pub size: u64,
    pub inode: u64,
}

/// A directory opened without following symlinks and checked once; all file operations are relative to it.
#[derive(Debug)]
pub struct SecureDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl SecureDir {
    /// Creates `path` (and missing parents) with `create_mode` when missing, then opens and checks it: a symlink,
    /// a non-directory, another owner, or a group/other-writable mode is refused (spec §2.11).
    pub fn open_or_create(path: &Path, create_mode: u32) -> Result<SecureDir, StorageError> {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::symlink_metadata(path).is_err() {
            // A racing creator is fine: the checks below run on whatever is there when we open it.
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(create_mode)
                .create(path);
        }
        SecureDir::open(path)
    }

    /// Opens an existing directory with the checks of [`SecureDir::open_or_create`].
    pub fn open(path: &Path) -> Result<SecureDir, StorageError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(StorageError::DirNotDirectory {
                    path: path.to_owned(),
                });
            }
            Err(errno) => {
                return Err(StorageError::DirOpen {
                    path: path.to_owned(),
                    errno,
                });
            }
        };
        let st = fstat(&fd).map_err(|errno| StorageError::DirOpen {
            path: path.to_owned(),
            errno,
        })?;
        let expected = geteuid().as_raw();
        if file_type(&st) != SFlag::S_IFDIR {
            return Err(StorageError::DirNotDirectory {
                path: path.to_owned(),
            });
        }
        if st.st_uid != expected {
            return Err(StorageError::DirWrongOwner {
                path: path.to_owned(),
                uid: st.st_uid,
                expected,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(StorageError::DirWritableByOthers {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(SecureDir {
            path: path.to_owned(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn io(&self, name: &str, op: &'static str) -> impl FnOnce(Errno) -> StorageError + '_ {
        let path = self.file_path(name);
        move |errno| StorageError::Io { path, op, errno }
    }

    /// Replaces `name` with `bytes`, atomically, with `mode` from the first byte (spec §2.11).
    pub fn write_atomic(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), StorageError> {
        check_name(name)?;
        let tmp = format!("{name}{TMP_SUFFIX}");
        // A temporary left by a crash would block O_EXCL forever; unlinking removes a planted symlink itself,
        // never its target.
        match unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(self.io(&tmp, "unlink")(errno)),
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            &self.fd,
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(mode),
        )
        .map_err(self.io(&tmp, "create"))?;
        // The umask may have narrowed the mode; set it exactly while the file is still empty.
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(self.io(&tmp, "chmod"))?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(bytes)
            .map_err(|e| self.io(&tmp, "write")(errno_of(&e)));
        let synced = written.and_then(|()| fsync(file.as_fd()).map_err(self.io(&tmp, "fsync")));
        drop(file);
        if let Err(e) = synced {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        renameat(&self.fd, tmp.as_str(), &self.fd, name).map_err(self.io(name, "rename"))?;
        fsync(&self.fd).map_err(self.io(".", "fsync"))
    }

    /// Reads `name` if it is a regular file owned by the agent whose mode passes `rule`; `Ok(None)` when it does
    /// not exist. A symlink is refused, never followed.
    pub fn read(
        &self,
        name: &str,
        rule: ModeRule,
        max: u64,
    ) -> Result<Option<(Vec<u8>, FileIdentity)>, StorageError> {
        check_name(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(StorageError::FileNotRegular {
                    path: self.file_path(name),
                });
            }
            Err(errno) => return Err(self.io(name, "open")(errno)),
        };
        let st = fstat(&fd).map_err(self.io(name, "stat"))?;
        let identity = self.check_file(name, &st, rule)?;
        if identity.size > max {
            return Err(StorageError::FileTooLarge {
                path: self.file_path(name),
                max,
            });
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(name, "read")(errno_of(&e)))?;
        if bytes.len() as u64 > max {
            return Err(StorageError::FileTooLarge {
                path: self.file_path(name),
                max,
            });
        }
        Ok(Some((bytes, identity)))
    }

    /// The identity of `name` without reading it (`Ok(None)` when missing), with the checks of [`SecureDir::read`].
    pub fn stat(&self, name: &str, rule: ModeRule) -> Result<Option<FileIdentity>, StorageError> {
        check_name(name)?;
        match fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => self.check_file(name, &st, rule).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(self.io(name, "stat")(errno)),
        }
    }

    fn check_file(
        &self,
        name: &str,
        st: &FileStat,
        rule: ModeRule,
    ) -> Result<FileIdentity, StorageError> {
        let path = || self.file_path(name);
        if file_type(st) != SFlag::S_IFREG {
            return Err(StorageError::FileNotRegular { path: path() });
        }
        let expected = geteuid().as_raw();
        if st.st_uid != expected {
            return Err(StorageError::FileWrongOwner {
                path: path(),
                uid: st.st_uid,
                expected,
            });
        }
        let mode = st.st_mode & 0o7777;
        match rule {
            ModeRule::Exactly(want) if mode != want => {
                return Err(StorageError::FileWrongMode {
                    path: path(),
                    mode,
                    expected: want,
                });
            }
            ModeRule::NotWritableByOthers if mode & 0o022 != 0 => {
                return Err(StorageError::FileWritableByOthers { path: path(), mode });
            }
            _ => {}
        }
        Ok(FileIdentity {
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            size: u64::try_from(st.st_size).unwrap_or(0),
            inode: st.st_ino,
        })
    }

    /// Removes `name` (the entry itself, never a symlink's target). Missing is not an error.
    pub fn remove(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(self.io(name, "unlink")(errno)),
        }
    }

    /// The names in the directory (not `.`/`..`), unsorted.
    pub fn list(&self) -> Result<Vec<String>, StorageError> {
        // Listing is read-only and each name is then opened relative to the checked descriptor.
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", raw(&self.fd)));
        let entries = std::fs::read_dir(&fd_path)
            .or_else(|_| std::fs::read_dir(&self.path))
            .map_err(|e| self.io(".", "list")(errno_of(&e)))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Names are single path components: no `/`, not empty, not `.` or `..`.
fn check_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(StorageError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
