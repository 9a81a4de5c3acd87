//! Field offsets of the running kernel, from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read fields at offsets handed to them at
//! load time; the agent decodes addresses from a raw copy of `struct sock` the same way.
use anyhow::{Context, Result, bail};
use btf_rs::{Btf, BtfType, Type};
use truncwatch_common::{Offsets, REGS_DX, REGS_ORIG_AX, REGS_SI, SOCK_PREFIX};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the addresses sit in the copy of `struct sock` the kernel sends with each open event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    pub daddr: usize,
    pub rcv_saddr: usize,
    pub dport: usize,
    pub v6_daddr: usize,
    pub v6_rcv_saddr: usize,
}

pub struct KernelLayout {
    pub offsets: Offsets,
    pub sock: SockLayout,
}

pub fn load() -> Result<KernelLayout> {
    let btf = Btf::from_file(VMLINUX_BTF)
        .with_context(|| format!("reading kernel BTF from {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF)"))?;
    let f = |ty: &str, path: &str| field(&btf, ty, path);
    let offsets = Offsets {
        skc_family: f("sock", "__sk_common.skc_family")?,
        sk_type: f("sock", "sk_type")?,
        sk_protocol: f("sock", "sk_protocol")?,
        unix_peer: f("unix_sock", "peer")?,
        unix_addr: f("unix_sock", "addr")?,
        unix_address_len: f("unix_address", "len")?,
        unix_address_name: f("unix_address", "name")?,
        tcp_write_seq: f("tcp_sock", "write_seq")?,
        tcp_snd_una: f("tcp_sock", "snd_una")?,
        tcp_rcv_nxt: f("tcp_sock", "rcv_nxt")?,
        tcp_copied_seq: f("tcp_sock", "copied_seq")?,
        inet_sport: f("inet_sock", "inet_sport")?,
        // Evidence only: optional, 0 when this kernel's layout does not allow reading it.
        tcp_snd_wnd: f("tcp_sock", "snd_wnd").unwrap_or(0),
        tcp_chrono_type: f("tcp_sock", "chrono_type").unwrap_or(0),
        tcp_chrono_start: f("tcp_sock", "chrono_start").unwrap_or(0),
        tcp_chrono_stat: f("tcp_sock", "chrono_stat").unwrap_or(0),
        ready: 1,
    };
    // The programs load these at fixed offsets (the x86_64 ptrace ABI): make sure.
    for (name, want) in [("orig_ax", REGS_ORIG_AX), ("si", REGS_SI), ("dx", REGS_DX)] {
        let got = f("pt_regs", name)? as usize;
        if got != want {
            bail!("kernel BTF: pt_regs.{name} at {got}, not {want}: unsupported architecture or kernel");
        }
    }
    let s = |path: &str| -> Result<usize> {
        let off = f("sock", &format!("__sk_common.{path}"))? as usize;
        if off + 16 > SOCK_PREFIX {
            bail!("sock_common.{path} at offset {off} lies beyond the {SOCK_PREFIX} bytes copied");
        }
        Ok(off)
    };
    let sock = SockLayout {
        daddr: s("skc_daddr")?,
        rcv_saddr: s("skc_rcv_saddr")?,
        dport: s("skc_dport")?,
        v6_daddr: s("skc_v6_daddr")?,
        v6_rcv_saddr: s("skc_v6_rcv_saddr")?,
    };
    Ok(KernelLayout { offsets, sock })
}

/// Byte offset of `path` (dot-separated members) in struct `ty`, looking through anonymous
/// unions and structs the way C does.
fn field(btf: &Btf, ty: &str, path: &str) -> Result<u32> {
    let mut st = named_struct(btf, ty)?;
    let mut total = 0u32;
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let (bits, member_ty) = find_member(btf, &st, name)?
            .with_context(|| format!("kernel BTF: struct {ty} has no member {path}"))?;
        if bits % 8 != 0 {
            bail!("kernel BTF: {ty}.{path} is a bitfield; this kernel is not supported yet");
        }
        total += bits / 8;
        if parts.peek().is_some() {
            st = match resolve(btf, member_ty)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => bail!("kernel BTF: {ty}.{name} is not a struct"),
            };
        }
    }
    Ok(total)
}

fn named_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    for t in btf.resolve_types_by_name(name).with_context(|| format!("kernel BTF: no type {name}"))? {
        if let Type::Struct(s) = t {
            return Ok(s);
        }
    }
    bail!("kernel BTF: {name} is not a struct")
}

/// Skip typedefs and qualifiers.
fn resolve(btf: &Btf, id: u32) -> Result<Type> {
    let mut t = btf.resolve_type_by_id(id)?;
    loop {
        t = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x)?,
            Type::Const(x) => btf.resolve_chained_type(x)?,
            Type::Volatile(x) => btf.resolve_chained_type(x)?,
            _ => return Ok(t),
        };
    }
}

/// (bit offset, type id) of member `name`, searching anonymous members recursively.
fn find_member(btf: &Btf, st: &btf_rs::Struct, name: &str) -> Result<Option<(u32, u32)>> {
    for m in &st.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let ty = m.get_type_id()?;
        if mname == name {
            return Ok(Some((m.bit_offset(), ty)));
        }
        if mname.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = resolve(btf, ty)?
                && let Some((off, t)) = find_member(btf, &inner, name)? {
                    return Ok(Some((m.bit_offset() + off, t)));
                }
    }
    Ok(None)
}
