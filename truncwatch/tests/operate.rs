//! Operating the agent: the metrics endpoint, the canary and `selftest`, attribution of a
//! process placed in a cgroup we create, and the least-privilege capability set. Real agent,
//! real kernel; they need root (see `support::kernel_or_skip`).
#[macro_use]
mod support;

use std::process::Command;
use std::time::Duration;
use support::{Agent, BIN, SLOW, Server, WAIT, fetch, http_get, u};

/// The value of the series whose line starts with `prefix` (name and labels), if any.
fn series(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Wait until the metrics (refreshed every second) show `prefix`.
fn scrape_until(addr: &str, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        if series(&body, prefix).is_some() || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

kernel_test!(metrics_count_a_short_write {
    let agent = Agent::start();
    let addr = agent.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200, "ready once attached and events flow");
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    // A reader slower than `SLOW`: the client lives some 200 ms, ten of the agent's drains,
    // so it is still there to be looked up when its connection is first seen (a process gone
    // by then is named by pid and comm only: docs/client-side.md). A CI run on 2 loaded cores
    // once saw the client exit first with 2 ms between reads.
    let got = fetch(&srv.endpoint, &["--rcvbuf", "65536", "--read-bytes", "16384", "--read-delay", "20ms"]);
    let v = agent.wait_for(&srv.local(), 1, WAIT);
    assert_eq!(v[0]["verdict"], "short_write");
    let port = srv.local().rsplit(':').next().unwrap().to_string();
    // The build the server runs (the lab server is this agent's own binary): a GNU build-id.
    let build = v[0]["build_id"].as_str().unwrap_or_default().to_string();
    assert!(build.len() == 40 && build.bytes().all(|b| b.is_ascii_hexdigit()), "{}", v[0]);
    let labels = format!("verdict=\"short_write\",side=\"server\",transport=\"tcp\",tls=\"false\",process=\"tw-lab-server\",container=\"\",namespace=\"\",pod=\"\",port=\"{port}\",build_id=\"{build}\"}}");
    let m = scrape_until(&addr, &format!("truncwatch_responses_total{{{labels}"));
    assert_eq!(series(&m, &format!("truncwatch_responses_total{{{labels}")), Some(1.0), "{m}");
    let missing = series(&m, &format!("truncwatch_missing_bytes_total{{{labels}")).unwrap();
    assert_eq!(missing as u64, u(&v[0]["missing_bytes"]));
    assert_eq!(missing as u64, u(&got[0]["content_length"]) + u(&got[0]["head_bytes"]) - u(&got[0]["received_bytes"]));
    assert_eq!(series(&m, &format!("truncwatch_slow_reader_responses_total{{{labels}")), Some(1.0));
    // The same response as its client got it: truncated, the series named by the server's
    // address and the client's build (the lab client is this agent's binary too).
    let c = agent.wait_for_client(&srv.local(), 1, WAIT);
    assert_eq!((&c[0]["verdict"], &c[0]["build_id"]), (&"truncated".into(), &v[0]["build_id"]), "client verdict {}", c[0]);
    let client = format!("verdict=\"truncated\",side=\"client\",transport=\"tcp\",tls=\"false\",process=\"truncwatch\",container=\"\",namespace=\"\",pod=\"\",port=\"{}\",build_id=\"{build}\"}}", srv.local());
    let m = scrape_until(&addr, &format!("truncwatch_responses_total{{{client}"));
    assert_eq!(series(&m, &format!("truncwatch_responses_total{{{client}")), Some(1.0), "{m}");
    assert_eq!(series(&m, &format!("truncwatch_missing_bytes_total{{{client}")).map(|x| x as u64), Some(missing as u64));
    // The build's info series, which the alert's annotation looks the executable up in.
    let exe = v[0]["exe"].as_str().unwrap_or_default();
    let info = format!("truncwatch_build_info{{process=\"tw-lab-server\",exe=\"{exe}\",build_id=\"{build}\",image=\"\",image_id=\"\"}} 1");
    assert!(m.lines().any(|l| l == info), "{info} in\n{m}");
    // The detector's own health is there too: an operator can tell quiet from blind.
    for s in [
        "truncwatch_ready 1",
        "truncwatch_events_lost_total{reason=\"ring_buffer_full\"} 0",
        "truncwatch_backend_info{backend=\"tracepoint\"} 1",
        "truncwatch_connections_tracked_limit 65536",
    ] {
        assert!(m.lines().any(|l| l == s), "missing {s:?} in\n{m}");
    }
    assert!(series(&m, "truncwatch_events_total").unwrap() > 0.0);
    assert!(!m.contains("truncwatch_canary_success"), "no canary ran: no canary series");
    assert_eq!(http_get(&addr, "/nope").0, 404);
});

/// Held by the tests that run an agent which cannot register (`agent_registry`: an
/// unprivileged user cannot write the root-owned registry, so every other agent reports its
/// probe and canary like any process's traffic) and by the one that checks that registered
/// agents' canaries are not reported.
static UNREGISTERED_AGENTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

kernel_test!(canary_runs_in_the_agent_and_stays_out_of_the_output {
    let _alone = UNREGISTERED_AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start_args(&["--metrics-addr", "127.0.0.1:0", "--canary-interval", "1s"]);
    let addr = agent.metrics_addr();
    assert!(agent.wait_log("canary passed", WAIT).is_some(), "{:?}", agent.log.lock().unwrap());
    let m = scrape_until(&addr, "truncwatch_canary_success");
    assert_eq!(series(&m, "truncwatch_canary_success"), Some(1.0), "{m}");
    assert!(series(&m, "truncwatch_canary_runs_total{result=\"pass\"}").unwrap() >= 1.0);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    // Nor are another agent's: an operator runs `truncwatch selftest` next to this one.
    let st = Command::new(BIN).arg("selftest").output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // Its verdicts are not the host's: not printed, not in the verdict metrics. (Other tests
    // run in parallel, and this agent sees their traffic: only its own counts here.)
    let pid = agent.pid();
    let own: Vec<_> = agent.stop().into_iter().filter(|v| u(&v["pid"]) == pid as u64 || v["comm"] == "tw-canary").collect();
    assert!(own.is_empty(), "canary verdicts leaked into the output: {own:?}");
    assert!(!m.contains("process=\"tw-canary\""), "{m}");
});

kernel_test!(selftest_passes_on_this_host {
    let out = Command::new(BIN).arg("selftest").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("canary passed: short_write of"), "{err}");
});

kernel_test!(
/// In a PID namespace of its own (a container without `hostPID`), the kernel reports the
/// agent's pid from the host's namespace: the agent learns it from its start-up probe.
works_in_its_own_pid_namespace {
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", BIN, "selftest"]).output().expect("unshare (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("canary passed"), "{err}");
    assert!(err.contains("PID namespace of its own"), "says what it cannot attribute: {err}");
});

kernel_test!(
/// The capabilities the README and deploy/ list, and nothing else, as an unprivileged user:
/// the agent attaches and detects (its selftest passes). Without CAP_PERFMON it cannot.
least_privilege_capabilities_suffice {
    let _alone = UNREGISTERED_AGENTS.lock().unwrap_or_else(|e| e.into_inner());
    // A copy the unprivileged user can reach (the build tree may be under a private home).
    let dir = std::env::temp_dir().join(format!("truncwatch-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("truncwatch");
    std::fs::copy(BIN, &bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |caps: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg(&bin)
            .arg("selftest")
            .output()
            .expect("setpriv (util-linux)")
    };
    let ok = run("+bpf,+perfmon");
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success() && err.contains("canary passed"), "with CAP_BPF and CAP_PERFMON: {err}");
    for caps in ["+bpf", "+perfmon"] {
        let out = run(caps);
        assert!(!out.status.success(), "the agent ran with only {caps}: the list is not minimal");
    }
    let _ = std::fs::remove_dir_all(&dir);
});

kernel_test!(
/// A process we place in a cgroup we create, laid out as kubelet (cgroupfs driver) makes them,
/// with the log link kubelet keeps: its verdicts name the container and pod.
attribution_of_a_process_in_a_kubernetes_like_cgroup {
    let id = format!("{:064x}", 0x7e57_u128 << 64 | std::process::id() as u128);
    let uid = format!("7e570000-0000-4000-8000-{:012x}", std::process::id());
    let rel = format!("kubepods/besteffort/pod{uid}/{id}");
    // cgroup v1 hierarchies where this kind of host has them, else the v2 tree.
    let roots: Vec<String> = if std::path::Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        vec!["/sys/fs/cgroup/pids".into(), "/sys/fs/cgroup/systemd".into()]
    } else {
        vec!["/sys/fs/cgroup".into()]
    };
    let link = format!("/var/log/containers/web-1_shop_app-{id}.log");
    std::fs::create_dir_all("/var/log/containers").unwrap();
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();

    let agent = Agent::start();
    let srv = Server::start("tcp:127.0.0.1:0", "short-close", 8 << 20);
    for root in &roots {
        let dir = format!("{root}/{rel}");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/cgroup.procs"), srv.pid().to_string()).unwrap();
    }
    fetch(&srv.endpoint, SLOW);
    let v = agent.wait_for(&srv.local(), 1, WAIT);
    drop(srv);
    let _ = std::fs::remove_file(&link);
    for root in &roots {
        // Parents first emptied of the (now dead) process; remove leaf to top.
        let mut p = std::path::PathBuf::from(format!("{root}/{rel}"));
        for _ in 0..4 {
            let _ = std::fs::remove_dir(&p);
            p.pop();
        }
    }
    let v = &v[0];
    assert_eq!(v["verdict"], "short_write");
    assert_eq!(v["container_id"], id.as_str(), "{v}");
    assert_eq!((v["namespace"].as_str(), v["pod"].as_str(), v["container"].as_str()), (Some("shop"), Some("web-1"), Some("app")), "{v}");
    assert!(v["cgroup"].as_str().unwrap().ends_with(&rel), "{v}");
});

kernel_test!(
/// `truncwatch check` on this host: the tracepoint backend loads and attaches, and the report
/// says what the kernel lacks (here: fentry and kprobes).
check_reports_this_kernel {
    let out = Command::new(BIN).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("backend: tracepoint (4 hooks loaded and attached"), "{text}");
    for line in ["tracepoint sock_send_length (Linux 6.3+)", "BPF ring buffer (Linux 5.8+)", "fentry/fexit (BPF trampolines)", "kprobes (perf kprobe event source)"] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
});
