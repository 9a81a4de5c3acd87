//! Where truncwatch agents on one host tell each other who they are: a root-owned directory
//! (`/run/truncwatch/agents`) with one file per agent, naming its pid (as the kernel reports
//! it) and its canary's addresses. An agent's start-up probe and canary are real HTTP traffic;
//! every other agent on the host (a DaemonSet's next to an operator's `truncwatch selftest`,
//! tests starting several) would report them. With this, each sets them aside by identity: a
//! pid and addresses that only a root process could have written down, never a name a process
//! can give itself.
//!
//! Trust: the directory and each file must be owned by uid 0 and writable by no one else
//! (lstat, `O_NOFOLLOW`). Liveness: the owner holds an exclusive `flock` on its file for its
//! whole life, which the kernel drops when it dies (SIGKILL too). Each version of a file is a
//! new inode, locked before it is renamed into place, so a reader sees every version whole.
//! An entry is believed only for events between its start and the moment it was last seen
//! alive, or the stop it wrote on a clean exit: a pid reused after the agent died is never
//! covered.
//!
//! Everything here is best effort: an agent that cannot write the directory (not root, a
//! read-only `/run`, a container's own `/run`) is simply not known to the others, which then
//! report its probe and canary like any other process's traffic.
use crate::export::output::monotonic_ns;
use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The registry's directory; its parent is created too.
pub const DIR: &str = "/run/truncwatch/agents";
/// Entries read or cleaned at most, and bytes read per entry: the directory is root's, but a
/// bound costs nothing.
const MAX_ENTRIES: usize = 256;
const MAX_BYTES: u64 = 4096;
/// A stopped agent's entry is kept this long for the others' late verdicts, then removed.
const KEEP_STOPPED_NS: u64 = 60_000_000_000;
const MAGIC: &str = "truncwatch agent registry v1";

/// What one agent wrote about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub pid: u32,
    /// Kernel monotonic time (ns) it registered at.
    pub since: u64,
    /// Its canary's recent local addresses (server sockets).
    pub locals: Vec<String>,
    /// Set by a clean stop: kernel monotonic time (ns).
    pub stopped: Option<u64>,
}

impl Entry {
    fn encode(&self) -> String {
        let mut s = format!("{MAGIC}\npid {}\nsince {}\n", self.pid, self.since);
        for l in &self.locals {
            s += &format!("local {l}\n");
        }
        if let Some(t) = self.stopped {
            s += &format!("stopped {t}\n");
        }
        s
    }

    /// None unless it is a whole entry.
    fn decode(text: &str) -> Option<Entry> {
        let mut lines = text.lines();
        (lines.next()? == MAGIC).then_some(())?;
        let mut e = Entry::default();
        let (mut pid, mut since) = (None, None);
        for l in lines {
            match l.split_once(' ')? {
                ("pid", v) => pid = v.parse().ok(),
                ("since", v) => since = v.parse().ok(),
                ("local", v) if e.locals.len() < 32 => e.locals.push(v.to_string()),
                ("stopped", v) => e.stopped = Some(v.parse().ok()?),
                _ => {}
            }
        }
        e.pid = pid?;
        e.since = since?;
        Some(e)
    }
}

/// This agent's own entry, held locked while it lives.
pub struct Registration {
    dir: PathBuf,
    name: String,
    /// The current version, locked.
    file: File,
    versions: u64,
    entry: Entry,
}

impl Registration {
    /// Register `pid` (as the kernel reports it), ours since kernel time `since` (ns). None if
    /// the directory cannot be made or trusted (not root, read-only), or the file cannot be
    /// written.
    pub fn create(pid: u32, since: u64) -> Option<Registration> {
        Self::create_in(Path::new(DIR), pid, since)
    }

    fn create_in(dir: &Path, pid: u32, since: u64) -> Option<Registration> {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = trusted(dir, true)?;
        clean(&dir);
        let entry = Entry {
            pid,
            since,
            ..Entry::default()
        };
        let name = format!("{pid}-{}", crate::agent::self_traffic::random_hex(8));
        let file = place(&dir, &name, 0, &entry)?;
        Some(Registration {
            dir,
            name,
            file,
            versions: 1,
            entry,
        })
    }

    /// The canary is about to use `locals`: written down before any of its traffic. The last
    /// 16 are kept, for late verdicts.
    pub fn canary(&mut self, locals: &[String]) {
        self.entry.locals.extend(locals.iter().cloned());
        let drop = self.entry.locals.len().saturating_sub(16);
        self.entry.locals.drain(..drop);
        self.update();
    }

    /// A new version in place of the current one (the old one's lock goes with its file).
    fn update(&mut self) {
        if let Some(f) = place(&self.dir, &self.name, self.versions, &self.entry) {
            self.file = f;
            self.versions += 1;
        }
    }
}

impl Drop for Registration {
    /// A clean stop: its time is written; the lock goes with the file.
    fn drop(&mut self) {
        self.entry.stopped = Some(monotonic_ns());
        self.update();
    }
}

/// Write `entry` into a new file, lock it, and rename it to `name` (over the version before).
fn place(dir: &Path, name: &str, version: u64, entry: &Entry) -> Option<File> {
    let tmp = dir.join(format!(".{name}.{version}"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .ok()?;
    let placed = lock(&file, libc::LOCK_EX)
        && file.write_all(entry.encode().as_bytes()).is_ok()
        && std::fs::rename(&tmp, dir.join(name)).is_ok();
    if !placed {
        let _ = std::fs::remove_file(&tmp);
        return None;
    }
    Some(file)
}

/// The other agents' entries, as last read: the live ones by inode (each version of a file is
/// a new one), the others read again each time.
#[derive(Default)]
pub struct Peers {
    known: HashMap<u64, Known>,
    /// By pid: the entry, and until when (kernel monotonic ns) it is known to hold.
    by_pid: HashMap<u32, (Entry, u64)>,
}

/// An entry read once: its file kept open while its agent lives (to see its lock go; the
/// open file also keeps the inode number its own).
struct Known {
    file: Option<File>,
    entry: Entry,
}

impl Peers {
    /// Look at the directory again: new versions are read, the live ones' locks checked
    /// (nothing if it is missing or not trusted). A few system calls per live agent.
    pub fn reload(&mut self) {
        self.reload_from(Path::new(DIR));
    }

    fn reload_from(&mut self, dir: &Path) {
        let Some(dir) = trusted(dir, false) else {
            self.known.clear();
            self.by_pid.clear();
            return;
        };
        let now = monotonic_ns();
        let mut known = HashMap::new();
        for (ino, path) in entries(&dir) {
            let k = match self.known.remove(&ino) {
                Some(k) => k,
                None => match open_entry(&path) {
                    Some((file, entry)) => Known {
                        file: Some(file),
                        entry,
                    },
                    None => continue,
                },
            };
            known.insert(ino, k);
        }
        self.by_pid.clear();
        for k in known.values_mut() {
            // Locked: its agent lives, so the entry holds until now. Unlocked: until the clean
            // stop it wrote, or (killed) not at all; either way it never changes again.
            let alive = k
                .file
                .as_ref()
                .is_some_and(|f| !lock(f, libc::LOCK_SH | libc::LOCK_NB));
            if !alive {
                k.file = None;
            }
            let until = if alive { Some(now) } else { k.entry.stopped };
            if let Some(until) = until {
                self.by_pid.insert(k.entry.pid, (k.entry.clone(), until));
            }
        }
        // Only the live ones are kept: their open file keeps their inode number from being
        // given to a new file, which a cache by inode would take for the old one.
        known.retain(|_, k| k.file.is_some());
        self.known = known;
    }

    /// The registered agent `pid`'s entry, if it held at kernel time `ts_ns`.
    pub fn at(&self, pid: u32, ts_ns: u64) -> Option<&Entry> {
        let (e, until) = self.by_pid.get(&pid)?;
        (e.since <= ts_ns && ts_ns <= *until).then_some(e)
    }
}

/// The registry directory `dir`, if it is root's and no one else may write it or its parent
/// (`create`: make both first, as root).
fn trusted(dir: &Path, create: bool) -> Option<PathBuf> {
    if create {
        let _ = DirBuilder::new().recursive(true).mode(0o755).create(dir);
    }
    let root_only = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
    };
    (root_only(dir.parent()?) && root_only(dir)).then(|| dir.to_path_buf())
}

/// Entry files (names not starting with `.`) and their inodes, at most `MAX_ENTRIES`.
fn entries(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        .take(MAX_ENTRIES)
        .map(|e| (e.ino(), e.path()))
        .collect()
}

/// Open and read an entry: a regular file of root's that no one else may write, no symlink.
fn open_entry(path: &Path) -> Option<(File, Entry)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let m = file.metadata().ok()?;
    if !m.is_file() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return None;
    }
    let mut text = String::new();
    (&file).take(MAX_BYTES).read_to_string(&mut text).ok()?;
    let entry = Entry::decode(&text)?;
    Some((file, entry))
}

/// Remove the entries of agents that died (killed: unlocked and never stopped) or stopped
/// long ago, and unfinished files of agents that died while writing one.
fn clean(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let now = monotonic_ns();
    for e in rd.filter_map(Result::ok).take(MAX_ENTRIES) {
        let path = e.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        if !lock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            continue; // a live agent's
        }
        let unfinished = e.file_name().as_encoded_bytes().starts_with(b".");
        let old = match (unfinished, open_entry(&path).and_then(|(_, e)| e.stopped)) {
            // (Another agent may be between creating and locking it: give it a minute.)
            (true, _) => file
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|d| d.as_secs() > 60)),
            (false, Some(t)) => now.saturating_sub(t) > KEEP_STOPPED_NS,
            (false, None) => true,
        };
        if old {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// `flock(op)`: whether it was granted.
fn lock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: a valid descriptor.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_partial_ones_are_refused() {
        let e = Entry {
            pid: 42,
            since: 7,
            locals: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            stopped: Some(9),
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        let text = e.encode();
        assert_eq!(
            Entry::decode(&text[..20]),
            None,
            "cut inside the first line"
        );
        assert_eq!(Entry::decode("something else\npid 1\nsince 1\n"), None);
        assert_eq!(
            Entry::decode(&format!("{MAGIC}\npid 1\n")),
            None,
            "no since"
        );
    }

    /// As root (skipped otherwise): a live agent's entry holds until it is read, and its
    /// updates are seen; a stopped one's holds until its stop, a killed one's (unlocked, no
    /// stop written) never; a directory others may write is not read at all.
    #[test]
    fn liveness_comes_from_the_lock() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP liveness_comes_from_the_lock: not root");
            return;
        }
        let base = std::env::temp_dir().join(format!("tw-registry-{}", std::process::id()));
        let dir = base.join("run/agents");
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .unwrap();
        let mut live = Registration::create_in(&dir, 11, monotonic_ns()).unwrap();
        let stopped = Registration::create_in(&dir, 12, monotonic_ns()).unwrap();
        drop(stopped);
        // Killed: the file stays, unlocked, with no stop written.
        let killed = Entry {
            pid: 13,
            since: 1,
            ..Entry::default()
        };
        std::fs::write(dir.join("13-0"), killed.encode()).unwrap();
        let mut peers = Peers::default();
        peers.reload_from(&dir);
        assert!(
            peers.at(11, monotonic_ns()).is_none(),
            "not past the reading"
        );
        live.canary(&["127.0.0.1:5".into(), "127.0.0.1:6".into()]);
        let now = monotonic_ns();
        peers.reload_from(&dir);
        let e = peers.at(11, now).expect("the live one");
        assert_eq!(e.locals, ["127.0.0.1:5", "127.0.0.1:6"], "its update");
        assert!(peers.at(12, now).is_none(), "after its stop");
        let (e12, stop) = &peers.by_pid[&12];
        assert!(peers.at(12, e12.since).is_some() && *stop < now);
        assert!(!peers.by_pid.contains_key(&13), "killed: never");
        drop(live);
        let now = monotonic_ns();
        peers.reload_from(&dir);
        assert!(peers.at(11, now).is_none(), "stopped now");
        // Anyone may write it: not read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        peers.reload_from(&dir);
        assert!(peers.by_pid.is_empty());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn an_entry_holds_only_between_its_start_and_its_end() {
        let mut p = Peers::default();
        let e = Entry {
            pid: 5,
            since: 100,
            ..Entry::default()
        };
        p.by_pid.insert(5, (e, 200));
        assert!(p.at(5, 150).is_some());
        assert!(
            p.at(5, 99).is_none(),
            "before it registered: another process"
        );
        assert!(p.at(5, 201).is_none(), "after it was last seen alive");
        assert!(p.at(6, 150).is_none());
    }
}
