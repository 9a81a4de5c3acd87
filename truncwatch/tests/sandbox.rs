//! The sandboxes in deploy/ hold the agent: it is traced (strace) while it starts with the
//! systemd unit's capabilities, runs its canary, serves a scrape, judges a short write and
//! stops; every system call it made must pass the unit's `SystemCallFilter=` (expanded by
//! systemd-analyze), and none may be one a container runtime's default seccomp profile refuses
//! without `CAP_SYS_ADMIN` (the least-privilege DaemonSet runs under `RuntimeDefault`). Real
//! agent, real kernel; needs root (see `support::kernel_or_skip`) and strace (Debian package
//! `strace`); the unit's filter is checked where systemd-analyze runs (package `systemd`).
#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use support::{Agent, BIN, SLOW, Server, WAIT, fetch, http_get};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/truncwatch.service"
);

/// Calls the runtimes' default profiles (Docker's, containerd's, CRI-O's) refuse to a
/// container without `CAP_SYS_ADMIN` or `CAP_SYS_PTRACE`, or always.
const RUNTIME_DEFAULT_REFUSES: &[&str] = &[
    "mount",
    "umount2",
    "unshare",
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "userfaultfd",
    "kexec_load",
    "init_module",
    "finit_module",
];

kernel_test!(
/// Every call the agent makes passes the unit's filter and a runtime's default profile.
the_agent_stays_inside_its_syscall_filters {
    let t = "the_agent_stays_inside_its_syscall_filters";
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have("strace") {
        support::skip_or_fail(t, "strace not installed (cargo xtask test installs it)");
        return;
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let trace = std::env::temp_dir().join(format!("truncwatch-sandbox-{}.strace", std::process::id()));
    let caps = unit_caps(&unit);
    let mut launcher = Command::new("setpriv");
    launcher
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .args(["strace", "-f", "-qq", "-o"])
        .arg(&trace)
        .arg(BIN);
    let agent = Agent::start_via(launcher, &["--metrics-addr", "127.0.0.1:0", "--canary-interval", "1h"]);
    assert!(agent.wait_log("canary passed", WAIT).is_some(), "{:?}", agent.log.lock().unwrap());
    assert_eq!(http_get(&agent.metrics_addr(), "/metrics").0, 200);
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    fetch(&srv.endpoint, SLOW);
    let v = agent.wait_for_server(&srv, 1, WAIT);
    assert_eq!(v[0]["verdict"], "short_write", "{v:?}");
    stop_traced(agent);
    let used = syscalls(&std::fs::read_to_string(&trace).unwrap());
    let _ = std::fs::remove_file(&trace);
    assert!(used.contains("bpf") && used.contains("accept4"), "the trace is the agent's: {used:?}");
    let risky: Vec<_> = used.iter().filter(|s| RUNTIME_DEFAULT_REFUSES.contains(&s.as_str())).collect();
    assert!(risky.is_empty(), "calls RuntimeDefault refuses: {risky:?}");
    // As in deploy.rs, systemd-analyze is optional: a host without systemd has no unit to hold.
    if !have("systemd-analyze") {
        support::skip(t, "systemd-analyze not installed: the unit's filter is not checked");
        return;
    }
    let allowed = unit_filter(&unit);
    let refused: Vec<_> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(refused.is_empty(), "calls the unit's SystemCallFilter= refuses: {refused:?} (made: {used:?})");
    eprintln!("{} system calls made, all allowed: {used:?}", used.len());
});

/// Stop the agent strace runs (SIGINT to it, not to strace, which would let it go), then
/// strace, which ends with it.
fn stop_traced(agent: Agent) {
    let tracer = agent.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    let pid: i32 = children
        .split_whitespace()
        .next()
        .expect("strace's child")
        .parse()
        .unwrap();
    // SAFETY: no memory is involved.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = std::time::Instant::now() + WAIT;
    let ended = || {
        std::fs::read_to_string(format!("/proc/{tracer}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    while !ended() {
        assert!(
            std::time::Instant::now() < deadline,
            "the traced agent did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    agent.stop();
}

/// `CapabilityBoundingSet=CAP_BPF CAP_PERFMON` as setpriv's `+bpf,+perfmon`.
fn unit_caps(unit: &str) -> String {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The names of the system calls in strace's `-f` output (`PID name(...`, `PID <... name
/// resumed>`; signals and exits are not calls).
fn syscalls(trace: &str) -> BTreeSet<String> {
    let name = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    trace
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(' ')?.1.trim_start();
            let n = match rest.strip_prefix("<... ") {
                Some(r) => name(r),
                None if rest.contains('(') => name(rest),
                None => return None,
            };
            (!n.is_empty()).then_some(n)
        })
        .collect()
}

/// The calls the unit's `SystemCallFilter=` lines admit, in order: the first is the allow
/// list, each later `~` line takes calls out of it, each later plain line adds them back.
fn unit_filter(unit: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for line in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        match line.strip_prefix('~') {
            Some(deny) => {
                for s in expand(deny) {
                    allowed.remove(&s);
                }
            }
            None => allowed.extend(expand(line)),
        }
    }
    allowed
}

/// Names and `@groups` (expanded by systemd-analyze, nested groups too) as call names.
fn expand(items: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for item in items.split_whitespace() {
        if !item.starts_with('@') {
            out.insert(item.to_string());
            continue;
        }
        let o = Command::new("systemd-analyze")
            .args(["syscall-filter", item])
            .output()
            .unwrap();
        assert!(o.status.success(), "systemd-analyze syscall-filter {item}");
        let text = String::from_utf8(o.stdout).unwrap();
        let members: Vec<&str> = text
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        out.extend(expand(&members.join(" ")));
    }
    out
}
