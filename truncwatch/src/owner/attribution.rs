//! Process attribution: pid → cgroup path → container id and runtime → Kubernetes pod uid,
//! namespace, pod and container name, from node-local files only (no API server).
//!
//! Sources of the layouts recognised here:
//! - `/proc/PID/cgroup` (cgroups(7)): `0::/path` on v2, `ID:ctrl[,ctrl]:/path` on v1.
//! - kubelet `pkg/kubelet/cm/cgroup_manager_linux.go`: cgroupfs driver `/kubepods[/<qos>]/pod<uid>`;
//!   systemd driver `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid, - as _>.slice`.
//!   Static pods have a 32-hex uid without dashes.
//! - runc/crun systemd scopes `<prefix>-<id>.scope` (containerd `cri-containerd`, CRI-O `crio`,
//!   Docker `docker`, Podman `libpod`), cgroupfs `<qos dir>/<id>`, `crio-<id>`, `/docker/<id>`, and
//!   the `<slice>:<prefix>:<id>` name containerd leaves when its systemd setting disagrees with kubelet's.
//! - kubelet `pkg/kubelet/kuberuntime/legacy.go`: `/var/log/containers/<pod>_<ns>_<ctr>-<id>.log`
//!   (cut to 255 bytes, so very long names lose the id) and `/var/log/pods/<ns>_<pod>_<uid>/`.
//!
//! The build the process runs and the container's image come from `build_identity` and
//! `container_image`.

use crate::owner::build_identity::{Build, Builds, FileKey};
use crate::owner::container_image::{self, Image};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a pid's cached answer is trusted before its executable is checked again (one
/// `stat(2)`): a pid reused by another process, or a process that exec'd another program, is
/// named right again after this long at most.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// How long a verdict may wait for its process's build id, read on the build-id worker
/// (`build_identity`): it normally answers within milliseconds; past this the verdict goes out
/// without one.
const BUILD_WAIT: Duration = Duration::from_millis(500);

/// `/proc/PID/cgroup` read at most: one line per hierarchy, each path under PATH_MAX.
const MAX_CGROUP_BYTES: u64 = 64 << 10;

/// Who a process is, as far as the node's own files tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// The executable as the process sees it (`/proc/PID/exe`).
    pub exe: Option<String>,
    /// The executable's GNU build-id in hex, or `sha256:<hex>` of its content.
    pub build_id: Option<Arc<str>>,
    /// The container's image reference and digest, from the runtime's state.
    pub image: Image,
}

/// Picks the most telling path in `/proc/PID/cgroup` text. The v2 `0::` line wins unless it is
/// only `/`: hybrid hosts leave the unified tree empty while v1 controllers hold the real path.
/// v1 controllers rank name=systemd, pids, memory, cpu, then any other.
pub fn cgroup_from_proc(contents: &str) -> Option<String> {
    let mut best: Option<((bool, u8), &str)> = None;
    for line in contents.lines() {
        // splitn: the path itself may contain ':' (containerd's `slice:prefix:id` form).
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            continue;
        }
        let has = |c: &str| ctrls.split(',').any(|x| x == c);
        let rank = match () {
            _ if id == "0" && ctrls.is_empty() => 0,
            _ if has("name=systemd") => 1,
            _ if has("pids") => 2,
            _ if has("memory") => 3,
            _ if has("cpu") => 4,
            _ => 5,
        };
        let key = (path == "/", rank);
        if best.is_none_or(|(k, _)| key < k) {
            best = Some((key, path));
        }
    }
    best.map(|(_, p)| p.to_string())
}

/// Pure parse of a cgroup path. The innermost (last) container-looking component wins, so
/// nested layouts (kind nodes: `/docker/<node>/kubepods/...`) name the inner container.
pub fn from_cgroup_path(path: &str) -> Attribution {
    let pieces: Vec<&str> = path.split(['/', ':']).filter(|p| !p.is_empty()).collect();
    let mut a = Attribution {
        cgroup: Some(path.to_string()),
        ..Attribution::default()
    };
    for i in (0..pieces.len()).rev() {
        let prev = i.checked_sub(1).map(|j| pieces[j]);
        if let Some((id, runtime)) = container_piece(pieces[i], prev) {
            (a.container_id, a.runtime) = (id, runtime);
            break;
        }
    }
    // Only under kubepods: elsewhere "pod…" components are not kubelet's.
    if pieces.iter().any(|p| p.starts_with("kubepods")) {
        a.pod_uid = pieces.iter().find_map(|p| pod_uid_piece(p));
    }
    a
}

/// `Some((id, runtime))` when the component names a container or its monitor.
fn container_piece(
    piece: &str,
    prev: Option<&str>,
) -> Option<(Option<String>, Option<&'static str>)> {
    let name = piece.strip_suffix(".scope").unwrap_or(piece);
    // conmon monitors sit beside the container, not in it: report the runtime but no id so
    // their activity is never charged to the container they watch.
    for (prefix, rt) in [("crio-conmon-", "cri-o"), ("libpod-conmon-", "podman")] {
        if name.strip_prefix(prefix).is_some_and(is_id) {
            return Some((None, Some(rt)));
        }
    }
    let scopes = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    for (prefix, rt) in scopes {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_id(id)) {
            return Some((Some(id.to_string()), Some(rt)));
        }
    }
    // A bare id is only trusted at full length; the runtime is known only from its parent
    // (`/docker/<id>`, `:cri-containerd:<id>`). Under kubepods cgroupfs both containerd and
    // cri-dockerd use a bare id, so we do not guess there.
    if name.len() == 64 && is_id(name) {
        let rt = match prev {
            Some("docker") => Some("docker"),
            Some("cri-containerd") => Some("containerd"),
            Some("crio") => Some("cri-o"),
            _ => None,
        };
        return Some((Some(name.to_string()), rt));
    }
    None
}

fn is_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Pod uid from `kubepods-…-pod<uid>.slice` (systemd, `_` for `-`) or `pod<uid>` (cgroupfs).
fn pod_uid_piece(piece: &str) -> Option<String> {
    let raw = match piece.strip_suffix(".slice") {
        Some(unit) => &unit[unit.rfind("-pod")? + 4..],
        None => piece.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    let b = uid.as_bytes();
    let hex = |c: &u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
    let dashed = |(i, c): (usize, &u8)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            *c == b'-'
        } else {
            hex(c)
        }
    };
    let ok =
        (b.len() == 32 && b.iter().all(hex)) || (b.len() == 36 && b.iter().enumerate().all(dashed));
    ok.then_some(uid)
}

/// The first `cap` bytes of the file at `path`, None if it cannot be read.
fn read_capped(path: &Path, cap: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(cap)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// (namespace, pod, container) from kubelet's `{log_root}/containers/<pod>_<ns>_<ctr>-<id>.log`.
/// Names are split on `_` (never in pod, namespace or container names) after stripping the
/// known `-<id>.log` suffix, so container names may contain `-`.
pub fn kubernetes_names(log_root: &Path, container_id: &str) -> Option<(String, String, String)> {
    if container_id.is_empty() || container_id.contains('/') {
        return None;
    }
    let suffix = format!("-{container_id}.log");
    for entry in std::fs::read_dir(log_root.join("containers"))
        .ok()?
        .flatten()
    {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix.as_str())) else {
            continue;
        };
        let mut f = stem.splitn(3, '_');
        if let (Some(pod), Some(ns), Some(ctr)) = (f.next(), f.next(), f.next())
            && !pod.is_empty()
            && !ns.is_empty()
            && !ctr.is_empty()
            && !ctr.contains('_')
        {
            return Some((ns.to_string(), pod.to_string(), ctr.to_string()));
        }
    }
    None
}

/// (namespace, pod) from `{log_root}/pods/<ns>_<pod>_<uid>`: covers truncated container log
/// names and conmon processes, which have a pod uid but no usable container id.
fn pod_names(log_root: &Path, uid: &str) -> Option<(String, String)> {
    let suffix = format!("_{uid}");
    for entry in std::fs::read_dir(log_root.join("pods")).ok()?.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_suffix(suffix.as_str())) else {
            continue;
        };
        if let Some((ns, pod)) = rest.split_once('_')
            && !ns.is_empty()
            && !pod.is_empty()
            && !pod.contains('_')
        {
            return Some((ns.to_string(), pod.to_string()));
        }
    }
    None
}

const CACHE_CAP: usize = 4096;

/// A pid's answer, the executable it was read for, and when that was last checked.
struct Cached {
    attribution: Arc<Attribution>,
    exe: Option<FileKey>,
    checked: Instant,
    /// The executable's build was asked of the build-id worker: filled in when it answers.
    pending: bool,
    /// The build was filled in since the answer was last given out: `at_open` gives it as
    /// fresh once more (for the build's `truncwatch_build_info` series).
    announce: bool,
}

/// Caching pid → [`Attribution`] lookups against a filesystem root (`/` in production).
pub struct Resolver {
    root: PathBuf,
    cap: usize,
    by_pid: HashMap<u32, Cached>,
    // Container ids outlive pids; remembering names spares a /var/log/containers scan per pid.
    names: HashMap<String, (String, String, String)>,
    images: HashMap<String, Image>,
    builds: Builds,
    /// Pids from the kernel are the host's; with a `/proc` of another PID namespace they would
    /// name other processes, so lookups are off then.
    off: bool,
    /// Verdicts no longer wait for builds (the agent is stopping).
    no_wait: bool,
}

impl Resolver {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Resolver {
            root: root.into(),
            cap: CACHE_CAP,
            by_pid: HashMap::new(),
            names: HashMap::new(),
            images: HashMap::new(),
            builds: Builds::default(),
            off: false,
            no_wait: false,
        }
    }

    /// Stop looking pids up: every attribution is empty from now on.
    pub fn turn_off(&mut self) {
        self.off = true;
        self.by_pid.clear();
    }

    /// Never fails: an unreadable pid (exited, other pid namespace) gives an empty attribution,
    /// which is not cached so a later call can still succeed.
    pub fn for_pid(&mut self, pid: u32) -> Arc<Attribution> {
        self.fill_build(pid);
        match self.by_pid.get(&pid) {
            Some(c) => Arc::clone(&c.attribution),
            None => self.look_up(pid).0,
        }
    }

    /// The same at a connection's first sight. An answer older than `RECHECK_AFTER` is
    /// checked against the executable the pid runs now (a pid reused by another process, a
    /// process that exec'd another program) and read again if that changed. Also says whether
    /// the answer was read just now, for `Metrics::build_seen`.
    pub fn at_open(&mut self, pid: u32) -> (Arc<Attribution>, bool) {
        let now = Instant::now();
        self.fill_build(pid);
        if let Some(c) = self.by_pid.get_mut(&pid) {
            let fresh = std::mem::take(&mut c.announce);
            if now.duration_since(c.checked) < RECHECK_AFTER {
                return (Arc::clone(&c.attribution), fresh);
            }
            let proc_pid = self.root.join("proc").join(pid.to_string());
            if c.exe.is_some() && FileKey::of_process(&proc_pid) == c.exe {
                c.checked = now;
                return (Arc::clone(&c.attribution), fresh);
            }
        }
        self.look_up(pid)
    }

    /// Whether `pid`'s build is still being read, asked less than `BUILD_WAIT` ago: its
    /// verdicts may wait that long for it (the agent holds them back, never its event loop).
    pub fn build_pending(&mut self, pid: u32) -> bool {
        self.fill_build(pid);
        let Some(key) = self
            .by_pid
            .get(&pid)
            .filter(|c| c.pending)
            .and_then(|c| c.exe)
        else {
            return false;
        };
        let asked =
            matches!(self.builds.state(&key), Some(Build::Asked(at)) if at.elapsed() < BUILD_WAIT);
        asked && !self.no_wait
    }

    /// From now on no verdict waits for a build (the agent is stopping: print what is left).
    pub fn stop_waiting(&mut self) {
        self.no_wait = true;
    }

    /// Fill in the build of `pid`'s cached answer once the worker has read it.
    fn fill_build(&mut self, pid: u32) {
        let Some(c) = self.by_pid.get_mut(&pid).filter(|c| c.pending) else {
            return;
        };
        match c.exe.and_then(|key| self.builds.state(&key)) {
            Some(Build::Asked(_)) => {}
            Some(Build::Known(id)) => {
                let mut a = (*c.attribution).clone();
                a.build_id = id;
                c.attribution = Arc::new(a);
                (c.pending, c.announce) = (false, true);
            }
            // Dropped (the cache was cleared, or the worker replaced): unknown.
            None => c.pending = false,
        }
    }

    fn look_up(&mut self, pid: u32) -> (Arc<Attribution>, bool) {
        if self.off {
            return (Arc::default(), false);
        }
        let proc_pid = self.root.join("proc").join(pid.to_string());
        let Some(cgroups) = read_capped(&proc_pid.join("cgroup"), MAX_CGROUP_BYTES) else {
            self.by_pid.remove(&pid);
            return (Arc::default(), false); // gone, or not ours to read
        };
        // An empty file is a live process on a host with no cgroup hierarchy mounted (the
        // kernel lists cgroup v2 only once it is mounted: proc_cgroup_show, cgrp_dfl_visible):
        // no cgroup or container, but its executable and build all the same.
        let cgroup = cgroup_from_proc(&String::from_utf8_lossy(&cgroups));
        let exe = self.builds.for_process(&proc_pid);
        let mut a = cgroup.as_deref().map(from_cgroup_path).unwrap_or_default();
        (a.exe, a.build_id) = (exe.path, exe.build_id);
        self.fill_names(&mut a);
        self.fill_image(&mut a);
        let a = Arc::new(a);
        // A pod whose log entries kubelet has not written yet: retry on the next call instead
        // of pinning a nameless answer for the process's lifetime.
        if a.pod_uid.is_none() || a.namespace.is_some() {
            if self.by_pid.len() >= self.cap {
                self.by_pid.clear(); // clear-all: cheap, and entries refill on demand
            }
            let c = Cached {
                attribution: Arc::clone(&a),
                exe: exe.key,
                checked: Instant::now(),
                pending: exe.pending,
                announce: false,
            };
            self.by_pid.insert(pid, c);
        } else {
            self.by_pid.remove(&pid);
        }
        (a, true)
    }

    fn fill_image(&mut self, a: &mut Attribution) {
        let Some(id) = &a.container_id else { return };
        if !self.images.contains_key(id) {
            if self.images.len() >= self.cap {
                self.images.clear();
            }
            let image = container_image::for_container(&self.root, id, a.runtime);
            self.images.insert(id.clone(), image);
        }
        a.image = self.images[id].clone();
    }

    fn fill_names(&mut self, a: &mut Attribution) {
        let logs = self.root.join("var/log");
        if let Some(id) = a.container_id.clone() {
            if !self.names.contains_key(&id)
                && let Some(n) = kubernetes_names(&logs, &id)
            {
                if self.names.len() >= self.cap {
                    self.names.clear();
                }
                self.names.insert(id.clone(), n);
            }
            if let Some((ns, pod, ctr)) = self.names.get(&id).cloned() {
                (a.namespace, a.pod, a.container) = (Some(ns), Some(pod), Some(ctr));
                return;
            }
        }
        if let Some(uid) = &a.pod_uid
            && let Some((ns, pod)) = pod_names(&logs, uid)
        {
            (a.namespace, a.pod) = (Some(ns), Some(pod));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_root::TempRoot;
    use std::fs;

    const ID: &str = "3f1c0a9be2d84f7c6a5b4e3d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a090";
    const ID2: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";
    const UID: &str = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";
    const UID_: &str = "1b2c3d4e_5f60_4a7b_8c9d_0e1f2a3b4c5d";
    const STATIC_UID: &str = "6b3f0e2d1c4a5b6978a0b1c2d3e4f5a6";

    /// (proc cgroup text, expected path, container id, runtime, pod uid)
    type Row = (
        String,
        String,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );

    fn table() -> Vec<Row> {
        let k = |qos: &str, uid: &str, leaf: &str| {
            format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice/{leaf}")
        };
        let (cd, crio, dk) = (
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
        );
        let mut t: Vec<Row> = Vec::new();
        for (p, id, rt, uid) in [
            // containerd, systemd driver: burstable, besteffort, guaranteed, static pod
            (
                k("burstable", UID_, &cd),
                Some(ID),
                Some("containerd"),
                Some(UID),
            ),
            (
                k("besteffort", UID_, &cd),
                Some(ID),
                Some("containerd"),
                Some(UID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/{cd}"),
                Some(ID),
                Some("containerd"),
                Some(UID),
            ),
            (
                k("burstable", STATIC_UID, &cd),
                Some(ID),
                Some("containerd"),
                Some(STATIC_UID),
            ),
            // cgroupfs driver: bare id, runtime deliberately unknown
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Some(ID),
                None,
                Some(UID),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                Some(ID),
                None,
                Some(UID),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}"),
                None,
                None,
                Some(UID),
            ),
            (
                "/kubepods.slice/kubepods-burstable.slice".into(),
                None,
                None,
                None,
            ),
            // CRI-O: scope, crun's nested `container`, conmon, cgroupfs
            (
                k("besteffort", UID_, &crio),
                Some(ID),
                Some("cri-o"),
                Some(UID),
            ),
            (
                k("besteffort", UID_, &format!("{crio}/container")),
                Some(ID),
                Some("cri-o"),
                Some(UID),
            ),
            (
                k("besteffort", UID_, &format!("crio-conmon-{ID}.scope")),
                None,
                Some("cri-o"),
                Some(UID),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                Some(ID),
                Some("cri-o"),
                Some(UID),
            ),
            // Docker: systemd, cgroupfs, dockershim, GitHub-runner style parent
            (
                format!("/system.slice/{dk}"),
                Some(ID),
                Some("docker"),
                None,
            ),
            (format!("/docker/{ID}"), Some(ID), Some("docker"), None),
            (
                k("besteffort", UID_, &dk),
                Some(ID),
                Some("docker"),
                Some(UID),
            ),
            (format!("/actions_job/{ID}"), Some(ID), None, None),
            // containerd's `slice:prefix:id`, kind (pod inside a docker node), cgroupns, prefixes
            (
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
                ),
                Some(ID),
                Some("containerd"),
                Some(UID),
            ),
            (
                format!("/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}"),
                Some(ID),
                None,
                Some(UID),
            ),
            (
                format!("/../../kubepods-besteffort-pod{UID_}.slice/{cd}"),
                Some(ID),
                Some("containerd"),
                Some(UID),
            ),
            (
                format!("/sys/fs/cgroup/system.slice/{dk}"),
                Some(ID),
                Some("docker"),
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Some(ID),
                Some("podman"),
                None,
            ),
            // host processes and near misses
            (
                "/user.slice/user-0.slice/session-3.scope".into(),
                None,
                None,
                None,
            ),
            ("/system.slice/nginx.service".into(), None, None, None),
            ("/system.slice/containerd.service".into(), None, None, None),
            ("/system.slice/docker.service".into(), None, None, None),
            (
                "/system.slice/docker-registry.scope".into(),
                None,
                None,
                None,
            ),
            ("/system.slice/podman.service".into(), None, None, None),
            (
                format!("/kubepods/burstable/pod{}/{}", &UID[1..], ID.to_uppercase()),
                None,
                None,
                None,
            ),
            (format!("/docker/{}", &ID[1..]), None, None, None),
            ("/".into(), None, None, None),
        ] {
            t.push((format!("0::{p}\n"), p.clone(), id, rt, uid));
            // Same path on v1 hierarchy lines, with noise around it.
            t.push((
                format!("12:pids:{p}\n11:memory:{p}\n3:cpuset:/\n1:name=systemd:{p}\n"),
                p,
                id,
                rt,
                uid,
            ));
        }
        let x = format!("/kubepods/burstable/pod{UID}/{ID}");
        t.push((
            format!("9:name=systemd:/\n4:memory:{x}\n1:cpu:/\n0::/\n"),
            x,
            Some(ID),
            None,
            Some(UID),
        ));
        t.push((
            "1:name=systemd:/user.slice/a\n0::/user.slice/b\n".into(),
            "/user.slice/b".into(),
            None,
            None,
            None,
        ));
        t.push((
            "4:cpu,cpuacct:/c\n5:memory:/m\n6:pids:/p\n".into(),
            "/p".into(),
            None,
            None,
            None,
        ));
        t.push((
            "4:cpu,cpuacct:/c\r\n3:blkio:/b\r\n".into(),
            "/c".into(),
            None,
            None,
            None,
        ));
        t
    }

    #[test]
    fn layouts() {
        for (text, path, id, rt, uid) in table() {
            let cg = cgroup_from_proc(&text).unwrap_or_else(|| panic!("no cgroup in {text:?}"));
            assert_eq!(cg, path, "{text:?}");
            let a = from_cgroup_path(&cg);
            assert_eq!(a.cgroup.as_deref(), Some(path.as_str()));
            assert_eq!(
                (a.container_id.as_deref(), a.runtime, a.pod_uid.as_deref()),
                (id, rt, uid),
                "{text:?}"
            );
            assert_eq!((a.namespace, a.pod, a.container), (None, None, None));
        }
    }

    #[test]
    fn garbage_never_panics() {
        for g in [
            "",
            "\n\n",
            "garbage",
            "::",
            "0::",
            "0::relative",
            "a:b:/x",
            ":::/",
            "\u{0}\u{fffd}é:/ü",
        ] {
            assert_eq!(cgroup_from_proc(g), None, "{g:?}");
            let _ = from_cgroup_path(g);
        }
        let long = format!("0::/{}", "kubepods-pod/é:".repeat(100_000));
        let _ = from_cgroup_path(&cgroup_from_proc(&long).unwrap());
        let alphabet: Vec<char> = "/:-_.0123456789abcdefpodkubescopeslicecri-é漢\n"
            .chars()
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let s: String = (0..(seed % 200))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = cgroup_from_proc(&format!("0::/{s}"));
            let _ = from_cgroup_path(&s);
        }
    }

    #[test]
    fn kubernetes_names_from_log_dir() {
        let r = TempRoot::new("names");
        let logs = r.0.join("var/log");
        assert_eq!(kubernetes_names(&logs, ID), None); // no directory at all
        r.put("var/log/containers/README", "");
        r.put(&format!("var/log/containers/bad_{ID}.log"), ""); // wrong shape, skipped
        r.put(
            &format!("var/log/containers/web-7d9f-x2_shop_nginx-side-car-{ID}.log"),
            "",
        );
        fs::create_dir_all(logs.join("containers")).unwrap();
        // kubelet's entries are symlinks into /var/log/pods; a dangling one still names the pod.
        std::os::unix::fs::symlink(
            "/nonexistent",
            logs.join(format!("containers/db-0_data_pg-{ID2}.log")),
        )
        .unwrap();
        let n = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(
            kubernetes_names(&logs, ID),
            n("shop", "web-7d9f-x2", "nginx-side-car")
        );
        assert_eq!(kubernetes_names(&logs, ID2), n("data", "db-0", "pg"));
        for id in ["", "../x", &ID[1..], "ffff"] {
            assert_eq!(kubernetes_names(&logs, id), None, "{id:?}");
        }
        r.put(
            &format!("var/log/pods/kube-system_etcd-node1_{UID}/etcd/0.log"),
            "",
        );
        assert_eq!(
            pod_names(&logs, UID),
            Some(("kube-system".into(), "etcd-node1".into()))
        );
        assert_eq!(pod_names(&logs, STATIC_UID), None);
    }

    #[test]
    fn resolver_on_fabricated_root() {
        let r = TempRoot::new("resolver");
        r.put("proc/100/cgroup", &format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"));
        r.put("proc/200/cgroup", "0::/system.slice/nginx.service\n");
        r.put(
            "proc/300/cgroup",
            &format!("0::/kubepods/besteffort/pod{UID}/crio-conmon-{ID2}\n"),
        );
        r.put(
            "proc/400/cgroup",
            &format!("4:memory:/kubepods/pod{STATIC_UID}/{ID2}\n0::/\n"),
        );
        r.put(&format!("var/log/containers/api-5c_prod_app-{ID}.log"), "");
        r.put(&format!("var/log/pods/prod_api-5c_{UID}/app/0.log"), "");
        let mut res = Resolver::new(r.0.clone());

        let a = res.for_pid(100);
        assert_eq!(
            (a.container_id.as_deref(), a.runtime),
            (Some(ID), Some("containerd"))
        );
        let names = (
            a.namespace.as_deref(),
            a.pod.as_deref(),
            a.container.as_deref(),
        );
        assert_eq!(names, (Some("prod"), Some("api-5c"), Some("app")));
        // Cached: a changed file is not re-read (`at_open` checks the executable again).
        r.put("proc/100/cgroup", "0::/system.slice/nginx.service\n");
        assert!(Arc::ptr_eq(&a, &res.for_pid(100)));

        let host = res.for_pid(200);
        assert_eq!(host.cgroup.as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!(
            (host.container_id.as_ref(), host.namespace.as_ref()),
            (None, None)
        );

        // conmon: pod known from /var/log/pods, no container.
        let c = res.for_pid(300);
        let got = (
            c.runtime,
            c.container_id.as_deref(),
            c.namespace.as_deref(),
            c.pod.as_deref(),
            c.container.as_deref(),
        );
        assert_eq!(
            got,
            (Some("cri-o"), None, Some("prod"), Some("api-5c"), None)
        );

        // Kubernetes container whose log link is not written yet: answered, not cached.
        assert_eq!(res.for_pid(400).namespace, None);
        assert!(!res.by_pid.contains_key(&400));
        r.put(
            &format!("var/log/containers/etcd-n1_kube-system_etcd-{ID2}.log"),
            "",
        );
        assert_eq!(res.for_pid(400).container.as_deref(), Some("etcd"));

        // No cgroup hierarchy mounted (an empty file): no cgroup, the executable all the same.
        r.put("proc/500/cgroup", "");
        let exe = std::env::current_exe().unwrap();
        std::os::unix::fs::symlink(&exe, r.0.join("proc/500/exe")).unwrap();
        let bare = built(&mut res, 500);
        assert_eq!(
            (bare.cgroup.as_deref(), bare.exe.as_deref()),
            (None, exe.to_str())
        );
        assert!(bare.build_id.is_some());

        // Missing pid: default, never cached.
        assert_eq!(*res.for_pid(999), Attribution::default());
        assert!(!res.by_pid.contains_key(&999));
    }

    /// `pid`'s answer once the build-id worker has read its executable.
    fn built(res: &mut Resolver, pid: u32) -> Arc<Attribution> {
        res.for_pid(pid);
        while res.build_pending(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        res.for_pid(pid)
    }

    #[test]
    fn resolver_names_the_image_and_checks_the_executable_again() {
        let r = TempRoot::new("image");
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
        );
        r.put("proc/100/cgroup", &cgroup);
        r.put(
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            r#"{"annotations":{"io.kubernetes.cri.image-name":"registry.example/shop/api:1.4.2"}}"#,
        );
        r.put(&format!("var/log/containers/api-5c_prod_app-{ID}.log"), "");
        // The executable: a real file behind a link, as /proc/PID/exe is.
        let exe = std::env::current_exe().unwrap();
        std::os::unix::fs::symlink(&exe, r.0.join("proc/100/exe")).unwrap();
        let mut res = Resolver::new(r.0.clone());
        let (a, fresh) = res.at_open(100);
        assert!(fresh);
        assert_eq!(
            a.image.image.as_deref(),
            Some("registry.example/shop/api:1.4.2")
        );
        assert_eq!(a.exe.as_deref(), exe.to_str());
        // The build is read on the worker; once it is in, the answer is fresh once more (its
        // build_info series), with it.
        built(&mut res, 100);
        let (a, fresh) = res.at_open(100);
        assert!(fresh && a.build_id.is_some());
        // Seen again soon: the cached answer, not new.
        let (b, fresh) = res.at_open(100);
        assert!(!fresh && Arc::ptr_eq(&a, &b));
        // Later, the same executable: still the cached answer (checked with one stat).
        res.by_pid.get_mut(&100).unwrap().checked -= RECHECK_AFTER;
        let (b, fresh) = res.at_open(100);
        assert!(!fresh && Arc::ptr_eq(&a, &b));
        // The pid now runs another program (it exec'd, or the pid was reused): read again.
        r.put("proc/100/cgroup", "0::/system.slice/other.service\n");
        std::fs::remove_file(r.0.join("proc/100/exe")).unwrap();
        std::os::unix::fs::symlink("/bin/sh", r.0.join("proc/100/exe")).unwrap();
        res.by_pid.get_mut(&100).unwrap().checked -= RECHECK_AFTER;
        let (_, fresh) = res.at_open(100);
        assert!(fresh);
        let d = built(&mut res, 100);
        assert_eq!(
            (d.container_id.as_ref(), &d.image),
            (None, &Image::default())
        );
        assert_ne!(d.build_id, a.build_id);
    }

    #[test]
    fn cache_stays_bounded() {
        let r = TempRoot::new("bounded");
        let mut res = Resolver::new(r.0.clone());
        res.cap = 8;
        for pid in 1..=50u32 {
            r.put(
                &format!("proc/{pid}/cgroup"),
                &format!("0::/docker/{pid:064x}\n"),
            );
            r.put(
                &format!("var/log/containers/p{pid}_ns_c-{pid:064x}.log"),
                "",
            );
            let a = res.for_pid(pid);
            assert_eq!(a.container_id, Some(format!("{pid:064x}")));
            assert_eq!(a.pod.as_deref(), Some(format!("p{pid}").as_str()));
            assert!(res.by_pid.len() <= 8 && res.names.len() <= 8);
        }
        assert!(Resolver::new("/").cap == CACHE_CAP);
    }

    #[test]
    fn real_proc_self() {
        let mut res = Resolver::new("/");
        let a = res.for_pid(std::process::id());
        let cg = a.cgroup.as_deref().expect("this process has a cgroup");
        assert!(cg.starts_with('/'), "{cg}");
        // Off (the agent in a PID namespace of its own): nothing, not even what was cached.
        res.turn_off();
        assert_eq!(*res.for_pid(std::process::id()), Attribution::default());
    }
}
