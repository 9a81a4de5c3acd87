//! The receive path: on a server's socket, requests (so the agent knows which responses answer
//! HEAD, and so have no body), and end of stream on Unix sockets; on a client's socket
//! (`FLAG_CLIENT`), the responses it reads, accounted as a server's sends are, and its end of
//! stream.
//!
//! A request costs no event: the socket's state counts reads that begin like a request line
//! and keeps the first one's method, and the next response head carries both to the agent.
//!
//! Cost on a socket that is not an HTTP server or client: one socket-storage lookup per read
//! (plus, on its first read, one 8-byte look at what was read).
use crate::{
    kernel::{IoCall, header, io_call, read_kernel, read_user},
    maps::{EVENTS, LOST_RINGBUF_FULL, Store, count_lost, losses, offsets, wake_flags},
    send::account,
};
use core::ffi::c_void;
use truncwatch_common::{
    AF_UNIX, EV_EOF, EofEvent, FLAG_CLIENT, FLAG_EVENTS_LOST, FLAG_RECV_SEEN, METHOD_CONNECT,
    METHOD_HEAD, METHOD_NONE, METHOD_OTHER, SockState, TAIL, TRACK_HTTP, TRACK_TLS,
};

const MSG_PEEK: i32 = 2;
/// Buffers of one read looked through for its last byte (`received`).
const MAX_READ_IOV: u64 = 16;

/// A read of `ret` bytes on `sk` returned (0: end of stream; < 0: an error). `skip`: bytes of
/// the same call counted before (the kprobe backend's `tcp_read`: a read that waited after
/// copying part), which come first in the caller's buffer; 0 everywhere else.
#[inline(always)]
pub fn on_recv<S: Store>(sk: *mut c_void, ret: i32, flags: i32, skip: u64) {
    if ret == 0 || (ret == -ECONNRESET && unix(sk)) {
        return eof::<S>(sk);
    }
    // A peek leaves the bytes queued: the read that takes them is the one that counts.
    if ret < 0 || flags & MSG_PEEK != 0 || offsets().ready == 0 {
        return;
    }
    match S::get(sk, false) {
        Some(st) if st.track == TRACK_HTTP => {
            let mut call = io_call();
            let placed = skip == 0 || skip_in(&mut call, skip);
            if st.flags & FLAG_CLIENT == 0 {
                // A server's read: only whether it begins a request is at stake.
                if placed {
                    request(st, &call)
                }
            } else if placed {
                account(sk, st, ret, received(call, ret), 0, S::OWNER_SHARE)
            } else {
                // Where this part of the read lies is not known: the stream is the observer's.
                st.flags |= FLAG_EVENTS_LOST;
            }
        }
        Some(st) if st.track == TRACK_TLS => crate::tls::socket_io(sk, ret, false),
        // Not an HTTP server, or its first read was seen already. (Later reads before the
        // first response are pipelining; the agent copes with not seeing them.)
        Some(st) if st.track != 0 || st.flags & FLAG_RECV_SEEN != 0 => {}
        _ => first_read::<S>(sk),
    }
}

/// Make a read's `call` start `skip` bytes into its buffer; false if it has more than one
/// buffer (not followed: such waits are rare) or fewer than `skip` bytes. In place: a copy of an `IoCall` costs the
/// programs stack they do not have (512 bytes on 6.1, `tests/bpf_stack.rs`).
#[inline(always)]
fn skip_in(call: &mut IoCall, skip: u64) -> bool {
    if call.niov != 1 || call.vlen > 1 || call.iov[0][1] < skip {
        return false;
    }
    call.iov[0] = [call.iov[0][0] + skip, call.iov[0][1] - skip];
    call.requested = call.requested.saturating_sub(skip);
    true
}

/// The first read on a socket the programs know nothing about: it may be the first request of
/// a server, which is classified on its first send.
#[inline(always)]
fn first_read<S: Store>(sk: *mut c_void) {
    let Some(st) = S::get(sk, true) else { return };
    if st.track != 0 || st.flags & FLAG_RECV_SEEN != 0 {
        return; // classified or seen meanwhile (another CPU)
    }
    st.flags |= FLAG_RECV_SEEN;
    request(st, &io_call());
}

/// A read's call as far as its `ret` bytes go: what a response's accounting may look at. The
/// rest of the caller's buffer holds no data of this read (a send's unaccepted bytes are still
/// the ones offered; a read's are stale). A head is gathered from the first buffer only: one
/// that goes on in a read's later buffers is found unfinished (unparsed).
#[inline(always)]
fn received(mut call: IoCall, ret: i32) -> IoCall {
    let n = ret as u64;
    // A read over more buffers than the call holds (nginx reads its upstreams into 8): find
    // the one its last byte went to, for the read's tail (a chunked body's end).
    if call.vlen > call.iov.len() as u64 && call.vec != 0 {
        let mut before = 0u64;
        let mut i = 0u64;
        while i < MAX_READ_IOV && i < call.vlen {
            let Some([base, len]) = read_user::<[u64; 2]>(call.vec + 16 * i) else {
                break;
            };
            if n <= before + len {
                let at = n - before;
                let k = if at < TAIL as u64 { at } else { TAIL as u64 };
                call.tail_at = base + at - k;
                call.tail_n = k;
                break;
            }
            before += len;
            i += 1;
        }
    }
    call.requested = n;
    call.vec = 0;
    call.vlen = 0;
    if call.iov[0][1] > n {
        call.iov[0][1] = n;
    }
    call
}

/// If this read (`call`: its buffer) begins like a request line, count it and keep its method.
/// (On a client's socket, the same for its sends.)
#[inline(always)]
pub fn request(st: &mut SockState, call: &IoCall) {
    let method = request_method(call);
    if method == METHOD_NONE {
        return;
    }
    if st.requests == 0 {
        st.method = method;
    }
    st.requests = st.requests.saturating_add(1);
}

/// The first 8 bytes of `call`'s buffer, if it has that many and they can be read.
#[inline(always)]
fn first_bytes(call: &IoCall) -> Option<[u8; 8]> {
    if call.buf() == 0 || call.buf_len() < 8 {
        return None;
    }
    read_user::<[u8; 8]>(call.buf())
}

/// The `METHOD_*` of a request line at the start of `call`'s buffer, or `METHOD_NONE`.
#[inline(always)]
fn request_method(call: &IoCall) -> u8 {
    first_bytes(call).map_or(METHOD_NONE, |b| method(&b))
}

/// The `METHOD_*` of a request line of a known method at the start of `call`'s buffer: the
/// methods of RFC 9110 §9.3 and PATCH (RFC 5789), WebDAV's (RFC 4918) that fit in 8 bytes with
/// their space; `METHOD_NONE` otherwise. A socket whose first send begins so is an HTTP
/// client's; a looser test would take other protocols' commands (SMTP's `EHLO `) for one.
#[inline(always)]
pub fn client_method(call: &IoCall) -> u8 {
    let Some(b) = first_bytes(call) else {
        return METHOD_NONE;
    };
    let known = b[..4] == *b"GET "
        || b[..4] == *b"PUT "
        || b[..5] == *b"POST "
        || b[..5] == *b"HEAD "
        || b[..6] == *b"PATCH "
        || b[..6] == *b"TRACE "
        || b[..7] == *b"DELETE "
        || b[..8] == *b"OPTIONS "
        || b[..8] == *b"CONNECT "
        || b[..5] == *b"COPY "
        || b[..5] == *b"MOVE "
        || b[..5] == *b"LOCK "
        || b[..6] == *b"MKCOL "
        || b[..7] == *b"UNLOCK ";
    if known { method(&b) } else { METHOD_NONE }
}

/// `METHOD ` at the start (3 to 7 upper-case letters, then a space), as `METHOD_*`. Bodies
/// rarely start so; the agent does not trust a count of more than one.
#[inline(always)]
fn method(b: &[u8; 8]) -> u8 {
    if b[..5] == *b"HEAD " {
        return METHOD_HEAD;
    }
    if *b == *b"CONNECT " {
        return METHOD_CONNECT;
    }
    let mut i = 0;
    while i < 8 {
        let c = b[i];
        if c == b' ' {
            return if i >= 3 { METHOD_OTHER } else { METHOD_NONE };
        }
        if !c.is_ascii_uppercase() {
            return METHOD_NONE;
        }
        i += 1;
    }
    METHOD_NONE
}

/// `ECONNRESET` from a read (include/uapi/asm-generic/errno.h).
const ECONNRESET: i32 = 104;

/// Whether `sk` is a Unix socket. A Unix reader whose peer closed with input unread gets
/// `ECONNRESET` where it would get end of stream (`unix_release_sock()`), once it has read
/// everything queued to it: the same end, and nothing the peer sent is lost (hyper's shutdown
/// and close after an unread upload, on the Unix socket of hyper#4022).
#[inline(always)]
fn unix(sk: *mut c_void) -> bool {
    read_kernel::<u16>(sk as u64 + offsets().skc_family as u64) == Some(AF_UNIX)
}

/// A reader got 0 bytes (EOF): the other end shut down or closed. Unix sockets have no
/// state-change tracepoint, but their peer is always on this host: the reader may be the client
/// (the server ended the stream) or the server (the client did). On TCP, only an HTTP client's
/// EOF is told (`peer` 0): the stream it reads ended there.
#[inline(always)]
pub fn eof<S: Store>(sk: *mut c_void) {
    let o = offsets();
    if o.ready == 0 {
        return;
    }
    let base = sk as u64;
    let mut ev = tcp_client_eof(sk);
    if read_kernel::<u16>(base + o.skc_family as u64) == Some(AF_UNIX) {
        ev.peer = read_kernel::<u64>(base + o.unix_peer as u64).unwrap_or(0);
    } else {
        match S::get(sk, false) {
            // A TLS client's: its plaintext state says so; the agent goes by its plaintext.
            Some(st) if st.track == TRACK_TLS && crate::tls::is_client(sk) => {}
            Some(st) if st.track == TRACK_HTTP && st.flags & FLAG_CLIENT != 0 => {
                ev.flags = st.flags & FLAG_EVENTS_LOST;
                let seq = |off: u32| read_kernel::<u32>(base + off as u64).unwrap_or(0);
                ev.copied_seq = seq(o.tcp_copied_seq);
                ev.unread = seq(o.tcp_rcv_nxt).wrapping_sub(ev.copied_seq);
            }
            _ => return,
        }
    }
    send_eof(&ev);
}

/// An end of stream read by `sk`, a TCP client (its counters are filled in where they count).
#[inline(always)]
pub fn tcp_client_eof(sk: *mut c_void) -> EofEvent {
    EofEvent {
        h: header(EV_EOF, sk),
        peer: 0,
        losses: losses(),
        flags: 0,
        copied_seq: 0,
        unread: 0,
    }
}

/// Hand an end of stream to the agent.
#[inline(always)]
pub fn send_eof(ev: &EofEvent) {
    if EVENTS.output_untyped::<EofEvent>(ev, wake_flags()).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}
