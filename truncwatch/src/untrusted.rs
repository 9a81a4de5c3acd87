//! Reading files other processes control (executables, libraries, `/proc/<pid>/maps`) without
//! letting them choose the agent's memory, time or what it opens (issue 26):
//!
//! - every read is bounded in bytes and time by a [`Budget`], whatever the file's headers claim
//!   ([`Capped`] puts one under the `object` crate's lazy ELF parsing);
//! - `/proc/<pid>/maps` is read as a stream ([`maps_files`]), never whole;
//! - a path from another process's maps is opened inside that process's root
//!   (`openat2(RESOLVE_IN_ROOT)`), non-blocking, and only as a regular file ([`open_in_root`]);
//! - what is skipped is counted ([`skipped_counts`], exported as
//!   `truncwatch_untrusted_skipped_total`) and said once on stderr ([`skipped`]).
use object::ReadRef;
use object::read::ReadCache;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a file or a process was skipped: the `reason` label of
/// `truncwatch_untrusted_skipped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A read past its byte cap (a header claiming a huge note, symbol table or file).
    TooLarge,
    /// The file or process took longer than its time budget.
    TimeBudget,
    /// Not a regular file (a FIFO, a device, a directory put in its place).
    NotRegular,
    /// The file now at the mapped path is not the one mapped (device or inode differ).
    Changed,
    /// The file worker was busy: the request was dropped.
    Busy,
    /// The TLS hooks' cap was reached: the library was not hooked.
    HookCap,
}

impl Skip {
    pub const ALL: [Skip; 6] = [
        Skip::TooLarge,
        Skip::TimeBudget,
        Skip::NotRegular,
        Skip::Changed,
        Skip::Busy,
        Skip::HookCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLarge => "too_large",
            Skip::TimeBudget => "time_budget",
            Skip::NotRegular => "not_regular",
            Skip::Changed => "changed",
            Skip::Busy => "busy",
            Skip::HookCap => "hook_cap",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Skip::TooLarge => {
                "a read past its size cap (headers claiming more than a real file has)"
            }
            Skip::TimeBudget => "a file or process over its time budget",
            Skip::NotRegular => "not a regular file",
            Skip::Changed => "the file at the mapped path is not the one mapped",
            Skip::Busy => "the file worker was busy",
            Skip::HookCap => "the cap on hooked TLS libraries (--max-tls-libraries) was reached",
        }
    }
}

static SKIPPED: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static SAID: [AtomicBool; 6] = [const { AtomicBool::new(false) }; 6];

/// Count one thing skipped for `why`; the first of each reason is said on stderr (`context`
/// names it: a path, a pid; printed escaped (`escape`), as process-controlled text).
pub fn skipped(why: Skip, context: &str) {
    let i = why as usize;
    SKIPPED[i].fetch_add(1, Ordering::Relaxed);
    if !SAID[i].swap(true, Ordering::Relaxed) {
        eprintln!(
            "truncwatch: skipped {}: {}; said once, counted in \
             truncwatch_untrusted_skipped_total{{reason=\"{}\"}}",
            crate::escape::escape(context),
            why.what(),
            why.as_str()
        );
    }
}

/// Everything skipped so far, by reason (totals since start).
pub fn skipped_counts() -> [(&'static str, u64); 6] {
    Skip::ALL.map(|s| (s.as_str(), SKIPPED[s as usize].load(Ordering::Relaxed)))
}

/// A bound on the work done for one file or process: bytes read (in total and per read) and
/// time. Not thread-safe: one per file, on the thread that reads it.
pub struct Budget {
    deadline: Instant,
    bytes_left: Cell<u64>,
    per_read: u64,
    over: Cell<Option<Skip>>,
}

impl Budget {
    /// At most `bytes` in all, `per_read` in one read, until `time` from now.
    pub fn new(time: Duration, bytes: u64, per_read: u64) -> Budget {
        Budget {
            deadline: Instant::now() + time,
            bytes_left: Cell::new(bytes),
            per_read,
            over: Cell::new(None),
        }
    }

    /// Take `n` bytes from the budget; Err(why) if that is past it (and from then on).
    pub fn take(&self, n: u64) -> Result<(), Skip> {
        if let Some(why) = self.over.get() {
            return Err(why);
        }
        let left = self.bytes_left.get();
        let over = if n > self.per_read || n > left {
            Some(Skip::TooLarge)
        } else if Instant::now() > self.deadline {
            Some(Skip::TimeBudget)
        } else {
            None
        };
        self.over.set(over);
        self.bytes_left.set(left.saturating_sub(n));
        over.map_or(Ok(()), Err)
    }

    /// Whether the time is up (also remembered as the reason).
    pub fn timed_out(&self) -> bool {
        if self.over.get().is_none() && Instant::now() > self.deadline {
            self.over.set(Some(Skip::TimeBudget));
        }
        self.over.get() == Some(Skip::TimeBudget)
    }

    /// Give up for `why` (a file found too large before any read): refuses every read after.
    pub fn give_up(&self, why: Skip) {
        self.over.set(Some(why));
    }

    /// Why the budget refused a read, if it did.
    pub fn over(&self) -> Option<Skip> {
        self.over.get()
    }
}

/// The `object` crate's lazy reader ([`ReadCache`]: reads only the ranges asked for) with every
/// read charged to a [`Budget`]: a header that claims gigabytes makes the parse fail instead
/// of allocating them.
#[derive(Clone, Copy)]
pub struct Capped<'a> {
    pub cache: &'a ReadCache<&'a File>,
    pub budget: &'a Budget,
}

impl<'a> ReadRef<'a> for Capped<'a> {
    fn len(self) -> Result<u64, ()> {
        self.cache.len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        self.budget.take(size).map_err(|_| ())?;
        self.cache.read_bytes_at(offset, size)
    }

    /// Delimited reads (strings) are never needed here: refused, so none reads unbounded.
    fn read_bytes_at_until(self, _: std::ops::Range<u64>, _: u8) -> Result<&'a [u8], ()> {
        Err(())
    }
}

/// Up to `len` bytes of `file` from `offset` (fewer at its end), in one positioned read
/// charged to `budget`.
pub fn read_at(file: &File, offset: u64, len: u64, budget: &Budget) -> Option<Vec<u8>> {
    budget.take(len).ok()?;
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// One line of `/proc/<pid>/maps` that names a file: `start-end perms offset dev inode path`.
pub struct MapsLine<'a> {
    pub start: u64,
    /// The device as maps shows it (`major:minor` in hex).
    pub dev: &'a str,
    pub inode: u64,
    pub path: &'a str,
    /// The file was replaced or unlinked since it was mapped (` (deleted)` after the path).
    pub deleted: bool,
}

/// Bytes and lines of one `/proc/<pid>/maps` read at most (the kernel allows 65 530 mappings
/// by default, with paths of up to 4 KiB each: 250 MiB at worst).
pub const MAPS_MAX_BYTES: u64 = 8 << 20;
pub const MAPS_MAX_LINES: usize = 70_000;

/// Call `each` for every file-backed line of the maps file at `path`, read as a stream, until
/// it returns false. Err(why) if the caps (`MAPS_MAX_*`) or `budget`'s time stopped it early
/// (the lines read until then were given); an unreadable file gives Ok with no lines.
pub fn maps_files(
    path: &Path,
    budget: &Budget,
    mut each: impl FnMut(MapsLine) -> bool,
) -> Result<(), Skip> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let (mut bytes, mut line) = (0u64, Vec::with_capacity(512));
    for _ in 0..MAPS_MAX_LINES {
        line.clear();
        // The kernel writes lines of at most a path (PATH_MAX) and ~100 bytes more.
        match (&mut reader).take(8 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => bytes += n as u64,
        }
        if bytes > MAPS_MAX_BYTES {
            return Err(Skip::TooLarge);
        }
        if budget.timed_out() {
            return Err(Skip::TimeBudget);
        }
        if let Some(l) = parse_maps_line(&line)
            && !each(l)
        {
            return Ok(());
        }
    }
    Err(Skip::TooLarge)
}

/// A maps line naming a file (an absolute path), else None.
pub fn parse_maps_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
    let mut f = line.splitn(6, ' ');
    let start = u64::from_str_radix(f.next()?.split('-').next()?, 16).ok()?;
    let (_perms, _offset, dev, inode) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let path = f.next()?.trim_start_matches(' ');
    if !path.starts_with('/') {
        return None;
    }
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MapsLine {
        start,
        dev,
        inode: inode.parse().ok()?,
        path,
        deleted,
    })
}

/// Open `path` (absolute, as another process's maps names it) inside that process's root
/// (`root`: its `/proc/<pid>/root`, opened by [`open_root`]), as `openat2` with
/// `RESOLVE_IN_ROOT` resolves it: absolute symlinks and `..` stay inside that root, magic
/// links (`/proc/self/...`) are refused, and so is a symlink in the last component. Opened
/// non-blocking (a FIFO put there cannot hold the agent), and kept only if a regular file.
/// Ok(None) if there is nothing to open (gone, or not the agent's to read).
pub fn open_in_root(root: &File, path: &Path) -> Result<Option<File>, Skip> {
    use rustix::io::Errno;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let fd = match rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::ACCESS | Errno::PERM | Errno::NOTDIR) => return Ok(None),
        // A symlink where the mapped file was (ELOOP), a magic link (EXDEV), ...
        Err(_) => return Err(Skip::Changed),
    };
    let file = File::from(fd);
    let st = rustix::fs::statx(&file, "", AtFlags::EMPTY_PATH, StatxFlags::TYPE)
        .map_err(|_| Skip::Changed)?;
    if u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFREG {
        return Err(Skip::NotRegular);
    }
    Ok(Some(file))
}

/// The root directory of process `pid` as it sees it (`/proc/<pid>/root`), or the agent's own
/// (`pid` 0), to open paths in with [`open_in_root`].
pub fn open_root(pid: u32) -> Option<File> {
    let path = if pid == 0 {
        "/".to_string()
    } else {
        format!("/proc/{pid}/root")
    };
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    Some(File::from(fd))
}

/// The identity of an open file as `/proc/<pid>/maps` shows it (device `major:minor` in hex,
/// inode): the file is mapped here for a moment and the agent's own maps line read. `fstat`
/// would not do on overlayfs (a container's image, or a host whose root is an overlay): it
/// gives the overlay's device and inode, while maps, and the uprobe (`d_real_inode` in the
/// kernel's trace_uprobe), use the underlying file's. None when it cannot be mapped (empty).
pub fn mapped_identity(file: &File) -> Option<(String, u64)> {
    // SAFETY: a fresh private read-only mapping of one page of an open file, unmapped below;
    // nothing reads through it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file.as_fd()),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return None;
    }
    let mut found = None;
    // The agent's own maps: generous budget, it is not another process's file.
    let budget = Budget::new(Duration::from_secs(5), u64::MAX, u64::MAX);
    let _ = maps_files(Path::new("/proc/self/maps"), &budget, |l| {
        if l.start == addr as u64 {
            found = Some((l.dev.to_string(), l.inode));
        }
        found.is_none()
    });
    // SAFETY: the mapping made above, of length 1 (rounded to a page by the kernel).
    unsafe { libc::munmap(addr, 1) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_root::TempRoot;

    #[test]
    fn budget_refuses_past_its_caps() {
        let b = Budget::new(Duration::from_secs(60), 100, 60);
        assert!(b.take(50).is_ok() && b.over().is_none());
        assert!(b.take(61).is_err(), "past the per-read cap");
        assert_eq!(b.over(), Some(Skip::TooLarge));
        assert!(b.take(1).is_err(), "refused for good once over");
        let b = Budget::new(Duration::from_secs(60), 100, 100);
        assert!(b.take(60).is_ok() && b.take(41).is_err(), "past the total");
        let b = Budget::new(Duration::ZERO, 100, 100);
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.timed_out() && b.take(1).is_err());
        assert_eq!(b.over(), Some(Skip::TimeBudget));
    }

    #[test]
    fn capped_reader_never_allocates_what_a_header_claims() {
        let root = TempRoot::new("capped");
        let path = root.0.join("f");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let file = File::open(&path).unwrap();
        let cache = ReadCache::new(&file);
        let budget = Budget::new(Duration::from_secs(60), 1 << 20, 1 << 10);
        let r = Capped {
            cache: &cache,
            budget: &budget,
        };
        assert_eq!(r.read_bytes_at(0, 16).unwrap(), &[7u8; 16]);
        // A 3 GiB read is refused before anything is allocated or read.
        assert!(r.read_bytes_at(0, 3 << 30).is_err());
        assert_eq!(budget.over(), Some(Skip::TooLarge));
        assert!(r.read_bytes_at_until(0..4096, 0).is_err());
        // Positioned reads: bounded, short at the end of the file.
        let b = Budget::new(Duration::from_secs(60), 1 << 20, 1 << 20);
        assert_eq!(read_at(&file, 4090, 100, &b).unwrap().len(), 6);
        assert!(read_at(&file, 0, 2 << 20, &b).is_none());
    }

    #[test]
    fn maps_lines_parsed_and_capped() {
        let l = parse_maps_line(
            b"7f0e1c000000-7f0e1c021000 r-xp 00000000 fd:01 1234   /usr/lib/libssl.so.3\n",
        )
        .unwrap();
        assert_eq!(
            (l.start, l.dev, l.inode, l.path, l.deleted),
            (0x7f0e1c000000, "fd:01", 1234, "/usr/lib/libssl.so.3", false)
        );
        let l = parse_maps_line(b"1000-2000 r-xp 0 08:02 9 /srv/a b (deleted)\n").unwrap();
        assert_eq!((l.path, l.deleted), ("/srv/a b", true));
        for junk in [
            &b"7ffd-7ffe rw-p 00000000 00:00 0   [stack]\n"[..],
            b"1000-2000 r-xp 0 00:00 0\n",
            b"zz-2000 r-xp 0 08:02 9 /x\n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_maps_line(junk).is_none(), "{junk:?}");
        }
        // A maps file past the byte cap: the lines before it are given, and the cap said.
        let root = TempRoot::new("maps");
        let line = format!("1000-2000 r-xp 0 08:02 9 /{}\n", "x".repeat(4000));
        let lines = (MAPS_MAX_BYTES as usize / line.len()) + 10;
        std::fs::write(root.0.join("maps"), line.repeat(lines)).unwrap();
        let budget = Budget::new(Duration::from_secs(60), 0, 0);
        let mut n = 0;
        let r = maps_files(&root.0.join("maps"), &budget, |_| {
            n += 1;
            true
        });
        assert_eq!(r, Err(Skip::TooLarge));
        assert!(n > 0 && n < lines, "{n}");
        // The real thing: this process maps its own executable.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let mut seen = false;
        let r = maps_files(Path::new("/proc/self/maps"), &budget, |l| {
            seen |= Path::new(l.path) == exe;
            true
        });
        assert!(r.is_ok() && seen);
    }

    #[test]
    fn opens_inside_the_root_and_only_regular_files() {
        let root = TempRoot::new("in-root");
        let d = &root.0;
        std::fs::create_dir_all(d.join("lib")).unwrap();
        std::fs::write(d.join("lib/real"), b"inside").unwrap();
        // An absolute symlink resolves inside the root, not against the agent's.
        std::os::unix::fs::symlink("/lib/real", d.join("lib/abs")).unwrap();
        std::os::unix::fs::symlink("/lib", d.join("libdir")).unwrap();
        let dir = File::open(d).unwrap();
        let read = |p: &str| {
            open_in_root(&dir, Path::new(p))
                .map(|f| std::io::read_to_string(f.expect("a file")).unwrap_or_default())
        };
        assert_eq!(read("/lib/real").as_deref(), Ok("inside"));
        assert_eq!(read("/libdir/real").as_deref(), Ok("inside"));
        assert!(read("/lib/abs").is_err(), "a symlink as the last component");
        // `..` stops at the root.
        assert_eq!(read("/../../lib/real").as_deref(), Ok("inside"));
        // Magic links (/proc/<pid>/root, /proc/self/fd/...) are never followed.
        let host = open_root(0).unwrap();
        for magic in ["/proc/self/exe", "/proc/self/root/etc/hostname"] {
            assert!(open_in_root(&host, Path::new(magic)).is_err(), "{magic}");
        }
        assert!(matches!(
            open_in_root(&dir, Path::new("/nothing")),
            Ok(None)
        ));
        // A FIFO: refused at once, without blocking for a writer.
        let fifo = d.join("lib/fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert_eq!(read("/lib/fifo").err(), Some(Skip::NotRegular));
        assert_eq!(read("/lib").err(), Some(Skip::NotRegular));
        assert!(open_root(0).is_some() && open_root(std::process::id()).is_some());
    }

    #[test]
    fn mapped_identity_is_the_maps_identity() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()))
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let want = (f[3].to_string(), f[4].parse::<u64>().unwrap());
        assert_eq!(mapped_identity(&File::open(&exe).unwrap()), Some(want));
        assert_eq!(mapped_identity(&File::open("/dev/null").unwrap()), None);
    }

    #[test]
    fn skips_are_counted() {
        let before = skipped_counts()[Skip::Busy as usize].1;
        skipped(Skip::Busy, "test\n");
        skipped(Skip::Busy, "test");
        assert_eq!(skipped_counts()[Skip::Busy as usize].1, before + 2);
    }
}
