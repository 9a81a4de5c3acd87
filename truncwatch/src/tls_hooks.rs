//! HTTPS coverage: find the TLS libraries processes run (OpenSSL 3's API, in `libssl.so.*` or
//! in an executable that exports it, as Node.js does) and attach the TLS uprobes to them.
//!
//! A uprobe is set on a file (its inode), so one attachment covers every process that maps
//! it, now or later. Files are found in `/proc/<pid>/maps` (libraries named `libssl*`) and
//! `/proc/<pid>/exe`, through `/proc/<pid>/root` (a container's own files), and the host's own
//! `libssl.so.3` is hooked at start. New processes are looked at every `scan`; every process's
//! libraries again at a slower pace (`full`), for those loaded later with `dlopen`.
//!
//! What cannot be seen: TLS linked statically without the symbols (Go's crypto/tls, rustls,
//! BoringSSL in Envoy), stripped executables, and libraries with another API (GnuTLS, NSS).
use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, OpAccess, Register,
};
use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

use std::path::{Path, PathBuf};

use crate::uprobe_events::{self, UprobeEvent};

/// The programs, and the functions each attaches to. `uretprobe_ssl_call` attaches where each
/// of the four I/O calls returns.
const ENTRIES: [(&str, &str); 6] = [
    ("uprobe_ssl_write", "SSL_write"),
    ("uprobe_ssl_write_ex", "SSL_write_ex"),
    ("uprobe_ssl_read", "SSL_read"),
    ("uprobe_ssl_read_ex", "SSL_read_ex"),
    ("uprobe_ssl_free", "SSL_free"),
    ("uprobe_ssl_sendfile", "SSL_sendfile"),
];
const RETURN: &str = "uretprobe_ssl_call";
/// Functions a file must export to be hooked: without both, its plaintext is half seen.
const REQUIRED: [&str; 2] = ["SSL_write", "SSL_read"];

/// Where distributions put the system's OpenSSL 3 (hooked at start, used or not yet).
const HOST_LIBSSL: [&str; 4] = [
    "/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

/// A file looked at: what it exports, and whether it is hooked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The path it was found at (through `/proc/<pid>/root` for another mount namespace).
    pub path: PathBuf,
    /// The TLS functions it exports (`SSL_write`, ...).
    pub functions: Vec<&'static str>,
    /// Where the hooks went: function names, or the addresses of the internal functions
    /// the exported ones call.
    pub via: Vec<String>,
    /// Hooked (uprobes attached), or why not.
    pub hooked: Result<(), String>,
    /// Processes seen using it (at most `MAX_PIDS`, first seen first).
    pub pids: Vec<u32>,
}

/// Processes remembered per file, for `truncwatch check`.
const MAX_PIDS: usize = 16;

/// The TLS hooks of a running agent.
pub struct TlsHooks {
    /// Files looked at, by device and inode: each is parsed and hooked once (a uprobe is on
    /// the inode: it covers every process and container that maps the file).
    files: HashMap<FileKey, Target>,
    /// Finds the files (in the background once `watch` runs).
    scanner: Option<Scanner>,
    /// How uprobes are attached: aya's perf `uprobe` event source until it is refused for
    /// want of `CAP_SYS_ADMIN`, then tracefs events (`uprobe_events`).
    through_tracefs: bool,
    /// The uprobes attached through tracefs (removed when dropped).
    events: Vec<UprobeEvent>,
}

/// A file that may hold a TLS library, seen mapped by a process (`pid`; 0: the host's, seen by
/// its path). `plan` is set the first time the file is seen: what it exports and where to hook
/// it, or why it could not be read.
pub struct Sighting {
    key: FileKey,
    path: PathBuf,
    pid: u32,
    plan: Option<Result<Plan, String>>,
}

/// What a file exports of OpenSSL's API, and where to hook it (`plan`).
type Plan = (Vec<&'static str>, Vec<Point>);

/// The looking part: `/proc` and files only, no hooks, so it can run on a thread of its own.
struct Scanner {
    /// Processes looked at since the last full scan.
    seen: HashSet<u32>,
    /// Files already planned.
    known: HashSet<FileKey>,
    scans: u32,
}

impl Scanner {
    /// The host's libraries, then the files of processes not looked at yet (every process's
    /// every `FULL_SCAN_EVERY` scans, for libraries loaded later with `dlopen`).
    fn scan(&mut self) -> Vec<Sighting> {
        if self.scans.is_multiple_of(FULL_SCAN_EVERY) {
            self.seen.clear();
        }
        self.scans += 1;
        let mut out = Vec::new();
        // The host's libraries on full scans only (each look maps the file): one upgraded in
        // place is seen within FULL_SCAN_EVERY, and at once in the maps of a process using it.
        if self.seen.is_empty() {
            for p in HOST_LIBSSL {
                let path = Path::new(p);
                if let Some(key) = file_key(path) {
                    out.extend(self.sighting(path, key, 0));
                }
            }
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        let mut alive = HashSet::new();
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            alive.insert(pid);
            if !self.seen.insert(pid) {
                continue;
            }
            for (path, key) in candidates(pid) {
                if let Some(key) = key.or_else(|| file_key(&path)) {
                    out.extend(self.sighting(&path, key, pid));
                }
            }
        }
        self.seen.retain(|p| alive.contains(p));
        out
    }

    fn sighting(&mut self, path: &Path, key: FileKey, pid: u32) -> Option<Sighting> {
        let new = self.known.insert(key.clone());
        if !new && pid == 0 {
            return None;
        }
        Some(Sighting {
            plan: new.then(|| plan(path).map_err(|e| format!("{e:#}"))),
            key,
            path: path.to_owned(),
            pid,
        })
    }
}

/// How often new processes are looked at, and every how many scans all of them again.
pub const SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const FULL_SCAN_EVERY: u32 = 30;

impl TlsHooks {
    /// Load the TLS programs into `ebpf` (attached to nothing yet).
    pub fn load(ebpf: &mut Ebpf) -> Result<TlsHooks> {
        for name in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]) {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading TLS program {name}"))?;
        }
        uprobe_events::remove_stale();
        Ok(TlsHooks {
            files: HashMap::new(),
            scanner: Some(Scanner {
                seen: HashSet::new(),
                known: HashSet::new(),
                scans: 0,
            }),
            through_tracefs: false,
            events: Vec::new(),
        })
    }

    /// The TLS libraries found so far (hooked or not), with the processes seen using them.
    pub fn libraries(&self) -> Vec<Target> {
        let mut v: Vec<Target> = self
            .files
            .values()
            .filter(|t| REQUIRED.iter().all(|r| t.functions.contains(r)) || t.hooked.is_ok())
            .cloned()
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Whether this kernel has the uprobe event source.
    pub fn uprobes_exist() -> bool {
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
    }

    /// Look for TLS libraries now, on this thread, and hook them. Returns the files newly
    /// hooked or refused, to be reported.
    pub fn scan(&mut self, ebpf: &mut Ebpf) -> Vec<Target> {
        let found = self.scanner.as_mut().map(Scanner::scan).unwrap_or_default();
        self.apply(ebpf, found)
    }

    /// From now on, look for TLS libraries on a thread of its own every `SCAN_EVERY`: reading
    /// every process's `/proc/<pid>/maps` and parsing files must not hold up the events. What it
    /// finds arrives on the returned channel, for `apply`.
    pub fn watch(&mut self) -> tokio::sync::mpsc::Receiver<Vec<Sighting>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if let Some(mut scanner) = self.scanner.take() {
            let spawned = std::thread::Builder::new()
                .name("tw-tls-scan".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(SCAN_EVERY);
                        let found = scanner.scan();
                        if !found.is_empty() && tx.blocking_send(found).is_err() {
                            return; // the agent is stopping
                        }
                    }
                });
            if let Err(e) = spawned {
                eprintln!("truncwatch: TLS: cannot start the library scan: {e}");
            }
        }
        rx
    }

    /// Attach the TLS programs at `points` of `path`: all of them, or (on an error) none.
    fn hook(&mut self, ebpf: &mut Ebpf, path: &Path, points: &[Point]) -> Result<()> {
        if !self.through_tracefs {
            match hook_with_perf_uprobes(ebpf, path, points) {
                Err(e) if refused(&e) => {
                    eprintln!(
                        "truncwatch: TLS: the perf uprobe event source needs CAP_SYS_ADMIN; \
                         making uprobes through tracefs (uprobe_events) instead"
                    );
                    self.through_tracefs = true;
                }
                done => return done,
            }
        }
        let mut events = Vec::new();
        for p in points {
            for (name, ret) in [(p.program, false), (RETURN, true)]
                .into_iter()
                .take(1 + p.ret as usize)
            {
                let prog: &UProbe = ebpf
                    .program(name)
                    .with_context(|| format!("TLS program {name} missing"))?
                    .try_into()?;
                let event = uprobe_events::attach(prog.fd()?.as_fd(), path, p.offset, ret)
                    .with_context(|| format!("attaching {name} to {}:{}", path.display(), p.at))
                    .context(
                        "without CAP_SYS_ADMIN, uprobes need a writable tracefs: \
                         mount /sys/kernel/tracing read-write, as uid 0",
                    )?;
                // Half the calls seen would be worse than none: on an error above, `events`
                // drops, and with it what was attached for this file.
                events.push(event);
            }
        }
        self.events.extend(events);
        Ok(())
    }

    /// Hook what a scan found. Returns the files newly hooked or refused, to be reported.
    pub fn apply(&mut self, ebpf: &mut Ebpf, found: Vec<Sighting>) -> Vec<Target> {
        let mut report = Vec::new();
        for s in found {
            let pids = if s.pid == 0 { Vec::new() } else { vec![s.pid] };
            let Some(plan) = s.plan else {
                if let Some(t) = self.files.get_mut(&s.key)
                    && t.pids.len() < MAX_PIDS
                    && !t.pids.contains(&s.pid)
                {
                    t.pids.push(s.pid);
                }
                continue;
            };
            let target = match plan {
                Ok((functions, points)) if REQUIRED.iter().all(|r| functions.contains(r)) => {
                    Target {
                        hooked: self
                            .hook(ebpf, &s.path, &points)
                            .map_err(|e| format!("{e:#}")),
                        path: s.path,
                        via: points.iter().map(|p| p.at.clone()).collect(),
                        functions,
                        pids,
                    }
                }
                // Not a TLS library (an executable without the symbols): remembered, not
                // reported.
                Ok((functions, _)) => {
                    let t = Target {
                        path: s.path,
                        functions,
                        via: Vec::new(),
                        hooked: Err("does not export SSL_write and SSL_read".into()),
                        pids,
                    };
                    self.files.insert(s.key, t);
                    continue;
                }
                Err(e) => Target {
                    path: s.path,
                    functions: Vec::new(),
                    via: Vec::new(),
                    hooked: Err(e),
                    pids,
                },
            };
            self.files.insert(s.key, target.clone());
            report.push(target);
        }
        report
    }
}

/// Files of process `pid` that may be TLS libraries: its executable, and the mapped files
/// named `libssl*`, as paths through its root.
fn candidates(pid: u32) -> Vec<(PathBuf, Option<FileKey>)> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return exe.map_or_else(Vec::new, |e| {
            vec![(root.join(e.strip_prefix("/").unwrap_or(&e)), None)]
        });
    };
    // `address perms offset dev inode path`: the file's own device and inode (for a container's
    // overlay, the layer's file, the same for every container of the image).
    let mut out: Vec<(PathBuf, Option<FileKey>)> = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(dev), Some(ino), Some(path)) = (f.get(3), f.get(4), f.get(5)) else {
            continue;
        };
        let is_exe = exe.as_deref() == Some(Path::new(path));
        let is_libssl = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libssl"));
        // A mapped file replaced since (a library upgrade) shows " (deleted)": its old inode is
        // what runs, and the path now names another file.
        if !path.starts_with('/') || !(is_exe || is_libssl) || f.len() > 6 {
            continue;
        }
        let key = ino.parse().ok().map(|i| (dev.to_string(), i));
        if !out.iter().any(|(_, k)| k.is_some() && *k == key) {
            out.push((root.join(&path[1..]), key));
        }
    }
    out
}

/// A mapped file's identity: its device (`major:minor`, hex, as `/proc/<pid>/maps` shows it)
/// and inode.
type FileKey = (String, u64);

/// The identity of the file at `path`, as `/proc/<pid>/maps` shows it: the file is mapped here
/// for a moment and the agent's own maps line read. `stat` would not do on overlayfs (a
/// container's image, or a host whose root is an overlay): it gives the overlay's device and
/// inode, while maps, and the uprobe (`d_real_inode` in the kernel's trace_uprobe), use the
/// underlying file's. With `stat`, one library reached by its path and by a process's maps
/// got two keys and was hooked twice (found in the 6.12 guest, whose root is an overlay).
/// None when the file cannot be opened or mapped (empty, or not a regular file).
fn file_key(path: &Path) -> Option<FileKey> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() == 0 {
        return None;
    }
    // SAFETY: a fresh private read-only mapping of one page of an open file, unmapped below;
    // nothing reads through it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps");
    // SAFETY: the mapping made above, of length 1 (rounded to a page by the kernel).
    unsafe { libc::munmap(addr, 1) };
    // `start-end perms offset dev inode path`, addresses in hex of at least 8 digits.
    let start = format!("{:08x}-", addr as usize);
    let line = maps
        .ok()?
        .lines()
        .find(|l| l.starts_with(&start))?
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    Some((f.get(3)?.to_string(), f.get(4)?.parse().ok()?))
}

/// Where one program attaches in a file: an entry program at `offset`, and, if `ret`, the
/// return program at the same place. `at` names it for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Point {
    program: &'static str,
    at: String,
    offset: u64,
    ret: bool,
}

/// What `path` exports of OpenSSL's API, and where to hook it: the internal functions
/// `SSL_write`/`SSL_write_ex` and `SSL_read`/`SSL_read_ex` share, where they can be found
/// (`internal`), else the four exported functions; and `SSL_free`, `SSL_sendfile`. Reads only
/// the headers, the dynamic symbol table and a few instructions (an executable may be 100 MB).
fn plan(path: &Path) -> Result<Plan> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let elf =
        object::File::parse(&cache).with_context(|| format!("reading ELF {}", path.display()))?;
    // (function, its address, its section's address and file offset, its first bytes)
    let mut found: Vec<(&'static str, u64, u64, u64, Vec<u8>)> = Vec::new();
    for sym in elf.dynamic_symbols() {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(&(_, func)) = ENTRIES.iter().find(|(_, f)| *f == name) else {
            continue;
        };
        let Some(section) = sym
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok())
        else {
            continue;
        };
        let Some((file_off, _)) = section.file_range() else {
            continue;
        };
        if found.iter().any(|f| f.0 == func) {
            continue;
        }
        let code = section
            .data_range(sym.address(), CODE_LOOKED_AT)
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_vec();
        found.push((func, sym.address(), section.address(), file_off, code));
    }
    let offset = |vaddr: u64, sec_addr: u64, sec_off: u64| -> Result<u64> {
        match UProbeAttachLocation::from_virtual_address(vaddr, sec_addr, sec_off)? {
            UProbeAttachLocation::AbsoluteOffset(off) => Ok(off),
            _ => bail!("not an offset"),
        }
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

/// Bytes of a function decoded to find the internal function it calls.
const CODE_LOOKED_AT: u64 = 96;

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

/// Attach the TLS programs at `points` of `path` with aya (the perf `uprobe` event source):
/// all of them, or (on an error) none.
fn hook_with_perf_uprobes(ebpf: &mut Ebpf, path: &Path, points: &[Point]) -> Result<()> {
    let mut attached = Vec::new();
    let mut result = Ok(());
    'points: for p in points {
        let mut progs = vec![p.program];
        if p.ret {
            progs.push(RETURN);
        }
        for name in progs {
            let prog: &mut UProbe = match ebpf.program_mut(name).map(TryInto::try_into) {
                Some(Ok(prog)) => prog,
                _ => {
                    result = Err(anyhow::anyhow!("TLS program {name} missing"));
                    break 'points;
                }
            };
            match prog.attach(
                UProbeAttachLocation::AbsoluteOffset(p.offset),
                path,
                UProbeScope::AllProcesses,
            ) {
                Ok(link) => attached.push((name, link)),
                Err(e) => {
                    result = Err(anyhow::Error::new(e).context(format!(
                        "attaching {name} to {}:{}",
                        path.display(),
                        p.at
                    )));
                    break 'points;
                }
            }
        }
    }
    if result.is_err() {
        // Half the calls seen would be worse than none: a write without its reads.
        for (name, link) in attached {
            if let Some(Ok(prog)) = ebpf.program_mut(name).map(TryInto::<&mut UProbe>::try_into) {
                let _ = prog.detach(link);
            }
        }
    }
    result
}

/// Whether `e` is the kernel refusing a perf `uprobe` event to a caller without
/// `CAP_SYS_ADMIN` (`EACCES` from `perf_event_open`).
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EACCES))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's key is what maps shows for it: here the test executable, which the kernel
    /// mapped at exec (so maps has its line already), whatever the file system.
    #[test]
    fn file_key_is_the_maps_identity() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()))
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let want = (f[3].to_string(), f[4].parse::<u64>().unwrap());
        assert_eq!(file_key(&exe), Some(want));
        assert_eq!(file_key(Path::new("/proc/self/no-such-file")), None);
        assert_eq!(
            file_key(Path::new("/dev/null")),
            None,
            "not a mappable file"
        );
    }

    /// OpenSSL 3.0.19's `SSL_write` and `SSL_write_ex` on Debian 12 (objdump), at their
    /// addresses in libssl.so.3: both call `ssl_write_internal` at 0x355a0 first.
    #[test]
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
