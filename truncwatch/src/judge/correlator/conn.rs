//! A connection's state in the correlator: what its sends, reads and ends told so far.
use super::{Drain, ResetFacts};
use crate::judge::cipher_marks::CipherMarks;
use crate::judge::events::{ConnMeta, ReadFacts, Tail, TcpFacts};
use crate::judge::partial_head::PartialHead;
use crate::judge::peer_end::PeerEnd;
use crate::judge::requests::Requests;
use crate::judge::response::{PeerEnds, Response};
use std::sync::Arc;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) meta: Arc<ConnMeta>,
    /// Bytes handed to the kernel: one past the highest stream offset seen.
    pub(super) sent: u64,
    /// The response in flight (its promised end not reached yet).
    pub(super) resp: Option<Response>,
    /// The response before it, every byte handed over, its delivery not settled yet; and when
    /// its last byte was handed over.
    pub(super) settling: Option<(Response, u64)>,
    pub(super) eagain: u32,
    pub(super) partial: u32,
    pub(super) peer: PeerEnds,
    pub(super) last_ns: u64,
    pub(super) opened_ns: u64,
    /// The TCP counters at the latest state change.
    pub(super) tcp: Option<TcpFacts>,
    /// A head that has not ended yet: its bytes so far, waiting for `HeadPiece`s.
    pub(super) split_head: Option<PartialHead>,
    /// The stream's last bytes before `recent_end`, as far as the sends' tails tell (a
    /// chunked body's end; kept here, not in the response: a head completed by a later piece
    /// begins its response after its send was counted).
    pub(super) recent: Tail,
    pub(super) recent_end: u64,
    /// Some send's (a client's: read's) last bytes were not known: a chunked body's end may
    /// have gone unseen.
    pub(super) tail_gap: bool,
    pub(super) requests: Requests,
    /// A CONNECT or an Upgrade was accepted: what follows is not HTTP/1.
    pub(super) tunnel: bool,
    /// A client read the start of a response inside a read that ended the one before
    /// (pipelined responses read together): that head was not seen, and the stream is out of
    /// step from there. Not judged any further (`Stats::pipelined_unseen`).
    pub(super) out_of_step: bool,
    /// Events about this connection were lost: its shortfalls are the observer's.
    pub(super) events_lost: bool,
    /// Events lost host-wide when it opened (see `Event::Eof`).
    pub(super) losses_at_open: u32,
    /// This host reset the connection with bytes unacknowledged (`Event::ResetDiscard`, which
    /// comes just before the state change to CLOSE).
    pub(super) reset: Option<ResetFacts>,
    /// A TLS stream's plaintext in its ciphertext (None for plain streams).
    pub(super) marks: Option<Box<CipherMarks>>,
    /// A TCP client's `copied_seq` when it was classified: where the responses it reads begin
    /// in its receive sequence (its reads seen are checked against the kernel's at the end).
    pub(super) read_from: Option<u32>,
    /// A TCP client read end of stream: its counters then.
    pub(super) eof_read: Option<ReadFacts>,
    /// A head a client is reading a few bytes at a time, so far (`head_from_reads`).
    pub(super) read_head: Option<PartialHead>,
    /// The server reset a client's connection before the client read all that had arrived
    /// (or during a read), or its FIN reached a client that had half-closed. Linux still
    /// hands those bytes to the client's reads; its verdict waits until it read them, or read
    /// end of stream.
    pub(super) drain: Option<Drain>,
    /// This host sent its FIN (shutdown or close) while written bytes were unacknowledged, at
    /// this kernel time. The kernel goes on delivering them, unless a reset follows: a close
    /// with unread input after a shutdown (hyper shuts down, then closes) drops them. So the
    /// responses wait until every byte was acknowledged (FIN_WAIT2), or the socket's end
    /// (CLOSE: with this host's reset, or the counts of what was never acknowledged), or
    /// `FIN_WAIT_BOUND_NS`. The counters at the FIN are the evidence (the slow reader's
    /// closed window is seen there); those at the settling, what was delivered.
    pub(super) fin_wait: Option<(u64, TcpFacts)>,
    /// A client ended its side (FIN) when no response was being read: a half-close after its
    /// request (RFC 9112 §9.6), not an abort. It still reads what the server sends.
    pub(super) half_closed: bool,
    /// A server's peer sent its FIN: the stream offset it had acknowledged then. A peer that
    /// closed its socket acknowledges nothing after its FIN (more data gets a reset); one that
    /// only half-closed goes on reading, so bytes acknowledged past this offset show its FIN
    /// was no leaving.
    pub(super) acked_at_peer_fin: Option<u64>,
    /// The response the stream carries now was not seen: seen from the middle (a late open),
    /// or bytes sent with no response in flight after events were lost (its head was lost),
    /// and no head since. Its end is `observer_loss` (issue 26).
    pub(super) head_unseen: bool,
    /// The last head seen could not be parsed: the bytes after it are its body, and it has
    /// its verdict (`unparsed`), even when events were lost.
    pub(super) unparsed_head: bool,
}

/// What an open event says of a connection besides its owner and addresses.
#[derive(Clone, Copy, Debug)]
pub(super) struct Opened {
    pub(super) ts_ns: u64,
    /// Events lost host-wide so far (`OpenEvent::losses`).
    pub(super) losses: u32,
    /// A TCP client's `copied_seq` at its open.
    pub(super) copied_seq: Option<u32>,
    /// The peer had sent its FIN already (CLOSE_WAIT when it was classified).
    pub(super) peer_fin: bool,
    /// A late open (`OPEN_LATE`): the stream is seen from the middle.
    pub(super) late: bool,
}

impl Conn {
    /// A connection just opened (or first seen, `late`), nothing sent yet.
    pub(super) fn new(meta: ConnMeta, o: Opened) -> Conn {
        let marks = meta.tls.then(Box::default);
        let meta_side_is_server = meta.side == crate::judge::events::Side::Server;
        let mut conn = Conn {
            meta: Arc::new(meta),
            sent: 0,
            resp: None,
            settling: None,
            eagain: 0,
            partial: 0,
            peer: PeerEnds::default(),
            last_ns: o.ts_ns,
            opened_ns: o.ts_ns,
            tcp: None,
            split_head: None,
            recent: Tail::default(),
            recent_end: 0,
            tail_gap: false,
            requests: Requests::default(),
            tunnel: false,
            out_of_step: false,
            events_lost: o.late,
            losses_at_open: o.losses,
            reset: None,
            marks,
            read_from: o.copied_seq,
            eof_read: None,
            read_head: None,
            drain: None,
            fin_wait: None,
            half_closed: false,
            acked_at_peer_fin: o.peer_fin.then_some(0),
            unparsed_head: false,
            // (A client's stream is what it reads: a late open loses none of it.)
            head_unseen: o.late && meta_side_is_server,
        };
        if o.peer_fin {
            // (At offset 0: before any response, so it decides no verdict.)
            conn.peer.saw(PeerEnd::Fin, 0);
        }
        conn
    }
}
