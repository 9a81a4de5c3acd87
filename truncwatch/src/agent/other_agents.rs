//! Other truncwatch agents' start-up probes and canaries, set aside by what they registered
//! (`agent_registry`): their pid, and their canary's addresses (or, for a probe, a socket pair
//! without a path). A connection one of them opens is remembered as theirs while they live, so
//! that its verdict is set aside however late it comes (a response may wait a minute after its
//! FIN to be judged); a verdict about a connection not seen opening (a reset, which needs
//! none) is matched against the registry at its own time.
use crate::agent::agent_registry::{Entry, Peers};
use crate::judge::correlator::Verdict;
use crate::judge::events::{ConnMeta, Transport};
use std::collections::VecDeque;

/// Connections remembered at most (a probe and a canary make five).
const MAX_CONNS: usize = 64;

#[derive(Default)]
pub struct OtherAgents {
    peers: Peers,
    /// Connections a registered agent opened: (pid, local, peer).
    conns: VecDeque<(u32, String, String)>,
    /// When the registry was last read (kernel monotonic ns): it is read again only for an
    /// event after that, so at most once per batch of events.
    read_at: u64,
}

impl OtherAgents {
    /// A connection was opened at kernel time `ts_ns`: remembered if a registered agent's
    /// (and then true).
    pub fn opened(&mut self, meta: &ConnMeta, ts_ns: u64) -> bool {
        if !(could_be_an_agents(meta) && self.registered(meta.pid, ts_ns, meta)) {
            return false;
        }
        if self.conns.len() == MAX_CONNS {
            self.conns.pop_front();
        }
        let key = (meta.pid, meta.local.clone(), meta.peer.clone());
        self.conns.push_back(key);
        true
    }

    /// Whether `v` is about another agent's probe or canary.
    pub fn owns(&mut self, v: &Verdict) -> bool {
        let m = &v.meta;
        if !could_be_an_agents(m) {
            return false;
        }
        let seen = |(pid, local, peer): &(u32, String, String)| {
            *pid == m.pid && *local == m.local && *peer == m.peer
        };
        self.conns.iter().any(seen)
            || self.registered(v.pid, v.ts_ns, m)
            || self.registered(m.pid, v.ts_ns, m)
    }

    /// Whether `pid` was a registered agent at `ts_ns` whose probe or canary `m` is; the
    /// registry is read again if it was last read before `ts_ns`.
    fn registered(&mut self, pid: u32, ts_ns: u64, m: &ConnMeta) -> bool {
        if !self.peers.at(pid, ts_ns).is_some_and(|e| covers(e, m)) {
            if ts_ns <= self.read_at {
                return false;
            }
            self.read_at = crate::export::output::monotonic_ns();
            self.peers.reload();
        }
        self.peers.at(pid, ts_ns).is_some_and(|e| covers(e, m))
    }
}

/// A socket pair without a path (a start-up probe), or a loopback TCP connection (a canary).
fn could_be_an_agents(m: &ConnMeta) -> bool {
    match m.transport {
        Transport::Unix => m.local.is_empty() && m.peer.is_empty(),
        Transport::Tcp => [&m.local, &m.peer]
            .iter()
            .any(|a| a.starts_with("127.") || a.starts_with("[::1]")),
    }
}

/// `m` is the registered agent's probe (a socket pair: `could_be_an_agents`) or canary.
fn covers(e: &Entry, m: &ConnMeta) -> bool {
    match m.transport {
        Transport::Unix => true,
        Transport::Tcp => e.locals.iter().any(|l| *l == m.local || *l == m.peer),
    }
}
