//! The scenario matrix: the ways real servers end responses early, and healthy traffic that
//! must never be blamed on the server, each against one running agent, each with a client
//! recording ground truth, most with short, long (~1.3 KB) and huge (over 8 KB) heads. Prints
//! one table and the totals, then asserts the targets: recall 100%, precision 100%, and every
//! judged response's `delivered_bytes` equal to what its client got. The same for the client
//! side: each response as its client read it (`truncated`, `complete`, `aborted`), with the
//! bytes the client says it got.
//!
//! `cargo xtask scenarios` shows the table; `cargo xtask test` runs it with everything else.
mod support;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::heads::Head;
use support::servers::{self, RealServer};
use support::{
    Agent, Nginx, SLOW, Server, fetch, free_port, healthy, nginx_or_skip, u, unix_path,
    wait_listening,
};

/// What a scenario's traffic gave: the server's `local` as the agent reports it, the client's
/// lines (one per response), and, for a proxy, its upstream's `local` and what that upstream
/// handed over by its own count.
struct Outcome {
    local: String,
    client: Vec<Value>,
    upstream: Option<(String, Vec<Value>)>,
}

impl From<(String, Vec<Value>)> for Outcome {
    fn from((local, client): (String, Vec<Value>)) -> Outcome {
        Outcome {
            local,
            client,
            upstream: None,
        }
    }
}

/// What the agent must say about one scenario's responses.
enum Expect {
    /// These verdicts, one per client line, in order.
    Each(Vec<&'static str>),
    /// As `healthy::expected_verdicts` derives them from the client's lines.
    FromClient,
}

struct Scenario {
    name: String,
    expect: Expect,
    /// Verdicts expected at the proxy's upstream (both hops of one incident).
    upstream: Vec<&'static str>,
    run: Box<dyn Fn(&Env) -> Outcome>,
}

/// Servers shared by the scenarios.
struct Env {
    _nginx: Nginx,
    /// Ports of nginx's server blocks, by role.
    static_port: u16,
    reset_port: u16,
    proxy_port: u16,
    /// `send_timeout` with long and huge heads (`add_header`).
    static_heads: [u16; 2],
    /// In front of an upstream whose chunked body dies before its last chunk.
    chunked_proxy_port: u16,
    _upstream: Server,
    chunked_upstream: Server,
}

/// Reads 1 MB of body, then stalls 3 s: past nginx's 1 s send_timeout and Node's 1 s timeout.
const STALL: &[&str] = &["--stall-after", "1000000", "--stall", "3s"];

fn lab(listen: &str, mode: &str, body: u64, server_args: &[&str], client: &[&str]) -> Outcome {
    let srv = Server::start_args(listen, mode, body, server_args);
    (srv.local(), fetch(&srv.endpoint, client)).into()
}

fn unix(name: &str) -> String {
    format!("unix:{}", unix_path(name))
}

fn nginx_fetch(port: u16, args: &[&str]) -> Outcome {
    (
        format!("127.0.0.1:{port}"),
        fetch(&format!("tcp:127.0.0.1:{port}"), args),
    )
        .into()
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(body: u64, args: &[&str]) -> Outcome {
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

fn size(head: Head) -> &'static str {
    match head {
        Head::Short => "short head",
        Head::Long => "1.3 KB head",
        Head::Huge => "9 KB head",
    }
}

fn scenarios() -> Vec<Scenario> {
    fn s(
        name: &str,
        expected: &[&'static str],
        run: impl Fn(&Env) -> Outcome + 'static,
    ) -> Scenario {
        Scenario {
            name: name.into(),
            expect: Expect::Each(expected.to_vec()),
            upstream: Vec::new(),
            run: Box::new(run),
        }
    }
    let big = 8 << 20;
    let mut all = vec![
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
            "lab tcp: 9 KB head, cut short",
            &["short_write"],
            move |_| {
                lab(
                    "tcp:127.0.0.1:0",
                    "short-close",
                    big,
                    &["--head-bytes", "9000"],
                    SLOW,
                )
            },
        ),
        s(
            "lab tcp: close with unread input",
            &["reset_discard"],
            move |_| {
                let client = [SLOW, &["--send-after-head", "100"]].concat();
                lab("tcp:127.0.0.1:0", "reset-unread", big, &[], &client)
            },
        ),
        s("lab tcp: SO_LINGER 0", &["reset_discard"], move |_| {
            lab("tcp:127.0.0.1:0", "linger0", big, &[], SLOW)
        }),
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
            &["short_write"],
            |e| nginx_fetch(e.reset_port, &[&["--path", "/big.bin"], STALL].concat()),
        ),
        s(
            "nginx proxy: upstream closes early",
            &["short_write"],
            |e| nginx_fetch(e.proxy_port, &["--path", "/"]),
        ),
        Scenario {
            name: "nginx proxy: chunked upstream dies before its last chunk (both hops)".into(),
            expect: Expect::Each(vec!["short_write"]),
            upstream: vec!["short_write"],
            run: Box::new(|e| {
                let mut o = nginx_fetch(e.chunked_proxy_port, &["--path", "/"]);
                let up = &e.chunked_upstream;
                o.upstream = Some((up.local(), up.sent()));
                o
            }),
        },
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
                let client = ["--requests", "50", "--connections", "4"];
                lab("tcp:127.0.0.1:0", "full", 1000, &[], &client)
            },
        ),
        s("lab unix: slow steady reader", &["complete"], |_| {
            lab(&unix("h1.sock"), "full", 4 << 20, &[], SLOW)
        }),
        s("lab tcp: stalls 1 s, then resumes", &["complete"], |_| {
            let client = ["--stall-after", "500000", "--stall", "1s"];
            lab("tcp:127.0.0.1:0", "full", 4 << 20, &[], &client)
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
                let client = [
                    "--path",
                    "/big.bin",
                    "--stall-after",
                    "1000000",
                    "--stall",
                    "500ms",
                ];
                nginx_fetch(e.static_port, &client)
            },
        ),
        s("node: fast reader", &["complete"], |_| node(4 << 20, &[])),
    ];
    // nginx's send_timeout with the heads sites send.
    for (i, head) in [Head::Long, Head::Huge].into_iter().enumerate() {
        all.push(s(
            &format!("nginx: send_timeout, {}", size(head)),
            &["short_write"],
            move |e| {
                nginx_fetch(
                    e.static_heads[i],
                    &[&["--path", "/big.bin"], STALL].concat(),
                )
            },
        ));
    }
    // Real servers cutting responses short the way their users reported.
    for server in RealServer::ALL {
        if let Err(why) = servers::available(server) {
            support::skip_or_fail("scenario_matrix", &format!("{}: {why}", server.name()));
            continue;
        }
        for head in Head::ALL {
            all.push(s(
                &format!("{}, {}", server.name(), size(head)),
                &["short_write"],
                move |_| server.run(head).into(),
            ));
        }
    }
    // Healthy traffic from real servers: never the server's fault.
    for sc in healthy::SCENARIOS {
        for head in Head::ALL {
            let run = sc.run;
            all.push(Scenario {
                name: format!("{}, {}", sc.name, size(head)),
                expect: Expect::FromClient,
                upstream: Vec::new(),
                run: Box::new(move |_| run(head).into()),
            });
        }
    }
    all
}

impl Env {
    fn start() -> Env {
        let upstream = Server::start_args(
            "tcp:127.0.0.1:0",
            "truncate",
            4 << 20,
            &["--truncate-at", "1000000"],
        );
        let chunked_upstream = Server::start_args(
            "tcp:127.0.0.1:0",
            "truncate",
            4 << 20,
            &["--truncate-at", "1000000", "--chunked"],
        );
        let (up, chunked_up) = (upstream.local(), chunked_upstream.local());
        let send_timeout = "sendfile on; send_timeout 1s;";
        let with_heads = |head| format!("{send_timeout} {}", healthy::nginx_add_headers(head));
        let nginx = Nginx::start(&[
            send_timeout,
            "sendfile on; send_timeout 1s; reset_timedout_connection on;",
            &format!("location / {{ proxy_pass http://{up}; }}"),
            &with_heads(Head::Long),
            &with_heads(Head::Huge),
            &format!("location / {{ proxy_pass http://{chunked_up}; proxy_http_version 1.1; }}"),
        ]);
        Env {
            static_port: nginx.ports[0],
            reset_port: nginx.ports[1],
            proxy_port: nginx.ports[2],
            static_heads: [nginx.ports[3], nginx.ports[4]],
            chunked_proxy_port: nginx.ports[5],
            _nginx: nginx,
            _upstream: upstream,
            chunked_upstream,
        }
    }

    /// The `local` of every shared server.
    fn locals(&self) -> Vec<String> {
        let e = self;
        [
            e.static_port,
            e.reset_port,
            e.proxy_port,
            e.chunked_proxy_port,
        ]
        .into_iter()
        .chain(e.static_heads)
        .map(|p| format!("127.0.0.1:{p}"))
        .chain([e.chunked_upstream.local()])
        .collect()
    }
}

/// Outcome of one scenario, for the table and the totals.
struct Row {
    name: String,
    expected: String,
    got: String,
    client_bytes: String,
    agent_bytes: String,
    /// The client side (`side: client` verdicts about the same responses): expected, got.
    client_side: String,
    pass: bool,
}

/// What a client's own line says the client-side verdict about its response must be: read
/// whole, `complete`; ended by the server (end of stream, reset), `truncated`; left by the
/// client, `aborted`. None for a request that got no answer.
fn client_expected(line: &Value) -> Option<&'static str> {
    if line["head_bytes"] == 0 {
        return None;
    }
    match line["end"].as_str() {
        Some("complete") => Some("complete"),
        Some("closed" | "aborted" | "timeout") => Some("aborted"),
        Some("eof" | "reset") => Some("truncated"),
        other => panic!("no client-side expectation for a response that ended {other:?}: {line}"),
    }
}

/// The client-side verdict a proxy's upstream connection must get, from the upstream's
/// server-side one.
fn upstream_client_side(server_side: &str) -> &'static str {
    match server_side {
        "complete" => "complete",
        "peer_closed" | "peer_reset" => "aborted",
        _ => "truncated",
    }
}

/// A client-side verdict as the totals count it: a desync the client reads as the cut of
/// the response before (a read may or may not begin at the stray head).
fn client_kind(kind: &str) -> &str {
    if kind == "desync" { "truncated" } else { kind }
}

/// Verdicts that say the server cut a response short: what recall and precision count.
fn server_fault(kind: &str) -> bool {
    matches!(kind, "short_write" | "reset_discard" | "desync")
}

/// Verdicts whose `delivered_bytes` must equal the client's count: the client read all the
/// peer's kernel got (after a desync it reads the next response as body; a client that left
/// read less than its kernel had taken in).
fn client_counts(kind: &str) -> bool {
    matches!(kind, "complete" | "short_write" | "reset_discard")
}

#[test]
fn scenario_matrix() {
    if !nginx_or_skip("scenario_matrix") {
        return;
    }
    let env = Env::start();
    let agent = Agent::start();
    let mut rows = Vec::new();
    let (mut truncated, mut caught, mut flags, mut right_flags, mut healthy, mut false_flags) =
        (0, 0, 0, 0, 0, 0);
    let mut bytes_wrong = 0;
    let (mut c_truncated, mut c_flags, mut c_right, mut c_pass, mut c_bytes_wrong) =
        (0, 0, 0, 0, 0);
    // Every server address used so far: a later server may get the same port or path again.
    let mut locals = env.locals();
    for sc in scenarios() {
        // Count only verdicts that arrive during this scenario.
        let marks: Vec<(String, usize)> = locals
            .iter()
            .map(|l| (l.clone(), agent.verdicts(l).len()))
            .collect();
        let skip = |local: &str| {
            marks
                .iter()
                .find(|(l, _)| l == local)
                .map_or(0, |(_, n)| *n)
        };
        let client_marks: Vec<(String, usize)> = locals
            .iter()
            .map(|l| (l.clone(), agent.client_verdicts(l).len()))
            .collect();
        let client_skip = |server: &str| {
            client_marks
                .iter()
                .find(|(l, _)| l == server)
                .map_or(0, |(_, n)| *n)
        };
        let o = (sc.run)(&env);
        // What each client line's response must be judged (None: no response, no verdict).
        let per_line: Vec<Option<&str>> = match &sc.expect {
            Expect::Each(v) => v.iter().map(|k| Some(*k)).collect(),
            Expect::FromClient => healthy::expected_verdicts(&o.local, &o.client),
        };
        let expected: Vec<&str> = per_line.iter().flatten().copied().collect();
        let (got, mut ok) = collect(&agent, &o.local, skip(&o.local), expected.len());
        let mut up_got = Vec::new();
        if let Some((up, _)) = &o.upstream {
            let (g, up_ok) = collect(&agent, up, skip(up), sc.upstream.len());
            ok &= up_ok;
            up_got = g;
        }
        for l in [&o.local]
            .into_iter()
            .chain(o.upstream.as_ref().map(|(l, _)| l))
        {
            if !locals.contains(l) {
                locals.push(l.clone());
            }
        }
        let mut kinds: Vec<&str> = got.iter().map(|v| v["verdict"].as_str().unwrap()).collect();
        kinds.extend(up_got.iter().map(|v| v["verdict"].as_str().unwrap()));
        kinds.sort_unstable();
        let mut want: Vec<&str> = expected.iter().chain(&sc.upstream).copied().collect();
        want.sort_unstable();
        ok &= kinds == want;
        // Recall, precision, false flags.
        if want.iter().any(|k| server_fault(k)) {
            truncated += 1;
            caught += usize::from(kinds == want);
        } else {
            healthy += 1;
            false_flags += kinds.iter().filter(|k| server_fault(k)).count();
        }
        flags += kinds.iter().filter(|k| server_fault(k)).count();
        right_flags += multiset_overlap(&kinds, &want, server_fault);
        // Bytes: what the agent says each client (or the proxy, from its upstream) got. (After
        // a desync the client reads the next response as body: its count says nothing.)
        let desync = expected.contains(&"desync");
        let mut client_bytes: Vec<u64> = o
            .client
            .iter()
            .zip(&per_line)
            .filter(|(_, k)| k.is_some_and(client_counts) && !desync)
            .map(|(c, _)| u(&c["received_bytes"]))
            .collect();
        if let Some((_, sent)) = &o.upstream {
            client_bytes.extend(sent.iter().map(|s| u(&s["sent_bytes"])));
        }
        let mut agent_bytes: Vec<u64> = got
            .iter()
            .chain(&up_got)
            .filter(|v| client_counts(v["verdict"].as_str().unwrap()) && !desync)
            .filter_map(|v| v["delivered_bytes"].as_u64())
            .collect();
        client_bytes.sort_unstable();
        agent_bytes.sort_unstable();
        if client_bytes != agent_bytes {
            bytes_wrong += 1;
            ok = false;
        }
        // The client side: the same responses, as their clients (and the proxy, from its
        // upstream) read them.
        let mut c_want: Vec<&str> = o.client.iter().filter_map(client_expected).collect();
        let mut hops = vec![(o.local.clone(), c_want.len())];
        if let Some((up, _)) = &o.upstream {
            let up_want: Vec<&str> = sc
                .upstream
                .iter()
                .map(|k| upstream_client_side(k))
                .collect();
            hops.push((up.clone(), up_want.len()));
            c_want.extend(up_want);
        }
        let mut c_got_lines = Vec::new();
        for (server, n) in &hops {
            let skip = client_skip(server);
            agent.wait_for_client(server, skip + n, Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(300));
            let mut all = agent.client_verdicts(server);
            c_got_lines.extend(all.split_off(skip.min(all.len())));
        }
        let mut c_got: Vec<&str> = c_got_lines
            .iter()
            .map(|v| client_kind(v["verdict"].as_str().unwrap()))
            .collect();
        c_got.sort_unstable();
        c_want.sort_unstable();
        // After a desync the client reads the next response as body: its line is no ground
        // truth (it may call the first response whole), and the agent's side is not compared.
        let client_ok = desync || c_got == c_want;
        let mut c_bytes_note = String::new();
        let truncations = |kinds: &[&str]| kinds.iter().filter(|k| **k == "truncated").count();
        if !desync {
            c_truncated += truncations(&c_want);
            c_flags += truncations(&c_got);
            c_right += multiset_overlap(&c_got, &c_want, |k| k == "truncated");
        }
        // What each client read, as it says and as the agent does (not after a desync).
        if !desync {
            let mut theirs: Vec<u64> = o
                .client
                .iter()
                .filter(|l| client_expected(l).is_some())
                // curl's count of a download it refused (--max-filesize) is its head alone,
                // not what it read of the body.
                .filter(|l| !(l["client"] == "curl" && l["end"] == "closed"))
                .map(|l| u(&l["received_bytes"]))
                .collect();
            let curl_closed = o
                .client
                .iter()
                .any(|l| l["client"] == "curl" && l["end"] == "closed");
            let mut ours: Vec<u64> = c_got_lines
                .iter()
                .filter(|v| v["peer"] == o.local.as_str())
                .filter(|_| !curl_closed)
                .map(|v| u(&v["received_bytes"]))
                .collect();
            theirs.sort_unstable();
            ours.sort_unstable();
            if theirs != ours {
                c_bytes_wrong += 1;
                c_bytes_note = format!(
                    " (received bytes: clients {}, agent {})",
                    total(&theirs),
                    total(&ours)
                );
            }
        }
        c_pass += usize::from(client_ok);
        if !(ok && client_ok) {
            // The evidence, for a failure that may not come again: every verdict counted.
            println!(
                "{}: the verdicts counted, server side then client side:",
                sc.name
            );
            for v in got.iter().chain(&up_got).chain(&c_got_lines) {
                println!("  {v}");
            }
        }
        rows.push(Row {
            name: sc.name,
            expected: summarize(&want),
            got: summarize(&kinds),
            client_bytes: total(&client_bytes),
            agent_bytes: total(&agent_bytes),
            client_side: if client_ok {
                summarize(&c_got)
            } else {
                format!(
                    "FAIL: expected {}, got {}",
                    summarize(&c_want),
                    summarize(&c_got)
                )
            } + &c_bytes_note,
            pass: ok,
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
         precision {:.0}% ({right_flags}/{flags} flags right); false positives on healthy traffic: \
         {false_flags} ({healthy} healthy scenarios); delivered bytes wrong in {bytes_wrong}",
        rows.len(),
        rows.iter().filter(|r| r.pass).count(),
        pct(caught, truncated),
        pct(right_flags, flags),
    );
    println!(
        "client side: {c_pass} of {} scenarios as expected; recall {:.0}% ({c_right}/{c_truncated} truncations the clients got flagged `truncated`); \
         precision {:.0}% ({c_right}/{c_flags} `truncated` flags right); received bytes wrong in {c_bytes_wrong}",
        rows.len(),
        pct(c_right, c_truncated),
        pct(c_right, c_flags),
    );
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).map(|r| &r.name).collect();
    assert!(failed.is_empty(), "scenarios failed: {failed:?}");
    assert_eq!(
        (c_pass, c_right, c_bytes_wrong),
        (rows.len(), c_truncated, 0),
        "the client side: every scenario as expected, recall and precision 100%"
    );
    assert_eq!(c_right, c_flags);
    assert_eq!(
        (caught, right_flags, false_flags, bytes_wrong),
        (truncated, flags, 0, 0)
    );
}

/// The verdicts at `local` after the first `skip`, once `n` arrived (or the wait ran out) and
/// a moment for a wrong extra one passed; and whether exactly `n` came.
fn collect(agent: &Agent, local: &str, skip: usize, n: usize) -> (Vec<Value>, bool) {
    let _ = agent.wait_for(local, skip + n, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let got = agent
        .verdicts(local)
        .split_off(skip.min(agent.verdicts(local).len()));
    let ok = got.len() == n;
    (got, ok)
}

/// How many of `got`'s kinds that `counted` are also in `want` (as multisets).
fn multiset_overlap(got: &[&str], want: &[&str], counted: fn(&str) -> bool) -> usize {
    let mut want: Vec<&str> = want.to_vec();
    got.iter()
        .filter(|k| counted(k))
        .filter(|k| match want.iter().position(|w| w == *k) {
            Some(i) => {
                want.remove(i);
                true
            }
            None => false,
        })
        .count()
}

/// Byte counts for the table: one number, or their total and how many.
fn total(bytes: &[u64]) -> String {
    match bytes {
        [] => "-".into(),
        [one] => one.to_string(),
        many => format!("{} in {}", many.iter().sum::<u64>(), many.len()),
    }
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
    println!(
        "| scenario | expected | agent | client bytes | agent delivered bytes | | client side |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.expected,
            r.got,
            r.client_bytes,
            r.agent_bytes,
            if r.pass { "ok" } else { "FAIL" },
            r.client_side
        );
    }
    println!();
}
