//! The request side of a server connection: which request each response answers, so that an
//! answer to HEAD (no body, whatever its head says) is told apart from a response whose body
//! never came.
//!
//! The kernel does not ship requests: it counts, per socket, the reads that begin like a
//! request line (`METHOD `) and keeps the first one's method; each response head carries what
//! was counted since the head before ([`Seen`]). One request read between two responses is the
//! common case and is trusted. None (the request came in a read that began elsewhere, or with
//! the one before) or several (pipelining, or a body that happens to begin like a request) are
//! not trusted, and such answers are `Unknown`.
use truncwatch_common::{METHOD_CONNECT, METHOD_HEAD, METHOD_OTHER};

/// What a request's method means for its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The response has no body, whatever its head says (RFC 9110 §9.3.2).
    Head,
    /// A 2xx response turns the connection into a tunnel (RFC 9110 §9.3.6).
    Connect,
    Other,
}

impl Method {
    /// From the kernel's `METHOD_*` code.
    pub fn from_code(code: u8) -> Option<Method> {
        match code {
            METHOD_HEAD => Some(Method::Head),
            METHOD_CONNECT => Some(Method::Connect),
            METHOD_OTHER => Some(Method::Other),
            _ => None,
        }
    }
}

/// Reads that began like a request line since the previous response head, and the first
/// one's method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub count: u32,
    pub first: Option<Method>,
}

/// What a response answers, as far as the requests seen tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Head,
    Connect,
    /// A request whose response must carry the body its head promises.
    Other,
    Unknown,
}

#[derive(Clone, Debug, Default)]
pub struct Requests {
    /// Requests seen since the last final response (interim 1xx heads pass theirs on).
    pending: Seen,
    /// Several requests were read before one answer: pipelining. Responses may then share a
    /// send and their heads go unseen, so the counts no longer pair requests with answers;
    /// `Other` is not trusted from then on.
    pipelined: bool,
}

impl Requests {
    /// A response head was sent, carrying what was read since the head before.
    pub fn head_sent(&mut self, seen: Seen) {
        if self.pending.count == 0 {
            self.pending.first = seen.first;
        }
        self.pending.count = self.pending.count.saturating_add(seen.count);
    }

    /// A final response began: what does it answer?
    pub fn answer(&mut self) -> Answer {
        let seen = std::mem::take(&mut self.pending);
        if seen.count > 1 {
            self.pipelined = true;
        }
        match (seen.count, seen.first) {
            (0, _) | (_, None) => Answer::Unknown,
            // The first request read is the oldest unanswered one; HEAD and CONNECT only ever
            // spare a response from judgement, so they are trusted even when pipelined.
            (_, Some(Method::Head)) => Answer::Head,
            (_, Some(Method::Connect)) => Answer::Connect,
            (1, Some(Method::Other)) if !self.pipelined => Answer::Other,
            _ => Answer::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(count: u32, first: Option<Method>) -> Seen {
        Seen { count, first }
    }

    #[test]
    fn one_request_per_response() {
        let mut r = Requests::default();
        for (m, want) in [
            (Method::Other, Answer::Other),
            (Method::Head, Answer::Head),
            (Method::Connect, Answer::Connect),
        ] {
            r.head_sent(seen(1, Some(m)));
            assert_eq!(r.answer(), want);
        }
    }

    #[test]
    fn no_request_seen_is_unknown() {
        let mut r = Requests::default();
        r.head_sent(Seen::default());
        assert_eq!(r.answer(), Answer::Unknown);
        // A count without a method (cannot come from the kernel) is not trusted either.
        r.head_sent(seen(1, None));
        assert_eq!(r.answer(), Answer::Unknown);
    }

    #[test]
    fn pipelining_stops_trusting_other_for_good() {
        let mut r = Requests::default();
        r.head_sent(seen(2, Some(Method::Other)));
        assert_eq!(r.answer(), Answer::Unknown);
        r.head_sent(seen(1, Some(Method::Other)));
        assert_eq!(
            r.answer(),
            Answer::Unknown,
            "after pipelining, a count of one may be off"
        );
        // HEAD is still trusted: it only spares a response.
        r.head_sent(seen(3, Some(Method::Head)));
        assert_eq!(r.answer(), Answer::Head);
    }

    #[test]
    fn interim_heads_pass_their_requests_on() {
        // 100 Continue, then the final answer: the request was counted at the interim head.
        let mut r = Requests::default();
        r.head_sent(seen(1, Some(Method::Other)));
        r.head_sent(Seen::default());
        assert_eq!(r.answer(), Answer::Other);
        // Requests read at an interim head and before the final one add up: two, pipelined;
        // the first one's method is kept.
        r.head_sent(seen(1, Some(Method::Head)));
        r.head_sent(seen(1, Some(Method::Other)));
        assert_eq!(r.answer(), Answer::Head);
        r.head_sent(seen(1, Some(Method::Other)));
        assert_eq!(r.answer(), Answer::Unknown, "pipelined since");
    }

    #[test]
    fn counts_saturate() {
        let mut r = Requests::default();
        r.head_sent(seen(u32::MAX, Some(Method::Other)));
        r.head_sent(seen(5, Some(Method::Other)));
        assert_eq!(r.answer(), Answer::Unknown);
    }

    #[test]
    fn kernel_codes() {
        assert_eq!(Method::from_code(METHOD_HEAD), Some(Method::Head));
        assert_eq!(Method::from_code(METHOD_CONNECT), Some(Method::Connect));
        assert_eq!(Method::from_code(METHOD_OTHER), Some(Method::Other));
        assert_eq!(Method::from_code(0), None);
        assert_eq!(Method::from_code(200), None);
    }
}
