//! The guests and what each runs, command by command: the plan that `vm.rs` turns into a
//! guest's init script and that `cargo xtask vm-test --list` prints.
//!
//! Every run (and so CI's `cargo xtask test`), on each guest: `truncwatch check` and the
//! backend `auto` picks; on each backend the kernel offers, `selftest` and the detection runs;
//! the kernel tests (`tests/kernel.rs`) on the backend `auto` picks there (what that kernel runs
//! in production). On one guest and backend only (`Guest::real_on`): the heads tests and the
//! real-server suites (scenario matrix, nginx, hostile input, HTTPS). Everything else (every
//! suite on every backend) on demand, with `TRUNCWATCH_VM_FULL=1`. Why this split and what
//! each part costs: docs/development.md, "The CI time budget".

/// A guest kernel: Debian's package of it, the backends it offers, and what runs on them.
pub struct Guest {
    /// `6.1`, `6.12`, `5.10`: what `TRUNCWATCH_VM_KERNELS` names.
    pub name: &'static str,
    /// `apt-cache search --names-only` pattern of its image package (the newest is taken).
    pub package: &'static str,
    /// The Debian suite that has the package, when it is not this machine's own (bookworm):
    /// `vm-test` adds it to apt's sources first (`setup::apt_suite`).
    pub suite: Option<&'static str>,
    /// Booted by default (`TRUNCWATCH_VM_KERNELS` unset), and so in CI.
    pub default: bool,
    /// The backends it offers, each run in turn.
    pub backends: &'static [&'static str],
    /// The one `auto` must pick there; the kernel tests run on it in every run.
    pub auto: &'static str,
    /// The kernel has kernel TLS (`CONFIG_TLS`): the guest loads its modules and runs the
    /// kTLS detection runs.
    pub ktls: bool,
    /// The kernel parameter that keeps the guest kernel off CMPXCHG16B (`vm.rs`, `boot_guest`,
    /// says why): by name since Linux 5.19, by number (X86_FEATURE_CX16, word 4 bit 13) before.
    pub no_cx16: &'static str,
    /// The backend the heads tests and the real-server suites run on in every run (on one
    /// guest only: they cost about 800 s under TCG), or none.
    pub real_on: Option<&'static str>,
}

/// In the order they run: the kernel with the most backends first, so that its failures show
/// early.
pub const GUESTS: [Guest; 3] = [
    Guest {
        name: "6.12",
        package: "^linux-image-6.12.[0-9]+[+]deb12-amd64$",
        suite: None,
        default: true,
        backends: &["tracepoint", "fentry", "kprobe"],
        auto: "tracepoint",
        ktls: true,
        no_cx16: "clearcpuid=cx16",
        real_on: Some("tracepoint"),
    },
    Guest {
        name: "6.1",
        package: "^linux-image-6.1.0-[0-9]+-amd64$",
        suite: None,
        default: true,
        backends: &["fentry", "kprobe"],
        auto: "fentry",
        ktls: true,
        no_cx16: "clearcpuid=cx16",
        real_on: None,
    },
    // Debian 11's kernel: no `bpf_task_pt_regs` (5.15) and no `sock_send_length` (6.3), so the
    // agent does not run there yet (issue 30); booted on demand (`TRUNCWATCH_VM_KERNELS=5.10`).
    Guest {
        name: "5.10",
        package: "^linux-image-5.10.0-[0-9]+-amd64$",
        suite: Some("bullseye"),
        default: false,
        backends: &["fentry", "kprobe"],
        auto: "fentry",
        ktls: false,
        no_cx16: "clearcpuid=141",
        real_on: None,
    },
];

/// The integration suites the guest runs from its initramfs (`truncwatch/tests/<name>.rs`).
pub const SUITES: [&str; 2] = ["kernel", "heads"];
/// The suites against real servers (Debian's nginx, HAProxy, gunicorn, Node, hyper from
/// crates.io, ...), run in this
/// machine's own root file system (see `vm.rs`).
pub const REAL_SUITES: [&str; 5] = ["scenarios", "nginx", "hostile", "tls", "hyper"];

/// Each guest command gets this long (s), so one that hangs still leaves time for the others.
const CMD_TIMEOUT_S: u32 = 120;
/// An initramfs suite: the kernel tests take 360 to 600 s under TCG here.
const TESTS_TIMEOUT_S: u32 = 900;
/// A real-server suite: the scenario matrix takes 180 s on the host, 390 s in a guest.
const REAL_TIMEOUT_S: u32 = 1200;

/// The detection runs, by run name, the same on every backend: the agent, a lab server and a
/// client, one expected verdict on each side (`vm/detect.sh`, `vm/tls.sh`). Kernel TLS's two
/// (`ktls_runs`) expect what each backend sees.
const DETECTIONS: [(&str, &str); 7] = [
    (
        "unix-short-write",
        "/bin/detect.sh unix-short unix:/tmp/u.sock --mode short-close --body 8388608 -- --rcvbuf 65536 --read-bytes 16384 --read-delay 2ms -- short_write",
    ),
    (
        "unix-complete",
        "/bin/detect.sh unix-full unix:/tmp/uf.sock --mode full --body 4194304 -- --rcvbuf 65536 --read-bytes 16384 --read-delay 1ms -- complete",
    ),
    (
        "tcp-slow-reader",
        "/bin/detect.sh slow tcp:127.0.0.1:8082 --mode full --body 4194304 -- --rcvbuf 65536 --read-bytes 16384 --read-delay 1ms -- complete",
    ),
    (
        "tcp-slow-reader-splice",
        "/bin/detect.sh splice tcp:127.0.0.1:8081 --mode full --body 4194304 --send-with splice -- --rcvbuf 65536 --read-bytes 16384 --read-delay 1ms -- complete",
    ),
    (
        "tcp-splice-cut-short",
        "/bin/detect.sh splice-cut tcp:127.0.0.1:8083 --mode short-close --body 8388608 --send-with splice -- --rcvbuf 65536 --read-bytes 16384 --read-delay 2ms -- short_write",
    ),
    (
        "tls-short-write",
        "/bin/tls.sh tls-short short_write --body 8000000 --cut-at 2000000",
    ),
    (
        "tls-complete",
        "/bin/tls.sh tls-full complete --body 4000000",
    ),
];

/// How a guest command runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Run {
    /// A command line for the guest's busybox shell.
    Sh(String),
    /// An integration suite from the initramfs (`SUITES`).
    Suite(&'static str),
    /// A real-server suite (`REAL_SUITES`), run in this machine's root by its binary's path.
    Real(&'static str),
}

/// One guest command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    /// `check`, `auto-<backend>` or `<backend>-<run>`: its name on the console and in the table.
    pub name: String,
    /// The backend it is forced onto (`TRUNCWATCH_BACKEND`); none for the kernel-wide ones.
    pub backend: Option<String>,
    /// Seconds before the guest's `timeout` kills it.
    pub limit_s: u32,
    /// In every run; otherwise only with `TRUNCWATCH_VM_FULL=1`.
    pub every_run: bool,
    pub run: Run,
}

/// Every command guest `g` may run on `backends` (its own, or fewer), in order, each marked
/// as run every time or on demand.
pub fn commands(g: &Guest, backends: &[String]) -> Vec<Cmd> {
    let cmd = |name: String, backend: Option<&String>, limit_s, every_run, run| Cmd {
        name,
        backend: backend.cloned(),
        limit_s,
        every_run,
        run,
    };
    let sh = |s: &str| Run::Sh(s.to_string());
    let auto = g.auto;
    let mut out = vec![
        cmd(
            "check".into(),
            None,
            CMD_TIMEOUT_S,
            true,
            sh("/bin/truncwatch check"),
        ),
        // `auto` picks the best backend this kernel offers.
        cmd(
            format!("auto-{auto}"),
            None,
            CMD_TIMEOUT_S,
            true,
            sh(&format!(
                "sh -c \"/bin/truncwatch check | grep '^backend: {auto} '\""
            )),
        ),
    ];
    for b in backends {
        let on = |run: &str| format!("{b}-{run}");
        out.push(cmd(
            on("selftest"),
            Some(b),
            CMD_TIMEOUT_S,
            true,
            sh("/bin/truncwatch selftest"),
        ));
        let ktls = if g.ktls {
            ktls_runs(b).to_vec()
        } else {
            vec![]
        };
        for (run, line) in DETECTIONS.iter().copied().chain(ktls) {
            out.push(cmd(on(run), Some(b), CMD_TIMEOUT_S, true, sh(line)));
        }
        let real = g.real_on == Some(b.as_str());
        for suite in SUITES {
            let every_run = if suite == "kernel" { b == auto } else { real };
            out.push(cmd(
                on(&format!("{suite}-tests")),
                Some(b),
                TESTS_TIMEOUT_S,
                every_run,
                Run::Suite(suite),
            ));
        }
        for suite in REAL_SUITES {
            out.push(cmd(
                on(&format!("{suite}-tests")),
                Some(b),
                REAL_TIMEOUT_S,
                real,
                Run::Real(suite),
            ));
        }
    }
    out
}

/// Kernel TLS: plaintext through the socket calls the tracepoints see; the fentry and kprobe
/// backends' `tcp_sendmsg` is bypassed, and kTLS clients are not tracked (`vm/ktls.sh`):
/// pinned as unseen there.
fn ktls_runs(backend: &str) -> [(&'static str, &'static str); 2] {
    if backend == "tracepoint" {
        [
            (
                "ktls-short-write",
                "/bin/ktls.sh ktls-short short_write unseen --body 8000000 --cut-at 2000000",
            ),
            (
                "ktls-complete",
                "/bin/ktls.sh ktls-full complete unseen --body 4000000",
            ),
        ]
    } else {
        [
            (
                "ktls-short-write",
                "/bin/ktls.sh ktls-short unseen unseen --body 8000000 --cut-at 2000000",
            ),
            (
                "ktls-complete",
                "/bin/ktls.sh ktls-full unseen unseen --body 4000000",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(g: &Guest, every_run: bool) -> Vec<String> {
        let backends: Vec<String> = g.backends.iter().map(|b| b.to_string()).collect();
        commands(g, &backends)
            .into_iter()
            .filter(|c| c.every_run == every_run)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn every_run_has_the_kernel_tests_on_auto_and_the_real_suites_on_one_guest() {
        let [g612, g61, g510] = &GUESTS;
        let runs = names(g612, true);
        // check, auto, then per backend selftest and 9 detection runs: 2 + 3 * 10.
        assert_eq!(runs.len(), 2 + 30 + 1 + 6, "{runs:?}");
        for name in [
            "tracepoint-kernel-tests",
            "tracepoint-heads-tests",
            "tracepoint-scenarios-tests",
            "tracepoint-nginx-tests",
            "tracepoint-hostile-tests",
            "tracepoint-tls-tests",
            "tracepoint-hyper-tests",
            "kprobe-ktls-complete",
            "fentry-tcp-splice-cut-short",
        ] {
            assert!(runs.iter().any(|n| n == name), "{name} in {runs:?}");
        }
        let later = names(g612, false);
        assert_eq!(later.len(), 2 * 7, "{later:?}");
        assert!(
            later.iter().all(|n| !n.starts_with("tracepoint-")),
            "{later:?}"
        );
        for g in [g61, g510] {
            let runs = names(g, true);
            // No kernel TLS on 5.10: two detection runs fewer per backend.
            let detections = if g.ktls { 9 } else { 7 };
            assert_eq!(runs.len(), 2 + 2 * (1 + detections) + 1, "{runs:?}");
            assert!(
                runs.contains(&"fentry-kernel-tests".to_string()),
                "{runs:?}"
            );
            assert_eq!(names(g, false).len(), 2 * 7 - 1);
        }
        assert!(!g510.ktls && !names(g510, true).iter().any(|n| n.contains("ktls")));
        // Exactly one guest and backend runs the real-server suites in every run.
        let real: Vec<(&str, &str)> = GUESTS
            .iter()
            .filter_map(|g| Some((g.name, g.real_on?)))
            .collect();
        assert_eq!(real, [("6.12", "tracepoint")]);
        assert!(GUESTS.iter().all(|g| g.backends.contains(&g.auto)));
    }
}
