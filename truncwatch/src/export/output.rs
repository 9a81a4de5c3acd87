//! Verdicts as text: one human line, or one JSON object per line (`--format json`).
//!
//! The JSON fields are a contract scripts depend on: extend, never rename.
//!
//! Every string another process controls (its name, socket path, container, pod, image) is
//! escaped in the human line (`escape`): a newline in it must not start a forged line. JSON
//! escapes on its own (`serde_json`).
use crate::escape::escape;
use crate::export::line_budget::Suppressed;
use crate::judge::correlator::{Evidence, Verdict};
use crate::judge::events::{Side, Transport};
use crate::owner::attribution::Attribution;
use serde::Serialize;
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Turns kernel monotonic timestamps (`bpf_ktime_get_ns`) into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    boot: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        Clock {
            boot: SystemTime::now() - Duration::from_nanos(mono),
        }
    }
    #[cfg(test)]
    pub fn fixed(boot: SystemTime) -> Self {
        Clock { boot }
    }
    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ts_ns)
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Serialize)]
struct JsonVerdict<'a> {
    verdict: &'static str,
    /// Where the response was watched from: `server` (sent) or `client` (received).
    side: Side,
    transport: Transport,
    /// A TLS connection, judged from the TLS library's plaintext (byte counts are plaintext).
    tls: bool,
    pid: u32,
    comm: &'a str,
    local: &'a str,
    peer: &'a str,
    status: Option<u16>,
    content_length: Option<u64>,
    chunked: bool,
    expected_bytes: Option<u64>,
    /// Server side: bytes of the response the application handed the kernel, and of those,
    /// the bytes that reached the client. Null on the client side.
    sent_bytes: Option<u64>,
    missing_bytes: Option<u64>,
    delivered_bytes: Option<u64>,
    /// Client side: bytes of the response the client application read. Null on the server side.
    received_bytes: Option<u64>,
    unacked_bytes: Option<u64>,
    evidence: &'a Evidence,
    /// Who the process is: its cgroup, and the container and Kubernetes pod it runs in.
    cgroup: Option<&'a str>,
    container_id: Option<&'a str>,
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    container: Option<&'a str>,
    /// Which build the process runs: the executable as it sees it, its GNU build-id (hex) or
    /// `sha256:<hex>` of its content, and its container's image reference and digest.
    exe: Option<&'a str>,
    build_id: Option<&'a str>,
    image: Option<&'a str>,
    image_id: Option<&'a str>,
    ts: String,
}

pub fn format(v: &Verdict, owner: &Attribution, fmt: Format, clock: &Clock) -> String {
    let ts = humantime::format_rfc3339_micros(clock.wall(v.ts_ns)).to_string();
    match fmt {
        Format::Json => json(v, owner, ts),
        Format::Human => human(v, owner, ts),
    }
}

fn json(v: &Verdict, owner: &Attribution, ts: String) -> String {
    let r = v.response.as_ref();
    let client = v.meta.side == Side::Client;
    let j = JsonVerdict {
        verdict: v.kind.as_str(),
        side: v.meta.side,
        transport: v.meta.transport,
        tls: v.meta.tls,
        pid: v.pid,
        comm: &v.meta.comm,
        local: &v.meta.local,
        peer: &v.meta.peer,
        status: r.map(|r| r.status),
        content_length: r.and_then(|r| r.content_length),
        chunked: r.is_some_and(|r| r.chunked),
        expected_bytes: r.and_then(|r| r.expected_bytes),
        sent_bytes: r.filter(|_| !client).map(|r| r.sent_bytes),
        missing_bytes: r.and_then(|r| r.missing_bytes()),
        delivered_bytes: r.filter(|_| !client).map(|r| r.delivered_bytes),
        received_bytes: r.filter(|_| client).map(|r| r.sent_bytes),
        unacked_bytes: v.unacked_bytes,
        evidence: &v.evidence,
        cgroup: owner.cgroup.as_deref(),
        container_id: owner.container_id.as_deref(),
        namespace: owner.namespace.as_deref(),
        pod: owner.pod.as_deref(),
        container: owner.container.as_deref(),
        exe: owner.exe.as_deref(),
        build_id: owner.build_id.as_deref(),
        image: owner.image.image.as_deref(),
        image_id: owner.image.image_id.as_deref(),
        ts,
    };
    serde_json::to_string(&j).expect("verdicts always serialize")
}

/// The summary of one owner's verdict lines not printed (`line_budget`): a JSON object of
/// its own shape (no `verdict` field: scripts counting verdicts by line do not count it), or a
/// human line beginning like a verdict's.
pub fn suppressed(s: &Suppressed, per_second: u32, fmt: Format, now: SystemTime) -> String {
    let ts = humantime::format_rfc3339_micros(now).to_string();
    let o = &s.owner;
    match fmt {
        Format::Json => serde_json::json!({
            "suppressed_lines": s.count,
            "seconds": (s.seconds * 10.0).round() / 10.0,
            "suppressed_verdict": o.kind.as_str(),
            "side": o.side,
            "comm": o.comm,
            "container_id": o.container_id,
            "max_lines_per_second": per_second,
            "ts": ts,
        })
        .to_string(),
        Format::Human => format!(
            "{ts} suppressed  {} {} lines ({} side) of comm={}{} in the last {:.1} s: over {per_second} a second (--max-lines-per-second); all are counted in the metrics",
            s.count,
            o.kind.as_str(),
            o.side.as_str(),
            escape(&o.comm),
            o.container_id
                .as_deref()
                .map(|c| format!(" container_id={}", escape(c)))
                .unwrap_or_default(),
            s.seconds,
        ),
    }
}

fn human(v: &Verdict, owner: &Attribution, ts: String) -> String {
    let e = &v.evidence;
    let client = v.meta.side == Side::Client;
    // The arrow points the way the response went.
    let arrow = match v.meta.side {
        Side::Server => "<-",
        Side::Client => "->",
    };
    let peer = if v.meta.peer.is_empty() {
        String::new()
    } else {
        format!(" {arrow} {}", escape(&v.meta.peer))
    };
    let transport = match (v.meta.transport, v.meta.tls) {
        (Transport::Tcp, true) => "tcp+tls",
        (t, _) => t.as_str(),
    };
    let mut line = format!(
        "{ts} {:<11} {transport} {}{peer} pid={} comm={}",
        v.kind.as_str(),
        escape(&v.meta.local),
        v.pid,
        escape(&v.meta.comm)
    );
    if let Some(r) = &v.response {
        let or_unknown = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
        line += &format!(
            " status={} {}={}/{} missing={}",
            r.status,
            if client { "received" } else { "sent" },
            r.sent_bytes,
            or_unknown(r.expected_bytes),
            or_unknown(r.missing_bytes())
        );
        if r.delivered_bytes != r.sent_bytes {
            line += &format!(" delivered={}", r.delivered_bytes);
        }
        if r.chunked {
            line += " chunked";
        }
    }
    if let Some(n) = v.unacked_bytes {
        line += &format!(" unacked={n} unread={}", e.unread_bytes.unwrap_or(0));
    }
    if e.send_buffer_full {
        line += &format!(
            " send_buffer_full(eagain={} partial={})",
            e.eagain, e.partial_sends
        );
    }
    if let Some(p) = e.peer_ended {
        line += &format!(" peer_ended={}", p.as_str());
    }
    match (&owner.namespace, &owner.pod, &owner.container_id) {
        (Some(ns), Some(pod), _) => line += &format!(" pod={}/{}", escape(ns), escape(pod)),
        (_, _, Some(id)) => line += &format!(" container={}", escape(short_id(id))),
        _ => {}
    }
    if let Some(image) = &owner.image.image {
        line += &format!(" image={}", escape(image));
    }
    if let Some(id) = &owner.build_id {
        // Enough to tell builds apart at a glance; the JSON line has all of it.
        let short = id.strip_prefix("sha256:").unwrap_or(id);
        line += &format!(" build={}", escape(prefix(short, 12)));
    }
    line
}

/// The first `n` characters of `s` (a byte slice could end inside a character: ids come from
/// names other processes chose).
fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// A container id as people write it: its first 12 characters (what `docker ps` shows).
pub fn short_id(id: &str) -> &str {
    prefix(id, 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::correlator::{End, Kind, ResponseFacts};
    use crate::judge::events::ConnMeta;

    fn verdict() -> Verdict {
        Verdict {
            kind: Kind::ShortWrite,
            meta: std::sync::Arc::new(ConnMeta {
                transport: Transport::Unix,
                pid: 9,
                comm: "hyper".into(),
                local: "/run/app.sock".into(),
                peer: String::new(),
                tls: false,
                side: crate::judge::events::Side::Server,
            }),
            pid: 9,
            response: Some(ResponseFacts {
                status: 200,
                content_length: Some(1000),
                chunked: false,
                expected_bytes: Some(1100),
                sent_bytes: 600,
                delivered_bytes: 600,
            }),
            unacked_bytes: None,
            evidence: Evidence {
                eagain: 2,
                partial_sends: 1,
                send_buffer_full: true,
                peer_ended: None,
                end: Some(End::Eof),
                ..Evidence::default()
            },
            ts_ns: 1_500_000,
        }
    }

    /// `verdict()` with this owner, as its JSON line reads back.
    fn json(owner: &Attribution) -> serde_json::Value {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        serde_json::from_str(&format(&verdict(), owner, Format::Json, &clock)).unwrap()
    }

    #[test]
    fn json_contract_fields() {
        let j = json(&Attribution::default());
        assert_eq!(j["verdict"], "short_write");
        assert_eq!(j["pod"], serde_json::Value::Null);
        assert_eq!(j["transport"], "unix");
        assert_eq!(j["pid"], 9);
        assert_eq!(j["comm"], "hyper");
        assert_eq!(j["local"], "/run/app.sock");
        assert_eq!(j["peer"], "");
        assert_eq!(j["status"], 200);
        assert_eq!(j["content_length"], 1000);
        assert_eq!(j["chunked"], false);
        assert_eq!(j["expected_bytes"], 1100);
        assert_eq!(j["sent_bytes"], 600);
        assert_eq!(j["missing_bytes"], 500);
        assert_eq!(j["delivered_bytes"], 600);
        assert_eq!(j["evidence"]["eagain"], 2);
        assert_eq!(j["evidence"]["send_buffer_full"], true);
        assert_eq!(j["evidence"]["end"], "eof");
        assert_eq!(j["ts"], "1970-01-01T00:00:00.001500Z");
        assert_eq!(j["unacked_bytes"], serde_json::Value::Null);
    }

    #[test]
    fn connection_level_verdicts_have_null_response_fields() {
        let mut v = verdict();
        v.kind = Kind::ResetDiscard;
        v.response = None;
        v.unacked_bytes = Some(77);
        v.evidence = Evidence {
            end: Some(End::Reset),
            unread_bytes: Some(30),
            ..Evidence::default()
        };
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let j: serde_json::Value =
            serde_json::from_str(&format(&v, &Attribution::default(), Format::Json, &clock))
                .unwrap();
        assert_eq!(j["verdict"], "reset_discard");
        for f in [
            "status",
            "content_length",
            "expected_bytes",
            "sent_bytes",
            "missing_bytes",
            "delivered_bytes",
        ] {
            assert_eq!(j[f], serde_json::Value::Null, "{f}");
        }
        assert_eq!(j["chunked"], false);
        assert_eq!(j["unacked_bytes"], 77);
        assert_eq!(j["evidence"]["unread_bytes"], 30);
        let l = format(&v, &Attribution::default(), Format::Human, &clock);
        assert!(
            l.contains("reset_discard unix /run/app.sock pid=9 comm=hyper unacked=77 unread=30"),
            "{l}"
        );
    }

    #[test]
    fn attribution_fields() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let owner = Attribution {
            cgroup: Some("/kubepods/pod1/abc".into()),
            container_id: Some("abc".into()),
            namespace: Some("shop".into()),
            pod: Some("web-1".into()),
            container: Some("app".into()),
            ..Attribution::default()
        };
        let j = json(&owner);
        assert_eq!(
            (
                j["namespace"].as_str(),
                j["pod"].as_str(),
                j["container"].as_str()
            ),
            (Some("shop"), Some("web-1"), Some("app"))
        );
        assert_eq!(
            (j["cgroup"].as_str(), j["container_id"].as_str()),
            (Some("/kubepods/pod1/abc"), Some("abc"))
        );
        assert!(format(&verdict(), &owner, Format::Human, &clock).ends_with(" pod=shop/web-1"));
    }

    #[test]
    fn build_fields() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let owner = Attribution {
            exe: Some("/srv/shop-api".into()),
            build_id: Some("0123456789abcdef0011223344556677deadbeef".into()),
            image: crate::owner::container_image::Image {
                image: Some("shop/api:1.4.2".into()),
                image_id: Some("sha256:98bd".into()),
            },
            ..Attribution::default()
        };
        let j = json(&owner);
        assert_eq!(
            ["exe", "build_id", "image", "image_id"].map(|k| j[k].as_str()),
            [
                Some("/srv/shop-api"),
                Some("0123456789abcdef0011223344556677deadbeef"),
                Some("shop/api:1.4.2"),
                Some("sha256:98bd")
            ]
        );
        let human = format(&verdict(), &owner, Format::Human, &clock);
        assert!(
            human.ends_with(" image=shop/api:1.4.2 build=0123456789ab"),
            "{human}"
        );
        // Unknown: null, never a guess.
        let j = json(&Attribution::default());
        assert!(j["build_id"].is_null() && j["exe"].is_null() && j["image"].is_null());
    }

    /// Issue 26: an owner's lines past its rate are one summary, which no script counting
    /// verdicts takes for one, and whose name cannot forge a line.
    #[test]
    fn a_summary_of_suppressed_lines_is_no_verdict() {
        let s = Suppressed {
            owner: crate::export::line_budget::Owner {
                side: Side::Server,
                kind: Kind::ShortWrite,
                comm: "ev\nil".into(),
                container_id: Some("abc".into()),
            },
            count: 874_000,
            seconds: 1.04,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let j: serde_json::Value =
            serde_json::from_str(&suppressed(&s, 100, Format::Json, now)).unwrap();
        assert_eq!(j["suppressed_lines"], 874_000);
        assert_eq!(j["suppressed_verdict"], "short_write");
        assert_eq!(
            (&j["side"], &j["comm"]),
            (&"server".into(), &"ev\nil".into())
        );
        assert_eq!(j["seconds"], 1.0);
        assert!(j.get("verdict").is_none());
        let h = suppressed(&s, 100, Format::Human, now);
        assert_eq!(
            h,
            "2027-01-15T08:00:00.000000Z suppressed  874000 short_write lines (server side) of comm=ev\\nil container_id=abc in the last 1.0 s: over 100 a second (--max-lines-per-second); all are counted in the metrics"
        );
    }

    /// Issue 26: a process's name, an abstract socket name, its pod and image are printed
    /// escaped: no newline, carriage return or terminal escape reaches the human line.
    #[test]
    fn hostile_names_cannot_forge_a_human_line() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let forged = "\n2026-12-07T13:00:00.000000Z short_write tcp 10.1.2.3:443 <- 10.9.9.9:5 pid=1 comm=nginx status=200";
        let mut v = verdict();
        v.meta = std::sync::Arc::new(ConnMeta {
            comm: "evil\nx\r\u{1b}[2K".into(),
            local: format!("@sock{forged}"),
            ..(*v.meta).clone()
        });
        let owner = Attribution {
            namespace: Some("ns\n".into()),
            pod: Some("p\u{1b}]0;t\u{7}".into()),
            image: crate::owner::container_image::Image {
                image: Some(format!("img{forged}")),
                image_id: None,
            },
            // Multi-byte characters where the line shows a 12-character prefix.
            build_id: Some("é\n".repeat(20).into()),
            ..Attribution::default()
        };
        let l = format(&v, &owner, Format::Human, &clock);
        assert!(
            !l.chars().any(|c| c.is_control()),
            "a control character in {l:?}"
        );
        for want in [
            "comm=evil\\nx\\r\\u{1b}[2K",
            "unix @sock\\n2026-12-07T13:00:00.000000Z short_write",
            "pod=ns\\n/p\\u{1b}]0;t\\u{7}",
            "image=img\\n2026-12-07",
            "build=é\\né\\né\\né\\né\\né\\n",
        ] {
            assert!(l.contains(want), "{want:?} not in {l:?}");
        }
        // A container id cut to 12 characters, never inside one.
        let id = Attribution {
            container_id: Some("ü".repeat(40)),
            ..Attribution::default()
        };
        let l = format(&v, &id, Format::Human, &clock);
        assert!(
            l.ends_with(&format!(" container={}", "ü".repeat(12))),
            "{l}"
        );
    }

    /// JSON and the Prometheus text escape on their own: the same hostile names stay one
    /// line (JSON reads back the exact bytes) and one series each.
    #[test]
    fn json_and_prometheus_escape_on_their_own() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let comm = "evil\n# forged\r\u{1b}[2K\"q\\";
        let mut v = verdict();
        v.meta = std::sync::Arc::new(ConnMeta {
            comm: comm.into(),
            local: "@s\ntruncwatch_responses_total{verdict=\"complete\"} 99".into(),
            ..(*v.meta).clone()
        });
        let line = format(&v, &Attribution::default(), Format::Json, &clock);
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{1b}'));
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (j["comm"].as_str(), j["local"].as_str()),
            (Some(comm), Some(&*v.meta.local))
        );
        let mut m = crate::export::metrics::Metrics::new(10, 10, "tracepoint");
        m.verdict(&v, &Attribution::default());
        let text = m.encode();
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("truncwatch_")),
            "a line that is no series:\n{text}"
        );
        let ours: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("truncwatch_responses_total{"))
            .collect();
        assert_eq!(ours.len(), 1, "{text}");
        assert!(
            ours[0].contains(r#"process="evil\n# forged"#),
            "{}",
            ours[0]
        );
    }

    #[test]
    fn human_line() {
        let clock = Clock::fixed(SystemTime::UNIX_EPOCH);
        let l = format(&verdict(), &Attribution::default(), Format::Human, &clock);
        assert!(l.contains("short_write unix /run/app.sock pid=9 comm=hyper status=200 sent=600/1100 missing=500 send_buffer_full(eagain=2 partial=1)"), "{l}");
    }
}
