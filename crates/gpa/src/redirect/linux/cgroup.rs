//! The cgroup the hooks attach to (spec §7.1): the configured `cgroupRoot`, else the cgroup2 mount named in
//! `/proc/self/mountinfo`, else `/sys/fs/cgroup`. Never any other.
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, fstatfs};

use crate::redirect::{FALLBACK_CGROUP_ROOT, RedirectError};

/// An open cgroup v2 directory.
#[derive(Debug)]
pub(super) struct Cgroup {
    pub(super) path: PathBuf,
    /// The cgroup id: the directory's inode number on cgroup2 (64-bit kernels).
    pub(super) id: u64,
    dir: File,
}

impl Cgroup {
    pub(super) fn open(configured: Option<&Path>) -> Result<Cgroup, RedirectError> {
        let path = configured.map_or_else(discover_root, Path::to_path_buf);
        let open_error = |source| RedirectError::CgroupOpen {
            path: path.clone(),
            source,
        };
        let dir = File::open(&path).map_err(open_error)?;
        let meta = dir.metadata().map_err(open_error)?;
        let is_cgroup2 = fstatfs(&dir).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
        if !meta.is_dir() || !is_cgroup2 {
            return Err(RedirectError::NotCgroup2 { path });
        }
        Ok(Cgroup {
            id: meta.ino(),
            path,
            dir,
        })
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// The cgroup2 mount of `/proc/self/mountinfo`, else `/sys/fs/cgroup`.
pub(super) fn discover_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| cgroup2_mount(&text))
        .unwrap_or_else(|| PathBuf::from(FALLBACK_CGROUP_ROOT))
}

/// The mount point of the cgroup2 hierarchy in a `/proc/<pid>/mountinfo` text, preferring a mount of its root.
pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        if rest.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let mut fields = fields.split(' ');
        let (Some(root), Some(mount_point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_octal(mount_point));
        if root == "/" {
            return Some(mount_point);
        }
        fallback.get_or_insert(mount_point);
    }
    fallback
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(octal_byte);
        match escaped {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits as a byte.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    digits.iter().try_fold(0u8, |acc, &d| {
        let v = d.checked_sub(b'0').filter(|&v| v < 8)?;
        acc.checked_mul(8)?.checked_add(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_root_mount() {
        let text = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs ro,mode=755
41 33 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn prefers_the_hierarchy_root_and_unescapes() {
        let text = "\
50 1 0:38 /sub /mnt/sub rw - cgroup2 cgroup2 rw
51 1 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount(text), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(cgroup2_mount("garbage\n"), None);
    }
}
