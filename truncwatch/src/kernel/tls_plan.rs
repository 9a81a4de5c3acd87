//! Where to hook a TLS library: what an ELF file exports of OpenSSL's API, and the file offsets
//! of the functions to probe (`plan`). The file is another process's: only the ELF header, the
//! section headers, the dynamic symbol table with its strings and a few bytes of code are read,
//! each read bounded by a [`Budget`] (never the `.symtab`, never a whole section of code).
use crate::untrusted::{Budget, Capped};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register,
};
use object::elf::{FileHeader64, SHT_DYNSYM, SHT_NOBITS, STT_FUNC, STT_GNU_IFUNC, Sym64};
use object::read::ReadCache;
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::{Endianness, ReadRef};
use std::fs::File;

/// The programs, and the functions each attaches to. `RETURN` attaches where each of the four
/// I/O calls returns.
pub const ENTRIES: [(&str, &str); 6] = [
    ("uprobe_ssl_write", "SSL_write"),
    ("uprobe_ssl_write_ex", "SSL_write_ex"),
    ("uprobe_ssl_read", "SSL_read"),
    ("uprobe_ssl_read_ex", "SSL_read_ex"),
    ("uprobe_ssl_free", "SSL_free"),
    ("uprobe_ssl_sendfile", "SSL_sendfile"),
];
pub const RETURN: &str = "uretprobe_ssl_call";

/// Where one program attaches in a file: an entry program at `offset`, and, if `ret`, the
/// return program at the same place. `at` names it for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub program: &'static str,
    pub at: String,
    pub offset: u64,
    pub ret: bool,
}

/// What a file exports of OpenSSL's API, and where to hook it.
pub type Plan = (Vec<&'static str>, Vec<Point>);

/// Bytes of a function decoded to find the internal function it calls.
const CODE_LOOKED_AT: u64 = 96;

/// A function found: (name, its address, its section's address and file offset, first bytes).
type Found = (&'static str, u64, u64, u64, Vec<u8>);

/// What `file` exports of OpenSSL's API, and where to hook it: the internal functions
/// `SSL_write`/`SSL_write_ex` and `SSL_read`/`SSL_read_ex` share, where they can be found
/// (`internal`), else the four exported functions; and `SSL_free`, `SSL_sendfile`. Err says
/// why the file could not be read (not ELF, or a read refused by `budget`: see
/// [`Budget::over`]).
pub fn plan(file: &File, budget: &Budget) -> Result<Plan, String> {
    let found = exported(file, budget)?;
    let offset = |vaddr: u64, sec_addr: u64, sec_off: u64| {
        vaddr
            .checked_sub(sec_addr)
            .and_then(|d| d.checked_add(sec_off))
            .ok_or_else(|| format!("{vaddr:#x} is outside its section"))
    };
    let get = |f: &str| found.iter().find(|x| x.0 == f);
    let mut points = Vec::new();
    let internals = [
        ("SSL_write", "SSL_write_ex", "uprobe_ssl_write_ex"),
        ("SSL_read", "SSL_read_ex", "uprobe_ssl_read_ex"),
    ]
    .map(|(plain, ex, program)| {
        let (p, e) = (get(plain)?, get(ex)?);
        let target = internal(&p.4, p.1, &[Register::RDI, Register::RSI])?;
        let same = internal(
            &e.4,
            e.1,
            &[Register::RDI, Register::RSI, Register::RDX, Register::RCX],
        );
        (same == Some(target) && target >= p.2).then_some((program, target, p.2, p.3))
    });
    let through_internals = internals.iter().all(Option::is_some);
    if let [Some(w), Some(r)] = internals {
        for (program, target, sec_addr, sec_off) in [w, r] {
            points.push(Point {
                program,
                at: format!("{target:#x}"),
                offset: offset(target, sec_addr, sec_off)?,
                ret: true,
            });
        }
    }
    for (func, vaddr, sec_addr, sec_off, _) in &found {
        let program = ENTRIES
            .iter()
            .find(|(_, f)| f == func)
            .map(|(p, _)| *p)
            .expect("only ENTRIES' functions are found");
        let io = !matches!(*func, "SSL_free" | "SSL_sendfile");
        if io && through_internals {
            continue; // hooked through the internal functions
        }
        points.push(Point {
            program,
            at: func.to_string(),
            offset: offset(*vaddr, *sec_addr, *sec_off)?,
            ret: *func != "SSL_free",
        });
    }
    Ok((found.iter().map(|f| f.0).collect(), points))
}

/// The functions of `ENTRIES` that `file` defines in its dynamic symbol table, with their
/// first bytes.
fn exported(file: &File, budget: &Budget) -> Result<Vec<Found>, String> {
    let cache = ReadCache::new(file);
    let data = Capped {
        cache: &cache,
        budget,
    };
    let bad = |what: &str| format!("reading its {what}");
    let header = FileHeader64::<Endianness>::parse(data).map_err(|_| bad("ELF header"))?;
    let endian = header.endian().map_err(|_| bad("ELF header"))?;
    let sections = header
        .section_headers(endian, data)
        .map_err(|_| bad("section headers"))?;
    let Some(dynsym) = sections.iter().find(|s| s.sh_type(endian) == SHT_DYNSYM) else {
        return Ok(Vec::new()); // nothing exported (a static executable)
    };
    let symbols: &[Sym64<Endianness>] = dynsym
        .data_as_array(endian, data)
        .map_err(|_| bad("dynamic symbols"))?;
    let strings = sections
        .get(dynsym.sh_link(endian) as usize)
        .ok_or_else(|| bad("dynamic symbol names"))?
        .data(endian, data)
        .map_err(|_| bad("dynamic symbol names"))?;
    let mut found: Vec<Found> = Vec::new();
    for sym in symbols {
        if !matches!(sym.st_type(), STT_FUNC | STT_GNU_IFUNC) || sym.is_undefined(endian) {
            continue;
        }
        let Some(name) = strings
            .get(sym.st_name(endian) as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
        else {
            continue;
        };
        let Some(&(_, func)) = ENTRIES.iter().find(|(_, f)| f.as_bytes() == name) else {
            continue;
        };
        let Some(section) = sections.get(sym.st_shndx(endian) as usize) else {
            continue;
        };
        if section.sh_type(endian) == SHT_NOBITS || found.iter().any(|f| f.0 == func) {
            continue;
        }
        let (addr, sec_addr, sec_off) = (
            sym.st_value(endian),
            section.sh_addr(endian),
            section.sh_offset(endian),
        );
        let code = addr
            .checked_sub(sec_addr)
            .and_then(|d| d.checked_add(sec_off))
            .and_then(|off| data.read_bytes_at(off, CODE_LOOKED_AT).ok())
            .unwrap_or_default()
            .to_vec();
        found.push((func, addr, sec_addr, sec_off, code));
    }
    Ok(found)
}

/// The function a TLS call hands its work to: the target of the first `call` in `code` (a
/// function's first bytes, at address `ip`), if only straight-line code and conditional
/// branches come before it and none of them writes the argument registers `keep` (so the callee
/// gets the caller's arguments in them).
///
/// Why: a uprobe on a function's first instruction costs a trap and a single-step, unless the
/// kernel can emulate that instruction (branches, `push`). OpenSSL's exported functions begin
/// with `sub $n,%rsp` and single-step; their internal functions begin with `push`. On this
/// project's VMs a single-stepped probe costs some 30 µs, an emulated one next to nothing
/// (docs/https.md). `SSL_write`/`SSL_write_ex` both call `ssl_write_internal(s, buf, num,
/// &written)` first (OpenSSL 3.0, 3.1); where the two do not agree (3.2 and later route the
/// `_ex` call through `SSL_write_ex2`), the exported functions are hooked instead.
fn internal(code: &[u8], ip: u64, keep: &[Register]) -> Option<u64> {
    // The decoder reads x86_64 code. Elsewhere (aarch64) the exported functions are hooked.
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return None;
        }
        match ins.flow_control() {
            FlowControl::Call if ins.code() == Code::Call_rel32_64 => {
                return Some(ins.near_branch_target());
            }
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            _ => return None,
        }
        let writes = info.info(&ins).used_registers().iter().any(|r| {
            !matches!(
                r.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess
            ) && keep.contains(&r.register().full_register())
        });
        if writes {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget() -> Budget {
        Budget::new(Duration::from_secs(10), 64 << 20, 16 << 20)
    }

    /// The host's OpenSSL: every function found, hooked through the internal functions
    /// (Debian 12's 3.0) or the exported ones, offsets inside the file.
    #[test]
    fn plans_the_hosts_libssl() {
        let Some(lib) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists()) else {
            eprintln!("SKIP plans_the_hosts_libssl: no libssl.so.3");
            return;
        };
        let file = File::open(lib).unwrap();
        let (functions, points) = plan(&file, &budget()).unwrap();
        for f in [
            "SSL_write",
            "SSL_read",
            "SSL_write_ex",
            "SSL_read_ex",
            "SSL_free",
        ] {
            assert!(functions.contains(&f), "{f} in {functions:?}");
        }
        let len = file.metadata().unwrap().len();
        assert!(
            points.len() >= 3 && points.iter().all(|p| p.offset < len),
            "{points:?}"
        );
        // Not ELF, or no dynamic symbols: nothing, or an error, never a panic.
        let me = File::open("/proc/self/exe").unwrap();
        assert!(plan(&me, &budget()).is_ok());
        let text = tempfile_with(b"#!/bin/sh\n");
        assert!(plan(&text, &budget()).is_err());
    }

    /// A copy of this test executable whose section of type `sh_type` claims 3 GiB (the file
    /// made sparse to past that length, as an attacker would, so the range exists).
    fn with_huge_section(tag: &str, sh_type: u32) -> (crate::test_root::TempRoot, File) {
        use object::read::elf::FileHeader;
        let root = crate::test_root::TempRoot::new(tag);
        let mut bytes = std::fs::read("/proc/self/exe").unwrap();
        let header = FileHeader64::<Endianness>::parse(&*bytes).unwrap();
        let endian = header.endian().unwrap();
        let shoff = header.e_shoff(endian) as usize;
        let index = header
            .section_headers(endian, &*bytes)
            .unwrap()
            .iter()
            .position(|s| s.sh_type(endian) == sh_type)
            .expect("the test executable has that section");
        // sh_size is the 8 bytes at 32 in a 64-byte Elf64_Shdr.
        let at = shoff + index * 64 + 32;
        bytes[at..at + 8].copy_from_slice(&(3u64 << 30).to_le_bytes());
        let f = root.sparse("huge", &bytes, 4 << 30);
        (root, f)
    }

    /// A dynamic symbol table claiming 3 GiB is refused (too large), never read; a `.symtab`
    /// claiming as much is never even looked at.
    #[test]
    fn huge_symbol_tables_are_never_read() {
        let (_root, f) = with_huge_section("plan-dynsym", SHT_DYNSYM);
        let b = budget();
        assert!(plan(&f, &b).is_err());
        assert_eq!(b.over(), Some(crate::untrusted::Skip::TooLarge));
        let (_root, f) = with_huge_section("plan-symtab", object::elf::SHT_SYMTAB);
        let b = budget();
        assert!(plan(&f, &b).is_ok() && b.over().is_none());
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        let root = crate::test_root::TempRoot::new("plan-text");
        let p = root.0.join("f");
        std::fs::write(&p, bytes).unwrap();
        File::open(&p).unwrap() // stays readable after the directory goes
    }

    /// OpenSSL 3.0.19's `SSL_write` and `SSL_write_ex` on Debian 12 (objdump), at their
    /// addresses in libssl.so.3: both call `ssl_write_internal` at 0x355a0 first.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "x86_64 code")]
    fn finds_the_internal_function_both_call() {
        let ssl_write = [
            0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
            0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, // mov %fs:0x28,%rax
            0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
            0x31, 0xc0, // xor %eax,%eax
            0x85, 0xd2, // test %edx,%edx
            0x78, 0x2f, // js
            0x48, 0x89, 0xe1, // mov %rsp,%rcx
            0x48, 0x63, 0xd2, // movslq %edx,%rdx
            0xe8, 0xfd, 0xfb, 0xff, 0xff, // call 0x355a0
        ];
        assert_eq!(
            internal(&ssl_write, 0x35980, &[Register::RDI, Register::RSI]),
            Some(0x355a0)
        );
        // The same code may not be taken for an `_ex` function: it sets the count's pointer.
        assert_eq!(
            internal(
                &ssl_write,
                0x35980,
                &[Register::RDI, Register::RSI, Register::RDX, Register::RCX]
            ),
            None
        );
        // A return, or a write to an argument register, before any call: none.
        assert_eq!(internal(&[0xc3], 0x1000, &[Register::RDI]), None);
        let clobbers = [0x48, 0x89, 0xc7, 0xe8, 0, 0, 0, 0]; // mov %rax,%rdi; call
        assert_eq!(internal(&clobbers, 0x1000, &[Register::RDI]), None);
        assert_eq!(
            internal(&clobbers[3..], 0x1003, &[Register::RDI]),
            Some(0x1008)
        );
    }
}
