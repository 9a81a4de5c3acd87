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
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// Executables remembered at most; beyond it the cache is cleared and refills on demand.
const CACHE_CAP: usize = 1024;

/// Files larger than this are not hashed (a build without a build-id note is then unknown):
/// the hash is read in the agent's event loop.
const MAX_HASHED_BYTES: u64 = 256 << 20;

/// What identifies one version of a file without reading it. The change time and size are in
/// it as well as the modification time: reproducible builds give every file the same mtime,
/// and an inode number is reused once its file is deleted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The key of the file process `proc_pid` (e.g. `/proc/1234`) runs: one `stat(2)`.
    pub fn of_process(proc_pid: &Path) -> Option<FileKey> {
        std::fs::metadata(proc_pid.join("exe"))
            .ok()
            .map(|m| FileKey::of(&m))
    }
}

/// What `Builds::for_process` found: the executable's path, build id and file key, each
/// None when it could not be read.
#[derive(Clone, Debug, Default)]
pub struct Exe {
    pub path: Option<String>,
    pub build_id: Option<Arc<str>>,
    pub key: Option<FileKey>,
}

/// A cache of build ids by executable file.
#[derive(Default)]
pub struct Builds {
    by_file: HashMap<FileKey, Option<Arc<str>>>,
}

impl Builds {
    /// The executable of the process whose `/proc` directory is `proc_pid` (for example
    /// `/proc/1234`). Parts are None when they cannot be read: the process exited, or it is a
    /// kernel thread, or the agent may not look (`ptrace` access mode, proc(5)).
    pub fn for_process(&mut self, proc_pid: &Path) -> Exe {
        let link = proc_pid.join("exe");
        let path = std::fs::read_link(&link)
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let Some((file, key)) = File::open(&link)
            .ok()
            .and_then(|f| f.metadata().ok().map(|m| (f, FileKey::of(&m))))
        else {
            return Exe {
                path,
                ..Exe::default()
            };
        };
        let build_id = match self.by_file.get(&key) {
            Some(id) => id.clone(),
            None => {
                let id: Option<Arc<str>> = build_id(&file).map(Into::into);
                if self.by_file.len() >= CACHE_CAP {
                    self.by_file.clear();
                }
                self.by_file.insert(key, id.clone());
                id
            }
        };
        Exe {
            path,
            build_id,
            key: Some(key),
        }
    }
}

/// The build id of an executable: its GNU build-id note in hex, else `sha256:<hex>` of its
/// content (files up to 256 MiB). None when the file cannot be read or is larger.
pub fn build_id(file: &File) -> Option<String> {
    gnu_build_id(file).or_else(|| {
        let small = file.metadata().ok()?.len() <= MAX_HASHED_BYTES;
        small.then(|| content_hash(file).ok()).flatten()
    })
}

/// The GNU build-id note (`NT_GNU_BUILD_ID`) of a 64-bit ELF file, as lowercase hex (20 bytes,
/// 40 digits, with the default `--build-id=sha1`). Reads only the ELF header, the program
/// headers and the `PT_NOTE` segments (not the section or symbol tables).
pub fn gnu_build_id(file: &File) -> Option<String> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = object::ReadCache::new(file);
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&data).ok()?;
    let endian = header.endian().ok()?;
    for ph in header.program_headers(endian, &data).ok()? {
        let Ok(Some(mut notes)) = ph.notes(endian, &data) else {
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

/// `sha256:<hex>` of the whole file, read from its start (the file may be open elsewhere at
/// another offset: this reads through its own handle's offset, so use a fresh handle).
pub fn content_hash(mut file: &File) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
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

    /// A real executable, linked by gcc with the given `--build-id` option.
    fn link(dir: &Path, name: &str, build_id: &str) -> std::path::PathBuf {
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
        let f = File::open(&exe).unwrap();
        assert_eq!(
            build_id(&f).as_deref(),
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
        assert_eq!(
            gnu_build_id(&File::open(&exe).unwrap()).as_deref(),
            Some(want)
        );
    }

    #[test]
    fn no_note_gives_the_content_hash() {
        let root = TempRoot::new("build-hash");
        let d = &root.0;
        let exe = link(d, "a", "none");
        let f = File::open(&exe).unwrap();
        assert_eq!(gnu_build_id(&f), None);
        let sum = Command::new("sha256sum").arg(&exe).output().unwrap();
        let want = String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        assert_eq!(build_id(&f), Some(format!("sha256:{want}")));
        // Not ELF at all (a script): hashed too.
        let script = d.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let id = build_id(&File::open(&script).unwrap()).unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
        // Too large to hash in the event loop (a sparse file: nothing is written): unknown.
        let big = d.join("big");
        File::create(&big)
            .unwrap()
            .set_len(MAX_HASHED_BYTES + 1)
            .unwrap();
        assert_eq!(build_id(&File::open(&big).unwrap()), None);
    }

    #[test]
    fn this_process_and_a_replaced_binary() {
        let mut b = Builds::default();
        let me = b.for_process(Path::new("/proc/self"));
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
        std::thread::sleep(std::time::Duration::from_millis(300));
        let proc_pid = std::path::PathBuf::from(format!("/proc/{}", child.id()));
        let one = b.for_process(&proc_pid);
        let sleep_id = build_id(&File::open("/bin/sleep").unwrap());
        assert_eq!(one.build_id.as_deref(), sleep_id.as_deref());
        assert_eq!(one.path, Some(format!("{}/run", d.display())));
        // Replace the file on disk (a new inode, as `install` and package managers do).
        std::fs::rename(&first, d.join("run")).unwrap();
        let two = b.for_process(&proc_pid);
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
