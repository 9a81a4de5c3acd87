//! The request side of a server connection: which request each response answers, so that an
//! answer to HEAD (no body, whatever its head says) is told apart from a response whose body
//! never came.
//!
//! The kernel reports reads that begin like a request line, with their receive-stream offset and
//! first bytes. Requests are read in stream order: a request's head and body length tell where
//! the next one starts. Whenever that chain breaks (a head longer than the capture, a chunked
//! body, a read we did not see), the next answers are `Unknown` until a read again begins with a
//! whole request line while no request is outstanding.
use crate::http_head::{Method, ParsedRequest, parse_request};
use std::collections::VecDeque;

/// What a response answers, as far as the requests seen tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Head,
    Connect,
    /// A request whose response must carry the body its head promises.
    Other,
    Unknown,
}

/// Requests waiting for an answer, at most; more means we lost the thread.
const MAX_OUTSTANDING: usize = 64;

#[derive(Clone, Debug)]
pub struct Requests {
    /// Receive-stream offset where the next request starts; None: not known.
    next: Option<u64>,
    /// Requests read and not answered yet, oldest first (None: one whose method is not known).
    outstanding: VecDeque<Option<Method>>,
    /// The client sent a request before the previous one was answered. Responses may then
    /// share a send and their heads go unseen, so answers can no longer be matched to requests
    /// one to one; `Other` is not trusted from then on.
    pipelined: bool,
}

impl Default for Requests {
    fn default() -> Self {
        // The kernel counts offsets from the first read it saw on the socket.
        Requests { next: Some(0), outstanding: VecDeque::new(), pipelined: false }
    }
}

impl Requests {
    /// A read of `len` bytes at `offset` that began like a request line; `cap` is its start.
    pub fn read(&mut self, offset: u64, len: u64, cap: &[u8]) {
        match self.next {
            Some(n) if offset == n => self.parse_from(offset, len, cap),
            // Inside the body of the request before: a body that happens to start like this.
            Some(n) if offset < n => {}
            // Lost, or a read we did not see held the next request's start. Pick the thread up
            // again only where it cannot be a body: a whole request line, nothing outstanding.
            _ if self.outstanding.is_empty() && whole_request_line(cap) => self.parse_from(offset, len, cap),
            _ => self.next = None,
        }
    }

    /// A final response began: what does it answer?
    pub fn answer(&mut self) -> Answer {
        if self.outstanding.len() > 1 {
            self.pipelined = true;
        }
        match self.outstanding.pop_front().flatten() {
            Some(Method::Head) => Answer::Head,
            Some(Method::Connect) => Answer::Connect,
            Some(Method::Other) if !self.pipelined => Answer::Other,
            _ => Answer::Unknown,
        }
    }

    fn parse_from(&mut self, offset: u64, len: u64, cap: &[u8]) {
        let mut pos = 0usize;
        loop {
            if self.outstanding.len() >= MAX_OUTSTANDING {
                self.outstanding.clear();
                self.next = None;
                return;
            }
            let (method, end) = match parse_request(&cap[pos..]) {
                ParsedRequest::Head { method, len: head, body: Some(body) } => (Some(method), Some(pos as u64 + head + body)),
                ParsedRequest::Head { method, .. } | ParsedRequest::Incomplete(method) => (Some(method), None),
                ParsedRequest::Invalid => (None, None),
            };
            self.outstanding.push_back(method);
            match end {
                None => self.next = None,
                // The next request starts in a later read.
                Some(end) if end >= len => self.next = Some(offset + end),
                // Another request in this read, in what was captured: read it too.
                Some(end) if (end as usize) < cap.len() => {
                    pos = end as usize;
                    continue;
                }
                // Another request in this read, past the capture.
                Some(_) => {
                    self.outstanding.push_back(None);
                    self.next = None;
                }
            }
            return;
        }
    }
}

/// `METHOD target HTTP/1.x\r\n`: a request line, whole.
fn whole_request_line(cap: &[u8]) -> bool {
    let Some(eol) = cap.iter().position(|&b| b == b'\n') else { return false };
    let line = cap[..eol].strip_suffix(b"\r").unwrap_or(&cap[..eol]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(t), Some(v), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else { return false };
    !m.is_empty() && m.iter().all(u8::is_ascii_uppercase) && !t.is_empty() && (v == b"HTTP/1.1" || v == b"HTTP/1.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn reads(rs: &[&[u8]]) -> Requests {
        let mut r = Requests::default();
        let mut off = 0;
        for b in rs {
            r.read(off, b.len() as u64, b);
            off += b.len() as u64;
        }
        r
    }

    #[test]
    fn one_request_per_read() {
        let mut r = reads(&[GET]);
        assert_eq!(r.answer(), Answer::Other);
        r.read(GET.len() as u64, HEAD.len() as u64, HEAD);
        assert_eq!(r.answer(), Answer::Head);
        assert_eq!(r.answer(), Answer::Unknown, "nothing outstanding");
    }

    #[test]
    fn pipelined_in_one_read() {
        let both = [GET, HEAD, GET].concat();
        let mut r = reads(&[&both]);
        // Three outstanding: pipelining. HEAD is still trusted (it only spares a response
        // from judgment); the others are not.
        assert_eq!(r.answer(), Answer::Unknown);
        assert_eq!(r.answer(), Answer::Head);
        assert_eq!(r.answer(), Answer::Unknown);
    }

    #[test]
    fn request_past_the_capture_is_unknown() {
        let both = [GET, HEAD].concat();
        let mut r = Requests::default();
        r.read(0, both.len() as u64, &both[..GET.len() + 3]);
        assert_eq!(r.answer(), Answer::Unknown, "two outstanding: pipelined");
        assert_eq!(r.answer(), Answer::Unknown);
        assert_eq!(r.next, None);
    }

    #[test]
    fn bodies_are_skipped_by_length() {
        let post = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
        let mut r = Requests::default();
        r.read(0, post.len() as u64, post);
        // The body arrives in a read that starts like a request line: still body.
        r.read(post.len() as u64, 10, b"GET / HTTP");
        assert_eq!(r.answer(), Answer::Other);
        assert_eq!(r.answer(), Answer::Unknown);
        r.read(post.len() as u64 + 10, HEAD.len() as u64, HEAD);
        assert_eq!(r.answer(), Answer::Head);
    }

    #[test]
    fn body_in_the_same_read() {
        let both = [&b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..], HEAD].concat();
        let mut r = reads(&[&both]);
        assert_eq!(r.answer(), Answer::Unknown); // pipelined
        assert_eq!(r.answer(), Answer::Head);
    }

    #[test]
    fn long_head_loses_the_thread_until_a_request_line() {
        let mut r = Requests::default();
        let long = [&b"GET / HTTP/1.1\r\nCookie: "[..], &[b'x'; 600], b"\r\n\r\n"].concat();
        r.read(0, long.len() as u64, &long[..512]);
        assert_eq!(r.answer(), Answer::Other, "the method is known");
        assert_eq!(r.next, None);
        // Next request: a whole request line, nothing outstanding: back in step.
        r.read(long.len() as u64, HEAD.len() as u64, HEAD);
        assert_eq!(r.answer(), Answer::Head);
        assert_eq!(r.next, Some(long.len() as u64 + HEAD.len() as u64));
    }

    #[test]
    fn no_resync_while_requests_are_outstanding() {
        let mut r = Requests::default();
        r.read(0, 100, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        // A read inside the chunked body (or a pipelined request: cannot tell).
        r.read(200, GET.len() as u64, GET);
        assert_eq!(r.answer(), Answer::Other);
        assert_eq!(r.answer(), Answer::Unknown);
    }

    #[test]
    fn a_missed_read_loses_the_thread() {
        let mut r = reads(&[GET]);
        assert_eq!(r.answer(), Answer::Other);
        // The read at GET.len() was not reported (it did not start like a request line).
        r.read(GET.len() as u64 + 50, 9, b"GET / xyz");
        assert_eq!(r.next, None);
        assert_eq!(r.answer(), Answer::Unknown);
    }

    #[test]
    fn garbage_at_a_boundary_is_an_unknown_request() {
        let mut r = reads(&[b"GETX / HTTP/1.1 \r\n\r\n"]);
        assert_eq!(r.answer(), Answer::Unknown);
        assert_eq!(r.next, None);
    }

    #[test]
    fn connect() {
        let mut r = reads(&[b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"]);
        assert_eq!(r.answer(), Answer::Connect);
    }

    #[test]
    fn outstanding_is_bounded() {
        let many = GET.repeat(100);
        let mut r = Requests::default();
        r.read(0, many.len() as u64, &many);
        assert!(r.outstanding.len() <= MAX_OUTSTANDING);
        assert_eq!(r.next, None);
    }

    #[test]
    fn request_lines() {
        assert!(whole_request_line(b"GET /a HTTP/1.1\r\n"));
        assert!(whole_request_line(b"OPTIONS * HTTP/1.0\n"));
        for bad in [&b"GET /a HTTP/1.1"[..], b"GET HTTP/1.1\r\n", b"get / HTTP/1.1\r\n", b"GET / HTTP/2\r\n", b"GET / x HTTP/1.1\r\n", b""] {
            assert!(!whole_request_line(bad), "{bad:?}");
        }
    }
}
