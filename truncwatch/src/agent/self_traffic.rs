//! The agent's own traffic, and other truncwatch agents' probes and canaries, told from the
//! host's by identity, never by name: a process chooses its own name, so a server that calls
//! itself `tw-canary` is judged and reported like any other.
//!
//! - Ours: the pid the kernel reports for us (learned from the start-up probe, whose head
//!   carries a random nonce: in a PID namespace of our own, `getpid()` is not that pid). Of
//!   our connections only the canary's server sockets are judged, and their verdicts go to
//!   the canary's check; everything else of ours (the probe, the metrics endpoint, late
//!   canary verdicts) is set aside.
//! - Another agent's (`other_agents`): what it registered (`agent_registry`), its pid and
//!   its canary's addresses (for its start-up probe, a socket pair without a path); a
//!   connection it opened while registered stays its own however late its verdict comes.
//!
//! Everything set aside is counted (`truncwatch_self_traffic_verdicts_total`, by source) and
//! kept out of the output and the verdict metrics.
use crate::agent::agent_registry::Registration;
use crate::agent::other_agents::OtherAgents;
use crate::export::metrics::Metrics;
use crate::judge::correlator::Verdict;
use crate::judge::events::{Event, Side, Transport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What a verdict is to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The host's: printed and counted.
    Host,
    /// About the canary in flight: for its check.
    Canary,
    /// Ours or another agent's probe or canary: counted as such, nothing else.
    SetAside,
}

/// What an event is to the agent, before the correlator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Ours, and not tracked at all (all but the canary's server sockets).
    Untracked,
    /// A connection this agent's canary or another agent's probe or canary opened: tracked
    /// for its verdict, which is then set aside, but nobody's workload (no owner looked up,
    /// no `truncwatch_build_info` series named `tw-canary`).
    AgentsOwn,
    /// Anything else: the host's.
    Host,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    /// `agent` (this one) or `other_agent`.
    source: &'static str,
}

pub struct SelfTraffic {
    /// Our pid as the kernel reports it; None until known (in a PID namespace of our own,
    /// until the start-up probe is seen).
    own_pid: Option<u32>,
    /// A header value only our start-up probe sends.
    nonce: String,
    /// Our probe's socket, from its send until its end of stream.
    probe_sk: Option<u64>,
    /// Kernel time (ns) before our probe's traffic: ours since then at least.
    probe_at: u64,
    probe_done: bool,
    registration: Option<Registration>,
    others: OtherAgents,
    set_aside: Family<Source, Counter>,
}

impl SelfTraffic {
    /// Registers its metric in `metrics`, and this agent in the registry when its pid is known.
    pub fn new(metrics: &mut Metrics) -> Self {
        let set_aside = Family::<Source, Counter>::default();
        for source in ["agent", "other_agent"] {
            set_aside.get_or_create(&Source { source }).inc_by(0);
        }
        metrics.register(
            "truncwatch_self_traffic_verdicts",
            "Verdicts about this agent's own connections (start-up probe, canary, endpoint) or another registered agent's probe and canary, by source: kept out of the output and the other metrics",
            set_aside.clone(),
        );
        let own_pid = in_initial_pid_namespace().then(std::process::id);
        let now = crate::export::output::monotonic_ns();
        SelfTraffic {
            registration: own_pid.and_then(|pid| Registration::create(pid, now)),
            ..Self::unregistered(own_pid, set_aside)
        }
    }

    fn unregistered(own_pid: Option<u32>, set_aside: Family<Source, Counter>) -> Self {
        SelfTraffic {
            own_pid,
            nonce: random_hex(16),
            probe_sk: None,
            probe_at: crate::export::output::monotonic_ns(),
            probe_done: false,
            registration: None,
            others: OtherAgents::default(),
            set_aside,
        }
    }

    /// The response head of our start-up probe: its nonce tells it from any other.
    pub fn probe_head(&self) -> String {
        format!(
            "HTTP/1.1 204 No Content\r\nX-Truncwatch-Probe: {}\r\n\r\n",
            self.nonce
        )
    }

    /// Our probe's send and its end of stream both arrived.
    pub fn probe_done(&self) -> bool {
        self.probe_done
    }

    /// A probe's events were lost (the ring buffer was full: other processes' traffic filled
    /// it before we read it): the next probe's are looked for from its send on.
    pub fn probe_again(&mut self) {
        self.probe_sk = None;
    }

    /// Our pid as the kernel reports it, once known.
    pub fn own_pid(&self) -> Option<u32> {
        self.own_pid
    }

    /// See an event before the correlator: learns our pid from the probe; says what the
    /// event is (`canary`: the addresses of our canary in flight).
    pub fn see(&mut self, ev: &Event, canary: Option<&[String; 2]>) -> Seen {
        match ev {
            Event::Send(s) if !self.probe_done && self.probe_sk.is_none() => {
                let ours = s
                    .head
                    .as_ref()
                    .is_some_and(|h| memchr::memmem::find(h, self.nonce.as_bytes()).is_some());
                // (A tgid of 0 would be the kernel's idle task, never ours.)
                if ours && s.tgid != 0 {
                    self.probe_sk = Some(s.sk);
                    self.learn_pid(s.tgid);
                }
                Seen::Host
            }
            Event::Eof { peer, .. } if Some(*peer) == self.probe_sk => {
                // The kernel reuses socket addresses at once: a later one here is not ours.
                self.probe_sk = None;
                self.probe_done = true;
                Seen::Host
            }
            Event::Open { meta, ts_ns, .. } => {
                if Some(meta.pid) == self.own_pid {
                    let canary_server = meta.transport == Transport::Tcp
                        && meta.side == Side::Server
                        && canary.is_some_and(|c| c.contains(&meta.local));
                    return match canary_server {
                        true => Seen::AgentsOwn,
                        false => Seen::Untracked,
                    };
                }
                match self.others.opened(meta, *ts_ns) {
                    true => Seen::AgentsOwn,
                    false => Seen::Host,
                }
            }
            _ => Seen::Host,
        }
    }

    fn learn_pid(&mut self, pid: u32) {
        if self.own_pid != Some(pid) {
            self.own_pid = Some(pid);
            self.registration = Registration::create(pid, self.probe_at);
        }
    }

    /// What `v` is; what is not the host's is counted here. `canary`: the addresses of the
    /// canary in flight.
    pub fn classify(&mut self, v: &Verdict, canary: Option<&[String; 2]>) -> Class {
        let ours = self.own_pid.is_some_and(|p| v.pid == p || v.meta.pid == p);
        let class = if ours {
            match canary.is_some_and(|c| c.contains(&v.meta.local)) {
                true => Class::Canary,
                false => Class::SetAside,
            }
        } else if self.others.owns(v) {
            self.count("other_agent");
            return Class::SetAside;
        } else {
            return Class::Host;
        };
        self.count("agent");
        class
    }

    /// The canary is about to use `locals` (its server sockets): other agents learn them
    /// before any of its traffic.
    pub fn canary_started(&mut self, locals: &[String; 2]) {
        if let Some(r) = &mut self.registration {
            r.canary(locals);
        }
    }

    fn count(&self, source: &'static str) {
        self.set_aside.get_or_create(&Source { source }).inc();
    }
}

/// Whether we run in the host's (the initial) PID namespace, where `getpid()` is the pid the
/// kernel programs report (its inode is fixed: `PROC_PID_INIT_INO`).
fn in_initial_pid_namespace() -> bool {
    std::fs::read_link("/proc/self/ns/pid").is_ok_and(|l| l.as_os_str() == "pid:[4026531836]")
}

/// `bytes` random bytes (getrandom(2)), in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // SAFETY: a valid buffer of its length. A short or failed read leaves zeros, and the
    // time below still makes the value unique to this agent.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let mut s: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    s += &format!("{:x}", crate::export::output::monotonic_ns());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::events::{ConnMeta, SendFacts};
    use std::sync::Arc;

    fn meta(pid: u32, transport: Transport, local: &str, peer: &str, comm: &str) -> ConnMeta {
        ConnMeta {
            transport,
            pid,
            comm: comm.into(),
            local: local.into(),
            peer: peer.into(),
            tls: false,
            side: Side::Server,
        }
    }

    fn verdict(m: ConnMeta) -> Verdict {
        Verdict {
            kind: crate::judge::correlator::Kind::ShortWrite,
            pid: m.pid,
            meta: Arc::new(m),
            response: None,
            unacked_bytes: None,
            evidence: Default::default(),
            ts_ns: 1,
        }
    }

    /// (Never registered: unit tests leave the host's registry alone.)
    fn traffic(own: Option<u32>) -> SelfTraffic {
        SelfTraffic::unregistered(own, Family::default())
    }

    #[test]
    fn a_name_is_no_identity() {
        let mut t = traffic(Some(100));
        let canary = ["127.0.0.1:7".to_string(), "127.0.0.1:8".to_string()];
        let named = verdict(meta(
            555,
            Transport::Tcp,
            "127.0.0.1:9",
            "127.0.0.1:1",
            "tw-canary",
        ));
        assert_eq!(t.classify(&named, Some(&canary)), Class::Host);
        let unix = verdict(meta(555, Transport::Unix, "", "", "tw-canary"));
        assert_eq!(t.classify(&unix, None), Class::Host);
        // A server of someone else's on an old canary port is the host's too.
        let reused = verdict(meta(555, Transport::Tcp, "127.0.0.1:7", "127.0.0.1:1", "x"));
        assert_eq!(t.classify(&reused, Some(&canary)), Class::Host);
    }

    #[test]
    fn ours_by_pid_and_the_canary_by_its_addresses() {
        let mut t = traffic(Some(100));
        let canary = ["127.0.0.1:7".to_string(), "127.0.0.1:8".to_string()];
        let c = verdict(meta(100, Transport::Tcp, "127.0.0.1:8", "127.0.0.1:2", "x"));
        assert_eq!(t.classify(&c, Some(&canary)), Class::Canary);
        assert_eq!(
            t.classify(&c, None),
            Class::SetAside,
            "late: the canary is done"
        );
        let endpoint = verdict(meta(
            100,
            Transport::Tcp,
            "127.0.0.1:9477",
            "127.0.0.1:3",
            "x",
        ));
        assert_eq!(t.classify(&endpoint, Some(&canary)), Class::SetAside);
        let count = |source| t.set_aside.get_or_create(&Source { source }).get();
        assert_eq!((count("agent"), count("other_agent")), (3, 0));
    }

    #[test]
    fn the_probe_teaches_our_pid_and_our_opens_are_skipped() {
        let mut t = traffic(None);
        let opened = |m: ConnMeta| Event::Open {
            sk: 1,
            ts_ns: 1,
            meta: m,
            losses: 0,
            copied_seq: None,
            peer_fin: false,
            late: false,
        };
        let open =
            |pid, local: &str| opened(meta(pid, Transport::Tcp, local, "127.0.0.1:5", "tw-canary"));
        assert_eq!(
            t.see(&open(4321, "127.0.0.1:80"), None),
            Seen::Host,
            "pid unknown yet"
        );
        let mut head = t.probe_head().into_bytes();
        head.truncate(200);
        let send = |tgid, head: Vec<u8>| {
            Event::Send(SendFacts {
                sk: 77,
                tgid,
                head: Some(head),
                ..SendFacts::default()
            })
        };
        let forged = b"HTTP/1.1 204 No Content\r\nX-Truncwatch-Probe: 00\r\n\r\n";
        assert_eq!(t.see(&send(4321, forged.to_vec()), None), Seen::Host);
        assert_eq!(t.own_pid(), None, "someone else's probe, or a forged one");
        assert_eq!(t.see(&send(4321, head), None), Seen::Host);
        assert_eq!(t.own_pid(), Some(4321));
        let eof = Event::Eof {
            reader: 78,
            peer: 77,
            ts_ns: 2,
            losses: 0,
            events_lost: false,
            read: None,
        };
        assert_eq!(t.see(&eof, None), Seen::Host);
        assert!(t.probe_done());
        assert_eq!(t.see(&open(4321, "127.0.0.1:80"), None), Seen::Untracked);
        let canary = ["127.0.0.1:80".to_string(), "127.0.0.1:81".to_string()];
        // The canary's server sockets: tracked for the canary's check, nobody's workload.
        assert_eq!(
            t.see(&open(4321, "127.0.0.1:80"), Some(&canary)),
            Seen::AgentsOwn
        );
        let unix = opened(meta(4321, Transport::Unix, "127.0.0.1:80", "", "x"));
        assert_eq!(
            t.see(&unix, Some(&canary)),
            Seen::Untracked,
            "only its TCP servers"
        );
        assert_eq!(
            t.see(&open(1, "127.0.0.1:80"), None),
            Seen::Host,
            "not ours"
        );
    }
}
