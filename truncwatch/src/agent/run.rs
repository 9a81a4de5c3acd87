//! `truncwatch run`: load and attach the kernel programs, read events, print verdicts, serve
//! metrics, and run the canary. `truncwatch selftest` is the same with one canary, then exit.
use crate::agent::canary;
use crate::agent::self_traffic::{Class, Seen, SelfTraffic};
use crate::escape::{escape, escape_path};
use crate::export::endpoint::{self, Shared};
use crate::export::line_budget::{self, LineBudget};
use crate::export::metrics::{Metrics, ProgramStats};
use crate::export::output::{self, Clock, Format};
use crate::judge::correlator::{Correlator, Kind, Verdict};
use crate::judge::events::{Event, Side};
use crate::kernel::btf_offsets::SockLayout;
use crate::kernel::decode::decode;
use crate::kernel::load::{Backend, DEFAULT_MAX_HEAD, attach, release_freed_memory};
use crate::kernel::tls_hooks::TlsHooks;
use crate::owner::attribution::Resolver;
use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use truncwatch_common::{HEAD_CAP, Settings};

/// How often pending events are read when the kernel has not woken us (it wakes us only once
/// a batch of events is waiting).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Output: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Print every verdict (complete, unframed, unparsed too), not only problems.
    #[arg(long)]
    pub all: bool,
    /// Connections tracked at once; the least recently active are dropped (and counted) past it.
    #[arg(long, default_value_t = 65536)]
    pub max_connections: usize,
    /// Size of the ring buffer that carries events from the kernel (a power of two, MiB). It
    /// is mapped twice (wrap-around), so it counts double in the agent's RSS.
    #[arg(long, default_value_t = 4, value_parser = ring_mib)]
    pub ring_buffer_mib: u32,
    /// Response heads are read up to this many bytes; longer ones are reported `unparsed`, never
    /// judged (2048 to 32768). A head that ends within its first 2048 bytes costs the same
    /// whatever this is; each longer one costs a copy of up to this many bytes, in the sender.
    #[arg(long, default_value_t = DEFAULT_MAX_HEAD, value_parser = max_head)]
    pub max_head_bytes: u32,
    /// Leave this host's HTTP clients alone: judge only the responses it sends. The client
    /// side (docs/client-side.md) costs each client read what a server's send costs.
    #[arg(long)]
    pub no_client_side: bool,
    /// Leave TLS libraries alone: no uprobes, so HTTPS responses are not judged (a reset that
    /// drops a TLS connection's bytes is still a connection-level `reset_discard`). What the
    /// TLS hooks cost: docs/https.md.
    #[arg(long)]
    pub no_tls: bool,
    /// Serve /metrics, /readyz and /healthz on this address (`off`: no endpoint). Bound to
    /// loopback by default; see the README before exposing it.
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub metrics_addr: String,
    /// Verdict lines one owner (side, verdict, process name and container) may print a
    /// second; past it they are counted, and summarised in one line a second per owner
    /// (`0`: no limit). The metrics count every verdict.
    #[arg(long, default_value_t = line_budget::DEFAULT_PER_SECOND)]
    pub max_lines_per_second: u32,
    /// Distinct owners (process, container, namespace, pod, port) with labels of their own in
    /// the metrics; later ones are counted under `other`.
    #[arg(long, default_value_t = 1000)]
    pub max_label_sets: usize,
    /// Turn on the kernel's BPF run-time stats (`kernel.bpf_stats_enabled`) while running, to
    /// export each program's run time. They cost every BPF program on the host a little.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Run the built-in canary (a short write and a reset discard on loopback, which must be
    /// flagged exactly) this often; `0s` turns it off. Its result is a metric and gates /readyz.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub canary_interval: Duration,
    /// TLS libraries hooked at most (uprobes on each; a quarter of them per file owner other
    /// than root). Each costs the kernel some time to unhook at stop (docs/reliability.md).
    #[arg(long, default_value_t = crate::kernel::tls_hooks::DEFAULT_MAX_LIBRARIES)]
    pub max_tls_libraries: usize,
    /// How to hook the send and receive paths; `auto` picks the best this kernel has
    /// (`truncwatch check` shows what that is).
    #[arg(long, value_enum, default_value = "auto", env = "TRUNCWATCH_BACKEND")]
    pub backend: Backend,
    /// Print every decoded kernel event to stderr (for debugging the agent).
    #[arg(long, hide = true)]
    pub trace_events: bool,
    /// Run one canary, report, exit (`truncwatch selftest`).
    #[arg(skip)]
    pub selftest: bool,
}

const METRICS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(args: RunArgs) -> Result<()> {
    // Bad flags fail before anything is loaded.
    let listener = match args.metrics_addr.as_str() {
        "off" | "" => None,
        addr => Some(endpoint::bind(addr).await?),
    };
    let (mut ebpf, layout, backend) = attach(
        args.ring_buffer_mib,
        Settings {
            max_head_bytes: args.max_head_bytes,
            client_side: u32::from(!args.no_client_side),
            ring_bytes: args.ring_buffer_mib << 20,
        },
        args.backend,
    )?;
    release_freed_memory();
    // Kept open for as long as the stats should stay on.
    let _stats = if args.bpf_stats {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("turning on BPF stats (--bpf-stats)")?,
        )
    } else {
        None
    };
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in `ring`).
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut metrics = Metrics::new(args.max_label_sets, args.max_connections, backend.name());
    let mut reader = Reader {
        correlator: Correlator::new(args.max_connections, crate::kernel::kernel_hz::detect())
            .max_head_bytes(args.max_head_bytes as usize)
            .problems_only(!args.all),
        layout: layout.sock,
        own: SelfTraffic::new(&mut metrics),
        canary: canary::Runs::new(&mut metrics),
        verdicts: Vec::new(),
        decode_errors: 0,
        events: 0,
        last_dated_ns: 0,
        trace: args.trace_events,
        resolver: Resolver::new("/"),
        metrics,
        canary_verdicts: [[0; Kind::COUNT]; 2],
        lines: LineBudget::new(args.max_lines_per_second),
    };
    let shared = Arc::new(Shared::default());
    if let Some(l) = listener {
        eprintln!("truncwatch: metrics on http://{}/metrics", l.local_addr()?);
        let stats = endpoint::Stats::new(&mut reader.metrics);
        tokio::spawn(endpoint::serve(l, shared.clone(), stats));
    }
    let clock = Clock::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());

    probe_events_flow(&mut ring, &mut reader).await?;
    if reader.own.own_pid() != Some(std::process::id()) {
        // Our /proc is not the host's: a host pid looked up there could be another process.
        reader.resolver.turn_off();
        eprintln!(
            "truncwatch: running in a PID namespace of its own: verdicts carry pid and process name, but no cgroup, container or pod (run it in the host's PID namespace for those)"
        );
    }
    let mut tls = if args.no_tls {
        eprintln!("truncwatch: TLS watching off (--no-tls): HTTPS responses are not judged");
        None
    } else {
        tls_hooks_start(&mut ebpf, args.max_tls_libraries)
    };
    let mut tls_found = tls_first_scan(tls.as_mut()).await;
    // Before "ready": whoever stops the agent as soon as it is ready gets a clean stop (hooks
    // and uprobe events removed), not the default action of the signal.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    if let Err(e) = crate::agent::shutdown::watchdog() {
        eprintln!("truncwatch: no stop watchdog (a stuck loop could ignore SIGTERM): {e}");
    }
    // Published before we say so: whoever waits for "ready" finds /readyz agreeing.
    publish(&mut reader, &mut ebpf, &shared, &args);
    eprintln!(
        "truncwatch: ready ({} backend: {} hooks attached)",
        backend.name(),
        backend.programs(layout.sendpage)
    );

    // The kernel wakes us only when a batch is waiting; this tick picks up the rest.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut metrics_tick = tokio::time::interval(METRICS_EVERY);
    let canary_every = if args.selftest {
        Duration::from_secs(3600)
    } else {
        args.canary_interval
    };
    let mut canary_tick = tokio::time::interval(canary_every.max(Duration::from_secs(1)));
    let canary_on = args.selftest || !args.canary_interval.is_zero();
    let mut provoking: Option<canary::Traffic> = None;
    let mut selftest_result = None;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                reader.drain(guard.get_inner_mut());
                guard.clear_ready();
                reader.print(&mut out, &args, &clock)?;
            }
            _ = tick.tick() => {
                reader.drain(ring.get_mut());
                reader.print(&mut out, &args, &clock)?;
            }
            _ = metrics_tick.tick() => {
                if let Some(outcome) = reader.canary.done(&mut reader.metrics)
                    && args.selftest {
                        selftest_result = Some(outcome == canary::Outcome::Passed);
                        break;
                    }
                publish(&mut reader, &mut ebpf, &shared, &args);
            }
            _ = canary_tick.tick(), if canary_on && reader.canary.idle() && provoking.is_none() => {
                let own = &mut reader.own;
                provoking = reader.canary.start(|locals| own.canary_started(locals));
                if provoking.is_none() && args.selftest {
                    selftest_result = Some(false);
                    break;
                }
            }
            done = async { provoking.as_mut().expect("guarded").await }, if provoking.is_some() => {
                provoking = None;
                let truth = done.map_err(|_| anyhow::anyhow!("its thread panicked")).and_then(|t| t);
                reader.canary.traffic(truth);
            }
            Some(found) = tls_found.recv() => report_tls(found),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Detach first so nothing new arrives, then flush what is pending.
    let lost: u64 = lost_events(&mut ebpf).iter().sum();
    if let Some(hooks) = tls.as_mut() {
        hooks.stop(Duration::from_secs(1));
    }
    drop(ebpf);
    reader.resolver.stop_waiting();
    reader.drain(ring.get_mut());
    reader.print(&mut out, &args, &clock)?;
    reader.summarise(&mut out, &args, Instant::now(), true)?;
    out.flush()?;
    let s = &reader.correlator.stats;
    // The host's verdicts: without the canaries' (ours and other agents'), as in the output.
    let host = |side: Side, kind: Kind, n: u64| {
        n.saturating_sub(reader.canary_verdicts[side as usize][kind as usize])
    };
    // The verdicts' counts, by kind, then what was not judged and the detector's health.
    let judged: String = Kind::ALL
        .iter()
        .map(|&k| {
            format!(
                " {}={}",
                k.as_str(),
                host(Side::Server, k, s.judged[k as usize])
            )
        })
        .collect::<String>()
        + " client:"
        + &Kind::ALL
            .iter()
            .map(|&k| (k, host(Side::Client, k, s.judged_client[k as usize])))
            .filter(|&(_, n)| n > 0)
            .map(|(k, n)| format!(" {}={n}", k.as_str()))
            .collect::<String>();
    eprintln!(
        "truncwatch: stopped; connections={} heads={}{judged} (unparsed: too long or unfinished {}, invalid {}) chunked_uncertain={} pipelined_unseen={} head_only={} head_answers={} interim={} evicted={} lost_events={} decode_errors={} canary_verdicts={}",
        s.connections,
        s.heads,
        s.unparsed,
        s.invalid,
        s.chunked_uncertain,
        s.pipelined_unseen,
        s.head_only,
        s.head_answers,
        s.interim,
        s.evicted,
        lost,
        reader.decode_errors,
        reader.canary_verdicts.iter().flatten().sum::<u64>()
    );
    match selftest_result {
        Some(false) => {
            bail!("selftest failed: the detector does not work on this host (see above)")
        }
        _ => Ok(()),
    }
}

/// Load the TLS uprobes and hook the TLS libraries running now. None (said why) if uprobes
/// cannot be used here: plain HTTP is still judged.
fn tls_hooks_start(ebpf: &mut Ebpf, max_libraries: usize) -> Option<TlsHooks> {
    match TlsHooks::load(ebpf, max_libraries) {
        Ok(hooks) => Some(hooks),
        Err(e) => {
            eprintln!("truncwatch: HTTPS not covered: {e:#}");
            None
        }
    }
}

/// Start the TLS scanner's thread and wait (`TLS_FIRST_SCAN` at most, the endpoint served
/// meanwhile) for its first scan, so that what runs now is hooked before "ready". Its later
/// finds come on the returned channel.
async fn tls_first_scan(
    tls: Option<&mut TlsHooks>,
) -> tokio::sync::mpsc::Receiver<Vec<crate::kernel::tls_hooks::Target>> {
    let Some(hooks) = tls else {
        return tokio::sync::mpsc::channel(1).1;
    };
    let mut found = hooks.watch();
    match tokio::time::timeout(TLS_FIRST_SCAN, found.recv()).await {
        Ok(Some(targets)) => report_tls(targets),
        _ => eprintln!("truncwatch: TLS: the first library scan goes on in the background"),
    }
    found
}

/// How long the start waits for the first TLS scan.
const TLS_FIRST_SCAN: Duration = Duration::from_secs(10);

/// Say which TLS libraries were newly hooked, or could not be.
fn report_tls(targets: Vec<crate::kernel::tls_hooks::Target>) {
    for t in targets {
        match t.hooked {
            Ok(()) => eprintln!(
                "truncwatch: TLS: hooked {} ({}; at {})",
                escape_path(&t.path),
                t.functions.join(", "),
                escape(&t.via.join(", "))
            ),
            Err(e) => eprintln!(
                "truncwatch: TLS: not hooked {}: {}",
                escape_path(&t.path),
                escape(&e)
            ),
        }
    }
}
/// Refresh what the endpoint serves: readiness (gated by the last canary) and the metrics.
fn publish(reader: &mut Reader, ebpf: &mut Ebpf, shared: &Shared, args: &RunArgs) {
    let ready = reader.canary.passed() != Some(false);
    shared.ready.store(ready, Ordering::Relaxed);
    reader.metrics.set_ready(ready);
    let lost = lost_events(ebpf);
    let progs = program_stats(ebpf);
    let r = reader;
    r.metrics.update(
        &r.correlator.stats,
        !args.all,
        r.correlator.tracked(),
        r.events,
        lost,
        &progs,
    );
    *shared.metrics.lock().expect("metrics lock") = r.metrics.encode();
}

struct Reader {
    correlator: Correlator,
    layout: SockLayout,
    /// Our own traffic and other agents' probes and canaries, by identity.
    own: SelfTraffic,
    canary: canary::Runs,
    verdicts: Vec<Verdict>,
    decode_errors: u64,
    events: u64,
    /// The latest kernel time of a dated event (the undated sends after it are not earlier).
    last_dated_ns: u64,
    trace: bool,
    resolver: Resolver,
    metrics: Metrics,
    /// Verdicts set aside (ours, our canary's, other agents' probes and canaries), by `Kind`:
    /// left out of the output, the verdict metrics and the stop summary's counts. By side
    /// (`Side as usize`), then kind.
    canary_verdicts: [[u64; Kind::COUNT]; 2],
    /// Verdict lines each owner may print (the metrics count every verdict).
    lines: LineBudget,
}

impl Reader {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // Send events come undated from the kernel (it saves the sender a clock read): they
        // get the time the drain began at, normally within one drain interval of the send,
        // and never earlier than a dated event before them (the ring keeps their order).
        let mut now = None;
        while let Some(item) = ring.next() {
            self.events += 1;
            match decode(&item, &self.layout) {
                Ok(mut ev) if ev.ts_ns() == 0 => {
                    let began = *now.get_or_insert_with(crate::export::output::monotonic_ns);
                    ev.date(began.max(self.last_dated_ns));
                    self.handle(ev)
                }
                Ok(ev) => {
                    self.last_dated_ns = self.last_dated_ns.max(ev.ts_ns());
                    self.handle(ev)
                }
                Err(_) => self.decode_errors += 1,
            }
        }
        // Responses waiting too long after their server's FIN (the kernel's clock).
        let now = now.unwrap_or_else(crate::export::output::monotonic_ns);
        self.correlator.expire(now, &mut self.verdicts);
    }

    fn handle(&mut self, ev: Event) {
        if self.trace {
            match &ev {
                // Lengths only: head bytes hold header values, which are never logged.
                Event::Send(s) => eprintln!(
                    "event: send sk={:#x} offset={} ret={} requested={} head_bytes={:?} requests={:?} events_lost={}",
                    s.sk,
                    s.offset,
                    s.ret,
                    s.requested,
                    s.head.as_ref().map(Vec::len),
                    s.requests,
                    s.events_lost
                ),
                Event::HeadPiece(p) => eprintln!(
                    "event: head piece sk={:#x} offset={} send_end={} bytes={} events_lost={}",
                    p.sk,
                    p.offset,
                    p.send_end,
                    p.bytes.len(),
                    p.events_lost
                ),
                other => eprintln!("event: {other:?}"),
            }
        }
        // A socket left out below still ends the connection the kernel had at its address:
        // otherwise its sends would count for that one.
        if let Event::Open {
            sk, ts_ns, losses, ..
        } = &ev
        {
            self.correlator
                .socket_reused(*sk, *ts_ns, *losses, &mut self.verdicts);
        }
        // The agent's own sockets are never judged (its start-up probe only proves events
        // flow; its metrics endpoint answers scrapes), except the canary's.
        let seen = self.own.see(&ev, self.canary.locals());
        if seen == Seen::Untracked {
            return;
        }
        match &ev {
            // Who owns a connection is looked up when it is first seen: the process may be
            // gone by the time its verdict comes. (Not an agent's: its verdict is set aside.)
            Event::Open { meta, .. } if seen == Seen::Host => {
                let (owner, fresh) = self.resolver.at_open(meta.pid);
                if fresh {
                    self.metrics.build_seen(&meta.comm, &owner);
                }
            }
            // (A reset may run in another task's context, a timer's: no build to name.)
            Event::ResetDiscard { meta, .. } => {
                self.resolver.for_pid(meta.pid);
            }
            _ => {}
        }
        self.correlator.handle(ev, &mut self.verdicts);
    }

    fn print(&mut self, out: &mut impl Write, args: &RunArgs, clock: &Clock) -> Result<()> {
        let now = Instant::now();
        // Verdicts whose process's build is still being read wait for it (a moment, on the
        // next drains), not the event loop.
        let mut waiting = Vec::new();
        let mut waiting_pids = std::collections::HashSet::new();
        for v in std::mem::take(&mut self.verdicts) {
            match self.own.classify(&v, self.canary.locals()) {
                Class::Host => {}
                Class::Canary => {
                    self.canary_verdicts[v.meta.side as usize][v.kind as usize] += 1;
                    self.canary.verdict(v);
                    continue;
                }
                Class::SetAside => {
                    self.canary_verdicts[v.meta.side as usize][v.kind as usize] += 1;
                    continue;
                }
            }
            // (A process's verdicts keep their order: once one waits, the ones after it wait
            // too, even if the build came in meanwhile. A CI run printed a connection's
            // `complete` before the `desync` that came first.)
            if waiting_pids.contains(&v.pid) || self.resolver.build_pending(v.pid) {
                waiting_pids.insert(v.pid);
                waiting.push(v);
                continue;
            }
            let owner = self.resolver.for_pid(v.pid);
            self.metrics.verdict(&v, &owner);
            // (the correlator builds the others only with --all)
            if !(args.all || v.kind.is_problem()) {
                continue;
            }
            if self.lines.admit(&line_budget::Owner::of(&v, &owner), now) {
                writeln!(out, "{}", output::format(&v, &owner, args.format, clock))?;
            } else {
                self.metrics.line_suppressed();
            }
        }
        self.verdicts = waiting;
        self.summarise(out, args, now, false)?;
        out.flush()?;
        Ok(())
    }

    /// One line per owner whose verdict lines were held back a second or more (`all`: every
    /// such owner, as the agent stops).
    fn summarise(
        &mut self,
        out: &mut impl Write,
        args: &RunArgs,
        now: Instant,
        all: bool,
    ) -> Result<()> {
        for s in self.lines.due(now, all) {
            let line = output::suppressed(
                &s,
                args.max_lines_per_second,
                args.format,
                SystemTime::now(),
            );
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// Send a response head over a Unix socket pair of our own and wait until the kernel programs
/// report both its open and its end of stream: proof that programs, offsets and the ring
/// buffer all work before we say "ready". A probe not seen within `PROBE_RETRY` is sent again
/// (its events lost to a ring buffer full of others' traffic), up to `PROBE_DEADLINE`.
async fn probe_events_flow(
    ring: &mut AsyncFd<RingBuf<MapData>>,
    reader: &mut Reader,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PROBE_DEADLINE;
    loop {
        send_probe(reader.own.probe_head())?;
        let retry = (tokio::time::Instant::now() + PROBE_RETRY).min(deadline);
        while !reader.own.probe_done() && tokio::time::Instant::now() < retry {
            tokio::time::sleep(DRAIN_EVERY).await;
            reader.drain(ring.get_mut());
        }
        if reader.own.probe_done() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the kernel programs attached, but no events arrived from a test connection within {} s",
                PROBE_DEADLINE.as_secs()
            );
        }
        // Its events may have been lost to a ring buffer that others' traffic filled before
        // we read it (a flood on the host while we started): probe again.
        reader.own.probe_again();
    }
}

/// How long the start-up probe may take in all, and how long one probe's events are waited
/// for before another is sent.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
const PROBE_RETRY: Duration = Duration::from_secs(1);

/// One start-up probe: `head` over a Unix socket pair of our own, then its end of stream.
fn send_probe(head: String) -> Result<()> {
    // Its head carries our nonce: how we find it, and our pid (`self_traffic`). (The thread's
    // name is for people reading other agents' output; no agent trusts it.)
    let traffic = std::thread::Builder::new()
        .name(canary::THREAD.into())
        .spawn(move || -> std::io::Result<()> {
            let (mut server, mut client) = std::os::unix::net::UnixStream::pair()?;
            server.write_all(head.as_bytes())?;
            drop(server);
            client.read_to_end(&mut Vec::new())?;
            Ok(())
        })?;
    traffic
        .join()
        .map_err(|_| anyhow::anyhow!("the start-up probe's thread panicked"))??;
    Ok(())
}

fn max_head(s: &str) -> Result<u32, String> {
    let limit = truncwatch_common::MAX_HEAD_LIMIT as u32;
    match s.parse::<u32>() {
        Ok(n) if (HEAD_CAP as u32..=limit).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: a number of bytes from {HEAD_CAP} to {limit}"
        )),
    }
}

fn ring_mib(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1024 => Ok(n),
        _ => Err(format!("{s:?}: a power of two from 1 to 1024")),
    }
}

/// Events the kernel could not deliver, by reason (`metrics::LOST_REASONS`), summed over CPUs.
fn lost_events(ebpf: &mut Ebpf) -> [u64; 3] {
    let mut lost = [0; 3];
    let Some(map) = ebpf.map_mut("LOST") else {
        return lost;
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return lost;
    };
    for (i, n) in lost.iter_mut().enumerate() {
        *n = arr.get(&(i as u32), 0).map_or(0, |v| v.iter().sum());
    }
    lost
}

/// The kernel's run-time figures for our programs (zero unless BPF stats are on).
fn program_stats(ebpf: &Ebpf) -> Vec<ProgramStats> {
    ebpf.programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            (info.run_count() > 0).then(|| ProgramStats {
                name: name.to_string(),
                run_time_ns: info.run_time().as_nanos() as u64,
                run_count: info.run_count(),
            })
        })
        .collect()
}
