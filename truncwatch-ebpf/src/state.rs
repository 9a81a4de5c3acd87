//! TCP state changes of tracked sockets: when the application ends the stream (FIN_WAIT1,
//! LAST_ACK), when the peer does (CLOSE_WAIT), and resets (straight to CLOSE).
use crate::{
    kernel::header,
    maps::{EVENTS, LOST_RINGBUF_FULL, count_lost, wake_flags, sock_state},
};
use core::ffi::c_void;
use truncwatch_common::{EV_STATE, StateEvent, TRACK_HTTP};

#[inline(always)]
pub fn on_state(sk: *mut c_void, oldstate: i32, newstate: i32) {
    // bpf_sk_storage_get() refuses request and timewait socks, so only full sockets get here.
    let Some(st) = sock_state(sk, false) else { return };
    if st.track != TRACK_HTTP {
        return;
    }
    let ev = StateEvent { h: header(EV_STATE, sk), oldstate, newstate };
    if EVENTS.output_untyped::<StateEvent>(&ev, wake_flags()).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}

/// The peer reset a tracked connection (`tcp_receive_reset`, `TP_PROTO(struct sock *sk)`).
#[inline(always)]
pub fn on_reset_received(sk: *mut c_void) {
    on_state(sk, 0, truncwatch_common::STATE_RESET_RECEIVED);
}
