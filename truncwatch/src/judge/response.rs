//! One response on a server connection, from its head to its verdict: what the head promised,
//! how far the bytes handed over got, and, once the stream ended, what the peer got of it.
use crate::judge::http_head::{Body, Head};
use crate::judge::peer_end::PeerEnd;
use crate::judge::requests::Answer;
use crate::judge::verdict::{End, Kind};

#[derive(Clone, Debug)]
pub struct Response {
    /// Stream offset of the head's first byte.
    pub start: u64,
    pub head: Head,
    /// The task that sent the head.
    pub pid: u32,
    /// The application tried to send past the head: a body was meant to follow. Without it,
    /// a head alone is what a HEAD request gets, and is not judged...
    pub body_attempted: bool,
    /// ...unless the request is known and was not HEAD: then the body is owed.
    pub body_owed: bool,
    /// For chunked bodies: stream offset just past the last chunk, once it was handed over.
    pub chunk_end: Option<u64>,
    /// What request this response answers, as far as known.
    pub answer: Answer,
}

impl Response {
    /// A head alone promising a body the application never tried to send, answering a request
    /// that is not known to want one: most likely an answer to HEAD, and not judged.
    pub fn head_only(&self, sent: u64) -> bool {
        !self.body_attempted
            && !self.body_owed
            && sent == self.start + self.head.len
            && matches!(self.head.body, Body::Length(n) if n > 0)
    }

    /// Stream offset one past the last promised byte, where it is known.
    pub fn end(&self) -> Option<u64> {
        match self.head.body {
            Body::Length(n) => Some(self.start + self.head.len + n),
            Body::None => Some(self.start + self.head.len),
            Body::Chunked => self.chunk_end,
            Body::UntilClose => None,
        }
    }

    /// Does the stream, whose last bytes up to `upto` are `tail`, complete a chunked body?
    pub fn saw_last_chunk(&self, tail: &[u8], upto: u64) -> bool {
        // `\n0\r\n\r\n`: the previous line's end, a zero size, no trailers, the blank line.
        // Or a final buffer holding exactly `0\r\n\r\n` (the kernel copies the tail from the
        // send's last buffer only, so a 5-byte tail is a 5-byte buffer): how nginx and
        // most servers write the last chunk. Past the head: a header line cannot be "0".
        self.head.body == Body::Chunked
            && upto > self.start + self.head.len
            && (tail.ends_with(b"\n0\r\n\r\n") || tail == b"0\r\n\r\n")
    }
}

/// How a connection's stream ended, as it bears on what the peer gets (the correlator's
/// own; a verdict reports the coarser `End`, `evidence.end` in the output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The application sent FIN (shutdown or close): the kernel goes on delivering what it
    /// holds.
    Fin,
    /// This host reset the connection (close with unread input, `SO_LINGER {1, 0}`): the
    /// `discarded` written bytes it had not sent yet are dropped (those in flight still
    /// reach the peer, ahead of the reset).
    HostReset { discarded: u64 },
    /// The peer reset it: it gets nothing it had not acknowledged.
    PeerReset,
    /// A Unix stream's reader got end of stream (the application shut down or closed).
    Eof,
    /// A Unix socket was freed unnoticed and its address reused.
    SocketFreed,
}

impl StreamEnd {
    pub fn end(self) -> End {
        match self {
            StreamEnd::Fin => End::Fin,
            StreamEnd::HostReset { .. } | StreamEnd::PeerReset => End::Reset,
            StreamEnd::Eof => End::Eof,
            StreamEnd::SocketFreed => End::SocketFreed,
        }
    }
}

/// How the peer ended its side of the connection, each at the stream offset (bytes handed
/// over) when it was seen. Only an end after a response began is that response's peer ending
/// first: a client may half-close once its request is sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerEnds {
    /// Its FIN arrived (TCP CLOSE_WAIT).
    pub fin: Option<u64>,
    /// The server read end of stream (Unix).
    pub eof: Option<u64>,
    /// Its reset arrived.
    pub reset: Option<u64>,
    /// Sends failed with EPIPE or ECONNRESET.
    pub gone: Option<u64>,
}

impl PeerEnds {
    /// Record an end (the first of each kind counts).
    pub fn saw(&mut self, how: PeerEnd, at: u64) {
        let slot = match how {
            PeerEnd::Fin => &mut self.fin,
            PeerEnd::Eof => &mut self.eof,
            PeerEnd::Reset => &mut self.reset,
            PeerEnd::Gone => &mut self.gone,
        };
        slot.get_or_insert(at);
    }

    /// The peer's first end seen after stream offset `after`, as `evidence.peer_ended` names it.
    pub fn first_after(&self, after: u64) -> Option<PeerEnd> {
        self.seen()
            .filter(|&(at, _)| at > after)
            .min()
            .map(|(_, how)| how)
    }

    /// The peer's first end at all (evidence, whether or not it decides a verdict).
    pub fn first(&self) -> Option<PeerEnd> {
        self.seen().min().map(|(_, how)| how)
    }

    /// (offset, how) of each end seen. (At the same offset `PeerEnd`'s order decides: a FIN
    /// sorts before a reset.)
    fn seen(&self) -> impl Iterator<Item = (u64, PeerEnd)> {
        [
            (self.fin, PeerEnd::Fin),
            (self.eof, PeerEnd::Eof),
            (self.reset, PeerEnd::Reset),
            (self.gone, PeerEnd::Gone),
        ]
        .into_iter()
        .filter_map(|(at, how)| Some((at?, how)))
    }
}

/// What a response whose stream ended became: its verdict, given how the stream ended, who
/// ended first (`peer_first`: the peer's end after this response began), whether every
/// promised byte was handed over (`reached`), and whether the peer got them all
/// (`delivered_all`).
pub fn fate(
    ending: StreamEnd,
    peer_first: Option<PeerEnd>,
    reached: bool,
    delivered_all: bool,
) -> Kind {
    if reached && delivered_all {
        return Kind::Complete;
    }
    match (peer_first, ending) {
        // The peer ended first: its doing, whatever this host did after.
        (Some(PeerEnd::Fin | PeerEnd::Eof), _) => Kind::PeerClosed,
        (Some(_), _) | (None, StreamEnd::PeerReset) => Kind::PeerReset,
        // Every byte handed over, and this host's reset dropped some of them.
        (None, StreamEnd::HostReset { .. }) if reached => Kind::ResetDiscard,
        _ => Kind::ShortWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ends_count_only_after_a_response_began() {
        let mut p = PeerEnds::default();
        p.saw(PeerEnd::Fin, 100);
        assert_eq!(p.first_after(100), None, "a half-close before the response");
        assert_eq!(p.first_after(99), Some(PeerEnd::Fin));
        p.saw(PeerEnd::Reset, 500);
        p.saw(PeerEnd::Fin, 700); // a second FIN changes nothing
        assert_eq!(p.first_after(100), Some(PeerEnd::Reset));
        assert_eq!(p.first_after(50), Some(PeerEnd::Fin));
        assert_eq!(p.first(), Some(PeerEnd::Fin));
        assert_eq!(PeerEnds::default().first(), None);
        let mut p = PeerEnds::default();
        p.saw(PeerEnd::Eof, 0);
        assert_eq!(
            p.first(),
            Some(PeerEnd::Eof),
            "an end at offset 0 still shows"
        );
    }

    #[test]
    fn fates() {
        let host_reset = StreamEnd::HostReset { discarded: 10 };
        for ending in [
            StreamEnd::Fin,
            host_reset,
            StreamEnd::PeerReset,
            StreamEnd::Eof,
        ] {
            assert_eq!(fate(ending, None, true, true), Kind::Complete);
            assert_eq!(
                fate(ending, Some(PeerEnd::Fin), false, false),
                Kind::PeerClosed
            );
            assert_eq!(
                fate(ending, Some(PeerEnd::Eof), true, false),
                Kind::PeerClosed
            );
            assert_eq!(
                fate(ending, Some(PeerEnd::Gone), false, false),
                Kind::PeerReset
            );
        }
        assert_eq!(fate(StreamEnd::Fin, None, false, true), Kind::ShortWrite);
        assert_eq!(fate(host_reset, None, false, false), Kind::ShortWrite);
        assert_eq!(fate(host_reset, None, true, false), Kind::ResetDiscard);
        assert_eq!(
            fate(StreamEnd::PeerReset, None, true, false),
            Kind::PeerReset
        );
    }
}
