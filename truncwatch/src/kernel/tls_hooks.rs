//! HTTPS coverage: find the TLS libraries processes run (OpenSSL 3's API, in `libssl.so.*` or
//! in an executable that exports it, as Node.js does) and attach the TLS uprobes to them.
//!
//! A uprobe is set on a file (its inode), so one attachment covers every process that maps
//! it, now or later. Files are found in `/proc/<pid>/maps` (libraries named `libssl*`, and the
//! executable), and the host's own `libssl.so.3` is hooked at start. New processes are looked
//! at every `SCAN_EVERY`; every process's libraries again every `FULL_SCAN_EVERY` scans, for
//! those loaded later with `dlopen`.
//!
//! Everything here reads what other processes control, so (issue 26):
//! - it runs on a thread of its own (`tw-tls-scan`: reading, planning and attaching), which
//!   the agent's event loop never waits on;
//! - maps are read as a stream, and each process and each file has a time and byte budget
//!   (`untrusted`); a `.symtab` is never read, a dynamic symbol table only up to a cap;
//! - a path from a process's maps is opened inside that process's root (`openat2` with
//!   `RESOLVE_IN_ROOT`), non-blocking, as a regular file only, and kept only if it is the very
//!   file mapped (the device and inode on the maps line); the uprobes are then attached through
//!   that descriptor (`/proc/self/fd/<n>`), so a name swapped in the meantime cannot redirect
//!   them;
//! - at most `--max-tls-libraries` files are hooked (a quarter of them per file owner other
//!   than root): each costs some 7 uprobes, and the kernel takes ~85 ms to remove each one
//!   when the agent stops (Linux 6.18, measured).
//!
//! What cannot be seen: TLS linked statically without the symbols (Go's crypto/tls, rustls,
//! BoringSSL in Envoy), stripped executables, and libraries with another API (GnuTLS, NSS).
use crate::kernel::tls_plan::{self, ENTRIES, Point, RETURN};
use crate::kernel::uprobe_events::{self, UprobeEvent};
use crate::untrusted::{self, Budget, Skip};
use anyhow::{Context, Result};
use aya::Ebpf;
use aya::programs::UProbe;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Functions a file must export to be hooked: without both, its plaintext is half seen.
const REQUIRED: [&str; 2] = ["SSL_write", "SSL_read"];

/// Where distributions put the system's OpenSSL 3 (hooked at start, used or not yet). Debian's
/// and Ubuntu's multiarch directories are named after the architecture (`x86_64-linux-gnu`,
/// `aarch64-linux-gnu`): only the agent's own is looked in.
fn host_libssl() -> [String; 4] {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}/libssl.so.3"),
        format!("/usr/lib/{multiarch}/libssl.so.3"),
        "/usr/lib64/libssl.so.3".into(),
        "/usr/lib/libssl.so.3".into(),
    ]
}

/// How often new processes are looked at, and every how many scans all of them again.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
const FULL_SCAN_EVERY: u32 = 30;

/// Time for one process (its maps and the files in them), and for one file.
const PROCESS_TIME: Duration = Duration::from_secs(5);
const FILE_TIME: Duration = Duration::from_secs(2);
/// Bytes read of one file at most, and in one read: the dynamic symbols and their names of
/// an executable that exports OpenSSL's and its runtime's API (Node.js: a few MiB).
const FILE_BYTES: u64 = 48 << 20;
const READ_CAP: u64 = 16 << 20;
/// Files of one process looked at (its executable and `libssl*` mappings).
const MAX_CANDIDATES: usize = 64;
/// Files remembered (hooked or not); past it those not hooked are forgotten (looked at again
/// if seen again).
const MAX_REMEMBERED: usize = 4096;
/// Processes remembered per file, for `truncwatch check`.
const MAX_PIDS: usize = 16;
/// Libraries hooked at most by default (`--max-tls-libraries`).
pub const DEFAULT_MAX_LIBRARIES: usize = 16;

/// A file looked at: what it exports, and whether it is hooked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The path it was found at (through `/proc/<pid>/root` for another process's).
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

/// A mapped file's identity: its device (`major:minor`, hex, as `/proc/<pid>/maps` shows it)
/// and inode (for a container's overlay, the layer's file).
type FileKey = (String, u64);

/// The TLS hooks of a running agent.
pub struct TlsHooks {
    /// Scans and hooks on the caller's thread, until `watch` moves it to its own.
    scanner: Option<Scanner>,
    /// The scanner's thread, once `watch` started it, and the flag that stops it.
    thread: Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>,
}

/// The looking and hooking: `/proc`, files and attachments, owned by one thread.
struct Scanner {
    /// Processes looked at since the last full scan.
    seen: HashSet<u32>,
    scans: u32,
    /// Files looked at, by device and inode: each is planned and hooked once.
    files: HashMap<FileKey, Target>,
    /// The TLS programs (copies of their descriptors), by name.
    programs: Vec<(&'static str, OwnedFd)>,
    /// aya's perf `uprobe` event source until it is refused for want of `CAP_SYS_ADMIN`, then
    /// tracefs events (`uprobe_events`).
    through_tracefs: bool,
    /// The uprobes attached (detached when dropped).
    probes: Vec<UprobeEvent>,
    /// Files hooked, in all and by owner (uid), and the cap.
    hooked: usize,
    by_owner: HashMap<u32, usize>,
    max_files: usize,
    stop: Arc<AtomicBool>,
}

impl TlsHooks {
    /// Load the TLS programs into `ebpf` (attached to nothing yet); hook at most
    /// `max_libraries` files.
    pub fn load(ebpf: &mut Ebpf, max_libraries: usize) -> Result<TlsHooks> {
        let mut programs = Vec::new();
        for name in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN]) {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading TLS program {name}"))?;
            let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
            programs.push((name, fd));
        }
        uprobe_events::remove_stale();
        let scanner = Scanner {
            seen: HashSet::new(),
            scans: 0,
            files: HashMap::new(),
            programs,
            through_tracefs: false,
            probes: Vec::new(),
            hooked: 0,
            by_owner: HashMap::new(),
            max_files: max_libraries,
            stop: Arc::new(AtomicBool::new(false)),
        };
        Ok(TlsHooks {
            scanner: Some(scanner),
            thread: None,
        })
    }

    /// The TLS libraries found so far (hooked or not), with the processes seen using them.
    /// (Those looked at on this thread: empty once `watch` runs.)
    pub fn libraries(&self) -> Vec<Target> {
        let Some(s) = &self.scanner else {
            return Vec::new();
        };
        let mut v: Vec<Target> = s.files.values().filter(|t| is_tls(t)).cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Whether this kernel has the uprobe event source.
    pub fn uprobes_exist() -> bool {
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
    }

    /// Look for TLS libraries now, on this thread, and hook them. Returns the files newly
    /// hooked or refused, to be reported.
    pub fn scan(&mut self) -> Vec<Target> {
        self.scanner.as_mut().map(Scanner::scan).unwrap_or_default()
    }

    /// From now on, look for TLS libraries on a thread of its own: at once, then every
    /// `SCAN_EVERY`. What each scan newly hooked or could not hook arrives on the returned
    /// channel, to be reported (the first scan's always, even if empty).
    pub fn watch(&mut self) -> tokio::sync::mpsc::Receiver<Vec<Target>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let Some(mut scanner) = self.scanner.take() else {
            return rx;
        };
        let stop = scanner.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("tw-tls-scan".into())
            .spawn(move || {
                let mut first = true;
                while !scanner.stop.load(Ordering::Relaxed) {
                    let found = scanner.scan();
                    if (first || !found.is_empty()) && tx.blocking_send(found).is_err() {
                        return; // the agent is stopping
                    }
                    first = false;
                    std::thread::park_timeout(SCAN_EVERY);
                }
            });
        match spawned {
            Ok(t) => self.thread = Some((t, stop)),
            Err(e) => eprintln!("truncwatch: TLS: cannot start the library scan: {e}"),
        }
        rx
    }

    /// Stop the scanner's thread and let it detach its uprobes, waiting `within` at most (a
    /// thread stuck in a read, or many uprobes to remove, is left to the process's exit; a
    /// tracefs event it leaves is removed at the next start).
    pub fn stop(&mut self, within: Duration) {
        let Some((thread, stop)) = self.thread.take() else {
            return;
        };
        stop.store(true, Ordering::Relaxed);
        thread.thread().unpark();
        let deadline = Instant::now() + within;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A file exporting what a TLS library must, or hooked.
fn is_tls(t: &Target) -> bool {
    REQUIRED.iter().all(|r| t.functions.contains(r)) || t.hooked.is_ok()
}

impl Scanner {
    /// The host's libraries, then the files of processes not looked at yet (every process's
    /// every `FULL_SCAN_EVERY` scans, for libraries loaded later with `dlopen`).
    fn scan(&mut self) -> Vec<Target> {
        if self.scans.is_multiple_of(FULL_SCAN_EVERY) {
            self.seen.clear();
        }
        self.scans += 1;
        let mut report = Vec::new();
        // The host's libraries on full scans only: one upgraded in place is seen within
        // FULL_SCAN_EVERY, and at once in the maps of a process using it.
        if self.seen.is_empty()
            && let Some(root) = untrusted::open_root(0)
        {
            for p in host_libssl() {
                self.look_at(0, &root, &p, None, &mut report);
            }
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return report;
        };
        let mut alive = HashSet::new();
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            alive.insert(pid);
            if self.seen.insert(pid) {
                self.process(pid, &mut report);
            }
        }
        self.seen.retain(|p| alive.contains(p));
        if self.files.len() > MAX_REMEMBERED {
            self.files.retain(|_, t| t.hooked.is_ok());
        }
        report
    }

    /// Look at process `pid`'s executable and `libssl*` mappings, within `PROCESS_TIME`.
    fn process(&mut self, pid: u32, report: &mut Vec<Target>) {
        let budget = Budget::new(PROCESS_TIME, 0, 0);
        let Some(root) = untrusted::open_root(pid) else {
            return; // gone, or not ours to look at (no CAP_SYS_PTRACE)
        };
        let mut files = candidates(pid, &budget);
        if files.is_empty()
            && let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe"))
        {
            files.push((exe.to_string_lossy().into_owned(), None));
        }
        for (path, key) in files {
            if budget.timed_out() {
                untrusted::skipped(Skip::TimeBudget, &format!("process {pid}"));
                return;
            }
            self.look_at(pid, &root, &path, key, report);
        }
    }

    /// Look at the file at `path` inside process `pid`'s root (`root`), mapped with identity
    /// `key` if known: plan and hook it if new, else note the process.
    fn look_at(
        &mut self,
        pid: u32,
        root: &File,
        path: &str,
        key: Option<FileKey>,
        report: &mut Vec<Target>,
    ) {
        if let Some(t) = key.as_ref().and_then(|k| self.files.get_mut(k)) {
            t.note(pid);
            return;
        }
        let shown = shown_path(pid, path);
        let file = match untrusted::open_in_root(root, Path::new(path)) {
            Ok(Some(f)) => f,
            Ok(None) => return, // gone, or not ours to read
            Err(why) => return untrusted::skipped(why, &shown.to_string_lossy()),
        };
        let Some(actual) = untrusted::mapped_identity(&file) else {
            return; // empty: nothing to hook
        };
        if key.as_ref().is_some_and(|k| *k != actual) {
            return untrusted::skipped(Skip::Changed, &shown.to_string_lossy());
        }
        if let Some(t) = self.files.get_mut(&actual) {
            return t.note(pid);
        }
        let target = self.plan_and_hook(&file, shown, pid);
        if is_tls(&target) && target.hooked != Err(CAPPED.into()) {
            report.push(target.clone());
        }
        self.files.insert(actual, target);
    }

    /// What `file` exports, and the hooks if it is a TLS library (within `FILE_TIME` and
    /// `FILE_BYTES`).
    fn plan_and_hook(&mut self, file: &File, path: PathBuf, pid: u32) -> Target {
        let budget = Budget::new(FILE_TIME, FILE_BYTES, READ_CAP);
        let plan = tls_plan::plan(file, &budget);
        if let Some(why) = budget.over() {
            untrusted::skipped(why, &path.to_string_lossy());
        }
        let (functions, points) = plan.unwrap_or_default();
        let tls = REQUIRED.iter().all(|r| functions.contains(r));
        let hooked = if tls {
            self.hook(file, &path, &points)
        } else {
            Err("does not export SSL_write and SSL_read".into())
        };
        Target {
            via: points.iter().map(|p| p.at.clone()).collect(),
            path,
            functions,
            hooked,
            pids: if pid == 0 { Vec::new() } else { vec![pid] },
        }
    }

    /// Attach the TLS programs at `points` of `file` (`path` names it), through its descriptor:
    /// all of them, or (on an error) none. Refused past the caps.
    fn hook(&mut self, file: &File, path: &Path, points: &[Point]) -> Result<(), String> {
        let owner =
            std::os::unix::fs::MetadataExt::uid(&file.metadata().map_err(|e| e.to_string())?);
        let owned = self.by_owner.get(&owner).copied().unwrap_or(0);
        if self.hooked >= self.max_files || (owner != 0 && owned >= (self.max_files / 4).max(1)) {
            untrusted::skipped(Skip::HookCap, &path.to_string_lossy());
            return Err(CAPPED.into());
        }
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let probes = self
            .attach_all(&fd_path, points)
            .map_err(|e| format!("{:#}", e.context(format!("hooking {}", path.display()))))?;
        self.probes.extend(probes);
        self.hooked += 1;
        *self.by_owner.entry(owner).or_default() += 1;
        Ok(())
    }

    /// The uprobes for `points` of the file at `fd_path`, with the perf event source while it
    /// is allowed, else through tracefs. On an error none stays attached (half the calls seen
    /// would be worse than none): the probes made so far drop.
    fn attach_all(&mut self, fd_path: &Path, points: &[Point]) -> Result<Vec<UprobeEvent>> {
        let mut probes = Vec::new();
        for p in points {
            for (name, ret) in [(p.program, false), (RETURN, true)]
                .into_iter()
                .take(1 + p.ret as usize)
            {
                let prog = self
                    .programs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, fd)| fd.as_fd())
                    .with_context(|| format!("TLS program {name} missing"))?;
                let mut probe = match self.through_tracefs {
                    false => uprobe_events::attach_perf(prog, fd_path, p.offset, ret),
                    true => Err(anyhow::anyhow!("through tracefs")),
                };
                if let Err(e) = &probe
                    && (self.through_tracefs || refused(e))
                {
                    if !self.through_tracefs {
                        eprintln!(
                            "truncwatch: TLS: the perf uprobe event source needs CAP_SYS_ADMIN; \
                             making uprobes through tracefs (uprobe_events) instead"
                        );
                        self.through_tracefs = true;
                    }
                    probe = uprobe_events::attach(prog, fd_path, p.offset, ret).context(
                        "without CAP_SYS_ADMIN, uprobes need a writable tracefs: \
                         mount /sys/kernel/tracing read-write, as uid 0",
                    );
                }
                probes.push(probe.with_context(|| format!("attaching {name} at {}", p.at))?);
            }
        }
        Ok(probes)
    }
}

/// Why a TLS library was not hooked when the caps were reached.
const CAPPED: &str = "not hooked: the cap on hooked TLS libraries was reached";

impl Target {
    fn note(&mut self, pid: u32) {
        if pid != 0 && self.pids.len() < MAX_PIDS && !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }
}

/// The path of `path` in process `pid`'s root as the agent reaches it, for messages.
fn shown_path(pid: u32, path: &str) -> PathBuf {
    match pid {
        0 => PathBuf::from(path),
        _ => PathBuf::from(format!("/proc/{pid}/root{path}")),
    }
}

/// Files of process `pid` that may be TLS libraries: its executable, and the mapped files
/// named `libssl*` (path in its root, and identity), from its maps read as a stream within
/// `budget` (what stopped it early is counted).
fn candidates(pid: u32, budget: &Budget) -> Vec<(String, Option<FileKey>)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut out: Vec<(String, Option<FileKey>)> = Vec::new();
    let maps = PathBuf::from(format!("/proc/{pid}/maps"));
    let read = untrusted::maps_files(&maps, budget, |l| {
        let is_exe = exe.as_deref() == Some(Path::new(l.path));
        let is_libssl = Path::new(l.path)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libssl"));
        // A mapped file replaced since (a library upgrade) shows " (deleted)": its old inode is
        // what runs, and the path now names another file.
        let key = Some((l.dev.to_string(), l.inode));
        if (is_exe || is_libssl) && !l.deleted && !out.iter().any(|(_, k)| *k == key) {
            if out.len() == MAX_CANDIDATES {
                untrusted::skipped(
                    Skip::TooLarge,
                    &format!("process {pid}: over {MAX_CANDIDATES} libssl files"),
                );
                return false;
            }
            out.push((l.path.to_string(), key));
        }
        true
    });
    if let Err(why) = read {
        untrusted::skipped(why, &maps.to_string_lossy());
    }
    out
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

    /// This process's executable is a candidate, with the identity its maps line gives.
    #[test]
    fn candidates_from_a_real_maps_file() {
        let budget = Budget::new(PROCESS_TIME, 0, 0);
        let me = std::process::id();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let found = candidates(me, &budget);
        let (path, key) = found
            .iter()
            .find(|(p, _)| Path::new(p) == exe)
            .expect("the executable");
        let file = untrusted::open_in_root(&untrusted::open_root(me).unwrap(), Path::new(path))
            .unwrap()
            .unwrap();
        assert_eq!(untrusted::mapped_identity(&file).as_ref(), key.as_ref());
        assert_eq!(
            shown_path(7, "/usr/lib/x"),
            Path::new("/proc/7/root/usr/lib/x")
        );
    }
}
