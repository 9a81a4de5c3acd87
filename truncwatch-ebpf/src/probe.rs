//! The kprobe backend's handlers, for kernels where neither the socket tracepoints (6.3+) nor
//! BTF trampolines (fentry) are there to use. Per-socket state lives in a hash map keyed by
//! socket address (`ProbeStore`): kprobe programs cannot use socket storage.
//!
//! TCP sends are hooked only where they begin: no return probe. A send blocks while the send
//! buffer is full (the slow-reader case), and return-probe instances run out while many sends
//! are blocked, so returns would be missed exactly when they matter. What the kernel took of a
//! send is read off `tcp_sock.write_seq` the next time the socket is seen: when its next send
//! begins, or its state changes, or a reset arrives. A send that begins a response head is
//! announced when it begins (the head is read from the caller's buffer then, and the offered
//! bytes' tail kept); the bytes taken follow (`FLAG_ANNOUNCED`, `FLAG_ACCEPTED`).
//!
//! Unix streams have no such counter, so their sends do use a return probe; an entry probe
//! counts the sends in flight on each tracked socket. A return that was missed leaves the
//! count above zero at the end of the stream, which then carries `FLAG_EVENTS_LOST`: the
//! agent says `observer_loss`, never a false truncation. Unix reads use a return probe too:
//! a missed one only hides a request (whether it was HEAD), which the agent copes without.
//! TCP reads are seen in `tcp_cleanup_rbuf`, which runs after the copy and never sleeps.
use crate::{
    head::{head_begins, head_goes_on},
    kernel::{IoCall, header, io_call, read_kernel},
    maps::{
        EVENTS, LOST_RINGBUF_FULL, PROBE_READING, PROBE_SENDING, ProbeStore, count_lost, losses,
        offsets, wake_flags,
    },
    send::{begin_tracking, fill_send, read_tail, reset_during_first_send},
};
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use core::ffi::c_void;
use truncwatch_common::{
    EV_EOF, EV_SEND, EofEvent, FLAG_ACCEPTED, FLAG_ANNOUNCED, FLAG_CLIENT, FLAG_EVENTS_LOST,
    FLAG_OPEN_LOST, FLAG_RESET_RECEIVED, ProbeSock, TAIL, TRACK_HTTP, TRACK_NO, TRACK_TLS,
};

// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;

/// `tcp_sendmsg`/`tcp_sendpage` begin: settle the send before, then announce this one.
#[inline(always)]
pub fn tcp_send_begins(sk: *mut c_void, size: u64) {
    if offsets().ready == 0 || sk.is_null() {
        return;
    }
    match ProbeStore::sock(sk, false) {
        // A client's sends are its requests (its stream is what it reads).
        Some(ps) if ps.st.track == TRACK_HTTP && ps.st.flags & FLAG_CLIENT != 0 => {
            crate::recv::request(&mut ps.st, &io_call())
        }
        Some(ps) if ps.st.track == TRACK_HTTP => {
            if let Some(seq) = write_seq(sk) {
                settle(sk, ps, seq, true);
            }
            announce(sk, ps, size, io_call());
        }
        Some(ps) if ps.st.track == TRACK_NO => {}
        // (No return probe: what the send returns is not known here.)
        Some(ps) if ps.st.track == TRACK_TLS => crate::tls::socket_io(sk, 0, true),
        _ if size > 0 => {
            let _ = classify(sk, size);
        }
        _ => {}
    }
}

/// `tcp_sock.write_seq`: one past the last byte the application handed the kernel.
#[inline(always)]
fn write_seq(sk: *mut c_void) -> Option<u32> {
    read_kernel::<u32>(sk as u64 + offsets().tcp_write_seq as u64)
}

/// A connected TCP socket's first send: is it an HTTP server's? (As `send::classify`, but
/// before the kernel took anything: stream offset 0 is `write_seq` now.)
#[inline(always)]
fn classify(sk: *mut c_void, size: u64) -> Option<()> {
    let ps = ProbeStore::sock(sk, true)?; // connected sockets only
    // Reads from here on count by `copied_seq` (a client's first read may be a peek).
    start_read_seq(sk, ps);
    let seq = write_seq(sk)?;
    let call = begin_tracking(
        sk,
        &mut ps.st,
        offsets(),
        crate::maps::settings().client_side != 0,
    )?;
    ps.seq = seq;
    ps.pend_size = 0;
    announce(sk, ps, size, call);
    reset_during_first_send(sk, &mut ps.st);
    Some(())
}

/// A send of `size` bytes begins on a tracked socket (all earlier ones settled): send its
/// head event now if it has one, and keep what settling it will need.
#[inline(always)]
fn announce(sk: *mut c_void, ps: &mut ProbeSock, size: u64, call: IoCall) {
    if ps.st.flags & FLAG_OPEN_LOST != 0 {
        crate::send::open_again(sk, &mut ps.st, false);
    }
    let offered = if size > i32::MAX as u64 {
        i32::MAX
    } else {
        size as i32
    };
    let offset = ps.st.sent;
    ps.pend_flags = if head_begins(
        sk,
        &mut ps.st,
        offset,
        offered,
        &call,
        FLAG_ANNOUNCED,
        false,
    ) {
        FLAG_ANNOUNCED
    } else {
        0
    };
    ps.pend_size = size;
    ps.pend_syscall = call.nr;
    let (tail, tail_len) = read_tail(&call, size).unwrap_or(([0; TAIL], 0));
    (ps.pend_tail, ps.pend_tail_len) = (tail, tail_len as u16);
    head_goes_on(sk, &mut ps.st, offset, offered, &call);
}

/// Account what the kernel took since this socket was last seen (`write_seq` is `seq` now):
/// one send event for it. `next_send`: a new send begins, so the pending one is over; else it
/// may still be going on (a state change on another CPU) and keeps what it has not had yet.
#[inline(always)]
fn settle(sk: *mut c_void, ps: &mut ProbeSock, seq: u32, next_send: bool) {
    let took = seq.wrapping_sub(ps.seq) as u64;
    if took > 1 << 31 {
        ps.seq = seq; // not forward: nothing sane to count
        return;
    }
    if ps.pend_size == 0 && took == 0 {
        return;
    }
    let offset = ps.st.sent;
    ps.st.sent += took;
    ps.seq = seq;
    let pending = ps.pend_size > 0;
    // The taken bytes' tail, where it lies within the offered tail: the kernel took all that
    // was left, or stopped within its last few bytes (a last chunk `0\r\n\r\n` split by a
    // partial write: the rest, offered again, completes it).
    let short = ps.pend_size.wrapping_sub(took);
    let tail_len = if pending && took <= ps.pend_size && short < ps.pend_tail_len as u64 {
        ps.pend_tail_len as u32 - short as u32
    } else {
        0
    };
    let requested = if pending { ps.pend_size } else { took };
    let syscall = if pending { ps.pend_syscall } else { u32::MAX };
    let mut flags = ps.st.flags & FLAG_EVENTS_LOST;
    if ps.pend_flags & FLAG_ANNOUNCED != 0 {
        flags |= FLAG_ACCEPTED;
    }
    if next_send || took >= ps.pend_size {
        ps.pend_size = 0;
    } else {
        ps.pend_size -= took;
    }
    let Some(mut entry) = crate::send::reserve_send(false) else {
        ps.st.flags |= FLAG_EVENTS_LOST;
        return;
    };
    let ev = entry.as_mut_ptr();
    // No buffer to read now (the send is over): the tail kept when it began goes in after.
    let call = IoCall {
        nr: syscall,
        requested,
        ..IoCall::NONE
    };
    fill_send(ev, EV_SEND, sk, offset, took as i32, &call, flags);
    unsafe {
        // A prefix of the offered tail: the agent reads `tail[..tail_len]`.
        (*ev).tail = ps.pend_tail;
        (*ev).tail_len = tail_len as u16;
    }
    entry.submit(wake_flags());
}

/// Settle a tracked TCP socket before a state change or a reset is reported, while it was
/// still open for sending (later changes would count the FIN's sequence number as data).
#[inline(always)]
fn settle_before_end(sk: *mut c_void, oldstate: i32) {
    if oldstate != TCP_ESTABLISHED && oldstate != TCP_CLOSE_WAIT {
        return;
    }
    let Some(ps) = ProbeStore::sock(sk, false) else {
        return;
    };
    // (A client's sends are requests, not its stream.)
    if ps.st.track != TRACK_HTTP || ps.st.flags & FLAG_CLIENT != 0 {
        return;
    }
    if let Some(seq) = write_seq(sk) {
        settle(sk, ps, seq, false);
    }
}

/// `sock:inet_sock_set_state`.
#[inline(always)]
pub fn tcp_state(sk: *mut c_void, oldstate: i32, newstate: i32) {
    settle_before_end(sk, oldstate);
    crate::state::on_state::<ProbeStore>(sk, oldstate, newstate);
    if newstate == TCP_CLOSE && !draining(sk, oldstate) {
        ProbeStore::forget(sk);
    }
}

/// A tracked client its server reset with bytes it has not read yet, or whose server's FIN
/// reached it after its own half-close (FIN_WAIT2 to CLOSE: TIME_WAIT) with bytes before that
/// FIN unread: Linux still hands them to its reads after CLOSE, and the agent judges the
/// response once they were read, so the entry stays until then (`tcp_read`), or until the
/// address is reused.
#[inline(always)]
fn draining(sk: *mut c_void, oldstate: i32) -> bool {
    let Some(ps) = ProbeStore::sock(sk, false) else {
        return false;
    };
    if ps.st.track != TRACK_HTTP || ps.st.flags & FLAG_CLIENT == 0 {
        return false;
    }
    let left = unread(sk);
    // (The FIN's sequence number is no byte to read.)
    (ps.st.flags & FLAG_RESET_RECEIVED != 0 && left > 0) || (oldstate == TCP_FIN_WAIT2 && left > 1)
}

/// Bytes received and not read yet: `rcv_nxt - copied_seq`.
#[inline(always)]
fn unread(sk: *mut c_void) -> u32 {
    let o = offsets();
    let seq = |off: u32| read_kernel::<u32>(sk as u64 + off as u64).unwrap_or(0);
    seq(o.tcp_rcv_nxt).wrapping_sub(seq(o.tcp_copied_seq))
}

/// `tcp:tcp_receive_reset`. (The reset arrives on an open connection: settle as from
/// ESTABLISHED.)
#[inline(always)]
pub fn tcp_reset_received(sk: *mut c_void) {
    settle_before_end(sk, TCP_ESTABLISHED);
    crate::state::on_reset_received::<ProbeStore>(sk);
}

/// `tcp_cleanup_rbuf(sk, copied)`: runs after a TCP read copied `copied` bytes to the caller,
/// without sleeping (the read itself may sleep, so it gets no return probe). A read may pass
/// here more than once, each time with its running total: before each wait when it waits for
/// more (`MSG_WAITALL`, `SO_RCVLOWAT` above 1: `tcp_recvmsg_locked`), and before 5.17 also
/// before it processes the socket's backlog. Only what is new since the last pass counts
/// (`new_bytes`), and it lies in the caller's buffer after what was counted before.
#[inline(always)]
pub fn tcp_read(sk: *mut c_void, copied: i32) {
    if copied <= 0 {
        return;
    }
    let new = new_bytes(sk, copied);
    if new > 0 {
        crate::recv::on_recv::<ProbeStore>(sk, new, 0, (copied - new) as u64);
        // The read that made the entry (a server's first request) starts its count.
        if let Some(ps) = ProbeStore::sock(sk, false) {
            start_read_seq(sk, ps);
        }
    }
    // A draining client's last unread bytes (see `draining`): its entry goes now. (After
    // the server's FIN, that FIN's sequence number may stay unread: no byte.)
    let closed = read_kernel::<u8>(sk as u64 + offsets().skc_state as u64) == Some(TCP_CLOSE as u8);
    if closed {
        let reset =
            ProbeStore::sock(sk, false).is_some_and(|ps| ps.st.flags & FLAG_RESET_RECEIVED != 0);
        if unread(sk) <= u32::from(!reset) {
            ProbeStore::forget(sk);
        }
    }
}

/// Of a read's `copied` bytes (its running total), the ones new since this hook last saw the
/// socket: what `tcp_sock.copied_seq` moved by, less the FIN's sequence number if this read
/// took it (`tcp_recvmsg_locked` counts the FIN in `copied_seq`, not in `copied`); `copied`
/// itself if the socket's reads are not counted yet, or if more moved (reads not seen). 0: a
/// `MSG_PEEK`, which moves nothing.
///
/// Not inlined: in the read hook's own frame, 6.1's verifier lost the bound of the head
/// gathering's copy size (found in the 6.1 guest).
#[inline(never)]
fn new_bytes(sk: *mut c_void, copied: i32) -> i32 {
    let o = offsets();
    let seq = |off: u32| read_kernel::<u32>(sk as u64 + off as u64);
    let (Some(ps), Some(now)) = (ProbeStore::sock(sk, false), seq(o.tcp_copied_seq)) else {
        return copied;
    };
    let (known, last) = (ps.read_seq_known != 0, ps.read_seq);
    let reset = ps.st.flags & FLAG_RESET_RECEIVED != 0;
    ps.read_seq = now;
    ps.read_seq_known = 1;
    if !known {
        return copied;
    }
    // Once the FIN arrived its sequence number is in `rcv_nxt` (the reader's socket is in
    // CLOSE_WAIT; or in CLOSE without a reset, after its own half-close: TIME_WAIT), and
    // `copied_seq` reaches `rcv_nxt` only by taking it: the read that did is this one (after
    // it, reads return 0 and never pass here).
    let state = read_kernel::<u8>(sk as u64 + o.skc_state as u64);
    let fin_in = state == Some(TCP_CLOSE_WAIT as u8) || (state == Some(TCP_CLOSE as u8) && !reset);
    let fin = fin_in && seq(o.tcp_rcv_nxt) == Some(now);
    let moved = now.wrapping_sub(last).wrapping_sub(fin as u32);
    if moved < copied as u32 {
        moved as i32
    } else {
        copied
    }
}

/// Start counting the socket's reads by `copied_seq`, from now, if not started.
#[inline(always)]
fn start_read_seq(sk: *mut c_void, ps: &mut ProbeSock) {
    if ps.read_seq_known != 0 {
        return;
    }
    if let Some(now) = read_kernel::<u32>(sk as u64 + offsets().tcp_copied_seq as u64) {
        ps.read_seq = now;
        ps.read_seq_known = 1;
    }
}

/// `sock->sk` of a `struct socket *` that is a plain number to a kprobe program.
#[inline(always)]
fn socket_sk(sock: u64) -> Option<*mut c_void> {
    if sock == 0 {
        return None;
    }
    let sk = read_kernel::<u64>(sock + offsets().socket_sk as u64)?;
    if sk == 0 {
        None
    } else {
        Some(sk as *mut c_void)
    }
}

/// A Unix stream send begins (`unix_stream_sendmsg`/`unix_stream_sendpage`).
#[inline(always)]
pub fn unix_send_begins(sock: u64) {
    if offsets().ready == 0 {
        return;
    }
    let Some(sk) = socket_sk(sock) else { return };
    let task = bpf_get_current_pid_tgid();
    // A task sends one thing at a time: an entry still here is a send whose return was missed.
    // Mark its socket now, so that its next events (a head that would end the response before
    // it early) already carry the mark.
    if let Some(old) = unsafe { PROBE_SENDING.get(task) }
        && let Some(ps) = ProbeStore::sock(*old as *mut c_void, false)
    {
        ps.st.flags |= FLAG_EVENTS_LOST;
    }
    let _ = PROBE_SENDING.insert(task, sk as u64, 0);
    if let Some(ps) = ProbeStore::sock(sk, false)
        && ps.st.track == TRACK_HTTP
    {
        // A send already in flight: another thread's, whose return may have been missed.
        // Its bytes would be missing from the offsets of what follows (a head would end the
        // response before it early), so the stream is the observer's from here.
        if ps.inflight > 0 {
            ps.st.flags |= FLAG_EVENTS_LOST;
        }
        ps.inflight += 1;
    }
}

/// ... and returns `ret`: account it as the other backends do.
#[inline(always)]
pub fn unix_send_returns(ret: i32) {
    let sk = sending_sk();
    if sk.is_null() {
        return;
    }
    if let Some(ps) = ProbeStore::sock(sk, false)
        && ps.inflight > 0
    {
        ps.inflight -= 1;
    }
    crate::send::on_send::<ProbeStore>(sk, ret);
}

/// The socket this task's Unix stream send began on (null if none was seen), forgotten.
///
/// Not inlined, so that its map key's stack slot is not in the program's frame: on 6.1 the
/// program's frame and the head functions' it calls may not pass 512 bytes together (see
/// `head::truncwatch_head_gather`).
#[inline(never)]
fn sending_sk() -> *mut c_void {
    let task = bpf_get_current_pid_tgid();
    let Some(sk) = (unsafe { PROBE_SENDING.get(task) }).copied() else {
        return core::ptr::null_mut();
    };
    let _ = PROBE_SENDING.remove(task);
    sk as *mut c_void
}

/// A Unix stream read begins (`unix_stream_recvmsg(sock, msg, size, flags)`)...
#[inline(always)]
pub fn unix_read_begins(sock: u64, flags: i32) {
    if offsets().ready == 0 {
        return;
    }
    if let Some(sk) = socket_sk(sock) {
        let _ = PROBE_READING.insert(bpf_get_current_pid_tgid(), [sk as u64, flags as u64], 0);
    }
}

/// ... and returns `ret`: look at it as the other backends do.
#[inline(always)]
pub fn unix_read_returns(ret: i32) {
    let task = bpf_get_current_pid_tgid();
    let Some([sk, flags]) = (unsafe { PROBE_READING.get(task) }).copied() else {
        return;
    };
    let _ = PROBE_READING.remove(task);
    crate::recv::on_recv::<ProbeStore>(sk as *mut c_void, ret, flags as i32, 0);
}

/// A Unix socket shuts down its sending side (`unix_shutdown` with SHUT_WR or SHUT_RDWR) or
/// is released (`unix_release`): a tracked server's stream ends here. A client's ends only
/// with its release (a client may shut down its sending side once its request is sent).
#[inline(always)]
pub fn unix_ends(sock: u64, released: bool) {
    if offsets().ready == 0 {
        return;
    }
    let Some(sk) = socket_sk(sock) else { return };
    if let Some(ps) = ProbeStore::sock(sk, false)
        && ps.st.track == TRACK_HTTP
        && (released || ps.st.flags & FLAG_CLIENT == 0)
    {
        let mut flags = ps.st.flags & FLAG_EVENTS_LOST;
        if ps.inflight > 0 {
            flags |= FLAG_EVENTS_LOST; // a send's return was missed
        }
        let ev = EofEvent {
            h: header(EV_EOF, sk),
            peer: sk as u64,
            losses: losses(),
            flags,
            copied_seq: 0,
            unread: 0,
        };
        if EVENTS
            .output_untyped::<EofEvent>(&ev, wake_flags())
            .is_err()
        {
            count_lost(LOST_RINGBUF_FULL);
        }
    }
    if released {
        ProbeStore::forget(sk);
    }
}
