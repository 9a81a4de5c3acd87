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
use anyhow::{Context, Result};
use aya::Ebpf;
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The programs, and the functions each attaches to. `uretprobe_ssl_call` attaches where each
/// of the four I/O calls returns.
const ENTRIES: [(&str, &str); 5] = [
    ("uprobe_ssl_write", "SSL_write"),
    ("uprobe_ssl_write_ex", "SSL_write_ex"),
    ("uprobe_ssl_read", "SSL_read"),
    ("uprobe_ssl_read_ex", "SSL_read_ex"),
    ("uprobe_ssl_free", "SSL_free"),
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
    /// Hooked (uprobes attached), or why not.
    pub hooked: Result<(), String>,
    /// Processes seen using it (at most `MAX_PIDS`, first seen first).
    pub pids: Vec<u32>,
}

/// Processes remembered per file, for `truncwatch check`.
const MAX_PIDS: usize = 16;

/// The TLS hooks of a running agent.
pub struct TlsHooks {
    /// Files looked at, by (device, inode): each is parsed and hooked once.
    files: HashMap<(u64, u64), Target>,
    /// Processes looked at since the last full scan.
    seen: HashSet<u32>,
}

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
        Ok(TlsHooks {
            files: HashMap::new(),
            seen: HashSet::new(),
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

    /// Look for TLS libraries: the host's, then those of processes not looked at yet (`full`:
    /// of every process). Returns the files newly hooked or refused, to be reported.
    pub fn scan(&mut self, ebpf: &mut Ebpf, full: bool) -> Vec<Target> {
        if full {
            self.seen.clear();
        }
        let mut found = Vec::new();
        for p in HOST_LIBSSL {
            found.extend(self.consider(ebpf, Path::new(p), 0));
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        let mut alive = HashSet::new();
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            alive.insert(pid);
            if !self.seen.insert(pid) {
                continue;
            }
            for path in candidates(pid) {
                found.extend(self.consider(ebpf, &path, pid));
            }
        }
        self.seen.retain(|p| alive.contains(p));
        found
    }

    /// A file that may hold a TLS library, used by process `pid` (0: none yet): parse and
    /// hook it if not done yet.
    fn consider(&mut self, ebpf: &mut Ebpf, path: &Path, pid: u32) -> Option<Target> {
        let meta = std::fs::metadata(path).ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(t) = self.files.get_mut(&key) {
            if pid != 0 && t.pids.len() < MAX_PIDS && !t.pids.contains(&pid) {
                t.pids.push(pid);
            }
            return None;
        }
        let pids = if pid == 0 { Vec::new() } else { vec![pid] };
        let target = match exported(path) {
            Ok(f) if REQUIRED.iter().all(|r| f.iter().any(|(n, _)| n == r)) => Target {
                path: path.to_owned(),
                functions: f.iter().map(|(n, _)| *n).collect(),
                hooked: hook(ebpf, path, &f).map_err(|e| format!("{e:#}")),
                pids,
            },
            // Not a TLS library (an executable without the symbols): remembered, not reported.
            Ok(f) => {
                let t = Target {
                    path: path.to_owned(),
                    functions: f.iter().map(|(n, _)| *n).collect(),
                    hooked: Err("does not export SSL_write and SSL_read".into()),
                    pids,
                };
                self.files.insert(key, t);
                return None;
            }
            Err(e) => Target {
                path: path.to_owned(),
                functions: Vec::new(),
                hooked: Err(format!("{e:#}")),
                pids,
            },
        };
        self.files.insert(key, target.clone());
        Some(target)
    }
}

/// Files of process `pid` that may be TLS libraries: its executable, and the mapped files
/// named `libssl*`, as paths through its root.
fn candidates(pid: u32) -> Vec<PathBuf> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut out = Vec::new();
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        out.push(root.join(exe.strip_prefix("/").unwrap_or(&exe)));
    }
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        let mut libs: Vec<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| {
                p.starts_with('/')
                    && Path::new(p)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libssl"))
            })
            .collect();
        libs.dedup();
        out.extend(libs.into_iter().map(|p| root.join(&p[1..])));
    }
    out
}

/// The TLS functions `path` defines and exports, with their file offsets. Reads only the
/// headers and the dynamic symbol table (an executable may be 100 MB).
fn exported(path: &Path) -> Result<Vec<(&'static str, u64)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let elf =
        object::File::parse(&cache).with_context(|| format!("reading ELF {}", path.display()))?;
    let mut out = Vec::new();
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
        let loc =
            UProbeAttachLocation::from_virtual_address(sym.address(), section.address(), file_off)?;
        if let UProbeAttachLocation::AbsoluteOffset(off) = loc
            && !out.iter().any(|(n, _)| *n == func)
        {
            out.push((func, off));
        }
    }
    Ok(out)
}

/// Attach the TLS programs to the functions `path` exports (at their file offsets).
fn hook(ebpf: &mut Ebpf, path: &Path, functions: &[(&'static str, u64)]) -> Result<()> {
    for &(func, off) in functions {
        let entry = ENTRIES
            .iter()
            .find(|(_, f)| *f == func)
            .map(|(p, _)| *p)
            .expect("only ENTRIES' functions are listed");
        let mut progs = vec![entry];
        if func != "SSL_free" {
            progs.push(RETURN);
        }
        for name in progs {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .context("TLS program missing")?
                .try_into()?;
            prog.attach(
                UProbeAttachLocation::AbsoluteOffset(off),
                path,
                UProbeScope::AllProcesses,
            )
            .with_context(|| format!("attaching {name} to {}:{func}", path.display()))?;
        }
    }
    Ok(())
}
