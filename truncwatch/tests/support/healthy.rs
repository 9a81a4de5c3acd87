//! Healthy traffic from real servers that the agent must never blame on the server: clients
//! that give up on a download or a stream and close (FIN) or reset, curl's --max-filesize,
//! keep-alive closes raced by the next request, `Expect: 100-continue`, ranges, HEAD and 304.
//! None of it may be judged `short_write`, `reset_discard` or `desync`.
//!
//! Each scenario starts its server (its own process group, killed on drop), runs a client
//! that records ground truth, stops the server, and returns the server's `local` as the agent
//! reports it with the client's JSON lines, one per response (the `lab fetch` shape; see
//! [`expected_verdicts`] for what each line should be judged). Scripts and configs are in
//! `tests/servers/healthy/`. Every scenario takes a [`Head`] size: the servers add realistic
//! headers (cookies, CSP, HSTS, traceparent...) to reach it.
pub use super::heads::Head;
use super::heads::extra_headers;
use super::{BIN, Nginx, fetch, free_port, wait_listening};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian packages the servers and clients here need.
pub const DEBIAN_PACKAGES: &[&str] = &["nginx-light", "nodejs", "curl", "python3-aiohttp"];
/// PyPI packages: none (aiohttp comes from Debian, for /usr/bin/python3).
pub const PIP_PACKAGES: &[&str] = &[];

/// A scenario as a table row: its name and how to run it. What the agent must say follows
/// from what it returns: [`expected_verdicts`].
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(Head) -> (String, Vec<Value>),
}

/// Every scenario here. The verdicts expected follow from the server's `local` and the
/// client's lines: [`expected_verdicts`].
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "nginx: client closes mid-download, bytes unread (RST)",
        run: download_closed_unread,
    },
    Scenario {
        name: "nginx limit_rate: client drains, then closes (FIN)",
        run: download_closed_drained,
    },
    Scenario {
        name: "lab unix: client closes mid-download",
        run: download_closed_unix,
    },
    Scenario {
        name: "nginx: curl --max-filesize",
        run: curl_max_filesize,
    },
    Scenario {
        name: "aiohttp SSE: client closes between events (FIN)",
        run: sse_client_closes,
    },
    Scenario {
        name: "aiohttp SSE: client closes, an event unread (RST)",
        run: sse_client_closes_unread,
    },
    Scenario {
        name: "node: keep-alive close raced by requests",
        run: keepalive_close_race,
    },
    Scenario {
        name: "node: Expect: 100-continue",
        run: expect_continue_node,
    },
    Scenario {
        name: "aiohttp: Expect: 100-continue",
        run: expect_continue_aiohttp,
    },
    Scenario {
        name: "nginx: 206 single range",
        run: range,
    },
    Scenario {
        name: "nginx: 206 multipart/byteranges",
        run: multirange,
    },
    Scenario {
        name: "nginx: HEAD and 304",
        run: head_and_304_nginx,
    },
    Scenario {
        name: "node: HEAD and 304 with Content-Length",
        run: head_and_304_node,
    },
    Scenario {
        name: "aiohttp: HEAD and 304 with Content-Length",
        run: head_and_304_aiohttp,
    },
];

/// The verdict the agent must give about the response behind each of these client lines (from
/// the server at `local`), if any:
/// - an answer read whole (`end: complete`): `complete` (an interim `100 Continue` before it
///   belongs to its exchange and is not judged; `received_bytes` are the final answer's);
/// - the client closed before the end (`end: closed`), over TCP: with bytes left unread
///   (`unread_at_close` > 0) its kernel reset the connection: `peer_reset`; with none, a FIN:
///   `peer_closed`. curl's line (`client: curl`) has no `unread_at_close`; curl left body
///   unread in its socket: `peer_reset`. Over a Unix socket (`local` is a path) the close is
///   the client's end whatever it left unread: `peer_closed` (Linux then fails the server's
///   sends with EPIPE);
/// - no answer at all (`status` 0, `head_bytes` 0: a request that raced a keep-alive close):
///   nothing; the answers the server did send were each `complete`.
///
/// Never `short_write`, `reset_discard` or `desync`.
pub fn expected_verdicts(local: &str, lines: &[Value]) -> Vec<Option<&'static str>> {
    let unix = local.starts_with('/') || local.starts_with('@');
    lines
        .iter()
        .map(|l| {
            let unread = l["unread_at_close"].as_u64().unwrap_or(0) > 0;
            match l["end"].as_str() {
                Some("complete") => Some("complete"),
                Some("closed") if unix => Some("peer_closed"),
                Some("closed") if l["client"] == "curl" || unread => Some("peer_reset"),
                Some("closed") => Some("peer_closed"),
                _ if l["head_bytes"] == 0 => None,
                other => panic!("no expectation for a response that ended {other:?}: {l}"),
            }
        })
        .collect()
}

// ---- Headers ------------------------------------------------------------------------------

/// The same, as the JSON array of `[name, value]` pairs the Node and aiohttp servers take.
fn headers_json(head: Head) -> String {
    // A (name, value) tuple serializes as a two-element array.
    serde_json::to_string(&extra_headers(head)).unwrap()
}

/// The same, as nginx `add_header` lines (`always`: on 206, 304 and errors too).
pub fn nginx_add_headers(head: Head) -> String {
    extra_headers(head)
        .iter()
        .map(|(n, v)| {
            format!(
                "add_header {n} \"{}\" always;\n",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect()
}

// ---- Servers ------------------------------------------------------------------------------

fn script(name: &str) -> String {
    format!(
        "{}/tests/servers/healthy/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A server process in a process group of its own: killed, children and all, on drop.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command, what: &str) -> Proc {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {what} ({e}); Debian packages needed: {DEBIAN_PACKAGES:?}")
            });
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Debian's nginx serving /big.bin (30 MiB) with `servers/healthy/nginx.conf` and this head.
fn nginx(head: Head) -> (Nginx, String) {
    let conf = std::fs::read_to_string(script("nginx.conf")).unwrap();
    let n = Nginx::start(&[&format!("{}{conf}", nginx_add_headers(head))]);
    let local = format!("127.0.0.1:{}", n.ports[0]);
    (n, local)
}

/// Node.js with `servers/healthy/node-server.js`, closing idle keep-alive connections after
/// `keep_alive_ms` (plus what this Node adds: see [`idle_close`]).
fn node(head: Head, keep_alive_ms: u64) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new("node").args([
            &script("node-server.js"),
            &port.to_string(),
            &keep_alive_ms.to_string(),
            &headers_json(head),
        ]),
        "node",
    );
    wait_listening(port);
    (p, port)
}

/// aiohttp (Debian's python3-aiohttp, so Debian's python3) with
/// `servers/healthy/aiohttp_server.py`.
fn aiohttp(head: Head) -> (Proc, u16) {
    let port = free_port();
    let p = Proc::spawn(
        Command::new("/usr/bin/python3").args([
            &script("aiohttp_server.py"),
            &port.to_string(),
            &headers_json(head),
        ]),
        "aiohttp",
    );
    wait_listening(port);
    (p, port)
}

fn tcp(port: u16) -> String {
    format!("tcp:127.0.0.1:{port}")
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---- 1. A client that reads part of a download, then closes --------------------------------

/// nginx sends /big.bin at full speed; the client reads 1 MB of body and closes while more is
/// queued unread, so its kernel resets the connection. One line, `end: closed`,
/// `unread_at_close` > 0. Expected: `peer_reset`.
pub fn download_closed_unread(head: Head) -> (String, Vec<Value>) {
    let (_nginx, local) = nginx(head);
    let lines = fetch(
        &format!("tcp:{local}"),
        &["--path", "/big.bin", "--close-after", "1000000"],
    );
    (local, lines)
}

/// nginx sends /limited/big.bin paced (64 KiB every 125 ms); the client reads 300 000 body
/// bytes, reads on until the stream has been quiet for 50 ms, and closes with nothing unread:
/// a FIN. nginx then stops (it sees the FIN, or its next write draws the client's reset). One
/// line, `end: closed`, `unread_at_close` 0. Expected: `peer_closed`.
pub fn download_closed_drained(head: Head) -> (String, Vec<Value>) {
    let (_nginx, local) = nginx(head);
    let lines = fetch(
        &format!("tcp:{local}"),
        &[
            "--path",
            "/limited/big.bin",
            "--close-after",
            "300000",
            "--drain",
        ],
    );
    (local, lines)
}

/// The lab server writes 8 MB over a Unix socket (head padded to the size asked); the client
/// reads 1 MB of body and closes with more queued unread. The server's next write fails
/// (EPIPE). One line, `end: closed`, `unread_at_close` > 0. Expected: `peer_closed` (a Unix
/// peer's close is its FIN).
pub fn download_closed_unix(head: Head) -> (String, Vec<Value>) {
    let pad = match head {
        Head::Short => "100",
        Head::Long => "1200",
        Head::Huge => "9000",
    };
    let dir = std::env::temp_dir().join(format!("truncwatch-healthy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir
        .join(format!("dl-{}.sock", free_port()))
        .to_string_lossy()
        .into_owned();
    let mut server = Proc::spawn(
        Command::new(BIN)
            .args([
                "lab",
                "serve",
                "--listen",
                &format!("unix:{path}"),
                "--mode",
                "full",
            ])
            .args(["--body", "8000000", "--head-pad", pad]),
        "the lab server",
    );
    wait_path(&path, &mut server);
    let lines = fetch(&format!("unix:{path}"), &["--close-after", "1000000"]);
    // The server notices the client left at its next send (EPIPE), which is what ends the
    // stream for the agent; killing it before then would leave the stream unjudged (README,
    // limits). Wait until it has closed its end: only the listener holds the path then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while unix_sockets_at(&path) > 1 {
        assert!(
            Instant::now() < deadline,
            "scenario did not reproduce: the lab server kept its connection on {path} open 10 s after the client left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (path, lines)
}

/// How many Unix sockets are bound to `path` (the listener and the connections it accepted),
/// from /proc/net/unix, whose last column is the path (the columns before it are padded).
fn unix_sockets_at(path: &str) -> usize {
    let at = format!(" {path}");
    std::fs::read_to_string("/proc/net/unix")
        .expect("/proc/net/unix")
        .lines()
        .filter(|l| l.ends_with(&at))
        .count()
}

fn wait_path(path: &str, server: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "lab server not listening on {path}"
        );
        assert!(server.0.try_wait().unwrap().is_none(), "lab server exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- 2. curl --max-filesize ---------------------------------------------------------------

/// curl 7.88 checks Content-Length against --max-filesize as soon as the head is in, and gives
/// up (exit 63) without counting any body. nginx sends /buffered/big.bin's head with 256 KiB
/// of body in one writev, so curl's first read (100 KiB) leaves body unread in its socket and
/// its kernel resets. (Where the head goes out alone, as from the sendfile path, curl may close
/// before the body arrives: a FIN, then a reset as the body reaches the closed socket.) One
/// line built from curl's `-w`: `received_bytes` is the head plus the body curl counted (0),
/// not all it read; `end: closed`, `client: curl`, `curl_exit: 63`. Expected: `peer_reset`.
pub fn curl_max_filesize(head: Head) -> (String, Vec<Value>) {
    let (_nginx, local) = nginx(head);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-filesize", "1000000"])
        .args([
            "-w",
            "%{http_code} %{size_header} %{size_download} %{exitcode} %header{content-length}",
        ])
        .arg(format!("http://{local}/buffered/big.bin"))
        .output()
        .expect("curl (Debian's curl) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [status, head_bytes, body, exit, cl] = f[..] else {
        panic!("curl -w said {text:?}")
    };
    let complete = exit == 0;
    let line = json!({
        "status": status, "content_length": cl, "chunked": false, "head_bytes": head_bytes,
        "received_bytes": head_bytes + body, "complete": complete,
        "end": if complete { "complete" } else { "closed" }, "client": "curl", "curl_exit": exit,
    });
    (local, vec![line])
}

// ---- 3. Server-sent events, given up on ---------------------------------------------------

/// aiohttp streams `data: ...` every 100 ms, chunked, never ending by itself; the client reads
/// it for 2 s, then drains what came and closes 50 ms after the last event: nothing unread, a
/// FIN. aiohttp's next write draws the client's reset and the handler ends. One line,
/// `end: closed`, `chunked: true`, `unread_at_close` 0. Expected: `peer_closed`.
pub fn sse_client_closes(head: Head) -> (String, Vec<Value>) {
    sse(head, &["--drain"])
}

/// The same, but the client closes as the next event arrives, leaving it unread: its kernel
/// resets. `unread_at_close` > 0. Expected: `peer_reset`.
pub fn sse_client_closes_unread(head: Head) -> (String, Vec<Value>) {
    sse(head, &[])
}

fn sse(head: Head, how: &[&str]) -> (String, Vec<Value>) {
    let (_server, port) = aiohttp(head);
    let lines = fetch(
        &tcp(port),
        &[&["--path", "/events", "--close-after-time", "2s"], how].concat(),
    );
    (local(port), lines)
}

// ---- 4. Keep-alive close raced by the next request ----------------------------------------

/// Node closes connections idle for `keepAliveTimeout` (100 ms; Node 20.20 adds a 1 s buffer,
/// Debian's Node 18 does not: the time is measured first, on a server of its own). Ten clients
/// make three connections each, two requests per connection, the second after a gap spread
/// over ±10 ms around that time: some get their answer, some race the close and get none
/// (`status` 0, `head_bytes` 0, `end` eof or reset). Expected: `complete` for each answer,
/// nothing for the others; never `reset_discard` (Node resets a connection whose racing
/// request it did not read, but everything it wrote was acknowledged long before).
pub fn keepalive_close_race(head: Head) -> (String, Vec<Value>) {
    let idle = {
        let (_calibration, port) = node(head, 100);
        idle_close(port)
    };
    let (_server, port) = node(head, 100);
    let ms = idle.as_millis() as u64;
    let gap = format!("{}ms..{}ms", ms.saturating_sub(10), ms + 10);
    let lines = fetch(
        &tcp(port),
        &[
            "--path",
            "/small",
            "--requests",
            "2",
            "--connections",
            "3",
            "--parallel",
            "10",
            "--request-gap",
            &gap,
        ],
    );
    (local(port), lines)
}

/// How long the server at `port` keeps an idle keep-alive connection after answering.
fn idle_close(port: u16) -> Duration {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /small HTTP/1.1\r\nHost: lab\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some((name, v)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    r.read_exact(&mut vec![0; length]).unwrap();
    let answered = Instant::now();
    let n = r.read(&mut [0; 1]).unwrap_or(0);
    assert_eq!(n, 0, "the server sent more than its answer");
    answered.elapsed()
}

// ---- 5. Expect: 100-continue --------------------------------------------------------------

/// POST 1 MB with `Expect: 100-continue`, three times on one connection: Node answers
/// `100 Continue` (25 bytes), reads the body, answers 200. Three lines, each `complete` with
/// `interim_bytes` 25 and `body_sent` 1000000. Expected: `complete` for each (the interim head
/// belongs to its exchange).
pub fn expect_continue_node(head: Head) -> (String, Vec<Value>) {
    let (_server, port) = node(head, 5000);
    (local(port), upload(port))
}

/// The same against aiohttp, whose default expect handler sends the `100 Continue`.
pub fn expect_continue_aiohttp(head: Head) -> (String, Vec<Value>) {
    let (_server, port) = aiohttp(head);
    (local(port), upload(port))
}

fn upload(port: u16) -> Vec<Value> {
    let args = [
        "--method",
        "POST",
        "--path",
        "/upload",
        "--body-bytes",
        "1000000",
    ];
    fetch(
        &tcp(port),
        &[
            &args[..],
            &["--header", "Expect: 100-continue", "--requests", "3"],
        ]
        .concat(),
    )
}

// ---- 6. Ranges ----------------------------------------------------------------------------

/// `Range: bytes=100-999999` three times: 206 with Content-Length 999900 and Content-Range.
/// Expected: `complete` ×3.
pub fn range(head: Head) -> (String, Vec<Value>) {
    nginx_requests(
        head,
        &[
            "--path",
            "/big.bin",
            "--header",
            "Range: bytes=100-999999",
            "--requests",
            "3",
        ],
    )
}

/// `Range: bytes=0-99,1000-1999,500000-`: 206 multipart/byteranges, whose Content-Length
/// nginx computes. Three times. Expected: `complete` ×3.
pub fn multirange(head: Head) -> (String, Vec<Value>) {
    nginx_requests(
        head,
        &[
            "--path",
            "/big.bin",
            "--header",
            "Range: bytes=0-99,1000-1999,500000-",
            "--requests",
            "3",
        ],
    )
}

fn nginx_requests(head: Head, args: &[&str]) -> (String, Vec<Value>) {
    let (_nginx, local) = nginx(head);
    let lines = fetch(&format!("tcp:{local}"), args);
    (local, lines)
}

// ---- 7. HEAD and 304 ----------------------------------------------------------------------

/// nginx: HEAD /big.bin twice (Content-Length 31457280, no body), then
/// `If-Modified-Since` (nginx.conf sets `if_modified_since before`) twice: 304, which nginx
/// sends without Content-Length. Two connections. Expected: `complete` ×4.
pub fn head_and_304_nginx(head: Head) -> (String, Vec<Value>) {
    let (_nginx, local) = nginx(head);
    let ep = format!("tcp:{local}");
    let mut lines = fetch(
        &ep,
        &["--path", "/big.bin", "--method", "HEAD", "--requests", "2"],
    );
    let ims = "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT";
    lines.extend(fetch(
        &ep,
        &["--path", "/big.bin", "--header", ims, "--requests", "2"],
    ));
    (local, lines)
}

/// Node: HEAD /doc twice (Content-Length 5000, no body), then `If-None-Match` twice: 304
/// with Content-Length 5000 and no body. Expected: `complete` ×4.
pub fn head_and_304_node(head: Head) -> (String, Vec<Value>) {
    let (_server, port) = node(head, 5000);
    (local(port), head_and_304(port))
}

/// aiohttp: the same (it sets Content-Length 5000 on both from the body it does not send).
pub fn head_and_304_aiohttp(head: Head) -> (String, Vec<Value>) {
    let (_server, port) = aiohttp(head);
    (local(port), head_and_304(port))
}

fn head_and_304(port: u16) -> Vec<Value> {
    let mut lines = fetch(
        &tcp(port),
        &["--path", "/doc", "--method", "HEAD", "--requests", "2"],
    );
    let inm = "If-None-Match: \"doc-v1\"";
    lines.extend(fetch(
        &tcp(port),
        &["--path", "/doc", "--header", inm, "--requests", "2"],
    ));
    lines
}
