//! `cargo xtask`: the project's commands. Each installs what it needs first (and says so).
mod bench;
mod cross;
mod gameday;
mod load;
mod setup;
mod tally;
mod vm;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::process::{Command, Stdio};

#[derive(Parser)]
#[command(about = "truncwatch's build, run and test commands")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, then build the agent with its eBPF object (release).
    Build,
    /// The same for arm64 (aarch64), cross-built with Debian's packages (root the first time:
    /// it adds dpkg's arm64 architecture). Prints the binary's path (docs/arm64.md).
    Cross,
    /// Build, then run the agent as root on this host. Agent arguments go after `--`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing, then run every test: unit tests and the kernel tests (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// See it work: the agent, a server that cuts responses short, and a slow client.
    Demo,
    /// What the agent costs: nginx under wrk and 64-byte sends, without and with the agent and
    /// a bpftrace floor, in alternating rounds (about 6 minutes). Writes docs/results/benchmarks.md.
    Bench {
        /// Instead: keep the agent under nginx load this many seconds, sampling its memory
        /// (writes docs/results/soak.md).
        #[arg(long)]
        soak: Option<u64>,
        /// Instead: one million short connections and ten thousand concurrent ones through
        /// the agent (a few minutes; writes docs/results/load.md).
        #[arg(long, conflicts_with = "soak")]
        load: bool,
        /// Also run this agent binary in the same rounds (e.g. a build of the previous main),
        /// for an A/B of a change.
        #[arg(long, value_name = "AGENT_BINARY")]
        before: Option<String>,
        /// Only the nginx workloads whose row name contains this (e.g. "HTTPS"), and no sends
        /// table; the figures are printed, docs/results/benchmarks.md is left as it is.
        #[arg(long)]
        only: Option<String>,
    },
    /// The scenario matrix alone (it also runs in `test`): real servers cutting responses
    /// short, healthy traffic, one table with recall and precision.
    Scenarios,
    /// The operator's loop with a real Prometheus: a bad build cuts slow readers short, the
    /// alert fires naming it, the rollback to the good build resolves it (about a minute; it
    /// also runs in `test`).
    Gameday {
        /// The shipped rules' 10-minute windows, compressed to this (`10m`: as shipped).
        #[arg(long, default_value = "20s")]
        window: String,
    },
    /// Boot Debian's Linux 6.12 and 6.1 under qemu (TCG) with the agent and run, on each hook
    /// backend the kernel offers, `truncwatch check`, `selftest`, the detection runs and the
    /// kernel tests, and on one of them the real-server suites (about 40 minutes;
    /// `TRUNCWATCH_VM_KERNELS` picks the kernels, 5.10 among them, `TRUNCWATCH_VM_FULL=1` adds
    /// every suite on every backend). Writes docs/results/kernels.md.
    VmTest {
        /// Only print what each guest would run (and what it leaves out, and why).
        #[arg(long)]
        list: bool,
    },
}

/// Errors end the command with their chain of causes on one line and exit status 1: the last
/// line of a long CI log then names what failed (a returned `Err` would print a backtrace
/// after it wherever `RUST_BACKTRACE` is set).
fn main() {
    if let Err(e) = run(Cli::parse().cmd) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Build => build().map(drop),
        Cmd::Cross => cross::build().map(|bin| println!("{bin}")),
        Cmd::Run { args } => {
            let bin = build()?;
            step(&format!("running {} {}", bin, args.join(" ")));
            let status = as_root(&bin).args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => test(&args),
        Cmd::Demo => {
            let bin = build()?;
            demo(&bin)
        }
        Cmd::Scenarios => scenarios(),
        Cmd::Bench {
            soak,
            load,
            before,
            only,
        } => {
            if !setup::is_root() {
                bail!(
                    "the benchmark loads eBPF programs and sets kernel.bpf_stats_enabled: run it as root"
                );
            }
            if let Some(b) = &before
                && !std::path::Path::new(b).is_file()
            {
                bail!("--before {b}: no such agent binary");
            }
            setup::ensure(setup::Need::Bench)?;
            let bin = build()?;
            match soak {
                _ if load => load::run(&bin, &workspace_root()?),
                Some(s) => bench::soak(&bin, &workspace_root()?, s.max(10)),
                None => bench::run(&bin, &workspace_root()?, before.as_deref(), only.as_deref()),
            }
        }
        Cmd::Gameday { window } => {
            if !setup::is_root() {
                bail!("the game day runs the agent, which loads eBPF programs: run it as root");
            }
            setup::ensure(setup::Need::Test)?;
            gameday::run(&build()?, &workspace_root()?, &window)
        }
        Cmd::VmTest { list: true } => vm::list(),
        Cmd::VmTest { list: false } => {
            if !setup::is_root() {
                bail!(
                    "vm-test may apt-get what it needs and packs root-owned files into the guest: run it as root"
                );
            }
            setup::ensure(setup::Need::Vm)?;
            let bin = build()?;
            // The hyper suite runs in the guest with what was built here (no cargo there).
            hyper_servers()?;
            vm::run(&bin, &workspace_root()?)
        }
    }
}

pub fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// `cmd` as root: directly when we are root, through sudo otherwise.
fn as_root(cmd: &str) -> Command {
    if setup::is_root() {
        Command::new(cmd)
    } else {
        let mut c = Command::new("sudo");
        c.arg(cmd);
        c
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build() -> Result<String> {
    setup::ensure(setup::Need::Build)?;
    step("building truncwatch and its eBPF object (cargo build --release)");
    let status = cargo()
        .args(["build", "--release", "--package", "truncwatch"])
        .status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let root = workspace_root()?;
    Ok(format!("{root}/target/release/truncwatch"))
}

fn test(args: &[String]) -> Result<()> {
    setup::ensure(setup::Need::Test)?;
    shape()?;
    hyper_servers()?;
    if !setup::is_root() {
        step("not root: the kernel tests will skip (run as root, or with sudo, to include them)");
    }
    step(
        "running all tests (cargo test --workspace): unit tests, then kernel tests on this kernel",
    );
    // Kernel tests each start their own agent; one at a time keeps them off each other's CPU.
    let mut c = cargo();
    // The eBPF crate builds only for the BPF target (the agent's build.rs does that).
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "truncwatch-ebpf",
        "--release",
    ]);
    // Every test binary runs even after one fails: CI then shows every failure at once.
    if !args.iter().any(|a| a == "--no-fail-fast") {
        c.arg("--no-fail-fast");
    }
    c.args(args);
    if !args.iter().any(|a| a == "--") {
        c.args(["--", "--test-threads=1"]);
    }
    let t = tally::run(c)?;
    // One plain closing line: cargo's own last line is about doc-tests (often 0 of them).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        t.passed - t.skipped,
        t.failed,
        t.skipped
    );
    if !t.success || t.failed > 0 {
        bail!("tests failed");
    }
    // The operator's loop: agent, Prometheus, a bad build and its rollback.
    if setup::is_root() {
        step("running the game day (cargo xtask gameday, about a minute)");
        gameday::run(&build()?, &workspace_root()?, "20s")?;
    } else if std::env::var_os("CI").is_some() {
        bail!("CI: the game day needs root");
    } else {
        step("SKIP gameday: not root (the agent loads eBPF programs)");
    }
    // Two more kernels: Debian's 6.12 and 6.1 under qemu (their packages are downloaded once).
    // They need root like the kernel tests; `TRUNCWATCH_VM=0` leaves it out.
    if std::env::var("TRUNCWATCH_VM").as_deref() == Ok("0") {
        step("TRUNCWATCH_VM=0: not booting the guest kernels");
    } else if !setup::is_root() {
        if std::env::var_os("CI").is_some() {
            bail!("CI: the guest kernels' tests need root");
        }
        step("SKIP vm-test: not root (run as root to boot Debian's Linux 6.12 and 6.1 under qemu)");
    } else {
        step(
            "booting Debian's Linux 6.12 and 6.1 under qemu with the agent (cargo xtask vm-test, about 40 minutes; `cargo xtask vm-test --list` says what runs)",
        );
        setup::ensure(setup::Need::Vm)?;
        vm::run(&build()?, &workspace_root()?)?;
    }
    Ok(())
}

/// hyper's test servers (truncwatch/tests/servers/hyper/: hyper 1.10.1 and 1.11.0 from
/// crates.io, each a workspace with a lock file of its own) built into target/hyper-servers
/// before the tests, once, rather than inside the first test that runs one (tests/hyper.rs).
fn hyper_servers() -> Result<()> {
    step("building the hyper 1.10.1 and 1.11.0 test servers (about a minute the first time)");
    let root = workspace_root()?;
    for v in ["v1_10", "v1_11"] {
        let dir = format!("truncwatch/tests/servers/hyper/{v}");
        let status = cargo()
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(format!("{root}/{dir}/Cargo.toml"))
            .arg("--target-dir")
            .arg(format!("{root}/target/hyper-servers"))
            .status()?;
        if !status.success() {
            bail!("building {dir} failed");
        }
    }
    Ok(())
}

/// The code's shape, as every Rust reader expects it: `cargo fmt --check`, then clippy with
/// warnings as errors (the host crates; the eBPF crate's build warns on its own).
fn shape() -> Result<()> {
    step("checking the code's shape (cargo fmt --check, cargo clippy -D warnings)");
    if !cargo()
        .args(["fmt", "--all", "--", "--check"])
        .status()?
        .success()
    {
        bail!("cargo fmt --check: the code is not formatted; run `cargo fmt --all`");
    }
    let clippy = cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "truncwatch-ebpf",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"])
        // The eBPF object is not needed to check the agent's code.
        .env("AYA_BUILD_SKIP", "1")
        .status()?;
    if !clippy.success() {
        bail!("cargo clippy found warnings (above)");
    }
    Ok(())
}

fn scenarios() -> Result<()> {
    setup::ensure(setup::Need::Test)?;
    step(
        "running the scenario matrix (about a minute): agent, lab servers, nginx, Node.js, slow clients",
    );
    let mut c = cargo();
    c.args([
        "test",
        "--release",
        "--package",
        "truncwatch",
        "--test",
        "scenarios",
        "--",
        "--nocapture",
    ]);
    // The table and the totals; the servers' and agent's chatter only when something fails.
    let t = tally::run_filtered(c, |l| {
        l.starts_with('|')
            || l.starts_with("totals:")
            || l.starts_with("client side:")
            || l.starts_with("SKIP")
    })?;
    if !t.success || t.failed > 0 {
        bail!(
            "the scenario matrix failed (run `cargo test --release -p truncwatch --test scenarios -- --nocapture` for the details)"
        );
    }
    Ok(())
}

fn workspace_root() -> Result<String> {
    let out = cargo()
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()?;
    let path = String::from_utf8(out.stdout)?;
    Ok(std::path::Path::new(path.trim())
        .parent()
        .context("workspace root")?
        .display()
        .to_string())
}

/// Agent + lab server (Unix socket, hyper#4022 pattern) + slow client, output shown live.
fn demo(bin: &str) -> Result<()> {
    let sock = std::env::temp_dir().join("truncwatch-demo.sock");
    let sock = sock.display().to_string();
    step("starting the agent (human output)");
    let mut agent = as_root(bin).arg("run").stderr(Stdio::piped()).spawn()?;
    wait_ready(&mut agent)?;
    step(&format!(
        "starting a server on unix:{sock} that gives up at the first EAGAIN, then shuts down"
    ));
    let mut server = Command::new(bin)
        .args([
            "lab",
            "serve",
            "--listen",
            &format!("unix:{sock}"),
            "--mode",
            "short-shutdown",
            "--body",
            "8000000",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    step("fetching 8 MB with a slow reader (16 KiB every 2 ms); the client's view:");
    let status = Command::new(bin)
        .args([
            "lab",
            "fetch",
            "--connect",
            &format!("unix:{sock}"),
            "--read-bytes",
            "16384",
            "--read-delay",
            "2ms",
        ])
        .status()?;
    if !status.success() {
        bail!("demo client failed");
    }
    step("and the agent's verdict (above this line, from the agent):");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = server.kill();
    // SIGINT the agent (it may run under sudo: signal the whole process group member by pid).
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    Ok(())
}

fn wait_ready(agent: &mut std::process::Child) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let stderr = agent.stderr.take().context("agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        eprintln!("{line}");
        if line.contains("truncwatch: ready") {
            std::thread::spawn(move || {
                for l in lines.map_while(Result::ok) {
                    eprintln!("{l}");
                }
            });
            return Ok(());
        }
    }
    bail!("the agent exited before it was ready")
}
