//! The correlator: kernel events in, per-response verdicts out. No I/O, no clocks.
//!
//! It thinks in stream offsets. Per server connection it keeps the bytes the application has
//! handed the kernel so far and the response in flight: where its head started, how long the
//! head is and what body it promised. A response whose promised bytes were all handed over
//! waits, settling, until its delivery is settled: the next response's head (the next request
//! was read), or the end of the stream. If the stream ends first, the shortfall, or what a reset
//! dropped, is the verdict; one verdict per response.
//!
//! A client's connection (`Side::Client`) is the same stream seen from the other end: its
//! "sends" are the bytes the client read, a response is delivered once read, and its end is
//! judged by who ended the connection first (`client_ended`).
use crate::judge::events::{
    ConnMeta, Event, PieceFacts, RESET_RECEIVED, SendFacts, SendPart, Side, TcpFacts, TlsSeq,
    Transport,
};
use crate::judge::http_head::{self, Body, Head, HeadCache, Parsed};
use crate::judge::partial_head::{self, HeadAt, HeadBudget, PartialHead};
use crate::judge::peer_end::PeerEnd;
use crate::judge::requests::Answer;
use crate::judge::response::{Response, StreamEnd, fate};
pub use crate::judge::verdict::{End, Evidence, Kind, ResponseFacts, Stats, Verdict};
use rustc_hash::FxHashMap;
use std::sync::Arc;

mod conn;
mod fates;
mod judgement;
mod sends;
mod stream_end;
use conn::{Conn, Opened};
use judgement::{Ended, Judged};

/// How long the responses of a connection this host sent its FIN on wait for their bytes to
/// be acknowledged, before they are judged as if they were (`Correlator::expire`): a reader
/// that stalls keeps a shut-down socket in FIN_WAIT1 as long as the application holds it.
pub const FIN_WAIT_BOUND_NS: u64 = 60_000_000_000;

/// What a client had at its server's reset (`tcp_reset()`: no byte arrives after it).
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// Stream bytes the kernel had copied to the client (`copied_seq`): more than the reads
    /// seen if a read was under way, whose event comes after the reset's.
    read: u64,
    /// Bytes arrived and not read yet (`rcv_nxt - copied_seq`, the server's FIN not counted).
    unread: u64,
    /// The reads seen at the reset.
    seen: u64,
    /// The server ended the stream with a FIN (to a client that had half-closed), not a reset.
    by_fin: bool,
}

impl Drain {
    /// Where the stream ends: every byte that arrived.
    fn end(&self) -> u64 {
        self.read + self.unread
    }

    /// How the stream ended, for the verdict once the client read what it was left (or left
    /// without reading it).
    fn ending(&self) -> StreamEnd {
        if self.by_fin {
            StreamEnd::Eof
        } else {
            StreamEnd::PeerReset
        }
    }
}

#[derive(Clone, Debug)]
struct ResetFacts {
    meta: ConnMeta,
    unacked: u64,
    unsent: u64,
    unread: u64,
    snd_una: u32,
}

const EAGAIN: i64 = 11;
const EPIPE: i64 = 32;
const ECONNRESET: i64 = 104;

// TCP states (include/net/tcp_states.h).
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_CLOSING: i32 = 11;

pub struct Correlator {
    /// Boxed: a connection is taken out and put back on state changes, and moving a pointer
    /// is cheaper than moving the struct.
    conns: FxHashMap<u64, Box<Conn>>,
    max_conns: usize,
    /// Heads longer than this are not judged (`--max-head-bytes`).
    max_head: usize,
    heads: HeadCache,
    /// The kernel's timer frequency, to turn jiffies into milliseconds (None: unknown).
    hz: Option<u64>,
    /// When `expire` next looks for connections waiting too long after this host's FIN.
    next_expiry_ns: u64,
    /// Some connection may be waiting after this host's FIN (set when one begins to, cleared
    /// by a look at the table that found none): without any, `expire` does not look.
    fin_waits: bool,
    /// Emit only problem verdicts (the rest are counted, not built: they are most of them).
    problems_only: bool,
    /// Bytes all heads being gathered may hold together.
    head_budget: HeadBudget,
    pub stats: Stats,
}

impl Correlator {
    pub fn new(max_conns: usize, hz: Option<u64>) -> Self {
        Correlator {
            conns: FxHashMap::default(),
            max_conns: max_conns.max(1),
            max_head: 16 << 10,
            heads: HeadCache::default(),
            hz,
            next_expiry_ns: 0,
            fin_waits: false,
            problems_only: false,
            head_budget: HeadBudget::new(partial_head::DEFAULT_BUDGET),
            stats: Stats::default(),
        }
    }

    /// Heads being gathered hold at most `bytes` together; one that would take more is
    /// unparsed (`Stats::heads_over_budget`).
    pub fn partial_heads_budget(mut self, bytes: usize) -> Self {
        self.head_budget = HeadBudget::new(bytes);
        self
    }

    /// Build verdicts only for problems (`Kind::is_problem`); count the others.
    pub fn problems_only(mut self, yes: bool) -> Self {
        self.problems_only = yes;
        self
    }

    /// Heads over `bytes` are unparsed, not judged (the kernel captures no more of them).
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    pub fn tracked(&self) -> usize {
        self.conns.len()
    }

    /// A new socket opened at `sk` (tracked or not): the kernel reuses a freed socket's address,
    /// so a connection still known there is over. Its stream ends here, and what the new
    /// socket sends never counts for it.
    pub fn socket_reused(&mut self, sk: u64, ts_ns: u64, losses: u32, out: &mut Vec<Verdict>) {
        if let Some(mut old) = self.conns.remove(&sk) {
            if let Some(d) = old.drain {
                // A client its server reset (or ended), gone before it read all it was left.
                return self.finish(old, d.ending(), ts_ns, out);
            }
            old.events_lost |= old.losses_at_open != losses;
            // A TCP stream's end is always reported (its state changes): one that never came
            // was not seen, and its shortfall is not the server's to answer for.
            old.events_lost |= old.meta.transport == Transport::Tcp;
            self.finish(old, StreamEnd::SocketFreed, ts_ns, out);
        }
    }

    /// Feed one event; verdicts it decides are appended to `out`.
    pub fn handle(&mut self, ev: Event, out: &mut Vec<Verdict>) {
        match ev {
            Event::Open {
                sk,
                ts_ns,
                meta,
                losses,
                copied_seq,
                peer_fin,
                late,
            } => {
                self.socket_reused(sk, ts_ns, losses, out);
                self.stats.connections += 1;
                let opened = Opened {
                    ts_ns,
                    losses,
                    copied_seq,
                    peer_fin,
                    late,
                };
                self.conns.insert(sk, Box::new(Conn::new(meta, opened)));
                self.evict_if_full();
            }
            Event::Send(s) => self.on_send(s, out),
            Event::HeadPiece(p) => self.on_piece(p, out),
            Event::TcpState {
                sk,
                ts_ns,
                oldstate,
                newstate,
                facts,
            } => self.on_state(sk, ts_ns, (oldstate, newstate), facts, out),
            Event::Eof {
                reader,
                peer,
                ts_ns,
                losses,
                events_lost,
                read,
            } => self.on_eof(reader, peer, ts_ns, (losses, events_lost), read, out),
            Event::ResetDiscard {
                sk,
                ts_ns,
                meta,
                unacked,
                unsent,
                unread,
                snd_una,
            } => {
                let facts = ResetFacts {
                    meta,
                    unacked,
                    unsent,
                    unread,
                    snd_una,
                };
                match self.conns.get_mut(&sk) {
                    // Its CLOSE follows: a response it dropped bytes of takes it over.
                    Some(conn) => conn.reset = Some(facts),
                    None => self.connection_reset(facts, ts_ns, out),
                }
            }
        }
    }

    /// Judge the connections that have waited `FIN_WAIT_BOUND_NS` since this host's FIN for
    /// their bytes to be acknowledged, as if they were (the bytes were handed over; whether a
    /// stalled reader gets them is not known). `now_ns`: the kernel's monotonic clock. Looks
    /// at the table at most once a second, and only while some connection may be waiting.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Verdict>) {
        if !self.fin_waits || now_ns < self.next_expiry_ns {
            return;
        }
        self.next_expiry_ns = now_ns + 1_000_000_000;
        let mut waiting = 0;
        let due: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                waiting += usize::from(c.fin_wait.is_some());
                c.fin_wait
                    .is_some_and(|(t, _)| now_ns.saturating_sub(t) >= FIN_WAIT_BOUND_NS)
            })
            .map(|(&sk, _)| sk)
            .collect();
        self.fin_waits = waiting > due.len();
        for sk in due {
            if let Some(mut conn) = self.conns.remove(&sk) {
                // (Not when the peer ended its side too: whether it was reading is not known.)
                if let Some(t) = conn.tcp.as_mut().filter(|_| conn.peer.first().is_none()) {
                    t.unacked = 0;
                }
                self.finish(conn, StreamEnd::Fin, now_ns, out);
            }
        }
    }

    /// Keep the table bounded: drop the least recently active tenth when full.
    fn evict_if_full(&mut self) {
        if self.conns.len() <= self.max_conns {
            return;
        }
        let mut ages: Vec<(u64, u64)> = self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        ages.sort_unstable();
        let n = (self.max_conns / 10).max(1).min(ages.len());
        for (_, k) in &ages[..n] {
            self.conns.remove(k);
        }
        self.stats.evicted += n as u64;
    }

    /// Transport of a tracked connection.
    #[cfg(test)]
    pub fn transport(&self, sk: u64) -> Option<crate::judge::events::Transport> {
        self.conns.get(&sk).map(|c| c.meta.transport)
    }
}

#[cfg(test)]
mod tests;
