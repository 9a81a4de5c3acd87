//! Loading the kernel programs and attaching them with a hook backend (`run` and `check` both
//! do).
use crate::kernel::btf_offsets;
use anyhow::{Context, Result, bail};
use aya::programs::{BtfTracePoint, FExit, KProbe, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use truncwatch_common::Settings;

/// The kernel object, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/truncwatch"));

/// Hook backends: how the send and receive paths are hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The best this kernel offers: tracepoint where it has `sock_send_length`, else fentry,
    /// else kprobe.
    Auto,
    /// `tp_btf` on `sock_send_length`/`sock_recv_length` (Linux 6.3+).
    Tracepoint,
    /// fexit on `tcp_sendmsg`, `unix_stream_sendmsg` and `sock_recvmsg` (BTF trampolines,
    /// Linux 5.5+; the programs also need `bpf_task_pt_regs`, 5.15+).
    Fentry,
    /// kprobes where TCP sends begin (no return probes on them), kprobe and return probe on
    /// Unix sends, classic tracepoints on the TCP state paths; per-socket state in a hash map.
    Kprobe,
}

/// How one program attaches: to what kind of hook, and where.
#[derive(Clone, Copy, Debug)]
enum Hook {
    Fexit(&'static str),
    TpBtf(&'static str),
    Kprobe(&'static str),
    Kretprobe(&'static str),
    /// A classic tracepoint: category, name.
    Tracepoint(&'static str, &'static str),
}

/// (program in the object, where it attaches).
type Program = (&'static str, Hook);

/// The TCP state programs of the backends that keep state in socket storage.
const STATE_PROGRAMS: [Program; 2] = [
    ("inet_sock_set_state", Hook::TpBtf("inet_sock_set_state")),
    ("tcp_receive_reset", Hook::TpBtf("tcp_receive_reset")),
];

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
        }
    }

    /// The programs this backend attaches; `sendpage`: the kernel has the sendpage path
    /// (sendfile and splice to a socket, before 6.5).
    fn programs_for(self, sendpage: bool) -> Vec<Program> {
        let mut p = match self {
            Backend::Auto | Backend::Tracepoint => vec![
                ("sock_send_length", Hook::TpBtf("sock_send_length")),
                ("sock_recv_length", Hook::TpBtf("sock_recv_length")),
            ],
            Backend::Fentry => vec![
                ("fexit_tcp_sendmsg", Hook::Fexit("tcp_sendmsg")),
                (
                    "fexit_unix_stream_sendmsg",
                    Hook::Fexit("unix_stream_sendmsg"),
                ),
                ("fexit_sock_recvmsg", Hook::Fexit("sock_recvmsg")),
            ],
            Backend::Kprobe => vec![
                ("kprobe_tcp_sendmsg", Hook::Kprobe("tcp_sendmsg")),
                (
                    "kprobe_unix_stream_send",
                    Hook::Kprobe("unix_stream_sendmsg"),
                ),
                (
                    "kretprobe_unix_stream_send",
                    Hook::Kretprobe("unix_stream_sendmsg"),
                ),
                ("kprobe_tcp_cleanup_rbuf", Hook::Kprobe("tcp_cleanup_rbuf")),
                (
                    "kprobe_unix_stream_recvmsg",
                    Hook::Kprobe("unix_stream_recvmsg"),
                ),
                (
                    "kretprobe_unix_stream_recvmsg",
                    Hook::Kretprobe("unix_stream_recvmsg"),
                ),
                ("kprobe_unix_shutdown", Hook::Kprobe("unix_shutdown")),
                ("kprobe_unix_release", Hook::Kprobe("unix_release")),
                (
                    "tp_inet_sock_set_state",
                    Hook::Tracepoint("sock", "inet_sock_set_state"),
                ),
                (
                    "tp_tcp_receive_reset",
                    Hook::Tracepoint("tcp", "tcp_receive_reset"),
                ),
            ],
        };
        if sendpage {
            match self {
                Backend::Fentry => p.extend([
                    ("fexit_tcp_sendpage", Hook::Fexit("tcp_sendpage")),
                    (
                        "fexit_unix_stream_sendpage",
                        Hook::Fexit("unix_stream_sendpage"),
                    ),
                ]),
                Backend::Kprobe => p.extend([
                    ("kprobe_tcp_sendpage", Hook::Kprobe("tcp_sendpage")),
                    (
                        "kprobe_unix_stream_send",
                        Hook::Kprobe("unix_stream_sendpage"),
                    ),
                    (
                        "kretprobe_unix_stream_send",
                        Hook::Kretprobe("unix_stream_sendpage"),
                    ),
                ]),
                _ => {}
            }
        }
        if self != Backend::Kprobe {
            p.extend(STATE_PROGRAMS);
        }
        p
    }

    /// Hooks attached with this backend.
    pub fn programs(self, sendpage: bool) -> usize {
        self.programs_for(sendpage).len()
    }

    /// What this backend needs, for an error that says why it could not attach.
    fn needs(self) -> &'static str {
        match self {
            Backend::Auto | Backend::Tracepoint => {
                "the tracepoint backend needs Linux 6.3+ (sock_send_length, sock_recv_length)"
            }
            Backend::Fentry => {
                "the fentry backend needs BPF trampolines (Linux 5.5+, ftrace function hooks allowed)"
            }
            Backend::Kprobe => "the kprobe backend needs kprobes (CONFIG_KPROBES) and Linux 5.15+",
        }
    }
}

/// Load the kernel programs and attach them with `backend` (`Auto`: the best this kernel
/// has); they stay attached for as long as the returned `Ebpf` lives. Returns the backend
/// used. Also used by `truncwatch check`.
pub fn attach(
    ring_buffer_mib: u32,
    settings: Settings,
    backend: Backend,
) -> Result<(Ebpf, btf_offsets::KernelLayout, Backend)> {
    if OBJECT.is_empty() {
        bail!(
            "this binary was built without its eBPF object (AYA_BUILD_SKIP); build it with `cargo xtask build`"
        );
    }
    // Our offsets come from a light BTF reader; aya then parses all of the kernel's BTF to
    // load the programs (its parse sets the agent's peak memory). Freed memory goes back to
    // the OS after each, so the steady state is a fraction of the start-up peak.
    let layout = btf_offsets::load()?;
    release_freed_memory();
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;
    let candidates: &[Backend] = match backend {
        Backend::Auto if layout.socket_tracepoints => &[Backend::Tracepoint],
        Backend::Auto => &[Backend::Fentry, Backend::Kprobe],
        Backend::Tracepoint => &[Backend::Tracepoint],
        Backend::Fentry => &[Backend::Fentry],
        Backend::Kprobe => &[Backend::Kprobe],
    };
    let mut errors = Vec::new();
    for &b in candidates {
        match load_and_attach(&btf, &layout, ring_buffer_mib, settings, b) {
            Ok(ebpf) => {
                drop(btf);
                release_freed_memory();
                return Ok((ebpf, layout, b));
            }
            Err(e) => {
                let mut error = format!("{} backend: {e:#}", b.name());
                // kprobes are perf events: refused without CAP_SYS_ADMIN at Debian's default.
                if b == Backend::Kprobe
                    && error.contains("Permission denied")
                    && let Some(hint) = crate::kernel::uprobe_events::perf_paranoid_hint()
                {
                    error = format!("{error} ({hint})");
                }
                errors.push(error);
            }
        }
    }
    bail!("no backend could attach. {}", errors.join(". "))
}

/// Load the object and attach `backend`'s programs.
fn load_and_attach(
    btf: &Btf,
    layout: &btf_offsets::KernelLayout,
    ring_buffer_mib: u32,
    settings: Settings,
    backend: Backend,
) -> Result<Ebpf> {
    // One piece buffer per CPU that may ever run (CPU ids index it).
    let cpus =
        aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))? as u32;
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(btf))
        .override_global("OFFSETS", &layout.offsets, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", ring_buffer_mib << 20)
        .map_max_entries("PIECES", cpus);
    // The kprobe backend's maps are preallocated: one entry each when another backend runs.
    if backend != Backend::Kprobe {
        for map in ["PROBE_SOCKS", "PROBE_SENDING", "PROBE_READING"] {
            loader.map_max_entries(map, 1);
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading the eBPF object: truncwatch must run as root (try sudo)")?;
    // SAFETY: no preconditions.
    let why = if unsafe { libc::geteuid() } == 0 {
        format!(
            "{}; `truncwatch check` says what this kernel has",
            backend.needs()
        )
    } else {
        "needs root, or CAP_BPF + CAP_PERFMON".to_string()
    };
    for (name, hook) in backend.programs_for(layout.sendpage) {
        let prog = ebpf
            .program_mut(name)
            .context("program missing from object")?;
        let loaded = |e: aya::programs::ProgramError| {
            anyhow::Error::new(e).context(format!("loading program {name}: {why}"))
        };
        let attached = |e: aya::programs::ProgramError, what: &str| {
            anyhow::Error::new(e).context(format!("attaching to {what}: {why}"))
        };
        match hook {
            Hook::Fexit(f) => {
                let prog: &mut FExit = prog.try_into()?;
                prog.load(f, btf).map_err(loaded)?;
                prog.attach()
                    .map_err(|e| attached(e, &format!("function {f}")))?;
            }
            Hook::TpBtf(tp) => {
                let prog: &mut BtfTracePoint = prog.try_into()?;
                prog.load(tp, btf).map_err(loaded)?;
                prog.attach()
                    .map_err(|e| attached(e, &format!("tracepoint {tp}")))?;
            }
            // One program may attach to several functions (the sendpage twins): load it once.
            Hook::Kprobe(f) | Hook::Kretprobe(f) => {
                let prog: &mut KProbe = prog.try_into()?;
                if prog.fd().is_err() {
                    prog.load().map_err(loaded)?;
                }
                prog.attach(f, 0)
                    .map_err(|e| attached(e, &format!("function {f}")))?;
            }
            Hook::Tracepoint(category, tp) => {
                let prog: &mut TracePoint = prog.try_into()?;
                prog.load().map_err(loaded)?;
                prog.attach(category, tp)
                    .map_err(|e| attached(e, &format!("tracepoint {category}:{tp}")))?;
            }
        }
    }
    Ok(ebpf)
}

/// Give memory freed by the start-up work back to the OS (glibc keeps it otherwise).
pub fn release_freed_memory() {
    // SAFETY: no preconditions; it only returns free heap pages.
    unsafe { libc::malloc_trim(0) };
}

/// `--max-head-bytes` by default: past the 4–8 KiB response heads of proxied applications.
pub const DEFAULT_MAX_HEAD: u32 = 16 << 10;
