//! `truncwatch check`: what this kernel offers the agent, which hook backend would run, and
//! what each missing feature costs. `probe` looks at the host; `report` (pure) words it.
use crate::kernel::btf_reader::BtfReader;
use crate::kernel::load;
use crate::kernel::tls_hooks::TlsHooks;
use std::fmt::Write as _;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What the host offers, as probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub kernel: String,
    /// Ok, or why the kernel's BTF could not be read.
    pub btf: Result<(), String>,
    /// Tracepoints `tp_btf` programs can attach to, by name (from BTF).
    pub tracepoints: Vec<(&'static str, bool)>,
    /// Kernel functions with BTF (fentry/kprobe targets and BPF helpers), by name.
    pub funcs: Vec<(&'static str, bool)>,
    /// Whether the kernel lets BPF trampolines hook functions (fentry/fexit): Ok, or why not.
    pub ftrace: Result<(), String>,
    /// The perf kprobe event source exists (kprobes compiled in).
    pub kprobes: bool,
    pub bpf_stats: bool,
    pub timer_list: bool,
    /// Loading and attaching the best backend for real: the one that runs, or the error.
    /// With the number of programs it attached.
    pub backend: Result<(load::Backend, usize), String>,
    /// The perf uprobe event source exists (the TLS hooks need it).
    pub uprobes: bool,
    /// The TLS libraries found and hooked for real (then unhooked), with the processes seen
    /// using them; or why the TLS programs could not load.
    pub tls: Result<Vec<crate::kernel::tls_hooks::Target>, String>,
}

/// Tracepoints the tracepoint backend needs, and since when Linux has them.
const TRACEPOINTS: [(&str, &str); 4] = [
    ("sock_send_length", "6.3"),
    ("sock_recv_length", "6.3"),
    ("inet_sock_set_state", "4.16"),
    ("tcp_receive_reset", "4.15"),
];

/// Kernel functions: the helpers the programs use (present = supported), and the send and
/// receive paths other backends would hook.
const FUNCS: [(&str, &str); 6] = [
    ("bpf_ringbuf_reserve", "BPF ring buffer (Linux 5.8+)"),
    ("bpf_sk_storage_get", "socket-local storage (Linux 5.2+)"),
    (
        "bpf_task_pt_regs",
        "a task's syscall registers (Linux 5.15+)",
    ),
    ("tcp_sendmsg", "function tcp_sendmsg (fentry/kprobe target)"),
    ("sock_recvmsg", "function sock_recvmsg (fentry target)"),
    (
        "tcp_cleanup_rbuf",
        "function tcp_cleanup_rbuf (kprobe target)",
    ),
];

/// What running on the kprobe backend costs, against the other two.
const KPROBE_COST: &str = "kprobe backend (no socket tracepoints, no trampolines): TCP send errors (EAGAIN, EPIPE) are not seen; a response is judged when its socket is next seen (next send or end), not at its last send; a Unix send whose return probe was missed makes that stream observer_loss";

pub fn probe() -> Facts {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let reader = std::fs::read(VMLINUX_BTF)
        .map_err(|e| format!("{VMLINUX_BTF}: {e}"))
        .and_then(|b| BtfReader::parse(b).map_err(|e| e.to_string()));
    let (tracepoints, funcs) = match &reader {
        Ok(r) => (
            TRACEPOINTS
                .iter()
                .map(|(n, _)| (*n, r.has_typedef(&format!("btf_trace_{n}"))))
                .collect(),
            FUNCS.iter().map(|(n, _)| (*n, r.has_func(n))).collect(),
        ),
        Err(_) => (
            TRACEPOINTS.iter().map(|(n, _)| (*n, false)).collect(),
            FUNCS.iter().map(|(n, _)| (*n, false)).collect(),
        ),
    };
    let btf = reader.map(drop);
    let _ = mount_tracefs(); // where ftrace's files live; without it we cannot tell
    // BPF trampolines need ftrace's function hooks; a kernel that locks them refuses fentry.
    let ftrace = match std::fs::File::open("/sys/kernel/tracing/available_filter_functions") {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "ftrace function hooks unavailable (available_filter_functions: {e})"
        )),
    };
    let settings = truncwatch_common::Settings {
        max_head_bytes: load::DEFAULT_MAX_HEAD,
        client_side: 1,
        ring_bytes: 1 << 20,
    };
    let mut attached = load::attach(1, settings, load::Backend::Auto);
    // `auto` tries fentry before kprobes: if it fell back, fentry did not attach, whatever
    // ftrace's files say (Debian's arm64 6.1 has them, and its fentry backend fails to attach:
    // seen under qemu-system-aarch64, docs/arm64.md). Say why, from an attach of its own.
    let ftrace = match &attached {
        Ok((_, _, load::Backend::Kprobe)) => match load::attach(1, settings, load::Backend::Fentry)
        {
            Ok(_) => ftrace,
            Err(e) => Err(format!("the fentry backend does not attach: {e:#}")),
        },
        _ => ftrace,
    };
    let tls = match attached.as_mut() {
        Err(_) => Err("no backend could load".to_string()),
        Ok(_) if !TlsHooks::uprobes_exist() => Err("no uprobe event source".to_string()),
        Ok((ebpf, ..)) => TlsHooks::load(ebpf, crate::kernel::tls_hooks::DEFAULT_MAX_LIBRARIES)
            .map(|mut hooks| {
                hooks.scan();
                hooks.libraries()
            })
            .map_err(|e| format!("{e:#}")),
    };
    let backend = attached
        .map(|(_, l, b)| (b, b.programs(l.sendpage)))
        .map_err(|e| format!("{e:#}"));
    Facts {
        kernel,
        btf,
        tracepoints,
        funcs,
        ftrace,
        kprobes: std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
        bpf_stats: std::path::Path::new("/proc/sys/kernel/bpf_stats_enabled").exists(),
        timer_list: std::fs::File::open("/proc/timer_list").is_ok(),
        backend,
        uprobes: TlsHooks::uprobes_exist(),
        tls,
    }
}

/// Mount tracefs if it is not (a fresh machine does not); harmless if it cannot be.
fn mount_tracefs() -> std::io::Result<()> {
    if std::path::Path::new("/sys/kernel/tracing/available_filter_functions").exists() {
        return Ok(());
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?
        .success();
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::other("mount tracefs failed"))
    }
}

/// A process's name (`/proc/<pid>/comm`, escaped: the process chose it), or `?`.
fn comm(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/comm")).map_or("?".into(), |c| {
        let name = c.strip_suffix(b"\n").unwrap_or(&c);
        crate::escape::escape_bytes(name).into_owned()
    })
}

/// The report, and whether a backend can run here.
pub fn report(f: &Facts) -> (String, bool) {
    let mut s = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(s, "truncwatch check: Linux {}\n", f.kernel);
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "BTF (/sys/kernel/btf/vmlinux)",
        f.btf
            .as_ref()
            .map_or_else(|e| format!("no: {e}"), |_| "yes".into())
    );
    for ((name, present), (_, since)) in f.tracepoints.iter().zip(TRACEPOINTS) {
        let _ = writeln!(
            s,
            "  {:<46} {}",
            format!("tracepoint {name} (Linux {since}+)"),
            yes_no(*present)
        );
    }
    for ((_, present), (_, what)) in f.funcs.iter().zip(FUNCS) {
        let _ = writeln!(s, "  {what:<46} {}", yes_no(*present));
    }
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "fentry/fexit (BPF trampolines)",
        f.ftrace
            .as_ref()
            .map_or_else(|e| format!("no: {e}"), |_| "yes".into())
    );
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "kprobes (perf kprobe event source)",
        yes_no(f.kprobes)
    );
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "BPF run-time stats (kernel.bpf_stats_enabled)",
        yes_no(f.bpf_stats)
    );
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "/proc/timer_list (the kernel's HZ)",
        yes_no(f.timer_list)
    );
    let _ = writeln!(
        s,
        "  {:<46} {}",
        "uprobes (perf uprobe event source)",
        yes_no(f.uprobes)
    );
    let _ = writeln!(s);
    let runs = f.backend.is_ok();
    match &f.backend {
        Ok((b, n)) => {
            let _ = writeln!(
                s,
                "backend: {} ({n} hooks loaded and attached, then detached)",
                b.name()
            );
        }
        Err(e) => {
            let _ = writeln!(s, "backend: none. {e}");
        }
    }
    match &f.tls {
        Ok(libs) if libs.is_empty() => {
            let _ = writeln!(
                s,
                "HTTPS: no TLS library found (OpenSSL 3's API: libssl.so.3, or an executable exporting SSL_write and SSL_read)"
            );
        }
        Ok(libs) => {
            let _ = writeln!(
                s,
                "HTTPS: TLS libraries (OpenSSL 3's API; processes seen using each):"
            );
            for t in libs {
                let status = t.hooked.as_ref().map_or_else(
                    |e| format!("not hooked: {}", crate::escape::escape(e)),
                    |_| "hooked".into(),
                );
                let users = if t.pids.is_empty() {
                    "none yet".to_string()
                } else {
                    t.pids
                        .iter()
                        .map(|p| format!("{} ({p})", comm(*p)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let path = crate::escape::escape_path(&t.path);
                let _ = writeln!(s, "  {path} {status}; used by: {users}");
            }
            let _ = writeln!(
                s,
                "  not seen: TLS linked in without these symbols (Go's crypto/tls, rustls, BoringSSL in Envoy), stripped executables, GnuTLS, NSS"
            );
        }
        Err(e) => {
            let _ = writeln!(s, "HTTPS: not covered: {e}");
        }
    }
    // What each missing feature costs, when the rest is there.
    let kprobe = matches!(f.backend, Ok((load::Backend::Kprobe, _)));
    let costs = [
        (kprobe, KPROBE_COST),
        (
            f.tracepoints.get(3).is_some_and(|t| !t.1),
            "no tcp_receive_reset: a reset from the peer cannot be told from this host's, so reset_discard is not reported",
        ),
        (
            !f.uprobes,
            "no uprobes (CONFIG_UPROBE_EVENTS): HTTPS is not judged, only plain HTTP",
        ),
        (
            !f.bpf_stats,
            "no BPF stats: truncwatch_bpf_program_* metrics stay empty",
        ),
        (
            !f.timer_list,
            "no /proc/timer_list (needs uid 0): rwnd_limited_ms and sndbuf_limited_ms are null",
        ),
    ];
    for (missing, cost) in costs {
        if missing {
            let _ = writeln!(s, "  cost: {cost}");
        }
    }
    (s, runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_there() -> Facts {
        Facts {
            kernel: "6.18.0".into(),
            btf: Ok(()),
            tracepoints: TRACEPOINTS.iter().map(|(n, _)| (*n, true)).collect(),
            funcs: FUNCS.iter().map(|(n, _)| (*n, true)).collect(),
            ftrace: Err("permission denied".into()),
            kprobes: false,
            bpf_stats: true,
            timer_list: true,
            backend: Ok((load::Backend::Tracepoint, 4)),
            uprobes: true,
            tls: Ok(vec![crate::kernel::tls_hooks::Target {
                path: "/lib/x86_64-linux-gnu/libssl.so.3".into(),
                functions: vec!["SSL_write", "SSL_read"],
                via: vec!["SSL_write".into(), "SSL_read".into()],
                hooked: Ok(()),
                pids: vec![],
            }]),
        }
    }

    #[test]
    fn a_kernel_with_the_tracepoints_runs_the_tracepoint_backend() {
        let (text, runs) = report(&all_there());
        assert!(runs);
        assert!(text.contains("backend: tracepoint (4 hooks"), "{text}");
        assert!(
            text.contains("fentry/fexit (BPF trampolines)")
                && text.contains("no: permission denied"),
            "{text}"
        );
        assert!(!text.contains("cost:"), "{text}");
        assert!(
            text.contains("/lib/x86_64-linux-gnu/libssl.so.3 hooked; used by: none yet"),
            "{text}"
        );
    }

    #[test]
    fn an_older_kernel_says_what_is_missing_and_what_would_suit_it() {
        let mut f = all_there();
        f.kernel = "6.1.0-28-amd64".into();
        f.tracepoints[0].1 = false;
        f.tracepoints[1].1 = false;
        f.ftrace = Ok(());
        f.kprobes = true;
        f.timer_list = false;
        f.backend = Ok((load::Backend::Fentry, 7));
        let (text, runs) = report(&f);
        assert!(runs);
        assert!(
            text.contains("tracepoint sock_send_length (Linux 6.3+)       no")
                && text.contains("backend: fentry"),
            "{text}"
        );
        assert!(text.contains("cost: no /proc/timer_list"), "{text}");
        assert!(!text.contains("kprobe backend ("), "{text}");
        // No trampolines either, but kprobes: the kprobe backend runs, and says what it costs.
        f.ftrace = Err("locked".into());
        f.backend = Ok((load::Backend::Kprobe, 8));
        let (text, runs) = report(&f);
        assert!(runs);
        assert!(
            text.contains("backend: kprobe (8 hooks") && text.contains("cost: kprobe backend ("),
            "{text}"
        );
        // Nothing runs: the reason is the error.
        f.backend = Err("no backend could attach. fentry backend: ... kprobe backend: ...".into());
        let (text, runs) = report(&f);
        assert!(!runs);
        assert!(
            text.contains("backend: none. no backend could attach"),
            "{text}"
        );
    }
}
