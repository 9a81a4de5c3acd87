//! The scenario matrix: every way a real server ends a response early, and healthy traffic
//! that must stay unflagged, each against one running agent, each with a client recording
//! ground truth. Prints one table and the totals, then asserts the targets: recall 100%,
//! precision 100%, no false positive, agent bytes = client bytes.
//!
//! `cargo xtask scenarios` shows the table; `cargo xtask test` runs it with everything else.
mod support;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    Agent, Nginx, Server, fetch, free_port, nginx_or_skip, u, unix_path, wait_listening,
};

/// One scenario: how to produce traffic, and what the agent must say about it.
struct Scenario {
    name: &'static str,
    /// Verdicts expected on this server endpoint, in order (empty: nothing judged).
    expected: Vec<&'static str>,
    /// Runs the traffic; returns the server's `local` as the agent reports it, and what the
    /// client received, per response.
    run: Box<dyn Fn(&Env) -> (String, Vec<Value>)>,
}

/// Servers shared by the scenarios.
struct Env {
    _nginx: Nginx,
    /// Ports of nginx's server blocks, by role.
    static_port: u16,
    reset_port: u16,
    proxy_port: u16,
    _upstream: Server,
}

const SLOW: &[&str] = &[
    "--rcvbuf",
    "65536",
    "--read-bytes",
    "16384",
    "--read-delay",
    "2ms",
];
/// Reads 1 MB of body, then stalls 3 s: past nginx's 1 s send_timeout and Node's 1 s timeout.
const STALL: &[&str] = &["--stall-after", "1000000", "--stall", "3s"];

fn lab(
    listen: &str,
    mode: &str,
    body: u64,
    server_args: &[&str],
    client_args: &[&str],
) -> (String, Vec<Value>) {
    let srv = Server::start_args(listen, mode, body, server_args);
    let got = fetch(&srv.endpoint, client_args);
    (srv.local(), got)
}

fn unix(name: &str) -> String {
    format!("unix:{}", unix_path(name))
}

fn nginx_fetch(port: u16, args: &[&str]) -> (String, Vec<Value>) {
    (
        format!("127.0.0.1:{port}"),
        fetch(&format!("tcp:127.0.0.1:{port}"), args),
    )
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(body: u64, args: &[&str]) -> (String, Vec<Value>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/node-timeout.js");
    let port = free_port();
    let child = Command::new("node")
        .args([script, &port.to_string(), &body.to_string(), "1000"])
        .stderr(Stdio::null())
        .spawn()
        .expect("node (Debian's nodejs) is needed for the scenario matrix");
    let _node = Node(child);
    wait_listening(port);
    nginx_fetch(port, args)
}

fn scenarios() -> Vec<Scenario> {
    fn s(
        name: &'static str,
        expected: &[&'static str],
        run: impl Fn(&Env) -> (String, Vec<Value>) + 'static,
    ) -> Scenario {
        Scenario {
            name,
            expected: expected.to_vec(),
            run: Box::new(run),
        }
    }
    let big = 8 << 20;
    vec![
        // Truncated by the server.
        s(
            "lab tcp: short write, shutdown",
            &["short_write"],
            move |_| lab("tcp:127.0.0.1:0", "short-shutdown", big, &[], SLOW),
        ),
        s("lab tcp: short write, close", &["short_write"], move |_| {
            lab("tcp:127.0.0.1:0", "short-close", big, &[], SLOW)
        }),
        s(
            "lab unix: short write, shutdown",
            &["short_write"],
            move |_| lab(&unix("m1.sock"), "short-shutdown", big, &[], SLOW),
        ),
        s(
            "lab unix: short write, close",
            &["short_write"],
            move |_| lab(&unix("m2.sock"), "short-close", big, &[], SLOW),
        ),
        s("lab tcp: chunked cut short", &["short_write"], move |_| {
            lab(
                "tcp:127.0.0.1:0",
                "short-shutdown",
                big,
                &["--chunked"],
                SLOW,
            )
        }),
        s("lab unix: chunked cut short", &["short_write"], move |_| {
            lab(&unix("m3.sock"), "short-close", big, &["--chunked"], SLOW)
        }),
        s(
            "lab tcp: close with unread input",
            &["complete", "reset_discard"],
            move |_| {
                lab(
                    "tcp:127.0.0.1:0",
                    "reset-unread",
                    big,
                    &[],
                    &[SLOW, &["--send-after-head", "100"]].concat(),
                )
            },
        ),
        s(
            "lab tcp: SO_LINGER 0",
            &["complete", "reset_discard"],
            move |_| lab("tcp:127.0.0.1:0", "linger0", big, &[], SLOW),
        ),
        s("lab tcp: head alone, then close", &["short_write"], |_| {
            lab(
                "tcp:127.0.0.1:0",
                "truncate",
                5000,
                &["--truncate-at", "0"],
                &[],
            )
        }),
        s(
            "lab unix: next response before the body's end",
            &["desync", "complete"],
            |_| {
                lab(
                    &unix("m4.sock"),
                    "desync",
                    100_000,
                    &["--truncate-at", "1000"],
                    &[],
                )
            },
        ),
        s("nginx: send_timeout", &["short_write"], |e| {
            nginx_fetch(e.static_port, &[&["--path", "/big.bin"], STALL].concat())
        }),
        s(
            "nginx: send_timeout + reset_timedout_connection",
            &["short_write", "reset_discard"],
            |e| nginx_fetch(e.reset_port, &[&["--path", "/big.bin"], STALL].concat()),
        ),
        s(
            "nginx proxy: upstream closes early",
            &["short_write"],
            |e| nginx_fetch(e.proxy_port, &["--path", "/"]),
        ),
        s("node: server.timeout", &["short_write"], |_| {
            node(30 << 20, STALL)
        }),
        // The client's doing: reported apart.
        s(
            "lab tcp: peer resets mid-body",
            &["peer_reset"],
            move |_| {
                lab(
                    "tcp:127.0.0.1:0",
                    "full",
                    big,
                    &[],
                    &["--abort-after", "1000000"],
                )
            },
        ),
        // Healthy: must stay complete.
        s(
            "lab tcp: 200 fast keep-alive responses",
            &["complete"; 200],
            |_| {
                lab(
                    "tcp:127.0.0.1:0",
                    "full",
                    1000,
                    &[],
                    &["--requests", "50", "--connections", "4"],
                )
            },
        ),
        s("lab unix: slow steady reader", &["complete"], |_| {
            lab(&unix("h1.sock"), "full", 4 << 20, &[], SLOW)
        }),
        s("lab tcp: stalls 1 s, then resumes", &["complete"], |_| {
            lab(
                "tcp:127.0.0.1:0",
                "full",
                4 << 20,
                &[],
                &["--stall-after", "500000", "--stall", "1s"],
            )
        }),
        s("lab unix: chunked, slow reader", &["complete"], |_| {
            lab(&unix("h2.sock"), "full", 4 << 20, &["--chunked"], SLOW)
        }),
        s("nginx: 20 keep-alive responses", &["complete"; 20], |e| {
            nginx_fetch(e.static_port, &["--path", "/1k.bin", "--requests", "20"])
        }),
        s(
            "nginx: stall 0.5 s, under send_timeout",
            &["complete"],
            |e| {
                nginx_fetch(
                    e.static_port,
                    &[
                        "--path",
                        "/big.bin",
                        "--stall-after",
                        "1000000",
                        "--stall",
                        "500ms",
                    ],
                )
            },
        ),
        s("nginx: HEAD", &["complete"; 3], |e| {
            nginx_fetch(
                e.static_port,
                &["--path", "/big.bin", "--method", "HEAD", "--requests", "3"],
            )
        }),
        s("nginx: 304 Not Modified", &["complete"; 3], |e| {
            let ims = "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT";
            nginx_fetch(
                e.static_port,
                &["--path", "/1k.bin", "--header", ims, "--requests", "3"],
            )
        }),
        s("node: fast reader", &["complete"], |_| node(4 << 20, &[])),
    ]
}

impl Env {
    /// The `local` of every shared server.
    fn locals(&self) -> Vec<String> {
        [self.static_port, self.reset_port, self.proxy_port]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

/// Outcome of one scenario, for the table and the totals.
struct Row {
    name: &'static str,
    expected: String,
    got: String,
    client_bytes: String,
    agent_bytes: String,
    pass: bool,
}

#[test]
fn scenario_matrix() {
    if !nginx_or_skip("scenario_matrix") {
        return;
    }
    let upstream = Server::start_args(
        "tcp:127.0.0.1:0",
        "truncate",
        4 << 20,
        &["--truncate-at", "1000000"],
    );
    let up = upstream.local();
    let nginx = Nginx::start(&[
        "sendfile on; send_timeout 1s;",
        "sendfile on; send_timeout 1s; reset_timedout_connection on;",
        &format!("location / {{ proxy_pass http://{up}; }}"),
    ]);
    let env = Env {
        static_port: nginx.ports[0],
        reset_port: nginx.ports[1],
        proxy_port: nginx.ports[2],
        _nginx: nginx,
        _upstream: upstream,
    };
    let agent = Agent::start();

    let mut rows = Vec::new();
    let (mut truncated, mut caught, mut flags, mut right_flags, mut healthy, mut false_flags) =
        (0, 0, 0, 0, 0, 0);
    // Every server address used so far: shared servers, and lab servers whose port a later
    // lab server may get again.
    let mut locals = env.locals();
    for sc in scenarios() {
        // Count only verdicts that arrive during this scenario.
        let before = |local: &str| agent.verdicts(local).len();
        let (local, client, skip) = {
            let marks: Vec<(String, usize)> =
                locals.iter().map(|l| (l.clone(), before(l))).collect();
            let (local, client) = (sc.run)(&env);
            let skip = marks
                .iter()
                .find(|(l, _)| *l == local)
                .map_or(0, |(_, n)| *n);
            (local, client, skip)
        };
        if !locals.contains(&local) {
            locals.push(local.clone());
        }
        let _ = agent.wait_for(&local, skip + sc.expected.len(), Duration::from_secs(20));
        // Anything late (a second verdict) has had time to arrive too.
        std::thread::sleep(Duration::from_millis(300));
        let got: Vec<Value> = agent.verdicts(&local).split_off(skip);
        let mut kinds: Vec<&str> = got.iter().map(|v| v["verdict"].as_str().unwrap()).collect();
        // Verdicts about one connection may come in either order (a reset and the response).
        kinds.sort_unstable();
        let mut expected = sc.expected.clone();
        expected.sort_unstable();
        let problem =
            |k: &str| matches!(k, "short_write" | "reset_discard" | "peer_reset" | "desync");
        let server_cut = sc
            .expected
            .iter()
            .any(|k| matches!(*k, "short_write" | "reset_discard" | "desync"));
        if server_cut {
            truncated += 1;
            if kinds == expected {
                caught += 1;
            }
        } else if !sc.expected.iter().any(|k| problem(k)) {
            healthy += 1;
            false_flags += kinds.iter().filter(|k| problem(k)).count();
        }
        flags += kinds.iter().filter(|k| problem(k)).count();
        right_flags += kinds
            .iter()
            .zip(&expected)
            .filter(|(k, e)| problem(k) && k == e)
            .count();
        // Bytes: the client's total against the agent's (sent_bytes), where both apply.
        let client_bytes: u64 = client.iter().map(|c| u(&c["received_bytes"])).sum();
        let agent_bytes: u64 = got.iter().filter_map(|v| v["sent_bytes"].as_u64()).sum();
        let reset = client
            .iter()
            .any(|c| c["end"] == "reset" || c["end"] == "aborted");
        // After a desync the client reads the next response as body: its count says nothing.
        let desync = sc.expected.contains(&"desync");
        let bytes_ok = reset || desync || sc.expected.is_empty() || client_bytes == agent_bytes;
        rows.push(Row {
            name: sc.name,
            expected: summarize(&expected),
            got: summarize(&kinds),
            client_bytes: client_bytes.to_string(),
            agent_bytes: match (reset, desync) {
                (true, _) => format!("{agent_bytes} (reset)"),
                (_, true) => format!("{agent_bytes} (desync)"),
                _ => agent_bytes.to_string(),
            },
            pass: kinds == expected && bytes_ok,
        });
    }
    drop(env);
    print_table(&rows);
    let pct = |a: usize, b: usize| {
        if b == 0 {
            100.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    println!(
        "totals: {} scenarios, {} passed; recall {:.0}% ({caught}/{truncated} server truncations flagged); \
         precision {:.0}% ({right_flags}/{flags} flags right); false positives on healthy traffic: {false_flags} ({healthy} healthy scenarios)",
        rows.len(),
        rows.iter().filter(|r| r.pass).count(),
        pct(caught, truncated),
        pct(right_flags, flags),
    );
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).map(|r| r.name).collect();
    assert!(failed.is_empty(), "scenarios failed: {failed:?}");
    assert_eq!((caught, right_flags, false_flags), (truncated, flags, 0));
}

/// `["complete"; 200]` -> `200 × complete`.
fn summarize(kinds: &[&str]) -> String {
    if kinds.is_empty() {
        return "(none)".into();
    }
    let mut parts: Vec<(String, usize)> = Vec::new();
    for k in kinds {
        match parts.last_mut() {
            Some((last, n)) if last == k => *n += 1,
            _ => parts.push((k.to_string(), 1)),
        }
    }
    parts
        .iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.clone()
            } else {
                format!("{n} × {k}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| scenario | expected | agent | client bytes | agent bytes | |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.expected,
            r.got,
            r.client_bytes,
            r.agent_bytes,
            if r.pass { "ok" } else { "FAIL" }
        );
    }
    println!();
}
