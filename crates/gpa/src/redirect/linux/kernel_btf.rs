//! Where the running kernel keeps the eight fields the record reads (spec §7.3: the process start time, the
//! executable's inode and device), found in its BTF and handed to the object as `.rodata` constants before the
//! load.
//!
//! This replaces CO-RE relocation of those reads. aya resolves each relocated type by scanning every type of the
//! kernel BTF (~127,000 here) with string compares, once per type: ~13 ms of a cold start's ~43 ms of CPU here.
//! One pass over the type section here finds all five structs (docs/DECISIONS.md, "Kernel field offsets from the
//! agent"). This module must never guess: a field that is missing, a bitfield, of another kind or size than the
//! program reads, or at two different offsets in two definitions of its struct stops the load, with the field
//! named.
use std::sync::OnceLock;

use crate::redirect::RedirectError;

/// One kernel field a program reads, and the object's global that receives its byte offset.
#[derive(Debug, Clone, Copy)]
struct Field {
    global: &'static str,
    strukt: &'static str,
    member: &'static str,
    shape: Shape,
}

/// What the program reads a field as, once typedefs and qualifiers are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// A pointer (8 bytes on the 64-bit kernels the agent runs on).
    Pointer,
    /// An integer or enum of this many bytes.
    Integer(u32),
}

const fn field(
    global: &'static str,
    strukt: &'static str,
    member: &'static str,
    shape: Shape,
) -> Field {
    Field {
        global,
        strukt,
        member,
        shape,
    }
}

/// The fields, as `redirect.bpf.c` declares them (`off_*`).
const FIELDS: [Field; 8] = [
    field(
        "off_task_group_leader",
        "task_struct",
        "group_leader",
        Shape::Pointer,
    ),
    field("off_task_mm", "task_struct", "mm", Shape::Pointer),
    field(
        "off_task_start_boottime",
        "task_struct",
        "start_boottime",
        Shape::Integer(8),
    ),
    field("off_mm_exe_file", "mm_struct", "exe_file", Shape::Pointer),
    field("off_file_f_inode", "file", "f_inode", Shape::Pointer),
    field("off_inode_i_ino", "inode", "i_ino", Shape::Integer(8)),
    field("off_inode_i_sb", "inode", "i_sb", Shape::Pointer),
    field("off_sb_s_dev", "super_block", "s_dev", Shape::Integer(4)),
];

/// Why the kernel BTF does not give a field's offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum KernelBtfError {
    #[error("not BTF in this machine's byte order")]
    BadMagic,
    #[error("malformed BTF at byte {at}")]
    Malformed { at: usize },
    #[error("BTF version {version} is unknown to this agent")]
    UnknownVersion { version: u8 },
    #[error("BTF type kind {kind} is unknown to this agent")]
    UnknownKind { kind: u32 },
    #[error("struct {strukt} is not in the kernel BTF")]
    NoStruct { strukt: &'static str },
    #[error("{strukt}.{member} is not in the kernel BTF")]
    NoField {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("{strukt}.{member} is a bitfield or not byte-aligned")]
    NotByteAligned {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("{strukt}.{member} is {found:?}; the program reads {expected:?}")]
    WrongShape {
        strukt: &'static str,
        member: &'static str,
        found: Option<Shape>,
        expected: Shape,
    },
    #[error("{strukt}.{member} is at different offsets in two definitions of {strukt}")]
    Ambiguous {
        strukt: &'static str,
        member: &'static str,
    },
}

/// The byte offsets of [`FIELDS`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Offsets([u32; FIELDS.len()]);

impl Offsets {
    /// `(global, offset)` pairs for `EbpfLoader::set_global`.
    pub(super) fn globals(&'static self) -> impl Iterator<Item = (&'static str, &'static u32)> {
        FIELDS.iter().map(|f| f.global).zip(self.0.iter())
    }
}

/// The offsets in the running kernel: found in `path` once per process (a kernel's layout cannot change under
/// it), then remembered.
pub(super) fn offsets(path: &str) -> Result<&'static Offsets, RedirectError> {
    static FOUND: OnceLock<Offsets> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found);
    }
    let unreadable = |e: std::io::Error| RedirectError::KernelUnsupported {
        missing: crate::redirect::KernelFeature::KernelBtf,
        source: Some(e.into()),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let found = match map(&file) {
        Some(mapped) => find(&mapped),
        // Kernels before 6.16 cannot map it: read it, 4 KiB per call.
        None => find(&std::fs::read(path).map_err(unreadable)?),
    }
    .map_err(|source| RedirectError::KernelFields {
        source: source.into(),
    })?;
    Ok(FOUND.get_or_init(|| found))
}

/// The kernel BTF mapped read-only, or `None` where the kernel cannot map it. Mapping costs ~0.4 ms here;
/// reading the same 5.5 MB costs 2–7 ms, in 1,350 calls and as many page faults.
fn map(file: &std::fs::File) -> Option<memmap2::Mmap> {
    // SAFETY: /sys/kernel/btf/vmlinux is the running kernel's own BTF, read-only and never changed or truncated
    // while the kernel runs, so the mapped bytes cannot change under the shared slice `find` reads.
    unsafe {
        memmap2::MmapOptions::new()
            .populate()
            .map_copy_read_only(file)
    }
    .ok()
}

/// BTF's magic number, read in native byte order.
const MAGIC: u16 = 0xeb9f;
/// `struct btf_header`: magic, version, flags, hdr_len, then type_off, type_len, str_off, str_len.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size or type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;
/// The BTF format version this parser reads.
const VERSION: u8 = 1;
/// Anonymous structs and unions nested deeper than this are not searched (the kernel nests two or three).
const MAX_ANON_DEPTH: u32 = 8;
/// Members looked at while searching one field, anonymous ones included: malformed BTF whose anonymous members
/// refer back to their struct ends here instead of in an exponential search (a real search looks at hundreds).
const MAX_MEMBERS_SEARCHED: u32 = 100_000;
/// Typedefs and qualifiers followed to a sized type before giving up (a loop in malformed BTF ends here).
const MAX_MODIFIERS: u32 = 16;
/// Bytes per type in a kernel's type section, roughly (5.5 MB for 127,000 types): sizes the start table once.
const AVERAGE_TYPE_LEN: usize = 40;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const FWD: u32 = 7;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC: u32 = 12;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const FLOAT: u32 = 16;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

/// The offsets of [`FIELDS`] in the BTF blob `data`.
fn find(data: &[u8]) -> Result<Offsets, KernelBtfError> {
    let btf = Btf::parse(data)?;
    let mut offsets = [0; FIELDS.len()];
    for (slot, f) in offsets.iter_mut().zip(&FIELDS) {
        *slot = btf.field_offset(f)?;
    }
    Ok(Offsets(offsets))
}

/// One parsed `btf_type`.
#[derive(Debug, Clone, Copy)]
struct Type {
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Byte position of the type in the type section.
    at: usize,
}

/// A struct member found by name.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// From the start of the outermost struct searched.
    bits: u32,
    type_id: u32,
    bitfield: bool,
}

/// The type and string sections of one BTF blob, with where each type id starts.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// `starts[id]` is where type `id` begins; id 0 is `void` and has no entry of its own.
    starts: Vec<u32>,
    /// Ids of the structs named in [`FIELDS`], per struct name.
    structs: Vec<(&'static str, Vec<u32>)>,
}

/// Bytes that follow a `btf_type` of this kind with `vlen` entries.
fn trailer_len(kind: u32, vlen: usize) -> Result<usize, KernelBtfError> {
    let per_entry = match kind {
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => return Ok(0),
        kind::INT | kind::VAR | kind::DECL_TAG => return Ok(4),
        kind::ARRAY => return Ok(12),
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12,
        kind::ENUM | kind::FUNC_PROTO => 8,
        other => return Err(KernelBtfError::UnknownKind { kind: other }),
    };
    Ok(per_entry * vlen)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, KernelBtfError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(KernelBtfError::Malformed { at })
}

/// A position or count in the type section as BTF stores it (the section's length is a `u32`).
fn index_u32(n: usize) -> Result<u32, KernelBtfError> {
    u32::try_from(n).map_err(|_| KernelBtfError::Malformed { at: n })
}

fn section(data: &[u8], off: u32, len: u32, header: usize) -> Result<&[u8], KernelBtfError> {
    let start = header + off as usize;
    data.get(start..start + len as usize)
        .ok_or(KernelBtfError::Malformed { at: start })
}

impl<'a> Btf<'a> {
    /// One pass over the type section: where every type starts, and which are the structs we look for.
    fn parse(data: &'a [u8]) -> Result<Btf<'a>, KernelBtfError> {
        let magic = data
            .get(..2)
            .and_then(|m| m.try_into().ok())
            .map(u16::from_ne_bytes);
        if magic != Some(MAGIC) {
            return Err(KernelBtfError::BadMagic);
        }
        let version = data.get(2).copied().unwrap_or_default();
        if version != VERSION {
            return Err(KernelBtfError::UnknownVersion { version });
        }
        let header = u32_at(data, 4)? as usize;
        if header < HEADER_LEN {
            return Err(KernelBtfError::Malformed { at: 4 });
        }
        let types = section(data, u32_at(data, 8)?, u32_at(data, 12)?, header)?;
        let strings = section(data, u32_at(data, 16)?, u32_at(data, 20)?, header)?;
        let mut btf = Btf {
            types,
            strings,
            starts: vec![0],
            structs: Vec::new(),
        };
        let mut wanted: Vec<&'static str> = FIELDS.iter().map(|f| f.strukt).collect();
        wanted.sort_unstable();
        wanted.dedup();
        btf.structs = wanted.iter().map(|&s| (s, Vec::new())).collect();
        // ~127,000 types in a distribution kernel: only `info` is read for most of them.
        btf.starts.reserve(types.len() / AVERAGE_TYPE_LEN);
        let mut at = 0;
        while at < types.len() {
            let info = u32_at(types, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            if kind == kind::STRUCT && vlen > 0 {
                let name = btf.name(u32_at(types, at)?)?;
                if let Some((_, ids)) = btf.structs.iter_mut().find(|(s, _)| s.as_bytes() == name) {
                    ids.push(index_u32(btf.starts.len())?);
                }
            }
            btf.starts.push(index_u32(at)?);
            at += TYPE_LEN + trailer_len(kind, vlen)?;
        }
        if at != types.len() {
            return Err(KernelBtfError::Malformed { at });
        }
        Ok(btf)
    }

    fn type_at(&self, at: usize) -> Result<Type, KernelBtfError> {
        let info = u32_at(self.types, at + 4)?;
        Ok(Type {
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(self.types, at + 8)?,
            at,
        })
    }

    fn type_by_id(&self, id: u32) -> Result<Type, KernelBtfError> {
        let at = self
            .starts
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or(KernelBtfError::Malformed { at: id as usize })?;
        self.type_at(*at as usize)
    }

    /// The NUL-terminated string at `off` of the string section.
    fn name(&self, off: u32) -> Result<&'a [u8], KernelBtfError> {
        let tail = self
            .strings
            .get(off as usize..)
            .ok_or(KernelBtfError::Malformed { at: off as usize })?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(KernelBtfError::Malformed { at: off as usize })?;
        tail.get(..end)
            .ok_or(KernelBtfError::Malformed { at: off as usize })
    }

    /// The byte offset of `f` in its struct: every definition of the struct that has the member must agree, and
    /// at least one must have it (a definition without it is another struct of the same name).
    fn field_offset(&self, f: &Field) -> Result<u32, KernelBtfError> {
        let ids = self
            .structs
            .iter()
            .find(|(s, _)| *s == f.strukt)
            .map(|(_, ids)| ids.as_slice())
            .unwrap_or_default();
        if ids.is_empty() {
            return Err(KernelBtfError::NoStruct { strukt: f.strukt });
        }
        let mut found = None;
        for &id in ids {
            let mut budget = MAX_MEMBERS_SEARCHED;
            let Some(member) = self.member(id, f.member.as_bytes(), 0, &mut budget)? else {
                continue;
            };
            if member.bitfield || member.bits % 8 != 0 {
                return Err(KernelBtfError::NotByteAligned {
                    strukt: f.strukt,
                    member: f.member,
                });
            }
            let shape = self.shape_of(member.type_id)?;
            if shape != Some(f.shape) {
                return Err(KernelBtfError::WrongShape {
                    strukt: f.strukt,
                    member: f.member,
                    found: shape,
                    expected: f.shape,
                });
            }
            let offset = member.bits / 8;
            if found.is_some_and(|o| o != offset) {
                return Err(KernelBtfError::Ambiguous {
                    strukt: f.strukt,
                    member: f.member,
                });
            }
            found = Some(offset);
        }
        found.ok_or(KernelBtfError::NoField {
            strukt: f.strukt,
            member: f.member,
        })
    }

    /// The member `name` of struct or union `id`, looking into anonymous members.
    fn member(
        &self,
        id: u32,
        name: &[u8],
        depth: u32,
        budget: &mut u32,
    ) -> Result<Option<Member>, KernelBtfError> {
        let ty = self.type_by_id(self.skip_modifiers(id)?)?;
        if ty.kind != kind::STRUCT && ty.kind != kind::UNION {
            return Ok(None);
        }
        for i in 0..ty.vlen {
            let at = ty.at + TYPE_LEN + i * MEMBER_LEN;
            *budget = budget
                .checked_sub(1)
                .ok_or(KernelBtfError::Malformed { at })?;
            let member_name = u32_at(self.types, at)?;
            let member_type = u32_at(self.types, at + 4)?;
            let raw_offset = u32_at(self.types, at + 8)?;
            // With kind_flag, the top 8 bits are a bitfield's size and the low 24 its bit offset.
            let (bits, bitfield) = if ty.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
            } else {
                (raw_offset, false)
            };
            if member_name == 0 {
                if depth < MAX_ANON_DEPTH
                    && let Some(inner) = self.member(member_type, name, depth + 1, budget)?
                {
                    let bits = bits
                        .checked_add(inner.bits)
                        .ok_or(KernelBtfError::Malformed { at })?;
                    return Ok(Some(Member { bits, ..inner }));
                }
            } else if self.name(member_name)? == name {
                return Ok(Some(Member {
                    bits,
                    type_id: member_type,
                    bitfield,
                }));
            }
        }
        Ok(None)
    }

    /// `id` once typedefs and qualifiers are followed; a loop in malformed BTF ends as `void` (id 0).
    fn skip_modifiers(&self, mut id: u32) -> Result<u32, KernelBtfError> {
        for _ in 0..MAX_MODIFIERS {
            if id == 0 {
                return Ok(0);
            }
            let ty = self.type_by_id(id)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Ok(0)
    }

    /// What type `id` is read as; `None` for anything but a pointer, an integer or an enum (and for `void`).
    fn shape_of(&self, id: u32) -> Result<Option<Shape>, KernelBtfError> {
        let id = self.skip_modifiers(id)?;
        if id == 0 {
            return Ok(None);
        }
        let ty = self.type_by_id(id)?;
        Ok(match ty.kind {
            kind::PTR => Some(Shape::Pointer),
            kind::INT | kind::ENUM | kind::ENUM64 => Some(Shape::Integer(ty.size_or_type)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
