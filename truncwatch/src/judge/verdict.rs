//! What the correlator decides: verdicts, the facts and evidence they carry, and the counts
//! of what could not be judged.
use crate::judge::events::{ConnMeta, Side};
use crate::judge::peer_end::PeerEnd;
use std::sync::Arc;

/// What a response (or, for `reset_discard`, a connection) became: the verdict, named in the
/// output by `as_str`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The application handed the kernel every promised byte.
    Complete,
    /// The application ended the stream before handing over every promised byte.
    ShortWrite,
    /// The peer reset the connection (or was gone) before it got every promised byte: the
    /// client gave up; not a server fault.
    PeerReset,
    /// The peer ended its side with a FIN (on a Unix socket: closed it) after the response
    /// began and before it got every promised byte, and the application then stopped: a
    /// client that left (a closed event stream, an abandoned download); not a server fault.
    PeerClosed,
    /// The next response's head started before this one's promised end.
    Desync,
    /// This host reset a TCP connection while bytes the application had written were not
    /// acknowledged by the peer: the kernel discarded them. For a response whose every byte
    /// was handed over, with its HTTP fields; for a connection that carried no judged response
    /// (TLS, other protocols, a reset between responses), with none.
    ResetDiscard,
    /// A response without framing (close-delimited body): it cannot be judged; reported with
    /// the bytes handed over when the stream ended.
    Unframed,
    /// A head that could not be read: longer than the capture, split over sends, or with
    /// contradictory framing. Never judged.
    Unparsed,
    /// Client side: the server ended the stream (FIN, end of stream, or reset) before every
    /// promised byte arrived. The client's view of a `short_write`, or of a server, proxy or
    /// network that failed on the way: what the customer sees.
    Truncated,
    /// Client side: the client closed or reset its connection before it read every promised
    /// byte, while the server was still sending (or had sent them all): not the server's fault.
    Aborted,
    /// The stream ended short of its promise, but events about it were lost (the ring buffer
    /// was full): the agent saw it only in part, so it does not call it a truncation.
    ObserverLoss,
}

impl Kind {
    /// How many kinds there are (for arrays indexed by `kind as usize`; `ObserverLoss` must
    /// stay the last variant).
    pub const COUNT: usize = Kind::ObserverLoss as usize + 1;

    /// Every kind, in order.
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Complete,
        Kind::ShortWrite,
        Kind::PeerReset,
        Kind::PeerClosed,
        Kind::Desync,
        Kind::ResetDiscard,
        Kind::Unframed,
        Kind::Unparsed,
        Kind::Truncated,
        Kind::Aborted,
        Kind::ObserverLoss,
    ];

    /// Its name in the output (`verdict` in JSON, the human line, metric labels, the stop
    /// summary): the one source of it, serde included.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Complete => "complete",
            Kind::ShortWrite => "short_write",
            Kind::PeerReset => "peer_reset",
            Kind::PeerClosed => "peer_closed",
            Kind::Desync => "desync",
            Kind::ResetDiscard => "reset_discard",
            Kind::Unframed => "unframed",
            Kind::Unparsed => "unparsed",
            Kind::Truncated => "truncated",
            Kind::Aborted => "aborted",
            Kind::ObserverLoss => "observer_loss",
        }
    }

    /// Something went wrong for a client, or may have and the agent could not see it all:
    /// printed by default (the rest only with `--all`). A client that closed its side first
    /// (`peer_closed`, `aborted`) is everyday traffic and is not.
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            Kind::ShortWrite
                | Kind::PeerReset
                | Kind::Desync
                | Kind::ResetDiscard
                | Kind::Truncated
                | Kind::ObserverLoss
        )
    }
}

/// Serialised as its name (`as_str`), the one source of it.
impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How the response's fate was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The promised bytes were all handed over.
    Reached,
    /// The application sent FIN (shutdown or close) on a TCP connection.
    Fin,
    /// The connection was reset (RST sent by this host, or received from the peer).
    Reset,
    /// A reader read end of stream: the peer of a Unix socket (server side), or the HTTP
    /// client itself (client side).
    Eof,
    /// The socket was freed unseen and its address reused by a new connection (Unix).
    SocketFreed,
    /// Another response head was sent.
    NextResponse,
}

/// What is known about the reader and the end of the connection when the verdict was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Evidence {
    /// Sends on this connection the kernel refused with EAGAIN (send buffer full).
    pub eagain: u32,
    /// Sends the kernel accepted only part of (send buffer full mid-send).
    pub partial_sends: u32,
    /// Either of the above: at some point on this connection the application wrote faster
    /// than the peer read (a slow reader, or just a large response to a fast one).
    pub send_buffer_full: bool,
    /// How the peer first ended its side (`PeerEnd`): `"fin"`, `"reset"`, `"eof"` (Unix),
    /// `"gone"` (sends failed with EPIPE/ECONNRESET), or null.
    pub peer_ended: Option<PeerEnd>,
    /// How the verdict was reached (`End`).
    pub end: Option<End>,
    /// Received bytes the application never read when this host reset the connection (the
    /// usual cause of a reset on close); null when not a reset by this host.
    pub unread_bytes: Option<u64>,
    /// TCP, at the state change that ended the stream (null when the verdict came before
    /// one, e.g. `complete` as the last byte was handed over, or for Unix sockets):
    /// written bytes the peer had not acknowledged yet (still in flight after a FIN),
    pub unacked_bytes_at_end: Option<u64>,
    /// received bytes the application had not read,
    pub unread_bytes_at_end: Option<u64>,
    /// the peer's advertised window (0: a zero window: the reader had stopped reading),
    pub peer_window_at_end: Option<u64>,
    /// and the connection's lifetime totals of time limited by the peer's receive window and
    /// by the send buffer (the kernel's `tcpi_rwnd_limited`/`tcpi_sndbuf_limited`).
    pub rwnd_limited_ms: Option<u64>,
    pub sndbuf_limited_ms: Option<u64>,
    /// From the agent first seeing the connection (its first send returning) to the verdict.
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    /// Shared with the connection: verdicts are many, connections fewer.
    pub meta: Arc<ConnMeta>,
    /// Pid of the task that sent the head (the connection's owner if not known).
    pub pid: u32,
    /// The response judged; None for connection-level verdicts (`reset_discard`).
    pub response: Option<ResponseFacts>,
    /// For `reset_discard`: written bytes the peer had not acknowledged.
    pub unacked_bytes: Option<u64>,
    pub evidence: Evidence,
    /// Kernel monotonic time of the deciding event.
    pub ts_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFacts {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Head + promised body; None where the end is not known (unframed, or a chunked body
    /// whose last chunk was never handed over).
    pub expected_bytes: Option<u64>,
    /// Bytes of the response the application handed the kernel.
    pub sent_bytes: u64,
    /// Bytes of the response the peer gets: all those handed over, less what a reset dropped
    /// (what the peer had not acknowledged when this host reset the connection, or when the
    /// peer reset it or ended its side first). Unix sockets: those handed over.
    pub delivered_bytes: u64,
}

impl ResponseFacts {
    pub fn missing_bytes(&self) -> Option<u64> {
        self.expected_bytes
            .map(|e| e.saturating_sub(self.sent_bytes))
    }
}

/// What could not be judged, and why: an operator must be able to tell "no truncation" from
/// "not looked at".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub heads: u64,
    /// Server-side verdicts decided, by `Kind` (`judged[kind as usize]`), built or only
    /// counted.
    pub judged: [u64; Kind::COUNT],
    /// Client-side verdicts likewise (`Side::Client`).
    pub judged_client: [u64; Kind::COUNT],
    /// Heads that did not end within `--max-head-bytes`, or whose rest was not seen.
    pub unparsed: u64,
    /// Heads with contradictory or malformed framing.
    pub invalid: u64,
    /// Chunked responses whose end could not be told: the stream ended right after a blank
    /// line that may close trailers.
    pub chunked_uncertain: u64,
    /// Heads promising a body that the application never tried to send, answering a request
    /// that was not seen (or not matched): likely answers to HEAD, not judged.
    pub head_only: u64,
    /// Responses known to answer a HEAD request (no body, whatever the head says).
    pub head_answers: u64,
    /// Interim responses (1xx but 101): part of the exchange of the final response that
    /// follows, not judged.
    pub interim: u64,
    /// Connections dropped from the table to stay under the limit, unjudged.
    pub evicted: u64,
    /// Client connections where a response began inside a read (pipelined responses read
    /// together): its head was not seen, and it and the responses after it on that
    /// connection are not judged (at least one response each).
    pub pipelined_unseen: u64,
    /// Heads being gathered that did not fit in the byte budget all of them share (unparsed).
    pub heads_over_budget: u64,
}

impl Stats {
    /// The count of server-side `kind` verdicts, to add to.
    pub fn judged(&mut self, kind: Kind) -> &mut u64 {
        &mut self.judged[kind as usize]
    }

    /// The count of `kind` verdicts on `side`, to add to.
    pub fn judged_on(&mut self, side: Side, kind: Kind) -> &mut u64 {
        match side {
            Side::Server => &mut self.judged[kind as usize],
            Side::Client => &mut self.judged_client[kind as usize],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict names are the output contract (`docs/output.md`): serde writes `as_str`.
    #[test]
    fn kind_names_as_documented() {
        let names = Kind::ALL.map(Kind::as_str);
        assert_eq!(
            names,
            [
                "complete",
                "short_write",
                "peer_reset",
                "peer_closed",
                "desync",
                "reset_discard",
                "unframed",
                "unparsed",
                "truncated",
                "aborted",
                "observer_loss",
            ]
        );
        for kind in Kind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }
}
