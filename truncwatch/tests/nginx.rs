//! nginx from Debian: `sendfile on; send_timeout 1s;` gives up on a reader that stalls, closes
//! the connection with most of a 30 MiB file unsent, and logs the request as a success.
mod support;

use std::time::Duration;
use support::{Agent, FILE_BYTES, NGINX, Nginx, fetch, nginx_or_skip, u};

#[test]
fn nginx_send_timeout_is_a_short_write() {
    if !nginx_or_skip("nginx_send_timeout_is_a_short_write") {
        return;
    }
    let agent = Agent::start();
    let ngx = Nginx::start(&["sendfile on; send_timeout 1s;"]);
    let ep = format!("tcp:127.0.0.1:{}", ngx.ports[0]);
    let local = format!("127.0.0.1:{}", ngx.ports[0]);
    // Reads 1 MB of body, then stalls 3 s: nginx's 1 s send_timeout fires meanwhile.
    let got = fetch(
        &ep,
        &[
            "--path",
            "/big.bin",
            "--stall-after",
            "1000000",
            "--stall",
            "3s",
        ],
    );
    assert_eq!(
        got[0]["complete"], false,
        "nginx should have cut it: {}",
        got[0]
    );
    let v = agent.wait_for(&local, 1, Duration::from_secs(30));
    assert_eq!(v.len(), 1, "{v:?}");
    let v = &v[0];
    assert_eq!(v["verdict"], "short_write", "{v}");
    assert_eq!(v["comm"], "nginx");
    // The build behind it: the executable nginx runs and its GNU build-id, as binutils reads
    // it (the deploy to roll back, issue 16).
    assert_eq!(v["exe"], NGINX, "{v}");
    let readelf = std::process::Command::new("readelf")
        .args(["-n", NGINX])
        .output()
        .expect("readelf (binutils) runs");
    let build_id = String::from_utf8_lossy(&readelf.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("Debian's nginx has a build id");
    assert_eq!(v["build_id"], build_id.as_str(), "{v}");
    assert_eq!(
        u(&v["sent_bytes"]),
        u(&got[0]["received_bytes"]),
        "agent bytes = client bytes: {v}"
    );
    assert_eq!(
        u(&v["expected_bytes"]),
        u(&got[0]["head_bytes"]) + FILE_BYTES
    );
    assert_eq!(u(&v["content_length"]), FILE_BYTES);
    // The evidence of a slow reader, from the kernel's own TCP counters: the client's window
    // was closed when nginx gave up, after about a second (send_timeout) limited by it.
    let e = &v["evidence"];
    assert_eq!(e["peer_window_at_end"], 0, "{e}");
    assert!(u(&e["rwnd_limited_ms"]) >= 500, "{e}");
    assert!(
        u(&e["unacked_bytes_at_end"]) > 0,
        "bytes still in flight after the FIN: {e}"
    );
    assert!(u(&e["duration_ms"]) >= 900, "{e}");

    // The same file to a reader that does not stall: complete, never flagged.
    let ok = fetch(&ep, &["--path", "/big.bin", "--requests", "2"]);
    assert!(ok.iter().all(|r| r["complete"] == true));
    let v = agent.wait_for(&local, 3, Duration::from_secs(30));
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(
        v[1..]
            .iter()
            .all(|x| x["verdict"] == "complete"
                && u(&x["sent_bytes"]) == u(&ok[0]["received_bytes"])),
        "{v:?}"
    );

    // HEAD: nginx answers with Content-Length and no body. Seen on the request path, each
    // answer is complete with its head.
    let heads = fetch(
        &ep,
        &["--path", "/big.bin", "--method", "HEAD", "--requests", "3"],
    );
    assert!(heads.iter().all(|r| r["complete"] == true), "{heads:?}");
    agent.wait_for(&local, 6, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after = &agent.verdicts(&local)[3..];
    assert_eq!(after.len(), 3, "one verdict per HEAD answer: {after:?}");
    for (v, client) in after.iter().zip(&heads) {
        assert_eq!(v["verdict"], "complete", "{v}");
        assert_eq!(u(&v["sent_bytes"]), u(&client["head_bytes"]), "{v}");
    }

    // Pipelining: five requests in one write. nginx answers each in sends of its own, so
    // each answer is judged on its own, complete, with its exact bytes.
    let piped = fetch(&ep, &["--path", "/1k.bin", "--requests", "5", "--pipeline"]);
    assert!(
        piped.len() == 5 && piped.iter().all(|r| r["complete"] == true),
        "{piped:?}"
    );
    agent.wait_for(&local, 11, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after = &agent.verdicts(&local)[6..];
    assert_eq!(
        after.len(),
        5,
        "one verdict per pipelined answer: {after:?}"
    );
    for (v, client) in after.iter().zip(&piped) {
        assert_eq!(v["verdict"], "complete", "{v}");
        assert_eq!(u(&v["sent_bytes"]), u(&client["received_bytes"]), "{v}");
    }
}
