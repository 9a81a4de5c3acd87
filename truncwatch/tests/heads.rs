//! Kernel tests: response heads of every realistic size are judged like short ones, wherever
//! they end (in the send that carries the body, alone, in the first iovec of a writev, spread
//! over many iovecs, one header line per send) and whatever their order (the framing header
//! after 9 KB of cookies). Heads over `--max-head-bytes` are `unparsed`, never judged.
//!
//! Each case first checks that its scenario reproduced (the server's and the client's own
//! counts), then the agent's verdict and bytes.
mod support;

use serde_json::Value;
use std::time::Duration;
use support::{Agent, SLOW, Server, WAIT, fetch, kernel_or_skip, reproduced, u, unix_path};

/// Head sizes: what a typical site sends with cookies and security headers, and one over 8 KB.
const SIZES: [usize; 2] = [1300, 9000];
/// How the server hands its head over (and the largest head size to try it with: one iovec
/// per word takes some 90 iovecs for 1.3 KB and 490 for 9 KB; the kernel gathers from up to
/// 512).
const LAYOUTS: &[(&str, &[&str], usize)] = &[
    (
        "with the body in one write",
        &["--send-with", "write"],
        9000,
    ),
    (
        "as the first iovec of a writev",
        &["--send-with", "writev"],
        9000,
    ),
    ("one iovec per word", &["--send-with", "writev-words"], 9000),
    ("alone, the body spliced", &["--send-with", "splice"], 9000),
    ("one header line per send", &["--split-head"], 9000),
    ("chunked", &["--chunked"], 9000),
];

/// One response from a lab server with a head of `size` bytes laid out as `layout`: served
/// whole to a slow reader, then cut short; each must be judged, with exact bytes.
fn judged(
    agent: &Agent,
    listen: &dyn Fn(&str) -> String,
    size: usize,
    layout: &str,
    args: &[&str],
) {
    let size_arg = size.to_string();
    let server_args = [&["--head-bytes", size_arg.as_str()], args].concat();
    for mode in ["full", "short-close"] {
        let case = format!("{size}-byte head {layout}, {mode}");
        let srv = Server::start_args(&listen(mode), mode, 4 << 20, &server_args);
        let got = fetch(&srv.endpoint, SLOW);
        let client = &got[0];
        let sent = &srv.record(0);
        let cut = mode != "full";
        reproduced(
            u(&client["head_bytes"]) >= size as u64,
            &format!("{case}: head {client}"),
        );
        reproduced(
            client["complete"] == !cut
                && (u(&sent["sent_bytes"]) < u(&sent["expected_bytes"])) == cut,
            &format!("{case}: client {client}, server {sent}"),
        );
        let v = one(agent, &srv, &case);
        let want = if cut { "short_write" } else { "complete" };
        assert_eq!(v["verdict"], want, "{case}: {v}");
        assert_eq!(
            u(&v["sent_bytes"]),
            u(&client["received_bytes"]),
            "{case}: {v}"
        );
        assert_eq!(
            u(&v["delivered_bytes"]),
            u(&client["received_bytes"]),
            "{case}: {v}"
        );
        assert_eq!(u(&v["sent_bytes"]), u(&sent["sent_bytes"]), "{case}: {v}");
    }
}

/// The one verdict about `srv`, after a moment for a wrong second one. (By its process too:
/// an earlier case's server once had the same ephemeral port, in CI's 6.1 guest.)
fn one(agent: &Agent, srv: &Server, case: &str) -> Value {
    agent.wait_for_server(srv, 1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let v = agent.wait_for_server(srv, 1, Duration::ZERO);
    assert_eq!(v.len(), 1, "{case}: one verdict: {v:?}");
    v[0].clone()
}

/// `listen`: where a server listens, given a name unique to the case.
fn every_layout(listen: impl Fn(&str) -> String) {
    let agent = Agent::start();
    for size in SIZES {
        for (i, (layout, args, largest)) in LAYOUTS.iter().enumerate() {
            if size <= *largest {
                let at = |mode: &str| listen(&format!("{size}-{i}-{mode}"));
                judged(&agent, &at, size, layout, args);
            }
        }
    }
}

#[test]
fn tcp_long_heads_are_judged() {
    if kernel_or_skip("tcp_long_heads_are_judged") {
        every_layout(|_| "tcp:127.0.0.1:0".into());
    }
}

#[test]
fn unix_long_heads_are_judged() {
    if kernel_or_skip("unix_long_heads_are_judged") {
        every_layout(|name| format!("unix:{}", unix_path(&format!("head-{name}.sock"))));
    }
}

/// Over `--max-head-bytes` (16 KiB by default), or over the 512 iovecs of one `writev` the
/// kernel gathers a head from: not judged, whether cut or not; and a bound raised past the
/// head judges it.
#[test]
fn heads_over_the_bound_are_unparsed() {
    if !kernel_or_skip("heads_over_the_bound_are_unparsed") {
        return;
    }
    let agent = Agent::start();
    for mode in ["full", "short-close"] {
        let srv = Server::start_args("tcp:127.0.0.1:0", mode, 4 << 20, &["--head-bytes", "20000"]);
        let got = fetch(&srv.endpoint, SLOW);
        reproduced(
            u(&got[0]["head_bytes"]) > 16 << 10,
            &format!("{:?}", got[0]),
        );
        let v = one(&agent, &srv, mode);
        assert_eq!(v["verdict"], "unparsed", "{mode}: {v}");
    }
    // Under the bound but over the iovecs the kernel gathers from (512): a 14 KB head one
    // iovec per word takes some 760. Cut short, it is still unparsed, never guessed.
    let srv = Server::start_args(
        "tcp:127.0.0.1:0",
        "short-close",
        4 << 20,
        &["--head-bytes", "14000", "--send-with", "writev-words"],
    );
    let got = fetch(&srv.endpoint, SLOW);
    reproduced(
        u(&got[0]["head_bytes"]) > 13_000 && got[0]["complete"] == false,
        &format!("{:?}", got[0]),
    );
    let v = one(&agent, &srv, "writev-words");
    assert_eq!(v["verdict"], "unparsed", "a head over 512 iovecs: {v}");
    drop(agent);
    let agent = Agent::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--canary-interval",
        "0s",
        "--max-head-bytes",
        "32768",
    ]);
    judged(
        &agent,
        &|_| "tcp:127.0.0.1:0".into(),
        20000,
        "under a raised bound",
        &[],
    );
}
