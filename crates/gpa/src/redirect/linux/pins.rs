//! The pin directory of a `closed` redirector: `/sys/fs/bpf/gpa/<cgroup id>/` (spec §7.5), one file per link
//! (`link_<program>`) and per map (`<map>`). Agents attached to different cgroups never see each other's pins.
//!
//! This module must never touch a path outside [`PIN_ROOT`], and never mount anything but bpffs at
//! [`BPFFS_MOUNT_POINT`], and that only when nothing is mounted there yet.
use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use crate::redirect::{BPFFS_MOUNT_POINT, KernelFeature, PIN_ROOT, RedirectError};

/// Serialises the mount check within this process; [`Flock`] on the mount point serialises processes.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug)]
pub(super) struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// The pin directory of a cgroup, whether or not it exists.
    pub(super) fn of(cgroup_id: u64) -> PinDir {
        PinDir {
            path: Path::new(PIN_ROOT).join(cgroup_id.to_string()),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Mounts bpffs if needed and creates the directory (0700).
    pub(super) fn create(&self) -> Result<(), RedirectError> {
        ensure_bpffs()?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|e| bpffs_error(&self.path, "create directory", e))
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(super) fn link(&self, program: &str) -> PathBuf {
        self.path.join(format!("link_{program}"))
    }

    /// A program pinned without a link (`gpa_take`, which attaches nowhere).
    pub(super) fn program(&self, program: &str) -> PathBuf {
        self.path.join(format!("prog_{program}"))
    }

    /// Removes every pin in the directory, which detaches links and frees maps nobody else holds.
    pub(super) fn clear(&self) -> Result<(), RedirectError> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(bpffs_error(&self.path, "list pins", e)),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| bpffs_error(&self.path, "list pins", e))?
                .path();
            remove_pin(&path)?;
        }
        Ok(())
    }

    /// Clears the directory and removes it.
    pub(super) fn remove(&self) -> Result<(), RedirectError> {
        self.clear()?;
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(bpffs_error(&self.path, "remove directory", e))
            }
            _ => Ok(()),
        }
    }
}

/// Unlinks one pin; a pin already gone is fine.
pub(super) fn remove_pin(path: &Path) -> Result<(), RedirectError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(bpffs_error(path, "unpin", e)),
        _ => Ok(()),
    }
}

/// The error of a failed pin or pin opening at `path` (aya's own error types, kept as the source).
pub(super) fn pin_error<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
    operation: &'static str,
) -> impl FnOnce(E) -> RedirectError {
    move |e| RedirectError::Bpffs {
        path: path.to_path_buf(),
        operation,
        source: Box::new(e),
    }
}

fn bpffs_error(path: &Path, operation: &'static str, e: impl Into<io::Error>) -> RedirectError {
    let e: io::Error = e.into();
    if e.kind() == io::ErrorKind::PermissionDenied {
        return RedirectError::PermissionDenied {
            operation,
            source: e.into(),
        };
    }
    RedirectError::Bpffs {
        path: path.to_path_buf(),
        operation,
        source: e.into(),
    }
}

fn is_bpffs(path: &str) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at `/sys/fs/bpf` unless it is there already (DESIGN.md: not mounted by default here).
fn ensure_bpffs() -> Result<(), RedirectError> {
    if is_bpffs(BPFFS_MOUNT_POINT) {
        return Ok(());
    }
    let _guard = MOUNT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mount_point = File::open(BPFFS_MOUNT_POINT)
        .map_err(|e| bpffs_error(Path::new(BPFFS_MOUNT_POINT), "open mount point", e))?;
    // Another process may be mounting right now: hold its lock, then look again. A process that opens the mount
    // point after the mount locks the new root instead, and sees bpffs.
    let _lock = Flock::lock(mount_point, FlockArg::LockExclusive)
        .map_err(|(_, e)| bpffs_error(Path::new(BPFFS_MOUNT_POINT), "lock mount point", e))?;
    if is_bpffs(BPFFS_MOUNT_POINT) {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("bpf"),
        BPFFS_MOUNT_POINT,
        Some("bpf"),
        flags,
        Some("mode=0700"),
    )
    .map_err(|e| match e {
        nix::Error::ENODEV => RedirectError::KernelUnsupported {
            missing: KernelFeature::Bpffs,
            source: Some(io::Error::from(e).into()),
        },
        e => bpffs_error(Path::new(BPFFS_MOUNT_POINT), "mount bpffs", e),
    })
}
