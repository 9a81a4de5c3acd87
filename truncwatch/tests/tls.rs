//! HTTPS, judged from the TLS library's plaintext (uprobes on OpenSSL's SSL_write/SSL_read):
//! nginx (libssl.so.3, socket BIO), Python's `ssl` (the same), and Node.js (OpenSSL linked into
//! the executable, memory BIO), each with a client that records what it got (tests/servers/tls/
//! fetch.py, Python's `ssl`).
mod support;

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    Agent, BIN, FILE_BYTES, Nginx, certificate, free_port, nginx_or_skip, u, wait_listening,
};

const SERVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/tls");

/// Fetch `path` over TLS from 127.0.0.1:`port` (fetch.py's options in `args`): what the client
/// got, one object per response.
fn fetch(port: u16, path: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(format!("{SERVERS}/fetch.py"))
        .args([&port.to_string(), path])
        .args(args)
        .output()
        .expect("run python3 tests/servers/tls/fetch.py");
    assert!(
        out.status.success(),
        "fetch.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("fetch.py prints JSON"))
        .collect()
}

/// Stop the agent: no server-side verdict may be about a client of `servers` (its socket's
/// peer is the server): a TLS call tied to the wrong socket would show up there. (Tests run
/// side by side, so verdicts about other tests' servers are there too, and are not looked at.)
fn none_about_clients(agent: Agent, servers: &[String]) {
    for v in agent.stop().iter().filter(|v| v["side"] == "server") {
        let peer = v["peer"].as_str().unwrap_or("");
        assert!(
            !servers.iter().any(|s| s == peer),
            "a server-side verdict about a client's socket: {v}"
        );
    }
}

/// The one client-side verdict about a response read from `server` after the first `seen`.
fn client_verdict(agent: &Agent, server: &str, seen: usize) -> Value {
    let v = agent.wait_for_client(server, seen + 1, Duration::from_secs(30));
    assert!(
        v.len() > seen,
        "no client-side verdict about {server}: {v:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = agent.client_verdicts(server);
    assert_eq!(v.len(), seen + 1, "one verdict per response: {v:?}");
    v[seen].clone()
}

/// Exactly one verdict about `local`: the first, and no other after a second more.
fn one_verdict(agent: &Agent, local: &str) -> Value {
    let v = agent.wait_for(local, 1, Duration::from_secs(30));
    assert_eq!(v.len(), 1, "{v:?}");
    std::thread::sleep(Duration::from_secs(1));
    let v = agent.verdicts(local);
    assert_eq!(v.len(), 1, "one verdict per response: {v:?}");
    v[0].clone()
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory with a certificate: (directory, cert, key).
fn cert_dir(name: &str) -> (tempdir::Dir, String, String) {
    let dir = tempdir::Dir::new(name);
    let (cert, key) = certificate(&dir.0);
    (dir, cert, key)
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("truncwatch-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// tests/servers/tls/short.py on a free port: each connection promises `promise` body bytes
/// after a head of about `head` bytes, sends `send` of them, then `end`s (close|reset).
fn python_server(
    cert: &str,
    key: &str,
    promise: u64,
    send: u64,
    head: u64,
    end: &str,
) -> (Proc, u16) {
    let mut python = Command::new("python3");
    python.arg(format!("{SERVERS}/short.py"));
    python_server_in(python, cert, key, promise, send, head, end)
}

/// [`python_server`] run by `python`: a command that runs short.py, its options to come.
fn python_server_in(
    mut python: Command,
    cert: &str,
    key: &str,
    promise: u64,
    send: u64,
    head: u64,
    end: &str,
) -> (Proc, u16) {
    let port = free_port();
    let child = python
        .args([&port.to_string(), cert, key])
        .args([promise, send, head].map(|n| n.to_string()))
        .args([end, "0.3"])
        .stderr(Stdio::null())
        .spawn()
        .expect("run python3 tests/servers/tls/short.py");
    wait_listening(port);
    (Proc(child), port)
}

#[test]
fn nginx_https_send_timeout_is_a_short_write() {
    if !nginx_or_skip("nginx_https_send_timeout_is_a_short_write") {
        return;
    }
    let agent = Agent::start();
    let ngx = Nginx::start_tls(&["send_timeout 1s;"]);
    let port = ngx.ports[0];
    let local = format!("127.0.0.1:{port}");
    // Reads 1 MB of body, then stalls 3 s: nginx's 1 s send_timeout fires meanwhile.
    let got = fetch(
        port,
        "/big.bin",
        &["--stall-after", "1000000", "--stall", "3"],
    );
    assert_eq!(
        got[0]["complete"], false,
        "nginx should have cut it: {}",
        got[0]
    );
    let v = &one_verdict(&agent, &local);
    assert_eq!(
        (&v["verdict"], &v["tls"], &v["comm"]),
        (&"short_write".into(), &true.into(), &"nginx".into()),
        "{v}"
    );
    assert_eq!(
        u(&v["sent_bytes"]),
        u(&got[0]["received_bytes"]),
        "agent bytes = client's plaintext bytes: {v}"
    );
    assert_eq!(
        u(&v["expected_bytes"]),
        u(&got[0]["head_bytes"]) + FILE_BYTES,
        "{v}"
    );
    assert_eq!(v["evidence"]["peer_window_at_end"], 0, "a slow reader: {v}");

    // Its client (Python's ssl) read it truncated.
    let c = client_verdict(&agent, &local, 0);
    assert_eq!(
        (&c["verdict"], &c["tls"]),
        (&"truncated".into(), &true.into()),
        "{c}"
    );
    assert_eq!(u(&c["received_bytes"]), u(&got[0]["received_bytes"]), "{c}");

    // The same download read steadily, twice on one connection: complete, exact bytes.
    let ok = fetch(port, "/big.bin", &["--requests", "2"]);
    assert!(ok.iter().all(|r| r["complete"] == true), "{ok:?}");
    let v = agent.wait_for(&local, 3, Duration::from_secs(30));
    assert_eq!(v.len(), 3, "{v:?}");
    for x in &v[1..] {
        assert_eq!(
            (&x["verdict"], &x["tls"]),
            (&"complete".into(), &true.into()),
            "{x}"
        );
        assert_eq!(u(&x["sent_bytes"]), u(&ok[0]["received_bytes"]), "{x}");
    }
    let c = agent.wait_for_client(&local, 3, Duration::from_secs(30));
    for x in &c[1..] {
        assert_eq!(
            (&x["verdict"], &x["tls"]),
            (&"complete".into(), &true.into()),
            "{x}"
        );
        assert_eq!(u(&x["received_bytes"]), u(&ok[0]["received_bytes"]), "{x}");
    }

    // HEAD over TLS: complete with its head (the request's method is read from the plaintext).
    let heads = fetch(port, "/big.bin", &["--method", "HEAD", "--requests", "3"]);
    assert!(heads.iter().all(|r| r["complete"] == true), "{heads:?}");
    let v = agent.wait_for(&local, 6, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after = &agent.verdicts(&local)[3..];
    assert_eq!(after.len(), 3, "one verdict per HEAD answer: {v:?}");
    for (x, client) in after.iter().zip(&heads) {
        assert_eq!(x["verdict"], "complete", "{x}");
        assert_eq!(u(&x["sent_bytes"]), u(&client["head_bytes"]), "{x}");
    }

    // Keep-alive: 50 small responses on one TLS connection, each complete with its bytes.
    let many = fetch(port, "/1k.bin", &["--requests", "50"]);
    assert!(
        many.len() == 50 && many.iter().all(|r| r["complete"] == true),
        "{many:?}"
    );
    agent.wait_for(&local, 56, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after = &agent.verdicts(&local)[6..];
    assert_eq!(after.len(), 50, "one verdict per response: {after:?}");
    for (x, client) in after.iter().zip(&many) {
        assert_eq!(x["verdict"], "complete", "{x}");
        assert_eq!(u(&x["sent_bytes"]), u(&client["received_bytes"]), "{x}");
    }
    none_about_clients(agent, &[local]);
}

/// A Python `ssl` server that promises 8 MB and closes after 2 MB, started before the agent:
/// its new connections are judged, with exact plaintext bytes, for a 200-byte and a 1.3 KB head.
#[test]
fn python_https_short_write_has_exact_plaintext_bytes() {
    if !support::kernel_or_skip("python_https_short_write_has_exact_plaintext_bytes") {
        return;
    }
    let (_dir, cert, key) = cert_dir("tls-python");
    let servers: Vec<(Proc, u16, u64)> = [200, 1300]
        .into_iter()
        .map(|head| {
            let (p, port) = python_server(&cert, &key, 8_000_000, 2_000_000, head, "close");
            (p, port, head)
        })
        .collect();
    let agent = Agent::start();
    for (_p, port, head) in &servers {
        let got = fetch(*port, "/", &[]);
        assert_eq!(got[0]["complete"], false, "{got:?}");
        let local = format!("127.0.0.1:{port}");
        let v = &one_verdict(&agent, &local);
        assert_eq!(
            (&v["verdict"], &v["tls"]),
            (&"short_write".into(), &true.into()),
            "{v}"
        );
        assert_eq!(u(&v["sent_bytes"]), u(&got[0]["received_bytes"]), "{v}");
        assert_eq!(
            u(&v["delivered_bytes"]),
            u(&got[0]["received_bytes"]),
            "{v}"
        );
        assert_eq!(u(&v["content_length"]), 8_000_000, "{v}");
        let head_bytes = u(&got[0]["head_bytes"]);
        assert!(
            head_bytes.abs_diff(*head) < 64,
            "a {head}-byte head: {head_bytes}"
        );
        assert_eq!(u(&v["sent_bytes"]), head_bytes + 2_000_000, "{v}");
        // The client's side (Python's ssl, the same libssl): truncated, what it read.
        let c = client_verdict(&agent, &local, 0);
        assert_eq!(
            (&c["verdict"], &c["tls"], &c["side"]),
            (&"truncated".into(), &true.into(), &"client".into()),
            "{c}"
        );
        assert_eq!(u(&c["received_bytes"]), u(&got[0]["received_bytes"]), "{c}");
    }
    let locals: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.1))
        .collect();
    none_about_clients(agent, &locals);
}

/// `--no-tls`: an operator who will not pay for the TLS hooks turns them off. No TLS library
/// is hooked and an HTTPS response cut short gets no verdict, while a plain one still does.
#[test]
fn no_tls_leaves_https_alone() {
    if !support::kernel_or_skip("no_tls_leaves_https_alone") {
        return;
    }
    let (_dir, cert, key) = cert_dir("tls-off");
    let (_p, port) = python_server(&cert, &key, 4_000_000, 1_000_000, 200, "close");
    let plain = support::Server::start("tcp:127.0.0.1:0", "full", 100_000);
    let agent = Agent::start_args(&[
        "--metrics-addr",
        "127.0.0.1:0",
        "--canary-interval",
        "0s",
        "--no-tls",
    ]);
    let got = fetch(port, "/", &[]);
    assert_eq!(got[0]["complete"], false, "the server cut it: {got:?}");
    let plain_got = support::fetch(&plain.endpoint, &[]);
    assert_eq!(plain_got[0]["complete"], true, "{plain_got:?}");
    let v = agent.wait_for(&plain.local(), 1, std::time::Duration::from_secs(10));
    assert_eq!(v.len(), 1, "plain HTTP is still judged: {v:?}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let local = format!("127.0.0.1:{port}");
    assert_eq!(agent.verdicts(&local), Vec::<serde_json::Value>::new());
    let log = agent.log.lock().unwrap().join("\n");
    assert!(log.contains("TLS watching off (--no-tls)"), "{log}");
    assert!(!log.contains("TLS: hooked"), "no library hooked: {log}");
    drop(log);
    agent.stop();
}

/// A TLS connection this host resets with data in flight (SO_LINGER 0 while the client
/// stalls): the response was all handed over, and the reset dropped what the client had not
/// acknowledged. `reset_discard`, with the plaintext the client got.
#[test]
fn https_reset_with_data_in_flight_is_a_reset_discard() {
    if !support::kernel_or_skip("https_reset_with_data_in_flight_is_a_reset_discard") {
        return;
    }
    let (_dir, cert, key) = cert_dir("tls-reset");
    let agent = Agent::start();
    // 1 MB fits the kernel's buffers while the client stalls: all handed over, then reset.
    let (_p, port) = python_server(&cert, &key, 1_000_000, 1_000_000, 200, "reset");
    let got = fetch(port, "/", &["--stall-after", "100000", "--stall", "2"]);
    assert_eq!(
        got[0]["complete"], false,
        "the reset should have cut it: {got:?}"
    );
    let local = format!("127.0.0.1:{port}");
    let v = &one_verdict(&agent, &local);
    assert_eq!(
        (&v["verdict"], &v["tls"]),
        (&"reset_discard".into(), &true.into()),
        "{v}"
    );
    assert_eq!(
        u(&v["sent_bytes"]),
        u(&v["expected_bytes"]),
        "all handed over: {v}"
    );
    assert_eq!(
        u(&v["delivered_bytes"]),
        u(&got[0]["received_bytes"]),
        "what the client got: {v}"
    );
    none_about_clients(agent, &[local]);
}

/// Node.js (OpenSSL in the executable, records written through a memory BIO after each call):
/// `server.timeout` cuts a stalled reader with most of the body still in Node's buffers.
/// Started after the agent: its executable is found and hooked.
#[test]
fn node_https_timeout_is_a_short_write() {
    if !support::kernel_or_skip("node_https_timeout_is_a_short_write") {
        return;
    }
    let (_dir, cert, key) = cert_dir("tls-node");
    let agent = Agent::start();
    let port = free_port();
    let node = Command::new("node")
        .arg(format!("{SERVERS}/node-timeout.js"))
        .args([
            &port.to_string(),
            &cert,
            &key,
            &FILE_BYTES.to_string(),
            // Past a steady reader's longest pause under emulation (the test kernels' guests
            // read 30 MiB of TLS slowly; 2 s was once too short in CI's 6.12 guest,
            // 2026-12-02), well short of the stalled reader's 10 s (node keeps writing into
            // the socket buffers for a while after the reader stops).
            "4000",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("node (Debian's nodejs) is needed");
    let _node = Proc(node);
    wait_listening(port);
    // Node's OpenSSL is in the executable (nodesource's builds; the agent's next scan hooks
    // it) or is the host's libssl.so.3 (Debian's build; hooked from the start).
    let own = agent.wait_log("/node (", Duration::from_secs(5));
    eprintln!(
        "node's TLS: {}",
        own.as_deref().unwrap_or("the host's libssl.so.3")
    );
    let got = fetch(
        port,
        "/big.bin",
        &["--stall-after", "1000000", "--stall", "10"],
    );
    assert_eq!(
        got[0]["complete"], false,
        "node should have cut it: {got:?}"
    );
    let local = format!("127.0.0.1:{port}");
    let v = &one_verdict(&agent, &local);
    assert_eq!(
        (&v["verdict"], &v["tls"], &v["comm"]),
        (&"short_write".into(), &true.into(), &"node".into()),
        "{v}"
    );
    // Reckoned from the ciphertext that reached the kernel: exact to a 16 KiB record.
    let (sent, received) = (u(&v["sent_bytes"]), u(&got[0]["received_bytes"]));
    assert!(
        sent.abs_diff(received) <= 16384,
        "sent {sent}, client got {received}: {v}"
    );
    assert!(sent < u(&v["expected_bytes"]), "{v}");

    // Read steadily: complete.
    let ok = fetch(port, "/big.bin", &[]);
    assert_eq!(ok[0]["complete"], true, "{ok:?}");
    let v = agent.wait_for(&local, 2, Duration::from_secs(30));
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[1]["verdict"], "complete", "{}", v[1]);
    assert_eq!(
        u(&v[1]["sent_bytes"]),
        u(&ok[0]["received_bytes"]),
        "{}",
        v[1]
    );
    none_about_clients(agent, &[local]);
}

/// Least privilege (deploy/: uid 0 with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE only). A TLS
/// server of another user with a copy of `libssl.so.3` of its own, as a container has:
/// - the agent finds that copy through `/proc/<pid>/maps` and `/proc/<pid>/root`, which the
///   kernel opens only to a process allowed to ptrace the server (`ptrace_may_access`): with
///   CAP_SYS_PTRACE the server is judged, without it the copy is not seen and nothing is said;
/// - without CAP_SYS_ADMIN the perf uprobe event source is refused, and the agent makes its
///   uprobes through tracefs (`uprobe_events`) instead.
#[test]
fn https_least_privilege_needs_cap_sys_ptrace_for_other_users() {
    if !support::kernel_or_skip("https_least_privilege_needs_cap_sys_ptrace_for_other_users") {
        return;
    }
    let (dir, cert, key) = cert_dir("tls-caps");
    // Everything the server (uid 65534) runs from, where it may read it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::copy(host_libssl(), dir.0.join("libssl.so.3")).unwrap();
    let script = dir.0.join("short.py");
    std::fs::copy(format!("{SERVERS}/short.py"), &script).unwrap();
    let mut python = Command::new("setpriv");
    python
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("/usr/bin/python3")
        .arg(&script)
        .env("LD_LIBRARY_PATH", &dir.0);
    let (server, port) = python_server_in(python, &cert, &key, 8_000_000, 2_000_000, 1300, "close");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.0.id())).unwrap();
    assert!(
        maps.contains(&format!("{}/libssl.so.3", dir.0.display())),
        "the server maps its own libssl copy:\n{maps}"
    );
    let local = format!("127.0.0.1:{port}");
    let judged = |caps: &str| {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(BIN);
        let agent = Agent::start_via(
            setpriv,
            &["--metrics-addr", "127.0.0.1:0", "--canary-interval", "0s"],
        );
        // Past the first scan of /proc, whatever it could read.
        std::thread::sleep(Duration::from_secs(3));
        let got = fetch(port, "/", &[]);
        assert_eq!(got[0]["complete"], false, "{got:?}");
        let v = agent.wait_for(&local, 1, Duration::from_secs(10));
        let tracefs = agent.wait_log("through tracefs", Duration::ZERO).is_some();
        agent.stop();
        (v, got, tracefs)
    };
    // Debian's kernels (kernel.perf_event_paranoid 3, their default) admit no perf event
    // without CAP_SYS_ADMIN: the agent must say so; then the test goes on at upstream's 2.
    let paranoid = "/proc/sys/kernel/perf_event_paranoid";
    let level = std::fs::read_to_string(paranoid)
        .unwrap()
        .trim()
        .to_string();
    let _restore = Restore(paranoid, level.clone());
    if level.parse::<i32>().unwrap() >= 3 {
        let mut setpriv = Command::new("setpriv");
        let caps = "+bpf,+perfmon,+sys_ptrace";
        setpriv
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(BIN);
        if support::kprobe_backend() {
            // kprobes are perf events too: no backend attaches; the agent says why and exits.
            let mut child = Proc(
                setpriv
                    .args(["run", "--all", "--metrics-addr", "127.0.0.1:0"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.0.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the agent still runs after 60 s at kernel.perf_event_paranoid {level}"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            let mut err = String::new();
            use std::io::Read;
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(
                !status.success() && err.contains("kernel.perf_event_paranoid is"),
                "the agent names the sysctl at level {level} and exits: {err}"
            );
        } else {
            let agent = Agent::start_via(setpriv, &["--metrics-addr", "127.0.0.1:0"]);
            let said = agent.wait_log("kernel.perf_event_paranoid is", Duration::from_secs(10));
            agent.stop();
            assert!(
                said.is_some(),
                "the agent names the sysctl at level {level}"
            );
        }
        std::fs::write(paranoid, "2").unwrap();
    }
    let (v, got, tracefs) = judged("+bpf,+perfmon,+sys_ptrace");
    assert!(
        tracefs,
        "without CAP_SYS_ADMIN the uprobes go through tracefs"
    );
    assert_eq!(
        v.len(),
        1,
        "with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE: {v:?}"
    );
    assert_eq!(
        (&v[0]["verdict"], &v[0]["tls"]),
        (&"short_write".into(), &true.into()),
        "{}",
        v[0]
    );
    assert_eq!(
        u(&v[0]["sent_bytes"]),
        u(&got[0]["received_bytes"]),
        "{}",
        v[0]
    );
    let (v, _, _) = judged("+bpf,+perfmon");
    assert!(
        v.is_empty(),
        "without CAP_SYS_PTRACE the copy cannot be hooked, so no plaintext: {v:?}"
    );
    let events = std::fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    assert!(
        !events.contains("truncwatch/"),
        "the agent removes its uprobe events when it stops:\n{events}"
    );
}

/// Writes a file's old content back when dropped (a sysctl a test changed).
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// The path of the host's `libssl.so.3`, from the dynamic linker's cache (`ldconfig -p`).
fn host_libssl() -> String {
    let out = Command::new("ldconfig")
        .arg("-p")
        .output()
        .expect("ldconfig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("libssl.so.3 ") && l.contains("x86-64"))
        .find_map(|l| l.split(" => ").nth(1).map(str::to_string))
        .expect("ldconfig -p lists libssl.so.3 (Debian's libssl3)")
}
