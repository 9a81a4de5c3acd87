//! Prometheus metrics: what the verdicts say about the host, and whether the detector itself
//! works (so that "no truncation" can be told from "blind"). Every metric is listed in
//! docs/metrics.md.
//!
//! Label sets are bounded: at most `max_label_sets` distinct owners (process, container,
//! namespace, pod, port, build_id) keep their labels, admitted by `admission` (a quota per
//! cgroup and executable, and per pod, so that no process can take the table by renaming
//! itself; a reserve for workloads seen late); refused ones are counted under `other` and in
//! `truncwatch_label_sets_overflow_total`. Admission lasts the agent's lifetime: moving an owner out of
//! `other` later would make its counters go backwards.
mod admission;

use crate::judge::correlator::{Kind, Stats, Verdict};
use crate::judge::events::{Side, Transport};
use crate::owner::attribution::Attribution;
use admission::Table;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Owner {
    process: String,
    container: String,
    namespace: String,
    pod: String,
    /// Server side: the local TCP port, or the Unix socket's path. Client side: the server's
    /// address (`host:port`, or the Unix socket's path).
    port: String,
    /// The build the process runs (`build_identity`): joins `truncwatch_build_info`.
    build_id: String,
}

/// One build seen on an HTTP connection: the labels of `truncwatch_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    process: String,
    exe: String,
    build_id: String,
    image: String,
    image_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    verdict: &'static str,
    /// `server` (responses sent) or `client` (responses received).
    side: &'static str,
    transport: &'static str,
    /// `true` for a TLS connection judged from its plaintext, else `false` (`all` where
    /// verdicts are only counted).
    tls: &'static str,
    #[prometheus(flatten)]
    owner: Owner,
}

/// Which table refused a label set: `responses` (the owners of the verdict counters) or
/// `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refused {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Program {
    program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Backend {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryResult {
    result: &'static str,
}

/// A program's figures from the kernel's BPF stats (`kernel.bpf_stats_enabled`).
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

pub struct Metrics {
    registry: Registry,
    /// The owner label sets of the verdict counters.
    owners: Table,
    /// The label sets of `truncwatch_build_info`.
    builds_seen: Table,
    builds: Family<BuildLabels, Gauge>,
    responses: Family<ResponseLabels, Counter>,
    missing_bytes: Family<ResponseLabels, Counter>,
    slow_reader: Family<ResponseLabels, Counter>,
    reset_discards: Family<Owner, Counter>,
    reset_discarded_bytes: Family<Owner, Counter>,
    unjudged: Family<Reason, Counter>,
    events: Counter,
    events_lost: Family<Reason, Counter>,
    /// Files and processes of others left alone, by reason (`untrusted`, totals there).
    untrusted_skipped: Family<Reason, Counter>,
    tracked: Gauge,
    tracked_limit: Gauge,
    evicted: Counter,
    /// Verdict lines not printed, past an owner's `--max-lines-per-second` (`line_budget`).
    lines_suppressed: Counter,
    overflow: Family<Refused, Counter>,
    ready: Gauge,
    bpf_run_seconds: Family<Program, Counter<f64, AtomicU64>>,
    bpf_runs: Family<Program, Counter>,
    /// No series until the first canary ran: an agent with the canary off must not look like
    /// one whose canary fails.
    canary_success: Family<Vec<(String, String)>, Gauge>,
    canary_runs: Family<CanaryResult, Counter>,
    canary_last_run: Gauge,
    /// Kernel-side totals as last exported (the kernel gives totals; counters take increments).
    last: Last,
}

#[derive(Default)]
struct Last {
    stats: Stats,
    lost: [u64; 3],
    bpf: Vec<(String, u64, u64)>,
}

/// Event loss reasons, in the kernel's `LOST` array order.
pub const LOST_REASONS: [&str; 3] = ["ring_buffer_full", "socket_storage", "owner_share"];

impl Metrics {
    pub fn new(max_label_sets: usize, max_connections: usize, backend: &str) -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            owners: Table::new(max_label_sets),
            builds_seen: Table::new(max_label_sets),
            builds: Family::default(),
            responses: Family::default(),
            missing_bytes: Family::default(),
            slow_reader: Family::default(),
            reset_discards: Family::default(),
            reset_discarded_bytes: Family::default(),
            unjudged: Family::default(),
            events: Counter::default(),
            events_lost: Family::default(),
            untrusted_skipped: Family::default(),
            tracked: Gauge::default(),
            tracked_limit: Gauge::default(),
            evicted: Counter::default(),
            lines_suppressed: Counter::default(),
            overflow: Family::default(),
            ready: Gauge::default(),
            bpf_run_seconds: Family::default(),
            bpf_runs: Family::default(),
            canary_success: Family::default(),
            canary_runs: Family::default(),
            canary_last_run: Gauge::default(),
            last: Last::default(),
            registry: Registry::default(),
        };
        r.register(
            "truncwatch_responses",
            "HTTP/1 responses judged, by verdict",
            m.responses.clone(),
        );
        r.register(
            "truncwatch_missing_bytes",
            "Promised response bytes never handed to the kernel (server side) or never received (client side)",
            m.missing_bytes.clone(),
        );
        r.register(
            "truncwatch_slow_reader_responses",
            "Problem responses with slow-reader evidence (send buffer full, peer zero window, receive-window-limited time)",
            m.slow_reader.clone(),
        );
        r.register(
            "truncwatch_reset_discards",
            "TCP connections this host reset with unacknowledged bytes",
            m.reset_discards.clone(),
        );
        r.register(
            "truncwatch_reset_discarded_bytes",
            "Unacknowledged bytes dropped by those resets",
            m.reset_discarded_bytes.clone(),
        );
        r.register(
            "truncwatch_unjudged_responses",
            "Responses that could not be judged, by reason",
            m.unjudged.clone(),
        );
        r.register(
            "truncwatch_verdict_lines_suppressed",
            "Verdict lines not printed, past one owner's --max-lines-per-second (each is counted in the other series all the same; a summary line says how many)",
            m.lines_suppressed.clone(),
        );
        r.register(
            "truncwatch_events",
            "Events read from the kernel",
            m.events.clone(),
        );
        r.register(
            "truncwatch_untrusted_skipped",
            "Files and processes of others not read, or TLS libraries not hooked, by reason (caps, time budgets, not regular files, changed files, a busy worker, the hook cap)",
            m.untrusted_skipped.clone(),
        );
        for (reason, _) in crate::untrusted::skipped_counts() {
            m.untrusted_skipped
                .get_or_create(&Reason { reason })
                .inc_by(0);
        }
        r.register(
            "truncwatch_events_lost",
            "Events the kernel could not deliver, by reason",
            m.events_lost.clone(),
        );
        r.register(
            "truncwatch_connections_tracked",
            "HTTP/1 server connections tracked now",
            m.tracked.clone(),
        );
        r.register(
            "truncwatch_connections_tracked_limit",
            "Connections tracked at most (--max-connections)",
            m.tracked_limit.clone(),
        );
        r.register(
            "truncwatch_connections_evicted",
            "Connections dropped unjudged to stay under the limit",
            m.evicted.clone(),
        );
        r.register(
            "truncwatch_label_sets_overflow",
            "Label sets refused, by table: verdicts counted under owner \"other\" (responses), builds given no series (build_info)",
            m.overflow.clone(),
        );
        r.register(
            "truncwatch_ready",
            "1 once the programs are attached and events flow (and the last canary passed)",
            m.ready.clone(),
        );
        r.register(
            "truncwatch_bpf_program_run_seconds",
            "Kernel time spent in each program (kernel.bpf_stats_enabled)",
            m.bpf_run_seconds.clone(),
        );
        r.register(
            "truncwatch_bpf_program_runs",
            "Runs of each program (kernel.bpf_stats_enabled)",
            m.bpf_runs.clone(),
        );
        r.register(
            "truncwatch_canary_success",
            "1 if the last built-in canary was detected correctly",
            m.canary_success.clone(),
        );
        r.register(
            "truncwatch_canary_runs",
            "Built-in canary runs, by result",
            m.canary_runs.clone(),
        );
        r.register(
            "truncwatch_canary_last_run_timestamp_seconds",
            "When the canary last ran (Unix time)",
            m.canary_last_run.clone(),
        );
        let backend_info = Family::<Backend, Gauge>::default();
        backend_info
            .get_or_create(&Backend {
                backend: backend.into(),
            })
            .set(1);
        r.register(
            "truncwatch_backend_info",
            "The hook backend attached",
            backend_info,
        );
        let build = Family::<Version, Gauge>::default();
        build
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register(
            "truncwatch_agent_build_info",
            "The agent's own version",
            build,
        );
        r.register(
            "truncwatch_build_info",
            "Builds seen serving or fetching HTTP: 1 per process name, executable, build id and image",
            m.builds.clone(),
        );
        m.tracked_limit.set(max_connections as i64);
        // Zeros from the start: "nothing lost" must be a series, not an absence.
        for reason in LOST_REASONS {
            m.events_lost.get_or_create(&Reason { reason }).inc_by(0);
        }
        for reason in [
            "head_only",
            "chunked_uncertain",
            "pipelined_unseen",
            "heads_over_budget",
        ] {
            m.unjudged.get_or_create(&Reason { reason }).inc_by(0);
        }
        for table in ["responses", "build_info"] {
            m.overflow.get_or_create(&Refused { table }).inc_by(0);
        }
        Metrics { registry: r, ..m }
    }

    /// A process seen on an HTTP connection, or with a verdict: its build gets its
    /// `truncwatch_build_info` series if the table admits it (`admission`: one cgroup and
    /// executable cannot fill it under many process names); a refusal is counted. Cheap when
    /// the build is known already: a hash of the labels, no allocation.
    pub fn build_seen(&mut self, comm: &str, a: &Attribution) {
        let Some(build_id) = &a.build_id else { return };
        let (exe, image, image_id) = (
            a.exe.as_deref().unwrap_or_default(),
            a.image.image.as_deref().unwrap_or_default(),
            a.image.image_id.as_deref().unwrap_or_default(),
        );
        let key = self
            .builds_seen
            .key(&(comm, exe, &**build_id, image, image_id));
        if self.builds_seen.contains(key) {
            return;
        }
        if !self.builds_seen.admit(key, a) {
            self.refused("build_info");
            return;
        }
        let l = BuildLabels {
            process: comm.to_string(),
            exe: exe.to_string(),
            build_id: build_id.to_string(),
            image: image.to_string(),
            image_id: image_id.to_string(),
        };
        self.builds.get_or_create(&l).set(1);
    }

    /// Count one verdict (problems and, with the correlator building them, the rest).
    pub fn verdict(&mut self, v: &Verdict, owner: &Attribution) {
        self.build_seen(&v.meta.comm, owner);
        let owner = self.owner(v, owner);
        if v.kind == Kind::ResetDiscard {
            self.reset_discards.get_or_create(&owner).inc();
            self.reset_discarded_bytes
                .get_or_create(&owner)
                .inc_by(v.unacked_bytes.unwrap_or(0));
            if v.response.is_none() {
                return; // a connection's, not a response's: no response to count
            }
        }
        let l = ResponseLabels {
            verdict: v.kind.as_str(),
            side: v.meta.side.as_str(),
            transport: v.meta.transport.as_str(),
            tls: if v.meta.tls { "true" } else { "false" },
            owner,
        };
        if let Some(missing) = v
            .response
            .as_ref()
            .and_then(|r| r.missing_bytes())
            .filter(|&m| m > 0)
        {
            self.missing_bytes.get_or_create(&l).inc_by(missing);
        }
        let e = &v.evidence;
        // (The evidence is the sender's: a client's own window says nothing of its reading.)
        let slow = v.meta.side == Side::Server
            && (e.send_buffer_full
                || e.peer_window_at_end == Some(0)
                || e.rwnd_limited_ms.is_some_and(|ms| ms > 0));
        if slow && v.kind.is_problem() {
            self.slow_reader.get_or_create(&l).inc();
        }
        self.responses.get_or_create(&l).inc();
    }

    /// Bring the self-metrics up to date from the correlator's counts and the kernel's totals.
    /// `counted_only`: the correlator builds verdicts only for problems (no `--all`); the
    /// others are then exported per host, with owner labels `all`.
    pub fn update(
        &mut self,
        stats: &Stats,
        counted_only: bool,
        tracked: usize,
        events: u64,
        lost: [u64; 3],
        bpf: &[ProgramStats],
    ) {
        let last = &self.last.stats;
        if counted_only {
            let all = || "all".to_string();
            let owner = Owner {
                process: all(),
                container: all(),
                namespace: all(),
                pod: all(),
                port: all(),
                build_id: all(),
            };
            // The verdicts the correlator only counts (not problems): no owner to label.
            for (side, now_all, then_all) in [
                ("server", &stats.judged, &last.judged),
                ("client", &stats.judged_client, &last.judged_client),
            ] {
                for kind in Kind::ALL.into_iter().filter(|k| !k.is_problem()) {
                    let (now, then) = (now_all[kind as usize], then_all[kind as usize]);
                    if now > then {
                        let l = ResponseLabels {
                            verdict: kind.as_str(),
                            side,
                            transport: "all",
                            tls: "all",
                            owner: owner.clone(),
                        };
                        self.responses.get_or_create(&l).inc_by(now - then);
                    }
                }
            }
        }
        let bump = |f: &Family<Reason, Counter>, reason, now: u64, then: u64| {
            if now > then {
                f.get_or_create(&Reason { reason }).inc_by(now - then);
            }
        };
        bump(&self.unjudged, "head_only", stats.head_only, last.head_only);
        bump(
            &self.unjudged,
            "chunked_uncertain",
            stats.chunked_uncertain,
            last.chunked_uncertain,
        );
        bump(
            &self.unjudged,
            "pipelined_unseen",
            stats.pipelined_unseen,
            last.pipelined_unseen,
        );
        bump(
            &self.unjudged,
            "heads_over_budget",
            stats.heads_over_budget,
            last.heads_over_budget,
        );
        for (i, reason) in LOST_REASONS.iter().enumerate() {
            bump(&self.events_lost, reason, lost[i], self.last.lost[i]);
        }
        self.evicted
            .inc_by(stats.evicted.saturating_sub(last.evicted));
        self.events.inc_by(events.saturating_sub(self.events.get()));
        for (reason, total) in crate::untrusted::skipped_counts() {
            let c = self.untrusted_skipped.get_or_create(&Reason { reason });
            c.inc_by(total.saturating_sub(c.get()));
        }
        self.tracked.set(tracked as i64);
        for p in bpf {
            let (t0, n0) = self
                .last
                .bpf
                .iter()
                .find(|(n, ..)| *n == p.name)
                .map_or((0, 0), |(_, t, n)| (*t, *n));
            let l = Program {
                program: p.name.clone(),
            };
            self.bpf_run_seconds
                .get_or_create(&l)
                .inc_by(p.run_time_ns.saturating_sub(t0) as f64 / 1e9);
            self.bpf_runs
                .get_or_create(&l)
                .inc_by(p.run_count.saturating_sub(n0));
        }
        self.last = Last {
            stats: stats.clone(),
            lost,
            bpf: bpf
                .iter()
                .map(|p| (p.name.clone(), p.run_time_ns, p.run_count))
                .collect(),
        };
    }

    /// One verdict line not printed (`line_budget`).
    pub fn line_suppressed(&mut self) {
        self.lines_suppressed.inc();
    }

    pub fn set_ready(&mut self, ready: bool) {
        self.ready.set(ready as i64);
    }

    pub fn canary(&mut self, passed: bool, unix_time: u64) {
        self.canary_success
            .get_or_create(&Vec::new())
            .set(passed as i64);
        self.canary_runs
            .get_or_create(&CanaryResult {
                result: if passed { "pass" } else { "fail" },
            })
            .inc();
        self.canary_last_run.set(unix_time as i64);
    }

    fn refused(&self, table: &'static str) {
        self.overflow.get_or_create(&Refused { table }).inc();
    }

    /// Export a metric another module keeps (`self_traffic`, `canary`, `endpoint`): it keeps a
    /// clone and updates it there (clones share their value).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }

    fn owner(&mut self, v: &Verdict, a: &Attribution) -> Owner {
        let port = match (v.meta.side, v.meta.transport) {
            (Side::Server, Transport::Tcp) => {
                v.meta.local.rsplit(':').next().unwrap_or("").to_string()
            }
            (Side::Server, Transport::Unix) => v.meta.local.clone(),
            // A client's own port is ephemeral: the server it talks to names the series.
            (Side::Client, _) => v.meta.peer.clone(),
        };
        let container = a.container.clone().or_else(|| {
            a.container_id
                .as_deref()
                .map(|id| crate::export::output::short_id(id).to_string())
        });
        let o = Owner {
            process: v.meta.comm.clone(),
            container: container.unwrap_or_default(),
            namespace: a.namespace.clone().unwrap_or_default(),
            pod: a.pod.clone().unwrap_or_default(),
            port,
            build_id: a.build_id.as_deref().unwrap_or_default().to_string(),
        };
        if self.owners.admit(self.owners.key(&o), a) {
            return o;
        }
        self.refused("responses");
        let other = || "other".to_string();
        Owner {
            process: other(),
            container: other(),
            namespace: other(),
            pod: other(),
            port: other(),
            build_id: other(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::correlator::{Evidence, Kind, ResponseFacts};
    use crate::judge::events::ConnMeta;
    use std::sync::Arc;

    fn verdict(kind: Kind, comm: &str, port: u16, missing: u64) -> Verdict {
        let meta = ConnMeta {
            transport: Transport::Tcp,
            pid: 1,
            comm: comm.into(),
            local: format!("127.0.0.1:{port}"),
            peer: String::new(),
            tls: false,
            side: crate::judge::events::Side::Server,
        };
        let response = Some(ResponseFacts {
            status: 200,
            content_length: Some(100),
            chunked: false,
            expected_bytes: Some(100),
            sent_bytes: 100 - missing,
            delivered_bytes: 100 - missing,
        });
        let evidence = Evidence {
            send_buffer_full: true,
            ..Evidence::default()
        };
        Verdict {
            kind,
            meta: Arc::new(meta),
            pid: 1,
            response,
            unacked_bytes: None,
            evidence,
            ts_ns: 0,
        }
    }

    #[test]
    fn verdicts_become_labelled_series() {
        let mut m = Metrics::new(10, 100, "tracepoint");
        let owner = Attribution {
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            container: Some("app".into()),
            ..Attribution::default()
        };
        m.verdict(&verdict(Kind::ShortWrite, "nginx", 80, 40), &owner);
        m.verdict(&verdict(Kind::ShortWrite, "nginx", 80, 2), &owner);
        let text = m.encode();
        let l = r#"{verdict="short_write",side="server",transport="tcp",tls="false",process="nginx",container="app",namespace="shop",pod="web-1",port="80",build_id=""}"#;
        assert!(
            text.contains(&format!("truncwatch_responses_total{l} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!("truncwatch_missing_bytes_total{l} 42")),
            "{text}"
        );
        assert!(
            text.contains(&format!("truncwatch_slow_reader_responses_total{l} 2")),
            "{text}"
        );
        assert!(text.contains("truncwatch_agent_build_info{version=\"0.1.0\"} 1"));
    }

    /// A client's verdict: labelled `side="client"`, its series named by the server it read
    /// from (its own port is ephemeral), and never slow-reader evidence (that is the sender's).
    #[test]
    fn client_verdicts_are_labelled_by_side_and_server() {
        let mut m = Metrics::new(10, 100, "tracepoint");
        let mut v = verdict(Kind::Truncated, "curl", 41234, 40);
        let meta = std::sync::Arc::make_mut(&mut v.meta);
        meta.side = Side::Client;
        meta.peer = "10.0.0.7:8080".into();
        m.verdict(&v, &Attribution::default());
        let text = m.encode();
        let l = r#"{verdict="truncated",side="client",transport="tcp",tls="false",process="curl",container="",namespace="",pod="",port="10.0.0.7:8080",build_id=""}"#;
        assert!(
            text.contains(&format!("truncwatch_responses_total{l} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("truncwatch_missing_bytes_total{l} 40")),
            "{text}"
        );
        assert!(
            !text.contains("truncwatch_slow_reader_responses_total{"),
            "{text}"
        );
    }

    #[test]
    fn builds_get_an_info_series_and_label_their_verdicts() {
        // An owner (cgroup, executable) holds 2 of 16 label sets.
        let mut m = Metrics::new(16, 100, "tracepoint");
        let build = |id: &str, image: Option<&str>| Attribution {
            exe: Some("/srv/shop-api".into()),
            build_id: Some(id.into()),
            image: crate::owner::container_image::Image {
                image: image.map(Into::into),
                image_id: image.map(|_| "sha256:ab".into()),
            },
            ..Attribution::default()
        };
        let bad = build("1111", Some("shop/api:1.4.2"));
        m.build_seen("shop-api", &bad);
        m.build_seen("shop-api", &bad);
        m.verdict(&verdict(Kind::ShortWrite, "shop-api", 80, 5), &bad);
        // The rollback: the next build, same program and port.
        let good = build("2222", None);
        m.build_seen("shop-api", &good);
        // Beyond the owner's quota (the same executable renamed): no more info series.
        m.build_seen("other-app", &build("3333", None));
        // A process whose executable could not be read: nothing to say.
        m.build_seen("gone", &Attribution::default());
        let text = m.encode();
        let mut info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("truncwatch_build_info{"))
            .collect();
        info.sort_unstable(); // (a family's series come in hash order)
        assert_eq!(
            info,
            [
                r#"truncwatch_build_info{process="shop-api",exe="/srv/shop-api",build_id="1111",image="shop/api:1.4.2",image_id="sha256:ab"} 1"#,
                r#"truncwatch_build_info{process="shop-api",exe="/srv/shop-api",build_id="2222",image="",image_id=""} 1"#,
            ],
            "{text}"
        );
        assert!(
            text.contains(r#"truncwatch_responses_total{verdict="short_write",side="server",transport="tcp",tls="false",process="shop-api",container="",namespace="",pod="",port="80",build_id="1111"} 1"#),
            "{text}"
        );
    }

    /// Issue 26: 1 000 processes of one executable in one cgroup, each under a name of its
    /// own, take an eighth of the table; the victim that cuts a response afterwards keeps its
    /// own labels, and the refusals are counted by table.
    #[test]
    fn many_names_cannot_take_the_victims_labels() {
        let mut m = Metrics::new(1000, 100, "tracepoint");
        let evil = Attribution {
            cgroup: Some("/user.slice/user-65534.slice/session-9.scope".into()),
            exe: Some("/usr/bin/busybox".into()),
            build_id: Some("b0".into()),
            ..Attribution::default()
        };
        for i in 0..1000 {
            m.verdict(
                &verdict(Kind::ShortWrite, &format!("evil-{i}"), 80, 1),
                &evil,
            );
        }
        let victim = Attribution {
            cgroup: Some("/system.slice/nginx.service".into()),
            exe: Some("/usr/sbin/nginx".into()),
            build_id: Some("n1".into()),
            ..Attribution::default()
        };
        m.verdict(&verdict(Kind::ShortWrite, "nginx", 443, 7), &victim);
        let text = m.encode();
        let series = |prefix: &str, needle: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix) && l.contains(needle))
                .count()
        };
        let quota = 1000 / admission::OWNER_SHARE;
        assert_eq!(
            series("truncwatch_responses_total{", "process=\"evil-"),
            quota
        );
        assert_eq!(series("truncwatch_build_info{", "process=\"evil-"), quota);
        assert!(
            text.contains(
                r#"process="nginx",container="",namespace="",pod="",port="443",build_id="n1"} 1"#
            ),
            "{text}"
        );
        assert_eq!(series("truncwatch_build_info{", "process=\"nginx\""), 1);
        assert!(
            text.contains(
                r#"process="other",container="other",namespace="other",pod="other",port="other",build_id="other"} 875"#
            ),
            "{text}"
        );
        for want in [
            r#"truncwatch_label_sets_overflow_total{table="responses"} 875"#,
            r#"truncwatch_label_sets_overflow_total{table="build_info"} 875"#,
        ] {
            assert!(text.lines().any(|l| l == want), "no {want} in\n{text}");
        }
    }

    /// Nothing refused yet: both tables' counters are series at 0.
    #[test]
    fn refusals_start_at_zero() {
        let text = Metrics::new(10, 100, "tracepoint").encode();
        for table in ["responses", "build_info"] {
            let want = format!("truncwatch_label_sets_overflow_total{{table=\"{table}\"}} 0");
            assert!(text.lines().any(|l| l == want), "no {want} in\n{text}");
        }
    }

    #[test]
    fn kernel_totals_become_increments() {
        let mut m = Metrics::new(3, 100, "tracepoint");
        let mut stats = Stats {
            head_only: 1,
            ..Stats::default()
        };
        *stats.judged(Kind::Complete) = 5;
        let prog = |t, n| {
            vec![ProgramStats {
                name: "p".into(),
                run_time_ns: t,
                run_count: n,
            }]
        };
        m.update(&stats, true, 2, 10, [0, 0, 0], &prog(1_000_000_000, 10));
        *stats.judged(Kind::Complete) = 7;
        m.update(&stats, true, 1, 15, [3, 0, 0], &prog(3_000_000_000, 30));
        let text = m.encode();
        for want in [
            r#"truncwatch_responses_total{verdict="complete",side="server",transport="all",tls="all",process="all",container="all",namespace="all",pod="all",port="all",build_id="all"} 7"#,
            r#"truncwatch_unjudged_responses_total{reason="head_only"} 1"#,
            r#"truncwatch_unjudged_responses_total{reason="chunked_uncertain"} 0"#,
            r#"truncwatch_events_lost_total{reason="ring_buffer_full"} 3"#,
            r#"truncwatch_events_lost_total{reason="socket_storage"} 0"#,
            "truncwatch_events_total 15",
            "truncwatch_connections_tracked 1",
            r#"truncwatch_bpf_program_run_seconds_total{program="p"} 3.0"#,
            r#"truncwatch_bpf_program_runs_total{program="p"} 30"#,
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        assert!(!text.contains("truncwatch_canary_success"));
        m.canary(false, 5);
        let text = m.encode();
        assert!(
            text.lines()
                .any(|l| l.starts_with("truncwatch_canary_success") && l.ends_with(" 0")),
            "{text}"
        );
    }
}
