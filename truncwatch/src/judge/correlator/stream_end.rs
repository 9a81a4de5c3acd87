//! The end of a stream: TCP state changes, this host's resets, and what the peer got of the
//! responses not judged yet (`finish`), from the socket's counters at the end.
use super::*;
use crate::judge::events::ReadFacts;

/// Bytes at the end of `conn`'s stream the peer never gets, when its socket's last `undelivered`
/// bytes, from TCP sequence number `from_seq` on, are not delivered. The same for a plain
/// stream; for a TLS stream, the plaintext after its last write whose records were all before
/// `from_seq` (see `CipherMarks`), or, with no marks to go by (a memory BIO), the ciphertext
/// count, which is close (records add some 22 to 29 bytes to up to 16 KiB of plaintext).
pub(super) fn undelivered(conn: &Conn, undelivered: u64, from_seq: u32) -> u64 {
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
pub(super) fn drain_left(conn: &mut Conn, mut facts: TcpFacts, by_fin: bool) -> Option<Drain> {
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
pub(super) fn client_arrival(conn: &Conn, ending: StreamEnd) -> (u64, bool) {
    let Some(from) = conn.read_from else {
        // A TLS client closing with records unread (more than the server's FIN) may have left
        // the rest of the response there: not the server's doing, as far as can be told.
        let closed = matches!(ending, StreamEnd::Fin | StreamEnd::HostReset { .. });
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
        (Some(r), _) if ending == StreamEnd::Eof => (r.copied_seq, r.unread, true),
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

impl Correlator {
    /// A tracked TCP socket moved from state `states.0` to `states.1` (`facts`: its counters).
    pub(super) fn on_state(
        &mut self,
        sk: u64,
        ts_ns: u64,
        (oldstate, newstate): (i32, i32),
        facts: TcpFacts,
        out: &mut Vec<Verdict>,
    ) {
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

    /// A Unix stream socket `reader` read end of stream from `peer` (`lost`: the host-wide
    /// loss count then, and the reader's own mark; `read`: a TCP client's counters).
    pub(super) fn on_eof(
        &mut self,
        reader: u64,
        peer: u64,
        ts_ns: u64,
        (losses, events_lost): (u32, bool),
        read: Option<ReadFacts>,
        out: &mut Vec<Verdict>,
    ) {
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
            let ending = conn.drain.map_or(StreamEnd::Eof, |d| d.ending());
            self.finish(conn, ending, ts_ns, out);
        }
        if let Some(mut conn) = self.conns.remove(&peer) {
            conn.events_lost |= conn.losses_at_open != losses || events_lost;
            let ending = match conn.meta.side {
                // The client read end of stream: the server shut down or closed.
                Side::Server => StreamEnd::Eof,
                // The server read end of stream: the client closed its side.
                Side::Client => StreamEnd::Fin,
            };
            self.finish(conn, ending, ts_ns, out);
        } else if !reader_is_client && let Some(conn) = self.conns.get_mut(&reader) {
            // The server read end of stream: the client ended its side first.
            let at = conn.sent;
            conn.peer.saw(PeerEnd::Eof, at);
        }
    }

    /// A tracked TCP connection changed state (`facts`: its counters then). Returns how its
    /// stream ended, if this change ends it (its responses are then judged).
    pub(super) fn state_change(
        &mut self,
        conn: &mut Conn,
        oldstate: i32,
        newstate: i32,
        mut facts: TcpFacts,
        ts_ns: u64,
    ) -> Option<StreamEnd> {
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
                Some(StreamEnd::PeerReset)
            }
            // This host's FIN: what it holds is delivered unless a reset follows. Settled now
            // if every byte was acknowledged already.
            TCP_FIN_WAIT1 | TCP_LAST_ACK if server => {
                if facts.unacked == 0 {
                    return Some(StreamEnd::Fin);
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
            TCP_FIN_WAIT1 | TCP_LAST_ACK => Some(StreamEnd::Fin),
            // This host's FIN was acknowledged, and so every byte before it.
            TCP_FIN_WAIT2 if conn.fin_wait.is_some() => Some(StreamEnd::Fin),
            // The end after this host's FIN, without its reset: the counters say what was
            // never acknowledged (an orphan's retries ran out).
            TCP_CLOSE if conn.fin_wait.is_some() && conn.reset.is_none() => Some(StreamEnd::Fin),
            // A half-closed client's socket after its FIN_WAIT2 (TIME_WAIT): the server's FIN
            // arrived (one unread sequence number, or bytes before it still to read), or the
            // client closed with nothing unread (its own end: no FIN counted).
            TCP_CLOSE if conn.half_closed && oldstate == TCP_FIN_WAIT2 && conn.reset.is_none() => {
                if facts.unread == 0 {
                    return Some(StreamEnd::Fin);
                }
                conn.peer.saw(PeerEnd::Fin, conn.sent);
                match drain_left(conn, facts, true) {
                    Some(d) => {
                        conn.drain = Some(d);
                        None
                    }
                    None => Some(StreamEnd::Eof),
                }
            }
            // Straight to CLOSE without FIN: this host reset it (close with unread data,
            // SO_LINGER 0, abort). What was never sent is dropped; what was in flight goes
            // ahead of the reset.
            TCP_CLOSE => Some(StreamEnd::HostReset {
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

    /// This host reset a connection with bytes unacknowledged, and no judged response was
    /// cut by it: a connection-level verdict.
    pub(super) fn connection_reset(&mut self, r: ResetFacts, ts_ns: u64, out: &mut Vec<Verdict>) {
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

    /// The stream ended: judge the responses not judged yet, one verdict each.
    pub(super) fn finish(
        &mut self,
        mut conn: Box<Conn>,
        ending: StreamEnd,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
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
            // (It takes this host's reset over too: one verdict, whose bytes are unknown.)
            self.unseen_response(&conn, ending.end(), ts_ns, out);
            reset_taken = true;
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

    /// A response whose head was never seen (its events were lost: a connection seen from the
    /// middle, or a head the ring buffer had no room for) ended (`how`: by the stream's end, or
    /// the next head): whether it was whole cannot be told. `observer_loss`, never silence: the
    /// connection's owner and addresses are known, and an operator can tell "blind here" from
    /// "nothing happened" (issue 26).
    pub(super) fn unseen_response(
        &mut self,
        conn: &Conn,
        how: End,
        ts_ns: u64,
        out: &mut Vec<Verdict>,
    ) {
        *self.stats.judged_on(conn.meta.side, Kind::ObserverLoss) += 1;
        out.push(Verdict {
            kind: Kind::ObserverLoss,
            pid: conn.meta.pid,
            meta: conn.meta.clone(),
            response: None,
            unacked_bytes: None,
            evidence: self.evidence(conn, how, ts_ns),
            ts_ns,
        });
    }

    /// A TLS stream whose library keeps its records a while (a memory BIO): only the plaintext
    /// whose records reached the kernel by the end was handed over (`CipherMarks`). A response
    /// whose end lies beyond it did not reach its end after all; one that began beyond it was
    /// never sent.
    pub(super) fn reached_kernel(&mut self, conn: &mut Conn) {
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
}
