//! What a response became once its stream ended (`ended`, `client_ended`), and the verdict
//! built from it (`emit`, with its evidence).
use super::stream_end::{client_arrival, undelivered};
use super::*;

impl Correlator {
    /// A response whose stream ended (`Ended`; `reached` below: every promised byte was handed
    /// over): its verdict. Returns whether this host's reset dropped bytes of it.
    pub(super) fn ended(&mut self, conn: &Conn, e: Ended, out: &mut Vec<Verdict>) -> bool {
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
            StreamEnd::HostReset { discarded } => conn.reset.as_ref().map_or(discarded, |r| {
                let in_flight = r.unacked.saturating_sub(r.unsent) as u32;
                undelivered(conn, discarded, r.snd_una.wrapping_add(in_flight))
            }),
            // After this host's FIN the counters are from when its delivery settled.
            StreamEnd::PeerReset | StreamEnd::Fin => undelivered(conn, tcp.unacked, tcp.snd_una),
            _ => 0,
        };
        let delivered = (conn.sent.saturating_sub(unacked).saturating_sub(resp.start)).min(sent);
        let dropped = matches!(ending, StreamEnd::HostReset { .. }) && delivered < sent;
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
    pub(super) fn client_ended(
        &mut self,
        conn: &Conn,
        resp: Response,
        ending: StreamEnd,
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
        let server_first = matches!(ending, StreamEnd::Eof | StreamEnd::PeerReset)
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
            StreamEnd::SocketFreed => Kind::ObserverLoss,
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

    pub(super) fn count_unjudged(&mut self, resp: &Response) {
        if resp.head.body == Body::Chunked {
            self.stats.chunked_uncertain += 1;
        }
    }

    /// One verdict about a response (`Judged`: what it became, the bytes of it handed over and
    /// those that reach the peer). Returns it, if built.
    pub(super) fn emit<'o>(
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

    pub(super) fn evidence(&self, conn: &Conn, how: End, ts_ns: u64) -> Evidence {
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
}
