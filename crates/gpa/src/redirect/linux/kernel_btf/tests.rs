use proptest::prelude::*;

use super::*;

/// Writes BTF blobs the way the kernel lays them out, for the shapes the agent must read or refuse.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

/// A struct member: name, type id, bit offset, bitfield size (0: not a bitfield).
type M<'a> = (&'a str, u32, u32, u32);

impl Builder {
    fn new() -> Builder {
        Builder {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn raw(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32) -> u32 {
        let name = self.name(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for word in [name, info, size_or_type] {
            self.types.extend_from_slice(&word.to_ne_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_ne_bytes());
        }
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.raw(name, kind::INT, 0, false, bytes);
        self.words(&[bytes * 8]);
        id
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[M<'_>]) -> u32 {
        let kind_flag = members.iter().any(|m| m.3 != 0);
        let vlen = u32::try_from(members.len()).unwrap();
        let id = self.raw(name, kind::STRUCT, vlen, kind_flag, size);
        for &(member, ty, bits, bitfield) in members {
            let name = self.name(member);
            let offset = if kind_flag {
                bitfield << 24 | bits
            } else {
                bits
            };
            self.words(&[name, ty, offset]);
        }
        id
    }

    /// Types of every kind that has a trailer, which the scan must step over.
    fn noise(&mut self) {
        let int = self.int("int", 4);
        self.raw("color", kind::ENUM, 2, false, 4);
        let (red, blue) = (self.name("RED"), self.name("BLUE"));
        self.words(&[red, 0, blue, 1]);
        self.raw("", kind::ARRAY, 0, false, 0);
        self.words(&[int, int, 16]);
        self.raw("", kind::FUNC_PROTO, 2, false, int);
        self.words(&[0, int, 0, int]);
        self.raw("jiffies", kind::VAR, 0, false, int);
        self.words(&[1]);
        self.raw(".data", kind::DATASEC, 1, false, 8);
        self.words(&[int, 0, 4]);
        self.raw("big", kind::ENUM64, 1, false, 8);
        self.words(&[red, 1, 0]);
        self.raw("tag", kind::DECL_TAG, 0, false, int);
        self.words(&[u32::MAX]);
        self.raw("double", kind::FLOAT, 0, false, 8);
        self.raw("file", kind::FWD, 0, false, 0);
        self.raw("", kind::FUNC, 0, false, int);
        // A struct with a wanted name but no members (a forward declaration's shape): not a definition.
        self.strukt("task_struct", 0, &[]);
    }

    fn build(&self) -> Vec<u8> {
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_ne_bytes());
        blob.extend_from_slice(&[1, 0]); // version, flags
        let len = |v: &Vec<u8>| u32::try_from(v.len()).unwrap();
        let (types, strings) = (len(&self.types), len(&self.strings));
        for word in [u32::try_from(HEADER_LEN).unwrap(), 0, types, types, strings] {
            blob.extend_from_slice(&word.to_ne_bytes());
        }
        blob.extend_from_slice(&self.types);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// The layouts the agent reads, at this guest's offsets, with `exe_file` inside an anonymous struct that is
/// itself at an offset (as in 6.x `mm_struct`) and `dev_t` behind two typedefs.
struct Kernel {
    super_block: Vec<M<'static>>,
    task_struct: Vec<M<'static>>,
    extra_super_block: Option<Vec<M<'static>>>,
}

/// Type ids the fixture lays out first, so members can name them.
const U32: u32 = 1;
const U64: u32 = 2;
const DEV_T: u32 = 4;
const PTR: u32 = 5;
const ANON: u32 = 6;

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            super_block: vec![("s_blocksize", U32, 0, 0), ("s_dev", DEV_T, 128, 0)],
            task_struct: vec![
                ("mm", PTR, 9088, 0),
                ("group_leader", PTR, 10624, 0),
                ("start_boottime", U64, 12480, 0),
            ],
            extra_super_block: None,
        }
    }

    fn blob(&self) -> Vec<u8> {
        let mut b = Builder::new();
        assert_eq!(b.int("unsigned int", 4), U32);
        assert_eq!(b.int("long long unsigned int", 8), U64);
        let kernel_dev_t = b.raw("__kernel_dev_t", kind::TYPEDEF, 0, false, U32);
        assert_eq!(b.raw("dev_t", kind::TYPEDEF, 0, false, kernel_dev_t), DEV_T);
        assert_eq!(b.raw("", kind::PTR, 0, false, 0), PTR);
        assert_eq!(b.strukt("", 16, &[("exe_file", PTR, 64, 0)]), ANON);
        b.noise();
        b.strukt("task_struct", 4096, &self.task_struct);
        b.strukt("mm_struct", 2048, &[("pgd", PTR, 0, 0), ("", ANON, 256, 0)]);
        b.strukt(
            "file",
            256,
            &[("f_mode", U32, 0, 0), ("f_inode", PTR, 256, 0)],
        );
        b.strukt(
            "inode",
            512,
            &[("i_sb", PTR, 320, 0), ("i_ino", U64, 512, 0)],
        );
        b.strukt("super_block", 1024, &self.super_block);
        if let Some(extra) = &self.extra_super_block {
            b.strukt("super_block", 1024, extra);
        }
        b.build()
    }
}

#[test]
fn finds_every_field_behind_typedefs_and_inside_anonymous_structs() {
    let offsets = find(&Kernel::new().blob()).unwrap();
    // group_leader, mm, start_boottime, exe_file (256 + 64 bits), f_inode, i_ino, i_sb, s_dev
    assert_eq!(offsets, Offsets([1328, 1136, 1560, 40, 32, 64, 40, 16]));
}

#[test]
fn a_missing_struct_or_field_is_named() {
    let mut k = Kernel::new();
    k.task_struct.retain(|m| m.0 != "start_boottime");
    assert_eq!(
        find(&k.blob()),
        Err(KernelBtfError::NoField {
            strukt: "task_struct",
            member: "start_boottime"
        })
    );
    let mut k = Kernel::new();
    k.super_block.clear();
    assert_eq!(
        find(&k.blob()),
        Err(KernelBtfError::NoStruct {
            strukt: "super_block"
        })
    );
}

#[test]
fn a_field_of_another_kind_or_size_is_refused() {
    let mut k = Kernel::new();
    k.super_block[1].1 = U64;
    assert_eq!(
        find(&k.blob()),
        Err(KernelBtfError::WrongShape {
            strukt: "super_block",
            member: "s_dev",
            found: Some(Shape::Integer(8)),
            expected: Shape::Integer(4)
        })
    );
    // A u64 where the program follows a pointer, and a struct where it reads one.
    for (ty, found) in [(U64, Some(Shape::Integer(8))), (ANON, None)] {
        let mut k = Kernel::new();
        k.task_struct[0].1 = ty;
        assert_eq!(
            find(&k.blob()),
            Err(KernelBtfError::WrongShape {
                strukt: "task_struct",
                member: "mm",
                found,
                expected: Shape::Pointer
            })
        );
    }
}

#[test]
fn a_definition_without_the_field_is_another_struct_of_that_name() {
    let mut k = Kernel::new();
    k.extra_super_block = Some(vec![("s_flags", U32, 0, 0)]);
    assert_eq!(find(&k.blob()).unwrap().0[7], 16);
}

#[test]
fn an_anonymous_member_behind_a_typedef_is_searched() {
    let mut b = Builder::new();
    let ptr = b.raw("", kind::PTR, 0, false, 0);
    let anon = b.strukt("", 16, &[("exe_file", ptr, 64, 0)]);
    let alias = b.raw("mm_anon_t", kind::TYPEDEF, 0, false, anon);
    let mm = b.strukt("mm_struct", 64, &[("", alias, 128, 0)]);
    let blob = b.build();
    let btf = Btf::parse(&blob).unwrap();
    let mut budget = MAX_MEMBERS_SEARCHED;
    let member = btf
        .member(mm, b"exe_file", 0, &mut budget)
        .unwrap()
        .unwrap();
    assert_eq!((member.bits, member.type_id), (192, ptr));
}

#[test]
fn anonymous_members_that_refer_back_end_the_search() {
    // A struct of 64 anonymous members, each of them the struct itself: 64^8 paths without a budget.
    let mut b = Builder::new();
    let id = b.next_id;
    let members: Vec<M<'_>> = (0..64).map(|_| ("", id, 0, 0)).collect();
    assert_eq!(b.strukt("task_struct", 8, &members), id);
    assert!(matches!(
        find(&b.build()),
        Err(KernelBtfError::Malformed { .. })
    ));
}

#[test]
fn bitfields_and_unaligned_fields_are_refused() {
    for (bits, bitfield) in [(128, 20), (132, 0)] {
        let mut k = Kernel::new();
        k.super_block[1] = ("s_dev", DEV_T, bits, bitfield);
        assert_eq!(
            find(&k.blob()),
            Err(KernelBtfError::NotByteAligned {
                strukt: "super_block",
                member: "s_dev"
            }),
            "bit offset {bits}, bitfield size {bitfield}"
        );
    }
}

#[test]
fn two_definitions_of_a_struct_must_agree() {
    let mut k = Kernel::new();
    k.extra_super_block = Some(k.super_block.clone());
    assert_eq!(find(&k.blob()).unwrap().0[7], 16);
    k.extra_super_block = Some(vec![("s_dev", DEV_T, 256, 0)]);
    assert_eq!(
        find(&k.blob()),
        Err(KernelBtfError::Ambiguous {
            strukt: "super_block",
            member: "s_dev"
        })
    );
}

#[test]
fn malformed_blobs_are_errors() {
    let good = Kernel::new().blob();
    assert_eq!(find(&good[..1]), Err(KernelBtfError::BadMagic));
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    assert_eq!(find(&swapped), Err(KernelBtfError::BadMagic));
    // Every truncation of the file, and of the type section as the header declares it.
    for len in 0..good.len() {
        assert!(find(&good[..len]).is_err(), "truncated to {len} bytes");
    }
    let types_len = u32_at(&good, 12).unwrap();
    for cut in (1..types_len).step_by(4) {
        let mut short = good.clone();
        short[12..16].copy_from_slice(&(types_len - cut).to_ne_bytes());
        assert!(find(&short).is_err(), "type section short by {cut} bytes");
    }
    let mut b = Builder::new();
    b.raw("", 31, 0, false, 0);
    assert_eq!(
        find(&b.build()),
        Err(KernelBtfError::UnknownKind { kind: 31 })
    );
}

#[test]
fn a_typedef_loop_has_no_shape() {
    let mut b = Builder::new();
    // 1 -> 2 -> 1
    b.raw("a", kind::TYPEDEF, 0, false, 2);
    b.raw("b", kind::TYPEDEF, 0, false, 1);
    let btf_blob = b.build();
    let btf = Btf::parse(&btf_blob).unwrap();
    assert_eq!(btf.shape_of(1), Ok(None));
}

#[test]
fn another_btf_version_is_refused() {
    let mut blob = Kernel::new().blob();
    blob[2] = 2;
    assert_eq!(
        find(&blob),
        Err(KernelBtfError::UnknownVersion { version: 2 })
    );
}

/// Every `off_*` global of the embedded object is one the agent fills: a global added to the C source alone would
/// load with offset 0 and read the wrong field.
#[test]
fn every_offset_global_of_the_object_is_filled() {
    use object::{Object, ObjectSymbol};
    let elf = object::File::parse(super::super::object::EMBEDDED).unwrap();
    let mut in_object: Vec<(String, u64)> = elf
        .symbols()
        .filter_map(|sym| {
            let name = sym.name().ok()?;
            name.starts_with("off_")
                .then(|| (name.to_owned(), sym.size()))
        })
        .collect();
    in_object.sort();
    let mut filled: Vec<(String, u64)> = FIELDS.iter().map(|f| (f.global.to_owned(), 4)).collect();
    filled.sort();
    assert_eq!(in_object, filled);
}

proptest! {
    /// Whatever the file holds, the scan ends with offsets or an error: never a panic, never a hang.
    #[test]
    fn corrupted_blobs_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut blob = Kernel::new().blob();
        for (at, byte) in flips {
            let i = at.index(blob.len());
            blob[i] = byte;
        }
        let _ = find(&blob);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_running_kernel_shows_every_field() {
    let path = super::super::KERNEL_BTF;
    if !std::path::Path::new(path).exists() {
        assert!(std::env::var_os("CI").is_none(), "{path} is missing in CI");
        eprintln!("skipped: {path} is missing (kernel without CONFIG_DEBUG_INFO_BTF)");
        return;
    }
    let file = std::fs::File::open(path).unwrap();
    let read = std::fs::read(path).unwrap();
    let found = find(&read).unwrap();
    // Mapped or read, the same offsets; every pointer field is 8-byte aligned.
    if let Some(mapped) = map(&file) {
        assert_eq!(find(&mapped).unwrap(), found);
    }
    for (f, offset) in FIELDS.iter().zip(found.0) {
        let size = match f.shape {
            Shape::Pointer => 8,
            Shape::Integer(n) => n,
        };
        assert_eq!(offset % size, 0, "{}.{} at {offset}", f.strukt, f.member);
    }
}
