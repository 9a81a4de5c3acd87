//! The correlator: kernel events in, per-response verdicts out. No I/O, no clocks.
//!
//! It thinks in stream offsets. Per server connection it keeps the bytes the application has
//! handed the kernel so far and the response in flight: where its head started, how long the
//! head is and what body it promised. A response is `complete` the moment the bytes handed over
//! reach its promised end. If the stream ends first (the application shut down or closed, or
//! the peer reset), the shortfall is the verdict.
use crate::events::{ConnMeta, Event, RESET_RECEIVED, SendFacts, SendPart, Tail, TcpFacts};
use crate::http_head::{self, Body, Head, HeadCache, Parsed};
use crate::requests::{Answer, Requests};
pub use crate::verdict::{End, Evidence, Kind, ResponseFacts, Stats, Verdict};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use truncwatch_common::HEAD_CAP;

#[derive(Clone, Debug)]
struct Response {
    start: u64,
    head: Head,
    pid: u32,
    /// The application tried to send past the head: a body was meant to follow. Without it,
    /// a head alone is what a HEAD request gets, and is not judged...
    body_attempted: bool,
    /// ...unless the request is known and was not HEAD: then the body is owed.
    body_owed: bool,
    /// For chunked bodies: stream offset just past the last chunk, once it was handed over.
    chunk_end: Option<u64>,
    /// The latest send of this response ended with a blank line (`\r\n\r\n`).
    tail_blank: bool,
    /// The stream's last bytes before `recent_end`, as far as the sends' tails tell.
    recent: Tail,
    recent_end: u64,
    /// What request this response answers, as far as known.
    answer: Answer,
}

impl Response {
    fn head_only(&self, sent: u64) -> bool {
        !self.body_attempted
            && !self.body_owed
            && sent == self.start + self.head.len
            && matches!(self.head.body, Body::Length(n) if n > 0)
    }

    /// Stream offset one past the last promised byte, for responses that promise a length.
    fn end(&self) -> Option<u64> {
        match self.head.body {
            Body::Length(n) => Some(self.start + self.head.len + n),
            Body::None => Some(self.start + self.head.len),
            Body::Chunked => self.chunk_end,
            Body::UntilClose => None,
        }
    }

    /// Does a send ending at `send_end` with these last bytes complete a chunked body?
    fn saw_last_chunk(&self, tail: &[u8], send_end: u64) -> bool {
        // `\n0\r\n\r\n`: the previous line's end, a zero size, no trailers, the blank line.
        // Or a final buffer holding exactly `0\r\n\r\n` (the kernel copies the tail from the
        // send's last buffer only, so a 5-byte tail is a 5-byte buffer): how nginx and
        // most servers write the last chunk. Past the head: a header line cannot be "0".
        self.head.body == Body::Chunked
            && send_end > self.start + self.head.len
            && (tail.ends_with(b"\n0\r\n\r\n") || tail == b"0\r\n\r\n")
    }
}

#[derive(Clone, Debug)]
struct Conn {
    meta: Arc<ConnMeta>,
    /// Bytes handed to the kernel: one past the highest stream offset seen.
    sent: u64,
    /// The response in flight (not judged yet).
    resp: Option<Response>,
    eagain: u32,
    partial: u32,
    peer_ended: Option<&'static str>,
    last_ns: u64,
    opened_ns: u64,
    /// The TCP counters at the latest state change.
    tcp: Option<TcpFacts>,
    /// The start of a head that goes on in the next sends.
    split_head: Option<PartialHead>,
    requests: Requests,
    /// A CONNECT or an Upgrade was accepted: what follows is not HTTP/1.
    tunnel: bool,
    /// Events about this connection were lost: its shortfalls are the observer's.
    events_lost: bool,
    /// Events lost host-wide when it opened (see `Event::UnixEof`).
    losses_at_open: u32,
}

#[derive(Clone, Debug)]
struct PartialHead {
    start: u64,
    bytes: Vec<u8>,
    tgid: u32,
}

/// Heads joined from several sends are given up on (unparsed) past this size.
const MAX_JOINED_HEAD: usize = 4 * HEAD_CAP;

const EAGAIN: i64 = 11;
const EPIPE: i64 = 32;
const ECONNRESET: i64 = 104;

// TCP states (include/net/tcp_states.h).
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

pub struct Correlator {
    /// Boxed: a connection is taken out and put back on state changes, and moving a pointer
    /// is cheaper than moving the struct.
    conns: FxHashMap<u64, Box<Conn>>,
    max_conns: usize,
    heads: HeadCache,
    /// The kernel's timer frequency, to turn jiffies into milliseconds (None: unknown).
    hz: Option<u64>,
    /// Emit only problem verdicts (the rest are counted, not built: they are most of them).
    problems_only: bool,
    pub stats: Stats,
}

impl Correlator {
    pub fn new(max_conns: usize, hz: Option<u64>) -> Self {
        Correlator {
            conns: FxHashMap::default(),
            max_conns: max_conns.max(1),
            heads: HeadCache::default(),
            hz,
            problems_only: false,
            stats: Stats::default(),
        }
    }

    /// Build verdicts only for problems (`Kind::is_problem`); count the others.
    pub fn problems_only(mut self, yes: bool) -> Self {
        self.problems_only = yes;
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
            old.events_lost |= old.losses_at_open != losses;
            self.finish(old, End::SocketFreed, ts_ns, out);
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
            } => {
                self.socket_reused(sk, ts_ns, losses, out);
                self.stats.connections += 1;
                let conn = Box::new(Conn {
                    meta: Arc::new(meta),
                    sent: 0,
                    resp: None,
                    eagain: 0,
                    partial: 0,
                    peer_ended: None,
                    last_ns: ts_ns,
                    opened_ns: ts_ns,
                    tcp: None,
                    split_head: None,
                    requests: Requests::default(),
                    tunnel: false,
                    events_lost: false,
                    losses_at_open: losses,
                });
                self.conns.insert(sk, conn);
                self.evict_if_full();
            }
            Event::Send(s) => {
                // The table is set aside while the connection is borrowed from it (the send
                // path never looks at other connections): removing and re-inserting the
                // connection instead, on every send, showed in the agent's profile.
                let mut conns = std::mem::take(&mut self.conns);
                if let Some(conn) = conns.get_mut(&s.sk) {
                    conn.last_ns = s.ts_ns;
                    conn.events_lost |= s.events_lost;
                    self.send(conn, s, out);
                }
                self.conns = conns;
            }
            Event::TcpState {
                sk,
                ts_ns,
                oldstate: _,
                newstate,
                facts,
            } => {
                let Some(mut conn) = self.conns.remove(&sk) else {
                    return;
                };
                conn.events_lost |= facts.events_lost;
                conn.tcp = Some(facts);
                match newstate {
                    RESET_RECEIVED => {
                        conn.peer_ended = Some("reset");
                        self.finish(conn, End::Reset, ts_ns, out);
                        return; // nothing more can be delivered; CLOSE follows
                    }
                    TCP_CLOSE_WAIT => conn.peer_ended = conn.peer_ended.or(Some("fin")),
                    TCP_FIN_WAIT1 | TCP_LAST_ACK => {
                        self.finish(conn, End::Fin, ts_ns, out);
                        return;
                    }
                    TCP_CLOSE => {
                        // Straight to CLOSE without FIN: this host reset it (close with unread
                        // data, SO_LINGER 0, abort).
                        self.finish(conn, End::Reset, ts_ns, out);
                        return;
                    }
                    _ => {}
                }
                self.conns.insert(sk, conn);
            }
            Event::UnixEof {
                reader,
                peer,
                ts_ns,
                losses,
                events_lost,
            } => {
                if let Some(mut conn) = self.conns.remove(&peer) {
                    // The client read end of stream: the server shut down or closed. (Unix
                    // streams learn of lost events from the host-wide count: the reader's
                    // event cannot carry the server socket's own mark.)
                    conn.events_lost |= conn.losses_at_open != losses || events_lost;
                    self.finish(conn, End::Eof, ts_ns, out);
                } else if let Some(conn) = self.conns.get_mut(&reader) {
                    // The server read end of stream: the client ended its side first.
                    conn.peer_ended = conn.peer_ended.or(Some("eof"));
                }
            }
            Event::ResetDiscard {
                sk: _,
                ts_ns,
                meta,
                unacked,
                unread,
            } => {
                self.stats.judged_reset_discard += 1;
                out.push(Verdict {
                    kind: Kind::ResetDiscard,
                    pid: meta.pid,
                    meta: Arc::new(meta),
                    response: None,
                    unacked_bytes: Some(unacked),
                    evidence: Evidence {
                        end: Some(End::Reset),
                        unread_bytes: Some(unread),
                        ..Evidence::default()
                    },
                    ts_ns,
                });
            }
        }
    }

    fn send(&mut self, conn: &mut Conn, s: SendFacts, out: &mut Vec<Verdict>) {
        let SendFacts {
            tgid,
            offset,
            ret,
            requested,
            ts_ns,
            ..
        } = s;
        if conn.tunnel {
            return;
        }
        if ret < 0 {
            if let Some(r) = &mut conn.resp {
                r.body_attempted = true;
            }
            match -ret {
                EAGAIN => conn.eagain += 1,
                EPIPE | ECONNRESET => conn.peer_ended = conn.peer_ended.or(Some("gone")),
                _ => {}
            }
            return;
        }
        let ret = ret as u64;
        // An announced send has offered its bytes, not handed them over (yet).
        if s.part != SendPart::Announced {
            if requested > ret {
                conn.partial += 1;
            }
            conn.sent = conn.sent.max(offset + ret);
        }
        // What the kernel took of an announced send: its head was dealt with then.
        if s.part != SendPart::Accepted {
            if s.head.is_some() {
                conn.requests.head_sent(s.requests);
            }
            match (&s.head, &s.head_more) {
                (Some(cap), _) => {
                    self.head(conn, tgid, offset, ret.max(requested), cap, ts_ns, out)
                }
                (None, Some(cap)) => {
                    self.head_more(conn, offset, ret.max(requested), cap, ts_ns, out)
                }
                (None, None) => {
                    self.drop_partial(conn, ts_ns, out);
                    if let Some(r) = &mut conn.resp {
                        r.body_attempted = true;
                    }
                }
            }
        }
        if s.part == SendPart::Announced {
            return;
        }
        if let Some(r) = &mut conn.resp {
            // A send whose tail is all of it continues the tail before: a last chunk whose
            // `0\r\n\r\n` straddles two sends (a partial write, the rest offered again).
            let tail = s.tail.as_slice();
            r.recent = if tail.len() as u64 == ret && r.recent_end == offset {
                r.recent.then(tail)
            } else {
                s.tail
            };
            r.recent_end = offset + ret;
            let tail = r.recent.as_slice();
            if r.saw_last_chunk(tail, offset + ret) {
                r.chunk_end = Some(offset + ret);
            }
            r.tail_blank = tail.ends_with(b"\r\n\r\n");
        }
        self.judge_if_reached(conn, ts_ns, out);
    }

    /// A send that began with `HTTP/` at `offset`; the caller asked to send `asked` bytes.
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
        self.drop_partial(conn, ts_ns, out);
        match self.heads.parse(cap) {
            Parsed::Head(h) => {
                self.start_response(conn, offset, tgid, h, asked > h.len, ts_ns, out)
            }
            // The whole send was captured and the head goes on: the next sends may hold the
            // rest (the kernel captures a few of them).
            Parsed::Incomplete if cap.len() < HEAD_CAP => {
                conn.split_head = Some(PartialHead {
                    start: offset,
                    bytes: cap.to_vec(),
                    tgid,
                });
            }
            bad => self.unparsed(conn, tgid, bad, ts_ns, out),
        }
    }

    /// A send captured because the previous head may go on in it.
    #[allow(clippy::too_many_arguments)]
    fn head_more(
        &mut self,
        conn: &mut Conn,
        offset: u64,
        asked: u64,
        cap: &[u8],
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let Some(mut p) = conn.split_head.take() else {
            // The head before was complete after all: this is body.
            if let Some(r) = &mut conn.resp {
                r.body_attempted = true;
            }
            return;
        };
        if p.start + p.bytes.len() as u64 != offset || p.bytes.len() + cap.len() > MAX_JOINED_HEAD {
            return self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out);
        }
        p.bytes.extend_from_slice(cap);
        match http_head::parse(&p.bytes) {
            Parsed::Head(h) => {
                let attempted = offset + asked > p.start + h.len;
                self.start_response(conn, p.start, p.tgid, h, attempted, ts_ns, out);
            }
            Parsed::Incomplete if cap.len() < HEAD_CAP => conn.split_head = Some(p),
            bad => self.unparsed(conn, p.tgid, bad, ts_ns, out),
        }
    }

    /// A head split over sends that never completed is unparsed.
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
        self.stats.judged_unparsed += 1;
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

    /// A response head at stream offset `start`: it ends the response before it.
    #[allow(clippy::too_many_arguments)]
    fn start_response(
        &mut self,
        conn: &mut Conn,
        start: u64,
        tgid: u32,
        mut head: Head,
        body_attempted: bool,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        self.stats.heads += 1;
        // A response the kernel took none of was never sent: this head takes its place, and
        // its answer.
        let untaken = self.take_untaken(conn);
        // Interim responses (1xx but 101) come before the final one to the same request.
        let answer = match untaken {
            _ if head.status < 200 && head.status != 101 => Answer::Unknown,
            Some(prev) => prev.answer,
            None => conn.requests.answer(),
        };
        if let Some(prev) = conn.resp.take() {
            match prev.end() {
                _ if prev.head_only(start) => self.stats.head_only += 1,
                // Reached responses were judged already; only an early head is news.
                Some(end) if start < end => self.emit(
                    conn,
                    prev,
                    Kind::Desync,
                    End::NextResponse,
                    start,
                    ts_ns,
                    out,
                ),
                Some(_) => {}
                // No known end: a chunked body whose last chunk we did not see, or a
                // close-delimited body followed by more output. Not judged.
                None => self.count_unjudged(&prev),
            }
        }
        if head.status == 101 || (answer == Answer::Connect && (200..300).contains(&head.status)) {
            // The head is the last HTTP/1 on this connection; count it as complete.
            conn.tunnel = true;
            head.body = Body::None;
        }
        if answer == Answer::Head {
            self.stats.head_answers += 1;
            head.body = Body::None;
        }
        let body_owed = answer == Answer::Other;
        conn.resp = Some(Response {
            start,
            head,
            pid: tgid,
            body_attempted,
            body_owed,
            chunk_end: None,
            tail_blank: false,
            recent: Tail::default(),
            recent_end: 0,
            answer,
        });
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

    fn judge_if_reached(&mut self, conn: &mut Conn, ts_ns: u64, out: &mut Vec<Verdict>) {
        let Some(resp) = &conn.resp else { return };
        if let Some(end) = resp.end()
            && conn.sent >= end
        {
            let resp = conn.resp.take().unwrap();
            self.emit(conn, resp, Kind::Complete, End::Reached, end, ts_ns, out);
        }
    }

    /// The stream ended: judge the response in flight, if any.
    fn finish(&mut self, mut conn: Box<Conn>, how: End, ts_ns: u64, out: &mut Vec<Verdict>) {
        self.drop_partial(&mut conn, ts_ns, out);
        self.take_untaken(&mut conn);
        let Some(resp) = conn.resp.take() else { return };
        let sent = conn.sent;
        match resp.head.body {
            Body::UntilClose => {
                return self.emit(&conn, resp, Kind::Unframed, how, sent, ts_ns, out);
            }
            // Trailers end with a blank line too: if that is how the stream ended, we cannot
            // tell a finished body from a cut one.
            Body::Chunked if resp.tail_blank => return self.count_unjudged(&resp),
            _ => {}
        }
        if resp.head_only(conn.sent) {
            self.stats.head_only += 1;
            return;
        }
        let kind = match conn.peer_ended {
            Some("reset") | Some("gone") => Kind::PeerReset,
            _ => Kind::ShortWrite,
        };
        self.emit(&conn, resp, kind, how, sent, ts_ns, out);
    }

    fn count_unjudged(&mut self, resp: &Response) {
        if resp.head.body == Body::Chunked {
            self.stats.chunked_uncertain += 1;
        }
    }

    /// `upto`: stream offset where this response's bytes stop counting.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        conn: &Conn,
        resp: Response,
        kind: Kind,
        how: End,
        upto: u64,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let end = resp.end();
        let sent = upto.min(end.unwrap_or(upto)).saturating_sub(resp.start);
        // A shortfall on a stream seen only in part may be the events we missed.
        let kind = match kind {
            Kind::ShortWrite | Kind::PeerReset | Kind::Desync if conn.events_lost => {
                Kind::ObserverLoss
            }
            k => k,
        };
        match kind {
            Kind::Complete => self.stats.judged_complete += 1,
            Kind::ShortWrite => self.stats.judged_short_write += 1,
            Kind::PeerReset => self.stats.judged_peer_reset += 1,
            Kind::Desync => self.stats.judged_desync += 1,
            Kind::ResetDiscard => self.stats.judged_reset_discard += 1,
            Kind::Unframed => self.stats.judged_unframed += 1,
            Kind::Unparsed => self.stats.judged_unparsed += 1,
            Kind::ObserverLoss => self.stats.judged_observer_loss += 1,
        }
        if self.problems_only && !kind.is_problem() {
            return;
        }
        out.push(Verdict {
            kind,
            meta: conn.meta.clone(),
            pid: if resp.pid != 0 {
                resp.pid
            } else {
                conn.meta.pid
            },
            response: Some(ResponseFacts {
                status: resp.head.status,
                content_length: match resp.head.body {
                    Body::Length(n) => Some(n),
                    _ => None,
                },
                chunked: resp.head.body == Body::Chunked,
                expected_bytes: end.map(|e| e - resp.start),
                sent_bytes: sent,
            }),
            unacked_bytes: None,
            evidence: self.evidence(conn, how, ts_ns),
            ts_ns,
        });
    }

    fn evidence(&self, conn: &Conn, how: End, ts_ns: u64) -> Evidence {
        let tcp = conn.tcp.as_ref();
        let ms = |j: Option<u64>| Some(j? * 1000 / self.hz?);
        Evidence {
            eagain: conn.eagain,
            partial_sends: conn.partial,
            send_buffer_full: conn.eagain > 0 || conn.partial > 0,
            peer_ended: conn.peer_ended,
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
    pub fn transport(&self, sk: u64) -> Option<crate::events::Transport> {
        self.conns.get(&sk).map(|c| c.meta.transport)
    }
}

#[cfg(test)]
#[path = "correlator_tests.rs"]
mod tests;
