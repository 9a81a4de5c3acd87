//! Kernel modules for the guest, from the kernel's own package.
//!
//! Debian builds what the guest's real-server suites need as modules: the 9p file system that
//! shares this machine's root with the guest (`9p`, `9pnet_virtio`), `overlay` to make it
//! writable there, and on 6.1 the virtio transport itself; and kernel TLS where the kernel has
//! it (Debian 11's 5.10 does not: `# CONFIG_TLS is not set`). The package holds the `.ko` files
//! (xz-compressed on 6.12) but no `modules.dep` (depmod makes it at install time), and the
//! guest has busybox's `insmod`, which neither resolves dependencies nor decompresses. So here
//! `depmod -b` writes `modules.dep` into the unpacked package, `modprobe --show-depends` gives
//! each module's load order (dependencies first), and the files go into the initramfs
//! uncompressed, with a list the guest loads in that order.
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules the guest loads, by name; their dependencies come along. A module the kernel has
/// built in is skipped.
pub const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// And on a kernel with kernel TLS (`Guest::ktls`): `tls` and AES-GCM's `gcm`, `ctr` and
/// `ghash-generic` (`truncwatch lab ktls`; the AES cipher itself is built in). `gcm` asks for
/// `ctr(aes)` only when a key is set (through `request_module`, which the guest cannot serve),
/// so `modprobe --show-depends gcm` does not name it: 6.1 builds it as a module, 6.12 in.
pub const KTLS_MODULES: &[&str] = &["tls", "ctr", "gcm", "ghash-generic"];

/// Where the initramfs keeps them, and the file that lists them in load order.
pub const DIR: &str = "lib/modules/guest";
pub const LIST: &str = "lib/modules/guest/load-order";

/// The kernel version of the unpacked package at `pkg` (its one `lib/modules/<version>`).
pub fn version(pkg: &Path) -> Result<String> {
    let dir = pkg.join("lib/modules");
    let mut versions = fs::read_dir(&dir)
        .with_context(|| format!("{} (the package's modules)", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    let v = versions
        .next()
        .with_context(|| format!("no kernel version under {}", dir.display()))?;
    if let Some(other) = versions.next() {
        bail!("two kernel versions under {}: {v}, {other}", dir.display());
    }
    Ok(v)
}

/// The module files of `names` and their dependencies, in the order to load them (each
/// module after what it needs, once). Runs depmod first when `modules.dep` is missing.
pub fn load_order(pkg: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let v = version(pkg)?;
    if !pkg
        .join("lib/modules")
        .join(&v)
        .join("modules.dep")
        .exists()
    {
        let ok = Command::new("depmod")
            .arg("-b")
            .arg(pkg)
            .arg(&v)
            .status()
            .context("depmod (Debian package kmod)")?
            .success();
        if !ok {
            bail!("depmod -b {} {v} failed", pkg.display());
        }
    }
    let mut order: Vec<PathBuf> = Vec::new();
    for name in names {
        let out = Command::new("modprobe")
            .arg("--dirname")
            .arg(pkg)
            .args(["--set-version", &v, "--show-depends", name])
            .output()
            .context("modprobe (Debian package kmod)")?;
        if !out.status.success() {
            bail!(
                "modprobe --show-depends {name} for {v}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // `insmod <path> [options]` per module, dependencies first; `builtin <name>` for one
        // the kernel has built in.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
                if !order.contains(&path) {
                    order.push(path);
                }
            }
        }
    }
    Ok(order)
}

/// Copies `files` into `tree/DIR`, decompressed, and writes `tree/LIST`, one file name per
/// line in load order.
pub fn install(tree: &Path, files: &[PathBuf]) -> Result<()> {
    let dir = tree.join(DIR);
    fs::create_dir_all(&dir)?;
    let mut list = String::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("module path {}", file.display()))?;
        let plain = name.trim_end_matches(".xz").trim_end_matches(".zst");
        let text = if name.ends_with(".xz") {
            decompress("xz", "xz-utils", file)?
        } else if name.ends_with(".zst") {
            decompress("zstd", "zstd", file)?
        } else {
            fs::read(file).with_context(|| format!("reading {}", file.display()))?
        };
        fs::write(dir.join(plain), text)?;
        list.push_str(plain);
        list.push('\n');
    }
    fs::write(tree.join(LIST), list)?;
    Ok(())
}

/// `tool -dc file`; `package`: the Debian package that has the tool.
fn decompress(tool: &str, package: &str, file: &Path) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| format!("{tool} (Debian package {package})"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", file.display());
    }
    Ok(out.stdout)
}
