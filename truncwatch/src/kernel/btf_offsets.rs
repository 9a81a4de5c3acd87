//! Field offsets of the running kernel, from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read fields at offsets handed to them at
//! load time; the agent decodes addresses from a raw copy of `struct sock` the same way.
use crate::kernel::btf_reader::BtfReader;
use anyhow::{Context, Result, bail};
use truncwatch_common::{Offsets, REGS_BTF, SOCK_PREFIX};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the addresses sit in the copy of `struct sock` the kernel sends with each open event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    pub daddr: usize,
    pub rcv_saddr: usize,
    pub dport: usize,
    pub v6_daddr: usize,
    pub v6_rcv_saddr: usize,
    /// `sock_common.skc_state` (u8, TCP's `TCP_*` state).
    pub state: usize,
}

pub struct KernelLayout {
    pub offsets: Offsets,
    pub sock: SockLayout,
    /// The kernel has the `sock_send_length` and `sock_recv_length` tracepoints (6.3+).
    pub socket_tracepoints: bool,
    /// The kernel still has the sendpage path (before 6.5): sendfile and splice to a socket
    /// bypass `*_sendmsg` there.
    pub sendpage: bool,
}

pub fn load() -> Result<KernelLayout> {
    let raw = std::fs::read(VMLINUX_BTF).with_context(|| {
        format!("reading kernel BTF from {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF)")
    })?;
    let btf = BtfReader::parse(raw).context("parsing kernel BTF")?;
    let f = |ty: &str, path: &str| field(&btf, ty, path);
    let chrono_type = small_field(&btf, "tcp_sock", "chrono_type").ok();
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
        tcp_snd_nxt: f("tcp_sock", "snd_nxt")?,
        tcp_rcv_nxt: f("tcp_sock", "rcv_nxt")?,
        tcp_copied_seq: f("tcp_sock", "copied_seq")?,
        inet_sport: f("inet_sock", "inet_sport")?,
        // Evidence only: optional, 0 when this kernel's layout does not allow reading it.
        tcp_snd_wnd: f("tcp_sock", "snd_wnd").unwrap_or(0),
        tcp_chrono_type: chrono_type.map_or(0, |b| b.0),
        tcp_chrono_type_shift: chrono_type.map_or(0, |b| b.1),
        tcp_chrono_type_mask: chrono_type.map_or(0, |b| (1u32 << b.2) - 1),
        tcp_chrono_start: f("tcp_sock", "chrono_start").unwrap_or(0),
        tcp_chrono_stat: f("tcp_sock", "chrono_stat").unwrap_or(0),
        socket_sk: f("socket", "sk")?,
        skc_state: f("sock", "__sk_common.skc_state")?,
        icsk_ulp_ops: f("inet_connection_sock", "icsk_ulp_ops")?,
        ready: 1,
    };
    // The kprobe backend reads a socket's identity and family as the first 24 bytes of
    // `sock_common` (addresses, hash, ports, family): make sure of the layout.
    if offsets.skc_family != 16 {
        bail!(
            "kernel BTF: sock_common.skc_family at {}, not 16: unsupported kernel",
            offsets.skc_family
        );
    }
    // The programs load the syscall's number and arguments at offsets fixed for the
    // architecture they were built for (truncwatch_common's arch/ files): make sure.
    for &(name, want) in REGS_BTF {
        let arch = std::env::consts::ARCH;
        let got = f("pt_regs", name).map_err(|e| {
            anyhow::anyhow!("{e:#}: not an {arch} kernel? (this agent is built for {arch})")
        })? as usize;
        if got != want {
            bail!(
                "kernel BTF: pt_regs.{name} at {got}, not {want}: unsupported architecture or kernel"
            );
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
        state: s("skc_state")?,
    };
    let socket_tracepoints = btf.has_typedef("btf_trace_sock_send_length")
        && btf.has_typedef("btf_trace_sock_recv_length");
    let sendpage = btf.has_func("tcp_sendpage") && btf.has_func("unix_stream_sendpage");
    Ok(KernelLayout {
        offsets,
        sock,
        socket_tracepoints,
        sendpage,
    })
}

/// Byte offset of `path` (dot-separated members) in struct `ty`, looking through anonymous
/// unions and structs the way C does.
fn field(btf: &BtfReader, ty: &str, path: &str) -> Result<u32> {
    let mut id = btf.struct_id(ty)?;
    let mut total = 0u32;
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let (bits, member_ty, width) = find_member(btf, id, name)?
            .with_context(|| format!("kernel BTF: struct {ty} has no member {path}"))?;
        if width != 0 || bits % 8 != 0 {
            bail!("kernel BTF: {ty}.{path} is a bitfield; this kernel is not supported yet");
        }
        total += bits / 8;
        id = member_ty;
        if parts.peek().is_some() && btf.members(id)?.is_none() {
            bail!("kernel BTF: {ty}.{name} is not a struct");
        }
    }
    Ok(total)
}

/// A member of one byte or less, such as a flag in a bitfield: (byte offset, shift, width in
/// bits) such that the value is `(byte >> shift) & ((1 << width) - 1)` (x86_64 is
/// little-endian: bitfields fill a byte from its low bits). A whole u8 is (offset, 0, 8).
/// Errors when the member is missing, wider than a byte, or straddles two bytes.
fn small_field(btf: &BtfReader, ty: &str, name: &str) -> Result<(u32, u32, u32)> {
    let id = btf.struct_id(ty)?;
    let (bits, _, width) = find_member(btf, id, name)?
        .with_context(|| format!("kernel BTF: struct {ty} has no member {name}"))?;
    let (shift, width) = match width {
        0 if bits % 8 == 0 => (0, 8), // a whole member: the caller knows it is a u8
        0 => bail!("kernel BTF: {ty}.{name} is not byte-aligned"),
        w => (bits % 8, w),
    };
    if shift + width > 8 {
        bail!("kernel BTF: {ty}.{name} straddles two bytes");
    }
    Ok((bits / 8, shift, width))
}

/// (bit offset, type id, bitfield width or 0) of member `name` of struct/union `id`,
/// searching anonymous members recursively.
fn find_member(btf: &BtfReader, id: u32, name: &str) -> Result<Option<(u32, u32, u32)>> {
    let Some(members) = btf.members(id)? else {
        return Ok(None);
    };
    for m in members {
        if m.name == name {
            return Ok(Some((m.bit_offset, m.type_id, m.bitfield_size)));
        }
        // An anonymous struct or union: its members are the parent's.
        if m.name.is_empty()
            && let Some((off, t, w)) = find_member(btf, m.type_id, name)?
        {
            return Ok(Some((m.bit_offset + off, t, w)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every offset the agent uses, from this reader and from btf-rs (a full parser), on the
    /// running kernel: they must agree. Kernel BTF is world-readable, so no root needed.
    #[test]
    fn offsets_agree_with_a_full_btf_parser() {
        let Ok(raw) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("SKIP offsets_agree_with_a_full_btf_parser: no {VMLINUX_BTF}");
            return;
        };
        let ours = BtfReader::parse(raw).unwrap();
        let full = btf_rs::Btf::from_file(VMLINUX_BTF).unwrap();
        for (ty, path) in [
            ("sock", "__sk_common.skc_family"),
            ("sock", "__sk_common.skc_daddr"),
            ("sock", "__sk_common.skc_v6_rcv_saddr"),
            ("sock", "sk_type"),
            ("sock", "sk_protocol"),
            ("sock", "__sk_common.skc_state"),
            ("inet_connection_sock", "icsk_ulp_ops"),
            ("unix_sock", "peer"),
            ("unix_address", "name"),
            ("tcp_sock", "write_seq"),
            ("tcp_sock", "snd_una"),
            ("tcp_sock", "chrono_stat"),
            ("inet_sock", "inet_sport"),
        ] {
            assert_eq!(
                field(&ours, ty, path).unwrap(),
                full_field(&full, ty, path),
                "{ty}.{path}"
            );
        }
        // The syscall registers the programs read, at the offsets compiled in for this
        // architecture.
        for &(name, want) in REGS_BTF {
            let got = field(&ours, "pt_regs", name).unwrap();
            assert_eq!(got, full_field(&full, "pt_regs", name), "pt_regs.{name}");
            assert_eq!(got as usize, want, "pt_regs.{name}");
        }
        // Flags in a bitfield (tcp_sock.repair and its neighbours on every kernel since 4.x;
        // chrono_type on 6.1 and 6.12): byte, shift and width from btf-rs's bit offset and
        // bitfield size. chrono_type itself is a whole u8 on this kernel.
        let bitfield = |name: &str| {
            let st = full
                .resolve_types_by_name("tcp_sock")
                .unwrap()
                .into_iter()
                .find_map(|t| match t {
                    btf_rs::Type::Struct(s) => Some(s),
                    _ => None,
                })
                .unwrap();
            let m = st
                .members
                .iter()
                .find(|m| full.resolve_name(*m).unwrap_or_default() == name)
                .unwrap();
            (m.bit_offset(), m.bitfield_size())
        };
        let mut shifted = 0;
        for name in ["repair", "is_sack_reneg", "is_cwnd_limited", "chrono_type"] {
            let (bits, size) = bitfield(name);
            let want = match size {
                Some(w) if w > 0 => (bits / 8, bits % 8, w),
                _ => (bits / 8, 0, 8),
            };
            shifted += u32::from(want.1 > 0);
            assert_eq!(
                small_field(&ours, "tcp_sock", name).unwrap(),
                want,
                "{name}"
            );
            if size.is_some_and(|w| w > 0) {
                assert!(
                    field(&ours, "tcp_sock", name).is_err(),
                    "{name}: a bitfield"
                );
            }
        }
        assert!(
            shifted > 0,
            "at least one flag sits above bit 0 of its byte"
        );
        assert!(field(&ours, "sock", "no_such_member").is_err());
        assert!(field(&ours, "no_such_struct", "x").is_err());
    }

    /// The syscall numbers the programs match on are this architecture's, as the libc crate
    /// has them (its tables come from each architecture's kernel headers).
    #[test]
    fn syscall_numbers_are_this_architectures() {
        use truncwatch_common as c;
        for (ours, libc) in [
            (c::SYS_WRITE, libc::SYS_write),
            (c::SYS_WRITEV, libc::SYS_writev),
            (c::SYS_SENDTO, libc::SYS_sendto),
            (c::SYS_SENDMSG, libc::SYS_sendmsg),
            (c::SYS_READ, libc::SYS_read),
            (c::SYS_READV, libc::SYS_readv),
            (c::SYS_RECVFROM, libc::SYS_recvfrom),
            (c::SYS_RECVMSG, libc::SYS_recvmsg),
        ] {
            assert_eq!(i64::from(ours), libc);
        }
    }

    fn full_field(btf: &btf_rs::Btf, ty: &str, path: &str) -> u32 {
        use btf_rs::{BtfType, Type};
        let resolve = |mut t: Type| loop {
            t = match &t {
                Type::Typedef(x) => btf.resolve_chained_type(x).unwrap(),
                Type::Const(x) => btf.resolve_chained_type(x).unwrap(),
                Type::Volatile(x) => btf.resolve_chained_type(x).unwrap(),
                _ => return t,
            }
        };
        fn find(
            btf: &btf_rs::Btf,
            st: &btf_rs::Struct,
            name: &str,
            resolve: &dyn Fn(Type) -> Type,
        ) -> Option<(u32, Type)> {
            for m in &st.members {
                let n = btf.resolve_name(m).unwrap_or_default();
                let t = resolve(btf.resolve_type_by_id(m.get_type_id().unwrap()).unwrap());
                if n == name {
                    return Some((m.bit_offset(), t));
                }
                if n.is_empty()
                    && let Type::Struct(s) | Type::Union(s) = &t
                    && let Some((o, t)) = find(btf, s, name, resolve)
                {
                    return Some((m.bit_offset() + o, t));
                }
            }
            None
        }
        let mut st = btf
            .resolve_types_by_name(ty)
            .unwrap()
            .into_iter()
            .find_map(|t| {
                if let Type::Struct(s) = t {
                    Some(s)
                } else {
                    None
                }
            })
            .unwrap();
        let mut total = 0;
        for part in path.split('.') {
            let (o, t) = find(btf, &st, part, &resolve).unwrap();
            total += o / 8;
            if let Type::Struct(s) | Type::Union(s) = t {
                st = s;
            }
        }
        total
    }
}
