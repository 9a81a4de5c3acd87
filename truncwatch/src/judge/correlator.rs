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
    ConnMeta, Event, PieceFacts, RESET_RECEIVED, SendFacts, SendPart, Side, Tail, TcpFacts, TlsSeq,
    Transport,
};
use crate::judge::http_head::{self, Body, Head, HeadCache, Parsed};
use crate::judge::partial_head::{self, HeadAt, HeadBudget, PartialHead};
use crate::judge::peer_end::PeerEnd;
use crate::judge::requests::{Answer, Requests};
use crate::judge::response::{Ending, PeerEnds, Response, fate};
pub use crate::judge::verdict::{End, Evidence, Kind, ResponseFacts, Stats, Verdict};
use rustc_hash::FxHashMap;
use std::sync::Arc;

mod conn;
mod judgement;
use conn::Conn;
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
    fn ending(&self) -> Ending {
        if self.by_fin {
            Ending::Eof
        } else {
            Ending::PeerReset
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

/// Bytes at the end of `conn`'s stream the peer never gets, when its socket's last `undelivered`
/// bytes, from TCP sequence number `from_seq` on, are not delivered. The same for a plain
/// stream; for a TLS stream, the plaintext after its last write whose records were all before
/// `from_seq` (see `CipherMarks`), or, with no marks to go by (a memory BIO), the ciphertext
/// count, which is close (records add some 22 to 29 bytes to up to 16 KiB of plaintext).
fn undelivered(conn: &Conn, undelivered: u64, from_seq: u32) -> u64 {
    match &conn.marks {
        Some(m) if !m.is_empty() && undelivered > 0 => {
            conn.sent - m.plain_delivered(from_seq).min(conn.sent)
        }
        _ => undelivered,
    }
}

/// A TCP client's server reset it, or its FIN reached a client that had half-closed (`by_fin`;
/// `facts`: its counters then): what it has yet to read, if anything: bytes that arrived
/// unread, or a read under way (the kernel copied bytes whose read event is still to come).
/// Its kernel count behind the reads seen (reads counted twice) makes the stream unsure. (A
/// TLS client's unread bytes are records, which its reads do not count: not drained.)
fn drain_left(conn: &mut Conn, mut facts: TcpFacts, by_fin: bool) -> Option<Drain> {
    if conn.meta.side != Side::Client || conn.meta.tls {
        return None;
    }
    let from = conn.read_from?;
    // The server's FIN takes a sequence number (RFC 9293 §3.4), and is no byte to read.
    facts.unread = facts.unread.saturating_sub(u64::from(by_fin));
    // Relative to the reads seen, so that a stream past 4 GiB still compares.
    let ahead = facts
        .copied_seq
        .wrapping_sub(from.wrapping_add(conn.sent as u32)) as i32;
    if ahead < 0 {
        conn.events_lost = true;
        return None;
    }
    (ahead > 0 || facts.unread > 0).then_some(Drain {
        read: conn.sent + ahead as u64,
        unread: facts.unread,
        seen: conn.sent,
        by_fin,
    })
}

/// A client's connection at its end: the stream offset up to which its responses reached this
/// host (read, or received and left unread), and whether the kernel's count of bytes read
/// agrees with the reads seen. A TCP client's counters come from its end of stream
/// (`eof_read`) or its last state change; `copied_seq` counts the server's FIN once the client
/// read it, and `rcv_nxt` once it arrived (RFC 9293 §3.4: a FIN takes one sequence number).
/// A Unix client has no counters: what it read is what arrived.
fn client_arrival(conn: &Conn, ending: Ending) -> (u64, bool) {
    let Some(from) = conn.read_from else {
        // A TLS client closing with records unread (more than the server's FIN) may have left
        // the rest of the response there: not the server's doing, as far as can be told.
        let closed = matches!(ending, Ending::Fin | Ending::HostReset { .. });
        if conn.meta.tls && closed && conn.tcp.is_some_and(|t| t.unread > 1) {
            return (u64::MAX, true);
        }
        return (conn.sent, true);
    };
    // Reset by the server with bytes unread: the stream ends where they do. Every read was
    // seen if the reads seen reached that end exactly (nothing arrives after a reset); short
    // of it, if the kernel's count at the client's end of stream is the reads seen; without
    // that count, only if nothing was under way at the reset.
    if let Some(d) = conn.drain {
        let seen_all = if conn.sent >= d.end() {
            conn.sent == d.end()
        } else if let Some(r) = conn.eof_read {
            r.copied_seq.wrapping_sub(from) == conn.sent as u32
        } else {
            d.seen == d.read
        };
        return (d.end(), seen_all);
    }
    let fin_arrived = conn.peer.fin.is_some() || conn.eof_read.is_some();
    let (copied_seq, unread, eof_seen) = match (conn.eof_read, conn.tcp) {
        (Some(r), _) if ending == Ending::Eof => (r.copied_seq, r.unread, true),
        (Some(r), None) => (r.copied_seq, r.unread, true),
        (eof, Some(t)) => (t.copied_seq, t.unread, eof.is_some()),
        (None, None) => return (conn.sent, false),
    };
    let copied = u64::from(copied_seq.wrapping_sub(from));
    // The client read the FIN (its end of stream) if it said so, or if the kernel's count is
    // one past the reads after the FIN arrived (the kprobe backend tells no end of stream).
    let fin_read = eof_seen || (fin_arrived && copied == conn.sent + 1);
    let read = copied.saturating_sub(u64::from(fin_read));
    // The FIN's sequence number, arrived and not read, is in `unread`.
    let unread = unread.saturating_sub(u64::from(fin_arrived && !fin_read));
    (conn.sent + unread, read == conn.sent)
}

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
            self.finish(old, Ending::SocketFreed, ts_ns, out);
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
                let marks = meta.tls.then(Box::default);
                let mut conn = Box::new(Conn {
                    meta: Arc::new(meta),
                    sent: 0,
                    resp: None,
                    settling: None,
                    eagain: 0,
                    partial: 0,
                    peer: PeerEnds::default(),
                    last_ns: ts_ns,
                    opened_ns: ts_ns,
                    tcp: None,
                    split_head: None,
                    recent: Tail::default(),
                    recent_end: 0,
                    tail_gap: false,
                    requests: Requests::default(),
                    tunnel: false,
                    out_of_step: false,
                    events_lost: late,
                    losses_at_open: losses,
                    reset: None,
                    marks,
                    read_from: copied_seq,
                    eof_read: None,
                    read_head: None,
                    drain: None,
                    fin_wait: None,
                    half_closed: false,
                    acked_at_peer_fin: peer_fin.then_some(0),
                    head_unseen: late,
                });
                if peer_fin {
                    // (At offset 0: before any response, so it decides no verdict.)
                    conn.peer.saw(PeerEnd::Fin, 0);
                }
                self.conns.insert(sk, conn);
                self.evict_if_full();
            }
            Event::Send(s) => {
                // The table is set aside while the connection is borrowed from it (the send
                // path never looks at other connections): removing and re-inserting the
                // connection instead, on every send, showed in the agent's profile.
                let (sk, ts_ns) = (s.sk, s.ts_ns);
                let mut conns = std::mem::take(&mut self.conns);
                let mut over = None;
                if let Some(conn) = conns.get_mut(&sk) {
                    conn.last_ns = ts_ns;
                    conn.events_lost |= s.events_lost;
                    over = self.send(conn, s, out);
                }
                self.conns = conns;
                if let Some(ending) = over
                    && let Some(conn) = self.conns.remove(&sk)
                {
                    self.finish(conn, ending, ts_ns, out);
                }
            }
            Event::HeadPiece(p) => {
                let mut conns = std::mem::take(&mut self.conns);
                if let Some(conn) = conns.get_mut(&p.sk) {
                    conn.events_lost |= p.events_lost;
                    self.piece(conn, p, out);
                }
                self.conns = conns;
            }
            Event::TcpState {
                sk,
                ts_ns,
                oldstate,
                newstate,
                facts,
            } => {
                let Some(mut conn) = self.conns.remove(&sk) else {
                    return;
                };
                match self.state_change(&mut conn, oldstate, newstate, facts, ts_ns) {
                    Some(ending) => self.finish(conn, ending, ts_ns, out),
                    None => {
                        self.conns.insert(sk, conn);
                    }
                }
            }
            Event::Eof {
                reader,
                peer,
                ts_ns,
                losses,
                events_lost,
                read,
            } => {
                // (Unix streams learn of lost events from the host-wide count: a reader's event
                // cannot carry the other socket's own mark.)
                let reader_is_client = peer != reader
                    && self
                        .conns
                        .get(&reader)
                        .is_some_and(|c| c.meta.side == Side::Client);
                if reader_is_client && let Some(mut conn) = self.conns.remove(&reader) {
                    // A client read end of stream: the server ended the responses it reads.
                    conn.events_lost |= conn.losses_at_open != losses || events_lost;
                    conn.eof_read = read;
                    let at = conn.sent;
                    conn.peer.saw(PeerEnd::Eof, at);
                    let ending = conn.drain.map_or(Ending::Eof, |d| d.ending());
                    self.finish(conn, ending, ts_ns, out);
                }
                if let Some(mut conn) = self.conns.remove(&peer) {
                    conn.events_lost |= conn.losses_at_open != losses || events_lost;
                    let ending = match conn.meta.side {
                        // The client read end of stream: the server shut down or closed.
                        Side::Server => Ending::Eof,
                        // The server read end of stream: the client closed its side.
                        Side::Client => Ending::Fin,
                    };
                    self.finish(conn, ending, ts_ns, out);
                } else if !reader_is_client && let Some(conn) = self.conns.get_mut(&reader) {
                    // The server read end of stream: the client ended its side first.
                    let at = conn.sent;
                    conn.peer.saw(PeerEnd::Eof, at);
                }
            }
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

    /// A tracked TCP connection changed state (`facts`: its counters then). Returns how its
    /// stream ended, if this change ends it (its responses are then judged).
    fn state_change(
        &mut self,
        conn: &mut Conn,
        oldstate: i32,
        newstate: i32,
        mut facts: TcpFacts,
        ts_ns: u64,
    ) -> Option<Ending> {
        conn.events_lost |= facts.events_lost;
        if conn.drain.is_some() {
            return None; // (the CLOSE after a reset, or after a FIN: the client still reads)
        }
        // After this host's FIN, that FIN is among the unacknowledged sequence numbers (it is
        // queued after the state change to FIN_WAIT1 or LAST_ACK): not a byte.
        if newstate == TCP_CLOSE && matches!(oldstate, TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK) {
            facts.unacked = facts.unacked.saturating_sub(1);
        }
        conn.tcp = Some(facts);
        let server = conn.meta.side == Side::Server;
        match newstate {
            // (A TLS client's unread bytes are records, which its reads do not count.)
            RESET_RECEIVED => {
                conn.peer.saw(PeerEnd::Reset, conn.sent);
                if let Some(drain) = drain_left(conn, facts, false) {
                    conn.drain = Some(drain);
                    return None;
                }
                // Nothing more can be delivered; CLOSE follows.
                Some(Ending::PeerReset)
            }
            // This host's FIN: what it holds is delivered unless a reset follows. Settled now
            // if every byte was acknowledged already.
            TCP_FIN_WAIT1 | TCP_LAST_ACK if server => {
                if facts.unacked == 0 {
                    return Some(Ending::Fin);
                }
                conn.fin_wait = Some((ts_ns, facts));
                self.fin_waits = true;
                None
            }
            // A client's FIN with no response being read: a half-close, it reads on.
            TCP_FIN_WAIT1 if conn.resp.is_none() && conn.read_head.is_none() => {
                conn.half_closed = true;
                None
            }
            TCP_FIN_WAIT1 | TCP_LAST_ACK => Some(Ending::Fin),
            // This host's FIN was acknowledged, and so every byte before it.
            TCP_FIN_WAIT2 if conn.fin_wait.is_some() => Some(Ending::Fin),
            // The end after this host's FIN, without its reset: the counters say what was
            // never acknowledged (an orphan's retries ran out).
            TCP_CLOSE if conn.fin_wait.is_some() && conn.reset.is_none() => Some(Ending::Fin),
            // A half-closed client's socket after its FIN_WAIT2 (TIME_WAIT): the server's FIN
            // arrived (one unread sequence number, or bytes before it still to read), or the
            // client closed with nothing unread (its own end: no FIN counted).
            TCP_CLOSE if conn.half_closed && oldstate == TCP_FIN_WAIT2 && conn.reset.is_none() => {
                if facts.unread == 0 {
                    return Some(Ending::Fin);
                }
                conn.peer.saw(PeerEnd::Fin, conn.sent);
                match drain_left(conn, facts, true) {
                    Some(d) => {
                        conn.drain = Some(d);
                        None
                    }
                    None => Some(Ending::Eof),
                }
            }
            // Straight to CLOSE without FIN: this host reset it (close with unread data,
            // SO_LINGER 0, abort). What was never sent is dropped; what was in flight goes
            // ahead of the reset.
            TCP_CLOSE => Some(Ending::HostReset {
                discarded: conn.reset.as_ref().map_or(0, |r| r.unsent),
            }),
            TCP_CLOSE_WAIT => {
                conn.peer.saw(PeerEnd::Fin, conn.sent);
                // (The FIN's segment acknowledged what the peer had: `tcp_ack()` runs first.)
                conn.acked_at_peer_fin
                    .get_or_insert(conn.sent.saturating_sub(facts.unacked));
                None
            }
            _ => None,
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
                self.finish(conn, Ending::Fin, now_ns, out);
            }
        }
    }

    /// This host reset a connection with bytes unacknowledged, and no judged response was
    /// cut by it: a connection-level verdict.
    fn connection_reset(&mut self, r: ResetFacts, ts_ns: u64, out: &mut Vec<Verdict>) {
        *self.stats.judged(Kind::ResetDiscard) += 1;
        out.push(Verdict {
            kind: Kind::ResetDiscard,
            pid: r.meta.pid,
            meta: Arc::new(r.meta),
            response: None,
            unacked_bytes: Some(r.unacked),
            evidence: Evidence {
                end: Some(End::Reset),
                unread_bytes: Some(r.unread),
                ..Evidence::default()
            },
            ts_ns,
        });
    }

    /// One send. Returns how the stream ended if this send ends it: a Unix peer is gone (its
    /// reader closed), and no end of stream will ever be read from the other side; or a client
    /// read the last bytes a server's reset left it.
    fn send(&mut self, conn: &mut Conn, s: SendFacts, out: &mut Vec<Verdict>) -> Option<Ending> {
        let SendFacts {
            tgid,
            offset,
            ret,
            requested,
            ts_ns,
            ..
        } = s;
        if conn.tunnel || conn.out_of_step {
            return None;
        }
        if ret < 0 {
            if let Some(r) = &mut conn.resp {
                r.body_attempted = true;
            }
            match -ret {
                EAGAIN => conn.eagain += 1,
                // A Unix peer that is gone closed its end: its end of stream.
                EPIPE | ECONNRESET if conn.meta.transport == Transport::Unix => {
                    conn.peer.saw(PeerEnd::Eof, conn.sent);
                    return Some(Ending::Eof);
                }
                EPIPE | ECONNRESET => conn.peer.saw(PeerEnd::Gone, conn.sent),
                _ => {}
            }
            return None;
        }
        let ret = ret as u64;
        // An announced send has offered its bytes, not handed them over (yet).
        if s.part != SendPart::Announced {
            if requested > ret {
                conn.partial += 1;
            }
            conn.sent = conn.sent.max(offset + ret);
            if let (Some(m), Some(seq)) = (&mut conn.marks, s.tls_seq) {
                match seq {
                    TlsSeq::End(seq) => m.push(offset + ret, ret, seq),
                    TlsSeq::Before(seq) => m.push_reckoned(offset + ret, ret, seq),
                }
                let oldest = conn.settling.as_ref().map(|(r, _)| r.start);
                if let Some(start) = oldest.or(conn.resp.as_ref().map(|r| r.start)) {
                    m.forget_before(start);
                }
            }
        }
        // What the kernel took of an announced send: its head was dealt with then.
        if s.part != SendPart::Accepted {
            match &s.head {
                Some(cap) => {
                    conn.requests.head_sent(s.requests);
                    let asked = offset + ret.max(requested);
                    self.head(conn, tgid, offset, asked, cap, ts_ns, out);
                }
                // (A head being gathered may go on in this send: its piece follows. One the
                // kernel stopped gathering is given up on at the next head or the end.)
                None => {
                    conn.requests.head_sent(s.requests);
                    if let Some(r) = &mut conn.resp {
                        r.body_attempted = true;
                    }
                }
            }
        }
        if s.part == SendPart::Announced {
            return None;
        }
        // Bytes of no response seen, on a stream whose events were lost: their head was lost
        // (a small open fits in a ring buffer that a head event no longer does).
        if conn.events_lost
            && conn.meta.side == Side::Server
            && s.head.is_none()
            && conn.resp.is_none()
            && conn.split_head.is_none()
            && ret > 0
        {
            conn.head_unseen = true;
        }
        // A send whose tail is all of it continues the tail before: a last chunk whose
        // `0\r\n\r\n` straddles two sends (a partial write, the rest offered again).
        let tail = s.tail.as_slice();
        conn.tail_gap |= tail.is_empty() && ret > 0;
        conn.recent = if tail.len() as u64 == ret && conn.recent_end == offset {
            conn.recent.then(tail)
        } else {
            s.tail
        };
        conn.recent_end = offset + ret;
        if conn.meta.side == Side::Client
            && s.head.is_none()
            && conn.resp.is_none()
            && conn.split_head.is_none()
        {
            self.head_from_reads(conn, tgid, offset, ret, tail, ts_ns, out);
        }
        self.after_bytes(conn, ts_ns, out);
        // A client has read what its server's reset (or FIN) left it.
        conn.drain
            .filter(|d| conn.sent >= d.end())
            .map(|d| d.ending())
    }

    /// A client that reads a response head a few bytes at a time: no read of it begins with
    /// `HTTP/` in 5 bytes or more, so the kernel sends no head event. Reads whose last bytes
    /// (`tail`) are all of them put the head together here, up to `--max-head-bytes`; a read
    /// longer than its tail breaks the run, and the head is not seen (no verdict).
    #[allow(clippy::too_many_arguments)]
    fn head_from_reads(
        &mut self,
        conn: &mut Conn,
        tgid: u32,
        offset: u64,
        ret: u64,
        tail: &[u8],
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let whole = tail.len() as u64 == ret;
        let (mut p, from) = match conn.read_head.take() {
            Some(mut p) if whole && p.start + p.bytes().len() as u64 == offset => {
                let from = p.bytes().len();
                if !p.put(from, tail) {
                    return self.over_budget(conn, p.tgid, ts_ns, out);
                }
                (p, from)
            }
            _ if whole => {
                let at = HeadAt {
                    start: offset,
                    bytes: tail,
                    tgid,
                    send_end: offset + ret,
                };
                match PartialHead::new(&self.head_budget, at) {
                    Some(p) => (p, 0),
                    None if tail.starts_with(&b"HTTP/"[..tail.len().min(5)]) => {
                        return self.over_budget(conn, tgid, ts_ns, out);
                    }
                    None => return,
                }
            }
            _ => return,
        };
        let n = p.bytes().len().min(5);
        if p.bytes()[..n] != b"HTTP/"[..n] {
            return; // not a head
        }
        p.send_end = offset + ret;
        // (Parsed only once its end may have come: a head read a few bytes at a time.)
        let parsed = if p.bytes().ends_with(b"\n") && p.may_have_ended(from) {
            http_head::parse(p.bytes())
        } else {
            Parsed::Incomplete
        };
        match parsed {
            Parsed::Incomplete if p.bytes().len() < self.max_head => conn.read_head = Some(p),
            Parsed::Head(_) => {
                self.head(conn, p.tgid, p.start, p.send_end, p.bytes(), ts_ns, out);
            }
            bad => self.unparsed(conn, p.tgid, bad, ts_ns, out),
        }
    }

    /// The stream moved on (bytes handed over, or a response began): a chunked body's end may
    /// have been seen, and the response in flight may have reached its end.
    fn after_bytes(&mut self, conn: &mut Conn, ts_ns: u64, out: &mut Vec<Verdict>) {
        let Some(r) = &mut conn.resp else { return };
        if r.chunk_end.is_none() && r.saw_last_chunk(conn.recent.as_slice(), conn.recent_end) {
            r.chunk_end = Some(conn.recent_end);
        }
        if let Some(end) = r.end().filter(|&end| conn.sent >= end) {
            let resp = conn.resp.take().expect("checked above");
            if conn.meta.transport == Transport::Unix || conn.meta.side == Side::Client {
                // Nothing drops what a Unix stream was handed: delivered as it is handed over.
                // A client's stream is what it read: delivered.
                let n = end - resp.start;
                self.emit(conn, Judged::complete(resp, n, ts_ns), out);
                // A client's read past the end: the next response began in it, unseen.
                if conn.meta.side == Side::Client && conn.sent > end {
                    self.stats.pipelined_unseen += 1;
                    conn.out_of_step = true;
                }
            } else {
                conn.settling = Some((resp, ts_ns));
            }
        }
    }

    /// A send that began with `HTTP/` at `offset`; the sends up to now offered bytes up to
    /// `asked`.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        conn: &mut Conn,
        tgid: u32,
        offset: u64,
        asked: u64,
        cap: &[u8],
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        match conn.split_head.take() {
            // A head the kernel took none of was never sent (offered again, refused whole).
            Some(p) if conn.sent <= p.start && p.start == offset => {}
            Some(p) => self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out),
            None => {}
        }
        // Whether or not it can be read, a head ends the response before it.
        conn.head_unseen = false;
        self.head_begins(conn, offset, ts_ns, out);
        let at = HeadAt {
            start: offset,
            bytes: cap,
            tgid,
            send_end: asked,
        };
        match self.heads.parse(cap) {
            Parsed::Head(h) => self.start_response(conn, at, h, ts_ns, out),
            // The head goes on: its next bytes come in pieces (`HeadPiece`).
            Parsed::Incomplete if cap.len() < self.max_head => {
                match PartialHead::new(&self.head_budget, at) {
                    Some(p) => conn.split_head = Some(p),
                    None => self.over_budget(conn, tgid, ts_ns, out),
                }
            }
            bad => self.unparsed(conn, tgid, bad, ts_ns, out),
        }
    }

    /// More of the head being gathered.
    fn piece(&mut self, conn: &mut Conn, piece: PieceFacts, out: &mut Vec<Verdict>) {
        let ts_ns = piece.ts_ns;
        let Some(mut p) = conn.split_head.take() else {
            return; // a head given up on already
        };
        // Contiguous with what came before; bytes offered again after a partial send replace
        // their first offer.
        let at = piece.offset.checked_sub(p.start).map(|n| n as usize);
        let Some(at) = at.filter(|&at| at <= p.bytes().len()) else {
            return self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out);
        };
        if at + piece.bytes.len() > self.max_head {
            // Over the bound: the kernel sends no more of it.
            return self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out);
        }
        if !p.put(at, &piece.bytes) {
            return self.over_budget(conn, p.tgid, ts_ns, out);
        }
        p.send_end = p.send_end.max(piece.send_end);
        if !p.may_have_ended(at) {
            conn.split_head = Some(p);
            return;
        }
        match http_head::parse(p.bytes()) {
            Parsed::Head(h) => {
                self.start_response(conn, p.at(), h, ts_ns, out);
                self.after_bytes(conn, ts_ns, out);
            }
            Parsed::Incomplete => conn.split_head = Some(p),
            bad => self.unparsed(conn, p.tgid, bad, ts_ns, out),
        }
    }

    /// A head that did not fit in what is left of the budget for heads being gathered: given
    /// up on, unparsed (never guessed), and counted.
    fn over_budget(&mut self, conn: &mut Conn, tgid: u32, ts_ns: u64, out: &mut Vec<Verdict>) {
        self.stats.heads_over_budget += 1;
        self.unparsed(conn, tgid, Parsed::Incomplete, ts_ns, out);
    }

    /// A head that never ended is unparsed.
    fn drop_partial(&mut self, conn: &mut Conn, ts_ns: u64, out: &mut Vec<Verdict>) {
        if let Some(p) = conn.split_head.take() {
            self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out);
        }
    }

    /// An unreadable head still answers a request: keep requests and responses in step.
    fn unparsed(
        &mut self,
        conn: &mut Conn,
        tgid: u32,
        why: Parsed,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        conn.requests.answer();
        if why == Parsed::Incomplete {
            self.stats.unparsed += 1;
        } else {
            self.stats.invalid += 1;
        }
        *self.stats.judged_on(conn.meta.side, Kind::Unparsed) += 1;
        if self.problems_only {
            return;
        }
        out.push(Verdict {
            kind: Kind::Unparsed,
            meta: conn.meta.clone(),
            pid: if tgid != 0 { tgid } else { conn.meta.pid },
            response: None,
            unacked_bytes: None,
            evidence: Evidence::default(),
            ts_ns,
        });
    }

    /// A head begins at stream offset `start`: the next request was read, so the response
    /// whose bytes were all handed over is delivered; and the one in flight ends here.
    fn head_begins(&mut self, conn: &mut Conn, start: u64, ts_ns: u64, out: &mut Vec<Verdict>) {
        self.settle(conn, ts_ns, out);
        // A response the kernel took none of was never sent: the head that takes its place
        // also takes its answer (see `start_response`).
        if conn.resp.as_ref().is_some_and(|r| conn.sent <= r.start) {
            return;
        }
        let Some(prev) = conn.resp.take() else { return };
        match prev.end() {
            _ if prev.head_only(start) => self.stats.head_only += 1,
            Some(end) if start < end => {
                let sent = start.saturating_sub(prev.start);
                self.emit(
                    conn,
                    Judged {
                        resp: prev,
                        kind: Kind::Desync,
                        how: End::NextResponse,
                        sent,
                        delivered: sent,
                        ts_ns,
                    },
                    out,
                );
            }
            // Reached (it would be settling), so only the kprobe backend's late accounting
            // gets here: the next head shows it was all handed over.
            Some(end) => {
                let n = end - prev.start;
                self.emit(conn, Judged::complete(prev, n, ts_ns), out);
            }
            // No known end: a chunked body whose last chunk we did not see, or a
            // close-delimited body followed by more output. Not judged.
            None => self.count_unjudged(&prev),
        }
    }

    /// The settling response, if any, was delivered whole.
    fn settle(&mut self, conn: &mut Conn, _ts_ns: u64, out: &mut Vec<Verdict>) {
        if let Some((resp, reached_ns)) = conn.settling.take() {
            let n = resp.end().unwrap_or(resp.start) - resp.start;
            self.emit(conn, Judged::complete(resp, n, reached_ns), out);
        }
    }

    /// The head `p` parsed as `head`: its response begins.
    fn start_response(
        &mut self,
        conn: &mut Conn,
        p: HeadAt<'_>,
        mut head: Head,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        // Interim responses (1xx but 101) belong to the exchange of the final one that
        // follows: not judged, and their requests pass on to it.
        if head.status < 200 && head.status != 101 {
            self.stats.interim += 1;
            // The final head may follow in the same capture (a client reads `100 Continue`
            // and the final head together when both have arrived).
            let rest = p.bytes.get(head.len as usize..).unwrap_or_default();
            if rest.starts_with(b"HTTP/") {
                let next = HeadAt {
                    start: p.start + head.len,
                    bytes: rest,
                    ..p
                };
                match self.heads.parse(rest) {
                    Parsed::Head(h) => self.start_response(conn, next, h, ts_ns, out),
                    // The kernel gathers no more of a head that began inside a capture.
                    bad => self.unparsed(conn, p.tgid, bad, ts_ns, out),
                }
            }
            return;
        }
        self.stats.heads += 1;
        // A response the kernel took none of was never sent: this head takes its place, and
        // its answer.
        let untaken = self.take_untaken(conn);
        let answer = match untaken {
            Some(prev) => prev.answer,
            None => conn.requests.answer(),
        };
        if head.status == 101 || (answer == Answer::Connect && (200..300).contains(&head.status)) {
            // The head is the last HTTP/1 on this connection; count it as complete.
            conn.tunnel = true;
            head.body = Body::None;
        }
        if answer == Answer::Head {
            self.stats.head_answers += 1;
            head.body = Body::None;
        }
        conn.resp = Some(Response {
            start: p.start,
            head,
            pid: p.tgid,
            body_attempted: p.send_end.max(conn.sent) > p.start + head.len,
            body_owed: answer == Answer::Other,
            chunk_end: None,
            answer,
        });
        self.after_bytes(conn, ts_ns, out);
    }

    /// The response in flight, if the kernel took none of its bytes: such a response was never
    /// sent (the kprobe backend announces a head's send before the kernel takes any of it, and
    /// a send refused whole is offered again), so it is forgotten, uncounted.
    fn take_untaken(&mut self, conn: &mut Conn) -> Option<Response> {
        let sent = conn.sent;
        let untaken = conn.resp.take_if(|r| sent <= r.start)?;
        self.stats.heads -= 1;
        Some(untaken)
    }

    /// The stream ended: judge the responses not judged yet, one verdict each.
    fn finish(&mut self, mut conn: Box<Conn>, ending: Ending, ts_ns: u64, out: &mut Vec<Verdict>) {
        self.drop_partial(&mut conn, ts_ns, out);
        self.reached_kernel(&mut conn);
        self.take_untaken(&mut conn);
        let mut reset_taken = false;
        if let Some((resp, reached_ns)) = conn.settling.take() {
            reset_taken |= self.ended(
                &conn,
                Ended {
                    resp,
                    reached_ns: Some(reached_ns),
                    ending,
                    ts_ns,
                },
                out,
            );
        }
        if let Some(resp) = conn.resp.take() {
            reset_taken |= self.ended(
                &conn,
                Ended {
                    resp,
                    reached_ns: None,
                    ending,
                    ts_ns,
                },
                out,
            );
        }
        if conn.head_unseen {
            self.unseen_response(&conn, ending, ts_ns, out);
        }
        // (A client's reset discards only its own requests' bytes: not a response's fate.)
        if let Some(r) = conn
            .reset
            .take()
            .filter(|_| !reset_taken && conn.meta.side == Side::Server)
        {
            self.connection_reset(r, ts_ns, out);
        }
    }

    /// A connection seen from the middle (its open came late: the ring buffer was full) ended
    /// while the response it carried was one whose head was never seen: whether it was whole
    /// cannot be told. `observer_loss`, never silence: the connection's owner and addresses
    /// are known, and an operator can tell "blind here" from "nothing happened" (issue 26).
    fn unseen_response(&mut self, conn: &Conn, ending: Ending, ts_ns: u64, out: &mut Vec<Verdict>) {
        *self.stats.judged_on(conn.meta.side, Kind::ObserverLoss) += 1;
        out.push(Verdict {
            kind: Kind::ObserverLoss,
            pid: conn.meta.pid,
            meta: conn.meta.clone(),
            response: None,
            unacked_bytes: None,
            evidence: self.evidence(conn, ending.end(), ts_ns),
            ts_ns,
        });
    }

    /// A TLS stream whose library keeps its records a while (a memory BIO): only the plaintext
    /// whose records reached the kernel by the end was handed over (`CipherMarks`). A response
    /// whose end lies beyond it did not reach its end after all; one that began beyond it was
    /// never sent.
    fn reached_kernel(&mut self, conn: &mut Conn) {
        let (Some(m), Some(tcp)) = (&conn.marks, conn.tcp) else {
            return;
        };
        if !m.reckoned() {
            return;
        }
        let in_kernel = m.plain_delivered(tcp.snd_una.wrapping_add(tcp.unacked as u32));
        if in_kernel >= conn.sent {
            return;
        }
        conn.sent = in_kernel;
        if conn
            .settling
            .as_ref()
            .is_some_and(|(r, _)| r.end().is_some_and(|end| end > in_kernel))
        {
            self.take_untaken(conn);
            conn.resp = conn.settling.take().map(|(r, _)| r);
        }
    }

    /// A response whose stream ended (`Ended`; `reached` below: every promised byte was handed
    /// over): its verdict. Returns whether this host's reset dropped bytes of it.
    fn ended(&mut self, conn: &Conn, e: Ended, out: &mut Vec<Verdict>) -> bool {
        let Ended {
            resp,
            reached_ns,
            ending,
            ts_ns,
        } = e;
        let reached = reached_ns.is_some();
        if conn.meta.side == Side::Client {
            self.client_ended(conn, resp, ending, ts_ns, out);
            return false;
        }
        let end = resp.end();
        // Bytes of it handed over.
        let sent = conn.sent.min(end.unwrap_or(conn.sent)) - resp.start.min(conn.sent);
        let mut peer_first = conn.peer.first_after(resp.start);
        // Stream offset up to which the peer gets the bytes: what it acknowledged by the time
        // delivery settled after a FIN of ours (all of it, mostly), or by a reset that
        // dropped the rest (what it had not acknowledged is never read).
        let tcp = conn.tcp.unwrap_or_default();
        let unacked = match ending {
            // What was in flight went ahead of the reset: the rest begins at snd_nxt.
            Ending::HostReset { discarded } => conn.reset.as_ref().map_or(discarded, |r| {
                let in_flight = r.unacked.saturating_sub(r.unsent) as u32;
                undelivered(conn, discarded, r.snd_una.wrapping_add(in_flight))
            }),
            // After this host's FIN the counters are from when its delivery settled.
            Ending::PeerReset | Ending::Fin => undelivered(conn, tcp.unacked, tcp.snd_una),
            _ => 0,
        };
        let delivered = (conn.sent.saturating_sub(unacked).saturating_sub(resp.start)).min(sent);
        let dropped = matches!(ending, Ending::HostReset { .. }) && delivered < sent;
        if !reached {
            match resp.head.body {
                Body::UntilClose => {
                    let how = ending.end();
                    self.emit(
                        conn,
                        Judged {
                            resp,
                            kind: Kind::Unframed,
                            how,
                            sent,
                            delivered,
                            ts_ns,
                        },
                        out,
                    );
                    return dropped;
                }
                // Trailers end with a blank line too: if that is how the stream ended, we
                // cannot tell a finished body from a cut one.
                Body::Chunked if conn.recent.as_slice().ends_with(b"\r\n\r\n") => {
                    self.count_unjudged(&resp);
                    return dropped;
                }
                _ if resp.head_only(conn.sent) => {
                    self.stats.head_only += 1;
                    return false;
                }
                _ => {}
            }
        }
        // A peer FIN after which the peer still acknowledged bytes was a half-close: it was
        // reading, and did not leave (a client that sent its whole request, then shut down).
        let acked = conn.sent.saturating_sub(unacked);
        if peer_first == Some(PeerEnd::Fin) && conn.acked_at_peer_fin.is_some_and(|at| acked > at) {
            peer_first = None;
        }
        let kind = fate(ending, peer_first, reached, delivered == sent);
        let (how, ts) = if kind == Kind::Complete {
            (End::Reached, reached_ns.unwrap_or(ts_ns))
        } else {
            (ending.end(), ts_ns)
        };
        let mut unacked_bytes = None;
        if kind == Kind::ResetDiscard {
            unacked_bytes = conn.reset.as_ref().map(|r| r.unacked);
        }
        let unread = conn.reset.as_ref().map(|r| r.unread).filter(|_| dropped);
        if let Some(v) = self.emit(
            conn,
            Judged {
                resp,
                kind,
                how,
                sent,
                delivered,
                ts_ns: ts,
            },
            out,
        ) {
            v.unacked_bytes = unacked_bytes;
            v.evidence.unread_bytes = unread;
        }
        dropped
    }

    /// A client's connection ended before the response it was reading reached its promised end
    /// (`ending`: how). `truncated` if the server ended it first (its FIN, end of stream or
    /// reset) with promised bytes that never arrived; `aborted` if the client left first, or
    /// left unread what had arrived; `observer_loss` if the kernel's count of bytes read
    /// differs from the reads seen (read by a path not hooked, or events lost).
    fn client_ended(
        &mut self,
        conn: &Conn,
        resp: Response,
        ending: Ending,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let received = conn.sent.saturating_sub(resp.start);
        let end = match resp.head.body {
            Body::UntilClose => {
                self.emit(
                    conn,
                    Judged {
                        resp,
                        kind: Kind::Unframed,
                        how: ending.end(),
                        sent: received,
                        delivered: received,
                        ts_ns,
                    },
                    out,
                );
                return;
            }
            Body::Chunked if conn.recent.as_slice().ends_with(b"\r\n\r\n") => {
                return self.count_unjudged(&resp);
            }
            _ if resp.head_only(conn.sent) => {
                self.stats.head_only += 1;
                return;
            }
            _ => resp.end(),
        };
        let (arrived, seen_all) = client_arrival(conn, ending);
        let server_first = matches!(ending, Ending::Eof | Ending::PeerReset)
            || conn.peer.first_after(resp.start).is_some();
        // A chunked body's end is known once its last chunk is read, and every read's last
        // bytes were seen: the stream ended without it.
        let end = match end {
            Some(end) => end,
            None if server_first && !conn.tail_gap => u64::MAX,
            None if server_first => return self.count_unjudged(&resp),
            None => u64::MAX, // the client left first: aborted, whatever the end
        };
        // (After the server's reset, what had arrived is still the client's to read: if all
        // of the response had, a client that left without reading it aborted.)
        let kind = match ending {
            Ending::SocketFreed => Kind::ObserverLoss,
            _ if !seen_all => Kind::ObserverLoss,
            _ if server_first && arrived < end => Kind::Truncated,
            _ => Kind::Aborted,
        };
        self.emit(
            conn,
            Judged {
                resp,
                kind,
                how: ending.end(),
                sent: received,
                delivered: received,
                ts_ns,
            },
            out,
        );
    }

    fn count_unjudged(&mut self, resp: &Response) {
        if resp.head.body == Body::Chunked {
            self.stats.chunked_uncertain += 1;
        }
    }

    /// One verdict about a response (`Judged`: what it became, the bytes of it handed over and
    /// those that reach the peer). Returns it, if built.
    fn emit<'o>(
        &mut self,
        conn: &Conn,
        j: Judged,
        out: &'o mut Vec<Verdict>,
    ) -> Option<&'o mut Verdict> {
        // A shortfall on a stream seen only in part may be the events we missed.
        let kind = match j.kind {
            Kind::ShortWrite
            | Kind::PeerReset
            | Kind::PeerClosed
            | Kind::Desync
            | Kind::ResetDiscard
            | Kind::Truncated
            | Kind::Aborted
                if conn.events_lost =>
            {
                Kind::ObserverLoss
            }
            k => k,
        };
        *self.stats.judged_on(conn.meta.side, kind) += 1;
        if self.problems_only && !kind.is_problem() {
            return None;
        }
        out.push(Verdict {
            kind,
            meta: conn.meta.clone(),
            pid: if j.resp.pid != 0 {
                j.resp.pid
            } else {
                conn.meta.pid
            },
            response: Some(j.facts()),
            unacked_bytes: None,
            evidence: self.evidence(conn, j.how, j.ts_ns),
            ts_ns: j.ts_ns,
        });
        out.last_mut()
    }

    fn evidence(&self, conn: &Conn, how: End, ts_ns: u64) -> Evidence {
        // (A client's counters are a receiver's: its window and send buffer say nothing of
        // the response.)
        let tcp = conn
            .fin_wait
            .map(|(_, at_fin)| at_fin)
            .or(conn.tcp)
            .filter(|_| how != End::Reached && how != End::NextResponse)
            .filter(|_| conn.meta.side == Side::Server);
        let ms = |j: Option<u64>| Some(j? * 1000 / self.hz?);
        Evidence {
            eagain: conn.eagain,
            partial_sends: conn.partial,
            send_buffer_full: conn.eagain > 0 || conn.partial > 0,
            peer_ended: conn.peer.first(),
            end: Some(how),
            unread_bytes: None,
            unacked_bytes_at_end: tcp.map(|t| t.unacked),
            unread_bytes_at_end: tcp.map(|t| t.unread),
            peer_window_at_end: tcp.and_then(|t| t.peer_window),
            rwnd_limited_ms: ms(tcp.and_then(|t| t.rwnd_limited_jiffies)),
            sndbuf_limited_ms: ms(tcp.and_then(|t| t.sndbuf_limited_jiffies)),
            duration_ms: Some(ts_ns.saturating_sub(conn.opened_ns) / 1_000_000),
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
