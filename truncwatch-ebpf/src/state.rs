//! TCP state changes: the end of tracked HTTP streams (FIN_WAIT1, LAST_ACK: the application
//! ended it; CLOSE_WAIT: the peer did; CLOSE without FIN: a reset), and, on any TCP
//! connection, a reset by this host that discards unacknowledged bytes.
use crate::{
    kernel::{header, read_kernel},
    maps::{EVENTS, LOST_RINGBUF_FULL, Store, count_lost, offsets, wake_flags},
};
use aya_ebpf::helpers::{
    bpf_get_current_comm,
    generated::{bpf_jiffies64, bpf_probe_read_kernel},
};
use core::ffi::c_void;
use truncwatch_common::{
    EV_RESET, EV_STATE, FLAG_EVENTS_LOST, FLAG_OPEN_LOST, FLAG_RESET_RECEIVED, ResetEvent,
    SOCK_PREFIX, STATE_RESET_RECEIVED, SockState, StateEvent, TRACK_HTTP, TRACK_TLS,
};

// include/net/tcp_states.h
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_CLOSING: i32 = 11;

#[inline(always)]
pub fn on_state<S: Store>(sk: *mut c_void, oldstate: i32, newstate: i32) {
    // bpf_sk_storage_get() refuses request and timewait socks, so only full sockets get here.
    let mut st = S::get(sk, false);
    // A lost open goes first, before this host's reset below, which then finds the
    // connection known (its response's verdict takes the reset over).
    if let Some(st) = st.as_deref_mut()
        && st.track == TRACK_HTTP
        && st.flags & FLAG_OPEN_LOST != 0
    {
        crate::send::open_again(sk, st, true);
    }
    if newstate == TCP_CLOSE {
        let reset_received = st
            .as_ref()
            .is_some_and(|s| s.flags & FLAG_RESET_RECEIVED != 0);
        if !reset_received {
            let _ = discarded(sk, oldstate);
        }
    }
    match st {
        Some(st) if st.track == TRACK_HTTP => emit_state(sk, st, oldstate, newstate),
        Some(st) if st.track == TRACK_TLS => crate::tls::state_changed(sk, oldstate, newstate),
        _ => {}
    }
}

/// The peer reset a connection (`tcp_receive_reset`, `TP_PROTO(struct sock *sk)`): remember
/// it, so the CLOSE that follows is not taken for this host's reset.
#[inline(always)]
pub fn on_reset_received<S: Store>(sk: *mut c_void) {
    let Some(st) = S::get(sk, true) else { return };
    st.flags |= FLAG_RESET_RECEIVED;
    if st.track == TRACK_HTTP {
        emit_state(sk, st, 0, STATE_RESET_RECEIVED);
    } else if st.track == TRACK_TLS {
        crate::tls::state_changed(sk, 0, STATE_RESET_RECEIVED);
    }
}

/// Report a tracked socket's state change; `st` is its state (the caller looked it up).
#[inline(always)]
pub fn emit_state(sk: *mut c_void, st: &mut SockState, oldstate: i32, newstate: i32) {
    if st.flags & FLAG_OPEN_LOST != 0 {
        crate::send::open_again(sk, st, true);
    }
    let o = offsets();
    let base = sk as u64;
    let seq = |off: u32| read_kernel::<u32>(base + off as u64).unwrap_or(0);
    let opt = |off: u32| {
        if off == 0 {
            u32::MAX
        } else {
            read_kernel::<u32>(base + off as u64).unwrap_or(u32::MAX)
        }
    };
    let (rwnd_limited, sndbuf_limited) = chrono(base, o);
    let ev = StateEvent {
        h: header(EV_STATE, sk),
        oldstate,
        newstate,
        unacked: seq(o.tcp_write_seq).wrapping_sub(seq(o.tcp_snd_una)),
        unsent: seq(o.tcp_write_seq).wrapping_sub(seq(o.tcp_snd_nxt)),
        unread: seq(o.tcp_rcv_nxt).wrapping_sub(seq(o.tcp_copied_seq)),
        snd_wnd: opt(o.tcp_snd_wnd),
        rwnd_limited,
        sndbuf_limited,
        flags: st.flags & FLAG_EVENTS_LOST,
        snd_una: seq(o.tcp_snd_una),
        copied_seq: seq(o.tcp_copied_seq),
        _pad: 0,
    };
    if EVENTS
        .output_untyped::<StateEvent>(&ev, wake_flags())
        .is_err()
    {
        count_lost(LOST_RINGBUF_FULL);
        st.flags |= FLAG_EVENTS_LOST;
    }
}

/// Jiffies spent limited by the peer's window and by the send buffer, as `tcp_get_info()`
/// counts them: the accumulated `chrono_stat`, plus the period running since `chrono_start`.
#[inline(always)]
fn chrono(base: u64, o: &truncwatch_common::Offsets) -> (u32, u32) {
    // enum tcp_chrono: UNSPEC, BUSY, RWND_LIMITED, SNDBUF_LIMITED; chrono_stat[type - 1].
    const RWND_LIMITED: u8 = 2;
    const SNDBUF_LIMITED: u8 = 3;
    if o.tcp_chrono_stat == 0 {
        return (u32::MAX, u32::MAX);
    }
    let Some(stat) = read_kernel::<[u32; 3]>(base + o.tcp_chrono_stat as u64) else {
        return (u32::MAX, u32::MAX);
    };
    let (mut rwnd, mut sndbuf) = (stat[1], stat[2]);
    if o.tcp_chrono_type != 0 && o.tcp_chrono_start != 0 {
        let byte = read_kernel::<u8>(base + o.tcp_chrono_type as u64).unwrap_or(0);
        // A bitfield on 6.1 and 6.12, sharing its byte with other flags.
        let ty = (byte >> (o.tcp_chrono_type_shift & 7)) & o.tcp_chrono_type_mask as u8;
        let start = read_kernel::<u32>(base + o.tcp_chrono_start as u64).unwrap_or(0);
        // tcp_jiffies32 is the low 32 bits of jiffies.
        let running = (unsafe { bpf_jiffies64() } as u32).wrapping_sub(start);
        match ty {
            RWND_LIMITED => rwnd = rwnd.wrapping_add(running),
            SNDBUF_LIMITED => sndbuf = sndbuf.wrapping_add(running),
            _ => {}
        }
    }
    (rwnd, sndbuf)
}

/// Going to CLOSE with written bytes not acknowledged: close with unread data, SO_LINGER 0,
/// abort. The state change comes before the kernel purges the write queue, so the sequence
/// numbers still tell how much is lost.
#[inline(always)]
fn discarded(sk: *mut c_void, oldstate: i32) -> Option<()> {
    let o = offsets();
    if o.ready == 0 {
        return None;
    }
    let base = sk as u64;
    let write_seq = read_kernel::<u32>(base + o.tcp_write_seq as u64)?;
    let snd_una = read_kernel::<u32>(base + o.tcp_snd_una as u64)?;
    let snd_nxt = read_kernel::<u32>(base + o.tcp_snd_nxt as u64)?;
    let mut unacked = write_seq.wrapping_sub(snd_una);
    let mut unsent = write_seq.wrapping_sub(snd_nxt);
    // A queued FIN takes a sequence number but is not data.
    let fin = matches!(oldstate, TCP_FIN_WAIT1 | TCP_CLOSING | TCP_LAST_ACK);
    if fin && unacked > 0 {
        unacked -= 1;
    }
    if fin && unsent > 0 {
        unsent -= 1;
    }
    // So does a SYN not yet acknowledged (a refused connect: SYN_SENT, then the peer's reset;
    // the kprobe backend keeps no state for such sockets, so the reset's mark cannot tell it).
    // Data sent with it (TCP Fast Open) still counts.
    if matches!(oldstate, TCP_SYN_SENT | TCP_SYN_RECV) && unacked > 0 {
        unacked -= 1;
    }
    if unacked == 0 || unacked > 1 << 30 {
        return None; // nothing lost (or a connection that never synchronized)
    }
    let rcv_nxt = read_kernel::<u32>(base + o.tcp_rcv_nxt as u64)?;
    let copied = read_kernel::<u32>(base + o.tcp_copied_seq as u64)?;
    let family = read_kernel::<u16>(base + o.skc_family as u64)?;
    let Some(mut entry) = EVENTS.reserve_untyped::<ResetEvent>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        return None;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).h = header(EV_RESET, sk);
        (*ev).family = family;
        (*ev).sport = read_kernel::<u16>(base + o.inet_sport as u64).unwrap_or(0);
        (*ev).oldstate = oldstate;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        if bpf_probe_read_kernel((&raw mut (*ev).sock).cast(), SOCK_PREFIX as u32, sk) != 0 {
            (*ev).sock = [0; SOCK_PREFIX];
        }
        (*ev).unacked = unacked;
        (*ev).unsent = unsent;
        (*ev).unread = rcv_nxt.wrapping_sub(copied);
        (*ev).snd_una = snd_una;
    }
    entry.submit(wake_flags());
    Some(())
}
