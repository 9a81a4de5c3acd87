//! `cargo xtask bench --load`: the agent under connection churn and many concurrent
//! connections, on loopback against nginx. Writes `docs/results/load.md`.
//!
//! 1. One million short connections (one 1 KiB response each, then the client closes).
//! 2. Ten thousand concurrent keep-alive connections, three requests on each, then all closed.
//! 3. The same ten thousand with `--max-connections 2000`: the agent must evict (and count it)
//!    and still flag nothing.
//!
//! Throughout: the agent's RSS and tracked connections are sampled, and every verdict it prints
//! (problems only) is a false flag, since every response here is whole.
use crate::bench::{machine, read_response, start_agent_with, start_nginx_with, status_kib};
use crate::step;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PORT: u16 = 18802;
const METRICS: &str = "127.0.0.1:19478";
const SHORT: u64 = 1_000_000;
const CONCURRENT: usize = 10_000;
const THREADS: u64 = 4;

pub fn run(agent_bin: &str, root: &str) -> Result<()> {
    raise_fd_limit(CONCURRENT as u64 + 1000)?;
    let tmp = std::env::temp_dir().join("truncwatch-load");
    std::fs::create_dir_all(tmp.join("www"))?;
    std::fs::write(tmp.join("www/1k.bin"), vec![b'a'; 1024])?;
    let _nginx = start_nginx_with(&tmp, PORT, CONCURRENT as u32 + 1000)?;
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    let mut report = format!(
        "# Load: connection churn and concurrency\n\nCommand: `cargo xtask bench --load`. Machine: {}. nginx serving 1 KiB on loopback; every response is whole, so any verdict the agent prints is a false flag.\n\n",
        machine()
    );

    // 1 and 2, one agent.
    let out = tmp.join("verdicts-1.jsonl");
    let mut agent = Agent::start(agent_bin, &[], &out)?;
    let t = Instant::now();
    short_connections(dst, &mut agent)?;
    let short_secs = t.elapsed().as_secs_f64();
    let after_short = agent.sample()?.tracked;
    let (open, during) = concurrent(dst, &mut agent)?;
    drop(open);
    std::thread::sleep(Duration::from_secs(3));
    let after_close = agent.sample()?;
    let (after_close, samples) = (after_close.tracked, std::mem::take(&mut agent.samples));
    let summary = agent.stop()?;
    let flags = count_lines(&out)?;
    writeln!(
        report,
        "## One million short connections, then {CONCURRENT} concurrent keep-alive connections\n"
    )?;
    writeln!(
        report,
        "{SHORT} connections in {short_secs:.0} s ({:.0}/s), then {CONCURRENT} connections held open with 3 requests each, then closed.\n",
        SHORT as f64 / short_secs
    )?;
    writeln!(
        report,
        "| sampled | agent RSS | connections tracked |\n|---|---|---|"
    )?;
    for s in &samples {
        writeln!(
            report,
            "| {} | {:.1} MiB | {} |",
            s.when,
            s.rss_kib as f64 / 1024.0,
            s.tracked
        )?;
    }
    writeln!(
        report,
        "\n- after the short connections: {} tracked; with all {CONCURRENT} open: {} tracked; 3 s after closing them: {after_close} tracked",
        after_short, during.tracked
    )?;
    writeln!(report, "- verdicts printed (all false flags): {flags}")?;
    writeln!(report, "- agent at exit: `{summary}`\n")?;
    let ok1 = flags == 0
        && during.tracked >= CONCURRENT as u64
        && after_close < 100
        && field(&summary, "lost_events=") == 0;

    // 3, an agent with a small table.
    let out = tmp.join("verdicts-2.jsonl");
    let mut agent = Agent::start(agent_bin, &["--max-connections", "2000"], &out)?;
    let (open, during) = concurrent(dst, &mut agent)?;
    drop(open);
    std::thread::sleep(Duration::from_secs(3));
    let evicted = metric(&scrape()?, "truncwatch_connections_evicted_total");
    let summary = agent.stop()?;
    let flags = count_lines(&out)?;
    writeln!(
        report,
        "## {CONCURRENT} concurrent connections, `--max-connections 2000`\n"
    )?;
    writeln!(
        report,
        "- tracked with all open: {} (limit 2000); evicted, as exported (`truncwatch_connections_evicted_total`): {evicted}",
        during.tracked
    )?;
    writeln!(report, "- verdicts printed (all false flags): {flags}")?;
    writeln!(report, "- agent at exit: `{summary}`")?;
    let ok2 = flags == 0 && during.tracked <= 2000 && evicted > 0;

    println!("\n{report}");
    std::fs::write(format!("{root}/docs/results/load.md"), &report)?;
    step(&format!("wrote {root}/docs/results/load.md"));
    if !(ok1 && ok2) {
        bail!("the load run did not hold (see the report above)");
    }
    Ok(())
}

struct Sample {
    when: String,
    rss_kib: u64,
    tracked: u64,
}

struct Agent {
    child: Child,
    err: std::io::BufReader<std::process::ChildStderr>,
    started: Instant,
    samples: Vec<Sample>,
}

impl Agent {
    fn start(bin: &str, extra: &[&str], out: &std::path::Path) -> Result<Agent> {
        let mut args = vec![
            "run",
            "--format",
            "json",
            "--metrics-addr",
            METRICS,
            "--canary-interval",
            "0s",
        ];
        args.extend_from_slice(extra);
        let (child, err) = start_agent_with(bin, &args, Stdio::from(std::fs::File::create(out)?))?;
        Ok(Agent {
            child,
            err,
            started: Instant::now(),
            samples: Vec::new(),
        })
    }

    /// RSS and tracked connections now (the metrics refresh every second: wait for one).
    fn sample(&mut self) -> Result<&Sample> {
        std::thread::sleep(Duration::from_millis(1100));
        let rss_kib = status_kib(self.child.id(), "VmRSS");
        let tracked = metric(&scrape()?, "truncwatch_connections_tracked");
        self.samples.push(Sample {
            when: format!("{} s", self.started.elapsed().as_secs()),
            rss_kib,
            tracked,
        });
        Ok(self.samples.last().expect("just pushed"))
    }

    /// Stop it; its summary line.
    fn stop(mut self) -> Result<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let mut rest = String::new();
        self.err.read_to_string(&mut rest)?;
        let _ = self.child.wait();
        Ok(rest
            .lines()
            .find(|l| l.contains("stopped;"))
            .unwrap_or("")
            .trim_start_matches("truncwatch: ")
            .to_string())
    }
}

fn short_connections(dst: SocketAddrV4, agent: &mut Agent) -> Result<()> {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (done, failed) = (&done, &failed);
            s.spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                for i in 0..SHORT / THREADS {
                    let ok = (|| -> Result<()> {
                        let mut c = connect_from(source(t * SHORT + i), dst)?;
                        c.write_all(b"GET /1k.bin HTTP/1.1\r\nHost: load\r\n\r\n")?;
                        read_response(&mut c, &mut buf)
                    })();
                    if ok.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut next = 0;
        while done.load(Ordering::Relaxed) < SHORT {
            std::thread::sleep(Duration::from_millis(200));
            let n = done.load(Ordering::Relaxed);
            if n >= next {
                step(&format!("short connections: {n}/{SHORT}"));
                let _ = agent.sample();
                next = n + SHORT / 10;
            }
        }
    });
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {SHORT} short connections failed on the client side");
    }
    Ok(())
}

/// Open `CONCURRENT` connections, 3 requests on each (all sent, then all read), and keep them
/// open; returns them and a sample taken while they are.
fn concurrent(dst: SocketAddrV4, agent: &mut Agent) -> Result<(Vec<TcpStream>, Sample)> {
    step(&format!("opening {CONCURRENT} keep-alive connections"));
    let mut conns = (0..CONCURRENT as u64)
        .map(|i| connect_from(source(7_000_000 + i), dst))
        .collect::<Result<Vec<_>>>()?;
    let mut buf = vec![0u8; 1 << 16];
    for round in 1..=3 {
        for c in &mut conns {
            c.write_all(b"GET /1k.bin HTTP/1.1\r\nHost: load\r\n\r\n")?;
        }
        for c in &mut conns {
            read_response(c, &mut buf)?;
        }
        step(&format!(
            "{CONCURRENT} connections: round {round}/3 answered"
        ));
    }
    let s = agent.sample()?;
    let s = Sample {
        when: s.when.clone(),
        rss_kib: s.rss_kib,
        tracked: s.tracked,
    };
    Ok((conns, s))
}

/// A distinct loopback source address per connection (127.1.0.0/16, then on): a million
/// connections from one address would run out of ports while they sit in TIME_WAIT.
fn source(n: u64) -> Ipv4Addr {
    let n = (n % (250 << 16)) as u32;
    Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, (n as u8).max(1))
}

/// Connect from `src` (its port picked at connect time, so the 4-tuple only has to be unique).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> Result<TcpStream> {
    let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain socket calls on a descriptor we own; it goes into a TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
        let from = sa(src, 0);
        if libc::bind(fd, (&raw const from).cast(), len) != 0 {
            bail!("bind {src}: {}", std::io::Error::last_os_error());
        }
        let to = sa(*dst.ip(), dst.port());
        if libc::connect(fd, (&raw const to).cast(), len) != 0 {
            bail!("connect from {src}: {}", std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Raise our soft open-file limit to `n` (within the hard limit, which we may not raise).
fn raise_fd_limit(n: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_max < n {
        bail!(
            "{n} open files needed, and the hard limit is {} (`ulimit -Hn`)",
            lim.rlim_max
        );
    }
    lim.rlim_cur = n;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "raising the open-file limit to {n}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn scrape() -> Result<String> {
    let mut s = TcpStream::connect(METRICS).context("the agent's metrics endpoint")?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// A metric's value (the first series of that name without labels).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

fn field(summary: &str, key: &str) -> u64 {
    summary
        .split(key)
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

fn count_lines(path: &std::path::Path) -> Result<usize> {
    Ok(std::io::BufReader::new(std::fs::File::open(path)?)
        .lines()
        .count())
}
