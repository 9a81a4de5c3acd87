//! hyper's own HTTP/1 server (tests/servers/hyper/server.rs), built from crates.io against two
//! pinned releases, each from a manifest and lock file of its own (tests/servers/hyper/v1_10/,
//! v1_11/) into one target directory, `target/hyper-servers` (tokio and rustls compile once).
//! `cargo xtask test` builds both before the tests; a test builds its server on demand (a
//! no-op when it is fresh; about a minute from cold).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The pinned hyper releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hyper {
    /// Drops what it still buffers when it shuts a connection down: it cuts slow readers short.
    V1_10_1,
    /// Flushes first.
    V1_11_0,
}

impl Hyper {
    pub const ALL: [Hyper; 2] = [Hyper::V1_10_1, Hyper::V1_11_0];

    /// Its manifest's directory under tests/servers/hyper/.
    fn dir(self) -> &'static str {
        match self {
            Hyper::V1_10_1 => "v1_10",
            Hyper::V1_11_0 => "v1_11",
        }
    }

    /// The binary's name: the `comm` the agent reports.
    pub fn bin(self) -> &'static str {
        match self {
            Hyper::V1_10_1 => "hyper-1-10-1",
            Hyper::V1_11_0 => "hyper-1-11-0",
        }
    }

    /// `cargo build --release --locked` of its manifest (nothing to do when fresh): the
    /// binary's path. In a guest kernel (`TRUNCWATCH_IN_GUEST`), or where cargo cannot run,
    /// an existing binary is used as it is. Panics, with cargo's own output above, when the build fails.
    pub fn binary(self) -> PathBuf {
        static BUILT: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
        BUILT[self as usize].get_or_init(|| self.build()).clone()
    }

    fn build(self) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = root.join("target/hyper-servers");
        let bin = target.join("release").join(self.bin());
        // In a guest kernel (`cargo xtask vm-test`): what the host built, never a build under
        // emulation (another toolchain there would rebuild everything, for half an hour).
        if std::env::var_os("TRUNCWATCH_IN_GUEST").is_some() {
            assert!(
                bin.exists(),
                "{} not built: `cargo xtask vm-test` builds it on the host first",
                bin.display()
            );
            return bin;
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/servers/hyper")
            .join(self.dir())
            .join("Cargo.toml");
        eprintln!(
            "building {} (cargo build --release --locked --manifest-path {}; about a minute \
             the first time, then nothing while it is fresh)",
            self.bin(),
            manifest.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(&cargo)
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .stdout(Stdio::null())
            .status();
        match built {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "building {}: cargo exited {s} (its output is above)",
                self.bin()
            ),
            Err(e) if bin.exists() => eprintln!("{cargo}: {e}; using {} as built", bin.display()),
            Err(e) => panic!("building {}: cannot run {cargo}: {e}", self.bin()),
        }
        bin
    }
}

/// A running hyper server on 127.0.0.1, killed when dropped.
pub struct HyperServer {
    child: Child,
    pub version: Hyper,
    pub port: u16,
}

impl HyperServer {
    /// Start `version` on a port the kernel picks, with the server's options `args` (`--body
    /// BYTES`, `--tls CERT KEY`, `--half-close`), and wait until it listens.
    pub fn start(version: Hyper, args: &[&str]) -> HyperServer {
        let mut child = Command::new(version.binary())
            .arg("0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", version.bin()));
        let stderr = child.stderr.take().unwrap();
        let name = version.bin();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{name}: {l}");
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Generous: a guest kernel under emulation starts processes slowly.
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{} said {line:?}, not `listening <port>`", version.bin()));
        HyperServer {
            child,
            version,
            port,
        }
    }

    /// Its address as the agent reports it (`local` server side, `peer` client side).
    pub fn local(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HyperServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
