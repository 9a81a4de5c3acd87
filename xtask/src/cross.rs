//! `cargo xtask cross`: the agent with its eBPF programs for arm64 (aarch64), cross-built on an
//! x86_64 Debian 12 machine from Debian's packages alone (`setup::cross_aarch64` says which).
//!
//! The agent is compiled by Debian's rustc (1.96, the rustup toolchain `debian-web`) against
//! its arm64 standard library and linked by `aarch64-linux-gnu-gcc`. The eBPF object is built
//! by the agent's build.rs as in a host build; aya-build hands it the agent's target
//! architecture (`bpf_target_arch`), which picks arm64's syscall ABI
//! (truncwatch-common/src/arch/aarch64.rs) and aya's arm64 argument registers for the kprobe
//! and uprobe programs: the object is arm64's own, embedded in the arm64 binary.
use crate::{setup, step, workspace_root};
use anyhow::{Context, Result, bail};
use std::process::Command;

pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// ELF `e_machine` of aarch64 (`EM_AARCH64`, elf.h).
const EM_AARCH64: u16 = 183;

/// Installs what is missing, builds, checks that the result is an aarch64 executable that
/// starts (under qemu-user), and returns its path.
pub fn build() -> Result<String> {
    setup::ensure(setup::Need::Build)?;
    setup::cross_aarch64()?;
    let root = workspace_root()?;
    // A target directory of its own: the cross build then neither waits for nor holds the host
    // build's lock, and Debian's 1.96 artifacts stay apart from rustup's.
    let target_dir = format!("{root}/target/cross");
    step(&format!(
        "cross-building truncwatch and its eBPF object for {TARGET} with Debian's rustc \
         (rustup run debian-web cargo build --release --target {TARGET}, into {target_dir}; \
         about 3 minutes the first time)"
    ));
    let status = Command::new("rustup")
        .args(["run", "debian-web", "cargo", "build", "--release"])
        .args(["--package", "truncwatch", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .status()?;
    if !status.success() {
        bail!("the cross build failed");
    }
    let bin = format!("{target_dir}/{TARGET}/release/truncwatch");
    check_elf(&bin)?;
    smoke(&bin)?;
    Ok(bin)
}

/// The file is a 64-bit little-endian ELF for aarch64 (what `file` would say).
fn check_elf(bin: &str) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(bin)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading {bin}"))?;
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 || machine != EM_AARCH64 {
        bail!("{bin} is not a 64-bit little-endian aarch64 ELF (e_machine {machine})");
    }
    Ok(())
}

/// `truncwatch --version` under qemu's user-mode emulator: the binary loads, links against
/// arm64's glibc and runs. (Nothing of eBPF: qemu-user has no `bpf()` system call.)
fn smoke(bin: &str) -> Result<()> {
    let out = Command::new("qemu-aarch64-static")
        .args(["-L", "/usr/aarch64-linux-gnu", bin, "--version"])
        .output()
        .context("running qemu-aarch64-static")?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with("truncwatch ") {
        bail!(
            "{bin} --version under qemu-aarch64-static: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    step(&format!(
        "built an aarch64 ELF executable; under qemu-aarch64-static it says: {}",
        version.trim()
    ));
    Ok(())
}
