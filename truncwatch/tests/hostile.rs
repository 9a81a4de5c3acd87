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
use std::time::Duration;
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

/// A connected (client, server, server's local address) over TCP or a Unix socket.
fn pair(unix: bool) -> (Box<dyn Stream>, Box<dyn Stream>, String) {
    if unix {
        let path = support::unix_path("overflow");
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

/// More events than the ring buffer holds: the agent is stopped (SIGSTOP) while a flood of
/// responses fills its 1 MiB ring buffer, and meanwhile a response it had seen begin is sent
/// whole. Its sends are lost, so the agent sees a response that stopped short: it must say
/// `observer_loss`, never `short_write`, and count what was lost. (The kprobe backend counts
/// TCP sends off `write_seq`: a lost send event loses no bytes there, and the response sent
/// whole is `complete`, with every byte.)
fn overflow(unix: bool) {
    let agent = Agent::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--canary-interval",
        "0s",
        "--ring-buffer-mib",
        "1",
    ]);
    let pid = agent.pid() as i32;
    let (mut client, mut server, local) = pair(unix);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got.len()
    });
    let body = 4usize << 20;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n");
    server.write_all(head.as_bytes()).unwrap();
    server.write_all(&[b'a'; 1000]).unwrap();
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
