//! Correlator cases: each feeds the events a kernel would produce and checks the verdicts.
use super::*;
use crate::judge::events::{PieceFacts, ReadFacts, Side, Tail, TcpFacts, Transport};
use crate::judge::requests::{Method, Seen};

const SK: u64 = 0xffff_8880_0000_1000;
const CLIENT: u64 = 0xffff_8880_0000_2000;
const TCP_ESTABLISHED: i32 = 1;

fn meta(t: Transport) -> ConnMeta {
    ConnMeta {
        transport: t,
        pid: 42,
        comm: "srv".into(),
        local: "127.0.0.1:80".into(),
        peer: "127.0.0.1:5000".into(),
        tls: false,
        side: crate::judge::events::Side::Server,
    }
}

fn head(cl: u64) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n").into_bytes()
}

/// Drives a correlator the way the kernel programs would: stream offsets are tracked here.
struct Wire {
    c: Correlator,
    out: Vec<Verdict>,
    offset: u64,
    ts: u64,
    /// Requests read since the last head, as the kernel's socket state counts them.
    reads: Seen,
}

impl Wire {
    fn new(t: Transport) -> Self {
        Wire::opened(meta(t), None)
    }
    /// A connection opened with `meta` (and a TCP client's `copied_seq`).
    fn opened(meta: ConnMeta, copied_seq: Option<u32>) -> Self {
        Wire::opened_in(Correlator::new(1000, Some(250)), meta, copied_seq)
    }
    /// The same, fed to correlator `c`.
    fn opened_in(c: Correlator, meta: ConnMeta, copied_seq: Option<u32>) -> Self {
        let mut w = Wire {
            c,
            out: vec![],
            offset: 0,
            ts: 1,
            reads: Seen::default(),
        };
        w.ev(Event::Open {
            sk: SK,
            ts_ns: 1,
            meta,
            losses: 0,
            copied_seq,
            peer_fin: false,
            late: false,
        });
        w
    }
    fn ev(&mut self, e: Event) {
        self.ts += 1;
        self.c.handle(e, &mut self.out);
    }
    /// The kernel accepted `accepted` of `requested` bytes; `cap` if the send began with HTTP/.
    fn send_part(&mut self, cap: Option<Vec<u8>>, requested: u64, accepted: u64) {
        self.send_tail(cap, requested, accepted, &[]);
    }
    /// A send whose last accepted bytes were `tail`.
    fn send_tail(&mut self, cap: Option<Vec<u8>>, requested: u64, accepted: u64, tail: &[u8]) {
        let offset = self.offset;
        self.offset += accepted;
        let ts_ns = self.ts;
        let tail = Tail::new(tail);
        let requests = if cap.is_some() {
            std::mem::take(&mut self.reads)
        } else {
            Seen::default()
        };
        self.ev(Event::Send(SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: accepted as i64,
            requested,
            syscall: 44,
            head: cap,
            tail,
            requests,
            events_lost: false,
            part: Default::default(),
            tls_seq: None,
        }));
    }
    /// Send `bytes` for real: head capture and tail taken from them, as the kernel would.
    fn send_bytes(&mut self, bytes: &[u8]) {
        let cap = bytes
            .starts_with(b"HTTP/")
            .then(|| bytes[..bytes.len().min(512)].to_vec());
        self.send_tail(cap, bytes.len() as u64, bytes.len() as u64, bytes);
    }
    /// A send of `n` body bytes whose event says the socket lost events before it.
    fn send_after_loss(&mut self, n: u64) {
        let (offset, ts_ns) = (self.offset, self.ts);
        self.offset += n;
        self.ev(Event::Send(SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: n as i64,
            requested: n,
            events_lost: true,
            ..SendFacts::default()
        }));
    }
    fn send(&mut self, cap: Option<Vec<u8>>, n: u64) {
        self.send_part(cap, n, n);
    }
    /// A full head + `body` bytes of body in one send, promising `cl`.
    fn response(&mut self, cl: u64, body: u64) {
        let h = head(cl);
        let n = h.len() as u64 + body;
        self.send(Some(h), n);
    }
    fn err(&mut self, errno: i64) {
        let (offset, ts_ns) = (self.offset, self.ts);
        self.ev(Event::Send(SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: -errno,
            requested: 100,
            syscall: 44,
            ..SendFacts::default()
        }));
    }
    fn state(&mut self, old: i32, new: i32) {
        self.state_facts(old, new, TcpFacts::default());
    }
    /// A state change with the socket's counters: `unacked` written bytes not acknowledged.
    fn state_unacked(&mut self, old: i32, new: i32, unacked: u64) {
        self.state_facts(
            old,
            new,
            TcpFacts {
                unacked,
                ..TcpFacts::default()
            },
        );
    }
    /// A state change with these counters.
    fn state_facts(&mut self, old: i32, new: i32, facts: TcpFacts) {
        let ts_ns = self.ts;
        self.ev(Event::TcpState {
            sk: SK,
            ts_ns,
            oldstate: old,
            newstate: new,
            facts,
        });
    }
    /// This host resets the connection with `unacked` bytes not acknowledged, none of them
    /// sent yet (a stalled reader: the window is closed).
    fn host_reset(&mut self, unacked: u64) {
        self.host_reset_in_flight(unacked, 0);
    }
    /// ... `in_flight` of them sent already (the kernel's reset event, then the state change
    /// to CLOSE).
    fn host_reset_in_flight(&mut self, unacked: u64, in_flight: u64) {
        if unacked > 0 {
            let ts_ns = self.ts;
            self.ev(Event::ResetDiscard {
                sk: SK,
                ts_ns,
                meta: meta(Transport::Tcp),
                unacked,
                unsent: unacked - in_flight,
                unread: 7,
                snd_una: 0,
            });
        }
        self.state_unacked(TCP_ESTABLISHED, TCP_CLOSE, unacked);
    }
    /// The application ends the stream with a FIN.
    fn fin(&mut self) {
        self.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    }
    /// A head promising `cl` bytes of body, and nothing else.
    fn head_alone(&mut self, cl: u64) {
        let h = head(cl);
        let n = h.len() as u64;
        self.send(Some(h), n);
    }
    /// The server read `bytes`: the kernel counts it if it begins like a request line.
    fn read(&mut self, bytes: &[u8]) {
        if let Some(m) = kernel_method(bytes) {
            if self.reads.count == 0 {
                self.reads.first = Some(m);
            }
            self.reads.count += 1;
        }
    }
    fn kinds(&self) -> Vec<Kind> {
        self.out.iter().map(|v| v.kind).collect()
    }
    /// The last verdict's `sent_bytes` and `delivered_bytes`.
    fn r_sent_delivered(&self) -> (u64, u64) {
        let r = self.out.last().expect("a verdict").r();
        (r.sent_bytes, r.delivered_bytes)
    }
}

impl Verdict {
    fn r(&self) -> &ResponseFacts {
        self.response.as_ref().expect("a response-level verdict")
    }
}

/// The receive program's look at a read's first 8 bytes (`recv.rs`).
fn kernel_method(b: &[u8]) -> Option<Method> {
    let b = b.get(..8)?;
    if b.starts_with(b"HEAD ") {
        return Some(Method::Head);
    }
    if b == b"CONNECT " {
        return Some(Method::Connect);
    }
    let sp = b.iter().position(|&c| c == b' ')?;
    (sp >= 3 && b[..sp].iter().all(u8::is_ascii_uppercase)).then_some(Method::Other)
}

fn hl(cl: u64) -> u64 {
    head(cl).len() as u64
}

#[test]
fn complete_in_one_send() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    assert!(w.out.is_empty(), "settled by the next head or the end");
    let reached = w.ts - 1; // the send's time (`ev` moves the clock on after it)
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(
        w.out[0].ts_ns, reached,
        "dated when its last byte was handed over"
    );
    assert_eq!(w.out[0].r().delivered_bytes, hl(100) + 100);
    let v = &w.out[0];
    assert_eq!(
        (
            v.r().expected_bytes.unwrap(),
            v.r().sent_bytes,
            v.r().missing_bytes().unwrap()
        ),
        (hl(100) + 100, hl(100) + 100, 0)
    );
    assert_eq!(
        (v.r().status, v.r().content_length, v.r().chunked, v.pid),
        (200, Some(100), false, 42)
    );
    assert_eq!(v.evidence.end, Some(End::Reached));
}

#[test]
fn complete_over_many_sends_settled_at_the_next_head() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(10_000, 0);
    for _ in 0..10 {
        w.send(None, 1000);
        assert!(w.out.is_empty());
    }
    w.response(10, 10);
    assert_eq!(w.kinds(), [Kind::Complete], "the next response settles it");
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete; 2], "and the end the last one");
}

#[test]
fn short_write_then_fin() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(1_000_000, 0);
    w.send_part(None, 1_000_000, 219_264);
    w.err(EAGAIN);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    let v = &w.out[0];
    assert_eq!(v.r().sent_bytes, hl(1_000_000) + 219_264);
    assert_eq!(v.r().expected_bytes.unwrap(), hl(1_000_000) + 1_000_000);
    assert_eq!(v.r().missing_bytes().unwrap(), 1_000_000 - 219_264);
    assert_eq!(
        (
            v.evidence.eagain,
            v.evidence.partial_sends,
            v.evidence.send_buffer_full
        ),
        (1, 1, true)
    );
    assert_eq!(
        (v.evidence.end, v.evidence.peer_ended),
        (Some(End::Fin), None)
    );
}

/// A client that half-closes once its request is sent still wants the response: a cut after
/// that is the server's.
#[test]
fn short_write_after_peer_half_close_before_the_response_is_the_servers() {
    let mut w = Wire::new(Transport::Tcp);
    w.state(TCP_ESTABLISHED, TCP_CLOSE_WAIT);
    w.response(500, 100);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 30);
    assert_eq!(w.kinds(), [], "its delivery is not settled yet");
    // Its FIN (and so every byte before it) acknowledged: one unacknowledged sequence number
    // less than the FIN's, which is not a byte.
    w.state_unacked(TCP_LAST_ACK, TCP_CLOSE, 0);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    let v = &w.out[0];
    assert_eq!(v.evidence.peer_ended, Some(PeerEnd::Fin));
    assert_eq!(
        v.r().delivered_bytes,
        v.r().sent_bytes,
        "it still reads what is sent"
    );
}

/// The peer's FIN after the response began (a closed event stream, an abandoned download),
/// then the server stops: the peer's doing, and it gets what it acknowledged.
#[test]
fn peer_fin_after_the_response_began_is_peer_closed() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(5000, 100);
    // It had acknowledged all but 50 bytes when its FIN came.
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 50);
    w.send(None, 200);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 250);
    assert_eq!(w.kinds(), []);
    // The bytes reach its closed socket, which answers with a reset.
    w.state_unacked(TCP_LAST_ACK, RESET_RECEIVED, 250);
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
    let v = &w.out[0];
    assert_eq!(
        (v.r().sent_bytes, v.r().delivered_bytes),
        (hl(5000) + 300, hl(5000) + 50)
    );
    assert_eq!(
        (v.evidence.peer_ended, v.evidence.end),
        (Some(PeerEnd::Fin), Some(End::Reset)),
        "its reset settled what it got"
    );
    assert!(
        !Kind::PeerClosed.is_problem(),
        "not a server fault: printed with --all only"
    );
    // Its reset after its FIN (data reached a closed socket) is still its FIN first.
    let mut w = Wire::new(Transport::Tcp);
    w.response(5000, 100);
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 40);
    w.state_unacked(TCP_CLOSE_WAIT, RESET_RECEIVED, 40);
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
    assert_eq!(w.out[0].r().delivered_bytes, hl(5000) + 60);
    // A response all handed over, of which the leaving peer had not acknowledged all.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 50);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 50);
    w.state_unacked(TCP_LAST_ACK, RESET_RECEIVED, 50);
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
    // ...or had: complete.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    w.state(TCP_ESTABLISHED, TCP_CLOSE_WAIT);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 0);
    assert_eq!(w.kinds(), [Kind::Complete]);
}

#[test]
fn reset_by_this_host_with_missing_bytes_is_short_write() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(500, 100);
    w.state(TCP_ESTABLISHED, TCP_CLOSE);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].evidence.end, Some(End::Reset));
    assert_eq!(
        w.out[0].r().delivered_bytes,
        hl(500) + 100,
        "nothing unacknowledged"
    );
}

/// nginx `send_timeout` with `reset_timedout_connection on`: cut short, then reset. One
/// verdict, the response's, and the peer got what it had acknowledged.
#[test]
fn short_write_then_reset_is_one_short_write_with_what_was_delivered() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(8_000_000, 3_000_000);
    w.host_reset(2_000_000);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    let v = &w.out[0];
    assert_eq!(
        (v.r().sent_bytes, v.r().delivered_bytes),
        (hl(8_000_000) + 3_000_000, hl(8_000_000) + 1_000_000)
    );
    assert_eq!(
        (v.evidence.end, v.evidence.unread_bytes),
        (Some(End::Reset), Some(7))
    );
}

/// Everything handed over, then this host reset the connection (hyper not reading a POST
/// body, close with unread input, `SO_LINGER 0`): the response's own `reset_discard`, with its
/// HTTP fields, and no connection-level line.
#[test]
fn reset_after_a_whole_response_is_its_reset_discard() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(4_194_304, 4_194_304);
    assert!(w.out.is_empty());
    w.host_reset(3_121_232);
    assert_eq!(w.kinds(), [Kind::ResetDiscard]);
    let v = &w.out[0];
    let r = v.r();
    let total = hl(4_194_304) + 4_194_304;
    assert_eq!(
        (r.status, r.content_length, r.expected_bytes),
        (200, Some(4_194_304), Some(total))
    );
    assert_eq!(
        (r.sent_bytes, r.delivered_bytes, r.missing_bytes()),
        (total, total - 3_121_232, Some(0))
    );
    assert_eq!(
        (v.unacked_bytes, v.evidence.unread_bytes, v.evidence.end),
        (Some(3_121_232), Some(7), Some(End::Reset))
    );
    assert!(Kind::ResetDiscard.is_problem());
    // Nothing left unacknowledged at the reset: complete.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    w.host_reset(0);
    assert_eq!(w.kinds(), [Kind::Complete]);
    // Bytes sent but not acknowledged yet go ahead of the reset: only the unsent are lost.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100_000, 100_000);
    w.host_reset_in_flight(60_000, 20_000);
    assert_eq!(w.kinds(), [Kind::ResetDiscard]);
    let r = w.out[0].r();
    assert_eq!(
        (r.sent_bytes - r.delivered_bytes, w.out[0].unacked_bytes),
        (40_000, Some(60_000))
    );
    // All of them sent: delivered whole.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    w.host_reset_in_flight(60, 60);
    assert_eq!(w.kinds(), [Kind::Complete, Kind::ResetDiscard]);
    assert!(
        w.out[1].response.is_none(),
        "a reset that dropped nothing of it"
    );
}

/// A reset that drops bytes of no judged response (here: bytes after the last response's end
/// that no head announced) stays a connection-level line.
#[test]
fn reset_dropping_bytes_of_no_response_is_connection_level() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 100);
    w.send(None, 5000);
    w.host_reset(3000);
    assert_eq!(w.kinds(), [Kind::Complete, Kind::ResetDiscard]);
    assert!(w.out[1].response.is_none());
    assert_eq!(w.out[1].unacked_bytes, Some(3000));
}

#[test]
fn peer_reset_is_reported_apart() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(500, 100);
    w.state_unacked(TCP_ESTABLISHED, RESET_RECEIVED, 60);
    w.state(TCP_ESTABLISHED, TCP_CLOSE);
    assert_eq!(w.kinds(), [Kind::PeerReset]);
    assert_eq!(w.out[0].r().delivered_bytes, hl(500) + 40);
    // All handed over, not all received: still the peer's doing.
    let mut w = Wire::new(Transport::Tcp);
    w.response(500, 500);
    w.state_unacked(TCP_ESTABLISHED, RESET_RECEIVED, 60);
    assert_eq!(w.kinds(), [Kind::PeerReset]);
}

/// Sends failing with EPIPE: the peer is gone. Over TCP, reset (its end follows as a state
/// change); a Unix peer closed its end, and that ends the stream at once (nobody will read
/// the server's end of stream).
#[test]
fn sends_failing_with_epipe_mean_the_peer_is_gone() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(500, 100);
    w.err(EPIPE);
    w.state(TCP_ESTABLISHED, TCP_CLOSE);
    assert_eq!(w.kinds(), [Kind::PeerReset]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Gone));
    let mut w = Wire::new(Transport::Unix);
    w.response(500, 100);
    w.err(EPIPE);
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Eof));
    assert_eq!(w.c.tracked(), 0);
}

#[test]
fn unix_short_write_seen_by_client_eof() {
    let mut w = Wire::new(Transport::Unix);
    w.response(1 << 20, 219_264 - hl(1 << 20));
    w.ev(Event::Eof {
        reader: CLIENT,
        peer: SK,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().sent_bytes, 219_264);
    assert_eq!(w.out[0].evidence.end, Some(End::Eof));
    assert_eq!(w.out[0].meta.transport, Transport::Unix);
}

#[test]
fn unix_server_reading_eof_marks_peer_but_does_not_judge() {
    let mut w = Wire::new(Transport::Unix);
    w.response(1000, 10);
    w.ev(Event::Eof {
        reader: SK,
        peer: CLIENT,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert!(w.out.is_empty());
    w.send(None, 990);
    w.ev(Event::Eof {
        reader: CLIENT,
        peer: SK,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Eof));
    // Cut after the client closed: its doing.
    let mut w = Wire::new(Transport::Unix);
    w.response(1000, 10);
    w.ev(Event::Eof {
        reader: SK,
        peer: CLIENT,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    w.ev(Event::Eof {
        reader: CLIENT,
        peer: SK,
        ts_ns: 100,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
    assert_eq!(w.out[0].r().delivered_bytes, hl(1000) + 10);
}

#[test]
fn unix_socket_reused_ends_the_old_connection() {
    let mut w = Wire::new(Transport::Unix);
    w.response(1000, 10);
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 50,
        meta: meta(Transport::Unix),
        losses: 0,
        copied_seq: None,
        peer_fin: false,
        late: false,
    });
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].evidence.end, Some(End::SocketFreed));
    assert_eq!(w.c.tracked(), 1);
}

#[test]
fn keep_alive_responses_judged_one_by_one() {
    let mut w = Wire::new(Transport::Tcp);
    for i in 0..50 {
        w.response(i * 10, i * 10);
    }
    assert_eq!(w.out.len(), 49, "each settled by the next; the last waits");
    assert!(w.out.iter().all(|v| v.kind == Kind::Complete));
    assert_eq!(w.out[7].r().expected_bytes.unwrap(), hl(70) + 70);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.out.len(), 50);
}

#[test]
fn head_then_body_in_separate_sends() {
    let mut w = Wire::new(Transport::Tcp);
    let h = head(5);
    let n = h.len() as u64;
    w.send(Some(h), n);
    assert!(w.out.is_empty());
    w.send(None, 5);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
}

#[test]
fn early_next_head_is_desync() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 40);
    w.response(10, 10);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Desync, Kind::Complete]);
    assert_eq!(w.out[0].r().sent_bytes, hl(100) + 40);
}

#[test]
fn no_body_statuses_complete_with_the_head() {
    for status in ["204 No Content", "304 Not Modified"] {
        let mut w = Wire::new(Transport::Tcp);
        let h = format!("HTTP/1.1 {status}\r\nContent-Length: 99\r\n\r\n").into_bytes();
        let n = h.len() as u64;
        w.send(Some(h), n);
        w.fin();
        assert_eq!(w.kinds(), [Kind::Complete], "{status}");
        assert_eq!(w.out[0].r().expected_bytes.unwrap(), n);
    }
}

#[test]
fn zero_length_body() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(0, 0);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
}

/// Answers to HEAD requests: a head promising a body, and nothing else ever tried.
#[test]
fn head_only_answers_are_not_judged() {
    let mut w = Wire::new(Transport::Tcp);
    for _ in 0..3 {
        w.head_alone(5000);
    }
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
    assert_eq!(w.c.stats.head_only, 3);
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";

/// Seen on the request path: answers to HEAD are complete with their head...
#[test]
fn answers_to_head_requests_are_complete() {
    let mut w = Wire::new(Transport::Tcp);
    for _ in 0..3 {
        w.read(HEAD);
        w.head_alone(5000);
    }
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Complete; 3]);
    assert_eq!((w.c.stats.head_only, w.c.stats.head_answers), (0, 3));
}

/// ...and a head alone answering a GET is a response whose body never came.
#[test]
fn head_alone_answering_get_is_short_write() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(GET);
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().missing_bytes(), Some(5000));
}

#[test]
fn head_alone_answering_get_then_next_response_is_desync() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(GET);
    w.head_alone(5000);
    w.read(GET);
    w.response(10, 10);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Desync, Kind::Complete]);
}

/// Pipelined requests: answers cannot be matched one to one, so a head alone is not judged.
#[test]
fn pipelined_requests_fall_back_to_not_judging_heads_alone() {
    // In one read: the kernel counts one request; the second answer has none.
    let mut w = Wire::new(Transport::Tcp);
    w.read(&[GET, HEAD].concat());
    w.response(10, 10);
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(
        w.c.stats.head_only, 1,
        "the answer to HEAD: a head alone, not judged"
    );
    // In two reads before the first answer: two requests, no longer trusted one to one.
    let mut w = Wire::new(Transport::Tcp);
    w.read(GET);
    w.read(GET);
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
    assert_eq!(w.c.stats.head_only, 1);
}

/// A request body that happens to begin like a request line makes two requests seen: the
/// answer is not trusted to be owed a body.
#[test]
fn body_that_looks_like_a_request_is_not_trusted() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(b"POST /u HTTP/1.1\r\nContent-Length: 20\r\n\r\n");
    w.read(b"GET this is a body!!");
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
}

/// A request split so that its first read is too short to tell (or a body read that does not
/// begin like one) is not counted: the answer is unknown, never taken for a GET.
#[test]
fn reads_that_do_not_begin_a_request_are_not_counted() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(b"HEA");
    w.read(b"D / HTTP/1.1\r\n\r\n");
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
    assert_eq!(w.c.stats.head_only, 1);
}

/// After a CONNECT is accepted, or a protocol switch, the bytes are not HTTP/1: nothing more is judged.
#[test]
fn tunnels_are_not_judged() {
    for (req, status) in [
        (
            &b"CONNECT h:443 HTTP/1.1\r\n\r\n"[..],
            "200 Connection Established",
        ),
        (GET, "101 Switching Protocols"),
    ] {
        let mut w = Wire::new(Transport::Tcp);
        w.read(req);
        w.send_bytes(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes());
        w.send_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"); // tunnelled, not ours
        w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
        assert_eq!(w.kinds(), [Kind::Complete], "{status}");
    }
}

/// Interim responses do not answer the request: the final one does.
#[test]
fn interim_responses_keep_the_request_for_the_final_one() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(HEAD);
    w.send_bytes(b"HTTP/1.1 100 Continue\r\n\r\n");
    w.head_alone(5000);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(
        w.kinds(),
        [Kind::Complete],
        "the interim head is no response of its own"
    );
    assert_eq!(
        (w.c.stats.head_answers, w.c.stats.interim, w.c.stats.heads),
        (1, 1, 1)
    );
    // 103 Early Hints, then the final response, cut short: judged from the final head on.
    let mut w = Wire::new(Transport::Tcp);
    w.read(GET);
    w.send_bytes(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
    let start = w.offset;
    w.response(1000, 10);
    w.fin();
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().sent_bytes, w.offset - start);
}

/// ...but a head whose body the application tried and failed to send is a short write.
#[test]
fn head_then_refused_body_is_judged() {
    let mut w = Wire::new(Transport::Tcp);
    w.head_alone(5000);
    w.err(EAGAIN);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().sent_bytes, hl(5000));
}

/// ...and so is a head sent in a call that asked for more (head + body, partly accepted).
#[test]
fn head_send_asking_for_more_is_judged() {
    let mut w = Wire::new(Transport::Tcp);
    let h = head(5000);
    let n = h.len() as u64;
    w.send_part(Some(h), n + 5000, n);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
}

#[test]
fn head_accepted_only_in_part_then_close() {
    let mut w = Wire::new(Transport::Tcp);
    let h = head(100);
    let n = h.len() as u64;
    w.send_part(Some(h), n + 100, 10);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().sent_bytes, 10);
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn unframed_is_reported_with_bytes_at_close_never_flagged() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello");
    w.send(None, 100);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Unframed]);
    let r = w.out[0].r();
    assert_eq!(
        (r.sent_bytes, r.expected_bytes, r.missing_bytes()),
        (w.offset, None, None)
    );
    assert!(!Kind::Unframed.is_problem());
}

#[test]
fn chunked_complete_when_last_chunk_handed_over() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    w.send_bytes(b"5\r\nhello\r\n");
    assert!(w.out.is_empty());
    w.send_bytes(b"0\r\n\r\n");
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Complete]);
    let r = w.out[0].r();
    assert!(r.chunked);
    assert_eq!((r.sent_bytes, r.expected_bytes), (w.offset, Some(w.offset)));
}

#[test]
fn chunked_in_one_send_and_keep_alive() {
    let mut w = Wire::new(Transport::Tcp);
    for _ in 0..3 {
        w.send_bytes(&[CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"].concat());
    }
    // An empty chunked body: the head is followed at once by the last chunk.
    w.send_bytes(&[CHUNKED, b"0\r\n\r\n"].concat());
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete; 4]);
}

#[test]
fn chunked_cut_short_is_short_write_with_unknown_length() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    w.send_bytes(b"1000\r\nhello");
    w.err(EAGAIN);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    let r = w.out[0].r();
    assert_eq!(
        (r.sent_bytes, r.expected_bytes, r.chunked),
        (w.offset, None, true)
    );
}

#[test]
fn chunked_data_that_looks_like_an_end_is_not_one() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    // A chunk whose data ends in "10\r\n\r\n": the zero is part of "10", not a last chunk.
    w.send_bytes(b"6\r\nx10\r\n\r\n");
    assert!(w.out.is_empty());
    // Headers that end in "0": the head itself is never taken for the last chunk.
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-N: 0\r\n\r\n");
    assert!(w.out.is_empty());
}

#[test]
fn chunked_ending_in_a_blank_line_may_be_trailers_not_judged() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    w.send_bytes(b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n");
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
    assert_eq!(w.c.stats.chunked_uncertain, 1);
}

#[test]
fn unparseable_heads_are_reported_never_flagged() {
    let mut w = Wire::new(Transport::Tcp);
    w.send(
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Long: ".to_vec()),
        512,
    );
    w.send(
        Some(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec()),
        60,
    );
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Unparsed, Kind::Unparsed]);
    assert!(
        w.out
            .iter()
            .all(|v| v.response.is_none() && !v.kind.is_problem())
    );
    assert_eq!((w.c.stats.unparsed, w.c.stats.invalid), (1, 1));
}

#[test]
fn events_for_untracked_sockets_are_ignored() {
    let mut c = Correlator::new(10, Some(250));
    let mut out = vec![];
    c.handle(
        Event::Send(SendFacts {
            sk: 1,
            ts_ns: 1,
            tgid: 1,
            offset: 0,
            ret: 10,
            requested: 10,
            syscall: 1,
            head: Some(head(100)),
            ..SendFacts::default()
        }),
        &mut out,
    );
    c.handle(
        Event::TcpState {
            sk: 1,
            ts_ns: 2,
            oldstate: 1,
            newstate: TCP_FIN_WAIT1,
            facts: TcpFacts::default(),
        },
        &mut out,
    );
    c.handle(
        Event::Eof {
            reader: 1,
            peer: 2,
            ts_ns: 3,
            losses: 0,
            events_lost: false,
            read: None,
        },
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(c.tracked(), 0);
}

#[test]
fn connection_table_is_bounded() {
    let mut c = Correlator::new(100, Some(250));
    let mut out = vec![];
    for sk in 0..1000u64 {
        c.handle(
            Event::Open {
                sk,
                ts_ns: sk,
                meta: meta(Transport::Tcp),
                losses: 0,
                copied_seq: None,
                peer_fin: false,
                late: false,
            },
            &mut out,
        );
    }
    assert!(c.tracked() <= 100);
    assert_eq!(c.stats.evicted, 900);
    assert_eq!(c.transport(999), Some(Transport::Tcp), "the newest survive");
    assert_eq!(c.transport(0), None);
}

#[test]
fn tcp_close_removes_the_connection() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(10, 10);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.c.tracked(), 0);
}

/// Every split of a response into sends and every cut point: a response is complete exactly
/// when all its bytes were handed over, and otherwise short by exactly what was not.
#[test]
fn exhaustive_cut_points() {
    let cl = 40u64;
    let total = hl(cl) + cl;
    for chunk in 1..=total {
        for cut in 0..=total {
            let mut w = Wire::new(Transport::Tcp);
            let h = head(cl);
            let first = chunk.min(cut);
            if first == 0 {
                // head never handed over: nothing to judge
                w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
                assert!(w.out.is_empty());
                continue;
            }
            w.send_part(Some(h), total, first);
            while w.offset < cut {
                let n = chunk.min(cut - w.offset);
                w.send(None, n);
            }
            w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
            assert_eq!(w.out.len(), 1, "chunk {chunk} cut {cut}");
            let v = &w.out[0];
            let want = if cut == total {
                Kind::Complete
            } else {
                Kind::ShortWrite
            };
            assert_eq!(
                (v.kind, v.r().sent_bytes, v.r().expected_bytes.unwrap()),
                (want, cut, total),
                "chunk {chunk} cut {cut}"
            );
        }
    }
}

const EAGAIN: i64 = 11;
const EPIPE: i64 = 32;

#[test]
fn reset_discard_is_connection_level_for_any_connection() {
    let mut c = Correlator::new(10, Some(250));
    let mut out = vec![];
    let m = meta(Transport::Tcp);
    c.handle(
        Event::ResetDiscard {
            sk: 5,
            ts_ns: 9,
            meta: m.clone(),
            unacked: 4096,
            unsent: 4000,
            unread: 31,
            snd_una: 0,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
    let v = &out[0];
    assert_eq!(
        (v.kind, v.response.clone(), v.unacked_bytes),
        (Kind::ResetDiscard, None, Some(4096))
    );
    assert_eq!(
        (v.evidence.unread_bytes, v.evidence.end, &*v.meta),
        (Some(31), Some(End::Reset), &m)
    );
}

#[test]
fn end_evidence_from_the_deciding_state_change() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(1_000_000, 100);
    let facts = TcpFacts {
        unacked: 4000,
        unsent: 0,
        unread: 0,
        copied_seq: 0,
        peer_window: Some(0),
        rwnd_limited_jiffies: Some(500),
        sndbuf_limited_jiffies: Some(25),
        events_lost: false,
        snd_una: 0,
    };
    w.ts += 2_000_000_000;
    let ts_ns = w.ts;
    w.ev(Event::TcpState {
        sk: SK,
        ts_ns,
        oldstate: TCP_ESTABLISHED,
        newstate: TCP_FIN_WAIT1,
        facts,
    });
    assert_eq!(
        w.kinds(),
        [],
        "settled when the peer acknowledged the bytes"
    );
    w.state(TCP_FIN_WAIT1, TCP_FIN_WAIT2);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(
        w.r_sent_delivered(),
        (hl(1_000_000) + 100, hl(1_000_000) + 100)
    );
    let e = &w.out[0].evidence;
    assert_eq!(
        (
            e.unacked_bytes_at_end,
            e.unread_bytes_at_end,
            e.peer_window_at_end
        ),
        (Some(4000), Some(0), Some(0))
    );
    assert_eq!(
        (e.rwnd_limited_ms, e.sndbuf_limited_ms),
        (Some(2000), Some(100)),
        "jiffies at 250 Hz"
    );
    assert!(e.duration_ms.unwrap() >= 2000);
    // Unknown HZ: no milliseconds rather than wrong ones.
    let mut c = Correlator::new(10, None);
    let mut out = vec![];
    c.handle(
        Event::Open {
            sk: 1,
            ts_ns: 1,
            meta: meta(Transport::Tcp),
            losses: 0,
            copied_seq: None,
            peer_fin: false,
            late: false,
        },
        &mut out,
    );
    let h = head(10);
    c.handle(
        Event::Send(SendFacts {
            sk: 1,
            ts_ns: 2,
            tgid: 1,
            offset: 0,
            ret: h.len() as i64,
            requested: 100,
            head: Some(h),
            ..SendFacts::default()
        }),
        &mut out,
    );
    c.handle(
        Event::TcpState {
            sk: 1,
            ts_ns: 3,
            oldstate: 1,
            newstate: TCP_FIN_WAIT1,
            facts,
        },
        &mut out,
    );
    c.handle(
        Event::TcpState {
            sk: 1,
            ts_ns: 4,
            oldstate: TCP_FIN_WAIT1,
            newstate: TCP_FIN_WAIT2,
            facts: TcpFacts::default(),
        },
        &mut out,
    );
    assert_eq!(
        (
            out[0].evidence.rwnd_limited_ms,
            out[0].evidence.unacked_bytes_at_end
        ),
        (None, Some(4000))
    );
}

impl Wire {
    /// A send that goes on with a head not ended yet: the kernel accounts it, and sends its
    /// bytes as a head piece.
    fn send_more(&mut self, bytes: &[u8]) {
        let offset = self.offset;
        self.send_tail(None, bytes.len() as u64, bytes.len() as u64, bytes);
        self.piece(offset, offset + bytes.len() as u64, bytes);
    }
    /// A head piece: `bytes` at stream `offset`, from a send that offered up to `send_end`.
    fn piece(&mut self, offset: u64, send_end: u64, bytes: &[u8]) {
        let ts_ns = self.ts;
        self.ev(Event::HeadPiece(PieceFacts {
            sk: SK,
            ts_ns,
            offset,
            send_end,
            bytes: bytes.to_vec(),
            events_lost: false,
        }));
    }
    /// Send `bytes` as the kernel reports a head longer than its first capture: the first
    /// 512 bytes in the head event, the rest of the send in a piece.
    fn send_long(&mut self, bytes: &[u8]) {
        let offset = self.offset;
        self.send_bytes(bytes);
        if bytes.len() > 512 {
            self.piece(offset + 512, offset + bytes.len() as u64, &bytes[512..]);
        }
    }
}

/// A head written line by line: joined, then judged like any other.
#[test]
fn head_split_over_sends_is_joined() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\n");
    w.send_more(b"Content-Length: 10\r\n");
    w.send_more(b"\r\n");
    assert!(w.out.is_empty());
    w.send_more(b"0123456789");
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    let r = w.out[0].r();
    assert_eq!(
        (r.expected_bytes, r.sent_bytes, r.content_length),
        (Some(w.offset), w.offset, Some(10))
    );
}

#[test]
fn split_head_then_cut_body_is_short_write() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\nContent-");
    w.send_more(b"Length: 1000\r\n\r\nabc");
    w.err(EAGAIN);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].r().sent_bytes, w.offset);
}

#[test]
fn split_head_that_never_ends_is_unparsed() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n");
    w.send(None, 100); // not captured: the rest of the head is out of sight
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Unparsed]);
    // Same when the stream just ends.
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\n");
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Unparsed]);
}

#[test]
fn capture_after_a_complete_head_is_body() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
    w.send_more(b"cd");
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
}

#[test]
fn split_head_pieces_must_be_contiguous() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\n");
    w.offset += 5; // bytes in between that were not captured
    w.send_more(b"Content-Length: 1\r\n\r\nx");
    assert_eq!(w.kinds(), [Kind::Unparsed]);
}

/// The agent's default: only problems become verdicts; the rest are counted.
#[test]
fn problems_only_counts_but_does_not_build_the_rest() {
    let mut c = Correlator::new(10, None).problems_only(true);
    let mut out = vec![];
    c.handle(
        Event::Open {
            sk: 1,
            ts_ns: 1,
            meta: meta(Transport::Tcp),
            losses: 0,
            copied_seq: None,
            peer_fin: false,
            late: false,
        },
        &mut out,
    );
    let h = head(0);
    let n = h.len() as i64;
    c.handle(
        Event::Send(SendFacts {
            sk: 1,
            ts_ns: 2,
            tgid: 1,
            offset: 0,
            ret: n,
            requested: n as u64,
            head: Some(h),
            ..SendFacts::default()
        }),
        &mut out,
    );
    let h = head(100);
    let n = h.len() as i64;
    c.handle(
        Event::Send(SendFacts {
            sk: 1,
            ts_ns: 3,
            tgid: 1,
            offset: n as u64,
            ret: n,
            requested: n as u64 + 100,
            head: Some(h),
            ..SendFacts::default()
        }),
        &mut out,
    );
    c.handle(
        Event::TcpState {
            sk: 1,
            ts_ns: 4,
            oldstate: 1,
            newstate: TCP_FIN_WAIT1,
            facts: TcpFacts::default(),
        },
        &mut out,
    );
    assert_eq!(
        out.iter().map(|v| v.kind).collect::<Vec<_>>(),
        [Kind::ShortWrite]
    );
    assert_eq!(
        (
            c.stats.judged[Kind::Complete as usize],
            c.stats.judged[Kind::ShortWrite as usize]
        ),
        (1, 1)
    );
}

/// A partial write splits the last chunk: the rest, offered again, is a send of its own whose
/// tail alone does not show `0\r\n\r\n`. Joined with the tail before, it does.
#[test]
fn last_chunk_straddling_two_sends_is_seen() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    w.send_bytes(b"5\r\nhello\r\n0\r\n");
    w.send_bytes(b"\r\n");
    w.response(0, 0);
    assert_eq!(w.kinds(), [Kind::Complete]);
    // Not when a send in between is missing from the chain (its tail covers only its end).
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(CHUNKED);
    w.send_bytes(b"5\r\nhello\r\n0\r\n");
    w.offset += 3; // bytes we did not see
    w.send_bytes(b"\r\n");
    assert!(w.out.is_empty());
}

/// Events lost on the way (the ring buffer was full): a stream that ends short of its promise
/// is the observer's loss, never a truncation; one that reached its end is still complete.
#[test]
fn lost_events_make_shortfalls_observer_loss() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 10);
    w.offset += 60; // a send the agent never got
    let ts_ns = w.ts;
    w.ev(Event::TcpState {
        sk: SK,
        ts_ns,
        oldstate: TCP_ESTABLISHED,
        newstate: TCP_FIN_WAIT1,
        facts: TcpFacts {
            events_lost: true,
            ..TcpFacts::default()
        },
    });
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
    assert_eq!(w.c.stats.judged[Kind::ObserverLoss as usize], 1);
    assert!(
        Kind::ObserverLoss.is_problem(),
        "printed by default: the detector was partly blind"
    );
    // Marked by a send: the responses after it that reach their end are still complete.
    let mut w = Wire::new(Transport::Tcp);
    w.response(100, 0);
    // Body bytes 0..60 lost; the send of 60..100 carries the mark.
    let (offset, ts_ns) = (w.offset, w.ts);
    w.ev(Event::Send(SendFacts {
        sk: SK,
        ts_ns,
        tgid: 42,
        offset: offset + 60,
        ret: 40,
        requested: 40,
        syscall: 1,
        events_lost: true,
        ..SendFacts::default()
    }));
    w.offset += 100;
    w.response(1000, 10);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.kinds(), [Kind::Complete, Kind::ObserverLoss]);
}

/// Unix streams: the end of stream comes from the reader's side and cannot carry the server
/// socket's own lost-event mark; events lost anywhere on the host during the stream's life
/// (the host-wide count moved) make its shortfall the observer's.
#[test]
fn unix_shortfall_with_losses_meanwhile_is_observer_loss() {
    for (losses, want) in [(0, Kind::ShortWrite), (3, Kind::ObserverLoss)] {
        let mut w = Wire::new(Transport::Unix);
        w.response(1 << 20, 1000);
        w.ev(Event::Eof {
            reader: CLIENT,
            peer: SK,
            ts_ns: 99,
            losses,
            events_lost: false,
            read: None,
        });
        assert_eq!(w.kinds(), [want]);
    }
    // The same when the stream's end is seen as its address being reused.
    let mut w = Wire::new(Transport::Unix);
    w.response(1 << 20, 1000);
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 50,
        meta: meta(Transport::Unix),
        losses: 1,
        copied_seq: None,
        peer_fin: false,
        late: false,
    });
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

/// The kprobe backend: a head's send announced when it begins, what the kernel took after.
impl Wire {
    fn announce(&mut self, cap: Vec<u8>, offered: u64) {
        let (offset, ts_ns) = (self.offset, self.ts);
        let requests = std::mem::take(&mut self.reads);
        let s = SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: offered as i64,
            requested: offered,
            head: Some(cap),
            requests,
            part: SendPart::Announced,
            ..SendFacts::default()
        };
        self.ev(Event::Send(s));
    }
    fn accepted(&mut self, offered: u64, took: u64) {
        let (offset, ts_ns) = (self.offset, self.ts);
        self.offset += took;
        let s = SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: took as i64,
            requested: offered,
            part: SendPart::Accepted,
            ..SendFacts::default()
        };
        self.ev(Event::Send(s));
    }
}

/// A GET's answer, announced, refused whole (EAGAIN), offered again and taken: one complete
/// response, the GET's answer kept (not a desync of the first offer against the second).
#[test]
fn kprobe_head_refused_whole_then_offered_again_is_one_response() {
    let mut w = Wire::new(Transport::Tcp);
    w.read(b"GET / HTTP/1.1\r\n\r\n");
    let h = head(100);
    let n = h.len() as u64 + 100;
    w.announce(h.clone(), n);
    w.accepted(n, 0);
    w.announce(h.clone(), n);
    w.accepted(n, n);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    let kinds: Vec<Kind> = w.out.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [Kind::Complete]);
    assert_eq!(w.c.stats.heads, 1);
    // Offered again, then only the head taken before the close: the body was owed (the
    // GET's answer went to the second offer).
    let mut w = Wire::new(Transport::Tcp);
    w.read(b"GET / HTTP/1.1\r\n\r\n");
    w.announce(h.clone(), h.len() as u64);
    w.accepted(h.len() as u64, 0);
    w.announce(h.clone(), h.len() as u64);
    w.accepted(h.len() as u64, h.len() as u64);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert_eq!(w.out.len(), 1);
    assert_eq!(
        (
            w.out[0].kind,
            w.out[0].response.as_ref().unwrap().sent_bytes
        ),
        (Kind::ShortWrite, h.len() as u64)
    );
}

/// A head the kernel never took any of, then the end: nothing was sent, nothing to judge (the
/// other backends never see such a head at all).
#[test]
fn kprobe_head_never_taken_is_not_judged() {
    let mut w = Wire::new(Transport::Tcp);
    let h = head(100);
    w.announce(h.clone(), h.len() as u64 + 100);
    w.accepted(h.len() as u64 + 100, 0);
    w.state(TCP_ESTABLISHED, TCP_FIN_WAIT1);
    assert!(w.out.is_empty(), "{:?}", w.out);
    assert_eq!(w.c.stats.heads, 0);
}

/// A socket the agent leaves out (another agent's probe) opened at a known address: the
/// connection there is over, and the new socket's sends never count for it.
#[test]
fn a_reused_address_ends_the_connection_there_even_if_the_new_socket_is_left_out() {
    let mut w = Wire::new(Transport::Unix);
    w.response(100, 100);
    assert_eq!(
        w.kinds(),
        [Kind::Complete],
        "Unix: delivered as handed over"
    );
    let ts = w.ts;
    w.c.socket_reused(SK, ts, 0, &mut w.out);
    assert_eq!(w.c.tracked(), 0);
    // The new socket's head at the old address: nobody's response.
    w.offset = 0;
    w.response(0, 0);
    assert_eq!(w.out.len(), 1, "{:?}", w.out);
}

/// A head of realistic size (cookies, security headers) with the framing header last.
fn long_head(size: usize, framing: &str) -> Vec<u8> {
    let mut h = String::from("HTTP/1.1 200 OK\r\n");
    let mut i = 0;
    while h.len() + framing.len() + 2 < size {
        h += &format!("Set-Cookie: c{i}=dGhlbWU9ZGFyazsgbGFuZz1lbg; Path=/; Secure; HttpOnly\r\n");
        i += 1;
    }
    (h + framing + "\r\n").into_bytes()
}

/// Heads longer than the first capture: the rest comes in pieces, and the response is judged
/// like any other, wherever the head ends and whatever sends carry it.
#[test]
fn long_heads_are_joined_from_pieces() {
    for size in [600, 1300, 9000] {
        // With the body in one send.
        let h = long_head(size, "Content-Length: 100\r\n");
        let mut w = Wire::new(Transport::Tcp);
        w.send_long(&[&h[..], &[b'x'; 100]].concat());
        w.fin();
        assert_eq!(w.kinds(), [Kind::Complete], "{size}");
        assert_eq!(w.out[0].r().expected_bytes, Some(h.len() as u64 + 100));
        // Alone, the body cut short after.
        let mut w = Wire::new(Transport::Tcp);
        w.send_long(&h);
        w.send(None, 40);
        w.fin();
        assert_eq!(w.kinds(), [Kind::ShortWrite], "{size}");
        assert_eq!(w.out[0].r().sent_bytes, h.len() as u64 + 40);
        // Chunked, with the framing after all the cookies, the last chunk in the same send.
        let h = long_head(size, "Transfer-Encoding: chunked\r\n");
        let mut w = Wire::new(Transport::Tcp);
        w.send_long(&[&h[..], b"3\r\nabc\r\n0\r\n\r\n"].concat());
        w.fin();
        assert_eq!(w.kinds(), [Kind::Complete], "{size} chunked");
    }
}

/// One header line per send, each send's bytes a piece: joined, judged.
#[test]
fn heads_a_line_per_send_are_joined() {
    let h = long_head(3000, "Content-Length: 10\r\n");
    let mut w = Wire::new(Transport::Tcp);
    let mut lines = h.split_inclusive(|&b| b == b'\n');
    w.send_bytes(lines.next().unwrap());
    for line in lines {
        w.send_more(line);
    }
    w.send(None, 10);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].r().sent_bytes, h.len() as u64 + 10);
}

/// A piece may come after the send event of the send it comes from (the kernel sends the
/// send's own event first), and a head the kernel took only part of is offered again: the
/// pieces overlap, and the later offer counts.
#[test]
fn pieces_after_their_send_and_offered_again() {
    let h = long_head(1300, "Content-Length: 5\r\n");
    let mut w = Wire::new(Transport::Tcp);
    // The head's send takes only 700 bytes of head + body.
    let all = [&h[..], b"hello"].concat();
    w.send_tail(
        Some(all[..512].to_vec()),
        all.len() as u64,
        700,
        &all[692..700],
    );
    w.piece(512, all.len() as u64, &all[512..]);
    assert!(w.out.is_empty());
    // The rest, offered again from byte 700, captured again as a piece.
    w.send_tail(
        None,
        all.len() as u64 - 700,
        all.len() as u64 - 700,
        &all[all.len() - 5..],
    );
    w.piece(700, all.len() as u64, &all[700..]);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].r().sent_bytes, all.len() as u64);
}

/// A head longer than `--max-head-bytes`, and one whose pieces stop coming (the kernel stops
/// at the bound, or could not read them): unparsed, never judged, and the response before it
/// is ended by it all the same.
#[test]
fn heads_over_the_bound_or_unfinished_are_unparsed() {
    let h = long_head(20_000, "Content-Length: 5\r\n");
    let mut w = Wire::new(Transport::Tcp);
    w.response(10, 10);
    w.send_tail(
        Some(h[..512].to_vec()),
        h.len() as u64,
        h.len() as u64,
        &h[h.len() - 8..],
    );
    w.piece(512, h.len() as u64, &h[512..16 << 10]);
    w.send(None, 5);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete, Kind::Unparsed]);
    assert_eq!(w.c.stats.unparsed, 1);
    // A lower bound set by the user.
    let mut w = Wire::new(Transport::Tcp);
    w.c = Correlator::new(10, None).max_head_bytes(1024);
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 1,
        meta: meta(Transport::Tcp),
        losses: 0,
        copied_seq: None,
        peer_fin: false,
        late: false,
    });
    w.send_long(&long_head(1300, "Content-Length: 0\r\n"));
    w.fin();
    assert_eq!(w.kinds(), [Kind::Unparsed]);
}

/// A TLS connection's wire: plaintext sends, each with where its records lie (`TlsSeq`).
fn tls_wire() -> Wire {
    let mut w = Wire::new(Transport::Tcp);
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 2,
        meta: ConnMeta {
            tls: true,
            ..meta(Transport::Tcp)
        },
        losses: 0,
        copied_seq: None,
        peer_fin: false,
        late: false,
    });
    w
}

impl Wire {
    /// A TLS write of `bytes.len()` plaintext bytes (`cap`: its head), accepted whole.
    fn tls_send(&mut self, cap: Option<Vec<u8>>, n: u64, seq: TlsSeq) {
        let (offset, ts_ns) = (self.offset, self.ts);
        self.offset += n;
        let requests = std::mem::take(&mut self.reads);
        self.ev(Event::Send(SendFacts {
            sk: SK,
            ts_ns,
            tgid: 42,
            offset,
            ret: n as i64,
            requested: n,
            syscall: truncwatch_common::SYS_TLS_WRITE.into(),
            head: cap,
            requests,
            tls_seq: Some(seq),
            ..SendFacts::default()
        }));
    }
    /// A state change whose counters put `write_seq` at `write_seq`, `unacked` not acknowledged.
    fn tls_state(&mut self, old: i32, new: i32, write_seq: u32, unacked: u64) {
        self.state_facts(
            old,
            new,
            TcpFacts {
                unacked,
                snd_una: write_seq.wrapping_sub(unacked as u32),
                ..TcpFacts::default()
            },
        );
    }
}

/// A memory BIO (Node.js): the library accepts the whole response at once; only the plaintext
/// whose records reached the kernel by the FIN was handed over, whole records of it.
#[test]
fn tls_memory_bio_counts_what_reached_the_kernel() {
    let body = 1_000_000u64;
    let h = head(body);
    let n = h.len() as u64 + body;
    let records = n.div_ceil(16384);
    for (reached, want) in [
        // 20 whole records (TLS 1.3: 22 bytes each over the plaintext) and part of one.
        (20 * (16384 + 22) + 100, Kind::ShortWrite),
        // Every record, TLS 1.3's overhead.
        (n + records * 22, Kind::Complete),
        // Every record, with the least overhead any AEAD suite has (AES-CCM-8): never taken
        // for a cut.
        (n + records * 14, Kind::Complete),
    ] {
        let mut w = tls_wire();
        w.read(b"GET / HTTP/1.1\r\n");
        w.tls_send(Some(h.clone()), n, TlsSeq::Before(5000));
        w.tls_state(TCP_ESTABLISHED, TCP_FIN_WAIT1, 5000 + reached as u32, 0);
        assert_eq!(w.kinds(), vec![want], "{:?}", w.out);
        let r = w.out[0].r();
        if want == Kind::ShortWrite {
            // The reckoning uses 14 bytes a record: at most a record more than really sent.
            assert_eq!(r.sent_bytes, 20 * 16384, "{r:?}");
            assert_eq!(r.delivered_bytes, r.sent_bytes);
        } else {
            assert_eq!(r.sent_bytes, n);
        }
    }
}

/// A socket BIO (nginx): each write's records end at the socket's write_seq when it returned.
/// This host's reset drops what was never sent: the client got the whole writes before it.
#[test]
fn tls_reset_delivers_the_writes_before_the_dropped_bytes() {
    let body = 10 * 16384u64;
    let h = head(body);
    let mut w = tls_wire();
    w.read(b"GET / HTTP/1.1\r\n");
    let mut seq = 1000u32 + h.len() as u32 + 22;
    w.tls_send(Some(h.clone()), h.len() as u64, TlsSeq::End(seq));
    for _ in 0..10 {
        seq += 16384 + 22;
        w.tls_send(None, 16384, TlsSeq::End(seq));
    }
    // Sent on the wire up to the middle of the fifth body write's record; the rest dropped.
    let on_wire = 1000 + h.len() as u32 + 22 + 4 * (16384 + 22) + 100;
    let unacked = (seq - 1000) as u64;
    let ts_ns = w.ts;
    w.ev(Event::ResetDiscard {
        sk: SK,
        ts_ns,
        meta: meta(Transport::Tcp),
        unacked,
        unsent: (seq - on_wire) as u64,
        unread: 0,
        snd_una: 1000,
    });
    w.tls_state(TCP_ESTABLISHED, TCP_CLOSE, seq, unacked);
    assert_eq!(w.kinds(), vec![Kind::ResetDiscard], "{:?}", w.out);
    let r = w.out[0].r();
    assert_eq!(r.sent_bytes, h.len() as u64 + body);
    assert_eq!(r.delivered_bytes, h.len() as u64 + 4 * 16384, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// The client side: the stream is what the client read.

/// A client's `copied_seq` when it was classified (it wraps within the tests, on purpose).
const READ_FROM: u32 = u32::MAX - 1000;

impl Wire {
    /// A TCP (or Unix) client's connection: its reads arrive as sends do.
    fn client(t: Transport) -> Self {
        let meta = ConnMeta {
            side: Side::Client,
            local: "127.0.0.1:5000".into(),
            peer: "127.0.0.1:80".into(),
            comm: "curl".into(),
            ..meta(t)
        };
        let mut w = Wire::opened(meta, (t == Transport::Tcp).then_some(READ_FROM));
        w.read(b"GET / HTTP/1.1\r\n");
        w
    }
    /// The client's `copied_seq` after reading `read` bytes (and the FIN, if `fin_read`).
    fn copied(read: u64, fin_read: bool) -> u32 {
        READ_FROM.wrapping_add(read as u32 + fin_read as u32)
    }
    /// A TCP state change of the client, with what it had read and `unread` bytes waiting.
    fn client_state(&mut self, old: i32, new: i32, unread: u64) {
        let copied_seq = Wire::copied(self.offset, false);
        self.state_facts(
            old,
            new,
            TcpFacts {
                unread,
                copied_seq,
                ..TcpFacts::default()
            },
        );
    }
    /// The client read end of stream, with the kernel's counters then (`read`).
    fn client_eof_read(&mut self, read: Option<ReadFacts>) {
        self.ev(Event::Eof {
            reader: SK,
            peer: 0,
            ts_ns: 99,
            losses: 0,
            events_lost: false,
            read,
        });
    }
    /// The client read end of stream (TCP), having read `extra` bytes more than the reads seen.
    fn client_eof(&mut self, extra: u64) {
        let copied_seq = Wire::copied(self.offset + extra, true);
        self.client_eof_read(Some(ReadFacts {
            copied_seq,
            unread: 0,
        }));
    }
}

#[test]
fn client_reads_a_cut_response_to_its_end_of_stream_truncated() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(8_000_000, 1_000_000);
    w.send(None, 1_000_000);
    // The server's FIN arrives (1 sequence number, unread), the client reads on, then EOF.
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 70_000 + 1);
    w.send(None, 70_000);
    w.client_eof(0);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    let v = &w.out[0];
    assert_eq!(v.meta.side, Side::Client);
    assert_eq!(v.r().sent_bytes, hl(8_000_000) + 2_070_000);
    assert_eq!(v.r().missing_bytes(), Some(8_000_000 - 2_070_000));
    assert_eq!(v.evidence.peer_ended, Some(PeerEnd::Fin));
    assert_eq!(v.evidence.end, Some(End::Eof));
    assert_eq!(
        v.evidence.unacked_bytes_at_end, None,
        "a receiver's counters"
    );
    assert_eq!(w.c.tracked(), 0);
}

#[test]
fn client_complete_when_read_whole_and_keep_alive_goes_on() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(1000, 1000);
    assert_eq!(
        w.kinds(),
        [Kind::Complete],
        "judged once read: nothing can drop it"
    );
    w.read(b"GET / HTTP/1.1\r\n");
    w.response(50, 20);
    w.send(None, 30);
    w.read(b"HEAD / HTTP/1.1\r\n");
    w.send(Some(head(1_000_000)), hl(1_000_000));
    assert_eq!(w.kinds(), [Kind::Complete; 3]);
    assert_eq!(
        w.out[2].r().sent_bytes,
        hl(1_000_000),
        "HEAD: the head alone"
    );
    // The server closes the idle connection: nothing to judge.
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 1);
    w.client_eof(0);
    assert_eq!(w.out.len(), 3);
}

#[test]
fn client_that_closes_first_aborted_never_truncated() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(30 << 20, 1 << 20);
    // It closes with 200 KB received and unread: RST from this host (straight to CLOSE).
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE, 200_000);
    assert_eq!(w.kinds(), [Kind::Aborted]);
    assert_eq!(w.out[0].evidence.end, Some(End::Reset));
    // Or with nothing unread: FIN first.
    let mut w = Wire::client(Transport::Tcp);
    w.response(30 << 20, 1 << 20);
    w.client_state(TCP_ESTABLISHED, TCP_FIN_WAIT1, 0);
    assert_eq!(w.kinds(), [Kind::Aborted]);
    assert!(!Kind::Aborted.is_problem());
}

#[test]
fn client_closing_after_the_server_fin_depends_on_what_arrived() {
    let end = hl(100_000) + 100_000;
    // Everything (and the FIN) arrived; the client closed without reading it all: its doing.
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 40_000);
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 60_000 + 1);
    w.client_state(TCP_CLOSE_WAIT, TCP_LAST_ACK, 60_000 + 1);
    assert_eq!(w.kinds(), [Kind::Aborted]);
    assert_eq!(w.out[0].r().sent_bytes, end - 60_000);
    // One byte short of the promise arrived before the FIN: the server's doing.
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 40_000);
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 60_000);
    w.client_state(TCP_CLOSE_WAIT, TCP_LAST_ACK, 60_000);
    assert_eq!(w.kinds(), [Kind::Truncated]);
}

#[test]
fn client_sees_a_server_reset_truncated() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 5_000);
    w.client_state(TCP_ESTABLISHED, RESET_RECEIVED, 0);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Reset));
}

/// Bytes read by a path the hooks do not see (`splice` from the socket, for one) leave the
/// kernel's count ahead of the reads seen: the agent says so rather than call it a truncation.
#[test]
fn client_reads_not_seen_are_observer_loss() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 5_000);
    w.client_eof(95_000);
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
    // A client's lost events likewise.
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 5_000);
    w.ev(Event::Eof {
        reader: SK,
        peer: 0,
        ts_ns: 99,
        losses: 0,
        events_lost: true,
        read: Some(ReadFacts {
            copied_seq: Wire::copied(hl(100_000) + 5_000, true),
            unread: 0,
        }),
    });
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

#[test]
fn unix_client_truncated_by_server_and_aborted_by_itself() {
    // The client reads end of stream: the server (SERVER_SK, untracked here) ended it.
    const SERVER_SK: u64 = 0xffff_8880_0000_2000;
    let mut w = Wire::client(Transport::Unix);
    w.response(8_000_000, 2_000_000);
    w.ev(Event::Eof {
        reader: SK,
        peer: SERVER_SK,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(8_000_000) + 2_000_000);
    // The server reads end of stream: the client closed first.
    let mut w = Wire::client(Transport::Unix);
    w.response(8_000_000, 2_000_000);
    w.ev(Event::Eof {
        reader: SERVER_SK,
        peer: SK,
        ts_ns: 99,
        losses: 0,
        events_lost: false,
        read: None,
    });
    assert_eq!(w.kinds(), [Kind::Aborted]);
}

#[test]
fn client_chunked_judged_by_its_last_chunk() {
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut w = Wire::client(Transport::Tcp);
    w.send_bytes(&chunked);
    w.send_tail(None, 4000, 4000, b"abc\r\n");
    w.client_eof(0);
    assert_eq!(w.kinds(), [Kind::Truncated], "cut before its last chunk");
    let mut w = Wire::client(Transport::Tcp);
    w.send_bytes(&chunked);
    w.send_tail(None, 4000, 4000, b"\r\n0\r\n\r\n");
    assert_eq!(w.kinds(), [Kind::Complete]);
}

/// `100 Continue` and the final answer read together: one verdict, for the final answer (its
/// bytes without the interim head's).
#[test]
fn interim_and_final_head_in_one_read_judge_the_final_one() {
    let mut w = Wire::client(Transport::Tcp);
    let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
    let fin = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
    bytes.extend_from_slice(fin);
    w.send_bytes(&bytes);
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].r().sent_bytes, fin.len() as u64);
    // Cut: the server ends the stream 4 bytes short.
    let mut w = Wire::client(Transport::Tcp);
    w.send_bytes(&bytes[..bytes.len() - 4]);
    w.client_eof(0);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, fin.len() as u64 - 4);
}

impl Wire {
    /// A client reading `bytes` one at a time: no head event; its pending requests go with
    /// its first read (`FLAG_REQUESTS`).
    fn read_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            let offset = self.offset;
            self.offset += 1;
            let ts_ns = self.ts;
            let requests = std::mem::take(&mut self.reads);
            self.ev(Event::Send(SendFacts {
                sk: SK,
                ts_ns,
                tgid: 42,
                offset,
                ret: 1,
                requested: 1,
                syscall: 0,
                tail: Tail::new(&[*b]),
                requests,
                ..SendFacts::default()
            }));
        }
    }
}

/// A client reading heads byte by byte (so that what follows stays in its socket): the heads
/// are put together from its reads; a HEAD answer is `complete` with its head alone.
#[test]
fn client_reading_heads_byte_by_byte() {
    let mut w = Wire::client(Transport::Tcp);
    w.reads = Seen::default();
    w.read(b"HEAD / HTTP/1.1\r\n");
    w.read_bytewise(&head(30_000_000));
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].r().sent_bytes, hl(30_000_000));
    // A GET: head byte by byte, then its body in one read, cut by the server.
    w.read(b"GET / HTTP/1.1\r\n");
    w.read_bytewise(&head(1000));
    w.send(None, 400);
    w.client_eof(0);
    assert_eq!(w.kinds(), [Kind::Complete, Kind::Truncated]);
    assert_eq!(w.out[1].r().sent_bytes, hl(1000) + 400);
}

/// A server's reset leaves the client the bytes it had received and not read: Linux still
/// hands them over. The verdict waits for those reads (or end of stream), and counts them.
#[test]
fn client_reset_by_the_server_is_judged_once_it_read_what_was_left() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    w.client_state(TCP_ESTABLISHED, RESET_RECEIVED, 95_000);
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE, 95_000);
    assert!(w.out.is_empty(), "the client is still reading");
    w.send(None, 50_000);
    assert!(w.out.is_empty());
    w.send(None, 45_000);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(10_000_000) + 1_095_000);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Reset));
    // It stops reading before the end: its end of stream (after the reset's error) decides.
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    w.client_state(TCP_ESTABLISHED, RESET_RECEIVED, 95_000);
    w.send(None, 5_000);
    w.client_eof_read(None);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(10_000_000) + 1_005_000);
}

/// A read under way when the server's reset came: the kernel had copied its bytes already (in
/// `copied_seq` at the reset), the read's event comes after the reset's. Still judged, with
/// every byte the client read (seen in a guest: `observer_loss` with 12 416 bytes short).
#[test]
fn client_reset_during_a_read_counts_that_read() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    // 12 416 bytes copied by the read under way, 95 000 still queued.
    let copied_seq = Wire::copied(w.offset + 12_416, false);
    let facts = TcpFacts {
        unread: 95_000,
        copied_seq,
        ..TcpFacts::default()
    };
    w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
    w.state_facts(TCP_ESTABLISHED, TCP_CLOSE, facts);
    w.send(None, 12_416 + 40_000);
    assert!(w.out.is_empty(), "the client is still reading");
    w.send(None, 55_000);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(10_000_000) + 1_107_416);
    // Its reads before the reset not all seen: unsure.
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    let copied_seq = Wire::copied(w.offset + 12_416, false);
    let facts = TcpFacts {
        unread: 95_000,
        copied_seq,
        ..TcpFacts::default()
    };
    w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
    w.send(None, 5_000);
    w.client_eof_read(None);
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

/// The race the other way: the read under way took every byte, and only the reset was left.
#[test]
fn client_reset_after_a_read_that_took_everything_counts_that_read() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    let copied_seq = Wire::copied(w.offset + 12_416, false);
    let facts = TcpFacts {
        copied_seq,
        ..TcpFacts::default()
    };
    w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
    w.state_facts(TCP_ESTABLISHED, TCP_CLOSE, facts);
    assert!(w.out.is_empty(), "the read's event is still to come");
    w.send(None, 12_416);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(10_000_000) + 1_012_416);
}

/// Reads the hooks missed before the reset are not made up for by reads after it: the
/// kernel's count at the client's end of stream decides, and without one, unsure.
#[test]
fn client_reads_missed_before_a_reset_stay_unsure() {
    for eof_facts in [true, false] {
        let mut w = Wire::client(Transport::Tcp);
        w.response(10_000_000, 1_000_000);
        // 3 000 bytes read unseen (say, spliced), then the reset with 95 000 unread.
        let missed = 3_000;
        let copied_seq = Wire::copied(w.offset + missed, false);
        let facts = TcpFacts {
            unread: 95_000,
            copied_seq,
            ..TcpFacts::default()
        };
        w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
        // It reads all that was left, then its end of stream.
        w.send(None, 95_000);
        let read = eof_facts.then(|| ReadFacts {
            copied_seq: Wire::copied(w.offset + missed, false),
            unread: 0,
        });
        w.client_eof_read(read);
        assert_eq!(
            w.kinds(),
            [Kind::ObserverLoss],
            "EOF's counters: {eof_facts}"
        );
    }
}

/// All of the response had arrived when the server reset the connection; the client left
/// without reading the rest: its own doing.
#[test]
fn client_that_leaves_a_whole_response_unread_after_a_reset_aborted() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(100_000, 40_000);
    let facts = TcpFacts {
        unread: 60_000,
        copied_seq: Wire::copied(w.offset, false),
        ..TcpFacts::default()
    };
    w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
    w.send(None, 10_000);
    w.client_eof_read(Some(ReadFacts {
        copied_seq: Wire::copied(w.offset, false),
        unread: 50_000,
    }));
    assert_eq!(w.kinds(), [Kind::Aborted]);
}

/// Reads counted twice (the kernel's count behind the reads seen): unsure.
#[test]
fn client_reads_ahead_of_the_kernel_at_a_reset_are_unsure() {
    let mut w = Wire::client(Transport::Tcp);
    w.response(10_000_000, 1_000_000);
    let facts = TcpFacts {
        copied_seq: Wire::copied(w.offset - 500, false),
        ..TcpFacts::default()
    };
    w.state_facts(TCP_ESTABLISHED, RESET_RECEIVED, facts);
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

/// hyper's way to end a connection: `shutdown(SHUT_WR)`, then `close()`. The FIN settles
/// nothing: the close finds unread request bytes and Linux resets the connection, dropping what
/// the FIN was meant to deliver (issue 25). One verdict, the response's own `reset_discard`
/// with what the client got; no connection-level line.
#[test]
fn shutdown_then_close_with_unread_input_is_the_responses_reset_discard() {
    let total = hl(4_194_304) + 4_194_304;
    let mut w = Wire::new(Transport::Tcp);
    w.response(4_194_304, 4_194_304);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 3_137_617);
    assert_eq!(w.kinds(), [], "the FIN settles nothing");
    w.ev(Event::ResetDiscard {
        sk: SK,
        ts_ns: 50,
        meta: meta(Transport::Tcp),
        unacked: 3_137_617,
        unsent: 3_121_233,
        unread: 98_000,
        snd_una: 0,
    });
    w.state_unacked(TCP_FIN_WAIT1, TCP_CLOSE, 3_137_617 + 1);
    assert_eq!(w.kinds(), [Kind::ResetDiscard]);
    let v = &w.out[0];
    assert_eq!(w.r_sent_delivered(), (total, total - 3_121_233));
    assert_eq!(v.unacked_bytes, Some(3_137_617));
    assert_eq!(
        v.evidence.unacked_bytes_at_end,
        Some(3_137_617),
        "at the FIN"
    );
    // Cut short, then shut down and reset: one short_write with what was delivered.
    let mut w = Wire::new(Transport::Tcp);
    w.response(4_194_304, 1_000_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 500_000);
    w.host_reset(400_000);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(
        w.r_sent_delivered(),
        (hl(4_194_304) + 1_000_000, hl(4_194_304) + 600_000)
    );
    // The same shutdown and close, read at once: every byte acknowledged before the close.
    let mut w = Wire::new(Transport::Tcp);
    w.response(4_194_304, 4_194_304);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 2_000_000);
    w.state(TCP_FIN_WAIT1, TCP_FIN_WAIT2);
    assert_eq!(w.kinds(), [Kind::Complete]);
    w.state(TCP_FIN_WAIT2, TCP_CLOSE);
    assert_eq!(w.out.len(), 1, "one verdict");
}

/// After this host's FIN the socket ends without its reset (an orphan's retries ran out): the
/// bytes never acknowledged were never delivered; the FIN's sequence number is no byte.
#[test]
fn fin_then_close_without_acknowledgement_counts_what_was_delivered() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(10_000, 10_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 4_000);
    w.state_unacked(TCP_FIN_WAIT1, TCP_CLOSE, 4_000 + 1);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    let total = hl(10_000) + 10_000;
    assert_eq!(w.r_sent_delivered(), (total, total - 4_000));
    // Every byte but the FIN acknowledged: complete.
    let mut w = Wire::new(Transport::Tcp);
    w.response(10_000, 10_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 4_000);
    w.state_unacked(TCP_FIN_WAIT1, TCP_CLOSE, 1);
    assert_eq!(w.kinds(), [Kind::Complete]);
}

/// A stalled reader can keep a shut-down socket in FIN_WAIT1 while the application holds it:
/// the wait is bounded, and then judged as handed over.
#[test]
fn the_wait_after_a_fin_is_bounded() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(10_000, 10_000);
    let fin_ns = w.ts; // (the state change is dated so)
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 4_000);
    w.c.expire(fin_ns + FIN_WAIT_BOUND_NS - 1, &mut w.out);
    assert_eq!(w.kinds(), []);
    assert!(w.c.fin_waits, "one waits: expire looks");
    w.c.expire(fin_ns + FIN_WAIT_BOUND_NS + 1_000_000_000, &mut w.out);
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.c.tracked(), 0);
    assert!(
        !w.c.fin_waits,
        "none waits any more: expire no longer looks"
    );
    // A short one is a short_write whenever it is judged.
    let mut w = Wire::new(Transport::Tcp);
    w.response(10_000, 5_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_FIN_WAIT1, 4_000);
    w.c.expire(w.ts + FIN_WAIT_BOUND_NS, &mut w.out);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].evidence.unacked_bytes_at_end, Some(4_000));
}

/// A client that half-closed before the agent classified the connection (its FIN arrived
/// first: CLOSE_WAIT at the open): `peer_ended` still says so, and it decides nothing.
#[test]
fn a_peer_fin_before_the_open_is_its_end_in_evidence() {
    let mut w = Wire::new(Transport::Tcp);
    w.c = Correlator::new(10, Some(250));
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 1,
        meta: meta(Transport::Tcp),
        losses: 0,
        copied_seq: None,
        peer_fin: true,
        late: false,
    });
    w.response(4_194_304, 3_588_096 - hl(4_194_304));
    w.state(TCP_CLOSE_WAIT, TCP_LAST_ACK);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Fin));
}

/// A client that half-closes once its request is sent (RFC 9112 §9.6) still reads the
/// response: the server's FIN after a cut is its truncation, whatever the client's own FIN.
#[test]
fn client_half_close_then_a_cut_response_is_truncated() {
    let mut w = Wire::client(Transport::Tcp);
    w.client_state(TCP_ESTABLISHED, TCP_FIN_WAIT1, 0);
    assert_eq!(w.c.tracked(), 1, "it reads on");
    w.response(4_194_304, 1_000_000);
    w.client_state(TCP_FIN_WAIT1, TCP_FIN_WAIT2, 0);
    // The server's FIN (TIME_WAIT: CLOSE), 500 000 bytes still to read.
    w.client_state(TCP_FIN_WAIT2, TCP_CLOSE, 500_000 + 1);
    assert_eq!(w.kinds(), []);
    w.send(None, 500_000);
    assert_eq!(w.kinds(), [Kind::Truncated]);
    assert_eq!(w.out[0].r().sent_bytes, hl(4_194_304) + 1_500_000);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Fin));
    // All of it read: complete as it is read.
    let mut w = Wire::client(Transport::Tcp);
    w.client_state(TCP_ESTABLISHED, TCP_FIN_WAIT1, 0);
    w.response(1000, 1000);
    assert_eq!(w.kinds(), [Kind::Complete]);
    // A client that closes mid-response is still the one that left.
    let mut w = Wire::client(Transport::Tcp);
    w.response(30 << 20, 1 << 20);
    w.client_state(TCP_ESTABLISHED, TCP_FIN_WAIT1, 0);
    assert_eq!(w.kinds(), [Kind::Aborted]);
}

/// Pipelined responses read together: a read that ends one response and begins the next
/// hides that head (the kernel captures heads at the start of reads). Never silently dropped:
/// counted as unjudged, and the stream, out of step, is judged no further.
#[test]
fn client_pipelined_responses_read_together_are_counted_unjudged() {
    let mut w = Wire::client(Transport::Tcp);
    let first = hl(100) + 100;
    // The first response and 60 bytes of the second in one read.
    w.send_tail(Some(head(100)), 4096, first + 60, b"");
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.c.stats.pipelined_unseen, 1);
    w.send(None, 1000);
    w.send(Some(head(10)), hl(10) + 10);
    w.client_state(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 1);
    w.client_eof(0);
    assert_eq!(w.kinds(), [Kind::Complete], "nothing more judged");
    // One response a read: each judged.
    let mut w = Wire::client(Transport::Tcp);
    w.response(100, 100);
    w.response(100, 100);
    assert_eq!(w.kinds(), [Kind::Complete; 2]);
    assert_eq!(w.c.stats.pipelined_unseen, 0);
}

/// A client that half-closes once its request is sent, whose FIN reaches the server only after
/// the response began (the usual race: hyper writes at once): it goes on acknowledging what is
/// sent, so its FIN was no leaving, and a cut after it is the server's (issue 25). One that
/// acknowledged nothing after its FIN left: `peer_closed`.
#[test]
fn a_half_close_that_goes_on_reading_is_not_the_peers_leaving() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(8_388_608, 1_000_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 600_000);
    w.send(None, 2_000_000);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 1_500_000);
    w.state_unacked(TCP_LAST_ACK, TCP_CLOSE, 0);
    assert_eq!(w.kinds(), [Kind::ShortWrite]);
    assert_eq!(w.out[0].evidence.peer_ended, Some(PeerEnd::Fin));
    let sent = hl(8_388_608) + 3_000_000;
    assert_eq!(w.r_sent_delivered(), (sent, sent));
    // Nothing acknowledged after its FIN, then its reset: it left.
    let mut w = Wire::new(Transport::Tcp);
    w.response(8_388_608, 1_000_000);
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE_WAIT, 600_000);
    w.send(None, 2_000_000);
    w.state_unacked(TCP_CLOSE_WAIT, TCP_LAST_ACK, 2_600_000);
    w.state_unacked(TCP_LAST_ACK, RESET_RECEIVED, 2_600_000);
    assert_eq!(w.kinds(), [Kind::PeerClosed]);
}

/// A connection whose open event was lost (the ring buffer was full) and came late, at stream
/// offset 500 000, in the middle of a response whose head was never seen (issue 26).
fn opened_late() -> Wire {
    let mut w = Wire {
        c: Correlator::new(1000, Some(250)),
        out: vec![],
        offset: 500_000,
        ts: 1,
        reads: Seen::default(),
    };
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 1,
        meta: meta(Transport::Tcp),
        losses: 3,
        copied_seq: None,
        peer_fin: false,
        late: true,
    });
    w
}

#[test]
fn a_connection_seen_from_the_middle_ends_as_observer_loss_never_silence() {
    let mut w = opened_late();
    w.send(None, 65_536);
    w.err(EAGAIN);
    w.fin();
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
    let v = &w.out[0];
    assert!(v.response.is_none(), "no response was seen: {v:?}");
    assert_eq!((v.pid, v.meta.comm.as_str()), (42, "srv"));
    assert_eq!(v.evidence.end, Some(End::Fin));
    assert_eq!(
        w.c.stats
            .judged_on(Side::Server, Kind::ObserverLoss)
            .to_owned(),
        1
    );
}

/// A head after a late open: the response before it was never seen (`observer_loss`, ended
/// by the next head), and the new one is judged.
#[test]
fn a_head_after_a_late_open_ends_the_unseen_response_and_is_judged() {
    let mut w = opened_late();
    w.send(None, 10_000);
    w.response(1000, 1000);
    w.fin();
    assert_eq!(w.kinds(), [Kind::ObserverLoss, Kind::Complete]);
    assert_eq!(w.out[0].evidence.end, Some(End::NextResponse));
    assert!(w.out[0].response.is_none());
    // A shortfall on the new one is still not blamed: events of this stream were lost.
    let mut w = opened_late();
    w.response(1_000_000, 0);
    w.send_part(None, 1_000_000, 219_264);
    w.err(EAGAIN);
    w.fin();
    assert_eq!(w.kinds(), [Kind::ObserverLoss, Kind::ObserverLoss]);
    assert!(w.out[1].response.is_some());
}

/// This host resets a connection whose response was never seen: one verdict, not a
/// `reset_discard` beside the `observer_loss` (the reset's bytes are that response's).
#[test]
fn an_unseen_response_takes_this_hosts_reset_over() {
    let mut w = opened_late();
    w.send(None, 65_536);
    w.host_reset(50_000);
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

/// A head the ring buffer had no room for, sent whole in one send: the next head shows bytes
/// no event told of, a response never seen.
#[test]
fn a_response_lost_whole_shows_at_the_next_head() {
    let mut w = Wire::new(Transport::Tcp);
    w.response(10, 10);
    // Lost: a whole response, head and body in one send (the socket is marked).
    w.offset += hl(10) + 10;
    let offset = w.offset;
    let cap = head(10);
    let n = cap.len() as u64 + 10;
    w.ev(Event::Send(SendFacts {
        sk: SK,
        ts_ns: 9,
        tgid: 42,
        offset,
        ret: n as i64,
        requested: n,
        head: Some(cap),
        events_lost: true,
        ..SendFacts::default()
    }));
    w.offset += n;
    w.fin();
    assert_eq!(
        w.kinds(),
        [Kind::Complete, Kind::ObserverLoss, Kind::Complete]
    );
}

/// An unparsed head's body on a stream that lost events is that head's (it has its verdict):
/// no second verdict for it.
#[test]
fn an_unparsed_heads_body_is_not_an_unseen_response() {
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    w.send_after_loss(100);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Unparsed]);
}

/// A client's late open loses none of what it reads: no verdict for a response never seen.
#[test]
fn a_clients_late_open_is_no_unseen_response() {
    let mut m = meta(Transport::Tcp);
    m.side = Side::Client;
    let mut w = Wire {
        c: Correlator::new(1000, Some(250)),
        out: vec![],
        offset: 0,
        ts: 1,
        reads: Seen::default(),
    };
    w.ev(Event::Open {
        sk: SK,
        ts_ns: 1,
        meta: m,
        losses: 0,
        copied_seq: Some(7),
        peer_fin: false,
        late: true,
    });
    w.state(TCP_ESTABLISHED, TCP_CLOSE);
    assert_eq!(w.kinds(), []);
}

#[test]
fn a_late_open_with_nothing_after_it_still_ends_as_observer_loss() {
    // (Sent by the state change that ends it: the kernel's last chance to say it.)
    let mut w = opened_late();
    w.state_unacked(TCP_ESTABLISHED, TCP_CLOSE, 4096);
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
}

/// Heads being gathered share one byte budget (issue 26): a head that would take more is
/// unparsed and counted, never guessed; the budget comes back as heads end or give up.
#[test]
fn heads_gathered_in_pieces_share_a_byte_budget() {
    let h = long_head(1300, "Content-Length: 5\r\n");
    let c = Correlator::new(1000, Some(250)).partial_heads_budget(1000);
    let mut w = Wire::opened_in(c, meta(Transport::Tcp), None);
    // The first 512 bytes fit; the piece that would take the head to 1 300 does not.
    w.send_long(&[&h[..], b"hello"].concat());
    w.fin();
    assert_eq!(w.kinds(), [Kind::Unparsed]);
    assert_eq!(w.c.stats.heads_over_budget, 1);
    assert_eq!(w.c.head_budget.used(), 0, "given back");
    // With room, the same head is joined and judged.
    let c = Correlator::new(1000, Some(250)).partial_heads_budget(2000);
    let mut w = Wire::opened_in(c, meta(Transport::Tcp), None);
    w.send_long(&[&h[..], b"hello"].concat());
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.c.head_budget.used(), 0);
}

/// A head written a byte per send after its status line is joined (and parsed once, when its
/// blank line came: issue 26 measured 25 ms of agent CPU per 16 KiB head parsed on each piece).
#[test]
fn a_head_written_a_byte_at_a_time_is_joined() {
    let h = long_head(1300, "Content-Length: 5\r\n");
    let mut w = Wire::new(Transport::Tcp);
    w.send_bytes(&h[..17]); // its status line: the kernel's head event
    for b in &h[17..] {
        w.send_more(std::slice::from_ref(b));
    }
    assert!(w.out.is_empty());
    w.send_more(b"hello");
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
    assert_eq!(w.out[0].r().expected_bytes, Some(h.len() as u64 + 5));
}

/// The open came, the head did not (a small event fits in a ring buffer a head no longer
/// does): the bytes after it belong to a response never seen, and the end says so.
#[test]
fn a_lost_head_ends_as_observer_loss() {
    let mut w = Wire::new(Transport::Tcp);
    w.offset += 44; // the head's send, lost
    w.send_after_loss(1000);
    w.send(None, 65_536);
    w.fin();
    assert_eq!(w.kinds(), [Kind::ObserverLoss]);
    assert!(w.out[0].response.is_none());
    // Without a loss, bytes after a response's end are no response's: nothing to say.
    let mut w = Wire::new(Transport::Tcp);
    w.response(10, 10);
    w.send(None, 100);
    w.fin();
    assert_eq!(w.kinds(), [Kind::Complete]);
}

/// A client reading its response head a few bytes at a time (no read begins with `HTTP/` in
/// 5 bytes: no head event), the blank line and body bytes in one read: the head is found.
#[test]
fn a_head_read_in_small_pieces_ends_inside_a_read() {
    let mut w = Wire::client(Transport::Unix);
    for r in [
        &b"HTT"[..],
        b"P/1.1 20",
        b"0 OK\r\nCo",
        b"ntent-Le",
        b"ngth: 3",
        b"\r\n\r\nabc",
    ] {
        w.send_tail(None, r.len() as u64, r.len() as u64, r);
    }
    assert_eq!(w.kinds(), [Kind::Complete]);
}
