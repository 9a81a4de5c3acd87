//! Helpers for kernel tests: the real agent binary attached to the running kernel, the lab
//! server and clients as separate processes, and nginx from Debian.
#![allow(dead_code)]
pub mod heads;
pub mod healthy;
pub mod hyper;
pub mod servers;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_truncwatch");

/// How long a test waits for a verdict.
pub const WAIT: Duration = Duration::from_secs(30);

/// The lab client's flags for a reader that keeps up, slowly: 16 KiB every 2 ms with a small
/// receive buffer.
pub const SLOW: &[&str] = &[
    "--rcvbuf",
    "65536",
    "--read-bytes",
    "16384",
    "--read-delay",
    "2ms",
];

/// `kernel_test!(name { body })`: a test that needs root and a working `bpf()`: skipped with
/// a printed reason on a machine without them, never with `CI=true`.
#[allow(unused_macros)]
macro_rules! kernel_test {
    ($(#[$m:meta])* $name:ident $body:block) => {
        $(#[$m])*
        #[test]
        fn $name() {
            if !support::kernel_or_skip(stringify!($name)) {
                return;
            }
            $body
        }
    };
}

/// Whether the agent attaches with the kprobe backend here (forced by `TRUNCWATCH_BACKEND`,
/// as the guest does, or picked by `auto` on a kernel with neither socket tracepoints nor
/// fentry): where its documented differences are pinned. Asks a root agent started for it.
pub fn kprobe_backend() -> bool {
    let agent = Agent::start();
    let kprobe = agent.backend() == "kprobe";
    agent.stop();
    kprobe
}

/// Kernel tests need root and a working bpf(). Without them they skip with a reason, except in
/// CI (`CI=true`), where a skip would hide a broken detector: there they fail.
pub fn kernel_or_skip(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_string())
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("no kernel BTF at /sys/kernel/btf/vmlinux".to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: cannot run in CI: {why}")
        }
        Some(why) => {
            skip(test, &why);
            false
        }
    }
}

/// A test's scenario must first have happened as intended (the server's and the client's own
/// counts say so): otherwise the test fails as such, not as a wrong verdict.
pub fn reproduced(ok: bool, what: &str) {
    assert!(ok, "scenario did not reproduce: {what}");
}

/// Part of a test cannot run here: say why and go on, except in CI (`CI=true`), where it fails.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: cannot run in CI: {why}");
    }
    skip(test, why);
}

/// Say why a test is skipped, past libtest's output capture (which hides passing tests'
/// output): `cargo xtask test` counts these lines.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// The agent, running with `--all --format json`, its verdicts collected as they come.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Everything the agent wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_args(&["--metrics-addr", "127.0.0.1:0", "--canary-interval", "0s"])
    }

    /// With these options besides `--all --format json`.
    pub fn start_args(extra: &[&str]) -> Agent {
        Self::start_via(Command::new(BIN), extra)
    }

    /// `program` (the agent binary, or a launcher such as `setpriv` whose arguments end with
    /// the agent binary) with `run --all --format json` and `extra` appended; every verdict
    /// printed (`--max-lines-per-second 0`) unless `extra` sets a limit.
    pub fn start_via(mut program: Command, extra: &[&str]) -> Agent {
        let unlimited: &[&str] = if extra.contains(&"--max-lines-per-second") {
            &[]
        } else {
            &["--max-lines-per-second", "0"]
        };
        let mut child = program
            .args(["run", "--all", "--format", "json"])
            .args(unlimited)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                log_sink.lock().unwrap().push(line.clone());
                if line.contains("truncwatch: ready") {
                    let _ = tx.send(());
                }
            }
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("agent printed non-JSON {line:?}: {e}"));
                sink.lock().unwrap().push(v);
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("agent did not become ready within 60 s");
        }
        Agent { child, lines, log }
    }

    /// The hook backend it attached with (`tracepoint`, `fentry`, `kprobe`), from its
    /// "ready (<backend> backend: ...)" line.
    pub fn backend(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .find_map(|l| l.split("truncwatch: ready (").nth(1)?.split(' ').next())
            .expect("the agent's ready line names its backend")
            .to_string()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the metrics endpoint, from the agent's start-up line.
    pub fn metrics_addr(&self) -> String {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .find_map(|l| l.strip_prefix("truncwatch: metrics on http://"))
            .expect("the agent announces its endpoint");
        line.trim_end_matches("/metrics").to_string()
    }

    /// Wait until the agent's stderr has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Verdicts about connections whose local end is `local`, waiting until at least `n` arrived.
    pub fn wait_for(&self, local: &str, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for_n(|| self.verdicts(local), n, timeout)
    }

    /// Verdicts about the lab server `srv` (its address and its process: a server started
    /// later may be given the same ephemeral port), waiting until at least `n` arrived.
    pub fn wait_for_server(&self, srv: &Server, n: usize, timeout: Duration) -> Vec<Value> {
        let (local, pid) = (srv.local(), srv.pid());
        wait_for_n(
            || {
                let mut v = self.verdicts(&local);
                v.retain(|v| v["pid"] == pid);
                v
            },
            n,
            timeout,
        )
    }

    /// Server-side verdicts about connections whose local end is `local`.
    pub fn verdicts(&self, local: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["local"] == local && v["side"] != "client")
            .cloned()
            .collect()
    }

    /// Client-side verdicts about responses read from the server at `server` (its `local`).
    pub fn client_verdicts(&self, server: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["peer"] == server && v["side"] == "client")
            .cloned()
            .collect()
    }

    /// Client-side verdicts about responses read from `server`, waiting until at least `n`
    /// arrived.
    pub fn wait_for_client(&self, server: &str, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for_n(|| self.client_verdicts(server), n, timeout)
    }

    /// SIGINT: the agent must detach, flush and exit 0.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT)
    }

    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        // It stops cleanly when asked to; SIGKILL is a crash on purpose.
        if signal != libc::SIGKILL {
            assert!(status.success(), "agent exit status {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }
}

/// `get()` again until it holds at least `n` verdicts, or `timeout` passed.
fn wait_for_n(get: impl Fn() -> Vec<Value>, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = get();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` from `addr` (`host:port`): status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `truncwatch lab serve`, listening on `listen` (tcp:127.0.0.1:0 picks a port).
pub struct Server {
    child: Child,
    pub endpoint: String,
    sent: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    pub fn start(listen: &str, mode: &str, body: u64) -> Server {
        Self::start_with(listen, mode, body, "write")
    }

    /// `send_with`: write, writev or sendmsg.
    pub fn start_with(listen: &str, mode: &str, body: u64, send_with: &str) -> Server {
        Self::start_args(listen, mode, body, &["--send-with", send_with])
    }

    pub fn start_args(listen: &str, mode: &str, body: u64, extra: &[&str]) -> Server {
        Self::start_via(Command::new(BIN), listen, mode, body, extra)
    }

    /// `program` (the agent binary, or a launcher such as `setpriv` whose arguments end with
    /// it) with `lab serve` and these arguments.
    pub fn start_via(
        mut program: Command,
        listen: &str,
        mode: &str,
        body: u64,
        extra: &[&str],
    ) -> Server {
        let mut child = program
            .args([
                "lab",
                "serve",
                "--listen",
                listen,
                "--mode",
                mode,
                "--body",
                &body.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lab server");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("lab: listening on ")
            .unwrap_or_else(|| panic!("lab server said {line:?}"))
            .to_string();
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                eprintln!("server: {l}");
            }
        });
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sink = sent.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&l).unwrap());
            }
        });
        Server {
            child,
            endpoint,
            sent,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's own record of what the kernel accepted, per response.
    pub fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap().clone()
    }

    /// The server's record of its response `i` (from 0), waiting up to [`WAIT`] for it: the
    /// server prints it after its last send, which a fast client may finish reading first.
    /// Panics if it never comes.
    pub fn record(&self, i: usize) -> Value {
        let all = wait_for_n(|| self.sent(), i + 1, WAIT);
        all.get(i)
            .unwrap_or_else(|| panic!("the lab server kept no record of response {i}: {all:?}"))
            .clone()
    }

    /// The `local` field the agent reports for this server's connections.
    pub fn local(&self) -> String {
        self.endpoint.split_once(':').unwrap().1.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `truncwatch lab fetch` with extra args; returns what the client received, per response.
pub fn fetch(endpoint: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["lab", "fetch", "--connect", endpoint])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run lab fetch");
    assert!(out.status.success(), "lab fetch failed: {}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn unix_path(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("truncwatch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name).to_string_lossy().into_owned()
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

pub const NGINX: &str = "/usr/sbin/nginx";
/// The big file every nginx here serves as /big.bin.
pub const FILE_BYTES: u64 = 30 << 20;

/// nginx from Debian, one server block per entry of `servers` (each listens on its own port,
/// serving a directory with /big.bin and /1k.bin).
pub struct Nginx {
    child: Child,
    pub ports: Vec<u16>,
    /// Its configuration, logs and served files (some 30 MiB): removed when it stops, kept
    /// for a look when the test failed.
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(servers: &[&str]) -> Nginx {
        Self::start_with(servers, false)
    }

    /// The same, each server speaking HTTPS (`ssl` on its `listen`), with a certificate made
    /// now (`openssl req`).
    pub fn start_tls(servers: &[&str]) -> Nginx {
        Self::start_with(servers, true)
    }

    fn start_with(servers: &[&str], tls: bool) -> Nginx {
        use std::os::unix::process::CommandExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("truncwatch-nginx-{}-{n}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/big.bin"), vec![b'n'; FILE_BYTES as usize]).unwrap();
        std::fs::write(dir.join("www/1k.bin"), vec![b'k'; 1024]).unwrap();
        let d = dir.display();
        let ports: Vec<u16> = servers.iter().map(|_| free_port()).collect();
        let ssl = if tls {
            let (cert, key) = certificate(&dir);
            format!("ssl_certificate {}; ssl_certificate_key {};", cert, key)
        } else {
            String::new()
        };
        let listen_ssl = if tls { " ssl" } else { "" };
        let blocks: String = servers
            .iter()
            .zip(&ports)
            .map(|(body, port)| {
                format!(
                    "server {{ listen 127.0.0.1:{port}{listen_ssl}; {ssl} root {d}/www; {body} }}\n"
                )
            })
            .collect();
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log info;
             events {{ worker_connections 256; }}
             http {{
               access_log {d}/access.log;
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
               uwsgi_temp_path {d}; scgi_temp_path {d};
               {blocks}
             }}"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(NGINX)
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the workers must go when the master does (an orphaned
            // worker outlives the test and holds its output pipes open).
            .process_group(0)
            .spawn()
            .expect("start nginx");
        for port in &ports {
            wait_listening(*port);
        }
        Nginx { child, ports, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "nginx's configuration and logs kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A self-signed certificate and its key for `localhost`, made in `dir` with `openssl req`:
/// their paths.
pub fn certificate(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl req")
        .success();
    assert!(ok, "openssl req failed");
    (cert.display().to_string(), key.display().to_string())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 30 s: servers start slowly under emulation (the test kernels' guests).
pub fn wait_listening(port: u16) {
    for _ in 0..1200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listening on port {port}");
}

pub fn nginx_or_skip(test: &str) -> bool {
    if !kernel_or_skip(test) {
        return false;
    }
    if std::path::Path::new(NGINX).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {NGINX} missing in CI (cargo xtask test installs it)");
    }
    skip(
        test,
        &format!("{NGINX} not installed (apt-get install nginx-light)"),
    );
    false
}
