//! `truncwatch run`: load and attach the kernel programs, read events, print verdicts.
use crate::btf_offsets::{self, SockLayout};
use crate::correlator::{Correlator, Verdict};
use crate::events::{self, Event};
use crate::output::{self, Clock, Format};
use anyhow::{Context, Result, bail};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

/// The kernel object, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/truncwatch"));

/// How often pending events are read when the kernel has not woken us (it wakes us only once
/// a batch of events is waiting).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The tracepoint backend: program name = tracepoint name.
const PROGRAMS: [&str; 4] = ["sock_send_length", "sock_recv_length", "inet_sock_set_state", "tcp_receive_reset"];

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
    /// Print every decoded kernel event to stderr (for debugging the agent).
    #[arg(long, hide = true)]
    pub trace_events: bool,
}

pub async fn run(args: RunArgs) -> Result<()> {
    if OBJECT.is_empty() {
        bail!("this binary was built without its eBPF object (AYA_BUILD_SKIP); build it with `cargo xtask build`");
    }
    // Our offsets come from a light BTF reader; aya then parses all of the kernel's BTF to
    // load the programs (its parse sets the agent's peak memory). Freed memory goes back to
    // the OS after each, so the steady state is a fraction of the start-up peak.
    let layout = btf_offsets::load()?;
    release_freed_memory();
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("OFFSETS", &layout.offsets, true)
        .map_max_entries("EVENTS", args.ring_buffer_mib << 20)
        .load(OBJECT)
        .context("loading the eBPF object: truncwatch must run as root (try sudo)")?;
    for name in PROGRAMS {
        let prog: &mut BtfTracePoint = ebpf.program_mut(name).context("program missing from object")?.try_into()?;
        prog.load(name, &btf).with_context(|| format!("loading program {name} (needs kernel 6.3+ for sock_*_length)"))?;
        prog.attach().with_context(|| format!("attaching to tracepoint {name}"))?;
    }
    drop(btf);
    release_freed_memory();
    let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS map")?)?;
    // SAFETY: the ring buffer owns its fd and outlives the registration (both live in `ring`).
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reader = Reader {
        correlator: Correlator::new(args.max_connections, crate::kernel_hz::detect()).problems_only(!args.all),
        layout: layout.sock,
        own_pid: std::process::id(),
        probe_sk: None,
        probe_done: false,
        verdicts: Vec::new(),
        decode_errors: 0,
        trace: args.trace_events,
    };
    let clock = Clock::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());

    probe_events_flow(&mut ring, &mut reader).await?;
    eprintln!("truncwatch: ready (tracepoint backend: {} programs attached)", PROGRAMS.len());

    // The kernel wakes us only when a batch is waiting; this tick picks up the rest.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
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
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Detach first so nothing new arrives, then flush what is pending.
    let lost = lost_events(&mut ebpf);
    drop(ebpf);
    reader.drain(ring.get_mut());
    reader.print(&mut out, &args, &clock)?;
    out.flush()?;
    let s = &reader.correlator.stats;
    eprintln!(
        "truncwatch: stopped; connections={} heads={} complete={} short_write={} peer_reset={} desync={} reset_discard={} unframed={} unparsed={} (too long or split {}, invalid {}) chunked_uncertain={} head_only={} head_answers={} evicted={} lost_events={} decode_errors={}",
        s.connections, s.heads, s.judged_complete, s.judged_short_write, s.judged_peer_reset, s.judged_desync,
        s.judged_reset_discard, s.judged_unframed, s.judged_unparsed, s.unparsed, s.invalid, s.chunked_uncertain, s.head_only,
        s.head_answers,
        s.evicted, lost, reader.decode_errors
    );
    Ok(())
}

struct Reader {
    correlator: Correlator,
    layout: SockLayout,
    own_pid: u32,
    /// The socket of our own start-up probe, once its open event arrived.
    probe_sk: Option<u64>,
    probe_done: bool,
    verdicts: Vec<Verdict>,
    decode_errors: u64,
    trace: bool,
}

impl Reader {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            match events::decode(&item, &self.layout) {
                Ok(ev) => self.handle(ev),
                Err(_) => self.decode_errors += 1,
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        if self.trace {
            eprintln!("event: {ev:?}");
        }
        match &ev {
            // The agent's own sockets are never judged; its probe only proves events flow.
            Event::Open { sk, meta, .. } if meta.pid == self.own_pid => {
                self.probe_sk = Some(*sk);
                return;
            }
            Event::UnixEof { peer, .. } if Some(*peer) == self.probe_sk => {
                // Forget the probe's socket: the kernel reuses socket addresses at once, and a
                // later connection at this address is somebody else's.
                self.probe_sk = None;
                self.probe_done = true;
                return;
            }
            _ => {}
        }
        self.correlator.handle(ev, &mut self.verdicts);
    }

    fn print(&mut self, out: &mut impl Write, args: &RunArgs, clock: &Clock) -> Result<()> {
        for v in self.verdicts.drain(..) {
            if args.all || v.kind.is_problem() {
                // (the correlator builds the others only with --all)
                writeln!(out, "{}", output::format(&v, args.format, clock))?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Send a response head over a Unix socket pair of our own and wait until the kernel programs
/// report both its open and its end of stream: proof that programs, offsets and the ring
/// buffer all work before we say "ready".
async fn probe_events_flow(ring: &mut AsyncFd<RingBuf<MapData>>, reader: &mut Reader) -> Result<()> {
    let (mut server, mut client) = std::os::unix::net::UnixStream::pair()?;
    server.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
    drop(server);
    let mut sink = Vec::new();
    client.read_to_end(&mut sink)?;
    let wait = async {
        while !reader.probe_done {
            tokio::time::sleep(DRAIN_EVERY).await;
            reader.drain(ring.get_mut());
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .context("the kernel programs attached, but no events arrived from a test connection within 10 s")?;
    Ok(())
}

/// Give memory freed by the start-up work back to the OS (glibc keeps it otherwise).
fn release_freed_memory() {
    // SAFETY: no preconditions; it only returns free heap pages.
    unsafe { libc::malloc_trim(0) };
}

fn ring_mib(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1024 => Ok(n),
        _ => Err(format!("{s:?}: a power of two from 1 to 1024")),
    }
}

/// Events the kernel could not deliver (ring buffer full), summed over CPUs.
fn lost_events(ebpf: &mut Ebpf) -> u64 {
    let Some(map) = ebpf.map_mut("LOST") else { return 0 };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else { return 0 };
    (0..2u32).filter_map(|i| arr.get(&i, 0).ok()).map(|v| v.iter().sum::<u64>()).sum()
}
