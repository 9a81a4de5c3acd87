//! Hostile files (issue 26, items 1 to 3): what other processes put in front of the agent's
//! file reading, run as an unprivileged user (`nobody`) while the real agent runs.
//! - executables whose headers claim 3 GiB (a note, a `.symtab`, a `.dynsym`; sparse files
//!   that still run) and a process with tens of thousands of mappings of long paths: the
//!   agent's memory stays bounded, `/healthz` answers within 1 s throughout, an innocent
//!   server's truncation meanwhile is reported, and what was skipped is counted;
//! - a library's directory swapped for one holding a FIFO of the same name, over and over
//!   (`renameat2(RENAME_EXCHANGE)`): the scanner never blocks, and a real TLS library mapped
//!   afterwards is hooked;
//! - 300 fake `libssl.so.3` mapped by one process: a few hooked, the rest refused and counted,
//!   descriptors bounded, and the agent stops in time.
//!
//! Each test prints its figures (`FIGURES ...` lines) for docs/reliability.md.
#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Agent, SLOW, Server, WAIT, fetch, u};

/// The DaemonSet's memory limit (deploy/kubernetes): the agent must stay under it.
const LIMIT_KIB: u64 = 128 << 10;

/// What the watcher saw while an attack ran: the agent's peak memory and `/healthz` latency.
#[derive(Debug, Default)]
struct Seen {
    hwm_kib: u64,
    rss_kib: u64,
    healthz_max: Duration,
    healthz_failed: u32,
    polls: u32,
}

/// Polls the agent's `/healthz` every 100 ms (1 s timeout) and its `/proc/<pid>/status`
/// until dropped.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(agent: &Agent) -> Watcher {
        let (addr, pid) = (agent.metrics_addr(), agent.pid());
        // VmHWM from now on, not the start-up's peak (proc(5): clear_refs 5).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = healthz(&addr);
                let took = t.elapsed();
                let (hwm, rss) = memory_kib(pid);
                let mut o = out.lock().unwrap();
                o.polls += 1;
                o.healthz_max = o.healthz_max.max(took);
                o.healthz_failed += u32::from(!ok);
                (o.hwm_kib, o.rss_kib) = (o.hwm_kib.max(hwm), o.rss_kib.max(rss));
                drop(o);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watcher {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stop, print the figures under `name`, and check the bounds.
    fn finish(mut self, name: &str) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        eprintln!(
            "FIGURES {name}: VmHWM {} MiB, VmRSS max {} MiB, /healthz max {} ms over {} polls, {} failed",
            seen.hwm_kib >> 10,
            seen.rss_kib >> 10,
            seen.healthz_max.as_millis(),
            seen.polls,
            seen.healthz_failed
        );
        assert!(seen.polls > 5, "{seen:?}");
        assert_eq!(seen.healthz_failed, 0, "/healthz failed: {seen:?}");
        assert!(seen.healthz_max < Duration::from_secs(1), "{seen:?}");
        assert!(
            seen.hwm_kib < LIMIT_KIB,
            "over the DaemonSet's limit: {seen:?}"
        );
        seen
    }
}

/// `GET /healthz` answered 200 within 1 s.
fn healthz(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200")
}

/// VmHWM and VmRSS of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The value of one series in the agent's metrics (0 if absent).
fn metric(agent: &Agent, series: &str) -> u64 {
    let (_, body) = support::http_get(&agent.metrics_addr(), "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn skipped(agent: &Agent, reason: &str) -> u64 {
    metric(
        agent,
        &format!("truncwatch_untrusted_skipped_total{{reason=\"{reason}\"}}"),
    )
}

/// A directory for the attacker's files, readable by all, removed when dropped.
struct Dir(PathBuf);
impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tw-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program args` as uid/gid 65534 (`nobody`), output discarded.
fn as_nobody(program: &Path, args: &[&str]) -> Proc {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv");
    Proc(child)
}

/// A small C program that sends `argv[1]` cut HTTP responses over socket pairs (so the agent
/// looks up who sent them, and reads its executable), then sleeps `argv[2]` seconds.
const SENDER: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1, secs = argc > 2 ? atoi(argv[2]) : 5;
    const char *head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
    for (int i = 0; i < n; i++) {
        int sv[2]; char buf[256];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
        if (write(sv[0], head, strlen(head)) < 0) return 1;
        close(sv[0]);
        while (read(sv[1], buf, sizeof buf) > 0) {}
        close(sv[1]);
    }
    sleep(secs);
    return 0;
}
"#;

/// Compile `source` with gcc (`flags` added) into `dir/name`.
fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .args(flags)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc {name}");
    out
}

/// Patch the 64-bit ELF at `path` so that its headers claim 3 GiB: every `PT_NOTE`'s
/// `p_filesz` (`what` "note"), or the `sh_size` of its section of type `what` ("symtab" 2,
/// "dynsym" 11); then make it sparse to past that length. It still runs.
fn claim_3_gib(path: &Path, what: &str) {
    let mut b = std::fs::read(path).unwrap();
    let word = |b: &[u8], at: usize, n: usize| {
        b[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |v, &x| (v << 8) | u64::from(x))
    };
    let huge = (3u64 << 30).to_le_bytes();
    let (phoff, shoff) = (word(&b, 0x20, 8) as usize, word(&b, 0x28, 8) as usize);
    let (phnum, shnum) = (word(&b, 0x38, 2) as usize, word(&b, 0x3c, 2) as usize);
    let mut patched = 0;
    if what == "note" {
        for at in (0..phnum).map(|i| phoff + i * 56) {
            if word(&b, at, 4) == 4 {
                b[at + 32..at + 40].copy_from_slice(&huge);
                patched += 1;
            }
        }
    } else {
        let ty = if what == "symtab" { 2 } else { 11 };
        for at in (0..shnum).map(|i| shoff + i * 64) {
            if word(&b, at + 4, 4) == ty {
                b[at + 32..at + 40].copy_from_slice(&huge);
                patched += 1;
            }
        }
    }
    assert!(patched > 0, "no {what} in {}", path.display());
    std::fs::write(path, &b).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len((3 << 30) + (1 << 20)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An innocent server's short write, during whatever runs: reported, with exact bytes.
fn innocent_short_write_reported(agent: &Agent) {
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    let got = fetch(&srv.endpoint, SLOW);
    let v = agent.wait_for_server(&srv, 1, WAIT);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["verdict"], "short_write", "{}", v[0]);
    assert_eq!(u(&v[0]["sent_bytes"]), u(&got[0]["received_bytes"]));
}

kernel_test!(headers_claiming_gigabytes_cost_nothing {
    let dir = Dir::new("claims");
    let agent = Agent::start();
    let watch = Watcher::start(&agent);
    let before = memory_kib(agent.pid());
    // A 16 KB executable whose notes claim 3 GiB (no build-id note: the agent would hash it,
    // but it is far past the hash cap), one whose .symtab does, one whose .dynsym does.
    let note = compile(&dir.0, "note", SENDER, &["-Wl,--build-id=none"]);
    claim_3_gib(&note, "note");
    let symtab = compile(&dir.0, "symtab", SENDER, &[]);
    claim_3_gib(&symtab, "symtab");
    let dynsym = compile(&dir.0, "dynsym", SENDER, &[]);
    claim_3_gib(&dynsym, "dynsym");
    let started = Instant::now();
    let attackers: Vec<Proc> = [&note, &symtab, &dynsym]
        .iter()
        .map(|p| as_nobody(p, &["20", "8"]))
        .collect();
    innocent_short_write_reported(&agent);
    // Past the TLS scanner's next look at the new processes.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let seen = watch.finish("claims of 3 GiB");
    drop(attackers);
    eprintln!("FIGURES claims: agent VmRSS before {} MiB", before.1 >> 10);
    assert!(
        seen.hwm_kib < before.1 + (64 << 10),
        "the agent grew by more than 64 MiB: before {before:?}, {seen:?}"
    );
    assert!(skipped(&agent, "too_large") >= 2, "the note's file and the .dynsym are counted");
    assert!(
        agent.wait_log("counted in truncwatch_untrusted_skipped_total", Duration::ZERO).is_some(),
        "said on stderr"
    );
    agent.stop();
});

/// A Python program mapping the files `argv[2..]` read-only (each opened again until it is
/// a regular file, not the FIFO swapped in), then sleeping `argv[1]` seconds.
const MAPPER: &str = r#"import mmap, os, stat, sys, time
maps = []
for p in sys.argv[2:]:
    while True:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            break
        os.close(fd)
    maps.append(mmap.mmap(fd, 0, prot=mmap.PROT_READ))
    os.close(fd)
time.sleep(float(sys.argv[1]))
"#;

/// Python mapping one small file `n` times (libc's mmap: one descriptor for all; the same
/// file offset each time, so no two mappings merge), by a path of ~4000 bytes: a maps file
/// of `n` long lines.
const MANY_MAPPINGS: &str = r#"import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
for _ in range(n):
    if libc.mmap(None, 4096, 1, 2, fd, 0) in (None, ctypes.c_void_p(-1).value):
        sys.exit("mmap failed: errno %d" % ctypes.get_errno())
print('mapped', flush=True)
time.sleep(float(sys.argv[3]))
"#;

kernel_test!(a_maps_file_of_hundreds_of_megabytes_is_read_capped {
    let dir = Dir::new("maps");
    // A path of ~4000 bytes: nested directories of 250-byte names.
    let mut long = dir.0.clone();
    for i in 0..15 {
        long.push(format!("{i:02}{}", "d".repeat(248)));
    }
    std::fs::create_dir_all(&long).unwrap();
    let mut p = dir.0.clone();
    for c in long.strip_prefix(&dir.0).unwrap().components() {
        p.push(c);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = long.join("f");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    let script = dir.0.join("many.py");
    std::fs::write(&script, MANY_MAPPINGS).unwrap();
    let agent = Agent::start();
    let watch = Watcher::start(&agent);
    // 60 000 mappings (the kernel allows 65 530): some 240 MB of maps.
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"])
        .arg(&script)
        .arg(&file)
        .args(["60000", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mapper = Proc(child);
    assert_eq!(line.trim(), "mapped");
    let maps_len = std::io::copy(
        &mut std::fs::File::open(format!("/proc/{}/maps", mapper.0.id())).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    eprintln!("FIGURES maps: the mapper's maps file is {} MB", maps_len >> 20);
    innocent_short_write_reported(&agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while skipped(&agent, "too_large") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    watch.finish("maps of hundreds of MB");
    assert!(skipped(&agent, "too_large") >= 1, "the capped maps read is counted");
    drop(mapper);
    agent.stop();
});

/// Python swapping each pair of directories (`argv[2*i+1]`, `argv[2*i+2]`) with
/// `renameat2(RENAME_EXCHANGE)` in a tight loop for `argv[1]` seconds.
const SWAPPER: &str = r#"import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
end = time.time() + float(sys.argv[1])
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
while time.time() < end:
    for a, b in pairs:
        libc.renameat2(-100, a.encode(), -100, b.encode(), 2)
"#;

kernel_test!(a_fifo_swapped_in_never_blocks_the_scanner {
    let dir = Dir::new("fifo");
    // The attacker renames entries here.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let libz = ["/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("zlib (a library every Debian has), mapped under libssl's name");
    let (mapper, swapper) = (dir.0.join("mapper.py"), dir.0.join("swapper.py"));
    std::fs::write(&mapper, MAPPER).unwrap();
    std::fs::write(&swapper, SWAPPER).unwrap();
    let agent = Agent::start();
    let watch = Watcher::start(&agent);
    let python = Path::new("/usr/bin/python3");
    // A round: 20 pairs of directories, a/ holding a library named libssl.so.3 (zlib: no TLS,
    // nothing hooked, but opened and read like one), b/ a FIFO of that name, swapped all the
    // time; then each library mapped by a process of its own, by a copy of Python of its own
    // (a new executable the scanner reads first: maps list it before the libraries, which
    // widens the window between its reading the maps and opening the library, as an attacker
    // would). The scanner reads each library once (then knows it), so a round that did not
    // hit the race (one in a few) is followed by another with new files: up to eight.
    let mut refused = 0;
    let mut procs: Vec<Proc> = Vec::new();
    for round in 0..8 {
        let mut pairs = Vec::new();
        let mut libs = Vec::new();
        for i in 0..20 {
            let a = dir.0.join(format!("a{round}-{i}"));
            let b = dir.0.join(format!("b{round}-{i}"));
            for d in [&a, &b] {
                std::fs::create_dir(d).unwrap();
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
            }
            std::fs::copy(libz, a.join("libssl.so.3")).unwrap();
            let fifo = std::ffi::CString::new(b.join("libssl.so.3").to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
            libs.push(a.join("libssl.so.3").to_string_lossy().into_owned());
            pairs.extend([a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned()]);
        }
        let mut args = vec![swapper.to_str().unwrap(), "10"];
        args.extend(pairs.iter().map(String::as_str));
        procs.push(as_nobody(python, &args));
        std::thread::sleep(Duration::from_millis(300));
        procs.extend(libs.iter().enumerate().map(|(i, l)| {
            let py = dir.0.join(format!("python{round}-{i}"));
            std::fs::copy(python, &py).unwrap();
            as_nobody(&py, &[mapper.to_str().unwrap(), "30", l])
        }));
        if round == 0 {
            innocent_short_write_reported(&agent);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while refused == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            refused = skipped(&agent, "not_regular") + skipped(&agent, "changed");
        }
        if refused > 0 {
            break;
        }
    }
    eprintln!("FIGURES fifo: {refused} swapped-in files refused (not_regular + changed)");
    assert!(refused > 0, "the race was never hit: the test proves nothing");
    drop(procs);
    // A real TLS library mapped afterwards, a copy of the host's: still found and hooked.
    let real = Dir::new("fifo-real");
    let host = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libssl.so.3");
    std::fs::copy(host, real.0.join("libssl.so.3")).unwrap();
    let lib = real.0.join("libssl.so.3");
    let _user = as_nobody(python, &[mapper.to_str().unwrap(), "30", lib.to_str().unwrap()]);
    let hooked = agent
        .wait_log(&format!("{} (", lib.display()), Duration::from_secs(10))
        .filter(|l| l.contains("TLS: hooked"));
    watch.finish("FIFO swap race");
    assert!(hooked.is_some(), "the real library mapped afterwards was not hooked");
    let t = Instant::now();
    agent.stop();
    eprintln!("FIGURES fifo: agent stopped in {} ms", t.elapsed().as_millis());
});

/// A shared library exporting SSL_write and SSL_read (and nothing of TLS).
const FAKE_LIBSSL: &str = r#"
int SSL_write(void *s, const void *b, int n) { return n; }
int SSL_read(void *s, void *b, int n) { return 0; }
"#;

kernel_test!(three_hundred_fake_libssl_are_capped {
    let dir = Dir::new("fakes");
    let fake = compile(&dir.0, "libfake.so", FAKE_LIBSSL, &["-shared", "-fPIC"]);
    let mut paths = Vec::new();
    for i in 0..300 {
        let d = dir.0.join(format!("{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.join("libssl.so.3");
        std::fs::copy(&fake, &p).unwrap();
        // Owned by the attacker, as files it made would be.
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        paths.push(p.to_string_lossy().into_owned());
    }
    let mapper = dir.0.join("mapper.py");
    std::fs::write(&mapper, MAPPER).unwrap();
    let agent = Agent::start();
    let watch = Watcher::start(&agent);
    let mut args = vec![mapper.to_str().unwrap(), "30"];
    args.extend(paths.iter().map(String::as_str));
    let _fakes = as_nobody(Path::new("/usr/bin/python3"), &args);
    innocent_short_write_reported(&agent);
    let deadline = Instant::now() + Duration::from_secs(15);
    while skipped(&agent, "hook_cap") < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = skipped(&agent, "hook_cap");
    let hooked = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("TLS: hooked") && l.contains(dir.0.to_str().unwrap()))
        .count();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap().count();
    watch.finish("300 fake libssl");
    eprintln!("FIGURES fakes: {hooked} hooked, {refused} refused, {fds} descriptors open");
    // The default cap is 16, a quarter of it for one owner other than root; of one
    // process's files 64 are looked at (the rest counted as too many).
    assert_eq!(hooked, 4, "one owner's share of the cap");
    assert!(refused >= 50, "{refused}");
    assert!(fds < 200, "{fds} descriptors");
    let t = Instant::now();
    agent.stop();
    let took = t.elapsed();
    eprintln!("FIGURES fakes: agent stopped in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(10), "{took:?}");
});
