//! The bytes of a stream as they are handed over (a server's sends, a client's reads): heads
//! found, gathered and parsed, responses begun, and responses whose promised bytes all went.
use super::*;

impl Correlator {
    /// A send on (or, on a client's connection, a read from) a tracked socket.
    pub(super) fn on_send(&mut self, s: SendFacts, out: &mut Vec<Verdict>) {
        // The table is set aside while the connection is borrowed from it (the send path
        // never looks at other connections): removing and re-inserting the connection
        // instead, on every send, showed in the agent's profile.
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

    /// More of a head being gathered.
    pub(super) fn on_piece(&mut self, p: PieceFacts, out: &mut Vec<Verdict>) {
        let mut conns = std::mem::take(&mut self.conns);
        if let Some(conn) = conns.get_mut(&p.sk) {
            conn.events_lost |= p.events_lost;
            self.piece(conn, p, out);
        }
        self.conns = conns;
    }

    /// One send. Returns how the stream ended if this send ends it: a Unix peer is gone (its
    /// reader closed), and no end of stream will ever be read from the other side; or a client
    /// read the last bytes a server's reset left it.
    pub(super) fn send(
        &mut self,
        conn: &mut Conn,
        s: SendFacts,
        out: &mut Vec<Verdict>,
    ) -> Option<StreamEnd> {
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
                    return Some(StreamEnd::Eof);
                }
                EPIPE | ECONNRESET => conn.peer.saw(PeerEnd::Gone, conn.sent),
                _ => {}
            }
            return None;
        }
        let ret = ret as u64;
        // A head after bytes no event showed, on a stream that lost events (a head the ring
        // buffer had no room for, sent whole in one send): a response never seen.
        if s.head.is_some()
            && offset > conn.sent
            && conn.events_lost
            && conn.meta.side == Side::Server
            && conn.resp.is_none()
            && !conn.unparsed_head
        {
            conn.head_unseen = true;
        }
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
                    let at = HeadAt {
                        start: offset,
                        bytes: cap,
                        tgid,
                        send_end: offset + ret.max(requested),
                    };
                    self.head(conn, at, ts_ns, out);
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
            && !conn.unparsed_head
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
            let read = HeadAt {
                start: offset,
                bytes: tail,
                tgid,
                send_end: offset + ret,
            };
            self.head_from_reads(conn, read, ts_ns, out);
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
    /// longer than its tail breaks the run, and the head is not seen (no verdict). `read`: the
    /// read, its bytes its tail.
    pub(super) fn head_from_reads(
        &mut self,
        conn: &mut Conn,
        read: HeadAt<'_>,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let HeadAt {
            start: offset,
            bytes: tail,
            tgid,
            send_end,
        } = read;
        let whole = tail.len() as u64 == send_end - offset;
        let (mut p, from) = match conn.read_head.take() {
            Some(mut p) if whole && p.start + p.bytes().len() as u64 == offset => {
                let from = p.bytes().len();
                if !p.put(from, tail) {
                    return self.over_budget(conn, p.tgid, ts_ns, out);
                }
                (p, from)
            }
            _ if whole => match PartialHead::new(&self.head_budget, read) {
                Some(p) => (p, 0),
                // (No verdict for a few bytes that may begin a head: body bytes too.)
                None if tail.starts_with(b"HTTP/") => {
                    return self.over_budget(conn, tgid, ts_ns, out);
                }
                None => {
                    self.stats.heads_over_budget += 1;
                    return;
                }
            },
            _ => return,
        };
        let n = p.bytes().len().min(5);
        if p.bytes()[..n] != b"HTTP/"[..n] {
            return; // not a head
        }
        p.send_end = send_end;
        // (Parsed only once its end may have come: a head read a few bytes at a time.)
        let parsed = if p.may_have_ended(from) {
            http_head::parse(p.bytes())
        } else {
            Parsed::Incomplete
        };
        match parsed {
            Parsed::Incomplete if p.bytes().len() < self.max_head => conn.read_head = Some(p),
            Parsed::Head(_) => {
                self.head(conn, p.at(), ts_ns, out);
            }
            bad => self.unparsed(conn, p.tgid, bad, ts_ns, out),
        }
    }

    /// The stream moved on (bytes handed over, or a response began): a chunked body's end may
    /// have been seen, and the response in flight may have reached its end.
    pub(super) fn after_bytes(&mut self, conn: &mut Conn, ts_ns: u64, out: &mut Vec<Verdict>) {
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

    /// A send that began with `HTTP/` (`at`: where, the bytes captured, and up to where the
    /// sends so far offered bytes).
    pub(super) fn head(
        &mut self,
        conn: &mut Conn,
        at: HeadAt<'_>,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        let HeadAt {
            start: offset,
            bytes: cap,
            tgid,
            ..
        } = at;
        match conn.split_head.take() {
            // A head the kernel took none of was never sent (offered again, refused whole).
            Some(p) if conn.sent <= p.start && p.start == offset => {}
            Some(p) => self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out),
            None => {}
        }
        // Whether or not it can be read, a head ends the response before it, and the one
        // never seen after that (`send`), if any.
        self.head_begins(conn, offset, ts_ns, out);
        if conn.head_unseen {
            self.unseen_response(conn, End::NextResponse, ts_ns, out);
        }
        (conn.head_unseen, conn.unparsed_head) = (false, false);
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
    pub(super) fn piece(&mut self, conn: &mut Conn, piece: PieceFacts, out: &mut Vec<Verdict>) {
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
    pub(super) fn over_budget(
        &mut self,
        conn: &mut Conn,
        tgid: u32,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        self.stats.heads_over_budget += 1;
        self.unparsed(conn, tgid, Parsed::Incomplete, ts_ns, out);
    }

    /// A head that never ended is unparsed.
    pub(super) fn drop_partial(&mut self, conn: &mut Conn, ts_ns: u64, out: &mut Vec<Verdict>) {
        if let Some(p) = conn.split_head.take() {
            self.unparsed(conn, p.tgid, Parsed::Incomplete, ts_ns, out);
        }
    }

    /// An unreadable head still answers a request: keep requests and responses in step.
    pub(super) fn unparsed(
        &mut self,
        conn: &mut Conn,
        tgid: u32,
        why: Parsed,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        conn.requests.answer();
        conn.unparsed_head = true;
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
    pub(super) fn head_begins(
        &mut self,
        conn: &mut Conn,
        start: u64,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
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
    pub(super) fn settle(&mut self, conn: &mut Conn, _ts_ns: u64, out: &mut Vec<Verdict>) {
        if let Some((resp, reached_ns)) = conn.settling.take() {
            let n = resp.end().unwrap_or(resp.start) - resp.start;
            self.emit(conn, Judged::complete(resp, n, reached_ns), out);
        }
    }

    /// The head `p` parsed as `head`: its response begins.
    pub(super) fn start_response(
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
    pub(super) fn take_untaken(&mut self, conn: &mut Conn) -> Option<Response> {
        let sent = conn.sent;
        let untaken = conn.resp.take_if(|r| sent <= r.start)?;
        self.stats.heads -= 1;
        Some(untaken)
    }
}
