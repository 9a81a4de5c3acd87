//! `cargo xtask vm-test`: the agent on other kernels, Debian's Linux 6.12, 6.1 and (on
//! demand) 5.10, under qemu.
//!
//! This machine's kernel has no kprobes or fentry and has `sock_send_length`; production kernels
//! like Debian's 6.1 are the other way round, and 6.12 offers all three. KVM is not usable here,
//! so qemu emulates (TCG): slow, but enough to boot into a tiny initramfs (busybox, the agent and
//! its libraries), run agent commands and tests, and power off. Everything lives in
//! `target/vm/`; each guest's serial console is saved to `target/vm/console-<kernel>.log`. A
//! guest passes when it prints `VMTEST END` and every guest command exited 0: `truncwatch
//! check` (and the backend `auto` picks there), then, for each backend the kernel offers
//! (forced by `TRUNCWATCH_BACKEND`), `truncwatch selftest`, detection runs (`vm/detect.sh`,
//! `vm/tls.sh`) and the integration suites. Which suites run where, in every run and on demand,
//! is `vm/plan.rs`; `cargo xtask vm-test --list` prints it without booting anything.
//! A guest whose kernel panics mid-run (an emulation fault: see `boot_and_resume`) is booted
//! once more for the rest. The table of what ran and passed, each result with its time, goes to
//! `docs/results/kernels.md` after each guest (a run of one kernel replaces that kernel's rows
//! and keeps the others'; a suite not run shows its last result, dated).
//!
//! The real-server suites (`plan::REAL_SUITES`: the scenario matrix, nginx, hostile input,
//! HTTPS, hyper) run in this machine's own root file system, mounted into the guest (see `initramfs`).
//!
//! `TRUNCWATCH_VM_FULL=1` runs every suite on every backend (55 minutes for 6.1, 70 for 6.12
//! here). `TRUNCWATCH_VM_KERNELS` (`6.12`, `6.1`, `5.10`), `TRUNCWATCH_VM_BACKENDS`,
//! `TRUNCWATCH_VM_ONLY` (a shell pattern of guest command names) and `TRUNCWATCH_VM_TEST_ARGS`
//! narrow it while working on one.
mod kernel_table;
mod modules;
mod plan;

use crate::{setup, step};
use anyhow::{Context, Result, bail};
use plan::{GUESTS, Guest, REAL_SUITES, SUITES};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// TCG boots to init in about 1.5 s here (4 s with firmware); the timeout leaves room for slow
/// machines and for the agent's start-up under emulation.
const VM_TIMEOUT: Duration = Duration::from_secs(2400);
/// With `TRUNCWATCH_VM_FULL=1` every suite runs on every backend: about 4 000 s for 6.12.
const VM_TIMEOUT_FULL: Duration = Duration::from_secs(7200);

fn full() -> bool {
    std::env::var("TRUNCWATCH_VM_FULL").as_deref() == Ok("1")
}
const END: &str = "VMTEST END";
/// A detection test in the guest: the agent, a lab server and a client, one expected verdict.
const DETECT: &str = include_str!("vm/detect.sh");
/// HTTPS in the guest: one `truncwatch lab tls` exchange, judged.
const TLS: &str = include_str!("vm/tls.sh");
/// Kernel TLS in the guest: one `truncwatch lab ktls` exchange, judged.
const KTLS: &str = include_str!("vm/ktls.sh");
/// What both check of the agent's verdict (sourced).
const JUDGED: &str = include_str!("vm/judged.sh");
const START: &str = "VMTEST START";

/// Kernel options the guest needs built in (`=y`); the few modules it loads are listed in
/// `vm/modules.rs`.
const KERNEL_NEEDS: &[&str] = &[
    "CONFIG_MODULES",             // insmod of those
    "CONFIG_BLK_DEV_INITRD",      // boot from our cpio
    "CONFIG_DEVTMPFS",            // /dev/console and friends
    "CONFIG_SERIAL_8250_CONSOLE", // console=ttyS0
    "CONFIG_BPF_SYSCALL",         // maps, ring buffer, programs
    "CONFIG_BPF_EVENTS",          // BPF on tracepoints and kprobes
    "CONFIG_DEBUG_INFO_BTF",      // /sys/kernel/btf/vmlinux: the agent reads offsets there
    "CONFIG_TRACEPOINTS",         // the agent's main hooks
    "CONFIG_KPROBES",             // what 6.1 has and this host lacks
    "CONFIG_FUNCTION_TRACER",     // fentry/fexit, likewise
    "CONFIG_INET",                // TCP on loopback
    "CONFIG_UNIX",                // Unix sockets (the agent's lab and canary)
];

pub fn run(agent_bin: &str, root: &str) -> Result<()> {
    let dir = Path::new(root).join("target/vm");
    fs::create_dir_all(&dir)?;
    let guests = wanted_guests()?;
    for suite in guests.iter().filter_map(|g| g.suite) {
        setup::apt_suite(suite)?;
    }
    let tests = SUITES
        .iter()
        .map(|suite| kernel_test_binary(suite).map(|bin| (*suite, bin)))
        .collect::<Result<Vec<_>>>()?;
    let real = REAL_SUITES
        .iter()
        .map(|suite| kernel_test_binary(suite).map(|bin| (*suite, bin)))
        .collect::<Result<Vec<_>>>()?;
    let page = Path::new(root).join("docs/results/kernels.md");
    let previous = fs::read_to_string(&page).unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (i, g) in guests.iter().enumerate() {
        let boot = kernel(&dir, g)?;
        let (vmlinuz, config) = kernel_files(&boot)?;
        check_config(&config)?;
        let pkg = boot.parent().context("kernel package directory")?;
        let mut wanted = modules::GUEST_MODULES.to_vec();
        if g.ktls {
            wanted.extend(modules::KTLS_MODULES);
        }
        let mods = modules::load_order(pkg, &wanted)?;
        let initrd = initramfs(agent_bin, &tests, &real, &mods, &dir, g)?;
        let log = dir.join(format!("console-{}.log", g.name));
        let skip = skip_file(&dir, g)?;
        let console = boot_and_resume(&vmlinuz, &initrd, &log, &skip, g.no_cx16)?;
        let release = console
            .iter()
            .find_map(|l| {
                l.strip_prefix(START)?
                    .split_whitespace()
                    .next()?
                    .strip_prefix("kernel=")
            })
            .unwrap_or(g.name)
            .to_string();
        results.push((release, kernel_table::rows(&console)));
        if let Err(e) = report(&console, &log, g) {
            failures.push(format!("{e:#}"));
        }
        // After each guest, so that a run stopped during the next one keeps this one's rows.
        let ran: Vec<&str> = guests[..=i].iter().map(|g| g.name).collect();
        let table = kernel_table::markdown(&results, &date, &previous, &ran);
        fs::write(&page, &table)?;
        step(&format!(
            "wrote {root}/docs/results/kernels.md (Linux {} done)",
            g.name
        ));
    }
    println!("{}", fs::read_to_string(&page)?);
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The guests `TRUNCWATCH_VM_KERNELS` names (space-separated), or the default ones.
fn wanted_guests() -> Result<Vec<&'static Guest>> {
    let guests: Vec<&Guest> = match std::env::var("TRUNCWATCH_VM_KERNELS") {
        Ok(wanted) => GUESTS
            .iter()
            .filter(|g| wanted.split_whitespace().any(|w| w == g.name))
            .collect(),
        Err(_) => GUESTS.iter().filter(|g| g.default).collect(),
    };
    if guests.is_empty() {
        let names: Vec<&str> = GUESTS.iter().map(|g| g.name).collect();
        bail!(
            "TRUNCWATCH_VM_KERNELS names no guest: choose among {}",
            names.join(", ")
        );
    }
    Ok(guests)
}

/// The newest image package of the guest's kernel the package lists offer, downloaded and
/// unpacked into `target/vm/<package>/` unless it is there already. Returns its `boot/`
/// directory.
fn kernel(dir: &Path, g: &Guest) -> Result<PathBuf> {
    let pkg = newest_kernel_package(g.package)?;
    let dest = dir.join(&pkg);
    let boot = dest.join("boot");
    // An unpacking from before the guest loaded modules has none: unpack again.
    if kernel_files(&boot).is_ok() && modules::version(&dest).is_ok() {
        step(&format!(
            "kernel: {pkg} already unpacked in {}, skipping the download",
            dest.display()
        ));
        return Ok(boot);
    }
    // The plain package is the signed kernel itself; should it ever be only a metapackage over
    // the `-unsigned` one, that one holds the vmlinuz.
    for candidate in [pkg.clone(), format!("{pkg}-unsigned")] {
        download_and_unpack(&candidate, dir, &dest)?;
        if kernel_files(&boot).is_ok() {
            return Ok(boot);
        }
        step(&format!(
            "{candidate} holds no boot/vmlinuz-*, trying the next package"
        ));
    }
    bail!("no vmlinuz found in {pkg} or {pkg}-unsigned")
}

fn newest_kernel_package(pattern: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Versions compare by their numbers in order: 6.1.0-57 < 6.1.0-112, 6.12.9 < 6.12.107.
    let numbers = |name: &str| -> Vec<u32> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|n| numbers(n))
        .map(str::to_string)
        .with_context(|| {
            format!("apt-cache knows no package matching {pattern} (run `apt-get update`?)")
        })
}

/// `apt-get download` into `dir`, `dpkg-deb -x` into `dest`. The modules stay: the guest loads
/// a few of them (`vm/modules.rs`).
fn download_and_unpack(pkg: &str, dir: &Path, dest: &Path) -> Result<()> {
    step(&format!(
        "downloading {pkg} (apt-get download, about 70 MB) into {}",
        dir.display()
    ));
    run_ok(
        Command::new("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(dir),
    )?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {pkg}_*.deb"))?;
    step(&format!(
        "unpacking {} into {}",
        deb.display(),
        dest.display()
    ));
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
    fs::remove_file(&deb)?;
    Ok(())
}

/// `boot/vmlinuz-*` and its `boot/config-*`.
fn kernel_files(boot: &Path) -> Result<(PathBuf, PathBuf)> {
    let find = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no {prefix}* in {}", boot.display()))
    };
    Ok((find("vmlinuz-")?, find("config-")?))
}

/// Without modules, whatever the guest needs must be `=y` in the kernel's config.
fn check_config(config: &Path) -> Result<()> {
    let text = fs::read_to_string(config)?;
    let missing: Vec<&str> = KERNEL_NEEDS
        .iter()
        .copied()
        .filter(|opt| !text.lines().any(|l| l == format!("{opt}=y")))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks, as built-in: {} (the guest has no modules)",
            config.display(),
            missing.join(" ")
        );
    }
    step(&format!(
        "kernel config {}: all of {} built in",
        config.display(),
        KERNEL_NEEDS.len()
    ));
    Ok(())
}

/// A fresh `target/vm/initramfs.cpio` (newc, uncompressed: gunzip under TCG costs seconds):
/// busybox-static with its applets, the agent, its shared libraries, the initramfs suites'
/// binaries (`plan::SUITES`), and `/init`.
///
/// The suites against real servers (`plan::REAL_SUITES`) run in this machine's own root file
/// system instead, which the guest mounts read-only over 9p (`-virtfs`) under a writable tmpfs
/// overlay and enters with chroot. So the guest's servers are the very Debian packages the host
/// suites use, at the paths the suites know, and the suites run from where cargo built them.
fn initramfs(
    agent_bin: &str,
    tests: &[(&str, PathBuf)],
    real: &[(&str, PathBuf)],
    mods: &[PathBuf],
    dir: &Path,
    g: &Guest,
) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "dev", "proc", "sys", "tmp", "run"] {
        fs::create_dir_all(tree.join(d))?;
    }
    install_busybox(&tree)?;
    fs::copy(agent_bin, tree.join("bin/truncwatch"))
        .with_context(|| format!("copying {agent_bin}"))?;
    // The kernel test binary starts the agent by the absolute path it was built with.
    let at_build_path = tree.join(agent_bin.trim_start_matches('/'));
    fs::create_dir_all(at_build_path.parent().context("agent path")?)?;
    fs::hard_link(tree.join("bin/truncwatch"), &at_build_path)?;
    let mut libs = shared_libs(agent_bin)?;
    for (suite, bin) in tests {
        fs::copy(bin, tree.join(format!("bin/{suite}-tests")))
            .with_context(|| format!("copying {}", bin.display()))?;
        libs.extend(shared_libs(&bin.to_string_lossy())?);
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        let to = tree.join(lib.strip_prefix("/")?);
        fs::create_dir_all(to.parent().context("library path")?)?;
        // fs::copy follows symlinks (e.g. /lib64/ld-linux-x86-64.so.2): the guest gets the file.
        fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    tls_files(&tree)?;
    modules::install(&tree, mods)?;
    for (path, text) in [
        ("init", init_script(g, real, &skip_file(dir, g)?)?),
        ("bin/detect.sh", DETECT.to_string()),
        ("bin/tls.sh", TLS.to_string()),
        ("bin/ktls.sh", KTLS.to_string()),
        ("bin/judged.sh", JUDGED.to_string()),
    ] {
        fs::write(tree.join(path), text)?;
        fs::set_permissions(tree.join(path), fs::Permissions::from_mode(0o755))?;
    }
    let cpio = dir.join("initramfs.cpio");
    pack(&tree, &cpio)?;
    step(&format!(
        "initramfs: {} ({} MB)",
        cpio.display(),
        fs::metadata(&cpio)?.len() >> 20
    ));
    Ok(cpio)
}

/// For HTTPS in the guest: the host's OpenSSL 3 (`libssl.so.3`, `libcrypto.so.3`) where the
/// agent looks for it, which `truncwatch lab tls` loads, and a certificate made now.
fn tls_files(tree: &Path) -> Result<()> {
    for lib in ["libssl.so.3", "libcrypto.so.3"] {
        let from = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
            .iter()
            .map(|d| Path::new(d).join(lib))
            .find(|p| p.exists())
            .with_context(|| format!("{lib} (Debian package libssl3)"))?;
        let to = tree.join("lib/x86_64-linux-gnu").join(lib);
        fs::create_dir_all(to.parent().context("library path")?)?;
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    let etc = tree.join("etc/truncwatch");
    fs::create_dir_all(&etc)?;
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(etc.join("key.pem"))
        .arg("-out")
        .arg(etc.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .context("openssl req (Debian package openssl)")?
        .success();
    if !ok {
        bail!("openssl req could not make the guest's certificate");
    }
    Ok(())
}

/// busybox at /bin/busybox and a relative symlink per applet (sh, mount, ip, timeout, ...).
fn install_busybox(tree: &Path) -> Result<()> {
    let busybox = "/bin/busybox";
    fs::copy(busybox, tree.join("bin/busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    let out = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    Ok(())
}

/// The kernel integration tests (`truncwatch/tests/kernel.rs`), built, and where cargo put them.
fn kernel_test_binary(suite: &str) -> Result<PathBuf> {
    step(&format!(
        "building the {suite} integration tests (cargo test --no-run) to run them in the guest"
    ));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--release",
            "--package",
            "truncwatch",
            "--test",
            suite,
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the {suite} tests failed");
    }
    // One JSON object per line; the test target's artifact names its executable.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("\"kind\":[\"test\"]") && l.contains(&format!("\"name\":\"{suite}\""))
        })
        .find_map(|l| {
            Some(PathBuf::from(
                l.split("\"executable\":\"").nth(1)?.split('"').next()?,
            ))
        })
        .with_context(|| format!("cargo did not say where the {suite} tests were built"))
}

/// What the dynamic agent binary loads: each `=> /path` of ldd, and the loader itself.
fn shared_libs(bin: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("ldd")?;
    if !out.status.success() {
        // A static binary: nothing to copy.
        return Ok(vec![]);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// The backends to run on guest `g`: `TRUNCWATCH_VM_BACKENDS` (space-separated) picks fewer,
/// e.g. while working on one.
fn backends(g: &Guest) -> Vec<String> {
    match std::env::var("TRUNCWATCH_VM_BACKENDS") {
        Ok(b) => b.split_whitespace().map(str::to_string).collect(),
        Err(_) => g.backends.iter().map(|b| b.to_string()).collect(),
    }
}

/// The commands of guest `g`'s plan that this run runs: those of every run, and with
/// `TRUNCWATCH_VM_FULL=1` those on demand too.
fn this_run(g: &Guest) -> Vec<plan::Cmd> {
    plan::commands(g, &backends(g))
        .into_iter()
        .filter(|c| c.every_run || full())
        .collect()
}

/// The init script's lines that run `this_run(g)`, in order: `vmtest <name> <limit> <command>`
/// (`inroot` for a real-server suite, by the path cargo built it at: `real`).
fn guest_runs(g: &Guest, real: &[(&str, PathBuf)]) -> Result<String> {
    // Extra arguments for the test suites (a filter, `--nocapture`) while working on one.
    let test_args = std::env::var("TRUNCWATCH_VM_TEST_ARGS").unwrap_or_default();
    let mut out = String::new();
    let mut backend = None;
    for c in this_run(g) {
        if c.backend.is_some() && c.backend != backend {
            backend.clone_from(&c.backend);
            out += &format!(
                "export TRUNCWATCH_BACKEND={}\n",
                c.backend.as_deref().unwrap_or("")
            );
        }
        let (name, limit) = (&c.name, c.limit_s);
        out += &match c.run {
            plan::Run::Sh(line) => format!("vmtest {name} {limit} {line}\n"),
            // CI=true: the suites never skip.
            plan::Run::Suite(suite) => format!(
                "vmtest {name} {limit} env CI=true /bin/{suite}-tests --test-threads=1 {test_args}\n"
            ),
            plan::Run::Real(suite) => {
                let (_, bin) = real
                    .iter()
                    .find(|(s, _)| *s == suite)
                    .with_context(|| format!("the {suite} tests were not built"))?;
                // (The matrix's totals are printed by the test itself: shown for the table.)
                let show = if suite == "scenarios" {
                    " --show-output"
                } else {
                    ""
                };
                format!(
                    "inroot {name} {limit} {}{show} {test_args}\n",
                    bin.display()
                )
            }
        };
    }
    Ok(out)
}

/// `cargo xtask vm-test --list`: each guest's commands as this run would run them (with
/// `TRUNCWATCH_VM_KERNELS`, `_BACKENDS`, `_ONLY` and `_FULL` applied), and those it leaves out
/// and why; nothing is built or booted.
pub fn list() -> Result<()> {
    let only = std::env::var("TRUNCWATCH_VM_ONLY").unwrap_or_else(|_| "*".into());
    for g in wanted_guests()? {
        let cmds = plan::commands(g, &backends(g));
        let names: Vec<&str> = cmds.iter().map(|c| c.name.as_str()).collect();
        let matched = only_matches(&only, &names)?;
        println!("Linux {} ({}):", g.name, g.package);
        let mut runs = 0;
        for c in &cmds {
            let why = if !c.every_run && !full() {
                "on demand (TRUNCWATCH_VM_FULL=1)"
            } else if !matched.contains(&c.name) {
                "left out by TRUNCWATCH_VM_ONLY"
            } else {
                runs += 1;
                "runs"
            };
            let what = match &c.run {
                plan::Run::Sh(line) => line.clone(),
                plan::Run::Suite(s) | plan::Run::Real(s) => format!("truncwatch/tests/{s}.rs"),
            };
            println!("  {:<36} {:<34} {what}", c.name, why);
        }
        println!("  {runs} of {} commands run\n", cmds.len());
    }
    Ok(())
}

/// The names that shell pattern `only` matches, as the guest's `case` matches them (the same
/// pattern text in the same construct, run by busybox's shell).
fn only_matches(only: &str, names: &[&str]) -> Result<Vec<String>> {
    let script = format!("for n; do case $n in {only}) echo $n ;; esac; done");
    let out = Command::new("/bin/busybox")
        .args(["sh", "-c", &script, "sh"])
        .args(names)
        .output()
        .context("/bin/busybox (Debian package busybox-static)")?;
    if !out.status.success() {
        bail!(
            "TRUNCWATCH_VM_ONLY={only:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The guest's PID 1. The kernel may find no /dev/console in our cpio, so output is only
/// visible once devtmpfs is mounted and stdio is reopened on it.
fn init_script(g: &Guest, real: &[(&str, PathBuf)], skip: &Path) -> Result<String> {
    let runs = guest_runs(g, real)?;
    let (modules_dir, modules_list) = (modules::DIR, modules::LIST);
    // A shell pattern of the guest commands to run (`*-scenarios-tests`), while working on one.
    let only = std::env::var("TRUNCWATCH_VM_ONLY").unwrap_or_else(|_| "*".into());
    // The guest kernel panics after this guest command, on the first boot only: proves the
    // second boot of `boot_and_resume` (`TRUNCWATCH_VM_PANIC_AFTER=tracepoint-selftest`).
    let panic_after = std::env::var("TRUNCWATCH_VM_PANIC_AFTER").unwrap_or_default();
    let no_cx16 = g.no_cx16;
    let skip = skip.display();
    Ok(format!(
        r#"#!/bin/busybox sh
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The agent needs tracefs for tracepoint ids (it mounts it itself when missing; say if we cannot).
mount -t tracefs nodev /sys/kernel/tracing || echo "VMTEST note: tracefs mount failed"
ip link set lo up
# Modules from the kernel's own package (vm/modules.rs), in load order.
for m in $(cat /{modules_list}); do
    insmod /{modules_dir}/$m || echo "VMTEST note: insmod $m failed"
done
# This machine's root file system, for the real-server suites: read-only over 9p, under a
# tmpfs overlay so that servers can write their logs and temporary files. No tmpfs of its own
# on /tmp: the workspace, and so the suites, may live there (a clean clone in /tmp).
hostroot() {{
    mkdir -p /host /rw /newroot &&
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host &&
    mount -t tmpfs -o size=1536m tmpfs /rw && mkdir -p /rw/upper /rw/work &&
    mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot &&
    mount -t proc proc /newroot/proc &&
    mount -t sysfs sysfs /newroot/sys &&
    mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup &&
    mount -t devtmpfs devtmpfs /newroot/dev &&
    mkdir -p /newroot/dev/pts /newroot/dev/shm &&
    mount -t devpts devpts /newroot/dev/pts &&
    mount -t tmpfs tmpfs /newroot/dev/shm &&
    mount -t tmpfs tmpfs /newroot/run &&
    mount -t tracefs nodev /newroot/sys/kernel/tracing
}}
hostroot || echo "VMTEST note: the host's root file system could not be mounted (the real-server suites will fail)"
echo "{START} kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s cpus_possible=$(cat /sys/devices/system/cpu/possible)"
grep -qw cx16 /proc/cpuinfo && echo "VMTEST note: the guest kernel still sees CMPXCHG16B ({no_cx16} not taken)"
# Run one command with a time limit (s); its output, then its exit status and time (s) on a
# line of its own.
vmtest() {{
    name=$1 limit=$2; shift 2
    case "$name" in {only}) ;; *) return ;; esac
    # A second boot after the guest kernel died (vm.rs, boot_and_resume): the commands that
    # ended in the first boot are listed here.
    grep -qxF -e "$name" "/host{skip}" 2>/dev/null && return
    echo "VMTEST BEGIN $name: $*"
    began=$(cut -d' ' -f1 /proc/uptime)
    timeout $limit "$@"
    status=$?
    echo "VMTEST $name exit=$status time=$(awk -v a=$began '{{printf "%d", $1 - a + 0.5}}' /proc/uptime)s"
    # (After a pause, so that the exit line leaves the serial port first.)
    [ "$name" = "{panic_after}" ] && [ ! -e "/host{skip}" ] && sleep 1 && echo c > /proc/sysrq-trigger
}}
# A real-server suite in the host's root: a clean environment, CI=true (never skipping),
# TRUNCWATCH_IN_GUEST=1 (servers built on the host are used as they are: no cargo runs here).
inroot() {{
    name=$1 limit=$2; shift 2
    vmtest $name $limit chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true TRUNCWATCH_IN_GUEST=1 TRUNCWATCH_BACKEND=$TRUNCWATCH_BACKEND "$@" --test-threads=1
}}
# The guest commands of this run (vm/plan.rs), each backend's forced through TRUNCWATCH_BACKEND.
{runs}echo "{END} uptime=$(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
"#
    ))
}

/// `find . | cpio -o -H newc` in `tree`, every file owned by root.
fn pack(tree: &Path, cpio: &Path) -> Result<()> {
    let list = Command::new("find")
        .arg(".")
        .current_dir(tree)
        .output()?
        .stdout;
    let mut c = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(cpio)?)
        .spawn()
        .context("cpio (Debian package cpio)")?;
    c.stdin.take().context("cpio stdin")?.write_all(&list)?;
    let status = c.wait()?;
    if !status.success() {
        bail!("cpio failed: {status}");
    }
    Ok(())
}

/// Where the host lists, for a second boot of guest `g`, the guest commands that ended in its
/// first (an absolute path: the guest reads it under `/host`, this machine's root over 9p).
fn skip_file(dir: &Path, g: &Guest) -> Result<PathBuf> {
    let dir = fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    Ok(dir.join(format!("ended-{}", g.name)))
}

/// Boots the guest (`boot_guest`). If its kernel panics after init started and before the end,
/// boots it once more to run the command it died in and those after it, and returns both
/// consoles, one after the other, with a `VMTEST note` between them that says where and how it
/// died.
///
/// Why: under qemu's TCG (no KVM here) the guest kernel itself has died twice in some twenty
/// runs, each time of an emulation fault, not of anything the agent's programs did: EFLAGS left
/// holding a data register's bits after `cmpxchg16b` (2026-12-01), and an `int3` taken at a
/// jump label that the kernel had already finished patching, on another vCPU, while the agent
/// attached its tracepoints (2026-12-02, `sock_write_iter`). A kernel that dies twice fails.
fn boot_and_resume(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    skip: &Path,
    no_cx16: &str,
) -> Result<Vec<String>> {
    let second = second_boot_log(log);
    let _ = fs::remove_file(skip);
    let _ = fs::remove_file(&second);
    let mut console = boot_guest(vmlinuz, initrd, log, no_cx16)?;
    let started = console.iter().any(|l| l.starts_with(START));
    let finished = console.iter().any(|l| l.starts_with(END));
    let Some(died) = console.iter().position(|l| l.contains("Kernel panic")) else {
        return Ok(console);
    };
    if !started || finished {
        return Ok(console);
    }
    let ended: Vec<&str> = console[..died]
        .iter()
        .filter_map(|l| kernel_table::exit_line(l).map(|(n, _, _)| n))
        .collect();
    let last = console[..died]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("VMTEST BEGIN ")?.split(':').next());
    let running = match last {
        Some(n) if !ended.contains(&n) => format!("during {n}"),
        Some(n) => format!("after {n}"),
        None => "before its first command".into(),
    };
    // The oops' first line ("Oops: int3", "double fault"), else the panic line.
    // Only among the lines since the last guest command's: test output may say "Oops" too.
    let since = console[..died]
        .iter()
        .rposition(|l| l.starts_with("VMTEST "))
        .map_or(0, |i| i + 1);
    let why = console[since..=died]
        .iter()
        .find(|l| l.contains("Oops") || l.contains("double fault"))
        .unwrap_or(&console[died]);
    // Without the kernel's time stamp (`[ 1110.821496] `).
    let why = why.split_once("] ").map_or(why.as_str(), |(_, r)| r).trim();
    let note = format!(
        "VMTEST note: the guest kernel died {running} ({why}); a second boot runs the commands \
         that had not ended"
    );
    step(&note);
    fs::OpenOptions::new()
        .append(true)
        .open(log)?
        .write_all(format!("{note}\n").as_bytes())?;
    fs::write(skip, ended.join("\n") + "\n")?;
    let more = boot_guest(vmlinuz, initrd, &second, no_cx16);
    let _ = fs::remove_file(skip);
    console.push(note);
    console.extend(more?);
    Ok(console)
}

/// The console of a guest's second boot (`console-6.12.second-boot.log`).
fn second_boot_log(log: &Path) -> PathBuf {
    log.with_extension("second-boot.log")
}

/// Boots the guest, saves its console to `log` line by line, and returns the whole console.
/// Kills qemu after VM_TIMEOUT (VM_TIMEOUT_FULL with `TRUNCWATCH_VM_FULL=1`).
fn boot_guest(vmlinuz: &Path, initrd: &Path, log: &Path, no_cx16: &str) -> Result<Vec<String>> {
    let timeout = if full() { VM_TIMEOUT_FULL } else { VM_TIMEOUT };
    step(&format!(
        "booting {} under qemu (TCG, no KVM here; up to {} s)",
        vmlinuz.display(),
        timeout.as_secs()
    ));
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            // qemu's default CPU (with CMPXCHG16B, which Debian's HAProxy executes
            // unconditionally: without it, SIGILL). The guest kernel is told not to use it
            // (`clearcpuid=cx16` below, `Guest::no_cx16`).
            "-m",
            "3072",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // This machine's root, read-only, for the real-server suites (REAL_SUITES). It spans
        // several file systems (/proc, /sys, ... whose root inodes share numbers): `remap`
        // keeps their inodes apart in the guest, which otherwise takes /proc for /sys.
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        // `clearcpuid=cx16`: the guest kernel never runs CMPXCHG16B (SLUB then emulates it). This
        // qemu's TCG (7.2) once left EFLAGS garbage (a data register's bits) right after one
        // in 6.12's `__kmalloc_node_track_caller`, and the guest died of a double fault while
        // the verifier ran (about one guest run in ten, 2026-12-01). User space still has it.
        // `oops=panic`: an oops that would kill only the process that hit it (these kernels do
        // not panic on oops) panics, and so gets the second boot of `boot_and_resume`.
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 oops=panic quiet {no_cx16}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    // A reader thread, so the main thread can give up at the deadline even if the guest is mute.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = strip_escapes(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']));
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut file = fs::File::create(log)?;
    let mut console = Vec::new();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                progress(&line, started.elapsed());
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                step(&format!(
                    "timeout after {} s: killing qemu",
                    timeout.as_secs()
                ));
                let _ = qemu.kill();
                break;
            }
        }
    }
    let status = qemu.wait()?;
    step(&format!(
        "qemu exited ({status}) after {:.1} s; console in {}",
        started.elapsed().as_secs_f64(),
        log.display()
    ));
    Ok(console)
}

/// SeaBIOS and the kernel clear the screen with terminal escapes, which would land in front of
/// the guest's first line: drop `ESC [ ... <letter>` and two-byte `ESC <char>` sequences.
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
        } else if chars.next() == Some('[') {
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Our own status lines as the guest gets somewhere; the guest's output itself comes at the end.
fn progress(line: &str, t: Duration) {
    let t = t.as_secs_f64();
    if line.starts_with(START) {
        step(&format!("[{t:6.1} s] guest init running: {line}"));
    } else if line.starts_with("VMTEST") {
        step(&format!("[{t:6.1} s] {line}"));
    } else if line.contains("Kernel panic") {
        step(&format!("[{t:6.1} s] guest: {line}"));
    }
}

/// Prints the guest's part of the console (from the start marker on); fails without the end marker.
fn report(console: &[String], log: &Path, g: &Guest) -> Result<()> {
    let Some(start) = console.iter().position(|l| l.starts_with(START)) else {
        bail!(
            "the guest never reached /init (no `{START}`); see {}",
            log.display()
        );
    };
    println!("--- guest output ({}) ---", log.display());
    for line in &console[start..] {
        println!("{line}");
    }
    println!("--- summary ---");
    for line in console[start..]
        .iter()
        .filter(|l| l.starts_with("VMTEST ") && !l.starts_with("VMTEST BEGIN"))
    {
        println!("{line}");
    }
    if !console.iter().any(|l| l.starts_with(END)) {
        bail!(
            "the guest did not finish (no `{END}`): see {} (and {}, if it was booted twice)",
            log.display(),
            second_boot_log(log).display()
        );
    }
    // Every guest command must pass: `check` finds a backend, `selftest` flags its canary.
    let failed: Vec<&String> = console[start..]
        .iter()
        .filter(|l| kernel_table::exit_line(l).is_some_and(|(_, code, _)| code != 0))
        .collect();
    if !failed.is_empty() {
        bail!(
            "on Linux {}: {}",
            g.name,
            failed
                .iter()
                .map(|l| l.trim_start_matches("VMTEST "))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    step(&format!(
        "vm-test: on Linux {}, every guest command passed",
        g.name
    ));
    Ok(())
}

fn run_ok(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("{c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}
