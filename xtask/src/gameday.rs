//! `cargo xtask gameday`: the operator's loop, end to end, with real parts (issue 16).
//!
//! The agent, a real Prometheus (Debian's, on loopback, scraping the agent every second and
//! evaluating the shipped rules), and two builds of one server (`gameday/shop-api.c`) that
//! differ only in build identity and in one bug: the "bad" build cuts slow readers short, as
//! hyper 1.10.1 did. Slow readers fetch from the bad build until Prometheus's own API says the
//! truncation alert is firing and names the bad build; then the rollback (stop bad, install
//! good at the same path, start it on the same port); the same slow readers then get whole
//! bodies, nothing is flagged against the good build, and the alert resolves.
//!
//! The shipped rules look back 10 minutes; the game day compresses that window (`--window`,
//! 20 s by default) so the alert can resolve within a minute. `--window 10m` runs the rules as
//! shipped (and takes over ten minutes).
use crate::step;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVER_SOURCE: &str = include_str!("gameday/shop-api.c");
const ALERT: &str = "TruncwatchTruncatedResponses";
/// Slow readers at once: each reads 1 MB, stalls 3 s, then reads the rest.
const READERS: usize = 3;

/// Which build served when a fetch began.
const PHASE_BAD: u8 = 0;
const PHASE_ROLLBACK: u8 = 1;
const PHASE_GOOD: u8 = 2;

pub fn run(agent_bin: &str, root: &str, window: &str) -> Result<()> {
    // Under target/, not /tmp: the builds run from here, and /tmp may be mounted noexec.
    let dir = Path::new(root)
        .join("target")
        .join(format!("gameday-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin"))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let played = play(&dir, agent_bin, root, window);
    if played.is_err() {
        // What the parts said, for the failure at hand.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "err") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("gameday: --- {} (last lines)", path.display());
                for l in tail.iter().rev() {
                    eprintln!("  {l}");
                }
            }
        }
    }
    played
}

fn play(dir: &Path, agent_bin: &str, root: &str, window: &str) -> Result<()> {
    let dir = dir.to_path_buf();
    let t0 = Instant::now();
    let say = |msg: &str| eprintln!("gameday: [{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());

    // Two builds of one program. The deploy path is the same for both, as in production.
    let bad = compile(&dir, "1.10.1", true)?;
    let good = compile(&dir, "1.11.0", false)?;
    let (bad_id, good_id) = (readelf_build_id(&bad)?, readelf_build_id(&good)?);
    if bad_id == good_id {
        bail!("the two builds have the same build id {bad_id}");
    }
    let exe = dir.join("bin/shop-api");
    say(&format!(
        "built shop-api twice with gcc: bad 1.10.1 build_id={bad_id}, good 1.11.0 build_id={good_id} (readelf -n)"
    ));

    let agent_port = free_port()?;
    let mut agent = Process::spawn(
        "agent",
        // --all: the good build's whole responses are labelled too, so that the game day can
        // check they name the good build (without it they are counted per host); every line,
        // which it checks one by one.
        Command::new(agent_bin).args([
            "run",
            "--all",
            "--max-lines-per-second",
            "0",
            "--format",
            "json",
            "--metrics-addr",
            &format!("127.0.0.1:{agent_port}"),
        ]),
        &dir,
    )?;
    agent.wait_stderr("truncwatch: ready", Duration::from_secs(60))?;
    say(&format!("agent ready, metrics on 127.0.0.1:{agent_port}"));

    let prom_port = free_port()?;
    let rules = compressed_rules(root, window)?;
    std::fs::write(dir.join("truncwatch.rules.yml"), rules)?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - truncwatch.rules.yml\n\
             scrape_configs:\n  - job_name: truncwatch\n    static_configs:\n      - targets: [\"127.0.0.1:{agent_port}\"]\n        labels:\n          node: gameday\n"
        ),
    )?;
    let _prom = Process::spawn(
        "prometheus",
        Command::new("prometheus").args([
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--log.level=warn",
        ]),
        &dir,
    )?;
    let prom = Prometheus(format!("http://127.0.0.1:{prom_port}"));
    wait_for(
        Duration::from_secs(60),
        "Prometheus scraping the agent",
        || {
            let up = prom.query("up{job=\"truncwatch\"} == 1")?;
            Ok(up.as_array().is_some_and(|r| !r.is_empty()).then_some(()))
        },
    )?;
    say(&format!(
        "Prometheus up on 127.0.0.1:{prom_port}: scraping the agent every 1 s, the shipped rules loaded (windows 10m -> {window})"
    ));

    // Deploy the bad build, and send it slow readers.
    let port = free_port()?;
    install(&bad, &exe)?;
    let mut server = start_server(&exe, port, &dir)?;
    say(&format!(
        "deployed the bad build at {} on port {port}; {READERS} slow readers (1 MB, a 3 s stall, the rest)",
        exe.display()
    ));
    let readers = Readers::start(agent_bin, port);

    let firing = wait_for(
        Duration::from_secs(90),
        "the alert firing with the bad build",
        || {
            Ok(prom.alerts()?.into_iter().find(|a| {
                a["labels"]["alertname"] == ALERT
                    && a["state"] == "firing"
                    && a["labels"]["build_id"] == bad_id.as_str()
            }))
        },
    )?;
    say(&format!(
        "{ALERT} firing in Prometheus (/api/v1/alerts): build_id={}; summary: {}",
        firing["labels"]["build_id"].as_str().unwrap_or("?"),
        firing["annotations"]["summary"].as_str().unwrap_or("?")
    ));
    let build_note = firing["annotations"]["build"].as_str().unwrap_or("");
    if !build_note.contains(&bad_id) || !build_note.contains(&exe.display().to_string()) {
        bail!(
            "the alert's build annotation does not name the bad build and its executable: {build_note:?}"
        );
    }
    say(&format!("its build annotation: {build_note}"));

    // The clients' side of it: their first bodies, cut short (they are still in their stall
    // when the alert fires).
    wait_for(
        Duration::from_secs(30),
        "the slow readers' first answers",
        || Ok((readers.done(PHASE_BAD) >= READERS).then_some(())),
    )?;

    // The rollback: the good build, same path, same port.
    readers.phase.store(PHASE_ROLLBACK, Ordering::SeqCst);
    server.stop();
    install(&good, &exe)?;
    let _server = start_server(&exe, port, &dir)?;
    readers.phase.store(PHASE_GOOD, Ordering::SeqCst);
    let rolled_back = Instant::now();
    say(
        "rolled back: stopped the bad build, installed the good one at the same path, started it on the same port",
    );

    wait_for(
        Duration::from_secs(120) + parse_secs(window)? * 2,
        "the alert to resolve",
        || {
            let firing = prom
                .alerts()?
                .into_iter()
                .any(|a| a["labels"]["alertname"] == ALERT);
            Ok((!firing && readers.done(PHASE_GOOD) >= READERS).then_some(()))
        },
    )?;
    say(&format!(
        "{ALERT} resolved {:.0} s after the rollback, the good build serving the same slow readers",
        rolled_back.elapsed().as_secs_f64()
    ));
    let results = readers.stop();

    // Ground truth from the clients, and what Prometheus has for each build.
    let of = |phase| results.iter().filter(move |(p, _)| *p == phase);
    let cut = of(PHASE_BAD).filter(|(_, end)| end == "eof").count();
    let bad_total = of(PHASE_BAD).count();
    let good_total = of(PHASE_GOOD).count();
    let good_whole = of(PHASE_GOOD).filter(|(_, end)| end == "complete").count();
    say(&format!(
        "clients: bad build {cut} of {bad_total} bodies cut short; good build {good_whole} of {good_total} whole"
    ));
    if cut == 0 || good_total == 0 || good_whole != good_total {
        bail!("the clients' own counts do not show the bad build cutting and the good one not");
    }
    let flagged = prom.query(&format!(
        "truncwatch_responses_total{{build_id=\"{good_id}\",side=\"server\",verdict=~\"short_write|desync|reset_discard\"}}"
    ))?;
    if flagged.as_array().is_none_or(|r| !r.is_empty()) {
        bail!("responses of the good build were flagged: {flagged}");
    }
    let bad_short = prom.query(&format!(
        "truncwatch_responses_total{{build_id=\"{bad_id}\",side=\"server\",verdict=\"short_write\"}}"
    ))?;
    let seen_good = prom.query(&format!(
        "truncwatch_build_info{{build_id=\"{good_id}\",exe=\"{}\"}}",
        exe.display()
    ))?;
    if seen_good.as_array().is_none_or(|r| r.is_empty()) {
        bail!("truncwatch_build_info has no series for the good build");
    }
    let good_complete = prom.query(&format!(
        "sum(truncwatch_responses_total{{build_id=\"{good_id}\",side=\"server\",process=\"shop-api\",verdict=\"complete\"}})"
    ))?;
    let good_complete = good_complete[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    if good_complete < 1.0 {
        bail!("Prometheus has no whole response of the good build under its build_id");
    }
    say(&format!(
        "Prometheus: short_write for the bad build = {} (with the bodies cut when it was stopped mid-send); the good build: {good_complete:.0} complete, nothing flagged, listed in truncwatch_build_info",
        bad_short[0]["value"][1].as_str().unwrap_or("?")
    ));
    agent.stop();
    // The agent's own lines. Every server-side cut that names a build names the bad one, as
    // readelf reads it, and at least the cuts the clients saw do; every whole response of
    // shop-api after the rollback names the good build.
    let lines = std::fs::read_to_string(&agent.stdout)?;
    let exe_text = exe.display().to_string();
    let server: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["side"] == "server" && v["comm"] == "shop-api")
        .collect();
    let cuts: Vec<&Value> = server
        .iter()
        .filter(|v| v["verdict"] == "short_write")
        .collect();
    let named_bad = cuts
        .iter()
        .filter(|v| v["build_id"] == bad_id.as_str() && v["exe"] == exe_text.as_str())
        .count();
    let named_other = cuts
        .iter()
        .filter(|v| !v["build_id"].is_null() && v["build_id"] != bad_id.as_str())
        .count();
    let good_whole: Vec<&Value> = server
        .iter()
        .filter(|v| v["verdict"] == "complete" && v["build_id"] == good_id.as_str())
        .collect();
    let whole_named_bad = server
        .iter()
        .filter(|v| v["verdict"] == "complete" && v["build_id"] == bad_id.as_str())
        .count();
    if named_bad < cut || named_other > 0 || good_whole.len() < good_total || whole_named_bad > 0 {
        bail!(
            "the agent's lines do not name the builds right: {named_bad} cuts name the bad build (the clients saw {cut}), {named_other} another; {} whole responses name the good build (the clients got {good_total}), {whole_named_bad} the bad one:\n{lines}",
            good_whole.len()
        );
    }
    say(&format!(
        "the agent's JSON lines: {} short_write, {named_bad} with exe={exe_text} build_id={bad_id}; {} complete with build_id={good_id}",
        cuts.len(),
        good_whole.len()
    ));
    say("passed");
    Ok(())
}

/// Compiles the server with gcc into `dir`, `bad` with the slow-reader bug.
fn compile(dir: &Path, version: &str, bad: bool) -> Result<PathBuf> {
    let src = dir.join("shop-api.c");
    std::fs::write(&src, SERVER_SOURCE)?;
    let out = dir.join(format!("shop-api-{version}"));
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-Wall"])
        .arg(format!("-DVERSION=\"{version}\""));
    if bad {
        gcc.arg("-DCUT_SLOW_READERS");
    }
    let st = gcc.arg("-o").arg(&out).arg(&src).status()?;
    if !st.success() {
        bail!("gcc could not build {}", src.display());
    }
    Ok(out)
}

/// The GNU build id as binutils reads it: the ground truth the agent's must equal.
fn readelf_build_id(exe: &Path) -> Result<String> {
    let out = Command::new("readelf").arg("-n").arg(exe).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .with_context(|| format!("readelf -n {}: no build id", exe.display()))
}

/// Installs `build` at `exe` the way deploys do: a new file renamed over the old (new inode).
fn install(build: &Path, exe: &Path) -> Result<()> {
    let tmp = exe.with_extension("new");
    std::fs::copy(build, &tmp)?;
    std::fs::rename(&tmp, exe)?;
    Ok(())
}

fn start_server(exe: &Path, port: u16, dir: &Path) -> Result<Process> {
    let mut p = Process::spawn("shop-api", Command::new(exe).arg(port.to_string()), dir)?;
    p.wait_stdout("listening", Duration::from_secs(10))?;
    Ok(p)
}

/// The shipped rules with their 10-minute windows cut to `window`.
fn compressed_rules(root: &str, window: &str) -> Result<String> {
    parse_secs(window)?;
    let path = format!("{root}/deploy/prometheus/truncwatch.rules.yml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let n = text.matches("[10m]").count() + text.matches("offset 10m").count();
    if n == 0 {
        bail!("{path}: no 10-minute window to compress (did the rules change?)");
    }
    Ok(text
        .replace("[10m]", &format!("[{window}]"))
        .replace("offset 10m", &format!("offset {window}")))
}

/// `20s`, `10m`: a Prometheus duration, in seconds or minutes.
fn parse_secs(d: &str) -> Result<Duration> {
    let bad = || anyhow::anyhow!("--window {d:?}: give seconds or minutes, e.g. 20s or 10m");
    let (n, unit) = d.split_at(d.len().checked_sub(1).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "s" if n >= 5 => Ok(Duration::from_secs(n)),
        "m" if n >= 1 => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `f` every 250 ms until it gives Some, or fails after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = f()? {
            return Ok(t);
        }
        if start.elapsed() > limit {
            bail!("gave up after {} s waiting for {what}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Prometheus's HTTP API, through curl.
struct Prometheus(String);

impl Prometheus {
    /// `data` of an API answer; Null while Prometheus does not answer.
    fn get(&self, path: &str, query: Option<&str>) -> Result<Value> {
        let mut c = Command::new("curl");
        c.args(["-sf", "--max-time", "5", "-G"]);
        if let Some(q) = query {
            c.arg("--data-urlencode").arg(format!("query={q}"));
        }
        let out = c.arg(format!("{}{path}", self.0)).output()?;
        if !out.status.success() {
            return Ok(Value::Null); // not up yet
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["data"].clone())
    }
    /// An instant query's result vector (Null while Prometheus is not answering).
    fn query(&self, q: &str) -> Result<Value> {
        Ok(self.get("/api/v1/query", Some(q))?["result"].clone())
    }
    /// Pending and firing alerts. An error when Prometheus does not answer: no answer must
    /// never read as "no alert".
    fn alerts(&self) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/alerts", None)?;
        data["alerts"]
            .as_array()
            .cloned()
            .with_context(|| format!("Prometheus gave no alert list: {data}"))
    }
}

/// The slow readers: `truncwatch lab fetch` in a loop, each result recorded with the phase
/// (which build served) at its start.
struct Readers {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(u8, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(agent_bin: &str, port: u16) -> Readers {
        let phase = Arc::new(AtomicU8::new(PHASE_BAD));
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..READERS)
            .map(|_| {
                let (phase, stop, results) = (phase.clone(), stop.clone(), results.clone());
                let bin = agent_bin.to_string();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let p = phase.load(Ordering::SeqCst);
                        let out = Command::new(&bin)
                            .args(["lab", "fetch", "--connect"])
                            .arg(format!("tcp:127.0.0.1:{port}"))
                            .args(["--rcvbuf", "65536", "--stall-after", "1000000"])
                            .args(["--stall", "3s", "--timeout", "30s"])
                            .stderr(Stdio::null())
                            .output();
                        let end = out
                            .ok()
                            .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                            .and_then(|v| v["end"].as_str().map(str::to_string))
                            .unwrap_or_else(|| "no answer".into());
                        // A fetch that straddled the rollback says nothing of either build.
                        if p == phase.load(Ordering::SeqCst) && p != PHASE_ROLLBACK {
                            results.lock().unwrap().push((p, end));
                        } else {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
            })
            .collect();
        Readers {
            phase,
            stop,
            results,
            threads,
        }
    }

    /// Fetches done that began and ended in `phase`.
    fn done(&self, phase: u8) -> usize {
        let r = self.results.lock().unwrap();
        r.iter().filter(|(p, _)| *p == phase).count()
    }

    fn stop(mut self) -> Vec<(u8, String)> {
        self.join();
        std::mem::take(&mut self.results.lock().unwrap())
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.join(); // after a failure too: no fetches left running
    }
}

/// A child process with its output in files under the game day's directory; killed on drop.
struct Process {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Result<Process> {
        let n = std::fs::read_dir(dir)?.count();
        let stdout = dir.join(format!("{name}-{n}.out"));
        let stderr = dir.join(format!("{name}-{n}.err"));
        // SAFETY: prctl(2) is async-signal-safe. If xtask dies (Ctrl-C), the kernel sends the
        // child SIGTERM: no agent, Prometheus or server is left running.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name,
            child,
            stdout,
            stderr,
        })
    }

    fn wait_stdout(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let path = self.stdout.clone();
        self.wait_in(&path, needle, limit)
    }

    fn wait_stderr(&mut self, needle: &str, limit: Duration) -> Result<()> {
        let path = self.stderr.clone();
        self.wait_in(&path, needle, limit)
    }

    fn wait_in(&mut self, path: &Path, needle: &str, limit: Duration) -> Result<()> {
        let name = self.name;
        wait_for(limit, &format!("{name} to say {needle:?}"), || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return Ok(Some(()));
            }
            if let Some(st) = self.child.try_wait()? {
                let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                bail!("{name} exited ({st}) before saying {needle:?}:\n{err}");
            }
            Ok(None)
        })
    }

    /// SIGTERM to its process group (a forking server's children too), then wait.
    fn stop(&mut self) {
        // SAFETY: kill(2) with a process group id we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("TRUNCWATCH_GAMEDAY_KEEP").is_some() {
            step(&format!(
                "kept the game day's files in {}",
                self.0.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
