//! Events as the correlator sees them, whatever hook backend produced them (decoded from the
//! kernel's records by `kernel::decode`).
use crate::judge::requests::Seen;
use truncwatch_common::TAIL;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Unix,
}

impl Transport {
    /// Its name in the output and the metrics' `transport` label (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// Who owns a connection and its two ends, fixed when the agent first sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub transport: Transport,
    pub pid: u32,
    pub comm: String,
    pub local: String,
    pub peer: String,
    /// The stream is a TLS connection's plaintext, seen in the TLS library (its offsets and
    /// byte counts are plaintext bytes).
    pub tls: bool,
    /// Which end of the HTTP exchange the socket is: the server's (its stream is the responses
    /// it sends) or the client's (the responses it reads; `local` is then the client's
    /// address and `peer` the server's).
    pub side: Side,
}

/// The end of an HTTP exchange a connection is watched from (RFC 9110 §3.3's roles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// `newstate` of a `TcpState` event that stands for "a reset arrived from the peer".
pub const RESET_RECEIVED: i32 = truncwatch_common::STATE_RESET_RECEIVED;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The socket `sk` is the server side of an HTTP/1 connection from now on (or the client
    /// side: `meta.side`; a TCP client's `copied_seq` then, where its responses begin).
    /// `losses`: events lost host-wide until then (wrapping; see `Eof`).
    Open {
        sk: u64,
        ts_ns: u64,
        meta: ConnMeta,
        losses: u32,
        copied_seq: Option<u32>,
        /// A TCP socket's peer had sent its FIN already (CLOSE_WAIT when it was classified):
        /// a client that half-closed once its request was sent, before any response.
        peer_fin: bool,
        /// A late open (`OPEN_LATE`): the connection's first events were lost, and its stream
        /// is seen from here on only. The response it was sending is not known: if the
        /// connection ends before a head is seen, its end is `observer_loss` (issue 26).
        late: bool,
    },
    /// One send on a tracked socket.
    Send(SendFacts),
    /// More bytes of a head that did not end within its first capture.
    HeadPiece(PieceFacts),
    /// A TCP state change (`newstate` may be `RESET_RECEIVED`), with the socket's counters then.
    TcpState {
        sk: u64,
        ts_ns: u64,
        oldstate: i32,
        newstate: i32,
        facts: TcpFacts,
    },
    /// A Unix stream socket `reader` read end of stream from `peer`, or a TCP HTTP client
    /// `reader` did (`peer` 0; `read`: its counters then).
    /// `losses` moved since the peer's `Open`: its stream may have lost events.
    /// `events_lost`: the peer (a TCP client: the reader) is known to have lost events. Also
    /// sent (`reader` == `peer`) when a server socket shuts down or is released (kprobe
    /// backend).
    Eof {
        reader: u64,
        peer: u64,
        ts_ns: u64,
        losses: u32,
        events_lost: bool,
        read: Option<ReadFacts>,
    },
    /// This host moved a TCP connection (any, HTTP or not) to CLOSE, without a reset from the
    /// peer, while `unacked` written bytes were not acknowledged; `unread` received bytes were
    /// never read by the application.
    ResetDiscard {
        sk: u64,
        ts_ns: u64,
        meta: ConnMeta,
        unacked: u64,
        /// Of `unacked`, the bytes never sent on the wire: dropped for sure (the rest was in
        /// flight, ahead of the reset).
        unsent: u64,
        unread: u64,
        /// `snd_una` then: `snd_una + unacked - unsent` is the sequence number where the
        /// dropped bytes begin (a TLS stream maps it to plaintext: `SendFacts::tls_seq`).
        snd_una: u32,
    },
}

impl Event {
    /// Date an undated event (a send or a head piece, which the kernel leaves undated).
    pub fn date(&mut self, ts: u64) {
        match self {
            Event::Send(s) => s.ts_ns = ts,
            Event::HeadPiece(p) => p.ts_ns = ts,
            _ => {}
        }
    }

    /// The event's kernel time (0 for an undated send or head piece).
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::HeadPiece(p) => p.ts_ns,
            Event::Open { ts_ns, .. }
            | Event::TcpState { ts_ns, .. }
            | Event::Eof { ts_ns, .. }
            | Event::ResetDiscard { ts_ns, .. } => *ts_ns,
            Event::Send(s) => s.ts_ns,
        }
    }
}

/// A TCP client's receive counters when it read end of stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadFacts {
    /// `copied_seq`: the next byte the application will read (past the FIN once it read it).
    pub copied_seq: u32,
    /// Received bytes not read yet (`rcv_nxt - copied_seq`).
    pub unread: u64,
}

/// A TCP socket's own counters at a state change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFacts {
    /// Written bytes not yet acknowledged by the peer.
    pub unacked: u64,
    /// Of those, the bytes not sent on the wire yet.
    pub unsent: u64,
    /// Received bytes the application had not read.
    pub unread: u64,
    /// The peer's advertised window, bytes (0: zero window); None if unknown.
    pub peer_window: Option<u64>,
    /// Jiffies limited by the peer's receive window, and by the send buffer.
    pub rwnd_limited_jiffies: Option<u64>,
    pub sndbuf_limited_jiffies: Option<u64>,
    /// An event about this socket was lost (ring buffer full).
    pub events_lost: bool,
    /// `snd_una`: the sequence number of the first byte not acknowledged.
    pub snd_una: u32,
    /// `copied_seq`: the next byte the application will read.
    pub copied_seq: u32,
}

/// `HeadPiece`: bytes of a head at stream `offset`, from a send that offered bytes up to
/// stream offset `send_end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PieceFacts {
    pub sk: u64,
    pub ts_ns: u64,
    pub offset: u64,
    pub send_end: u64,
    pub bytes: Vec<u8>,
    /// An earlier event about this socket was lost (ring buffer full).
    pub events_lost: bool,
}

/// The kernel accepted `ret` bytes (or refused with `-errno`) at stream `offset`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendFacts {
    pub sk: u64,
    pub ts_ns: u64,
    pub tgid: u32,
    pub offset: u64,
    pub ret: i64,
    /// Bytes the caller asked to send (0: unknown).
    pub requested: u64,
    pub syscall: u32,
    /// The first bytes, when the send began with `HTTP/`.
    pub head: Option<Vec<u8>>,
    /// The last accepted bytes (up to 8), where known.
    pub tail: Tail,
    /// With a head: the requests read since the head before. (A client's read that begins
    /// no head may carry the requests it sent since, too.)
    pub requests: Seen,
    /// An earlier event about this socket was lost (ring buffer full).
    pub events_lost: bool,
    pub part: SendPart,
    /// A TLS write: where its records lie in the TCP stream.
    pub tls_seq: Option<TlsSeq>,
}

/// Where a TLS write's records lie in the TCP connection's ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSeq {
    /// They went to the socket within the call (OpenSSL's socket BIO): the TCP `write_seq`
    /// after them, one past their last byte.
    End(u32),
    /// The call did no socket I/O (a memory BIO, as in Node.js): `write_seq` when it returned;
    /// its records follow later.
    Before(u32),
}

/// Which part of a send an event tells. The tracepoint and fentry backends see a send once,
/// done; the kprobe backend sees a head's send begin and learns later what the kernel took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendPart {
    /// The whole send: what it offered and what the kernel took.
    #[default]
    Whole,
    /// A send beginning: its head (or head continuation) only. `ret` and the tail are what it
    /// offers; what the kernel takes follows in `Accepted` events.
    Announced,
    /// What the kernel took of a send `Announced` before: it only advances the stream.
    Accepted,
}

/// Up to `TAIL` bytes, inline (one per send: no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    bytes: [u8; TAIL],
    len: u8,
}

impl Tail {
    /// The last `TAIL` bytes of `b`.
    pub fn new(b: &[u8]) -> Tail {
        let b = &b[b.len().saturating_sub(TAIL)..];
        let mut t = Tail {
            bytes: [0; TAIL],
            len: b.len() as u8,
        };
        t.bytes[..b.len()].copy_from_slice(b);
        t
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
    /// The last `TAIL` bytes of these followed by `more`.
    pub fn then(&self, more: &[u8]) -> Tail {
        Tail::new(&[self.as_slice(), more].concat())
    }
}

#[cfg(test)]
mod transport_tests {
    use super::Transport;

    #[test]
    fn a_transport_has_one_name() {
        for t in [Transport::Tcp, Transport::Unix] {
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.as_str())
            );
        }
    }
}
