//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets and enum
//! values, so programs get the running kernel's layout at load time instead of hard-coded
//! offsets.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no {kind} named {name}")]
    NotFound { kind: &'static str, name: String },
    #[error("{ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("{ty}.{member} is a bitfield")]
    Bitfield { ty: String, member: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type's header and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the kind-specific data in `types`.
    data: usize,
}

impl TypeEntry {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// A member found by [`Btf::member`]: byte offset from the start of the outer struct, and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Index = type id (0 is void and has no entry of its own).
    entries: Vec<TypeEntry>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::parse_with_base(bytes, None)
    }

    /// A kernel module's BTF (/sys/kernel/btf/<module>), which is split BTF on top of vmlinux:
    /// its type ids and string offsets continue where the base's end. The result holds both.
    pub fn module(name: &str, base: &Btf) -> Result<Self, BtfError> {
        let path = Path::new("/sys/kernel/btf").join(name);
        let bytes = std::fs::read(&path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_with_base(&bytes, Some(base))
    }

    fn parse_with_base(bytes: &[u8], base: Option<&Btf>) -> Result<Self, BtfError> {
        if bytes.len() < 24 || bytes[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = u32_at(bytes, 4)? as usize;
        let type_off = u32_at(bytes, 8)? as usize;
        let type_len = u32_at(bytes, 12)? as usize;
        let str_off = u32_at(bytes, 16)? as usize;
        let str_len = u32_at(bytes, 20)? as usize;
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| bytes.get(start..end))
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let (mut types, mut strings, mut entries) = match base {
            Some(b) => (b.types.clone(), b.strings.clone(), b.entries.clone()),
            None => (
                Vec::new(),
                Vec::new(),
                vec![TypeEntry {
                    name_off: 0,
                    info: 0,
                    size_or_type: 0,
                    data: 0,
                }],
            ),
        };
        let mut pos = types.len();
        types.extend_from_slice(section(type_off, type_len)?);
        strings.extend_from_slice(section(str_off, str_len)?);

        while pos < types.len() {
            let name_off = u32_at(&types, pos)?;
            let info = u32_at(&types, pos + 4)?;
            let size_or_type = u32_at(&types, pos + 8)?;
            let entry = TypeEntry {
                name_off,
                info,
                size_or_type,
                data: pos + 12,
            };
            let extra = match entry.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => 12 * entry.vlen(),
                KIND_ENUM => 8 * entry.vlen(),
                KIND_FUNC_PROTO => 8 * entry.vlen(),
                KIND_DATASEC => 12 * entry.vlen(),
                KIND_ENUM64 => 12 * entry.vlen(),
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            pos = entry.data + extra;
            entries.push(entry);
        }
        Ok(Self {
            types,
            strings,
            entries,
        })
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn entry(&self, id: u32) -> Result<&TypeEntry, BtfError> {
        self.entries
            .get(id as usize)
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    fn find(&self, name: &str, kinds: &[u32]) -> Option<u32> {
        self.entries
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, e)| kinds.contains(&e.kind()) && self.name(e.name_off) == name)
            .map(|(id, _)| id as u32)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..32 {
            let e = self.entry(id)?;
            match e.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = e.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let id = self.resolve(id)?;
        let e = self.entry(id)?;
        Ok(match e.kind() {
            KIND_PTR => 8,
            KIND_ARRAY => {
                let elem = u32_at(&self.types, e.data)?;
                let n = u32_at(&self.types, e.data + 8)?;
                self.size_of(elem)?.saturating_mul(n)
            }
            _ => e.size_or_type,
        })
    }

    /// Looks for member `name` in struct/union `id`, descending into anonymous members.
    /// Returns (bit offset, type id).
    fn member_in(&self, id: u32, name: &str, depth: u32) -> Result<Option<(u32, u32)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        let e = *self.entry(self.resolve(id)?)?;
        if e.kind() != KIND_STRUCT && e.kind() != KIND_UNION {
            return Ok(None);
        }
        for i in 0..e.vlen() {
            let base = e.data + 12 * i;
            let m_name = u32_at(&self.types, base)?;
            let m_type = u32_at(&self.types, base + 4)?;
            let raw = u32_at(&self.types, base + 8)?;
            let (bit_off, bitfield) = if e.kind_flag() {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let m = self.name(m_name);
            if m == name {
                if bitfield {
                    return Err(BtfError::Bitfield {
                        ty: self.name(e.name_off).to_owned(),
                        member: name.to_owned(),
                    });
                }
                return Ok(Some((bit_off, m_type)));
            }
            if m.is_empty()
                && let Some((inner, ty)) = self.member_in(m_type, name, depth + 1)?
            {
                return Ok(Some((bit_off + inner, ty)));
            }
        }
        Ok(None)
    }

    /// Offset and size of `path` (members separated by dots, e.g. `nd_net.net`) within
    /// `struct name`.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = self
            .find(struct_name, &[KIND_STRUCT, KIND_UNION])
            .ok_or_else(|| BtfError::NotFound {
                kind: "struct",
                name: struct_name.to_owned(),
            })?;
        let mut bits = 0u32;
        let mut ty_name = struct_name.to_owned();
        for part in path.split('.') {
            let (off, member_ty) =
                self.member_in(id, part, 0)?
                    .ok_or_else(|| BtfError::NoMember {
                        ty: ty_name.clone(),
                        member: part.to_owned(),
                    })?;
            bits += off;
            id = member_ty;
            ty_name = format!("{ty_name}.{part}");
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                ty: struct_name.to_owned(),
                member: path.to_owned(),
            });
        }
        Ok(Member {
            offset: bits / 8,
            size: self.size_of(id)?,
        })
    }

    /// Values of `enum name` as (name, value) pairs.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = self
            .find(name, &[KIND_ENUM, KIND_ENUM64])
            .ok_or_else(|| BtfError::NotFound {
                kind: "enum",
                name: name.to_owned(),
            })?;
        let e = self.entry(id)?;
        let mut out = Vec::with_capacity(e.vlen());
        for i in 0..e.vlen() {
            let (name_off, value) = if e.kind() == KIND_ENUM {
                let base = e.data + 8 * i;
                (
                    u32_at(&self.types, base)?,
                    u32_at(&self.types, base + 4)? as i32 as i64,
                )
            } else {
                let base = e.data + 12 * i;
                let lo = u32_at(&self.types, base + 4)? as u64;
                let hi = u32_at(&self.types, base + 8)? as u64;
                (u32_at(&self.types, base)?, (hi << 32 | lo) as i64)
            };
            out.push((self.name(name_off).to_owned(), value));
        }
        Ok(out)
    }

    /// Whether the kernel has a function of this name (a candidate for kprobes/fentry).
    pub fn has_func(&self, name: &str) -> bool {
        self.find(name, &[KIND_FUNC]).is_some()
    }

    /// Parameter names of a function, in order (signatures change between kernel versions).
    pub fn func_params(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let id = self
            .find(name, &[KIND_FUNC])
            .ok_or_else(|| BtfError::NotFound {
                kind: "function",
                name: name.to_owned(),
            })?;
        let proto = *self.entry(self.entry(id)?.size_or_type)?;
        if proto.kind() != KIND_FUNC_PROTO {
            return Err(BtfError::Malformed("function without prototype"));
        }
        (0..proto.vlen())
            .map(|i| {
                Ok(self
                    .name(u32_at(&self.types, proto.data + 8 * i)?)
                    .to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmlinux() -> Option<Btf> {
        Path::new(VMLINUX)
            .exists()
            .then(|| Btf::from_sys().unwrap())
    }

    #[test]
    fn reads_sk_buff_and_net_device_layout() {
        let btf = vmlinux().expect("this kernel exposes BTF at /sys/kernel/btf/vmlinux");
        let head = btf.member("sk_buff", "head").unwrap();
        assert_eq!(head.size, 8);
        let nh = btf.member("sk_buff", "network_header").unwrap();
        assert_eq!(nh.size, 2);
        // `dev` sits inside anonymous unions/structs at the start of sk_buff.
        let dev = btf.member("sk_buff", "dev").unwrap();
        assert_eq!(dev.size, 8);
        assert!(dev.offset < head.offset);
        assert_eq!(btf.member("net_device", "ifindex").unwrap().size, 4);
        assert_eq!(btf.member("net_device", "nd_net.net").unwrap().size, 8);
        assert_eq!(btf.member("net", "ns.inum").unwrap().size, 4);
        assert!(matches!(
            btf.member("sk_buff", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
    }

    #[test]
    fn reads_drop_reason_enum() {
        let btf = vmlinux().expect("BTF present");
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(
            reasons
                .iter()
                .any(|(n, v)| n == "SKB_DROP_REASON_NETFILTER_DROP" && *v > 0)
        );
        assert!(btf.has_func("fib_table_lookup"));
        assert_eq!(
            btf.func_params("nf_hook_slow").unwrap(),
            ["skb", "state", "e", "s"]
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut hdr = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 100, 0, 0] {
            hdr.extend_from_slice(&v.to_le_bytes());
        }
        assert!(Btf::parse(&hdr).is_err());
    }
}
