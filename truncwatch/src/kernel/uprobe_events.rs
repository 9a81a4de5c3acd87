//! uprobes with a BPF program attached: through the perf `uprobe` event source
//! ([`attach_perf`]), or made through tracefs's `uprobe_events` ([`attach`]), for an agent
//! without `CAP_SYS_ADMIN`. Both take the file as a path the kernel resolves in the caller's
//! context, so `/proc/self/fd/<n>` hooks exactly the file the agent opened (tls_hooks.rs).
//!
//! aya attaches a uprobe with the perf `uprobe` event source (`perf_event_open` with the PMU
//! type in `/sys/bus/event_source/devices/uprobe/type`), which the kernel opens only to
//! `CAP_SYS_ADMIN` (`perf_uprobe_event_init`; measured on Linux 6.18: `EACCES` with `CAP_BPF` and
//! `CAP_PERFMON`, attached once `CAP_SYS_ADMIN` is added). A uprobe event written into
//! `uprobe_events` is a trace event instead, which `perf_event_open` opens with `CAP_PERFMON`
//! (`perf_allow_tracepoint`): the route bcc and bpftrace take. Writing `uprobe_events` needs
//! only its file permissions (root's, mode 0640), so the least-privilege deployments (uid 0,
//! `CAP_BPF` + `CAP_PERFMON`) hook TLS libraries this way, given a writable tracefs.
//!
//! Events are named `truncwatch/p<pid>_<n>`. Each is removed when its [`UprobeEvent`] drops;
//! those of an agent that was killed are removed at the next start ([`remove_stale`]). The
//! kernel refuses to remove an event that is open (`EBUSY`), so another running agent's events
//! stay.

use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The group (tracefs `events/<group>/`) of every event the agent makes.
const GROUP: &str = "truncwatch";
/// Where tracefs is mounted, in the order tried (the second is the older debugfs location).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// `PERF_EVENT_IOC_ENABLE`, `_IO('$', 0)` (include/uapi/linux/perf_event.h).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_EVENT_IOC_SET_BPF`, `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER1` (72 bytes, `config2` last): the
/// kernel takes a shorter struct from older callers and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// One uprobe with a BPF program attached; detached (and its tracefs event removed) when
/// dropped. The kernel takes some 85 ms to remove one on Linux 6.18 in a 2-core VM (a grace
/// period per uprobe, serialised: measured, docs/reliability.md).
pub struct UprobeEvent {
    /// The perf event the program is attached to: closed first, then the event removed.
    perf: Option<OwnedFd>,
    /// The tracefs event's name and tracefs (None: a perf `uprobe` event, nothing to remove).
    event: Option<(String, PathBuf)>,
}

/// The perf `uprobe` PMU's type, and the `config` bit that makes a return probe
/// (`/sys/bus/event_source/devices/uprobe/{type,format/retprobe}`).
fn uprobe_pmu() -> Result<(u32, u32)> {
    let dir = Path::new("/sys/bus/event_source/devices/uprobe");
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading {}/{f}", dir.display()))
    };
    let kind = read("type")?
        .trim()
        .parse()
        .context("the uprobe PMU type")?;
    // "config:0"
    let bit = read("format/retprobe")?
        .trim()
        .strip_prefix("config:")
        .and_then(|b| b.parse().ok())
        .context("the uprobe PMU's retprobe bit")?;
    Ok((kind, bit))
}

/// Attach the loaded program `prog` at file offset `offset` of `path` (`ret`: a return probe)
/// with the perf `uprobe` event source, for every process. Needs `CAP_SYS_ADMIN` (`EACCES`
/// without it: see [`attach`]).
pub fn attach_perf(prog: BorrowedFd, path: &Path, offset: u64, ret: bool) -> Result<UprobeEvent> {
    let (kind, bit) = uprobe_pmu()?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("a path with a NUL byte")?;
    let attr = PerfEventAttr {
        type_: kind,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: if ret { 1 << bit } else { 0 },
        sample_period: 1,
        wakeup_events: 1,
        config1: c_path.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    let perf = perf_event_open(&attr)?;
    enable_with(&perf, prog)?;
    Ok(UprobeEvent {
        perf: Some(perf),
        event: None,
    })
}

/// `perf_event_open(attr, pid -1, cpu 0)`: every process; the program runs at the event
/// whichever CPU hits it.
fn perf_event_open(attr: &PerfEventAttr) -> Result<OwnedFd> {
    // SAFETY: `attr` (and any path it points to) outlives the call; the kernel reads `size`
    // bytes of it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = perf_paranoid_hint().unwrap_or_else(|| "needs CAP_PERFMON".into());
        return Err(e).context(format!("perf_event_open of the uprobe ({hint})"));
    }
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach `prog` to the perf event and enable it.
fn enable_with(perf: &OwnedFd, prog: BorrowedFd) -> Result<()> {
    for (request, arg, what) in [
        (
            PERF_EVENT_IOC_SET_BPF,
            prog.as_raw_fd(),
            "PERF_EVENT_IOC_SET_BPF",
        ),
        (PERF_EVENT_IOC_ENABLE, 0, "PERF_EVENT_IOC_ENABLE"),
    ] {
        // SAFETY: both requests take an int argument.
        if unsafe { libc::ioctl(perf.as_raw_fd(), request, arg) } < 0 {
            return Err(std::io::Error::last_os_error()).context(what);
        }
    }
    Ok(())
}

/// Make a uprobe event (`ret`: a return probe) at file offset `offset` of `path` and attach
/// the loaded program `prog` (a `BPF_PROG_TYPE_KPROBE` program, as aya loads uprobes) to it.
/// Errors name the step that failed: no tracefs, `uprobe_events` not writable (read-only
/// mount, not root), or `perf_event_open` refused (no `CAP_PERFMON`).
pub fn attach(prog: BorrowedFd, path: &Path, offset: u64, ret: bool) -> Result<UprobeEvent> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tracefs = tracefs()?;
    let name = format!(
        "p{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = path.to_str().context("a path that is not UTF-8")?;
    if path.contains(char::is_whitespace) {
        bail!("uprobe_events cannot name a path with white space: {path}");
    }
    let kind = if ret { 'r' } else { 'p' };
    write_events(
        &tracefs,
        &format!("{kind}:{GROUP}/{name} {path}:{offset:#x}"),
    )?;
    // From here on, dropping `event` removes what was made.
    let id_file = tracefs.join(format!("events/{GROUP}/{name}/id"));
    let mut event = UprobeEvent {
        perf: None,
        event: Some((name, tracefs)),
    };
    let id: u64 = std::fs::read_to_string(&id_file)
        .with_context(|| format!("reading {}", id_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} is not a number", id_file.display()))?;
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        wakeup_events: 1,
        ..Default::default()
    };
    let perf = perf_event_open(&attr)?;
    enable_with(&perf, prog)?;
    event.perf = Some(perf);
    Ok(event)
}

/// Remove the events a killed agent left (the kernel keeps them until removed). Best effort:
/// an event still open by a running agent is refused (`EBUSY`) and stays.
pub fn remove_stale() {
    let Ok(tracefs) = tracefs() else { return };
    let Ok(events) = std::fs::read_to_string(tracefs.join("uprobe_events")) else {
        return;
    };
    for line in events.lines() {
        // "p:truncwatch/p1234_0 /usr/lib/x86_64-linux-gnu/libssl.so.3:0x355a0"
        let Some(event) = line
            .split_whitespace()
            .next()
            .and_then(|e| e.split_once(':'))
        else {
            continue;
        };
        if event.1.starts_with(&format!("{GROUP}/")) {
            let _ = write_events(&tracefs, &format!("-:{}", event.1));
        }
    }
}

impl Drop for UprobeEvent {
    fn drop(&mut self) {
        // The event cannot be removed while open.
        drop(self.perf.take());
        if let Some((name, tracefs)) = &self.event {
            let _ = write_events(tracefs, &format!("-:{GROUP}/{name}"));
        }
    }
}

/// The tracefs mount that has `uprobe_events`.
fn tracefs() -> Result<PathBuf> {
    TRACEFS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("uprobe_events").exists())
        .with_context(|| {
            format!(
                "no tracefs with uprobe_events at {} (mount tracefs there)",
                TRACEFS.join(" or ")
            )
        })
}

/// Append one command to `uprobe_events`. Never truncate: opening it with `O_TRUNC` would
/// remove every uprobe event on the host, other tools' too.
fn write_events(tracefs: &Path, command: &str) -> Result<()> {
    let file = tracefs.join("uprobe_events");
    OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(format!("{command}\n").as_bytes()))
        .with_context(|| format!("writing {:?} to {}", command, file.display()))
}

/// Why perf_event_open may be refused despite CAP_PERFMON: Debian's and Ubuntu's kernels
/// add a `kernel.perf_event_paranoid` level 3 (their default; upstream's is 2) at which every
/// perf event needs CAP_SYS_ADMIN (found in Debian 12's 6.12 kernel under qemu, where the least
/// privilege set could not attach its uprobes). None below 3, or when the file is unreadable.
pub fn perf_paranoid_hint() -> Option<String> {
    let level: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (level >= 3).then(|| {
        format!(
            "kernel.perf_event_paranoid is {level} (Debian's and Ubuntu's default): perf events \
             need CAP_SYS_ADMIN there; grant it, or set the sysctl to 2"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_event_attr_is_a_published_size() {
        // PERF_ATTR_SIZE_VER1 (include/uapi/linux/perf_event.h).
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 72);
    }
}
