//! Hostile and broken input fed to the live agent, and faults around it: garbage and binary
//! data, heads above the capture bound, Content-Length overflowing, negative, duplicated or
//! conflicting with Transfer-Encoding, header injection, half-written heads followed by close;
//! the agent started while connections are open; the agent killed with SIGKILL and started
//! again. Never a crash, never a false flag, clear counters for what could not be judged.
#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Agent, Server, fetch, u};

const WAIT: Duration = Duration::from_secs(30);

/// Serve `response` once on a fresh loopback port (the whole of it, then close), read it all
/// as the client; the listener (hold it while verdicts are matched by the server's address:
/// once it is closed, a later case may be given the same ephemeral port) and its address.
fn serve_once(response: &[u8]) -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut server, _) = l.accept().unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut req = [0u8; 64];
    let _ = server.read(&mut req).unwrap();
    server.write_all(response).unwrap();
    drop(server);
    let mut sink = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = client.read_to_end(&mut sink);
    (l, addr.to_string())
}

kernel_test!(hostile_heads_are_never_flagged {
    let agent = Agent::start();
    let pad = "X-Pad: 0123456789012345678901234567890123456789\r\n";
    let long = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 3\r\n\r\nabc", pad.repeat(20));
    let too_long = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 3\r\n\r\nabc", pad.repeat(400));
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("Content-Length overflowing u64", b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc".to_vec(), &["unparsed"]),
        ("negative Content-Length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc".to_vec(), &["unparsed"]),
        ("conflicting Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 900\r\n\r\nabc".to_vec(), &["unparsed"]),
        ("duplicated equal Content-Lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(), &["complete"]),
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3): the chunked body is whole.
        ("chunked with a Content-Length", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 900\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), &["complete"]),
        ("injected header in a value", b"HTTP/1.1 200 OK\r\nX-A: b\\r\\nContent-Length: 900\r\nContent-Length: 3\r\n\r\nabc".to_vec(), &["complete"]),
        ("head over the 512-byte first capture", long.into_bytes(), &["complete"]),
        ("head over --max-head-bytes (20 KB)", too_long.into_bytes(), &["unparsed"]),
        ("half-written head, then close", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Half: ".to_vec(), &["unparsed"]),
        ("binary after the magic", [&b"HTTP/1.1 "[..], &[0xff, 0, 0x13, 0x37, b'\r', b'\n', 0xc3, 0x28, b'\r', b'\n', b'\r', b'\n']].concat(), &["unparsed"]),
        ("HTTP/1.0, no framing", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nsome body".to_vec(), &["unframed"]),
        ("not HTTP at all (never tracked)", (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(), &[]),
    ];
    let mut listeners = Vec::new();
    for (what, response, want) in &cases {
        let (listener, local) = serve_once(response);
        listeners.push(listener);
        let got: Vec<String> = if want.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            agent.verdicts(&local)
        } else {
            agent.wait_for(&local, want.len(), WAIT)
        }
        .iter()
        .map(|v| v["verdict"].as_str().unwrap().to_string())
        .collect();
        assert_eq!(got, *want, "{what}");
    }
    // Still alive and still right: a real short write right after.
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    let got = fetch(&srv.endpoint, &["--rcvbuf", "65536", "--read-bytes", "16384", "--read-delay", "2ms"]);
    let v = agent.wait_for(&srv.local(), 1, WAIT);
    assert_eq!(v[0]["verdict"], "short_write");
    assert_eq!(u(&v[0]["sent_bytes"]), u(&got[0]["received_bytes"]));
    // What could not be judged is counted, by reason: 6 unparsed heads (4 with contradictory
    // framing, counted invalid) in the stop summary, and nothing crashed.
    let log = agent.log.clone();
    let _ = agent.stop();
    let log = log.lock().unwrap().join("\n");
    let count = |key: &str| log.split(key).nth(1).and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()).unwrap_or(0);
    assert!(count(" unparsed=") >= 6 && count("invalid ") >= 4 && count("too long or unfinished ") >= 2, "{log}");
    assert!(!log.contains("panicked"), "{log}");
});

kernel_test!(
/// Connections open before the agent starts are not its to judge: a response already in
/// flight when it attaches, cut short afterwards, is not flagged (the agent never saw its head).
connections_open_before_start_are_never_flagged {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = l.local_addr().unwrap().to_string();
    let mut client = TcpStream::connect(&local).unwrap();
    let (mut server, _) = l.accept().unwrap();
    server.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    server.write_all(&[b'a'; 1000]).unwrap();
    let agent = Agent::start();
    // Cut short (2000 of 1000000 bytes) while the agent watches.
    server.write_all(&[b'b'; 1000]).unwrap();
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert!(got.len() < 1_000_000);
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.verdicts(&local).is_empty(), "{:?}", agent.verdicts(&local));
});

kernel_test!(
/// SIGKILL leaves nothing attached (the programs are held by the agent's file descriptors
/// only), and the next agent works, without duplicate verdicts.
sigkill_then_restart_leaves_nothing_stale {
    // The programs this agent holds, from its file descriptors (other tests' agents come and
    // go meanwhile, so counting all programs would race).
    let agent = Agent::start();
    let pid = agent.pid();
    let mut ids: Vec<String> = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("prog_id:")).map(|v| v.trim().to_string()));
    }
    ids.sort();
    ids.dedup();
    // The backend's programs, one per hook but where one serves two (the kprobe backend's
    // Unix send probes, on sendmsg and sendpage before 6.5): 4 on tracepoint, 5 on fentry,
    // 10 or more hooks on kprobe, as the "ready" line says; and the 7 TLS programs (6 where
    // calls begin, 1 where they return).
    let ready = agent.wait_log("truncwatch: ready", Duration::ZERO).expect("ready line");
    let hooks: usize = ready
        .split("backend: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("hooks in {ready:?}"));
    assert!(
        (4 + 7..=hooks + 7).contains(&ids.len()),
        "the agent holds its programs ({hooks} hooks): {ids:?}"
    );
    let want = ids.len();
    let loaded = || {
        let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ids.iter().filter(|id| text.contains(&format!("\"id\":{id},"))).count()
    };
    assert_eq!(loaded(), want);
    let _ = agent.stop_with(libc::SIGKILL);
    // The kernel frees them with the last reference, asynchronously: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while loaded() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(loaded(), 0, "agent {pid}'s programs outlived it");
    let agent = Agent::start();
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    fetch(&srv.endpoint, &["--rcvbuf", "65536", "--read-bytes", "16384", "--read-delay", "2ms"]);
    let v = agent.wait_for(&srv.local(), 1, WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let v2 = agent.verdicts(&srv.local());
    assert_eq!(v2.len(), 1, "exactly one verdict: {v:?}");
    assert_eq!(v2[0]["verdict"], "short_write");
});

kernel_test!(
/// The application never sees an error caused by truncwatch: traffic keeps flowing, every
/// response whole, while agents start, stop and crash beside it.
traffic_is_untouched_while_the_agent_starts_stops_and_crashes {
    let srv = Server::start("tcp:127.0.0.1:0", "full", 256 << 10);
    let ep = srv.endpoint.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let client = std::thread::spawn(move || {
        let mut results = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            results.extend(fetch(&ep, &["--requests", "20"]));
        }
        results
    });
    for signal in [libc::SIGTERM, libc::SIGKILL, libc::SIGINT] {
        let agent = Agent::start();
        std::thread::sleep(Duration::from_millis(300));
        let _ = agent.stop_with(signal);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = client.join().unwrap();
    assert!(results.len() >= 20, "{}", results.len());
    assert!(results.iter().all(|r| r["complete"] == true && r["end"] == "complete"), "{:?}", results.iter().find(|r| r["complete"] != true));
});

/// Either end of a stream, TCP or Unix.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A connected (client, server, server's local address) over TCP or a Unix socket (bound
/// at `name` in the tests' directory).
fn pair(unix: bool, name: &str) -> (Box<dyn Stream>, Box<dyn Stream>, String) {
    if unix {
        let path = support::unix_path(name);
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (s, _) = l.accept().unwrap();
        (Box::new(c), Box::new(s), path)
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap().to_string();
        let c = TcpStream::connect(&local).unwrap();
        let (s, _) = l.accept().unwrap();
        (Box::new(c), Box::new(s), local)
    }
}

/// Held by the tests that fill an agent's ring buffer on purpose (and the one that floods):
/// every agent reads the whole host's traffic, so one test's flood would fill another's ring
/// when they run at once, and take the room the other test keeps for its innocent.
static RING_FILLERS: Mutex<()> = Mutex::new(());

fn ring_to_myself() -> std::sync::MutexGuard<'static, ()> {
    RING_FILLERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// An agent with a 1 MiB ring buffer (a flood fills it soon) and no canary.
fn small_ring_agent() -> Agent {
    Agent::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--canary-interval",
        "0s",
        "--ring-buffer-mib",
        "1",
    ])
}

/// A connection (`pair`) whose server has sent the head of a 4 MiB response and 1 000 bytes
/// of its body; a thread reads it all. The reader (its byte count when the stream ends), the
/// server's end, its local address, the head and the body's length.
fn begin_response(
    unix: bool,
    name: &str,
) -> (
    std::thread::JoinHandle<usize>,
    Box<dyn Stream>,
    String,
    String,
    usize,
) {
    let (mut client, mut server, local) = pair(unix, name);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got.len()
    });
    let body = 4usize << 20;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n");
    server.write_all(head.as_bytes()).unwrap();
    server.write_all(&[b'a'; 1000]).unwrap();
    (reader, server, local, head, body)
}

/// More events than the ring buffer holds: the agent is stopped (SIGSTOP) while a flood of
/// responses fills its 1 MiB ring buffer, and meanwhile a response it had seen begin is sent
/// whole. Its sends are lost, so the agent sees a response that stopped short: it must say
/// `observer_loss`, never `short_write`, and count what was lost. (The kprobe backend counts
/// TCP sends off `write_seq`: a lost send event loses no bytes there, and the response sent
/// whole is `complete`, with every byte.)
fn overflow(unix: bool) {
    let _ring = ring_to_myself();
    let agent = small_ring_agent();
    let pid = agent.pid() as i32;
    let (reader, mut server, local, head, body) = begin_response(unix, "overflow");
    std::thread::sleep(Duration::from_millis(500)); // the agent has its head by now
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let flood = Server::start("tcp:127.0.0.1:0", "full", 100);
    let answers = fetch(&flood.endpoint, &["--requests", "5000"]);
    assert_eq!(answers.len(), 5000);
    for chunk in vec![b'b'; body - 1000].chunks(64 << 10) {
        server.write_all(chunk).unwrap();
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1000)); // drained
    drop(server);
    assert_eq!(
        reader.join().unwrap(),
        head.len() + body,
        "the client got it all"
    );
    let v = agent.wait_for(&local, 1, WAIT);
    assert_eq!(v.len(), 1, "{v:?}");
    if agent.backend() == "kprobe" && !unix {
        assert_eq!(v[0]["verdict"], "complete", "{}", v[0]);
        assert_eq!(support::u(&v[0]["sent_bytes"]), (head.len() + body) as u64);
    } else {
        assert_eq!(v[0]["verdict"], "observer_loss", "{}", v[0]);
    }
    let addr = agent.metrics_addr();
    std::thread::sleep(Duration::from_millis(1500)); // a metrics refresh
    let m = support::http_get(&addr, "/metrics").1;
    let lost = m
        .lines()
        .find_map(|l| l.strip_prefix("truncwatch_events_lost_total{reason=\"ring_buffer_full\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(lost.is_some_and(|n| n > 0.0), "{m}");
}

kernel_test!(tcp_overflow_is_counted_and_never_called_a_truncation {
    overflow(false);
});

kernel_test!(unix_overflow_is_counted_and_never_called_a_truncation {
    overflow(true);
});

// ---------------------------------------------------------------------------------------------
// Issue 26: hostile neighbours. The attacker runs as `nobody` where the attack needs no
// privilege.

type Lines = Arc<Mutex<Vec<String>>>;

/// The agent binary where `nobody` can run it (the build tree may be under a private home):
/// a copy in a world-readable directory, made once.
fn nobody_bin() -> &'static str {
    static COPY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("truncwatch-nobody-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("truncwatch");
        std::fs::copy(support::BIN, &bin).unwrap();
        bin.display().to_string()
    })
}

/// `setpriv` running `program` as `nobody` (uid and gid 65534, no groups).
fn as_nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    c
}

/// Collect `from`'s lines into `lines`, as bytes made text (a raw control character must reach
/// the assertions), echoing them escaped.
fn collect(from: impl Read + Send + 'static, lines: Lines, tag: &'static str) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(from)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let l = String::from_utf8_lossy(&l).into_owned();
            eprintln!("{tag}: {l:?}");
            lines.lock().unwrap().push(l);
        }
    });
}

/// Wait until `lines` has one containing `needle`.
fn wait_line(lines: &Lines, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An agent whose output is taken raw: its stdout lines (None: never read, so that its writes
/// block once the pipe is full) and its stderr lines.
struct RawAgent {
    child: std::process::Child,
    out: Option<Lines>,
    log: Lines,
}

impl RawAgent {
    fn start(args: &[&str], read_stdout: bool) -> RawAgent {
        use std::process::Stdio;
        let mut child = Command::new(support::BIN)
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Lines::default();
        collect(child.stderr.take().unwrap(), log.clone(), "agent");
        let out = read_stdout.then(|| {
            let out = Lines::default();
            collect(child.stdout.take().unwrap(), out.clone(), "agent stdout");
            out
        });
        let a = RawAgent { child, out, log };
        assert!(
            wait_line(&a.log, "truncwatch: ready", Duration::from_secs(60)).is_some(),
            "the agent did not get ready"
        );
        a
    }

    /// `host:port` of its endpoint.
    fn metrics_addr(&self) -> String {
        let l = wait_line(&self.log, "metrics on http://", Duration::ZERO).unwrap();
        l.split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches("/metrics")
            .to_string()
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value in an exposition (`name{labels}` as printed), if present.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

kernel_test!(
/// Issue 26, item 4: a name is no identity. A server that calls itself `tw-canary` (the name
/// of the canary's thread), run by `nobody`, cuts a response: reported like any other, and
/// counted under its name. Another agent's canary (a `truncwatch selftest` beside it), known
/// by its registered pid and addresses, is set aside and counted as such.
a_name_is_no_identity {
    let agent = Agent::start();
    let srv = Server::start_via(as_nobody(nobody_bin()), "tcp:127.0.0.1:0", "short-close", 8 << 20, &["--thread-name", "tw-canary"]);
    let got = fetch(&srv.endpoint, support::SLOW);
    let v = agent.wait_for_server(&srv, 1, WAIT);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!((v[0]["verdict"].as_str(), v[0]["comm"].as_str()), (Some("short_write"), Some("tw-canary")), "{}", v[0]);
    assert_eq!(u(&v[0]["sent_bytes"]), u(&got[0]["received_bytes"]));
    // Selftests one after another (each one's registry file a new one: a reader that took a
    // new file for an old one it had read, by its inode number, once printed half their probes).
    let mut selftests = Vec::new();
    for _ in 0..5 {
        // (Its stdout: verdicts about the host's other traffic, if any.)
        let st = Command::new(support::BIN).arg("selftest").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        selftests.push(st.id() as u64);
        let st = st.wait_with_output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    }
    std::thread::sleep(Duration::from_millis(1500)); // a metrics refresh
    let m = support::http_get(&agent.metrics_addr(), "/metrics").1;
    assert!(m.lines().any(|l| l.starts_with("truncwatch_responses_total{verdict=\"short_write\"") && l.contains("process=\"tw-canary\"")), "{m}");
    let other = series(&m, "truncwatch_self_traffic_verdicts_total{source=\"other_agent\"}");
    // Each: at least its probe (with --all), short write and reset discard.
    assert!(other.is_some_and(|n| n >= 15.0), "the selftests' verdicts: {m}");
    let leaked: Vec<_> = agent.stop().into_iter().filter(|v| selftests.contains(&u(&v["pid"]))).collect();
    assert!(leaked.is_empty(), "the selftests' verdicts were printed: {leaked:?}");
});

kernel_test!(
/// Issue 26, item 5: forged output lines. `nobody` serves on an abstract Unix socket whose
/// name holds a whole forged verdict line after a newline, from a thread whose name holds a
/// newline, a carriage return and a terminal escape, and cuts the response. The human line
/// shows them escaped: no forged line, no raw control character, on stdout or stderr.
hostile_names_are_escaped_in_human_lines {
    let agent = RawAgent::start(&["--all", "--format", "human", "--metrics-addr", "127.0.0.1:0", "--canary-interval", "0s"], true);
    let forged = "\n1999-01-01T00:00:00.000000Z short_write tcp 10.1.2.3:443 <- 10.9.9.9:5 pid=1 comm=nginx";
    let name = format!("@tw{}{forged}", std::process::id() % 1000);
    let comm = "ev\nil\r\u{1b}[2Kx";
    let _srv = Server::start_via(as_nobody(nobody_bin()), &format!("unix:{name}"), "short-close", 8 << 20, &["--thread-name", comm]);
    let got = fetch(&format!("unix:{name}"), support::SLOW);
    support::reproduced(got.len() == 1 && got[0]["complete"] == false, "a cut response over the abstract socket");
    let escaped_name = name.replace('\n', "\\n");
    let out = agent.out.as_ref().unwrap();
    let line = wait_line(out, &format!("short_write unix {escaped_name} "), WAIT);
    let line = line.unwrap_or_else(|| panic!("no escaped short_write line: {:?}", out.lock().unwrap()));
    assert!(line.contains(" comm=ev\\nil\\r\\u{1b}[2Kx "), "{line:?}");
    let out = out.lock().unwrap().clone();
    for l in out.iter().chain(agent.log.lock().unwrap().iter()) {
        assert!(!l.starts_with("1999-") && !l.starts_with("il\r"), "a forged line: {l:?}");
        assert!(!l.contains(['\r', '\u{1b}']), "a raw control character: {l:?}");
    }
});

/// The agent's open descriptors (`/proc/<pid>/fd`).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The agent's CPU time so far (utime + stime, clock ticks).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// GET /healthz with a budget of `limit` for all of it: the time it took, if it answered 200.
fn healthz(addr: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .ok()?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let took = start.elapsed();
    (resp.starts_with(b"HTTP/1.1 200") && took <= limit).then_some(took)
}

/// Opens up to 300 idle connections to port argv[1] and keeps them open (opening new ones as
/// the server closes some) for argv[2] seconds.
const IDLE_CROWD: &str = r#"
import socket, sys, time
port, end, conns = int(sys.argv[1]), time.time() + float(sys.argv[2]), []
while time.time() < end:
    while len(conns) < 300:
        try:
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            break
    time.sleep(0.5)
    alive = []
    for c in conns:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                c.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            c.close()
            continue
        alive.append(c)
    conns = alive
"#;

kernel_test!(
/// Issue 26, item 2: descriptors. The agent runs with a descriptor limit just above what it
/// needs (its soft and hard limit alike, so it cannot raise it) and its canary every second,
/// while `nobody` keeps 300 idle connections open to its endpoint. It must not spin on
/// accept() errors, must not exit when its canary cannot get a port, must answer /healthz
/// within 1 s throughout, must still report an innocent process's cut response, and must stop
/// within 5 s of SIGINT.
idle_endpoint_crowd_with_few_descriptors {
    // What it needs, from an agent that runs unconstrained.
    let probe = Agent::start();
    let needs = open_fds(probe.pid());
    probe.stop();
    let limit = needs + 24;
    let mut prlimit = Command::new("prlimit");
    prlimit.arg(format!("--nofile={limit}:{limit}")).arg(support::BIN);
    let agent = Agent::start_via(prlimit, &["--metrics-addr", "127.0.0.1:0", "--canary-interval", "1s"]);
    let pid = agent.pid();
    assert!(agent.wait_log("descriptor limit (RLIMIT_NOFILE) stays at", Duration::ZERO).is_some(), "it says the limit is low");
    let addr = agent.metrics_addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let mut crowd = as_nobody("/usr/bin/python3").args(["-c", IDLE_CROWD, &port, "14"]).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    let mut slowest = Duration::ZERO;
    let mut full = 0;
    // An innocent server's cut response, meanwhile.
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    let got = fetch(&srv.endpoint, support::SLOW);
    while t0.elapsed() < Duration::from_secs(8) {
        let took = healthz(&addr, Duration::from_secs(1));
        slowest = slowest.max(took.unwrap_or_else(|| panic!("/healthz did not answer within 1 s ({} s into the crowd)", t0.elapsed().as_secs())));
        full = full.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let busy = (cpu_ticks(pid) - cpu0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    eprintln!("limit {limit}, most open {full}, slowest /healthz {slowest:?}, agent CPU {:.0}%", busy * 100.0);
    assert!(full + 2 >= limit, "the crowd never took the agent to its limit ({full} of {limit})");
    assert!(busy < 0.5, "the agent spun: {:.0}% of a CPU", busy * 100.0);
    let v = agent.wait_for_server(&srv, 1, WAIT);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["verdict"], "short_write");
    assert_eq!(u(&v[0]["sent_bytes"]), u(&got[0]["received_bytes"]));
    let m = support::http_get(&addr, "/metrics").1;
    assert!(series(&m, "truncwatch_endpoint_dropped_connections_total").is_some_and(|n| n > 0.0), "{m}");
    let canary_errors = series(&m, "truncwatch_canary_errors_total").unwrap();
    let said = agent.log.lock().unwrap().iter().filter(|l| l.contains("canary could not run")).count();
    assert!(canary_errors >= 1.0 && said == 1, "canary errors {canary_errors}, said {said} times");
    // SIGINT with the crowd still there.
    let start = Instant::now();
    let log = agent.log.clone();
    agent.stop();
    let took = start.elapsed();
    let _ = crowd.kill();
    let _ = crowd.wait();
    eprintln!("stopped {took:?} after SIGINT");
    assert!(took < Duration::from_secs(5), "stopped {took:?} after SIGINT");
    assert!(log.lock().unwrap().iter().any(|l| l.contains("truncwatch: stopped;")), "a clean stop");
});

kernel_test!(
/// SIGINT stops the agent within 5 s even when its loop is stuck: here its stdout is a pipe
/// that nobody reads, full, so its next write blocks the loop. The watchdog ends it 3 s after
/// the signal, and says why.
sigint_stops_a_stuck_agent {
    let agent = RawAgent::start(&["--all", "--format", "json", "--max-lines-per-second", "0", "--metrics-addr", "127.0.0.1:0", "--canary-interval", "0s"], false);
    let srv = Server::start("tcp:127.0.0.1:0", "full", 100);
    // Far more verdict lines than a pipe holds (64 KiB).
    let answers = fetch(&srv.endpoint, &["--requests", "3000"]);
    assert_eq!(answers.len(), 3000);
    let stuck = healthz(&agent.metrics_addr(), Duration::from_secs(1)).is_none();
    eprintln!("the agent's loop is stuck on its stdout: {stuck}");
    let mut agent = agent;
    let start = Instant::now();
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        // (In an emulated guest the kernel takes seconds more to remove the kprobes and
        // uprobes of a process that exits: 6.1's kprobe backend took over 5 s there.)
        let bound = if std::env::var_os("TRUNCWATCH_IN_GUEST").is_some() { 15 } else { 5 };
        assert!(start.elapsed() < Duration::from_secs(bound), "still running {bound} s after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("exited {status} after {:?}", start.elapsed());
    if stuck {
        assert!(!status.success(), "a forced exit says so in its status");
        assert!(wait_line(&agent.log, "after SIGINT/SIGTERM: exiting now", Duration::from_secs(1)).is_some());
    }
});

/// A connection whose first events were lost: its open, and its head (issue 26: under a flood,
/// 0 of 20 innocent truncations were reported, not even as `observer_loss`). The agent is
/// stopped while a flood of heads, then of new connections' small opens, fills its 1 MiB ring
/// buffer; meanwhile a new connection begins a 4 MiB response. The agent resumes and drains;
/// the server sends 1 MiB more and closes, short. The kernel sends the lost open late, after
/// the next send: the agent must report the connection as `observer_loss` (it never saw the
/// head), never stay silent, never blame the server. (A ring with room for the small open and
/// not the head comes to the same, by the lost head: correlator unit tests.)
fn lost_open(unix: bool) {
    let _ring = ring_to_myself();
    let agent = small_ring_agent();
    let pid = agent.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let flood = Server::start("tcp:127.0.0.1:0", "full", 100);
    let answers = fetch(&flood.endpoint, &["--requests", "5000"]);
    assert_eq!(answers.len(), 5000);
    // Then new connections, whose small open events fill what room the heads left: the
    // next open is lost too, not only its head.
    assert_eq!(fetch(&flood.endpoint, &["--connections", "100"]).len(), 100);
    let (reader, mut server, local, head, _) = begin_response(unix, "lost-open");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Its ring drained before the rest is sent (an emulated guest takes seconds): while it
    // stays full, the late open is lost too, and nothing can be said of the connection.
    wait_drained(&agent);
    for chunk in vec![b'b'; 1 << 20].chunks(64 << 10) {
        server.write_all(chunk).unwrap();
    }
    drop(server);
    assert_eq!(reader.join().unwrap(), head.len() + 1000 + (1 << 20));
    let v = agent.wait_for(&local, 1, WAIT);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["verdict"], "observer_loss", "{}", v[0]);
    assert_eq!(v[0]["pid"], std::process::id(), "{}", v[0]);
}

/// Until the agent has read what its ring buffer held: a small response sent after it is
/// judged (the ring keeps its order). One whose events found the ring full is sent again, a
/// second later, for up to 60 s. (Counting events read would not do: every test's traffic
/// on the host is read too.)
fn wait_drained(agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (mut client, mut server, local) = pair(false, "");
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        if !agent.wait_for(&local, 1, Duration::from_secs(1)).is_empty() {
            return;
        }
    }
    panic!("the agent's ring buffer was not drained within 60 s");
}

kernel_test!(tcp_connection_whose_open_and_head_were_lost_is_observer_loss {
    lost_open(false);
});

kernel_test!(unix_connection_whose_open_and_head_were_lost_is_observer_loss {
    lost_open(true);
});

// A flood of cut responses from one owner (issue 26: 875 086 lines, 727 MB, in 12 s, enough
// for log rotation to push every other verdict out): past `--max-lines-per-second` its lines
// are summarised, every verdict is counted in the metrics, and an innocent server's cut
// during the flood is printed.
kernel_test!(a_flood_of_cut_responses_is_summarised_and_counted_in_full {
    let _ring = ring_to_myself();
    let agent = Agent::start_args(&["--max-lines-per-second", "20", "--metrics-addr", "127.0.0.1:0", "--canary-interval", "0s"]);
    let cut = ["--truncate-at", "100"];
    let flood = Server::start_args("tcp:127.0.0.1:0", "truncate", 1000, &[&cut[..], &["--thread-name", "tw-flood"]].concat());
    let innocent = Server::start_args("tcp:127.0.0.1:0", "truncate", 1000, &[&cut[..], &["--thread-name", "tw-innocent"]].concat());
    let flooded = Instant::now();
    let got = fetch(&flood.endpoint, &["--connections", "300"]);
    support::reproduced(got.len() == 300 && got.iter().all(|r| r["complete"] == false), "300 responses cut short");
    let seconds = flooded.elapsed().as_secs_f64();
    let addr = agent.metrics_addr();
    assert!(healthz(&addr, Duration::from_secs(1)).is_some(), "/healthz within 1 s");
    fetch(&innocent.endpoint, &[]);
    let v = agent.wait_for(&innocent.local(), 1, support::WAIT);
    assert_eq!(v[0]["verdict"], "short_write", "the innocent's cut is printed: {v:?}");
    // Every one of the flood's verdicts counted.
    let counted = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("truncwatch_responses_total{verdict=\"short_write\",side=\"server\"") && l.contains("process=\"tw-flood\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = support::http_get(&addr, "/metrics").1;
    while counted(&m) < 300.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        m = support::http_get(&addr, "/metrics").1;
    }
    assert_eq!(counted(&m), 300.0, "{m}");
    // Far under the DaemonSet's 128 MiB (proc(5): VmHWM, the peak resident set).
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    assert!(peak_kib < 128 << 10, "agent peak RSS {peak_kib} KiB");
    let stopping = Instant::now();
    let all = agent.stop_with(libc::SIGINT);
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped in {:?}", stopping.elapsed());
    let printed = all.iter().filter(|l| l["local"] == flood.local() && l["verdict"] == "short_write").count();
    let summaries: Vec<&serde_json::Value> = all
        .iter()
        .filter(|l| l["suppressed_verdict"] == "short_write" && l["side"] == "server" && l["comm"] == "tw-flood")
        .collect();
    let suppressed: u64 = summaries.iter().map(|l| u(&l["suppressed_lines"])).sum();
    assert_eq!(printed as u64 + suppressed, 300, "printed {printed}, summarised {suppressed}: {summaries:?}");
    eprintln!("FIGURES flood: 300 cut responses in {seconds:.2} s: {printed} lines printed, {suppressed} summarised in {} line(s); agent peak RSS {} MiB", summaries.len(), peak_kib >> 10);
    // A second's worth at once, then the rate (and a second's slack for the drains).
    assert!(printed >= 20 && printed as f64 <= 20.0 + 20.0 * (seconds + 1.0), "printed {printed} in {seconds:.2} s");
    assert!(summaries.iter().all(|l| l.get("verdict").is_none()), "{summaries:?}");
    let held = m
        .lines()
        .find_map(|l| l.strip_prefix("truncwatch_verdict_lines_suppressed_total "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(held > 0.0, "{m}");
});

/// The cgroup v2 tree (`cgroup2` in this process's mounts: `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host), where a test can make a cgroup of its own.
fn cgroup2_root() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| f[1].to_string())
}

// One owner's flood cannot take the ring buffer from the others (issue 26: a flood from one
// user lost 2 165 198 events, and 0 of 20 innocent truncations were reported). The agent is
// stopped (it falls behind) while a flood of 5 000 responses from a cgroup of its own fills
// its 1 MiB ring buffer; once the ring is half full that owner may add a quarter more, and
// is refused after. Meanwhile, still stopped, an innocent server in the test's cgroup cuts a
// response short: its events fit in what is left. Resumed, the agent reports the innocent's
// `short_write` with exact bytes, and counts the refused events (`owner_share`).
kernel_test!(one_owners_flood_leaves_room_for_the_others {
    if support::kprobe_backend() {
        // Documented (docs/reliability.md): the check took the kprobe backend's Unix send
        // return program past 6.1's 512 bytes of stack; its heads and sends are not held.
        eprintln!("one_owners_flood_leaves_room_for_the_others: not on the kprobe backend (no owners' share for heads and sends)");
        return;
    }
    let _ring = ring_to_myself();
    let Some(root) = cgroup2_root() else {
        return support::skip_or_fail("one_owners_flood_leaves_room_for_the_others", "no cgroup2 file system mounted");
    };
    let dir = format!("{root}/truncwatch-flood-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    // A launcher that moves itself into the cgroup, then runs what follows it.
    let in_cgroup = || {
        let mut c = Command::new("sh");
        c.args(["-c", &format!("echo $$ > {dir}/cgroup.procs && exec \"$@\""), "sh"]);
        c
    };
    let agent = small_ring_agent();
    let mut launcher = in_cgroup();
    launcher.arg(support::BIN);
    let flood = Server::start_via(launcher, "tcp:127.0.0.1:0", "full", 100, &[]);
    let pid = agent.pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = in_cgroup()
        .args([support::BIN, "lab", "fetch", "--connect", &flood.endpoint, "--requests", "5000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5000);
    let innocent = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    let got = fetch(&innocent.endpoint, support::SLOW);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let v = agent.wait_for(&innocent.local(), 1, support::WAIT);
    drop(flood);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["verdict"], "short_write", "the innocent's cut, exact: {}", v[0]);
    assert_eq!(
        u(&v[0]["missing_bytes"]),
        u(&got[0]["content_length"]) + u(&got[0]["head_bytes"]) - u(&got[0]["received_bytes"])
    );
    std::thread::sleep(Duration::from_millis(1500)); // a metrics refresh
    let m = support::http_get(&agent.metrics_addr(), "/metrics").1;
    let refused = m
        .lines()
        .find_map(|l| l.strip_prefix("truncwatch_events_lost_total{reason=\"owner_share\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    let full = m
        .lines()
        .find_map(|l| l.strip_prefix("truncwatch_events_lost_total{reason=\"ring_buffer_full\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    eprintln!("FIGURES owner share: the flood's events refused {refused}, lost to a full ring {full}");
    assert!(refused > 0.0, "{m}");
});
