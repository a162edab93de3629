//! Reads one process's `/proc` entries through a directory descriptor. The descriptor is bound to the process,
//! not to its number: once the process is gone every read through it fails, even if the pid is reused, so what
//! is read after the start-time check belongs to the process that was checked.
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstatat};

use crate::identity::stat_start_ticks;
use crate::redirect::ExeId;

/// Bytes of `/proc/<pid>/cmdline` read at most; enough for 4 words and the 1,024-byte claim (spec §6).
pub(super) const CMDLINE_READ_MAX: usize = 32 * 1024;
/// Bytes of `/proc/<pid>/stat` or `fdinfo` read at most (both are a few hundred bytes).
const SMALL_FILE_MAX: usize = 4096;
/// Bytes of `/proc/<pid>/mountinfo` read at most (a busy container host lists thousands of mounts).
const MOUNTINFO_READ_MAX: usize = 4 * 1024 * 1024;

/// An open `/proc/<pid>` directory.
#[derive(Debug)]
pub(super) struct ProcDir {
    dir: OwnedFd,
}

/// A file's identity as `stat` reports it: its device and inode. Two files that exist at once differ in one of
/// them on every local file system (an overlay reports its own device, or, over layers on different file
/// systems without `xino`, each layer's); a network or FUSE file system reports what its server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

/// The executable a process runs, opened (`O_PATH`) so that its identity and path describe one file.
pub(super) struct Exe {
    file: OwnedFd,
    mnt_id: u64,
    ino: u64,
}

impl ProcDir {
    pub(super) fn open(pid: u32) -> io::Result<ProcDir> {
        let path = format!("/proc/{pid}");
        let dir = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(ProcDir { dir })
    }

    fn read(&self, name: &str, limit: usize) -> io::Result<(Vec<u8>, bool)> {
        let fd = openat(
            &self.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        read_bounded(File::from(fd), limit)
    }

    /// `/proc/<pid>/stat` field 22, in clock ticks since boot.
    pub(super) fn start_ticks(&self) -> io::Result<u64> {
        let (stat, _) = self.read("stat", SMALL_FILE_MAX)?;
        stat_start_ticks(&String::from_utf8_lossy(&stat))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "stat without a start time"))
    }

    /// Opens the executable (`/proc/<pid>/exe`) and reads its mount and inode from this process's `fdinfo`.
    pub(super) fn exe(&self, fdinfo: &FdinfoDir) -> io::Result<Exe> {
        let file = openat(
            &self.dir,
            "exe",
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let (info, _) = read_bounded(fdinfo.open_entry(file.as_raw_fd())?, SMALL_FILE_MAX)?;
        let info = String::from_utf8_lossy(&info);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "fdinfo without mnt_id or ino")
                })
        };
        Ok(Exe {
            mnt_id: field("mnt_id:")?,
            ino: field("ino:")?,
            file,
        })
    }

    /// The identity of the executable that `/proc/<pid>/exe` leads to, in one `fstatat` that follows the link and
    /// opens nothing: one system call where [`exe`](Self::exe) takes six. It fails like `exe` once the process is
    /// gone.
    pub(super) fn exe_id(&self) -> io::Result<FileId> {
        Ok(FileId::of(&fstatat(&self.dir, "exe", AtFlags::empty())?))
    }

    /// The device (major, minor) of mount `mnt_id` as `/proc/<pid>/mountinfo` shows it: the super block's
    /// `s_dev`, the same number the kernel program records. `None` when the mount is not listed.
    pub(super) fn mount_dev(&self, mnt_id: u64) -> io::Result<Option<(u32, u32)>> {
        let (text, _) = self.read("mountinfo", MOUNTINFO_READ_MAX)?;
        let text = String::from_utf8_lossy(&text);
        Ok(text.lines().find_map(|line| {
            let mut fields = line.split(' ');
            (fields.next()?.parse::<u64>().ok()? == mnt_id).then_some(())?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        }))
    }

    /// `/proc/<pid>/cmdline`, at most [`CMDLINE_READ_MAX`] bytes, and whether it was cut there.
    pub(super) fn cmdline(&self) -> io::Result<(Vec<u8>, bool)> {
        self.read("cmdline", CMDLINE_READ_MAX)
    }
}

/// The agent's own `/proc/self/fdinfo`, opened once: each lookup is then one path component, not four. Every
/// thread of the agent shares its descriptor table, so the directory serves them all.
#[derive(Debug)]
pub(super) struct FdinfoDir(Option<OwnedFd>);

impl FdinfoDir {
    /// Falls back to the full path per lookup when the directory cannot be opened.
    pub(super) fn open() -> FdinfoDir {
        let dir = nix::fcntl::open(
            "/proc/self/fdinfo",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        FdinfoDir(dir.ok())
    }

    fn open_entry(&self, fd: RawFd) -> io::Result<File> {
        match &self.0 {
            Some(dir) => Ok(File::from(openat(
                dir,
                fd.to_string().as_str(),
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?)),
            None => File::open(format!("/proc/self/fdinfo/{fd}")),
        }
    }
}

impl Exe {
    /// Same file as `other` (same mount and inode).
    pub(super) fn same_file(&self, other: &Exe) -> bool {
        self.mnt_id == other.mnt_id && self.ino == other.ino
    }

    /// Whether this is the executable the kernel recorded, given the device of its mount.
    pub(super) fn matches(&self, recorded: &ExeId, mount_dev: Option<(u32, u32)>) -> bool {
        self.ino == recorded.ino
            && mount_dev.is_none_or(|dev| dev == (recorded.dev_major, recorded.dev_minor))
    }

    pub(super) fn mnt_id(&self) -> u64 {
        self.mnt_id
    }

    /// The path of the opened file, as `/proc/<pid>/exe` shows it: a path in the *caller's* mount namespace.
    pub(super) fn path(&self) -> io::Result<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The identity of this very file, as [`ProcDir::exe_id`] reports the file a process runs: both `stat` the
    /// same open path.
    pub(super) fn id(&self) -> io::Result<FileId> {
        Ok(FileId::of(&nix::sys::stat::fstat(&self.file)?))
    }
}

impl FileId {
    fn of(stat: &FileStat) -> FileId {
        FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }

    /// Whether `path`, looked up in the agent's own mount namespace, is this file (same device and inode).
    /// `/proc/<pid>/exe` reads as the path in the caller's mount namespace, where a bind mount (which an
    /// unprivileged user can make in a user + mount namespace) puts any binary at an allowed path (catalog C3).
    pub(super) fn is_at(self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|here| here.dev() == self.dev && here.ino() == self.ino)
    }
}

/// Room of the first read: `stat` and `fdinfo` then take one `read` and the one that sees the end (an empty
/// `Vec` would start at 32 bytes and double, six reads for a `stat`).
const FIRST_READ: usize = 4096;

/// Reads at most `limit` bytes; the flag says whether more was there.
fn read_bounded(file: File, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::with_capacity(FIRST_READ.min(limit + 1));
    let mut reader = file.take(limit as u64 + 1);
    reader.read_to_end(&mut buf)?;
    let truncated = buf.len() > limit;
    buf.truncate(limit);
    Ok((buf, truncated))
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn exe_id_names_the_running_executable_as_its_opened_file_does_and_fails_once_the_process_is_gone()
     {
        // `spawn` returns once the child has executed `sleep`.
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep runs");
        let dir = ProcDir::open(child.id()).expect("the child's /proc directory");
        let sleep = std::fs::metadata(format!("/proc/{}/exe", child.id())).expect("stat of sleep");
        let id = dir.exe_id().expect("the child is alive");
        assert_eq!(
            id,
            FileId {
                dev: sleep.dev(),
                ino: sleep.ino()
            }
        );
        // The same numbers as the opened executable's own: what the facts are cached with.
        let opened = dir.exe(&FdinfoDir::open()).and_then(|e| e.id());
        assert_eq!(opened.expect("the opened executable"), id);
        let own = ProcDir::open(std::process::id()).and_then(|d| d.exe_id());
        assert_ne!(
            own.expect("our own executable"),
            id,
            "another program, another id"
        );

        child.kill().expect("kill");
        child.wait().expect("reaped");
        let gone = dir
            .exe_id()
            .expect_err("nothing resolves through a dead process's directory");
        // What the identity resolver reads as "exited".
        assert!(
            matches!(gone.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)),
            "{gone}"
        );
    }
}
