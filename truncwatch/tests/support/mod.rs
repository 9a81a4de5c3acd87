//! Helpers for kernel tests: the real agent binary attached to the running kernel, the lab
//! server and clients as separate processes, and nginx from Debian.
#![allow(dead_code)]
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_truncwatch");

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
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{test}: cannot run in CI: {why}"),
        Some(why) => {
            skip(test, &why);
            false
        }
    }
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
}

impl Agent {
    pub fn start() -> Agent {
        let mut child = Command::new(BIN)
            .args(["run", "--all", "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
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
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("agent printed non-JSON {line:?}: {e}"));
                sink.lock().unwrap().push(v);
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("agent did not become ready within 60 s");
        }
        Agent { child, lines }
    }

    /// Verdicts about connections whose local end is `local`, waiting until at least `n` arrived.
    pub fn wait_for(&self, local: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.verdicts(local);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn verdicts(&self, local: &str) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter(|v| v["local"] == local).cloned().collect()
    }

    /// SIGINT: the agent must detach, flush and exit 0.
    pub fn stop(self) -> Vec<Value> {
        self.stop_with(libc::SIGINT)
    }

    pub fn stop_with(mut self, signal: i32) -> Vec<Value> {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exit status {status}");
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }
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
        let mut child = Command::new(BIN)
            .args(["lab", "serve", "--listen", listen, "--mode", mode, "--body", &body.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lab server");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let endpoint = line.trim().strip_prefix("lab: listening on ").unwrap_or_else(|| panic!("lab server said {line:?}")).to_string();
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
        Server { child, endpoint, sent }
    }

    /// The server's own record of what the kernel accepted, per response.
    pub fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap().clone()
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
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn unix_path(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("truncwatch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name).to_string_lossy().into_owned()
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}
