//! Property tests over millions of generated inputs, for the parts that read what applications
//! send: head parsing and framing, event decoding, and the correlator.
//!
//! - Nothing panics, whatever the bytes; what is parsed stays within the input.
//! - Framing agrees with a table of what RFC 9112 §6.3 says of each hostile header value.
//! - On generated connections (responses of random size and framing, split into random sends,
//!   partly accepted, some cut short, ended by either side with a FIN or a reset), the
//!   correlator's verdicts and byte counts (sent and delivered) equal what the
//!   generator knows happened: no false flag, no miss, exact counts.
//!
//! Seeded and repeatable: a failure names its seed. `FUZZ_ITERS=n` scales every loop (the
//! defaults run a few million inputs in total, a few seconds in release). Inputs that once
//! broke something live in `fuzz-corpus/` and are replayed first.
use crate::judge::correlator::{Correlator, Kind, Verdict};
use crate::judge::events::{
    self, ConnMeta, Event, PieceFacts, SendFacts, SendPart, Tail, TcpFacts, Transport,
};
use crate::judge::http_head::{self, Body, Parsed};
use crate::kernel::decode::decode;
use truncwatch_common::HEAD_CAP;

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn iters(default: u64) -> u64 {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every file under `fuzz-corpus/<dir>`.
fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Content-Length values an attacker or a broken server might send, and what each means:
/// Some(numbers) if every comma-separated piece is a plain decimal that fits, else None.
const LENGTHS: &[(&str, Option<&[u64]>)] = &[
    ("0", Some(&[0])),
    ("5", Some(&[5])),
    (" 7 ", Some(&[7])),
    ("5, 5", Some(&[5, 5])),
    ("5,6", Some(&[5, 6])),
    ("1234567890123456789", Some(&[1_234_567_890_123_456_789])),
    ("18446744073709551616", None),
    ("99999999999999999999999", None),
    ("-1", None),
    ("+5", None),
    ("0x10", None),
    ("1 2", None),
    ("", None),
    ("5,", None),
];

const CODINGS: &[(&str, bool)] = &[
    ("chunked", true),
    ("CHUNKED", true),
    ("gzip, chunked", true),
    ("chunked, gzip", false),
    ("gzip", false),
    (" chunked ", true),
    ("identity", false),
];

const FILLER: &[&str] = &[
    "Server: nginx",
    "Date: Tue, 24 Nov 2026 10:00:00 GMT",
    "X-Injected: a\r\nContent-Length: 1", // a value cannot hold CRLF: this is two header lines
    "Set-Cookie: a=b; Path=/",
    "content-length-ish: 12",
    "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// A generated head and the framing RFC 9112 §6.3 gives it.
fn generated_head(r: &mut Rng) -> (Vec<u8>, Option<Body>) {
    let status = *r.pick(&[200u16, 200, 206, 404, 500, 204, 304, 100, 101, 199]);
    let mut lines = vec![format!("HTTP/1.1 {status} X")];
    let mut lengths: Vec<Option<&[u64]>> = vec![];
    let mut last_te: Option<bool> = None;
    for _ in 0..r.below(6) {
        match r.below(4) {
            0 => {
                let (v, n) = *r.pick(LENGTHS);
                let name = *r.pick(&["Content-Length", "content-length", "CONTENT-LENGTH"]);
                lines.push(format!("{name}: {v}"));
                lengths.push(n);
            }
            1 => {
                let (v, chunked) = *r.pick(CODINGS);
                lines.push(format!("Transfer-Encoding: {v}"));
                last_te = Some(chunked);
            }
            _ => {
                let f = *r.pick(FILLER);
                if f.contains("Content-Length: 1") {
                    lengths.push(Some(&[1]));
                }
                lines.push(f.to_string());
            }
        }
    }
    let head = format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return (head, Some(Body::None));
    }
    let mut length: Option<u64> = None;
    for n in lengths {
        let Some(n) = n else { return (head, None) };
        for &v in n {
            if length.is_some_and(|l| l != v) {
                return (head, None);
            }
            length = Some(v);
        }
    }
    let body = match (last_te == Some(true), length) {
        (true, _) => Body::Chunked,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::UntilClose,
    };
    (head, Some(body))
}

fn check_parse(input: &[u8]) {
    if let Parsed::Head(h) = http_head::parse(input) {
        assert!(
            h.len as usize <= input.len(),
            "head longer than its input: {input:?}"
        );
        assert!((100..=999).contains(&h.status), "{input:?}");
    }
}

#[test]
fn corpus_heads_never_panic() {
    for input in corpus("heads") {
        check_parse(&input);
    }
}

#[test]
fn framing_agrees_with_the_rfc_on_generated_heads() {
    let mut r = Rng::new(1);
    for i in 0..iters(300_000) {
        let (head, want) = generated_head(&mut r);
        let got = match http_head::parse(&head) {
            Parsed::Head(h) => {
                assert_eq!(h.len as usize, head.len(), "iteration {i}");
                Some(h.body)
            }
            Parsed::Invalid => None,
            Parsed::Incomplete => panic!(
                "iteration {i}: a whole head is incomplete: {:?}",
                String::from_utf8_lossy(&head)
            ),
        };
        assert_eq!(
            got,
            want,
            "iteration {i}: {:?}",
            String::from_utf8_lossy(&head)
        );
    }
}

#[test]
fn mutated_and_random_heads_never_panic() {
    let mut r = Rng::new(2);
    let seeds: Vec<Vec<u8>> = corpus("heads")
        .into_iter()
        .chain((0..64).map(|_| generated_head(&mut r).0))
        .collect();
    for _ in 0..iters(1_000_000) {
        let mut input = r.pick(&seeds).clone();
        for _ in 0..=r.below(4) {
            let at = r.below(input.len() as u64 + 1) as usize;
            match r.below(5) {
                0 if at < input.len() => input[at] = r.next() as u8,
                1 => input.insert(at, *r.pick(b"\r\n:, \t\0\xff0123456789")),
                2 => input.truncate(at),
                3 if at < input.len() => {
                    input.remove(at);
                }
                _ => {
                    let junk: Vec<u8> = (0..r.below(16)).map(|_| r.next() as u8).collect();
                    input.splice(at..at, junk);
                }
            }
        }
        check_parse(&input);
    }
    for _ in 0..iters(200_000) {
        let input: Vec<u8> = (0..r.below(600)).map(|_| r.next() as u8).collect();
        check_parse(&input);
    }
}

#[test]
fn decoding_any_bytes_never_panics() {
    let layout = crate::kernel::decode::test_layout();
    let mut r = Rng::new(3);
    for _ in 0..iters(500_000) {
        let len = r.below(800) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        // A known kind most of the time, so that each record's own fields are reached.
        if len >= 4 && r.chance(80) {
            buf[..4].copy_from_slice(&(r.below(9) as u32).to_ne_bytes());
        }
        let _ = decode(&buf, &layout);
    }
}

/// The correlator fed random events (random sockets, kinds, offsets and heads): no panic, and
/// the connection table stays within its bound.
#[test]
fn random_event_streams_never_panic() {
    let mut r = Rng::new(4);
    let heads: Vec<Vec<u8>> = corpus("heads")
        .into_iter()
        .chain((0..64).map(|_| generated_head(&mut r).0))
        .collect();
    let mut c = Correlator::new(64, Some(250));
    let mut out = Vec::new();
    for i in 0..iters(1_000_000) {
        let sk = r.below(200);
        let ts_ns = i;
        let ev = match r.below(6) {
            0 => Event::Open {
                sk,
                ts_ns,
                meta: meta(),
                losses: r.below(3) as u32,
                copied_seq: None,
                peer_fin: r.chance(10),
                late: r.chance(20),
            },
            1 | 2 if r.chance(10) => {
                // More of a head: random bytes of one, at a random place.
                let h = r.pick(&heads);
                let from = r.below(h.len() as u64 + 1) as usize;
                Event::HeadPiece(PieceFacts {
                    sk,
                    ts_ns,
                    offset: r.below(1 << 20),
                    send_end: r.below(1 << 21),
                    bytes: h[from..].to_vec(),
                    events_lost: false,
                })
            }
            1 | 2 => {
                let head = r.chance(30).then(|| r.pick(&heads)[..].to_vec());
                let ret = r.below(100_000) as i64 - if r.chance(10) { 100_011 } else { 0 };
                let tails: [&[u8]; 4] = [b"", b"\r\n0\r\n\r\n", b"\r\n\r\n", b"abc"];
                let tail: &[u8] = tails[r.below(tails.len() as u64) as usize];
                let tail = Tail::new(tail);
                Event::Send(SendFacts {
                    sk,
                    ts_ns,
                    tgid: 1,
                    offset: r.below(1 << 20),
                    ret,
                    requested: r.below(200_000),
                    syscall: 1,
                    head,
                    tail,
                    ..SendFacts::default()
                })
            }
            3 => {
                let newstate = if r.chance(10) {
                    events::RESET_RECEIVED
                } else {
                    r.below(13) as i32
                };
                Event::TcpState {
                    sk,
                    ts_ns,
                    oldstate: r.below(12) as i32,
                    newstate,
                    facts: TcpFacts::default(),
                }
            }
            4 => Event::Eof {
                reader: sk,
                peer: r.below(200),
                ts_ns,
                losses: r.below(3) as u32,
                events_lost: false,
                read: None,
            },
            _ => Event::ResetDiscard {
                sk,
                ts_ns,
                meta: meta(),
                unacked: r.below(1 << 20),
                unsent: r.below(1 << 20),
                unread: r.below(100),
                snd_una: 0,
            },
        };
        c.handle(ev, &mut out);
        assert!(c.tracked() <= 64);
        out.clear();
    }
}

fn meta() -> ConnMeta {
    ConnMeta {
        transport: Transport::Tcp,
        pid: 1,
        comm: "gen".into(),
        local: "127.0.0.1:80".into(),
        peer: "127.0.0.1:9".into(),
        tls: false,
        side: crate::judge::events::Side::Server,
    }
}

/// One generated response: its bytes, head length, whether chunked, and (if cut) how many of
/// its bytes the server handed over before the connection ended.
struct Generated {
    bytes: Vec<u8>,
    chunked: bool,
    cut: Option<usize>,
}

fn generated_response(r: &mut Rng, cut: bool) -> Generated {
    let chunked = r.chance(30);
    let body_len = if r.chance(20) {
        r.below(10)
    } else {
        r.below(200_000)
    } as usize;
    let mut body = Vec::with_capacity(body_len + 64);
    let head = if chunked {
        let mut left = body_len;
        while left > 0 {
            let n = (r.below(20_000) as usize + 1).min(left);
            body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            body.extend((0..n).map(|i| b'a' + (i % 26) as u8));
            body.extend_from_slice(b"\r\n");
            left -= n;
        }
        body.extend_from_slice(b"0\r\n\r\n");
        "HTTP/1.1 200 OK\r\nServer: gen\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
    } else {
        body.extend((0..body_len).map(|i| b'a' + (i % 26) as u8));
        format!("HTTP/1.1 200 OK\r\nServer: gen\r\nContent-Length: {body_len}\r\n\r\n")
    };
    let mut bytes = head.clone().into_bytes();
    bytes.extend_from_slice(&body);
    // Cut strictly inside the body, after at least one body byte: a head alone with nothing
    // attempted after it is (rightly) not judged, and that is another test's business.
    let cut =
        (cut && body.len() > 6).then(|| head.len() + 1 + r.below(body.len() as u64 - 6) as usize);
    Generated {
        bytes,
        chunked,
        cut,
    }
}

/// Hand `bytes` to the correlator as the kernel would see a server send them: in random
/// pieces, some only partly accepted (the rest offered again), a head captured at the start of
/// the send that begins it, the tail of every send. `kprobe`: as the kprobe backend reports
/// them (a head's send announced when it begins, what the kernel took after; no errors, and
/// tails only from what was offered). Only the first `handed` bytes get handed over: the last
/// send may offer more, and the kernel take only up to there (the stream then ends).
#[allow(clippy::too_many_arguments)] // test plumbing
fn send_all(
    r: &mut Rng,
    c: &mut Correlator,
    out: &mut Vec<Verdict>,
    sk: u64,
    offset: &mut u64,
    bytes: &[u8],
    handed: usize,
    ts: &mut u64,
    kprobe: bool,
) {
    // The kernel sees a head only at the start of a send; the first send offers it whole.
    let head_len = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    let mut pos = 0;
    while pos < handed {
        let mut offered = (r.below(70_000) as usize + 1).min(bytes.len() - pos);
        if pos == 0 {
            offered = offered.max(head_len).min(bytes.len());
        }
        let accepted = if offered > handed - pos {
            handed - pos
        } else if r.chance(20) {
            r.below(offered as u64) as usize + 1
        } else {
            offered
        };
        if r.chance(5) {
            // The kernel refused (EAGAIN) before taking anything.
            *ts += 1;
            let ret = if kprobe { 0 } else { -11 };
            c.handle(
                Event::Send(SendFacts {
                    sk,
                    ts_ns: *ts,
                    tgid: 1,
                    offset: *offset,
                    ret,
                    requested: offered as u64,
                    syscall: 1,
                    ..SendFacts::default()
                }),
                out,
            );
        }
        let piece = &bytes[pos..pos + accepted];
        let head = (pos == 0).then(|| bytes[..offered.min(HEAD_CAP)].to_vec());
        *ts += 1;
        if kprobe {
            let tail = &bytes[pos + offered - offered.min(8)..pos + offered];
            if head.is_some() && r.chance(10) {
                // The head's send offered first and refused whole (EAGAIN), then again.
                let s = SendFacts {
                    sk,
                    ts_ns: *ts,
                    tgid: 1,
                    offset: *offset,
                    ret: offered as i64,
                    requested: offered as u64,
                    syscall: 1,
                    head: head.clone(),
                    part: SendPart::Announced,
                    ..SendFacts::default()
                };
                c.handle(Event::Send(s), out);
                let s = SendFacts {
                    sk,
                    ts_ns: *ts,
                    tgid: 1,
                    offset: *offset,
                    ret: 0,
                    requested: offered as u64,
                    syscall: 1,
                    part: SendPart::Accepted,
                    ..SendFacts::default()
                };
                c.handle(Event::Send(s), out);
            }
            let part = if head.is_some() {
                let s = SendFacts {
                    sk,
                    ts_ns: *ts,
                    tgid: 1,
                    offset: *offset,
                    ret: offered as i64,
                    requested: offered as u64,
                    syscall: 1,
                    head,
                    tail: Tail::new(tail),
                    part: SendPart::Announced,
                    ..SendFacts::default()
                };
                c.handle(Event::Send(s), out);
                SendPart::Accepted
            } else {
                SendPart::Whole
            };
            // The kernel's rule (`probe::settle`): the offered tail's prefix that was taken.
            let short = offered - accepted;
            let taken_tail = if short < tail.len() {
                &tail[..tail.len() - short]
            } else {
                &[][..]
            };
            let s = SendFacts {
                sk,
                ts_ns: *ts,
                tgid: 1,
                offset: *offset,
                ret: accepted as i64,
                requested: offered as u64,
                syscall: 1,
                tail: Tail::new(taken_tail),
                part,
                ..SendFacts::default()
            };
            c.handle(Event::Send(s), out);
            *offset += accepted as u64;
            pos += accepted;
            continue;
        }
        c.handle(
            Event::Send(SendFacts {
                sk,
                ts_ns: *ts,
                tgid: 1,
                offset: *offset,
                ret: accepted as i64,
                requested: offered as u64,
                syscall: 1,
                head,
                tail: Tail::new(&piece[piece.len().saturating_sub(8)..]),
                ..SendFacts::default()
            }),
            out,
        );
        *offset += accepted as u64;
        pos += accepted;
    }
}

#[test]
fn generated_connections_are_judged_exactly() {
    judged_exactly(false);
}

/// The same connections as the kprobe backend reports them get the same verdicts.
#[test]
fn generated_connections_are_judged_exactly_as_the_kprobe_backend_reports_them() {
    judged_exactly(true);
}

fn judged_exactly(kprobe: bool) {
    let mut r = Rng::new(5);
    let mut c = Correlator::new(1000, Some(250)).problems_only(false);
    let mut out = Vec::new();
    let mut ts = 0;
    for conn in 0..iters(20_000) {
        let sk = 0xffff_0000 + conn;
        c.handle(
            Event::Open {
                sk,
                ts_ns: ts,
                meta: meta(),
                losses: 0,
                copied_seq: None,
                peer_fin: false,
                late: false,
            },
            &mut out,
        );
        let n = r.below(4) + 1;
        let cut_last = r.chance(40);
        let mut offset = 0;
        // (verdict, sent, expected, delivered) per response.
        let mut want: Vec<(Kind, u64, Option<u64>, u64)> = vec![];
        for i in 0..n {
            let g = generated_response(&mut r, cut_last && i == n - 1);
            let handed = g.cut.unwrap_or(g.bytes.len());
            send_all(
                &mut r,
                &mut c,
                &mut out,
                sk,
                &mut offset,
                &g.bytes,
                handed,
                &mut ts,
                kprobe,
            );
            let (len, expected) = (
                g.bytes.len() as u64,
                (!g.chunked).then_some(g.bytes.len() as u64),
            );
            want.push(match g.cut {
                Some(cut) => (Kind::ShortWrite, cut as u64, expected, cut as u64),
                None => (Kind::Complete, len, Some(len), len),
            });
        }
        // How the stream ends, and what the last response became: bytes of it the peer had
        // not acknowledged are dropped by a reset, or never read by a peer that left first.
        let last = want.last_mut().expect("one response at least");
        let unacked = r.below(last.1 + 1);
        let reached = last.0 == Kind::Complete;
        let kind = |lost: Kind| {
            if unacked == 0 && reached {
                Kind::Complete
            } else {
                lost
            }
        };
        let ending = r.below(6);
        let (new, lost) = match ending {
            // A FIN of the server's, all of it delivered (at once, or once acknowledged).
            0 | 4 => (last.0, 0),
            1 | 5 => (
                kind(if reached {
                    Kind::ResetDiscard
                } else {
                    Kind::ShortWrite
                }),
                unacked,
            ),
            2 => (kind(Kind::PeerClosed), unacked),
            _ => (kind(Kind::PeerReset), unacked),
        };
        (last.0, last.3) = (new, last.1 - lost);
        end_stream(&mut c, &mut out, sk, &mut ts, ending, unacked);
        let got: Vec<(Kind, u64, Option<u64>, u64)> = out
            .drain(..)
            .map(|v| {
                let f = v.response.expect("response verdicts only");
                (v.kind, f.sent_bytes, f.expected_bytes, f.delivered_bytes)
            })
            .collect();
        assert_eq!(got, want, "connection {conn} (seed 5, ending {ending})");
    }
}

/// The state changes a stream ends with: 0, the server's FIN; 1, this host's reset with
/// `unacked` bytes dropped; 2, the peer's FIN, then the server's with `unacked` bytes never
/// acknowledged (the peer's reset settles it); 3, the peer's reset; 4, the server's FIN with
/// `unacked` bytes in flight, then acknowledged; 5, the server's FIN, then its reset (a close
/// with unread input after a shutdown) dropping `unacked` bytes.
fn end_stream(
    c: &mut Correlator,
    out: &mut Vec<Verdict>,
    sk: u64,
    ts: &mut u64,
    ending: u64,
    unacked: u64,
) {
    let mut state = |c: &mut Correlator, out: &mut Vec<Verdict>, newstate: i32, unacked: u64| {
        *ts += 1;
        let facts = TcpFacts {
            unacked,
            ..TcpFacts::default()
        };
        let ev = Event::TcpState {
            sk,
            ts_ns: *ts,
            oldstate: 1,
            newstate,
            facts,
        };
        c.handle(ev, out);
    };
    match ending {
        0 => state(c, out, 4, 0), // FIN_WAIT1
        4 => {
            state(c, out, 4, unacked);
            state(c, out, 5, 0); // FIN_WAIT2
        }
        1 | 5 => {
            if ending == 5 {
                state(c, out, 4, unacked);
            }
            if unacked > 0 {
                let meta = meta();
                let ev = Event::ResetDiscard {
                    sk,
                    ts_ns: 0,
                    meta,
                    unacked,
                    unsent: unacked,
                    unread: 1,
                    snd_una: 0,
                };
                c.handle(ev, out);
            }
            state(c, out, 7, unacked) // CLOSE
        }
        2 => {
            state(c, out, 8, 0); // CLOSE_WAIT
            state(c, out, 9, unacked); // LAST_ACK
            if unacked > 0 {
                state(c, out, events::RESET_RECEIVED, unacked);
            }
        }
        _ => state(c, out, events::RESET_RECEIVED, unacked),
    }
}
