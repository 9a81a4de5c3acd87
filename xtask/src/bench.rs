//! `cargo xtask bench`: what the agent costs, measured A/B in one run on loopback.
//!
//! Every figure comes from alternating rounds (baseline, agent, floor, baseline, ...), so the
//! machine's drift hits all variants alike; medians and min..max are printed. The "floor" is
//! the cheapest possible send accounting on the same hook (bpftrace summing bytes per socket),
//! for comparison; over HTTPS, with empty programs on the TLS functions the agent hooks as well
//! (what the uprobes' traps cost alone). Results go to stdout and `docs/results/benchmarks.md`.
use crate::step;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const WRK_SECONDS: u32 = 5;
const SENDS: u32 = 200_000;
/// The floor: per-socket byte sums on the same tracepoint, nothing else.
const FLOOR: &str = "tracepoint:sock:sock_send_length { @bytes[args->sk] = sum(args->ret); }";
/// An empty program on the send hook, run beside the agent when BPF stats are on: its measured
/// run time is what the stats measure of themselves on every program run.
const EMPTY: &str = "tracepoint:sock:sock_send_length {}";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Baseline,
    /// The agent as it runs by default: BPF run-time stats off.
    Agent,
    /// The agent with `kernel.bpf_stats_enabled=1`, for the programs' run time. The stats cost
    /// every BPF program run two clock reads, so these rounds are slower than `Agent`.
    AgentStats,
    Floor,
    /// Another build of the agent (`--before`, e.g. the previous main), stats off: the A/B
    /// for a change, in the same rounds.
    Before,
    /// The agent with `--no-client-side`, stats off: the server side's cost alone (the bench's
    /// clients run on the same host, so the default agent judges their side too).
    ServerOnly,
}

/// The variants of a run: `Before` only when a binary for it was given.
fn variants(before: Option<&str>) -> Vec<Variant> {
    let mut v = vec![
        Variant::Baseline,
        Variant::Agent,
        Variant::AgentStats,
        Variant::Floor,
        Variant::ServerOnly,
    ];
    if before.is_some() {
        v.push(Variant::Before);
    }
    v
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "no agent",
            Variant::Agent => "truncwatch",
            Variant::AgentStats => "truncwatch, BPF stats on",
            Variant::Floor => "floor (bpftrace)",
            Variant::Before => "truncwatch, `--before` build",
            Variant::ServerOnly => "truncwatch --no-client-side",
        }
    }
}

/// What one round with the agent also tells about the agent itself.
#[derive(Default, Clone)]
struct AgentFacts {
    cpu_s: f64,
    /// VmHWM: the peak, start-up included.
    rss_kib: u64,
    /// VmRSS at the end of the round: the steady state under load.
    rss_now_kib: u64,
    judged: u64,
    lost: u64,
    /// (program, total run time in ns, runs) during the round's workload.
    progs: Vec<(String, f64, f64)>,
    /// The nginx workload of this round (`workload_name`; "" for the send microbenchmark).
    workload: String,
    /// BPF stats were on (`progs` is filled).
    stats: bool,
    /// The empty program's (total run time in ns, runs) in the same round, stats on.
    empty: (f64, f64),
}

impl AgentFacts {
    /// The stats' own measured time per program run (the empty program's run time per run).
    fn stats_per_run(&self) -> f64 {
        self.empty.0 / self.empty.1.max(1.0)
    }
}

/// Response heads the nginx rows are served with: (name in the URL, bytes added to nginx's own
/// head of about 230, the rows' label). Surveys put the average response head at 1-2 KB, proxied application
/// heads commonly at 4-8 KB and more (issue 13): the 1.3 KiB and 9 KiB heads take the
/// programs' gathering of a head past its first 512-byte capture.
const HEADS: [(&str, usize, &str); 3] = [
    ("", 0, ""),
    ("h1300", 1100, "1.3 KiB head"),
    ("h9000", 8800, "9 KiB head"),
];

/// `--before BIN`: also run this agent binary in the same rounds.
pub fn run(agent_bin: &str, root: &str, before: Option<&str>, only: Option<&str>) -> Result<()> {
    let variants = variants(before);
    let tmp = std::env::temp_dir().join("truncwatch-bench");
    std::fs::create_dir_all(tmp.join("www"))?;
    std::fs::write(tmp.join("www/1k.bin"), vec![b'a'; 1024])?;
    std::fs::write(tmp.join("www/64k.bin"), vec![b'b'; 64 << 10])?;
    mount_tracefs()?;
    let port = 18800;
    let _nginx = start_nginx(&tmp, port)?;
    let mut head_sizes = vec![];
    for (name, _, _) in HEADS {
        let path = if name.is_empty() {
            String::new()
        } else {
            format!("{name}/")
        };
        head_sizes.push(head_size(port, &format!("/{path}1k.bin"))?);
    }
    let heads_served = format!(
        "Response heads as nginx sends them: {} bytes (its own), {} and {} bytes (with security headers and cookies added).",
        head_sizes[0], head_sizes[1], head_sizes[2]
    );
    step(&heads_served);
    let mut report = String::new();
    let machine = machine();
    writeln!(
        report,
        "Machine: {machine}. Command: `cargo xtask bench` ({ROUNDS} alternating rounds per variant; median, min..max).\n"
    )?;

    writeln!(
        report,
        "## nginx over keep-alive, loopback (`wrk -t1 -c32 -d{WRK_SECONDS}s --latency`; \"a connection each\": the same with `-H 'Connection: close'`; over nginx's Unix socket, the bench's own client: {UNIX_CONNS} keep-alive connections on one thread each, {WRK_SECONDS} s)\n"
    )?;
    writeln!(report, "{heads_served}")?;
    if let Some(b) = before {
        writeln!(
            report,
            "The `--before` build: `{b}`, run in the same rounds (stats off).\n"
        )?;
    } else {
        writeln!(report)?;
    }
    writeln!(
        report,
        "| response | variant | requests/s | ratio to no agent | p99 latency |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    let mut agent_rounds: Vec<AgentFacts> = Vec::new();
    let sock = tmp.join("nginx.sock");
    let workloads = [
        ("1k.bin", "tcp", ""),
        ("1k.bin", "tcp", "h1300"),
        ("1k.bin", "tcp", "h9000"),
        ("64k.bin", "tcp", ""),
        ("1k.bin", "unix", ""),
        ("1k.bin", "tls", ""),
        // A new connection per request: what the agent does once per connection (classify it,
        // name its process and build) shows here.
        ("1k.bin", "close", ""),
    ];
    let workloads: Vec<_> = workloads
        .into_iter()
        .filter(|(f, t, h)| only.is_none_or(|o| workload_name(f, t, h).contains(o)))
        .collect();
    // wrk's own TLS library is a copy under names the agent does not hook: the client of a
    // server is normally another host, and wrk's calls would otherwise be hooked too.
    let client_tls = client_tls_libs(&tmp)?;
    let tls_floor = if workloads.iter().any(|w| w.1 == "tls") {
        tls_floor(agent_bin)?
    } else {
        String::new()
    };
    for &(file, transport, head) in &workloads {
        let path = if head.is_empty() {
            file.to_string()
        } else {
            format!("{head}/{file}")
        };
        let url = if transport == "tls" {
            format!("https://127.0.0.1:{}/{path}", port + 1)
        } else {
            format!("http://127.0.0.1:{port}/{path}")
        };
        let mut rps = vec![Vec::new(); variants.len()];
        let mut p99 = vec![Vec::new(); variants.len()];
        for round in 1..=ROUNDS {
            for (i, &v) in variants.iter().enumerate() {
                step(&format!(
                    "/{path} over {transport}: round {round}/{ROUNDS}, {}",
                    v.name()
                ));
                let load = || match transport {
                    "unix" => unix_load(&sock, file),
                    "tls" => wrk(&url, Some(&client_tls), &[]),
                    "close" => wrk(&url, None, &["-H", "Connection: close"]),
                    _ => wrk(&url, None, &[]),
                };
                let floor = if transport == "tls" {
                    &tls_floor
                } else {
                    FLOOR
                };
                let (r, facts) = with_variant(v, agent_bin, before, floor, load)?;
                rps[i].push(r.0);
                p99[i].push(r.1);
                agent_rounds.extend(facts.map(|f| AgentFacts {
                    workload: workload_name(file, transport, head),
                    ..f
                }));
            }
        }
        let base = median(&rps[0]);
        for (i, v) in variants.iter().enumerate() {
            writeln!(
                report,
                "| {} | {} | {} | {:.3} | {} ms |",
                workload_name(file, transport, head),
                v.name(),
                spread(&rps[i], 0),
                median(&rps[i]) / base,
                spread(&p99[i], 2)
            )?;
        }
    }

    writeln!(
        report,
        "\nThe floor: bpftrace summing bytes per socket on the send hook (`{FLOOR}`){}.",
        if tls_floor.is_empty() {
            String::new()
        } else {
            format!(
                "; on the HTTPS row, with empty programs where the agent hooks libssl as well, entry and return (`{tls_floor}`): what the uprobes' traps cost with no work done"
            )
        }
    )?;
    writeln!(
        report,
        "\n## Sends on sockets that carry no HTTP ({SENDS} sends of 64 bytes, reader draining)\n"
    )?;
    writeln!(
        report,
        "| socket | variant | ns per send | added per send | truncwatch programs' run time per send (BPF stats) |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    let kinds: &[&str] = if only.is_some() {
        &[]
    } else {
        &["tcp", "unix"]
    };
    for &kind in kinds {
        let mut ns = vec![Vec::new(); variants.len()];
        // With BPF stats: the programs' own run time per send, the sender's and the reader's
        // programs together. Free of the wall-clock noise, but it includes the stats' own
        // clock reads.
        let mut prog_ns = vec![];
        for round in 1..=ROUNDS {
            for (i, &v) in variants.iter().enumerate() {
                step(&format!(
                    "{kind} 64-byte sends: round {round}/{ROUNDS}, {}",
                    v.name()
                ));
                let (r, facts) = with_variant(v, agent_bin, before, FLOOR, || send_ns(kind))?;
                ns[i].push(r);
                if let Some(f) = facts.filter(|_| v == Variant::AgentStats) {
                    prog_ns.push(f.progs.iter().map(|p| p.1).sum::<f64>() / SENDS as f64);
                }
            }
        }
        let base = median(&ns[0]);
        for (i, &v) in variants.iter().enumerate() {
            let added = if i == 0 {
                "".to_string()
            } else {
                format!("{:+.0} ns", median(&ns[i]) - base)
            };
            let progs = if v == Variant::AgentStats {
                format!("{} ns", spread(&prog_ns, 0))
            } else {
                String::new()
            };
            writeln!(
                report,
                "| {kind} | {} | {} | {added} | {progs} |",
                v.name(),
                spread(&ns[i], 0)
            )?;
        }
    }

    writeln!(
        report,
        "\n## The agent itself (rounds with the agent, nginx workloads)\n"
    )?;
    let nginx_rounds: Vec<&AgentFacts> = agent_rounds.iter().filter(|f| f.judged > 0).collect();
    let judged: u64 = nginx_rounds.iter().map(|f| f.judged).sum();
    let cpu: f64 = nginx_rounds.iter().map(|f| f.cpu_s).sum();
    let rss = agent_rounds.iter().map(|f| f.rss_kib).max().unwrap_or(0);
    let lost: u64 = agent_rounds.iter().map(|f| f.lost).sum();
    writeln!(
        report,
        "- responses judged: {judged}; agent CPU (user+sys): {cpu:.2} s, i.e. {:.2} s per million responses ({:.0} ns per response)",
        cpu / judged.max(1) as f64 * 1e6,
        cpu / judged.max(1) as f64 * 1e9
    )?;
    writeln!(
        report,
        "- CPU per response by workload (budget: 1 µs, kernel and agent together), from the rounds with BPF stats on. Kernel: all of truncwatch's programs' run time (every send and read on the host, wrk's included, and the stats' own clock reads) over the responses judged; median over rounds:\n"
    )?;
    writeln!(
        report,
        "| response | agent ns/response | kernel ns/response | total | kernel, less the stats' bookkeeping | total, less it |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    for &(file, transport, head) in &workloads {
        let name = workload_name(file, transport, head);
        let rounds: Vec<&&AgentFacts> = nginx_rounds
            .iter()
            .filter(|f| f.workload == name && f.stats)
            .collect();
        let agent: Vec<f64> = rounds
            .iter()
            .map(|f| f.cpu_s * 1e9 / f.judged.max(1) as f64)
            .collect();
        let kernel: Vec<f64> = rounds
            .iter()
            .map(|f| f.progs.iter().map(|p| p.1).sum::<f64>() / f.judged.max(1) as f64)
            .collect();
        let total: Vec<f64> = agent.iter().zip(&kernel).map(|(a, k)| a + k).collect();
        // Each program run, less what the stats measured of themselves on an empty program.
        let net: Vec<f64> = rounds
            .iter()
            .map(|f| {
                f.progs
                    .iter()
                    .map(|p| p.1 - p.2 * f.stats_per_run())
                    .sum::<f64>()
                    / f.judged.max(1) as f64
            })
            .collect();
        let net_total: Vec<f64> = agent.iter().zip(&net).map(|(a, k)| a + k).collect();
        writeln!(
            report,
            "| {name} | {} | {} | {} | {} | {} |",
            spread(&agent, 0),
            spread(&kernel, 0),
            spread(&total, 0),
            spread(&net, 0),
            spread(&net_total, 0)
        )?;
    }
    let per_run: Vec<f64> = agent_rounds
        .iter()
        .filter(|f| f.stats && f.empty.1 > 0.0)
        .map(AgentFacts::stats_per_run)
        .collect();
    writeln!(
        report,
        "\nThe stats' bookkeeping: with `kernel.bpf_stats_enabled=1` the kernel reads the clock around every program run, and the run time it reports includes part of that. Measured in the same rounds as an empty bpftrace program on the send hook (`{EMPTY}`), run beside the agent: {} ns per run. The \"less\" columns take that off each of truncwatch's program runs. They leave out what attaching any program costs outside the measured run (the tracepoint's dispatch), so they are a lower bound of the kernel's share, as the columns before are an upper one. The empty program's runs slow the stats-on rounds' throughput; the no-stats rounds give the throughput figures.\n",
        spread(&per_run, 0)
    )?;
    let rss_now = agent_rounds
        .iter()
        .map(|f| f.rss_now_kib)
        .max()
        .unwrap_or(0);
    writeln!(
        report,
        "- agent RSS under load, end of each round (VmRSS, largest): {:.1} MiB; peak including start-up (VmHWM): {:.1} MiB",
        rss_now as f64 / 1024.0,
        rss as f64 / 1024.0
    )?;
    writeln!(
        report,
        "- events lost (ring buffer full), all rounds: {lost}"
    )?;
    writeln!(
        report,
        "- kernel per-program figures (`kernel.bpf_stats_enabled=1`, run time / run count, median over rounds):\n"
    )?;
    writeln!(report, "| program | ns per run |")?;
    writeln!(report, "|---|---|")?;
    let mut names: Vec<String> = agent_rounds
        .iter()
        .flat_map(|f| f.progs.iter().map(|p| p.0.clone()))
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        let v: Vec<f64> = agent_rounds
            .iter()
            .filter(|f| f.stats)
            .filter_map(|f| {
                f.progs
                    .iter()
                    .find(|p| p.0 == n && p.2 > 0.0)
                    .map(|p| p.1 / p.2)
            })
            .collect();
        writeln!(report, "| {n} | {} |", spread(&v, 0))?;
    }

    println!("\n{report}");
    if only.is_some() {
        return Ok(()); // a part: the file keeps the last whole run
    }
    let doc = format!("{root}/docs/results/benchmarks.md");
    let head = "# Benchmarks\n\nWhat truncwatch costs, measured A/B in one run by `cargo xtask bench` (it rewrites this file).\nThe budget it is measured against is in issue 5: nginx 1 KiB throughput at least 0.99 of no agent; at most 50 ns added per send on sockets that carry no HTTP; at most 1 µs of kernel + agent CPU per response; no lost events at 100 000 responses/s; agent RSS at most 40 MiB.\n\n";
    // Hand-written analysis below the figures survives a rerun.
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    let findings = old.find("\n## Findings").map_or("", |i| &old[i..]);
    std::fs::write(&doc, format!("{head}{report}{findings}"))?;
    step(&format!("wrote {doc}"));
    Ok(())
}

/// The size in bytes of the response head nginx sends for `path`, from one GET.
fn head_size(port: u16, path: &str) -> Result<usize> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut got = vec![];
    s.read_to_end(&mut got)?;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("nginx's answer to GET {path} has no head"))?;
    if !got.starts_with(b"HTTP/1.1 200") {
        bail!(
            "nginx answered GET {path} with {:?}",
            String::from_utf8_lossy(&got[..end])
        );
    }
    Ok(end + 4)
}

/// A row's name: the body's size, the head's if it is not nginx's own, the socket if Unix.
fn workload_name(file: &str, transport: &str, head: &str) -> String {
    let mut name = file.trim_end_matches(".bin").replace('k', " KiB");
    if let Some((_, _, label)) = HEADS.iter().find(|h| h.0 == head && h.1 > 0) {
        write!(name, ", {label}").unwrap();
    }
    match transport {
        "unix" => name.push_str(" (Unix socket)"),
        "tls" => name.push_str(" over HTTPS"),
        "close" => name.push_str(", a connection each"),
        _ => {}
    }
    name
}

/// Run `f` with the variant's observer attached (and detached after). `before`: the binary
/// for `Variant::Before`; `floor`: the bpftrace program of `Variant::Floor`.
fn with_variant<T>(
    v: Variant,
    agent_bin: &str,
    before: Option<&str>,
    floor: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<AgentFacts>)> {
    match v {
        Variant::Baseline => Ok((f()?, None)),
        Variant::Before | Variant::ServerOnly => {
            let (bin, args): (&str, &[&str]) = match v {
                Variant::Before => (before.context("no --before binary")?, &[]),
                _ => (agent_bin, &["--no-client-side"]),
            };
            std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
            let (mut agent, mut err) = start_agent_with(bin, args, Stdio::null())?;
            let r = f();
            let _ = Command::new("kill")
                .args(["-INT", &agent.id().to_string()])
                .status();
            let _ = err.read_to_string(&mut String::new());
            let _ = agent.wait();
            Ok((r?, None))
        }
        Variant::Floor => {
            let bt = bpftrace(floor)?;
            let r = f();
            stop_bpftrace(bt);
            Ok((r?, None))
        }
        Variant::Agent | Variant::AgentStats => {
            let prev =
                std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
            std::fs::write(
                "/proc/sys/kernel/bpf_stats_enabled",
                if v == Variant::AgentStats { "1" } else { "0" },
            )?;
            let (mut agent, mut err) = start_agent(agent_bin)?;
            let empty = if v == Variant::AgentStats {
                Some(bpftrace(EMPTY)?)
            } else {
                None
            };
            // Start-up (reading the kernel's BTF, loading) is not per-response work.
            let at_start = agent_facts(agent.id());
            let r = f();
            let mut facts = agent_facts(agent.id());
            if let Some(bt) = empty {
                stop_bpftrace(bt);
            }
            facts.cpu_s -= at_start.cpu_s;
            facts.empty = (
                facts.empty.0 - at_start.empty.0,
                facts.empty.1 - at_start.empty.1,
            );
            // The programs' run time during `f` only (not the agent's start-up probe).
            for p in &mut facts.progs {
                if let Some(b) = at_start.progs.iter().find(|b| b.0 == p.0) {
                    p.1 -= b.1;
                    p.2 -= b.2;
                }
            }
            let _ = Command::new("kill")
                .args(["-INT", &agent.id().to_string()])
                .status();
            let mut rest = String::new();
            err.read_to_string(&mut rest)?;
            let _ = agent.wait();
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", prev.trim());
            let num = |key: &str| {
                rest.split(key)
                    .nth(1)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                    .unwrap_or(0u64)
            };
            facts.judged = num("complete=");
            facts.stats = v == Variant::AgentStats;
            facts.lost = num("lost_events=");
            Ok((r?, Some(facts)))
        }
    }
}

/// The HTTPS row's floor: `FLOOR`, and empty bpftrace programs where the agent hooks the
/// system's `libssl.so.3` (entry and return of each call it hooks, entry of `SSL_free`), read
/// from the agent's own "TLS: hooked" line: what the uprobes' traps cost with no work done.
fn tls_floor(agent_bin: &str) -> Result<String> {
    let (mut agent, _, said) = agent_until_ready(agent_bin, &[], Stdio::null())?;
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let (lib, via) = said
        .lines()
        .find_map(|l| {
            let (lib, rest) = l
                .strip_prefix("truncwatch: TLS: hooked /")?
                .split_once(" (")?;
            if !lib.ends_with("libssl.so.3") {
                return None;
            }
            let via = rest.rsplit_once("; at ")?.1.trim_end_matches(')');
            Some((format!("/{lib}"), via))
        })
        .context("the agent hooked no libssl.so.3: no HTTPS floor")?;
    let mut program = String::from(FLOOR);
    for f in via.split(", ") {
        write!(program, " uprobe:{lib}:{f} {{}}")?;
        if f != "SSL_free" {
            write!(program, " uretprobe:{lib}:{f} {{}}")?;
        }
    }
    step(&format!("HTTPS floor: bpftrace -e '{program}'"));
    Ok(program)
}

/// bpftrace running `program`, attached.
fn bpftrace(program: &str) -> Result<Child> {
    let mut bt = Command::new("bpftrace");
    // A uprobe at an address inside a function (the agent's internal TLS functions): without
    // symbols there bpftrace cannot check the instruction boundary itself, and refuses it
    // unless told. The agent found those addresses by decoding the code.
    if program.contains(":0x") {
        bt.arg("--unsafe");
    }
    let mut bt = bt
        .args(["-e", program])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("bpftrace (Debian package bpftrace)")?;
    wait_line(bt.stdout.take().unwrap(), "Attaching")?;
    Ok(bt)
}

fn stop_bpftrace(mut bt: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &bt.id().to_string()])
        .status();
    let _ = bt.wait();
}

/// The agent, started and ready; its stderr, to read its stop summary from later.
fn start_agent(agent_bin: &str) -> Result<(Child, BufReader<std::process::ChildStderr>)> {
    start_agent_with(agent_bin, &[], Stdio::null())
}

/// The same, with these arguments, its stdout (the verdicts) going to `out`.
pub(crate) fn start_agent_with(
    agent_bin: &str,
    args: &[&str],
    out: Stdio,
) -> Result<(Child, BufReader<std::process::ChildStderr>)> {
    agent_until_ready(agent_bin, args, out).map(|(agent, err, _)| (agent, err))
}

/// The same, and what it printed up to "ready" (what it hooked).
fn agent_until_ready(
    agent_bin: &str,
    args: &[&str],
    out: Stdio,
) -> Result<(Child, BufReader<std::process::ChildStderr>, String)> {
    let mut agent = Command::new(agent_bin)
        .args(args)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(agent.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("truncwatch: ready") {
        if err.read_line(&mut said)? == 0 {
            bail!("the agent exited before it was ready: {said}");
        }
    }
    Ok((agent, err, said))
}

/// CPU time (since it started) and peak RSS of the agent, and the kernel's per-program run time, right now.
fn agent_facts(pid: u32) -> AgentFacts {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ")": state is field 0, utime 11, stime 12 (proc(5) fields 14 and 15).
    let cpu_s = (ticks(11) + ticks(12)) / 100.0;
    let (progs, empty) = prog_stats();
    AgentFacts {
        cpu_s,
        rss_kib: status_kib(pid, "VmHWM"),
        rss_now_kib: status_kib(pid, "VmRSS"),
        progs,
        empty,
        ..Default::default()
    }
}

/// A program's (name, total run time in ns, runs).
type ProgRuns = (String, f64, f64);

/// (program name, total run time in ns, runs) for truncwatch's programs, from bpftool; and
/// (total run time, runs) of the empty bpftrace program, if it runs.
fn prog_stats() -> (Vec<ProgRuns>, (f64, f64)) {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return (vec![], (0.0, 0.0));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let ours = [
        "sock_send_length",
        "sock_recv_length",
        "inet_sock_set_state",
        "tcp_receive_reset",
    ];
    let mut empty = (0.0, 0.0);
    // Minimal JSON walk: objects with "type", "name", "run_time_ns", "run_cnt". truncwatch's
    // programs are `tp_btf` ("tracing"); bpftrace's are classic tracepoints, their names cut
    // to 15 bytes.
    let progs = text
        .split("},{")
        .filter_map(|o| {
            let field = |k: &str| {
                o.split(&format!("\"{k}\":")).nth(1).map(|s| {
                    s.trim_start_matches('"')
                        .split(['"', ',', '}'])
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
            };
            let name = field("name")?;
            let t: f64 = field("run_time_ns")?.parse().ok()?;
            let c: f64 = field("run_cnt")?.parse().ok()?;
            if field("type")? != "tracing" {
                if "sock_send_length".starts_with(&name) {
                    empty = (t, c);
                }
                return None;
            }
            let full = ours
                .iter()
                .find(|n| n.starts_with(&name) || name.starts_with(*n))?;
            (c > 0.0).then(|| (full.to_string(), t, c))
        })
        .collect();
    (progs, empty)
}

/// (requests/s, p99 latency in ms) of one wrk run on `url`, with `extra` arguments (headers);
/// `libs`: a directory to load its shared libraries from first.
fn wrk(url: &str, libs: Option<&std::path::Path>, extra: &[&str]) -> Result<(f64, f64)> {
    let mut cmd = Command::new("wrk");
    if let Some(dir) = libs {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    let out = cmd
        .args(["-t1", "-c32", &format!("-d{WRK_SECONDS}s"), "--latency"])
        .args(extra)
        .arg(url)
        .output()
        .context("wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:")?.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%").map(|v| to_ms(v.trim())))
        .flatten()
        .context("wrk printed no 99% latency")?;
    Ok((rps, p99))
}

/// A directory where `libssl.so.3` and `libcrypto.so.3` are links to copies of the system's,
/// named otherwise: the agent hooks files named `libssl*` and the system's by inode, so a
/// program loading these is not hooked.
fn client_tls_libs(tmp: &std::path::Path) -> Result<std::path::PathBuf> {
    let dir = tmp.join("client-tls");
    std::fs::create_dir_all(&dir)?;
    for (lib, copy) in [
        ("libssl.so.3", "client-s.so"),
        ("libcrypto.so.3", "client-c.so"),
    ] {
        let from = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| std::path::Path::new(d).join(lib))
            .find(|p| p.exists())
            .with_context(|| format!("{lib} (Debian package libssl3)"))?;
        std::fs::copy(&from, dir.join(copy))?;
        let link = dir.join(lib);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(copy, &link)?;
    }
    Ok(dir)
}

/// Connections (one thread each) of the Unix socket load: wrk speaks only TCP.
const UNIX_CONNS: usize = 8;

/// (requests/s, p99 latency in ms) of GET `file` over nginx's Unix socket, keep-alive, for
/// `WRK_SECONDS`, from `UNIX_CONNS` connections each waiting for its answer before the next.
fn unix_load(sock: &std::path::Path, file: &str) -> Result<(f64, f64)> {
    let stop = Instant::now() + Duration::from_secs(WRK_SECONDS.into());
    let req = format!("GET /{file} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let threads: Vec<_> = (0..UNIX_CONNS)
        .map(|_| {
            let (sock, req) = (sock.to_path_buf(), req.clone());
            std::thread::spawn(move || -> Result<Vec<u32>> {
                let mut s = std::os::unix::net::UnixStream::connect(&sock)
                    .with_context(|| format!("connecting to {}", sock.display()))?;
                let mut buf = vec![0u8; 1 << 17];
                let mut micros = Vec::new();
                while Instant::now() < stop {
                    let t = Instant::now();
                    s.write_all(req.as_bytes())?;
                    read_response(&mut s, &mut buf)?;
                    micros.push(t.elapsed().as_micros() as u32);
                }
                Ok(micros)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??,
        );
    }
    all.sort_unstable();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0) as f64 / 1000.0;
    Ok((all.len() as f64 / WRK_SECONDS as f64, p99))
}

/// Read one response with a Content-Length body (what nginx sends for a static file).
pub(crate) fn read_response(s: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            bail!("nginx closed the connection");
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).context("response head")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse())
            })
            .context("no Content-Length")??;
        let total = end + 4 + len;
        if total > buf.len() {
            bail!("response larger than the read buffer");
        }
        while have < total {
            let n = s.read(&mut buf[have..total])?;
            if n == 0 {
                bail!("nginx closed the connection mid-body");
            }
            have += n;
        }
        return Ok(());
    }
}

fn to_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

/// Nanoseconds per 64-byte send on a socket that carries no HTTP, a thread draining the peer.
fn send_ns(kind: &str) -> Result<f64> {
    use std::os::unix::net::UnixStream;
    let (mut tx, mut rx): (Box<dyn Write + Send>, Box<dyn Read + Send>) = if kind == "unix" {
        let (a, b) = UnixStream::pair()?;
        (Box::new(a), Box::new(b))
    } else {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let a = std::net::TcpStream::connect(l.local_addr()?)?;
        a.set_nodelay(true)?;
        let (b, _) = l.accept()?;
        (Box::new(a), Box::new(b))
    };
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        while got < SENDS as u64 * 64 {
            match rx.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
    });
    let msg = [b'x'; 64];
    let start = Instant::now();
    for _ in 0..SENDS {
        tx.write_all(&msg)?;
    }
    let ns = start.elapsed().as_nanos() as f64 / SENDS as f64;
    drop(tx);
    let _ = reader.join();
    Ok(ns)
}

fn start_nginx(dir: &std::path::Path, port: u16) -> Result<NginxGuard> {
    start_nginx_with(dir, port, 1024)
}

/// nginx serving `dir/www` on `port`, over HTTPS on `port + 1` (a certificate made now), and
/// on `dir/nginx.sock`, with room for `connections`.
pub(crate) fn start_nginx_with(
    dir: &std::path::Path,
    port: u16,
    connections: u32,
) -> Result<NginxGuard> {
    let d = dir.display();
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .context("openssl req (Debian package openssl)")?
        .success();
    if !ok {
        bail!("openssl req could not make a certificate");
    }
    let tls_port = port + 1;
    let files = connections + 1000;
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log; worker_rlimit_nofile {files};
         events {{ worker_connections {connections}; }}
         http {{ access_log off; keepalive_requests 10000000;
           client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
           server {{ listen 127.0.0.1:{port}; listen unix:{d}/nginx.sock;
             listen 127.0.0.1:{tls_port} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
             root {d}/www; {heads} }} }}",
        heads = HEADS
            .iter()
            .filter(|h| h.1 > 0)
            .map(|(name, extra, _)| format!(
                "location /{name}/ {{ alias {d}/www/; {} }}",
                head_headers(*extra)
            ))
            .collect::<String>()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    // A killed nginx leaves its socket file behind, and the next one cannot bind it.
    let sock = dir.join("nginx.sock");
    let _ = std::fs::remove_file(&sock);
    use std::os::unix::process::CommandExt;
    let child = Command::new("/usr/sbin/nginx")
        .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
        .process_group(0)
        .spawn()
        .context("nginx (Debian package nginx-light)")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || std::os::unix::net::UnixStream::connect(&sock).is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "nginx did not start listening on {port} and {}",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(NginxGuard(child))
}

/// nginx `add_header` directives adding about `extra` bytes to a response head: the security
/// headers sites send, then session and tracking cookies of up to 700 bytes each.
fn head_headers(extra: usize) -> String {
    let mut out = String::from(
        "add_header Strict-Transport-Security \"max-age=63072000; includeSubDomains; preload\"; \
         add_header X-Content-Type-Options nosniff; add_header Referrer-Policy strict-origin-when-cross-origin; \
         add_header Content-Security-Policy \"default-src 'self'; img-src 'self' https://cdn.example.com; frame-ancestors 'none'\"; ",
    );
    // On the wire, "Name: value\r\n" per header.
    let mut wire = 62 + 31 + 48 + 110;
    let mut i = 0;
    while wire + 40 < extra {
        let value_len = (extra - wire - 14).min(700);
        let name = format!("c{i}=");
        let attrs = "; Path=/; Secure; HttpOnly; SameSite=Lax";
        let filler = value_len.saturating_sub(name.len() + attrs.len()).max(1);
        write!(
            out,
            "add_header Set-Cookie \"{name}{}{attrs}\"; ",
            "x".repeat(filler)
        )
        .unwrap();
        wire += 14 + name.len() + filler + attrs.len();
        i += 1;
    }
    out
}

pub(crate) struct NginxGuard(Child);
impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// bpftrace's `tracepoint:` probes need tracefs, which a fresh machine does not mount.
fn mount_tracefs() -> Result<()> {
    if std::path::Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    step("mounting tracefs on /sys/kernel/tracing (bpftrace's tracepoint probes need it)");
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?
        .success();
    if !ok {
        bail!("could not mount tracefs");
    }
    Ok(())
}

fn wait_line(out: impl Read, needle: &str) -> Result<()> {
    for line in BufReader::new(out).lines() {
        if line?.contains(needle) {
            return Ok(());
        }
    }
    bail!("did not see {needle:?}")
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .trim_start_matches([' ', '\t', ':'])
                        .to_string(),
                )
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// `median (min..max)` with `decimals`.
fn spread(v: &[f64], decimals: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.*} ({:.*}..{:.*})",
        decimals,
        median(v),
        decimals,
        min,
        decimals,
        max
    )
}

/// `--soak SECONDS`: the agent under continuous nginx load; its RSS sampled ten times. Writes
/// `docs/results/soak.md`.
pub fn soak(agent_bin: &str, root: &str, seconds: u64) -> Result<()> {
    let tmp = std::env::temp_dir().join("truncwatch-bench");
    std::fs::create_dir_all(tmp.join("www"))?;
    std::fs::write(tmp.join("www/1k.bin"), vec![b'a'; 1024])?;
    let port = 18801;
    let _nginx = start_nginx(&tmp, port)?;
    let (mut agent, mut err) = start_agent(agent_bin)?;
    let url = format!("http://127.0.0.1:{port}/1k.bin");
    let mut load = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), &url])
        .stdout(Stdio::piped())
        .spawn()
        .context("wrk")?;
    let mut report = format!(
        "# Soak: agent memory under sustained load\n\nCommand: `cargo xtask bench --soak {seconds}`. Machine: {}. nginx serving 1 KiB over keep-alive to `wrk -t1 -c32` for {seconds} s, the agent attached; its RSS (VmRSS) sampled ten times.\n\n| elapsed | agent RSS |\n|---|---|\n",
        machine()
    );
    let start = Instant::now();
    let mut samples = Vec::new();
    for i in 1..=10 {
        std::thread::sleep(Duration::from_secs(seconds) / 10);
        let kib = status_kib(agent.id(), "VmRSS");
        step(&format!(
            "soak {i}/10: agent RSS {:.1} MiB",
            kib as f64 / 1024.0
        ));
        samples.push(kib);
        writeln!(
            report,
            "| {} s | {:.1} MiB |",
            start.elapsed().as_secs(),
            kib as f64 / 1024.0
        )?;
    }
    let mut out = String::new();
    load.stdout.take().unwrap().read_to_string(&mut out)?;
    let _ = load.wait();
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let mut rest = String::new();
    err.read_to_string(&mut rest)?;
    let _ = agent.wait();
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let summary = rest
        .lines()
        .find(|l| l.contains("stopped"))
        .unwrap_or("")
        .to_string();
    writeln!(
        report,
        "\nLoad: {rps} requests/s. Agent at exit: `{summary}`"
    )?;
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    writeln!(
        report,
        "\nRSS from the first sample to the last: {:.1} → {:.1} MiB.",
        first as f64 / 1024.0,
        last as f64 / 1024.0
    )?;
    println!("\n{report}");
    std::fs::write(format!("{root}/docs/results/soak.md"), report)?;
    Ok(())
}

/// A process's memory figure `field` (e.g. `VmRSS`, `VmHWM`) from `/proc/PID/status`, in KiB;
/// 0 if the process or the field is gone (proc(5)).
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
