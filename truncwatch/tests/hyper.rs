//! Issue 25's real stacks: hyper from crates.io (tests/servers/hyper/: 1.11.0 and 1.10.1, over
//! TCP and over tokio-rustls), nginx, and the lab server, each against a client that records
//! its own ground truth first (tests/servers/client/request.py, Python's socket and ssl;
//! tests/servers/tls/node-fetch.js, Node's fetch; the lab client). Each case asserts its
//! scenario happened, then one verdict per side with the bytes the client read.
//!
//! - hyper 1.11.0 answers a 100 000-byte upload without reading it; the client reads 0.5 s
//!   late: hyper's close on the unread upload resets after its FIN. Server `reset_discard`
//!   with what the client read delivered; client `truncated`.
//! - The same answer read at once, the upload sent after it: the reset drops nothing.
//!   `complete` both sides.
//! - A GET half-closed at once: hyper 1.11.0 takes the EOF as an abort and cuts its answer.
//!   Server `short_write` with `peer_ended` "fin"; client `truncated`.
//! - hyper 1.10.1 over rustls cuts a slow reader posting 1 000 of 100 000 promised bytes,
//!   then sends close_notify: client `truncated`, from Python's ssl and from Node's fetch.
//! - Three GETs pipelined to nginx on one connection, all three answers taken by one read:
//!   three `complete` on the server side; on the client side the first `complete`, the two
//!   read with it counted (`truncwatch_unjudged_responses_total{reason="pipelined_unseen"}`).
//! - The lab server's shutdown, then close on unread input: server `reset_discard`, client
//!   `truncated`.
//!
//! The hyper servers are built on demand (support::hyper). Every agent line about a case is
//! printed (`--nocapture` shows them).
#[macro_use]
mod support;

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::hyper::{Hyper, HyperServer};
use support::{Agent, Nginx, SLOW, Server, WAIT, fetch, reproduced, u};

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/servers/client/request.py"
);
const NODE_FETCH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/servers/tls/node-fetch.js"
);
/// The hyper server's body unless told: 4 MiB.
const BODY: u64 = 4 << 20;
/// The upload hyper answers without reading, as in the issue: 100 000 bytes promised.
const UPLOAD: &str = "100000";
/// The body of `hyper_1_10_tls_slow_reader_cut_is_truncated_for_python_and_node`.
const BIG_BODY: &str = "33554432";

/// request.py against 127.0.0.1:`port` with `args`: what it read of each answer and how
/// reading ended.
fn responses(port: u16, args: &[&str]) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(port.to_string())
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3 tests/servers/client/request.py");
    assert!(out.status.success(), "request.py {args:?}: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("client {args:?}: {text}");
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("request.py printed {l:?}: {e}"))
        })
        .collect()
}

/// request.py's one answer.
fn request(port: u16, args: &[&str]) -> Value {
    let mut v = responses(port, args);
    assert_eq!(v.len(), 1, "request.py {args:?}: one answer: {v:?}");
    v.remove(0)
}

/// The agent's lines about one connection (the server at `server`, the client at `client`),
/// once at least `want.0` server-side and `want.1` client-side lines came (or [`WAIT`]
/// passed), and a second more for a wrong extra line to show: (server side, client side).
fn lines(agent: &Agent, server: &str, client: &str, want: (usize, usize)) -> Vals {
    let get = || {
        let mut s = agent.verdicts(server);
        s.retain(|v| v["peer"] == client);
        let mut c = agent.client_verdicts(server);
        c.retain(|v| v["local"] == client);
        (s, c)
    };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let (s, c) = get();
        if s.len() >= want.0 && c.len() >= want.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (s, c) = get();
    for v in s.iter().chain(&c) {
        println!("agent: {v}");
    }
    (s, c)
}

type Vals = (Vec<Value>, Vec<Value>);

/// The one line in `v` (`side` names it in the failure).
fn one<'a>(v: &'a [Value], side: &str) -> &'a Value {
    assert_eq!(v.len(), 1, "exactly one {side} line: {v:?}");
    &v[0]
}

/// A client's own address, from request.py's line.
fn local(got: &Value) -> &str {
    got["local"].as_str().expect("request.py names its address")
}

/// What request.py read, head and body.
fn received(got: &Value) -> u64 {
    u(&got["received_bytes"])
}

kernel_test!(unread_upload_read_late_is_reset_discard_on_the_server {
    let agent = Agent::start();
    let srv = HyperServer::start(Hyper::V1_11_0, &[]);
    // A small receive buffer: hyper's last bytes wait in its socket when it closes on the
    // unread upload, and the reset drops them.
    let got = request(
        srv.port,
        &["--method", "POST", "--promise", UPLOAD, "--rcvbuf", "65536", "--read-after", "0.5"],
    );
    let expected = u(&got["head_bytes"]) + BODY;
    reproduced(
        got["status"] == 200 && got["end"] == "reset" && received(&got) < expected,
        &format!("hyper's close on the unread upload should reset the late reader: {got}"),
    );
    let (server, client) = lines(&agent, &srv.local(), local(&got), (1, 1));
    let v = one(&server, "server-side");
    assert_eq!(v["verdict"], "reset_discard", "{v}");
    assert_eq!(v["comm"], Hyper::V1_11_0.bin(), "{v}");
    assert_eq!(
        (u(&v["sent_bytes"]), u(&v["expected_bytes"])),
        (expected, expected),
        "hyper 1.11.0 flushes before its shutdown: all handed over: {v}"
    );
    assert_eq!(u(&v["delivered_bytes"]), received(&got), "what the client read: {v}");
    assert!(u(&v["unacked_bytes"]) >= expected - received(&got), "{v}");
    assert!(u(&v["evidence"]["unread_bytes"]) > 0, "the upload hyper left unread: {v}");
    let c = one(&client, "client-side");
    assert_eq!(c["verdict"], "truncated", "{c}");
    assert_eq!(u(&c["received_bytes"]), received(&got), "{c}");
});

kernel_test!(unread_upload_read_at_once_is_complete {
    let agent = Agent::start();
    let srv = HyperServer::start(Hyper::V1_11_0, &[]);
    // The client's buffer holds the whole answer, read at once; the upload comes 0.5 s after
    // its head, to hyper's closed socket, which resets: after every byte was delivered.
    let got = request(
        srv.port,
        &[
            "--method", "POST", "--promise", UPLOAD, "--send", "0", "--send-rest-after", "0.5",
            "--rcvbuf", "16777216", "--read-past-end",
        ],
    );
    let expected = u(&got["head_bytes"]) + BODY;
    reproduced(
        got["complete"] == true
            && got["after"] == "eof"
            && (got["rest_end"] == "ECONNRESET" || got["rest_end"] == "EPIPE"),
        &format!("the whole answer, hyper's FIN, then its reset of the late upload: {got}"),
    );
    let (server, client) = lines(&agent, &srv.local(), local(&got), (1, 1));
    let v = one(&server, "server-side");
    assert_eq!(v["verdict"], "complete", "{v}");
    assert_eq!(
        (u(&v["sent_bytes"]), u(&v["delivered_bytes"])),
        (expected, expected),
        "{v}"
    );
    let c = one(&client, "client-side");
    assert_eq!(c["verdict"], "complete", "{c}");
    assert_eq!(u(&c["received_bytes"]), expected, "{c}");
});

/// request.py's GET with an at-once half-close, until hyper cut the answer (at most five
/// tries): hyper's own race decides, on each connection, whether it reads the EOF before its
/// answer (no answer at all), while writing it (the cut this case is about) or after it (all
/// of it). Its 8 MiB body outgrows the kernel's buffers (the client's is 64 KiB and it reads
/// 0.5 s late), so an EOF read while writing always finds some of the body unwritten.
fn half_closed_cut(port: u16) -> Value {
    let args = ["--half-close", "--rcvbuf", "65536", "--read-after", "0.5"];
    for _ in 0..5 {
        let got = request(port, &args);
        if got["status"] == 200 && got["complete"] == false && got["end"] == "eof" {
            return got;
        }
    }
    reproduced(
        false,
        "hyper never cut its answer to a half-closed GET in five tries",
    );
    unreachable!()
}

kernel_test!(half_closing_client_is_short_write_with_peer_fin {
    let agent = Agent::start();
    let body = 8u64 << 20;
    let srv = HyperServer::start(Hyper::V1_11_0, &["--body", &body.to_string()]);
    let got = half_closed_cut(srv.port);
    let (server, client) = lines(&agent, &srv.local(), local(&got), (1, 1));
    let v = one(&server, "server-side");
    assert_eq!(v["verdict"], "short_write", "the client wanted the answer: {v}");
    assert_eq!(u(&v["sent_bytes"]), received(&got), "{v}");
    assert_eq!(u(&v["delivered_bytes"]), received(&got), "{v}");
    assert_eq!(u(&v["expected_bytes"]), u(&got["head_bytes"]) + body, "{v}");
    assert_eq!(v["evidence"]["peer_ended"], "fin", "its half-close, shown: {v}");
    let c = one(&client, "client-side");
    assert_eq!(c["verdict"], "truncated", "{c}");
    assert_eq!(u(&c["received_bytes"]), received(&got), "{c}");
});

kernel_test!(hyper_1_10_tls_slow_reader_cut_is_truncated_for_python_and_node {
    let dir = std::env::temp_dir().join(format!("truncwatch-hyper-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = support::certificate(&dir);
    let agent = Agent::start();
    // A body larger than the buffers Linux grows for it (the server's send buffer alone may
    // reach 4 MiB), so that hyper blocks on a full send buffer, as a slow reader makes it: with
    // 4 MiB, Python's client once read the whole body in a clean-clone run, Node's in guests.
    let srv = HyperServer::start(Hyper::V1_10_1, &["--tls", &cert, &key, "--body", BIG_BODY]);
    let slow = ["--rcvbuf", "65536", "--read-bytes", "16384", "--read-delay", "0.002"];
    let post = ["--tls", "--method", "POST", "--promise", UPLOAD, "--send", "1000"];
    let got = request(srv.port, &[&post[..], &slow].concat());
    let head = u(&got["head_bytes"]);
    reproduced(
        got["status"] == 200
            && got["complete"] == false
            && got["end"] == "close_notify"
            && received(&got) > head,
        &format!("hyper 1.10.1 should end the stream, close_notify and all, short: {got}"),
    );
    let (server, client) = lines(&agent, &srv.local(), local(&got), (0, 1));
    println!("server side (rustls: not seen today): {server:?}");
    let c = one(&client, "Python's client-side");
    assert_eq!((&c["verdict"], &c["tls"]), (&"truncated".into(), &true.into()), "{c}");
    assert_eq!(u(&c["received_bytes"]), received(&got), "{c}");
    assert_eq!(u(&c["expected_bytes"]), head + BIG_BODY.parse::<u64>().unwrap(), "{c}");

    let node = node_fetch(&agent, srv.port);
    // Its answer's head is the same as Python's (both uploads left open: `connection: close`).
    let bytes = head + u(&node["body_bytes"]);
    let mut v = agent.client_verdicts(&srv.local());
    v.retain(|v| v["local"] != local(&got));
    for x in &v {
        println!("agent: {x}");
    }
    let c = one(&v, "Node's client-side");
    assert_eq!((&c["verdict"], &c["tls"]), (&"truncated".into(), &true.into()), "{c}");
    // What Node's TLS layer handed the process (its SSL_read calls), which the agent counts, is
    // at least what fetch's reader got: fetch drops the chunks still queued in its body stream
    // when the stream errors at the cut (seen: 12 632 bytes, kprobe backend in the 6.12 guest).
    let extra = u(&c["received_bytes"]).checked_sub(bytes);
    assert!(extra.is_some_and(|x| x <= NODE_QUEUE), "{c} {node}");
    let _ = std::fs::remove_dir_all(&dir);
});

/// Bytes Node's fetch may hold in its body stream's queue, read from TLS but not yet by the
/// application, and drop when the stream errors: a slow reader's queue fills to the stream's
/// high-water mark and a socket read or two beyond it (undici reads up to 64 KiB at a time).
const NODE_QUEUE: u64 = 256 << 10;

/// Node's fetch posting the same open upload to hyper 1.10.1 and reading slowly, after the
/// agent has hooked Node's own OpenSSL (a node process started first, until the agent's scan
/// says so): what it read. Waits for the agent's client-side line about it.
fn node_fetch(agent: &Agent, port: u16) -> Value {
    let mut idle = Command::new("node")
        .args(["-e", "setTimeout(() => {}, 60000)"])
        .spawn()
        .expect("node (Node.js 20) is needed");
    let hooked = agent.wait_log("/node (", Duration::from_secs(15));
    println!(
        "node's TLS: {}",
        hooked.as_deref().unwrap_or("no hook of its own logged")
    );
    let out = Command::new("node")
        .arg(NODE_FETCH)
        .arg(port.to_string())
        // 10 ms after each chunk (undici hands over up to 64 KiB at a time): slow enough that
        // the socket's buffers fill however fast the machine (in a TCG guest, 2 ms was not).
        .args(["--promise", UPLOAD, "--send", "1000", "--read-delay", "10"])
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .stderr(Stdio::null())
        .output()
        .expect("run node tests/servers/tls/node-fetch.js");
    let _ = idle.kill();
    let _ = idle.wait();
    let node: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("node-fetch.js printed {:?}: {e}", out.stdout));
    println!("node fetch: {node}");
    reproduced(
        node["status"] == 200
            && node["complete"] == false
            && node["code"] == "UND_ERR_RES_CONTENT_LENGTH_MISMATCH"
            && u(&node["body_bytes"]) < BIG_BODY.parse().unwrap(),
        &format!("Node should read a body cut short: {node}"),
    );
    agent.wait_for_client(&format!("127.0.0.1:{port}"), 2, WAIT);
    std::thread::sleep(Duration::from_secs(1));
    node
}

#[test]
fn pipelined_gets_to_nginx_are_judged_or_counted() {
    if !support::nginx_or_skip("pipelined_gets_to_nginx_are_judged_or_counted") {
        return;
    }
    let agent = Agent::start();
    let ngx = Nginx::start(&[""]);
    let front = format!("127.0.0.1:{}", ngx.ports[0]);
    // The three answers are in the socket before the first read, which takes them all.
    let args = [
        "--path",
        "/1k.bin",
        "--requests",
        "3",
        "--read-after",
        "0.3",
    ];
    let got = responses(ngx.ports[0], &args);
    reproduced(
        got.len() == 3 && got.iter().all(|r| r["complete"] == true),
        &format!("three whole answers on one connection: {got:?}"),
    );
    let (server, client) = lines(&agent, &front, local(&got[0]), (3, 1));
    let kinds = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|x| x["verdict"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        kinds(&server),
        ["complete"; 3],
        "server side, one per answer: {server:?}"
    );
    for (x, r) in server.iter().zip(&got) {
        assert_eq!(u(&x["sent_bytes"]), u(&r["received_bytes"]), "server: {x}");
    }
    // The client side sees heads only where reads begin: the first answer is judged, the two
    // read with it are counted unjudged, never dropped in silence (issue 25).
    assert_eq!(kinds(&client), ["complete"], "client side: {client:?}");
    assert_eq!(
        u(&client[0]["received_bytes"]),
        u(&got[0]["received_bytes"])
    );
    // (The metrics are published every few seconds.)
    let unseen = || {
        let (_, body) = support::http_get(&agent.metrics_addr(), "/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(r#"truncwatch_unjudged_responses_total{reason="pipelined_unseen"} "#)
            })
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while unseen() != Some(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(unseen(), Some(1), "counted once for the connection");
}

kernel_test!(lab_shutdown_then_close_with_unread_input_is_reset_discard {
    let agent = Agent::start();
    let srv = Server::start("tcp:127.0.0.1:0", "shutdown-unread", 8 << 20);
    let mut args = SLOW.to_vec();
    args.extend(["--send-after-head", "100"]);
    let got = fetch(&srv.endpoint, &args);
    println!("client: {got:?}");
    let client = &got[0];
    let expected = u(&client["head_bytes"]) + (8 << 20);
    reproduced(
        client["end"] == "reset" && u(&srv.record(0)["sent_bytes"]) == expected,
        &format!("the server should hand over everything, shut down, then reset: {client}"),
    );
    agent.wait_for_server(&srv, 1, WAIT);
    agent.wait_for_client(&srv.local(), 1, WAIT);
    std::thread::sleep(Duration::from_secs(1));
    let (server, clients) = (agent.verdicts(&srv.local()), agent.client_verdicts(&srv.local()));
    for v in server.iter().chain(&clients) {
        println!("agent: {v}");
    }
    let v = one(&server, "server-side");
    assert_eq!(v["verdict"], "reset_discard", "{v}");
    assert_eq!((u(&v["sent_bytes"]), u(&v["expected_bytes"])), (expected, expected), "{v}");
    assert_eq!(u(&v["delivered_bytes"]), u(&client["received_bytes"]), "{v} {client}");
    assert!(u(&v["unacked_bytes"]) >= expected - u(&client["received_bytes"]), "{v}");
    assert_eq!(u(&v["evidence"]["unread_bytes"]), 100, "{v}");
    let c = one(&clients, "client-side");
    assert_eq!(c["verdict"], "truncated", "{c}");
    assert_eq!(u(&c["received_bytes"]), u(&client["received_bytes"]), "{c}");
});
