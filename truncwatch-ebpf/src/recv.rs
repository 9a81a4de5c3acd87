//! The receive path: requests (so the agent knows which responses answer HEAD, and so have no
//! body), and end of stream on Unix sockets.
//!
//! Cost on a socket that is not an HTTP server: one socket-storage lookup per read (plus, on
//! its first read, one 8-byte look at what was read).
use crate::{
    kernel::{IoCall, header, io_call, read_kernel, read_user},
    maps::{EVENTS, LOST_RINGBUF_FULL, count_lost, offsets, sock_state, wake_flags},
};
use aya_ebpf::helpers::generated::bpf_probe_read_user;
use core::ffi::c_void;
use truncwatch_common::{
    AF_UNIX, EV_EOF, EV_RECV, EofEvent, FLAG_RECV_SEEN, REQ_CAP, RecvEvent, SockState, TRACK_HTTP, TRACK_NO,
};

const MSG_PEEK: i32 = 2;

#[inline(always)]
pub fn on_recv(sk: *mut c_void, ret: i32, flags: i32) {
    if ret == 0 {
        return eof(sk);
    }
    // A peek leaves the bytes queued: the read that takes them is the one that counts.
    if ret < 0 || flags & MSG_PEEK != 0 || offsets().ready == 0 {
        return;
    }
    match sock_state(sk, false) {
        Some(st) if st.track == TRACK_HTTP => request(sk, st, ret),
        Some(st) if st.track == TRACK_NO => {}
        // Not classified yet (classification happens on the first send, after the first
        // request was read): keep counting so offsets line up once it is.
        Some(st) if st.flags & FLAG_RECV_SEEN != 0 => st.received += ret as u64,
        _ => first_read(sk, ret),
    }
}

/// The first read on a socket the programs know nothing about: if it begins like a request,
/// report it now; the socket may turn out to be an HTTP server on its first send.
#[inline(always)]
fn first_read(sk: *mut c_void, ret: i32) {
    let Some(st) = sock_state(sk, true) else { return };
    if st.track != 0 || st.flags & FLAG_RECV_SEEN != 0 {
        return; // classified or seen meanwhile (another CPU)
    }
    st.flags |= FLAG_RECV_SEEN;
    request(sk, st, ret);
}

/// Count a read and, if it begins like a request line, send its first bytes to the agent.
#[inline(always)]
fn request(sk: *mut c_void, st: &mut SockState, ret: i32) {
    let offset = st.received;
    st.received += ret as u64;
    let Some(call) = io_call() else { return };
    if call.buf() == 0 || call.buf_len() < 8 || ret < 8 {
        return;
    }
    match read_user::<[u8; 8]>(call.buf()) {
        Some(b) if starts_like_method(&b) => emit(sk, offset, ret, &call),
        _ => {}
    }
}

/// `METHOD ` at the start: 3 to 7 upper-case letters, then a space. Bodies rarely start so,
/// which keeps body reads (uploads) from costing an event each.
#[inline(always)]
fn starts_like_method(b: &[u8; 8]) -> bool {
    let mut letters = 0;
    let mut i = 0;
    while i < 8 {
        let c = b[i];
        if c == b' ' {
            return letters >= 3;
        }
        if !c.is_ascii_uppercase() {
            return false;
        }
        letters += 1;
        i += 1;
    }
    false
}

#[inline(always)]
fn emit(sk: *mut c_void, offset: u64, ret: i32, call: &IoCall) {
    let Some(mut entry) = EVENTS.reserve_untyped::<RecvEvent>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // The bytes read are at the start of the first buffer (a read fills buffers in order).
    let mut n = call.buf_len();
    if n > ret as u64 {
        n = ret as u64;
    }
    if n > REQ_CAP as u64 {
        n = REQ_CAP as u64;
    }
    unsafe {
        (*ev).h = header(EV_RECV, sk);
        (*ev).offset = offset;
        (*ev).ret = ret as u32;
        let r = bpf_probe_read_user((&raw mut (*ev).cap).cast(), n as u32, call.buf() as *const c_void);
        (*ev).cap_len = if r == 0 { n as u32 } else { 0 };
    }
    entry.submit(wake_flags());
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
    let ev = EofEvent { h: header(EV_EOF, sk), peer };
    if EVENTS.output_untyped::<EofEvent>(&ev, wake_flags()).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}
