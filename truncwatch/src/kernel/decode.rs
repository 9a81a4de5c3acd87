//! Decoding the kernel programs' ring buffer records into the events the judge reads
//! (`judge::events`), whatever hook backend produced them.
use crate::judge::events::{
    ConnMeta, Event, PieceFacts, ReadFacts, SendFacts, SendPart, Side, Tail, TcpFacts, TlsSeq,
    Transport,
};
use crate::judge::requests::{Method, Seen};
use crate::kernel::btf_offsets::SockLayout;
use std::mem::offset_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use truncwatch_common::{
    AF_INET6, AF_UNIX, EV_EOF, EV_HEAD, EV_HEAD_PIECE, EV_OPEN, EV_RESET, EV_SEND, EV_STATE,
    EofEvent, FLAG_ACCEPTED, FLAG_ANNOUNCED, FLAG_EVENTS_LOST, FLAG_REQUESTS, FLAG_TLS_SEQ,
    FLAG_TLS_SEQ_BEFORE, HEAD_CAP, HeadEvent, HeadPiece, Header, MAX_HEAD_LIMIT, OPEN_CLIENT,
    OPEN_LATE, OPEN_NO_OWNER, OPEN_TLS, OpenEvent, ResetEvent, SOCK_PREFIX, SendEvent, StateEvent,
    TAIL,
};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { kind: u32, len: usize },
    UnknownKind(u32),
}

/// Decode one ring buffer record.
pub fn decode(buf: &[u8], layout: &SockLayout) -> Result<Event, DecodeError> {
    let h: Header = read(buf, 0)?;
    Ok(match h.kind {
        EV_OPEN => {
            let e: OpenEvent = read(buf, h.kind)?;
            let meta = open_meta(&e, layout);
            // (A TLS client's reads are plaintext: the socket's sequence numbers count records.)
            let tcp_client =
                meta.side == Side::Client && meta.transport == Transport::Tcp && !meta.tls;
            // TCP_CLOSE_WAIT (include/net/tcp_states.h).
            let peer_fin = meta.transport == Transport::Tcp && e.sock.get(layout.state) == Some(&8);
            Event::Open {
                sk: h.sk,
                ts_ns: h.ts_ns,
                meta,
                losses: e.losses,
                copied_seq: tcp_client.then_some(e.copied_seq),
                peer_fin,
                late: e.flags & OPEN_LATE != 0,
            }
        }
        EV_SEND => send_event(read::<SendEvent>(buf, h.kind)?, None),
        EV_HEAD => {
            // Field by field, not the whole record: copying its `HEAD_CAP`-byte capture onto the
            // stack before copying the part used showed in the agent's profile.
            if buf.len() < size_of::<HeadEvent>() {
                return Err(DecodeError::Short {
                    kind: h.kind,
                    len: buf.len(),
                });
            }
            let cap_len: u32 = read(&buf[offset_of!(HeadEvent, cap_len)..], h.kind)?;
            let cap = &buf[offset_of!(HeadEvent, cap)..][..(cap_len as usize).min(HEAD_CAP)];
            let mut ev = send_event(read(buf, h.kind)?, Some(cap.to_vec()));
            if let Event::Send(s) = &mut ev {
                let (requests, method) = (
                    buf[offset_of!(HeadEvent, requests)],
                    buf[offset_of!(HeadEvent, method)],
                );
                s.requests = Seen {
                    count: requests.into(),
                    first: Method::from_code(method),
                };
            }
            ev
        }
        EV_HEAD_PIECE => {
            let e: HeadPiece = read(buf, h.kind)?;
            let bytes = &buf[size_of::<HeadPiece>()..];
            let n = (e.len as usize).min(bytes.len()).min(MAX_HEAD_LIMIT);
            Event::HeadPiece(PieceFacts {
                sk: h.sk,
                ts_ns: h.ts_ns,
                offset: e.offset,
                send_end: e.send_end,
                bytes: bytes[..n].to_vec(),
                events_lost: e.flags & FLAG_EVENTS_LOST != 0,
            })
        }
        EV_STATE => {
            let e: StateEvent = read(buf, h.kind)?;
            let known = |v: u32| (v != u32::MAX).then_some(u64::from(v));
            let facts = TcpFacts {
                unacked: e.unacked.into(),
                unsent: e.unsent.into(),
                unread: e.unread.into(),
                peer_window: known(e.snd_wnd),
                rwnd_limited_jiffies: known(e.rwnd_limited),
                sndbuf_limited_jiffies: known(e.sndbuf_limited),
                events_lost: e.flags & FLAG_EVENTS_LOST != 0,
                snd_una: e.snd_una,
                copied_seq: e.copied_seq,
            };
            Event::TcpState {
                sk: h.sk,
                ts_ns: h.ts_ns,
                oldstate: e.oldstate,
                newstate: e.newstate,
                facts,
            }
        }
        EV_RESET => {
            let e: ResetEvent = read(buf, h.kind)?;
            let meta = inet_meta(e.family, &e.sock, e.sport, h.tgid, cstr(&e.comm), layout);
            Event::ResetDiscard {
                sk: h.sk,
                ts_ns: h.ts_ns,
                meta,
                unacked: e.unacked.into(),
                unsent: e.unsent.into(),
                unread: e.unread.into(),
                snd_una: e.snd_una,
            }
        }
        EV_EOF => {
            let e: EofEvent = read(buf, h.kind)?;
            Event::Eof {
                reader: h.sk,
                peer: e.peer,
                ts_ns: h.ts_ns,
                losses: e.losses,
                events_lost: e.flags & FLAG_EVENTS_LOST != 0,
                // A TCP client's (a Unix reader has no peer 0).
                read: (e.peer == 0).then_some(ReadFacts {
                    copied_seq: e.copied_seq,
                    unread: e.unread.into(),
                }),
            }
        }
        k => return Err(DecodeError::UnknownKind(k)),
    })
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
        });
    }
    // SAFETY: length checked; T is a plain #[repr(C)] integer struct valid for any bytes.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn send_event(e: SendEvent, head: Option<Vec<u8>>) -> Event {
    let n = (e.tail_len as usize).min(TAIL);
    Event::Send(SendFacts {
        sk: e.h.sk,
        ts_ns: e.h.ts_ns,
        tgid: e.h.tgid,
        offset: e.offset,
        ret: e.ret.into(),
        requested: e.requested,
        syscall: e.syscall.into(),
        head,
        tail: Tail::new(&e.tail[..n]),
        requests: if e.flags & FLAG_REQUESTS != 0 {
            Seen {
                count: e.seq & 0xff,
                first: Method::from_code((e.seq >> 8) as u8),
            }
        } else {
            Seen::default()
        },
        events_lost: e.flags & FLAG_EVENTS_LOST != 0,
        part: if e.flags & FLAG_ANNOUNCED != 0 {
            SendPart::Announced
        } else if e.flags & FLAG_ACCEPTED != 0 {
            SendPart::Accepted
        } else {
            SendPart::Whole
        },
        tls_seq: if e.flags & FLAG_TLS_SEQ != 0 {
            Some(TlsSeq::End(e.seq))
        } else if e.flags & FLAG_TLS_SEQ_BEFORE != 0 {
            Some(TlsSeq::Before(e.seq))
        } else {
            None
        },
    })
}

fn open_meta(e: &OpenEvent, l: &SockLayout) -> ConnMeta {
    // (A late open sent from a state change may run in another task's context.)
    let no_owner = e.flags & OPEN_NO_OWNER != 0;
    let comm = if no_owner {
        String::new()
    } else {
        cstr(&e.comm)
    };
    let tgid = if no_owner { 0 } else { e.h.tgid };
    let side = if e.flags & OPEN_CLIENT != 0 {
        Side::Client
    } else {
        Side::Server
    };
    match e.family {
        // A client's `unix_path` is the server's (the kernel reads it off the peer socket).
        AF_UNIX if side == Side::Client => ConnMeta {
            transport: Transport::Unix,
            pid: tgid,
            comm,
            local: String::new(),
            peer: unix_path(&e.unix_path),
            tls: false,
            side,
        },
        AF_UNIX => ConnMeta {
            transport: Transport::Unix,
            pid: tgid,
            comm,
            local: unix_path(&e.unix_path),
            peer: String::new(),
            tls: false,
            side,
        },
        family => ConnMeta {
            tls: e.flags & OPEN_TLS != 0,
            side,
            ..inet_meta(family, &e.sock, e.sport, tgid, comm, l)
        },
    }
}

/// A TCP connection's ends, from the copy of `struct sock_common` at the start of `sock`, and
/// the local port (`inet_sport`, network order: `skc_num` is zeroed once the port is released).
fn inet_meta(
    family: u16,
    s: &[u8; SOCK_PREFIX],
    sport: u16,
    pid: u32,
    comm: String,
    l: &SockLayout,
) -> ConnMeta {
    let u16_at = |o: usize| u16::from_ne_bytes([s[o], s[o + 1]]);
    let v4 = |o: usize| Ipv4Addr::new(s[o], s[o + 1], s[o + 2], s[o + 3]);
    let v6 = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&s[o..o + 16]).unwrap());
    let lport = u16::from_be(sport);
    let pport = u16::from_be(u16_at(l.dport));
    let (la, pa): (std::net::IpAddr, std::net::IpAddr) = if family == AF_INET6 {
        (v6(l.v6_rcv_saddr).into(), v6(l.v6_daddr).into())
    } else {
        // AF_INET (the kernel reports no other family here; a record that says otherwise is
        // read as IPv4 rather than refused).
        (v4(l.rcv_saddr).into(), v4(l.daddr).into())
    };
    ConnMeta {
        transport: Transport::Tcp,
        pid,
        comm,
        local: SocketAddr::new(la, lport).to_string(),
        peer: SocketAddr::new(pa, pport).to_string(),
        tls: false,
        side: Side::Server,
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A `sun_path`: a filesystem path, or (leading NUL) an abstract name shown as `@name`.
fn unix_path(p: &[u8]) -> String {
    match p.first() {
        Some(0) => {
            let name = &p[1..];
            let end = name.iter().rposition(|&c| c != 0).map_or(0, |e| e + 1);
            if end == 0 {
                String::new()
            } else {
                format!("@{}", String::from_utf8_lossy(&name[..end]))
            }
        }
        _ => cstr(p),
    }
}

/// A `struct sock_common` layout for tests (this file's and `fuzz_tests`'): the offsets of
/// Linux 6.x on x86_64.
#[cfg(test)]
pub fn test_layout() -> SockLayout {
    SockLayout {
        daddr: 0,
        rcv_saddr: 4,
        dport: 12,
        v6_daddr: 56,
        v6_rcv_saddr: 72,
        state: 18,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use truncwatch_common::{AF_INET, HEAD_CAP, SOCK_PREFIX, UNIX_PATH};

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
    }

    use super::test_layout as layout;

    #[test]
    fn decodes_tcp_open() {
        let mut e = OpenEvent {
            h: Header {
                kind: EV_OPEN,
                tgid: 7,
                sk: 0xffff1,
                ts_ns: 5,
            },
            family: AF_INET,
            sport: 8080u16.to_be(),
            flags: 0,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            sock: [0; SOCK_PREFIX],
            unix_path: [0; UNIX_PATH],
            losses: 0,
            copied_seq: 0,
            _pad: 0,
        };
        e.sock[0..4].copy_from_slice(&[127, 0, 0, 2]);
        e.sock[4..8].copy_from_slice(&[127, 0, 0, 1]);
        e.sock[12..14].copy_from_slice(&5555u16.to_be_bytes());
        let ev = decode(&bytes(&e), &layout()).unwrap();
        let meta = ConnMeta {
            transport: Transport::Tcp,
            pid: 7,
            comm: "nginx".into(),
            local: "127.0.0.1:8080".into(),
            peer: "127.0.0.2:5555".into(),
            tls: false,
            side: Side::Server,
        };
        assert_eq!(
            ev,
            Event::Open {
                sk: 0xffff1,
                ts_ns: 5,
                meta,
                losses: 0,
                copied_seq: None,
                peer_fin: false,
                late: false,
            }
        );
    }

    #[test]
    fn decodes_unix_paths() {
        let mut p = [0u8; UNIX_PATH];
        p[..9].copy_from_slice(b"/run/x.sk");
        assert_eq!(unix_path(&p), "/run/x.sk");
        let mut a = [0u8; UNIX_PATH];
        a[1..4].copy_from_slice(b"abc");
        assert_eq!(unix_path(&a), "@abc");
        assert_eq!(unix_path(&[0u8; UNIX_PATH]), "");
    }

    #[test]
    fn decodes_head_capture_bounded() {
        let mut e = HeadEvent {
            send: SendEvent::default(),
            cap_len: 4,
            requests: 2,
            method: 1,
            _pad: 0,
            cap: [b'x'; HEAD_CAP],
        };
        e.send.h.kind = EV_HEAD;
        e.send.ret = 100;
        e.send.tail[..3].copy_from_slice(b"0\r\n");
        e.send.tail_len = 3;
        let Event::Send(s) = decode(&bytes(&e), &layout()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.head.unwrap().len(), s.ret, s.tail.as_slice()),
            (4, 100, &b"0\r\n"[..])
        );
        assert_eq!(
            s.requests,
            Seen {
                count: 2,
                first: Some(Method::Head)
            }
        );
        e.method = 77; // not a method code: no method
        let Event::Send(s) = decode(&bytes(&e), &layout()).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.requests,
            Seen {
                count: 2,
                first: None
            }
        );
        e.cap_len = 100_000; // corrupt lengths: clamp, never read past the record
        e.send.tail_len = 1000;
        let Event::Send(s) = decode(&bytes(&e), &layout()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.head.unwrap().len(), s.tail.as_slice().len()),
            (HEAD_CAP, TAIL)
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(
            decode(&[1, 0, 0], &layout()),
            Err(DecodeError::Short { .. })
        ));
        let h = Header {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&h), &layout()),
            Err(DecodeError::UnknownKind(99))
        );
        let s = SendEvent {
            h: Header {
                kind: EV_SEND,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes(&s)[..30], &layout()),
            Err(DecodeError::Short { kind: EV_SEND, .. })
        ));
    }
}
