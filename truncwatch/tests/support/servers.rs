//! Real servers from Debian 12 ending an HTTP/1 response before its promised end, the way
//! their users report it, each on loopback against `truncwatch lab fetch` (the client that
//! records ground truth).
//!
//! | function                  | server                       | what cuts                   | cut
//! |---------------------------|------------------------------|-----------------------------|-----
//! | `gunicorn_timeout`        | gunicorn 20.1.0, sync worker | `timeout = 1` kills worker  | 1-2s
//! | `uwsgi_socket_timeout`    | uWSGI 2.0.21 `--http-socket` | `socket-timeout = 1`        | 1s
//! | `uvicorn_short_body`      | uvicorn 0.17.6 (h11 0.14)    | body < its Content-Length   | now
//! | `haproxy_timeout_client`  | HAProxy 2.6.12               | `timeout client 1s`         | 2s
//! | `lighttpd_max_write_idle` | lighttpd 1.4.69              | `server.max-write-idle = 1` | 2s
//! | `apache_timeout`          | Apache 2.4.71, event MPM     | `Timeout 1`                 | 1s
//!
//! (All from Debian 12; "cut": when the server ends the connection after the reader stopped.)
//!
//! Every one ends the connection with a FIN, never a reset (the client reads `end: "eof"`),
//! after 3.9 to 5.3 MB of the promised 30 MiB (uvicorn: 1 MiB, all it sends), one response
//! per run. All but uvicorn need a reader that stops: the client reads 1 MB of body and
//! stalls 4 s, past every cut above; a 30 MiB body fills any socket buffers first. Each run
//! takes about 4.3 s (uvicorn 0.3 s).
//!
//! Each function starts its server (configs and apps in `tests/servers/<server>/`) with the
//! response head asked for (`Head`), runs the client, stops the server and returns the
//! server's address as the agent reports it (`127.0.0.1:PORT`) and the client's JSON lines.
//! Servers run in the foreground as ordinary processes, each in its own process group (the
//! group is killed on drop, workers included), with everything under a temp dir, on a free
//! port.
#![allow(dead_code)]

use super::heads::{Head, extra_headers};
use super::{BIN, fetch, free_port};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every Debian package these scenarios need (`apt-get install --no-install-recommends`).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "gunicorn",
    "python3-gunicorn",
    "uwsgi",
    "uwsgi-plugin-python3",
    "python3-uvicorn",
    "haproxy",
    "lighttpd",
    "apache2",
];

/// The servers, to loop over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealServer {
    Gunicorn,
    Uwsgi,
    Uvicorn,
    Haproxy,
    Lighttpd,
    Apache,
}

impl RealServer {
    pub const ALL: [RealServer; 6] = [
        Self::Gunicorn,
        Self::Uwsgi,
        Self::Uvicorn,
        Self::Haproxy,
        Self::Lighttpd,
        Self::Apache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gunicorn => "gunicorn: sync worker killed by --timeout",
            Self::Uwsgi => "uwsgi --http-socket: socket-timeout",
            Self::Uvicorn => "uvicorn: app sends less than its Content-Length",
            Self::Haproxy => "haproxy: timeout client",
            Self::Lighttpd => "lighttpd: server.max-write-idle",
            Self::Apache => "apache2: Timeout",
        }
    }

    /// Run the scenario: the server's `local` and the client's JSON lines.
    pub fn run(self, head: Head) -> (String, Vec<Value>) {
        match self {
            Self::Gunicorn => gunicorn_timeout(head),
            Self::Uwsgi => uwsgi_socket_timeout(head),
            Self::Uvicorn => uvicorn_short_body(head),
            Self::Haproxy => haproxy_timeout_client(head),
            Self::Lighttpd => lighttpd_max_write_idle(head),
            Self::Apache => apache_timeout(head),
        }
    }
}

/// Whether this server can run here; if not, why (and which package brings it).
pub fn available(server: RealServer) -> Result<(), String> {
    let need: &[(&str, &str)] = match server {
        RealServer::Gunicorn => &[(PYTHON, "python3"), ("/usr/bin/gunicorn", "gunicorn")],
        RealServer::Uwsgi => &[
            ("/usr/bin/uwsgi", "uwsgi"),
            (
                "/usr/lib/uwsgi/plugins/python3_plugin.so",
                "uwsgi-plugin-python3",
            ),
        ],
        RealServer::Uvicorn => &[
            (PYTHON, "python3"),
            (
                "/usr/lib/python3/dist-packages/uvicorn/__init__.py",
                "python3-uvicorn",
            ),
        ],
        RealServer::Haproxy => &[("/usr/sbin/haproxy", "haproxy")],
        RealServer::Lighttpd => &[("/usr/sbin/lighttpd", "lighttpd")],
        RealServer::Apache => &[
            ("/usr/sbin/apache2", "apache2"),
            ("/usr/lib/apache2/modules/mod_headers.so", "apache2"),
        ],
    };
    match need.iter().find(|(path, _)| !Path::new(path).exists()) {
        None => Ok(()),
        Some((path, pkg)) => Err(format!(
            "{path} missing (apt-get install --no-install-recommends {pkg})"
        )),
    }
}

/// Debian's Python, which has Debian's gunicorn and uvicorn (not whatever `python3` comes
/// first on PATH, such as pyenv's).
const PYTHON: &str = "/usr/bin/python3";
/// What every server here sends (but uvicorn, which sends less): 30 MiB.
pub const BODY_BYTES: u64 = 30 << 20;
/// The stalled reader: a small receive buffer, 1 MB of body, then 4 s without reading. The
/// servers' timeouts are 1 s and their checks at most 1 s late, so the cut always comes first.
const STALL: &[&str] = &[
    "--rcvbuf",
    "65536",
    "--stall-after",
    "1000000",
    "--stall",
    "4s",
    "--timeout",
    "20s",
];

/// gunicorn, sync worker, `timeout = 1` (tests/servers/gunicorn/): a WSGI app returning 30
/// MiB; the worker blocks on the stalled reader, the master kills it (SIGABRT), the kernel
/// closes its connection with a FIN.
pub fn gunicorn_timeout(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("gunicorn");
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/gunicorn");
    cmd.arg("--config")
        .arg(servers_dir("gunicorn/gunicorn.conf.py"));
    cmd.arg("--chdir").arg(servers_dir("wsgi"));
    cmd.args(["--bind", &format!("127.0.0.1:{port}")]);
    // Its heartbeat files (default: /tmp).
    cmd.arg("--worker-tmp-dir").arg(&s.dir);
    cmd.env("TW_HEADERS", s.python_headers(head))
        .arg("big_body:app");
    s.start(cmd, port);
    s.fetch(port, &[&["--path", "/"], STALL].concat())
}

/// uWSGI serving HTTP itself (`--http-socket`, no router), `socket-timeout = 1`
/// (tests/servers/uwsgi/): a WSGI app returning 30 MiB; the worker's write times out on the
/// stalled reader, it ends the request and closes the connection.
pub fn uwsgi_socket_timeout(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("uwsgi");
    let port = free_port();
    let app = servers_dir("wsgi/big_body.py");
    let ini = s.render(
        "uwsgi/uwsgi.ini",
        port,
        &[("@APP@", &app.to_string_lossy())],
    );
    let mut cmd = Command::new("/usr/bin/uwsgi");
    cmd.arg("--ini")
        .arg(ini)
        .env("TW_HEADERS", s.python_headers(head));
    s.start(cmd, port);
    s.fetch(port, &[&["--path", "/"], STALL].concat())
}

/// uvicorn with h11 (tests/servers/uvicorn/): the ASGI app declares 30 MiB and sends 1 MiB;
/// h11 refuses to end the message and uvicorn closes the connection. No stall needed.
pub fn uvicorn_short_body(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("uvicorn");
    let port = free_port();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-m", "uvicorn", "app:app", "--app-dir"])
        .arg(servers_dir("uvicorn"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    // Debian's uvicorn has no httptools or uvloop; say so, so that a pip-installed one
    // behaves the same.
    cmd.args(["--http", "h11", "--loop", "asyncio", "--lifespan", "off"]);
    cmd.env("TW_HEADERS", s.python_headers(head));
    s.start(cmd, port);
    s.fetch(port, &["--path", "/", "--timeout", "20s"])
}

/// HAProxy, `timeout client 1s` (tests/servers/haproxy/), in front of the lab server sending
/// a full 30 MiB response; HAProxy adds the extra headers itself. The judged connection is
/// the client's, HAProxy's frontend port.
pub fn haproxy_timeout_client(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("haproxy");
    let backend = free_port();
    let mut lab = Command::new(BIN);
    lab.args([
        "lab",
        "serve",
        "--listen",
        &format!("tcp:127.0.0.1:{backend}"),
        "--mode",
        "full",
    ]);
    lab.args(["--body", &BODY_BYTES.to_string()]);
    s.start(lab, backend);
    let port = free_port();
    let headers: String = extra_headers(head)
        .iter()
        .map(|(n, v)| format!("    http-response add-header {n} \"{v}\"\n"))
        .collect();
    let cfg = s.render(
        "haproxy/haproxy.cfg",
        port,
        &[
            ("@BACKEND@", &format!("127.0.0.1:{backend}")),
            ("@HEADERS@", &headers),
        ],
    );
    // -db: stay in the foreground.
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-db").arg("-f").arg(cfg);
    s.start(cmd, port);
    s.fetch(port, &[&["--path", "/"], STALL].concat())
}

/// lighttpd, `server.max-write-idle = 1` (tests/servers/lighttpd/), serving a 30 MiB static
/// file; it adds the extra headers with mod_setenv.
pub fn lighttpd_max_write_idle(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("lighttpd");
    s.big_file();
    let port = free_port();
    let conf = s.render(
        "lighttpd/lighttpd.conf",
        port,
        &[("@HEADERS@", &lighttpd_headers(&extra_headers(head)))],
    );
    // -D: stay in the foreground.
    let mut cmd = Command::new("/usr/sbin/lighttpd");
    cmd.arg("-D").arg("-f").arg(conf);
    s.start(cmd, port);
    s.fetch(port, &[&["--path", "/big.bin"], STALL].concat())
}

/// Apache httpd, event MPM, `Timeout 1` (tests/servers/apache2/), serving a 30 MiB static
/// file; it adds the extra headers with mod_headers.
pub fn apache_timeout(head: Head) -> (String, Vec<Value>) {
    let mut s = Scratch::new("apache2");
    s.big_file();
    let port = free_port();
    let headers: String = extra_headers(head)
        .iter()
        .map(|(n, v)| format!("Header always add {n} \"{v}\"\n"))
        .collect();
    let conf = s.render("apache2/apache2.conf", port, &[("@HEADERS@", &headers)]);
    // -D FOREGROUND: neither detach nor start a new session, so the process group holds
    // the workers too.
    let mut cmd = Command::new("/usr/sbin/apache2");
    cmd.args(["-D", "FOREGROUND", "-f"]).arg(conf);
    s.start(cmd, port);
    s.fetch(port, &[&["--path", "/big.bin"], STALL].concat())
}

/// `setenv.add-response-header` for lighttpd. Its config refuses a key twice, so repeated
/// names (Set-Cookie) become one value joined with a literal CR LF, the way lighttpd keeps
/// repeated Set-Cookie headers itself (its config strings have no escapes).
fn lighttpd_headers(headers: &[(&str, String)]) -> String {
    if headers.is_empty() {
        return String::new();
    }
    let mut merged: Vec<(&str, String)> = Vec::new();
    for (name, value) in headers {
        match merged
            .iter_mut()
            .find(|(m, _)| m.eq_ignore_ascii_case(name))
        {
            Some((m, joined)) => *joined = format!("{joined}\r\n{m}: {value}"),
            None => merged.push((name, value.clone())),
        }
    }
    let items: Vec<String> = merged
        .iter()
        .map(|(n, v)| format!("    \"{n}\" => \"{v}\""))
        .collect();
    format!("setenv.add-response-header = (\n{}\n)\n", items.join(",\n"))
}

/// `tests/servers/<rel>`.
fn servers_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/servers")
        .join(rel)
}

/// One scenario's temp dir and server processes. Dropping it kills each process's group
/// (master and workers alike) and removes the dir.
struct Scratch {
    dir: PathBuf,
    procs: Vec<(Child, PathBuf)>,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("truncwatch-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Apache's workers run as www-data: they must reach the files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch {
            dir,
            procs: Vec::new(),
        }
    }

    /// `www/big.bin`, the 30 MiB static file.
    fn big_file(&self) {
        let www = self.dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = www.join("big.bin");
        std::fs::write(&file, vec![b'b'; BODY_BYTES as usize]).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// The extra headers as the Python apps read them: a file of `Name: value` lines.
    fn python_headers(&self, head: Head) -> PathBuf {
        let path = self.dir.join("headers.txt");
        let lines: String = extra_headers(head)
            .iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect();
        std::fs::write(&path, lines).unwrap();
        path
    }

    /// `tests/servers/<template>` with `@PORT@`, `@DIR@` and `vars` filled in, written to the
    /// temp dir; returns its path.
    fn render(&self, template: &str, port: u16, vars: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(servers_dir(template))
            .unwrap_or_else(|e| panic!("{template}: {e}"));
        text = text
            .replace("@PORT@", &port.to_string())
            .replace("@DIR@", &self.dir.to_string_lossy());
        for (k, v) in vars {
            text = text.replace(k, v);
        }
        // Every mark filled in: a leftover one would make a config that fails in a puzzling way.
        let leftover = text.match_indices('@').find_map(|(i, _)| {
            let rest = &text[i + 1..];
            let len = rest.bytes().take_while(u8::is_ascii_uppercase).count();
            (len > 0 && rest[len..].starts_with('@')).then(|| &rest[..len])
        });
        if let Some(mark) = leftover {
            panic!("{template}: @{mark}@ not filled in");
        }
        let path = self.dir.join(Path::new(template).file_name().unwrap());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Start `cmd` in its own process group, its output to a log file in the temp dir, and
    /// wait until it listens on `port`.
    fn start(&mut self, mut cmd: Command, port: u16) {
        let name = Path::new(cmd.get_program())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let log = self.dir.join(format!("{name}-{}.out", self.procs.len()));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .current_dir(&self.dir)
            // No __pycache__ written into tests/servers.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.procs.push((child, log));
        self.wait_listening(port);
    }

    /// Wait for a listening socket on 127.0.0.1:`port`, read from /proc/net/tcp rather than
    /// by connecting: a probe connection would be one more connection to the server's
    /// address for the agent to see. Fails early, with the server's output, if it exits.
    fn wait_listening(&mut self, port: u16) {
        let want = format!("0100007F:{port:04X}");
        // Generous: Python servers (gunicorn) took over 15 s to listen in a TCG guest whose
        // root is 9p; it is waited for only when slow.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            // Fields: sl, local_address, rem_address, st (0A: LISTEN), ...
            if tcp.lines().skip(1).any(|l| {
                l.split_whitespace().nth(1) == Some(&want)
                    && l.split_whitespace().nth(3) == Some("0A")
            }) {
                return;
            }
            let (child, log) = self.procs.last_mut().unwrap();
            let exited = child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let out = std::fs::read_to_string(&*log).unwrap_or_default();
                panic!(
                    "{} is not listening on port {port} (exit: {exited:?}); its output:\n{out}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run the client against 127.0.0.1:`port`, stop the servers, and return the scenario's
    /// result.
    fn fetch(self, port: u16, args: &[&str]) -> (String, Vec<Value>) {
        let got = fetch(&format!("tcp:127.0.0.1:{port}"), args);
        drop(self);
        (format!("127.0.0.1:{port}"), got)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (child, _) in self.procs.iter_mut().rev() {
            // SAFETY: kill(2) on the process group this child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        // Keep the logs of a failed test for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
