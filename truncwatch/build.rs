//! Builds the kernel programs (`truncwatch-ebpf`) and leaves the object in OUT_DIR.
//!
//! eBPF needs `-Z build-std=core`, so a toolchain with the core library's source: a rustup
//! nightly with `rust-src` where there is one, otherwise Debian's `rustc-web` linked as the
//! rustup toolchain `debian-web` (`cargo xtask` installs and links it). Override with
//! TRUNCWATCH_EBPF_TOOLCHAIN. `AYA_BUILD_SKIP=1` skips the build (for `cargo check`, clippy
//! and unit tests on machines without bpf-linker); the agent then refuses to run.
use std::{env, fs, path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=TRUNCWATCH_EBPF_TOOLCHAIN");
    // The programs are built from truncwatch-ebpf (aya-build watches it) and the shared types:
    // a change to those alone must rebuild the object too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../truncwatch-common/src")
    );
    let out = PathBuf::from(env::var("OUT_DIR")?).join("truncwatch");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&out, [])?;
        return Ok(());
    }
    let toolchain = env::var("TRUNCWATCH_EBPF_TOOLCHAIN").unwrap_or_else(|_| pick_toolchain());
    if toolchain != "nightly" {
        // A stable compiler builds core for the BPF target only with the bootstrap escape hatch.
        // SAFETY: build scripts are single-threaded here; aya-build reads it and its child inherits it.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../truncwatch-ebpf");
    let pkg = aya_build::Package {
        name: "truncwatch-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Custom(&toolchain))
}

/// nightly if it has rust-src, else debian-web.
fn pick_toolchain() -> String {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    if let Ok(o) = sysroot {
        let root = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success()
            && PathBuf::from(root)
                .join("lib/rustlib/src/rust/library/core")
                .exists()
        {
            return "nightly".into();
        }
    }
    "debian-web".into()
}
