//! End of stream on Unix sockets. They have no state-change tracepoint, but their peer is
//! always on this host: a reader getting 0 bytes (EOF) means the other end shut down or closed.
//! The reader may be the client (the server ended the stream) or the server (the client did).
use crate::{
    kernel::{header, read_kernel},
    maps::{EVENTS, LOST_RINGBUF_FULL, count_lost, wake_flags, offsets},
};
use core::ffi::c_void;
use truncwatch_common::{AF_UNIX, EV_EOF, EofEvent};

#[inline(always)]
pub fn on_recv(sk: *mut c_void, ret: i32) {
    if ret != 0 {
        return; // the common case costs one compare
    }
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
