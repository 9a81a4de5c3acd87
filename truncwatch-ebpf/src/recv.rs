//! The receive path: requests (so the agent knows which responses answer HEAD, and so have no
//! body), and end of stream on Unix sockets.
//!
//! A request costs no event: the socket's state counts reads that begin like a request line
//! and keeps the first one's method, and the next response head carries both to the agent.
//!
//! Cost on a socket that is not an HTTP server: one socket-storage lookup per read (plus, on
//! its first read, one 8-byte look at what was read).
use crate::{
    kernel::{IoCall, header, io_call, read_kernel, read_user},
    maps::{EVENTS, LOST_RINGBUF_FULL, Store, count_lost, losses, offsets, wake_flags},
};
use core::ffi::c_void;
use truncwatch_common::{
    AF_UNIX, EV_EOF, EofEvent, FLAG_RECV_SEEN, METHOD_CONNECT, METHOD_HEAD, METHOD_NONE,
    METHOD_OTHER, SockState, TRACK_HTTP, TRACK_TLS,
};

const MSG_PEEK: i32 = 2;

#[inline(always)]
pub fn on_recv<S: Store>(sk: *mut c_void, ret: i32, flags: i32) {
    if ret == 0 {
        return eof(sk);
    }
    // A peek leaves the bytes queued: the read that takes them is the one that counts.
    if ret < 0 || flags & MSG_PEEK != 0 || offsets().ready == 0 {
        return;
    }
    match S::get(sk, false) {
        Some(st) if st.track == TRACK_HTTP => request(st, &io_call()),
        Some(st) if st.track == TRACK_TLS => crate::tls::socket_io(sk, ret, false),
        // Not an HTTP server, or its first read was seen already. (Later reads before the
        // first response are pipelining; the agent copes with not seeing them.)
        Some(st) if st.track != 0 || st.flags & FLAG_RECV_SEEN != 0 => {}
        _ => first_read::<S>(sk),
    }
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

/// If this read (`call`: its buffer) begins like a request line, count it and keep its method.
#[inline(always)]
pub fn request(st: &mut SockState, call: &IoCall) {
    if call.buf() == 0 || call.buf_len() < 8 {
        return;
    }
    let Some(b) = read_user::<[u8; 8]>(call.buf()) else {
        return;
    };
    let method = method(&b);
    if method == METHOD_NONE {
        return;
    }
    if st.requests == 0 {
        st.method = method;
    }
    st.requests = st.requests.saturating_add(1);
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

/// Unix sockets have no state-change tracepoint, but their peer is always on this host: a
/// reader getting 0 bytes (EOF) means the other end shut down or closed. The reader may be the
/// client (the server ended the stream) or the server (the client did).
#[inline(always)]
fn eof(sk: *mut c_void) {
    let o = offsets();
    if o.ready == 0 {
        return;
    }
    let base = sk as u64;
    if read_kernel::<u16>(base + o.skc_family as u64) != Some(AF_UNIX) {
        return;
    }
    let peer = read_kernel::<u64>(base + o.unix_peer as u64).unwrap_or(0);
    let ev = EofEvent {
        h: header(EV_EOF, sk),
        peer,
        losses: losses(),
        flags: 0,
    };
    if EVENTS
        .output_untyped::<EofEvent>(&ev, wake_flags())
        .is_err()
    {
        count_lost(LOST_RINGBUF_FULL);
    }
}
