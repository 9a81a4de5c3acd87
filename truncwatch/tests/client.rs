//! The client side: responses as this host's clients received them (`"side": "client"`).
//! Real clients, each recording what it got: curl, Python's `http.client`
//! (tests/servers/client/get.py), Node's `http.get` (get.js) and the project's lab client;
//! against the lab server (whose own record gives each head's length), nginx and a proxy.
mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::{Agent, Nginx, Server, fetch, nginx_or_skip, u, unix_path};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/client");
/// The lab server's cut: it promises `PROMISE` body bytes, sends `CUT`, closes.
const PROMISE: u64 = 8_000_000;
const CUT: u64 = 2_000_000;
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Client {
    Curl,
    Python,
    Node,
    Lab,
}

/// What a client got of one response: head + body bytes, and whether it was whole.
#[derive(Debug)]
struct Got {
    bytes: u64,
    complete: bool,
}

impl Client {
    const ALL: [Client; 4] = [Client::Curl, Client::Python, Client::Node, Client::Lab];

    /// Fetch `/` from `server` (`tcp:HOST:PORT` or `unix:PATH`); `head` is the length of the
    /// server's head, for the clients that count only body bytes.
    fn get(self, server: &str, head: u64) -> Got {
        let (kind, addr) = server.split_once(':').unwrap();
        let port = || addr.rsplit(':').next().unwrap().to_string();
        let json = |c: &mut Command| -> Value {
            let out = c.output().expect("run the client");
            let text = String::from_utf8_lossy(&out.stdout);
            serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("{self:?} printed {text:?}: {e}"))
        };
        match self {
            Client::Curl => {
                let mut c = Command::new("curl");
                c.args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "{\"head\":%{size_header},\"body\":%{size_download},\"code\":%{exitcode}}",
                ]);
                if kind == "unix" {
                    c.args(["--unix-socket", addr, "http://localhost/"]);
                } else {
                    c.arg(format!("http://{addr}/"));
                }
                let v = json(&mut c);
                Got {
                    bytes: u(&v["head"]) + u(&v["body"]),
                    complete: v["code"] == 0,
                }
            }
            Client::Python | Client::Node => {
                let mut c = match self {
                    Client::Python => Command::new("python3"),
                    _ => Command::new("node"),
                };
                let script = match self {
                    Client::Python => "get.py",
                    _ => "get.js",
                };
                c.arg(format!("{CLIENTS}/{script}"))
                    .args([port(), "/".into()]);
                let v = json(&mut c);
                Got {
                    bytes: head + u(&v["body_bytes"]),
                    complete: v["complete"] == true,
                }
            }
            Client::Lab => {
                let v = &fetch(server, &[])[0];
                Got {
                    bytes: u(&v["received_bytes"]),
                    complete: v["complete"] == true,
                }
            }
        }
    }
}

/// The next client-side verdict about `server` (`local`) after the first `seen`, and no other
/// after a moment more.
fn next_verdict(agent: &Agent, server: &str, seen: usize) -> Value {
    let v = agent.wait_for_client(server, seen + 1, WAIT);
    assert!(v.len() > seen, "no client-side verdict about {server}");
    std::thread::sleep(Duration::from_millis(300));
    let v = agent.client_verdicts(server);
    assert_eq!(v.len(), seen + 1, "one verdict per response: {v:?}");
    v[seen].clone()
}

/// The lab server's head length: its record's response length less the `body` bytes it holds
/// (the body sent, in `--mode truncate`).
fn head_len(srv: &Server, body: u64) -> u64 {
    u(&srv.record(0)["expected_bytes"]) - body
}

/// Each client, against a server that promises 8 MB and closes after 2 MB: `truncated`, with
/// the bytes it received; with a 200-byte and a 1.3 KB head, over TCP; curl and the lab client
/// over a Unix socket too.
#[test]
fn clients_reading_a_cut_response_see_it_truncated() {
    if !support::kernel_or_skip("clients_reading_a_cut_response_see_it_truncated") {
        return;
    }
    let agent = Agent::start();
    let unix = format!("unix:{}", unix_path("client-cut.sock"));
    let cases = [
        ("tcp:127.0.0.1:0", 200),
        ("tcp:127.0.0.1:0", 1300),
        (unix.as_str(), 1300),
    ];
    // Each case's server lives to the end: a closed one's port could be given to the next,
    // whose verdicts are found by the server's address.
    let mut servers = Vec::new();
    for (listen, head) in cases {
        let srv = Server::start_args(
            listen,
            "truncate",
            PROMISE,
            &[
                "--truncate-at",
                &CUT.to_string(),
                // The short head padded to about 200 bytes; or real sites' headers to 1.3 KB.
                if head < 1000 {
                    "--head-pad"
                } else {
                    "--head-bytes"
                },
                &if head < 1000 { head - 70 } else { head }.to_string(),
            ],
        );
        let clients: &[Client] = if listen.starts_with("unix") {
            &[Client::Curl, Client::Lab]
        } else {
            &Client::ALL
        };
        for (i, client) in clients.iter().enumerate() {
            let got = client.get(&srv.endpoint, if i == 0 { 0 } else { head_len(&srv, CUT) });
            let hl = head_len(&srv, CUT);
            assert!(
                !got.complete,
                "{client:?}: the server should have cut it: {got:?}"
            );
            let v = next_verdict(&agent, &srv.local(), i);
            let what = format!("{client:?}, {head}-byte head, {listen}: {v}");
            assert_eq!(
                (&v["verdict"], &v["side"]),
                (&"truncated".into(), &"client".into()),
                "{what}"
            );
            assert_eq!(u(&v["received_bytes"]), got.bytes, "{what}");
            assert_eq!(u(&v["received_bytes"]), hl + CUT, "{what}");
            assert_eq!(u(&v["expected_bytes"]), hl + PROMISE, "{what}");
            assert_eq!(u(&v["missing_bytes"]), PROMISE - CUT, "{what}");
            assert!(v["sent_bytes"].is_null(), "{what}");
            assert!(
                hl + 100 > head && hl < head + 200,
                "a {head}-byte head: {what}"
            );
        }
        servers.push(srv);
    }
}

/// The same fetches of a whole response: `complete`, with every byte; and keep-alive.
#[test]
fn clients_reading_a_whole_response_see_it_complete() {
    if !support::kernel_or_skip("clients_reading_a_whole_response_see_it_complete") {
        return;
    }
    let agent = Agent::start();
    let body = 1_000_000;
    let srv = Server::start_args("tcp:127.0.0.1:0", "full", body, &["--head-bytes", "1300"]);
    for (i, client) in Client::ALL.iter().enumerate() {
        let got = client.get(&srv.endpoint, if i == 0 { 0 } else { head_len(&srv, body) });
        assert!(got.complete, "{client:?}: {got:?}");
        let v = next_verdict(&agent, &srv.local(), i);
        assert_eq!(v["verdict"], "complete", "{client:?}: {v}");
        assert_eq!(u(&v["received_bytes"]), got.bytes, "{client:?}: {v}");
    }
    let many = fetch(&srv.endpoint, &["--requests", "20"]);
    agent.wait_for_client(&srv.local(), 24, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let v = &agent.client_verdicts(&srv.local())[4..];
    assert_eq!(v.len(), 20, "one verdict per keep-alive response: {v:?}");
    for (x, c) in v.iter().zip(&many) {
        assert_eq!(x["verdict"], "complete", "{x}");
        assert_eq!(u(&x["received_bytes"]), u(&c["received_bytes"]), "{x}");
    }
}

/// A chunked body cut before its last chunk: `truncated`. The whole one: `complete`.
#[test]
fn chunked_body_cut_before_its_last_chunk_is_truncated() {
    if !support::kernel_or_skip("chunked_body_cut_before_its_last_chunk_is_truncated") {
        return;
    }
    let agent = Agent::start();
    let cut = Server::start_args(
        "tcp:127.0.0.1:0",
        "truncate",
        4 << 20,
        &["--truncate-at", "1000000", "--chunked"],
    );
    let whole = Server::start_args("tcp:127.0.0.1:0", "full", 4 << 20, &["--chunked"]);
    // (curl counts the body it decoded, without the chunks' framing: the servers' own records
    // say what went over the wire, all of which arrived.)
    for (i, client) in [Client::Curl, Client::Lab].into_iter().enumerate() {
        client.get(&cut.endpoint, 0);
        let v = next_verdict(&agent, &cut.local(), i);
        assert_eq!(v["verdict"], "truncated", "{client:?}: {v}");
        assert_eq!(v["chunked"], true, "{v}");
        assert_eq!(
            u(&v["received_bytes"]),
            u(&cut.record(i)["sent_bytes"]),
            "{client:?}: {v}"
        );
        let got = client.get(&whole.endpoint, 0);
        assert!(got.complete);
        let v = next_verdict(&agent, &whole.local(), i);
        assert_eq!(v["verdict"], "complete", "{client:?}: {v}");
        assert_eq!(
            u(&v["received_bytes"]),
            u(&whole.record(i)["sent_bytes"]),
            "{client:?}: {v}"
        );
    }
}

/// A client that reads 1 MB of a 30 MiB download and closes: `aborted` (its doing), never
/// `truncated`; whether its close sent a FIN or, with data unread, a reset.
#[test]
fn client_that_leaves_early_is_aborted_never_truncated() {
    if !support::kernel_or_skip("client_that_leaves_early_is_aborted_never_truncated") {
        return;
    }
    let agent = Agent::start();
    let srv = Server::start("tcp:127.0.0.1:0", "full", 30 << 20);
    let port = srv.local().rsplit(':').next().unwrap().to_string();
    type Run<'a> = Box<dyn Fn() -> u64 + 'a>;
    let runs: [(&str, Run); 2] = [
        (
            "lab, close with data unread (reset)",
            Box::new(|| {
                u(&fetch(&srv.endpoint, &["--close-after", "1000000"])[0]["received_bytes"])
            }),
        ),
        (
            "python http.client",
            Box::new(|| {
                let out = Command::new("python3")
                    .arg(format!("{CLIENTS}/get.py"))
                    .args([port.as_str(), "/", "--close-after", "1000000"])
                    .output()
                    .unwrap();
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["body_bytes"], 1_000_000);
                0
            }),
        ),
    ];
    for (i, (what, run)) in runs.iter().enumerate() {
        let received = run();
        let v = next_verdict(&agent, &srv.local(), i);
        assert_eq!(v["verdict"], "aborted", "{what}: {v}");
        if received > 0 {
            assert_eq!(u(&v["received_bytes"]), received, "{what}: {v}");
        }
    }
    assert!(
        agent
            .client_verdicts(&srv.local())
            .iter()
            .all(|v| v["verdict"] != "truncated")
    );
}

/// HEAD, and 304 with Content-Length (nginx): `complete` with the head alone. A request with
/// `Expect: 100-continue` (Node answers `100 Continue`, then the final response): one verdict,
/// for the final response.
#[test]
fn head_304_and_100_continue_are_complete() {
    if !nginx_or_skip("head_304_and_100_continue_are_complete") {
        return;
    }
    let agent = Agent::start();
    let (local, lines) = support::healthy::head_and_304_nginx(support::heads::Head::Long);
    agent.wait_for_client(&local, lines.len(), WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let v = agent.client_verdicts(&local);
    assert_eq!(v.len(), lines.len(), "{v:?}");
    for (x, c) in v.iter().zip(&lines) {
        assert_eq!(x["verdict"], "complete", "{x}");
        assert_eq!(u(&x["received_bytes"]), u(&c["received_bytes"]), "{x}");
        assert_eq!(u(&x["received_bytes"]), u(&c["head_bytes"]), "no body: {x}");
    }
    let statuses: Vec<u64> = v.iter().map(|x| u(&x["status"])).collect();
    assert!(
        statuses.contains(&304) && statuses.contains(&200),
        "{statuses:?}"
    );
    // Node's port is a free one: it may be the one nginx just left, whose verdicts are not
    // Node's.
    let (first, seen) = (local, v.len());
    let (local, lines) = support::healthy::expect_continue_node(support::heads::Head::Long);
    let skip = if local == first { seen } else { 0 };
    agent.wait_for_client(&local, skip + lines.len(), WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let v = agent.client_verdicts(&local).split_off(skip);
    assert_eq!(
        v.len(),
        lines.len(),
        "one verdict per final response: {v:?}"
    );
    for (x, c) in v.iter().zip(&lines) {
        assert_eq!(
            (&x["verdict"], u(&x["status"])),
            (&"complete".into(), 200),
            "{x}"
        );
        assert_eq!(u(&x["received_bytes"]), u(&c["received_bytes"]), "{x}");
    }
}

/// One incident, both hops: nginx proxies to an upstream that dies mid-body. nginx's upstream
/// connection reads it `truncated` (side client, comm nginx, peer the upstream); nginx then
/// cuts its own client short: `short_write` on the client connection, and that client, too,
/// sees `truncated`.
#[test]
fn proxy_hop_and_client_hop_of_one_incident() {
    if !nginx_or_skip("proxy_hop_and_client_hop_of_one_incident") {
        return;
    }
    let agent = Agent::start();
    let upstream = Server::start_args(
        "tcp:127.0.0.1:0",
        "truncate",
        4 << 20,
        &["--truncate-at", "1000000", "--head-bytes", "1300"],
    );
    let up = upstream.local();
    let nginx = Nginx::start(&[&format!("location / {{ proxy_pass http://{up}; }}")]);
    let front = format!("127.0.0.1:{}", nginx.ports[0]);
    let got = &fetch(&format!("tcp:{front}"), &[])[0];
    assert_eq!(got["complete"], false, "{got}");
    let hop = next_verdict(&agent, &up, 0);
    assert_eq!(
        (&hop["verdict"], &hop["comm"], &hop["side"]),
        (&"truncated".into(), &"nginx".into(), &"client".into()),
        "{hop}"
    );
    assert_eq!(
        u(&hop["received_bytes"]),
        u(&upstream.record(0)["sent_bytes"]),
        "{hop}"
    );
    let server = agent.wait_for(&front, 1, WAIT);
    assert_eq!(server[0]["verdict"], "short_write", "{}", server[0]);
    assert_eq!(u(&server[0]["sent_bytes"]), u(&got["received_bytes"]));
    let client = next_verdict(&agent, &front, 0);
    assert_eq!(client["verdict"], "truncated", "{client}");
    assert_eq!(u(&client["received_bytes"]), u(&got["received_bytes"]));
    // How an operator links the hops: the same process, the same moment, and the proxy's
    // upstream address (docs/client-side.md).
    assert_eq!(hop["pid"], server[0]["pid"], "one nginx worker did both");
}

/// `--no-client-side`: the same cut response is judged where it is sent, and its client is left
/// alone.
#[test]
fn no_client_side_leaves_clients_alone() {
    if !support::kernel_or_skip("no_client_side_leaves_clients_alone") {
        return;
    }
    let agent = Agent::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--canary-interval",
        "0s",
        "--no-client-side",
    ]);
    let srv = Server::start_args(
        "tcp:127.0.0.1:0",
        "truncate",
        PROMISE,
        &["--truncate-at", &CUT.to_string()],
    );
    Client::Curl.get(&srv.endpoint, 0);
    let v = agent.wait_for(&srv.local(), 1, WAIT);
    assert_eq!(v[0]["verdict"], "short_write", "{}", v[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent.client_verdicts(&srv.local()).is_empty(),
        "{:?}",
        agent.client_verdicts(&srv.local())
    );
}
