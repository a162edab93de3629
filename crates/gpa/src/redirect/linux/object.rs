//! The eBPF object: the embedded, reproducible build of `crates/gpa/bpf/redirect.bpf.c`, or the file named by
//! `ebpfFileFullPath` (spec §10.2), which must be a root-owned regular file that group and others cannot write.
//! An object that fails those checks is never read.
use std::borrow::Cow;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::redirect::{ObjectProblem, RedirectError};

/// The object built by `scripts/build-bpf.sh`, aligned for ELF parsing.
pub(super) static EMBEDDED: &[u8] = aya::include_bytes_aligned!("../../../bpf/redirect.bpf.o");

/// Group- and other-write permission bits.
const GROUP_OTHER_WRITE: u32 = 0o022;

/// The object to load.
pub(super) fn bytes(override_path: Option<&Path>) -> Result<Cow<'static, [u8]>, RedirectError> {
    let Some(path) = override_path else {
        return Ok(Cow::Borrowed(EMBEDDED));
    };
    let read_error = |source| RedirectError::ObjectRead {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let problem = if !meta.is_file() {
        Some(ObjectProblem::NotARegularFile)
    } else if meta.uid() != 0 {
        Some(ObjectProblem::NotOwnedByRoot { uid: meta.uid() })
    } else if meta.mode() & GROUP_OTHER_WRITE != 0 {
        Some(ObjectProblem::WritableByGroupOrOthers {
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(RedirectError::UnsafeObject {
            path: path.to_path_buf(),
            problem,
        });
    }
    Ok(Cow::Owned(std::fs::read(path).map_err(read_error)?))
}

/// FNV-1a over the object: tells a restarted agent whether pinned programs came from the object it would load.
pub(super) fn fingerprint(object: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = object
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    hash.max(1) // 0 is what an unwritten meta slot holds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_an_ebpf_elf() {
        assert_eq!(EMBEDDED.get(..4), Some(&b"\x7fELF"[..]));
        assert_eq!(EMBEDDED.as_ptr().align_offset(8), 0);
        assert_ne!(fingerprint(EMBEDDED), fingerprint(b""));
    }

    #[test]
    fn writable_or_foreign_objects_are_refused() {
        let dir = std::env::temp_dir().join(format!("gpa-object-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.o");
        std::fs::write(&file, EMBEDDED).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let err = bytes(Some(&file)).unwrap_err();
        let expected_problem = if nix::unistd::geteuid().is_root() {
            ObjectProblem::WritableByGroupOrOthers { mode: 0o666 }
        } else {
            ObjectProblem::NotOwnedByRoot {
                uid: nix::unistd::geteuid().as_raw(),
            }
        };
        assert!(
            matches!(err, RedirectError::UnsafeObject { problem, .. } if problem == expected_problem),
            "{err:?}"
        );
        assert!(matches!(
            bytes(Some(&dir)),
            Err(RedirectError::UnsafeObject { .. })
        ));
        assert!(matches!(
            bytes(Some(&dir.join("missing.o"))),
            Err(RedirectError::ObjectRead { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
