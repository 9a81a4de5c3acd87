//! Build identity: which build of which program a process runs, so that a verdict names the
//! deploy to roll back (issue 16: hyper 1.10.1 cut slow readers short, 1.11.0 did not).
//!
//! - `exe`: `readlink /proc/PID/exe`, the path as the process sees it (in its own mount
//!   namespace; the kernel appends ` (deleted)` when the file was replaced after the start).
//! - `build_id`: the executable's GNU build-id note (`NT_GNU_BUILD_ID`, written by
//!   `ld --build-id`, on by default in Debian's and most distributions' toolchains), as
//!   lowercase hex. Executables without one (Go's linker writes none unless asked, scripts are
//!   not ELF) get `sha256:<hex>` of their content instead.
//!
//! The file is read through `/proc/PID/exe`, which opens the inode the process runs even when
//! the path now names another file (a deploy that replaced the binary in place) or lives in
//! another mount namespace (a container). A file is read once per (device, inode,
//! modification time), never per response.
//!
//! Everything that touches the executable's content runs on a worker thread of its own
//! (`tw-builds`), never on the agent's event loop: a file on a slow or hostile file system, a
//! header claiming gigabytes or a large file to hash costs that thread only, within a time and
//! byte budget per file (issue 26). The event loop asks ([`Builds::for_process`]: a `readlink`
//! and a `statx` that does not call into the file's file system) and picks up the answer later.
use crate::untrusted::{self, Budget, Capped, Skip};
use object::read::ReadCache;
use rustix::fs::{AtFlags, StatxFlags};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Executables remembered at most; beyond it the cache is cleared and refills on demand.
const CACHE_CAP: usize = 1024;

/// Files larger than this are not hashed (a build without a build-id note is then unknown).
/// Most Go services (no GNU note) are below it; hashing it costs ~0.2 s of the worker's CPU.
const MAX_HASHED_BYTES: u64 = 64 << 20;
/// Time one file may take on the worker (notes and hash together).
const FILE_TIME: Duration = Duration::from_secs(2);
/// `PT_NOTE` segments looked at, and bytes read of each: a build-id note is 36 bytes, and the
/// notes linkers write before it (ABI tag, GNU properties) a few dozen more.
const MAX_NOTE_SEGMENTS: usize = 16;
const NOTE_BYTES: u64 = 64 << 10;
/// Requests waiting for the worker at most; more are dropped (counted as `busy`).
const QUEUE: usize = 256;
/// A worker that has answered nothing for this long while requests wait is taken as stuck (a
/// read that never returns, on a hung network or FUSE file system): a new one takes over, up
/// to `MAX_WORKERS` in all.
const STUCK_AFTER: Duration = Duration::from_secs(30);
const MAX_WORKERS: usize = 4;

/// What identifies one version of a file without reading it. The change time and size are in
/// it as well as the modification time: reproducible builds give every file the same mtime,
/// and an inode number is reused once its file is deleted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl FileKey {
    fn of(st: &rustix::fs::Statx) -> FileKey {
        FileKey {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
            ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        }
    }

    /// The key of the file process `proc_pid` (e.g. `/proc/1234`) runs: one `statx(2)` with
    /// `AT_STATX_DONT_SYNC`, which answers from the inode as cached and never waits on the
    /// file's file system (a network or FUSE mount another user controls).
    pub fn of_process(proc_pid: &Path) -> Option<FileKey> {
        statx(
            rustix::fs::CWD,
            &proc_pid.join("exe"),
            AtFlags::STATX_DONT_SYNC,
        )
    }

    fn of_file(file: &File) -> Option<FileKey> {
        statx(
            file,
            Path::new(""),
            AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        )
    }
}

fn statx(dir: impl std::os::fd::AsFd, path: &Path, flags: AtFlags) -> Option<FileKey> {
    let mask = StatxFlags::INO | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME;
    rustix::fs::statx(dir, path, flags, mask)
        .ok()
        .map(|st| FileKey::of(&st))
}

/// What `Builds::for_process` found: the executable's path, build id and file key, each
/// None when it could not be read (or, `pending`, not yet: the worker has it).
#[derive(Clone, Debug, Default)]
pub struct Exe {
    pub path: Option<String>,
    pub build_id: Option<Arc<str>>,
    pub key: Option<FileKey>,
    pub pending: bool,
}

/// A file's build id, known (None: it has none that could be read), or asked of the worker.
#[derive(Clone, Debug)]
pub enum Build {
    Known(Option<Arc<str>>),
    Asked(Instant),
}

/// A cache of build ids by executable file, filled by the worker thread.
#[derive(Default)]
pub struct Builds {
    by_file: HashMap<FileKey, Build>,
    worker: Option<Worker>,
    workers_started: usize,
}

/// The worker's ends: requests (a key and the `/proc/<pid>/exe` to open) and answers.
struct Worker {
    jobs: SyncSender<(FileKey, PathBuf)>,
    done: Receiver<(FileKey, Answer)>,
    waiting: usize,
    last_answer: Instant,
}

impl Builds {
    /// The executable of the process whose `/proc` directory is `proc_pid` (for example
    /// `/proc/1234`). Parts are None when they cannot be read: the process exited, or it is a
    /// kernel thread, or the agent may not look (`ptrace` access mode, proc(5)). A build not
    /// known yet is asked of the worker (`pending`), or left unknown if the worker is busy.
    pub fn for_process(&mut self, proc_pid: &Path) -> Exe {
        let path = std::fs::read_link(proc_pid.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let Some(key) = FileKey::of_process(proc_pid) else {
            return Exe {
                path,
                ..Exe::default()
            };
        };
        let (build_id, pending) = match self.state(&key) {
            Some(Build::Known(id)) => (id, false),
            Some(Build::Asked(_)) => (None, true),
            None => (None, self.ask(key, proc_pid.join("exe"))),
        };
        Exe {
            path,
            build_id,
            key: Some(key),
            pending,
        }
    }

    /// What is known of `key`'s build, after taking in the worker's answers so far.
    pub fn state(&mut self, key: &FileKey) -> Option<Build> {
        self.collect();
        self.by_file.get(key).cloned()
    }

    fn collect(&mut self) {
        let Some(w) = &mut self.worker else { return };
        while let Ok((key, answer)) = w.done.try_recv() {
            w.waiting = w.waiting.saturating_sub(1);
            w.last_answer = Instant::now();
            match answer {
                Answer::Read(id) => {
                    self.by_file.insert(key, Build::Known(id.map(Into::into)));
                }
                // Not a fact about the file: the next process that runs it asks again.
                Answer::NotOpened => {
                    if matches!(self.by_file.get(&key), Some(Build::Asked(_))) {
                        self.by_file.remove(&key);
                    }
                }
            }
        }
        if w.waiting > 0 && w.last_answer.elapsed() > STUCK_AFTER {
            untrusted::skipped(Skip::TimeBudget, "the build-id worker (stuck on a file)");
            self.worker = None; // the next request starts another
            self.by_file.retain(|_, b| matches!(b, Build::Known(_)));
        }
    }

    /// Ask the worker for `key`'s build (`exe`: where to open it). Whether it was asked.
    fn ask(&mut self, key: FileKey, exe: PathBuf) -> bool {
        if self.worker.is_none() && self.workers_started < MAX_WORKERS {
            self.worker = start_worker();
            self.workers_started += 1;
        }
        let Some(w) = &mut self.worker else {
            untrusted::skipped(Skip::Busy, "build ids (no worker)");
            return false;
        };
        match w.jobs.try_send((key, exe)) {
            Ok(()) => {
                if w.waiting == 0 {
                    w.last_answer = Instant::now();
                }
                w.waiting += 1;
                if self.by_file.len() >= CACHE_CAP {
                    self.by_file.retain(|_, b| matches!(b, Build::Asked(_)));
                }
                self.by_file.insert(key, Build::Asked(Instant::now()));
                true
            }
            Err(TrySendError::Full(_)) => {
                untrusted::skipped(Skip::Busy, "build ids (queue full)");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.worker = None;
                false
            }
        }
    }
}

/// What the worker found for one request.
enum Answer {
    /// The file's build id, or None when it has none that could be read within the budget.
    Read(Option<String>),
    /// The process had exited (or exec'd another file) before the worker opened its
    /// executable: says nothing about the file, which a short-lived process (a `curl`, a
    /// client that exits after one request) runs as well as a long-lived one.
    NotOpened,
}

/// The build-id worker: answers each request with the build id of the file it opens, if that
/// is still the file asked about.
fn start_worker() -> Option<Worker> {
    let (jobs, rx) = std::sync::mpsc::sync_channel::<(FileKey, PathBuf)>(QUEUE);
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tw-builds".into())
        .spawn(move || {
            for (key, exe) in rx {
                let answer = match open_exe(&exe).filter(|f| FileKey::of_file(f) == Some(key)) {
                    Some(f) => Answer::Read(build_id_bounded(&f, &exe)),
                    None => Answer::NotOpened,
                };
                if tx.send((key, answer)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| eprintln!("truncwatch: cannot start the build-id worker: {e}"))
        .ok()?;
    Some(Worker {
        jobs,
        done,
        waiting: 0,
        last_answer: Instant::now(),
    })
}

/// Open `/proc/<pid>/exe`: the file the process runs (a regular file: exec takes no other),
/// non-blocking all the same.
fn open_exe(exe: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(exe)
        .ok()
}

/// [`build_id`] within the per-file budget; what the budget refused is counted (`what` names
/// the file).
fn build_id_bounded(file: &File, what: &Path) -> Option<String> {
    let budget = Budget::new(
        FILE_TIME,
        MAX_NOTE_SEGMENTS as u64 * NOTE_BYTES + (1 << 20),
        1 << 20,
    );
    let id = build_id(file, &budget);
    if let Some(why) = budget.over() {
        untrusted::skipped(why, &what.to_string_lossy());
    }
    id
}

/// The build id of an executable: its GNU build-id note in hex, else `sha256:<hex>` of its
/// content (files up to `MAX_HASHED_BYTES`). None when the file cannot be read, is larger, or
/// `budget` ran out (which it then says, [`Budget::over`]).
pub fn build_id(file: &File, budget: &Budget) -> Option<String> {
    gnu_build_id(file, budget).or_else(|| {
        if budget.over().is_some() {
            return None;
        }
        if FileKey::of_file(file)?.size > MAX_HASHED_BYTES {
            budget.give_up(Skip::TooLarge);
            return None;
        }
        content_hash(file, budget)
    })
}

/// The GNU build-id note (`NT_GNU_BUILD_ID`) of a 64-bit ELF file, as lowercase hex (20 bytes,
/// 40 digits, with the default `--build-id=sha1`). Reads only the ELF header, the program
/// headers and the first `NOTE_BYTES` of each of the first `PT_NOTE` segments, whatever their
/// headers claim.
pub fn gnu_build_id(file: &File, budget: &Budget) -> Option<String> {
    use object::read::elf::{FileHeader, NoteIterator, ProgramHeader};
    let cache = ReadCache::new(file);
    let data = Capped {
        cache: &cache,
        budget,
    };
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let notes = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_NOTE);
    for ph in notes.take(MAX_NOTE_SEGMENTS) {
        let (offset, size) = ph.file_range(endian);
        let Ok(bytes) = object::ReadRef::read_bytes_at(data, offset, size.min(NOTE_BYTES)) else {
            continue;
        };
        let Ok(mut notes) = NoteIterator::<object::elf::FileHeader64<object::Endianness>>::new(
            endian,
            ph.p_align(endian),
            bytes,
        ) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"GNU"
                && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID
                && !note.desc().is_empty()
            {
                return Some(hex(note.desc()));
            }
        }
    }
    None
}

/// `sha256:<hex>` of the whole file, in positioned reads of 1 MiB, each charged to `budget`.
pub fn content_hash(file: &File, budget: &Budget) -> Option<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        if budget.timed_out() {
            return None;
        }
        let n = file.read_at(&mut buf, offset).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
    Some(format!("sha256:{}", hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_root::TempRoot;
    use std::process::Command;

    fn budget() -> Budget {
        Budget::new(FILE_TIME, 2 << 20, 1 << 20)
    }

    fn id_of(path: &Path) -> Option<String> {
        build_id(&File::open(path).unwrap(), &budget())
    }

    /// A real executable, linked by gcc with the given `--build-id` option.
    fn link(dir: &Path, name: &str, build_id: &str) -> PathBuf {
        let src = dir.join("main.c");
        std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
        let out = dir.join(name);
        let st = Command::new("gcc")
            .arg(format!("-Wl,--build-id={build_id}"))
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc runs");
        assert!(st.success(), "gcc failed");
        out
    }

    #[test]
    fn gnu_note_read_as_the_linker_wrote_it() {
        let root = TempRoot::new("build-note");
        let d = &root.0;
        let exe = link(d, "a", "0x0123456789abcdef0011223344556677deadbeef");
        assert_eq!(
            id_of(&exe).as_deref(),
            Some("0123456789abcdef0011223344556677deadbeef")
        );
        // The default (sha1) agrees with binutils' own reading of the note.
        let exe = link(d, "b", "sha1");
        let readelf = Command::new("readelf")
            .arg("-n")
            .arg(&exe)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&readelf.stdout);
        let want = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .expect("readelf prints the build id");
        assert_eq!(id_of(&exe).as_deref(), Some(want));
    }

    /// A note segment whose header claims 3 GiB (the file sparse to past that length): only
    /// `NOTE_BYTES` of it are read, and the build id in them is still found.
    #[test]
    fn a_huge_note_header_reads_a_bounded_part() {
        use object::read::elf::{FileHeader, ProgramHeader};
        let root = TempRoot::new("build-huge-note");
        let exe = link(&root.0, "a", "0x00112233445566778899aabbccddeeff00112233");
        let mut bytes = std::fs::read(&exe).unwrap();
        let h = object::elf::FileHeader64::<object::Endianness>::parse(&*bytes).unwrap();
        let e = h.endian().unwrap();
        let phoff = h.e_phoff(e) as usize;
        let i = h
            .program_headers(e, &*bytes)
            .unwrap()
            .iter()
            .position(|p| p.p_type(e) == object::elf::PT_NOTE)
            .unwrap();
        // p_filesz and p_memsz: the 8-byte fields at 32 and 40 of a 56-byte Elf64_Phdr.
        for at in [phoff + i * 56 + 32, phoff + i * 56 + 40] {
            bytes[at..at + 8].copy_from_slice(&(3u64 << 30).to_le_bytes());
        }
        let f = root.sparse("a", &bytes, 4 << 30);
        let b = budget();
        assert_eq!(
            build_id(&f, &b).as_deref(),
            Some("00112233445566778899aabbccddeeff00112233")
        );
        // Without a note to find in the part read: too large to hash, never read whole.
        let exe = link(&root.0, "none", "none");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&exe)
            .unwrap();
        f.set_len(MAX_HASHED_BYTES + 1).unwrap();
        let b = budget();
        assert_eq!(build_id(&f, &b), None);
        assert_eq!(b.over(), Some(Skip::TooLarge));
    }

    #[test]
    fn no_note_gives_the_content_hash() {
        let root = TempRoot::new("build-hash");
        let d = &root.0;
        let exe = link(d, "a", "none");
        let f = File::open(&exe).unwrap();
        assert_eq!(gnu_build_id(&f, &budget()), None);
        let sum = Command::new("sha256sum").arg(&exe).output().unwrap();
        let want = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        assert_eq!(id_of(&exe), Some(format!("sha256:{want}")));
        // Not ELF at all (a script): hashed too.
        let script = d.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let id = id_of(&script).unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
        // Too large to hash (a sparse file: nothing is written): unknown.
        let big = d.join("big");
        File::create(&big)
            .unwrap()
            .set_len(MAX_HASHED_BYTES + 1)
            .unwrap();
        assert_eq!(id_of(&big), None);
        // Out of time: unknown, and said so.
        let b = Budget::new(Duration::ZERO, 2 << 20, 1 << 20);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(content_hash(&File::open(&exe).unwrap(), &b), None);
        assert_eq!(b.over(), Some(Skip::TimeBudget));
    }

    /// The worker's answer, waited for.
    fn answered(b: &mut Builds, proc_pid: &Path) -> Exe {
        for _ in 0..500 {
            let exe = b.for_process(proc_pid);
            if !exe.pending {
                return exe;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no answer from the build-id worker");
    }

    #[test]
    fn a_process_gone_before_its_file_was_read_says_nothing_about_the_file() {
        let mut b = Builds::default();
        let key = FileKey::of_process(Path::new("/proc/self")).unwrap();
        // A short-lived process running this very file, gone when the worker opens its exe.
        assert!(b.ask(key, PathBuf::from("/proc/0/exe")));
        for _ in 0..500 {
            if !matches!(b.state(&key), Some(Build::Asked(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            b.state(&key).is_none(),
            "forgotten, not cached as buildless"
        );
        // The next process running it (this one) is named by its build.
        assert!(answered(&mut b, Path::new("/proc/self")).build_id.is_some());
    }

    #[test]
    fn this_process_and_a_replaced_binary() {
        let mut b = Builds::default();
        let me = answered(&mut b, Path::new("/proc/self"));
        assert_eq!(
            me.path.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(Path::to_str)
        );
        assert!(me.build_id.is_some());
        assert_eq!(me.key, FileKey::of_process(Path::new("/proc/self")));
        // A deploy that replaces the file while the process runs: the running process is
        // still named by the build it runs, read through /proc/PID/exe.
        let root = TempRoot::new("build-replaced");
        let d = &root.0;
        let first = link(d, "srv", "0x1111111111111111111111111111111111111111");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cp /bin/sleep {d}/run && exec {d}/run 5",
                d = d.display()
            ))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let proc_pid = PathBuf::from(format!("/proc/{}", child.id()));
        let one = answered(&mut b, &proc_pid);
        let sleep_id = id_of(Path::new("/bin/sleep"));
        assert_eq!(one.build_id.as_deref(), sleep_id.as_deref());
        assert_eq!(one.path, Some(format!("{}/run", d.display())));
        // Replace the file on disk (a new inode, as `install` and package managers do).
        std::fs::rename(&first, d.join("run")).unwrap();
        let two = answered(&mut b, &proc_pid);
        assert_eq!(
            two.build_id, one.build_id,
            "the process still runs the old build"
        );
        // (Its key changed: unlinking a file changes its ctime. Read again, same answer.)
        assert_eq!(two.path, Some(format!("{}/run (deleted)", d.display())));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
