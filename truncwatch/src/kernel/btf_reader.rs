//! Just enough of the BTF format (`include/uapi/linux/btf.h`) to find struct member offsets.
//!
//! Why not a full parser: parsing all of the kernel's BTF into objects (btf-rs) took 54 MB at
//! start-up, the agent's peak memory. This keeps the raw bytes and an index of where each type
//! starts: a few MB.
use anyhow::{Result, bail};

const MAGIC: u16 = 0xeb9f;
const HEADER: usize = 24;

// BTF kinds.
const INT: u32 = 1;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

pub struct BtfReader {
    data: Vec<u8>,
    /// Byte offset (in `data`) of each type's `struct btf_type`; type id `i` is `types[i - 1]`.
    types: Vec<u32>,
    strings: usize,
    strings_len: usize,
}

/// One `struct btf_type`.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Offset of what follows the 12-byte header (members, for structs).
    body: usize,
}

/// A struct or union member: its name, type id, offset in bits, and for a bitfield its width
/// in bits (0 for a whole member).
pub struct Member<'a> {
    pub name: &'a str,
    pub type_id: u32,
    pub bit_offset: u32,
    pub bitfield_size: u32,
}

impl BtfReader {
    pub fn parse(data: Vec<u8>) -> Result<BtfReader> {
        if data.len() < HEADER || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let u = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
        let hdr_len = u(4);
        let (type_off, type_len, str_off, str_len) = (u(8), u(12), u(16), u(20));
        let (types_start, strings) = (hdr_len + type_off, hdr_len + str_off);
        if types_start + type_len > data.len() || strings + str_len > data.len() {
            bail!("BTF sections out of bounds");
        }
        let mut r = BtfReader {
            data,
            types: Vec::new(),
            strings,
            strings_len: str_len,
        };
        let mut at = types_start;
        while at < types_start + type_len {
            r.types.push(at as u32);
            let t = r.type_at(at)?;
            at = t.body + r.body_len(&t)?;
        }
        Ok(r)
    }

    fn u32_at(&self, o: usize) -> Result<u32> {
        match self.data.get(o..o + 4) {
            Some(b) => Ok(u32::from_le_bytes(b.try_into().unwrap())),
            None => bail!("BTF truncated at {o}"),
        }
    }

    fn type_at(&self, at: usize) -> Result<Type> {
        let info = self.u32_at(at + 4)?;
        Ok(Type {
            name_off: self.u32_at(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8)?,
            body: at + 12,
        })
    }

    /// Bytes that follow the common header, by kind.
    fn body_len(&self, t: &Type) -> Result<usize> {
        let v = t.vlen as usize;
        Ok(match t.kind {
            INT | VAR | DECL_TAG => 4,
            ARRAY => 12,
            STRUCT | UNION | DATASEC | ENUM64 => 12 * v,
            ENUM | FUNC_PROTO => 8 * v,
            0..=19 => 0,
            k => bail!("unknown BTF kind {k}"),
        })
    }

    fn ty(&self, id: u32) -> Result<Type> {
        match id.checked_sub(1).and_then(|i| self.types.get(i as usize)) {
            Some(&at) => self.type_at(at as usize),
            None => bail!("BTF type id {id} out of range"),
        }
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        let end = self.data[start..self.strings + self.strings_len]
            .iter()
            .position(|&b| b == 0)
            .map_or(start, |n| start + n);
        std::str::from_utf8(&self.data[start..end]).unwrap_or("")
    }

    /// Whether a typedef named `name` exists (tracepoints that `tp_btf` programs can attach to
    /// appear as `btf_trace_<name>` typedefs).
    pub fn has_typedef(&self, name: &str) -> bool {
        self.has(TYPEDEF, name)
    }

    /// Whether a function named `name` exists (what fentry and kprobe programs attach to).
    pub fn has_func(&self, name: &str) -> bool {
        self.has(FUNC, name)
    }

    fn has(&self, kind: u32, name: &str) -> bool {
        (1..=self.types.len() as u32).any(|id| {
            self.ty(id)
                .is_ok_and(|t| t.kind == kind && self.name(t.name_off) == name)
        })
    }

    /// The id of the struct named `name`.
    pub fn struct_id(&self, name: &str) -> Result<u32> {
        for id in 1..=self.types.len() as u32 {
            let t = self.ty(id)?;
            if t.kind == STRUCT && self.name(t.name_off) == name {
                return Ok(id);
            }
        }
        bail!("kernel BTF: no struct {name}")
    }

    /// Members of a struct or union, or None if `id` (after typedefs and qualifiers) is
    /// neither.
    pub fn members(&self, id: u32) -> Result<Option<Vec<Member<'_>>>> {
        let t = self.ty(self.resolve(id)?)?;
        if t.kind != STRUCT && t.kind != UNION {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(t.vlen as usize);
        for i in 0..t.vlen as usize {
            let m = t.body + 12 * i;
            let offset = self.u32_at(m + 8)?;
            // With kind_flag, the top 8 bits are the bitfield's width (BTF, "kind_flag").
            let (bit_offset, bitfield_size) = if t.kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            out.push(Member {
                name: self.name(self.u32_at(m)?),
                type_id: self.u32_at(m + 4)?,
                bit_offset,
                bitfield_size,
            });
        }
        Ok(Some(out))
    }

    /// Skip typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long at {id}")
    }
}
