//! The eBPF programs' stack, checked on any host, without loading them: every call chain's
//! frames together must fit in 512 bytes.
//!
//! Linux before 6.x counts a chain's frames, BPF global functions included, each rounded up
//! to 32 bytes, against `MAX_BPF_STACK` (`check_max_stack_depth()` in kernel/bpf/verifier.c:
//! "combined stack size of N calls is M. Too large"). Newer kernels check global functions on
//! their own, so a chain that fails on Debian 12's 6.1 loads here: this test finds it first.
//! Each function's frame is the deepest stack slot its instructions reach, as the verifier
//! tracks it (`r10 - off` directly, or through a register set to `r10` plus a constant).
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
use std::collections::HashMap;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/truncwatch"));

/// `MAX_BPF_STACK` (include/linux/filter.h).
const MAX_BPF_STACK: u64 = 512;

/// A function: its section, first instruction and instruction count.
struct Func {
    name: String,
    section: object::SectionIndex,
    start: u64,
    len: u64,
    /// A program (in its own section), not a subprogram in `.text`.
    program: bool,
}

#[test]
fn every_call_chain_fits_the_bpf_stack() {
    let file = object::File::parse(OBJECT).expect("the eBPF object is ELF");
    let mut funcs: Vec<Func> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let section = s.section_index()?;
            let name = file
                .section_by_index(section)
                .ok()?
                .name()
                .ok()?
                .to_string();
            Some(Func {
                name: s.name().ok()?.to_string(),
                section,
                start: s.address() / 8,
                len: s.size() / 8,
                program: name != ".text",
            })
        })
        .collect();
    funcs.sort_by_key(|f| (f.section.0, f.start));
    assert!(
        funcs.iter().any(|f| f.program),
        "no programs found in the object"
    );
    let find = |section: object::SectionIndex, insn: u64| {
        funcs
            .iter()
            .position(|f| f.section == section && (f.start..f.start + f.len).contains(&insn))
    };

    // Each function's frame and the functions it calls.
    let mut frame = vec![0u64; funcs.len()];
    let mut calls: Vec<Vec<usize>> = vec![vec![]; funcs.len()];
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = section.data().expect("section data");
        let relocs: HashMap<u64, (object::SymbolIndex, i64)> = section
            .relocations()
            .filter_map(|(off, r)| match r.target() {
                RelocationTarget::Symbol(sym) => Some((off / 8, (sym, r.addend()))),
                _ => None,
            })
            .collect();
        for (fi, f) in funcs.iter().enumerate() {
            if f.section != section.index() {
                continue;
            }
            // Registers known to hold `r10 + k`.
            let mut fp: [Option<i64>; 11] = [None; 11];
            let mut pc = f.start;
            while pc < f.start + f.len {
                let i = &code[pc as usize * 8..pc as usize * 8 + 8];
                let (op, dst, src) = (i[0], (i[1] & 0xf) as usize, (i[1] >> 4) as usize);
                let off = i16::from_le_bytes([i[2], i[3]]) as i64;
                let imm = i32::from_le_bytes([i[4], i[5], i[6], i[7]]) as i64;
                let mut deepest = |k: i64| frame[fi] = frame[fi].max((-k).max(0) as u64);
                match op & 0x07 {
                    // LDX: src is the base.
                    0x01 => {
                        if src == 10 {
                            deepest(off);
                        } else if let Some(k) = fp[src] {
                            deepest(k + off);
                        }
                        fp[dst] = None;
                    }
                    // ST, STX: dst is the base.
                    0x02 | 0x03 => {
                        if dst == 10 {
                            deepest(off);
                        } else if let Some(k) = fp[dst] {
                            deepest(k + off);
                        }
                    }
                    // ALU64
                    0x07 => match op {
                        0xbf => fp[dst] = if src == 10 { Some(0) } else { fp[src] },
                        0x07 => {
                            if let Some(k) = fp[dst] {
                                fp[dst] = Some(k + imm);
                                deepest(k + imm);
                            }
                        }
                        _ => fp[dst] = None,
                    },
                    // JMP: a BPF-to-BPF call (`BPF_PSEUDO_CALL`), or a helper's, which
                    // clobbers r0-r5.
                    0x05 if op == 0x85 => {
                        if src == 1 {
                            // libbpf: the callee's first instruction is the relocation
                            // symbol's, plus `imm + 1`; without one, this one's.
                            let target = match relocs.get(&pc) {
                                Some((sym, _)) => {
                                    let sym = file.symbol_by_index(*sym).expect("symbol");
                                    let sec = sym.section_index().expect("call into a section");
                                    find(sec, ((sym.address() / 8) as i64 + imm + 1) as u64)
                                }
                                None => find(f.section, (pc as i64 + imm + 1) as u64),
                            };
                            let callee = target.unwrap_or_else(|| {
                                panic!("{}: a call at {pc} into no known function", f.name)
                            });
                            calls[fi].push(callee);
                        }
                        fp[..6].fill(None);
                    }
                    0x04 | 0x06 | 0x0c => fp[dst] = None, // ALU32
                    0x00 if op == 0x18 => {
                        fp[dst] = None;
                        pc += 1; // a 64-bit immediate takes two slots
                    }
                    0x00 => fp[dst] = None,
                    _ => {}
                }
                pc += 1;
            }
        }
    }

    // The deepest chain from each program, frames rounded up as the verifier does.
    fn chain(f: usize, frame: &[u64], calls: &[Vec<usize>], depth: usize) -> u64 {
        assert!(depth < 16, "call chain too deep (recursion?)");
        let own = frame[f].max(1).div_ceil(32) * 32;
        own + calls[f]
            .iter()
            .map(|&c| chain(c, frame, calls, depth + 1))
            .max()
            .unwrap_or(0)
    }
    let mut too_deep = vec![];
    for (i, f) in funcs.iter().enumerate().filter(|(_, f)| f.program) {
        let total = chain(i, &frame, &calls, 0);
        println!(
            "{:40} frame {:3} B, deepest chain {total:3} B",
            f.name, frame[i]
        );
        if total > MAX_BPF_STACK {
            too_deep.push(format!("{} ({total} bytes)", f.name));
        }
    }
    assert!(
        too_deep.is_empty(),
        "call chains over {MAX_BPF_STACK} bytes of stack, which 6.1's verifier refuses: {}",
        too_deep.join(", ")
    );
}
