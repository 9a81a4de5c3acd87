//! The built-in canary (`truncwatch selftest`, and `--canary-interval` in the agent): on
//! loopback, a server of our own makes one short write to a client that is not reading yet,
//! and one reset discard (close with unread input while its bytes are still unacknowledged).
//! The detector must flag both with the right byte counts, or it is not working on this host.
//!
//! `Canary::traffic` makes it (blocking) and returns what really happened; `check` (pure)
//! compares that with the verdicts the agent produced for the canary's addresses. `Runs` is
//! the agent's side: one run at a time, and no error on its path ends the agent (a run that
//! cannot make its traffic is counted and said once).
use crate::export::metrics::Metrics;
use crate::judge::correlator::{Kind, Verdict};
use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The short write promises this much body; far more than loopback buffers hold.
const PROMISED: u64 = 64 << 20;
/// Bytes the reset connection's client sends and the server never reads.
const UNREAD: usize = 100;
const HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 67108864\r\n\r\n";

/// The canary's traffic (and the agent's start-up probe) runs on a thread of this name, for
/// people: an agent that does not know this one (no shared registry) reports that traffic
/// under this name. Never trusted: any process may call itself so. Agents tell their own
/// traffic and each other's by identity (`self_traffic`, `agent_registry`).
pub const THREAD: &str = "tw-canary";

/// The canary's traffic under way: what really happened arrives here (closed without a value:
/// its thread panicked).
pub type Traffic = tokio::sync::oneshot::Receiver<Result<Truth>>;

/// How long the canary's verdicts may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

/// How a canary run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both verdicts seen, with the right counts.
    Passed,
    /// The traffic was made, and the detector did not see it right: readiness goes.
    Failed,
    /// The traffic could not be made (no descriptor, no port, no thread): says nothing about
    /// the detector; counted, said once on stderr, readiness unchanged.
    CouldNotRun,
}

/// The agent's canary runs: the one in flight, and how the last one ended.
pub struct Runs {
    run: Option<Run>,
    /// Whether the last run that made its traffic passed (None before the first).
    passed: Option<bool>,
    errors: Counter,
    said_error: bool,
}

/// A canary in flight: its addresses, and (once its traffic is done) what really happened.
struct Run {
    locals: [String; 2],
    truth: Option<Result<Truth, String>>,
    got: Vec<Verdict>,
    started: Instant,
}

impl Runs {
    /// Registers `truncwatch_canary_errors_total` in `metrics`.
    pub fn new(metrics: &mut Metrics) -> Self {
        let errors = Counter::default();
        metrics.register(
            "truncwatch_canary_errors",
            "Canary runs that could not make their traffic (a port, a descriptor or a thread refused): no verdict on the detector",
            errors.clone(),
        );
        Runs {
            run: None,
            passed: None,
            errors,
            said_error: false,
        }
    }

    /// No canary in flight.
    pub fn idle(&self) -> bool {
        self.run.is_none()
    }

    /// The local addresses of the canary in flight (its server sockets).
    pub fn locals(&self) -> Option<&[String; 2]> {
        self.run.as_ref().map(|r| &r.locals)
    }

    /// Whether the last canary that made its traffic passed (None before the first).
    pub fn passed(&self) -> Option<bool> {
        self.passed
    }

    /// Bind the canary's sockets, tell `announce` their addresses (before any traffic), and
    /// make the traffic on a thread named [`THREAD`], whose result arrives on the returned
    /// channel. None if it cannot start: counted, said once.
    pub fn start(&mut self, announce: impl FnOnce(&[String; 2])) -> Option<Traffic> {
        let c = match Canary::bind().and_then(|c| Ok((c.locals()?, c))) {
            Ok((locals, c)) => {
                announce(&locals);
                self.run = Some(Run {
                    locals,
                    truth: None,
                    got: Vec::new(),
                    started: Instant::now(),
                });
                c
            }
            Err(e) => {
                self.could_not_run(&format!("{e:#}"));
                return None;
            }
        };
        // A thread of our own, not tokio's blocking pool: that one panics when the system
        // refuses a thread, and this must only count as a canary that could not run.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || tx.send(c.traffic()));
        if let Err(e) = spawned {
            self.run = None;
            self.could_not_run(&format!("canary: starting its thread: {e}"));
            return None;
        }
        Some(rx)
    }

    /// The canary's traffic is done (or failed, or its thread panicked).
    pub fn traffic(&mut self, truth: Result<Truth>) {
        if let Some(r) = &mut self.run {
            r.truth = Some(truth.map_err(|e| format!("{e:#}")));
        }
    }

    /// A verdict about the canary in flight.
    pub fn verdict(&mut self, v: Verdict) {
        if let Some(r) = &mut self.run {
            r.got.push(v);
        }
    }

    /// If the canary in flight is decided: record it (stderr, `metrics`) and say how it ended.
    pub fn done(&mut self, metrics: &mut Metrics) -> Option<Outcome> {
        let r = self.run.as_ref()?;
        let result = match r.truth.as_ref()? {
            Err(e) => Err(e.clone()),
            Ok(t) => Ok(match check(t, &r.got) {
                Err(_) if r.started.elapsed() < WAIT => return None, // not all arrived yet
                checked => checked,
            }),
        };
        self.run = None;
        let passed = match result {
            Err(e) => {
                self.could_not_run(&format!("making its traffic: {e}"));
                return Some(Outcome::CouldNotRun);
            }
            Ok(Ok(summary)) => {
                eprintln!("truncwatch: canary passed: {summary}");
                true
            }
            Ok(Err(why)) => {
                eprintln!("truncwatch: canary FAILED: {why}");
                false
            }
        };
        self.passed = Some(passed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        metrics.canary(passed, now);
        Some(if passed {
            Outcome::Passed
        } else {
            Outcome::Failed
        })
    }

    fn could_not_run(&mut self, why: &str) {
        self.errors.inc();
        if !std::mem::replace(&mut self.said_error, true) {
            eprintln!(
                "truncwatch: canary could not run: {why} (the agent keeps judging; later runs that cannot are only counted, in truncwatch_canary_errors_total)"
            );
        }
    }
}

/// The canary's two server sockets, bound before any traffic so that their verdicts can be
/// told apart from the host's as soon as they arrive.
pub struct Canary {
    short: TcpListener,
    reset: TcpListener,
}

/// What really happened, from both ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub short_local: String,
    pub reset_local: String,
    /// Bytes of the cut response the kernel accepted from the server, and the client received.
    pub short_sent: u64,
    pub short_received: u64,
    /// Bytes the reset connection's server handed the kernel before closing.
    pub reset_sent: u64,
}

impl Canary {
    pub fn bind() -> Result<Self> {
        let bind = || TcpListener::bind("127.0.0.1:0").context("canary: binding a loopback port");
        Ok(Canary {
            short: bind()?,
            reset: bind()?,
        })
    }

    /// The `local` addresses its verdicts will carry.
    pub fn locals(&self) -> Result<[String; 2]> {
        Ok([
            self.short.local_addr()?.to_string(),
            self.reset.local_addr()?.to_string(),
        ])
    }

    /// Make the traffic (blocking; well under a second).
    fn traffic(self) -> Result<Truth> {
        let [short_local, reset_local] = self.locals()?;
        let (short_sent, short_received) = short_write(&self.short)?;
        let reset_sent = reset_discard(&self.reset)?;
        Ok(Truth {
            short_local,
            reset_local,
            short_sent,
            short_received,
            reset_sent,
        })
    }
}

/// hyper#4022 in miniature: write without blocking until the kernel refuses, then close.
fn short_write(l: &TcpListener) -> Result<(u64, u64)> {
    let mut client = TcpStream::connect(l.local_addr()?)?;
    let (server, _) = l.accept()?;
    let sent = fill(&server, HEAD.as_bytes())?;
    drop(server);
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    loop {
        match client.read(&mut buf)? {
            0 => break,
            n => received += n as u64,
        }
    }
    Ok((sent, received))
}

/// Fill the connection without reading it, let input arrive that the server never reads, and
/// close: Linux resets, and drops what the client has not acknowledged.
fn reset_discard(l: &TcpListener) -> Result<u64> {
    let mut client = TcpStream::connect(l.local_addr()?)?;
    let (server, _) = l.accept()?;
    let sent = fill(&server, b"")?;
    client.write_all(&[b'?'; UNREAD])?;
    // Until the input is queued on the server's side.
    let start = std::time::Instant::now();
    while unread(&server) < UNREAD && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(server);
    Ok(sent)
}

/// Write `first`, then zeros, without blocking, until the kernel refuses (EAGAIN) or the
/// promised length is reached. Returns the bytes accepted.
fn fill(s: &TcpStream, first: &[u8]) -> Result<u64> {
    s.set_nonblocking(true)?;
    let zeros = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    let mut w = s;
    if !first.is_empty() {
        w.write_all(first)
            .context("canary: the head did not fit an empty send buffer")?;
        sent += first.len() as u64;
    }
    while sent < PROMISED {
        match w.write(&zeros) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(sent),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("canary: loopback took {PROMISED} bytes without filling up")
}

/// Bytes queued for reading on `s` (FIONREAD).
fn unread(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: valid fd and out pointer.
    unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    n.max(0) as usize
}

/// Did the detector see the canary right? `Ok` with a one-line summary, or `Err` with what is
/// missing or wrong. `verdicts`: everything the agent produced for the canary's addresses.
pub fn check(t: &Truth, verdicts: &[Verdict]) -> Result<String, String> {
    let short = verdicts
        .iter()
        .find(|v| v.meta.local == t.short_local && v.kind == Kind::ShortWrite);
    let reset = verdicts
        .iter()
        .find(|v| v.meta.local == t.reset_local && v.kind == Kind::ResetDiscard);
    let short = short.ok_or_else(|| {
        format!(
            "no short_write verdict for the canary's cut response ({} of {} bytes sent)",
            t.short_sent,
            HEAD.len() as u64 + PROMISED
        )
    })?;
    let r = short
        .response
        .as_ref()
        .ok_or("short_write without response facts")?;
    if r.sent_bytes != t.short_sent || r.sent_bytes != t.short_received {
        return Err(format!(
            "short_write counted {} bytes; the server sent {}, the client received {}",
            r.sent_bytes, t.short_sent, t.short_received
        ));
    }
    if r.expected_bytes != Some(HEAD.len() as u64 + PROMISED) {
        return Err(format!(
            "short_write expected {:?} bytes, the head promised {}",
            r.expected_bytes,
            HEAD.len() as u64 + PROMISED
        ));
    }
    let reset = reset.ok_or("no reset_discard verdict for the canary's reset connection")?;
    let unacked = reset.unacked_bytes.unwrap_or(0);
    if unacked == 0 || unacked > t.reset_sent {
        return Err(format!(
            "reset_discard with {unacked} unacknowledged bytes; the server had sent {}",
            t.reset_sent
        ));
    }
    if reset.evidence.unread_bytes != Some(UNREAD as u64) {
        return Err(format!(
            "reset_discard saw {:?} unread bytes; the client sent {UNREAD}",
            reset.evidence.unread_bytes
        ));
    }
    Ok(format!(
        "short_write of {} bytes seen exactly; reset_discard of {unacked} unacknowledged bytes seen",
        r.sent_bytes
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::correlator::{Evidence, ResponseFacts};
    use crate::judge::events::{ConnMeta, Transport};
    use std::sync::Arc;

    fn truth() -> Truth {
        Truth {
            short_local: "127.0.0.1:1".into(),
            reset_local: "127.0.0.1:2".into(),
            short_sent: 5000,
            short_received: 5000,
            reset_sent: 9000,
        }
    }

    fn v(local: &str, kind: Kind, sent: u64, unacked: Option<u64>, unread: Option<u64>) -> Verdict {
        let meta = ConnMeta {
            transport: Transport::Tcp,
            pid: 1,
            comm: "c".into(),
            local: local.into(),
            peer: String::new(),
            tls: false,
            side: crate::judge::events::Side::Server,
        };
        let response = (kind != Kind::ResetDiscard).then(|| ResponseFacts {
            status: 200,
            content_length: Some(PROMISED),
            chunked: false,
            expected_bytes: Some(HEAD.len() as u64 + PROMISED),
            sent_bytes: sent,
            delivered_bytes: sent,
        });
        Verdict {
            kind,
            meta: Arc::new(meta),
            pid: 1,
            response,
            unacked_bytes: unacked,
            evidence: Evidence {
                unread_bytes: unread,
                ..Evidence::default()
            },
            ts_ns: 0,
        }
    }

    #[test]
    fn passes_only_with_both_verdicts_and_right_counts() {
        let t = truth();
        let good = [
            v("127.0.0.1:1", Kind::ShortWrite, 5000, None, None),
            v("127.0.0.1:2", Kind::ResetDiscard, 0, Some(4000), Some(100)),
        ];
        assert!(check(&t, &good).is_ok());
        assert!(check(&t, &good[..1]).unwrap_err().contains("reset_discard"));
        assert!(check(&t, &good[1..]).unwrap_err().contains("short_write"));
        let wrong_bytes = [
            v("127.0.0.1:1", Kind::ShortWrite, 4999, None, None),
            good[1].clone(),
        ];
        assert!(check(&t, &wrong_bytes).unwrap_err().contains("4999"));
        let no_unacked = [
            good[0].clone(),
            v("127.0.0.1:2", Kind::ResetDiscard, 0, Some(0), Some(100)),
        ];
        assert!(check(&t, &no_unacked).is_err());
        let wrong_unread = [
            good[0].clone(),
            v("127.0.0.1:2", Kind::ResetDiscard, 0, Some(10), Some(7)),
        ];
        assert!(check(&t, &wrong_unread).is_err());
        let swapped = [
            v("127.0.0.1:2", Kind::ShortWrite, 5000, None, None),
            v("127.0.0.1:1", Kind::ResetDiscard, 0, Some(4000), Some(100)),
        ];
        assert!(
            check(&t, &swapped).is_err(),
            "verdicts must be for the right connection"
        );
    }

    /// A run that could not make its traffic is counted (said once on stderr), decides no
    /// readiness, and the next run may start.
    #[test]
    fn a_canary_that_cannot_run_is_counted_and_leaves_readiness_alone() {
        let mut m = Metrics::new(10, 10, "tracepoint");
        let mut runs = Runs::new(&mut m);
        for _ in 0..2 {
            runs.run = Some(Run {
                locals: ["127.0.0.1:1".into(), "127.0.0.1:2".into()],
                truth: Some(Err("binding a loopback port: Too many open files".into())),
                got: Vec::new(),
                started: Instant::now(),
            });
            assert_eq!(runs.done(&mut m), Some(Outcome::CouldNotRun));
            assert!(runs.idle());
        }
        assert_eq!(runs.passed(), None);
        assert!(runs.said_error);
        let text = m.encode();
        assert!(text.contains("truncwatch_canary_errors_total 2"), "{text}");
        assert!(!text.contains("truncwatch_canary_success"), "{text}");
    }

    #[test]
    fn the_traffic_is_what_it_reports() {
        let t = Canary::bind().unwrap().traffic().unwrap();
        assert_eq!(t.short_sent, t.short_received);
        assert!(t.short_sent > HEAD.len() as u64 && t.short_sent < PROMISED);
        assert!(t.reset_sent > 0);
    }
}
