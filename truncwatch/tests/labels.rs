//! The metrics' label table under a flood of renamed processes (issue 26, finding 7): 1 000
//! processes, run by an unprivileged user from one executable under 1 000 names, each serve
//! one response; a real server then cuts one short. The victim keeps its own labels, the flood
//! is held to its owner's quota, and the refusals are counted. Real agent, real kernel; needs
//! root (see `support::kernel_or_skip`).
#[macro_use]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Agent, SLOW, Server, WAIT, fetch, http_get};

/// Processes in the flood, and how many are alive at once.
const FLOOD: usize = 1000;
const BATCH: usize = 100;
/// The owner quota with the default `--max-label-sets` (docs/metrics.md, "Label sets").
const QUOTA: usize = 1000 / 8;

/// The flood's one program: a shell script, so that each symlink to it runs under its own
/// name (the kernel names a script's process after the path it was started by) while the
/// executable stays `/bin/sh`. It answers on stdout (the accepted socket) and stays alive
/// until its stdin closes, so the agent can look it up while it runs.
const SCRIPT: &str = "#!/bin/sh\nprintf 'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok'\nread -r _ || :\n";

kernel_test!(
/// 1 000 distinctly named processes cannot take the victim's labels.
renamed_processes_cannot_take_the_victims_labels {
    let dir = std::env::temp_dir().join(format!("truncwatch-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("serve.sh");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap().to_string();
    for batch in 0..FLOOD / BATCH {
        let names = (batch * BATCH..(batch + 1) * BATCH).map(|i| format!("evil-{i:04}"));
        let served: Vec<_> = names.map(|n| serve_as(&dir, &script, &n, &listener)).collect();
        // Alive while the agent looks them up (at their connection's first sight).
        std::thread::sleep(Duration::from_millis(500));
        for (child, client) in served {
            finish(child, client);
        }
    }
    let flood = agent.wait_for(&local, FLOOD, WAIT);
    assert_eq!(flood.len(), FLOOD, "every response of the flood is judged");
    let mut comms: Vec<&str> = flood.iter().filter_map(|v| v["comm"].as_str()).collect();
    comms.sort_unstable();
    comms.dedup();
    assert_eq!(comms.len(), FLOOD, "each under its own name, in the JSON lines: {comms:?}");

    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    fetch(&srv.endpoint, SLOW);
    let v = agent.wait_for_server(&srv, 1, WAIT);
    assert_eq!(v[0]["verdict"], "short_write", "{v:?}");
    let victim = r#"verdict="short_write",side="server",transport="tcp",tls="false",process="tw-lab-server","#;
    let metrics = scrape_until(&agent.metrics_addr(), victim);
    let lines = |needle: &str| metrics.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>();
    assert_eq!(lines(victim).iter().filter(|l| l.starts_with("truncwatch_responses_total{")).count(), 1, "the victim keeps its own labels:\n{metrics}");
    let evil = lines("process=\"evil-");
    let count = |metric: &str| evil.iter().filter(|l| l.starts_with(metric)).count();
    // One owner (/bin/sh in this cgroup); a process the agent could not look up in time would
    // count under the unknown owner, which has a quota of its own.
    let held = count("truncwatch_responses_total{");
    assert!((1..=2 * QUOTA).contains(&held), "the flood holds {held} label sets:\n{metrics}");
    assert!(count("truncwatch_build_info{") <= QUOTA, "{metrics}");
    let refused = series(&metrics, r#"truncwatch_label_sets_overflow_total{table="responses"}"#);
    assert!(refused >= (FLOOD - held) as f64, "refusals counted: {refused}\n{metrics}");
    eprintln!("flood of {FLOOD} names: {held} label sets held, {refused} verdicts refused");
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
});

/// Run `script` as the unprivileged user under the name `name` (a symlink), answering one
/// request on a connection accepted from `listener`: the child and the client's end.
fn serve_as(
    dir: &std::path::Path,
    script: &std::path::Path,
    name: &str,
    listener: &TcpListener,
) -> (Child, TcpStream) {
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(script, &link).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut req = [0u8; 64];
    let _ = (&server).read(&mut req).unwrap();
    let child = Command::new(&link)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(std::os::fd::OwnedFd::from(server))
        .stderr(Stdio::null())
        .spawn()
        .expect("run the flood's script");
    (child, client)
}

/// Let the child end (its stdin closes) and read its whole response.
fn finish(mut child: Child, mut client: TcpStream) {
    drop(child.stdin.take());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    assert!(
        got.ends_with(b"\r\n\r\nok"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(child.wait().unwrap().success());
}

/// The value of the first series whose line starts with `prefix`, or 0.
fn series(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Scrape until a line contains `needle` (the metrics are refreshed every second).
fn scrape_until(addr: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        if body.contains(needle) || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
