//! Struct field offsets from the running kernel's BTF.
//!
//! The kernel programs read a few fields of `task_struct`, `sock`, `cgroup`
//! and `request` whose offsets change between kernel builds. C programs get
//! them from CO-RE relocations; here the agent looks them up once in
//! `/sys/kernel/btf/vmlinux` and hands them to the programs as read-only
//! globals. aya parses BTF but does not expose member offsets, and the
//! format is small enough to read directly (kernel Documentation/bpf/btf.rst).

use std::collections::HashMap;

use ringwarden_ebpf_common::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;

// BTF kinds that matter here, and the size of each kind's trailing data.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("BTF data is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type kind {0} is unknown to this agent")]
    Kind(u32),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {0} has no field {1}")]
    NoField(String, String),
    #[error("kernel BTF field {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

#[derive(Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield: bool,
}

struct Type {
    kind: u32,
    name: u32,
    /// Referenced type for typedef/const/volatile/...
    ty: u32,
    members: Vec<Member>,
}

/// The parsed types of one BTF blob, enough to find struct members.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(BtfError::Truncated(at))
}

impl Btf {
    /// Parses little-endian BTF (what every kernel the agent runs on has).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != BTF_MAGIC {
            return Err(BtfError::Header);
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_at = hdr_len.checked_add(type_off).ok_or(BtfError::Header)?;
        let strs_at = hdr_len.checked_add(str_off).ok_or(BtfError::Header)?;
        let tb = b
            .get(types_at..types_at + type_len)
            .ok_or(BtfError::Truncated(types_at))?;
        let strings = b
            .get(strs_at..strs_at + str_len)
            .ok_or(BtfError::Truncated(strs_at))?
            .to_vec();
        // Type ids start at 1; id 0 is `void`.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            ty: 0,
            members: vec![],
        }];
        let mut at = 0;
        while at < tb.len() {
            let name = u32_at(tb, at)?;
            let info = u32_at(tb, at + 4)?;
            let size_or_type = u32_at(tb, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let off = u32_at(tb, m + 8)?;
                        members.push(Member {
                            name: u32_at(tb, m)?,
                            ty: u32_at(tb, m + 4)?,
                            bit_offset: if kind_flag { off & 0xff_ffff } else { off },
                            bitfield: kind_flag && off >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
                | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::Kind(other)),
            };
            types.push(Type {
                kind,
                name,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                let name = btf.name(t.name).to_string();
                // The first definition wins; later ones are duplicates.
                btf.structs.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `field` in type `id`, looking into anonymous structs
    /// and unions (where e.g. `sock_common.skc_dport` lives).
    fn find(&self, id: u32, field: &str) -> Option<(u32, Member)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return None;
        }
        for m in &t.members {
            if m.name != 0 {
                if self.name(m.name) == field {
                    return Some((m.bit_offset, *m));
                }
            } else if let Some((off, inner)) = self.find(m.ty, field) {
                return Some((m.bit_offset + off, inner));
            }
        }
        None
    }

    /// Byte offset of a dotted field path (`__sk_common.skc_dport`) in a struct.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut bits = 0;
        for field in path.split('.') {
            let (off, m) = self
                .find(id, field)
                .ok_or_else(|| BtfError::NoField(strukt.into(), path.into()))?;
            if m.bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield(strukt.into(), path.into()));
            }
            bits += off;
            id = m.ty;
        }
        Ok(bits / 8)
    }

    /// Every offset the kernel programs use.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            task_pid: self.offset("task_struct", "pid")?,
            task_tgid: self.offset("task_struct", "tgid")?,
            task_comm: self.offset("task_struct", "comm")?,
            task_cgroups: self.offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.offset("css_set", "dfl_cgrp")?,
            cgroup_kn: self.offset("cgroup", "kn")?,
            cgroup_level: self.offset("cgroup", "level")?,
            cgroup_ancestors: self.offset("cgroup", "ancestors")?,
            kernfs_node_id: self.offset("kernfs_node", "id")?,
            sk_dport: self.offset("sock", "__sk_common.skc_dport")?,
            sk_daddr: self.offset("sock", "__sk_common.skc_daddr")?,
            sk_v6_daddr: self.offset("sock", "__sk_common.skc_v6_daddr")?,
            sk_family: self.offset("sock", "__sk_common.skc_family")?,
            sk_protocol: self.offset("sock", "sk_protocol")?,
            sk_cgroup: self.offset("sock", "sk_cgrp_data.cgroup")?,
            rq_q: self.offset("request", "q")?,
            rq_cmd_flags: self.offset("request", "cmd_flags")?,
            rq_data_len: self.offset("request", "__data_len")?,
            q_disk: self.offset("request_queue", "disk")?,
            disk_major: self.offset("gendisk", "major")?,
            disk_first_minor: self.offset("gendisk", "first_minor")?,
            _pad: 0,
        })
    }
}

/// Reads the running kernel's offsets.
pub fn running_kernel_offsets() -> Result<KernelOffsets, String> {
    let path = crate::probes::KERNEL_BTF;
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Btf::parse(&data)
        .and_then(|b| b.kernel_offsets())
        .map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { long x; union { struct inner in; int y; }; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0long\0inner\0a\0b\0outer\0x\0in\0y\0";
        let off = |s: &str| -> u32 {
            let pos = strings
                .windows(s.len() + 2)
                .position(|w| w[0] == 0 && &w[1..=s.len()] == s.as_bytes() && w[s.len() + 1] == 0)
                .unwrap();
            pos as u32 + 1
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        // 1: int (4 bytes)
        push(&[off("int"), KIND_INT << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&[off("long"), KIND_INT << 24, 8, 64]);
        // 3: struct inner { int a @0; int b @32 }
        push(&[off("inner"), KIND_STRUCT << 24 | 2, 8]);
        push(&[off("a"), 1, 0, off("b"), 1, 32]);
        // 4: anonymous union { struct inner in; int y; }
        push(&[0, KIND_UNION << 24 | 2, 8]);
        push(&[off("in"), 3, 0, off("y"), 1, 0]);
        // 5: struct outer { long x @0; union @64 }
        push(&[off("outer"), KIND_STRUCT << 24 | 2, 16]);
        push(&[off("x"), 2, 0, 0, 4, 64]);
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn offsets_through_anonymous_unions_and_nested_structs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", "x"), Ok(0));
        assert_eq!(btf.offset("outer", "y"), Ok(8));
        assert_eq!(btf.offset("outer", "in.b"), Ok(12));
        assert_eq!(btf.offset("inner", "b"), Ok(4));
        assert_eq!(
            btf.offset("outer", "z"),
            Err(BtfError::NoField("outer".into(), "z".into()))
        );
        assert_eq!(
            btf.offset("nope", "x"),
            Err(BtfError::NoStruct("nope".into()))
        );
    }

    #[test]
    fn truncated_or_foreign_data_is_an_error_not_a_panic() {
        let b = blob();
        for n in 0..b.len() {
            let _ = Btf::parse(&b[..n]);
        }
        assert_eq!(
            Btf::parse(b"hello, world, not btf at all").err(),
            Some(BtfError::Header)
        );
    }

    /// The running kernel's offsets agree with what `bpftool` would print
    /// for fields whose place is fixed by ABI.
    #[test]
    fn the_running_kernel_has_every_offset() {
        let o = running_kernel_offsets().expect("kernel BTF at /sys/kernel/btf/vmlinux");
        // `sock` starts with `sock_common`, whose address pair comes first.
        assert_eq!(o.sk_daddr, 0, "skc_daddr leads sock_common");
        assert!(o.sk_dport > 0 && o.sk_dport < 64);
        assert!(
            o.task_tgid == o.task_pid + 4,
            "tgid follows pid in task_struct"
        );
        assert!(o.cgroup_ancestors > o.cgroup_level);
        assert_eq!(
            o.task_comm % 8,
            0,
            "the syscalls probe loads comm as two words"
        );
    }
}
