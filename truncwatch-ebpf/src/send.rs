//! The send path: classify each socket once, then account every send on HTTP server sockets
//! (on HTTP client sockets, look at each for a request line).
//!
//! Cost on a socket that is neither: one socket-storage lookup per send (plus a one-time
//! classification on its first send).
use crate::{
    head::{bounded, head_begins, head_goes_on},
    kernel::{IoCall, header, io_call, read_kernel, read_user, untimed_header},
    maps::{
        EVENTS, LOST_OWNER_SHARE, LOST_RINGBUF_FULL, Store, count_lost, losses, offsets,
        owner_admits, wake_flags,
    },
};
use aya_ebpf::helpers::{
    bpf_get_current_comm,
    generated::{bpf_probe_read_kernel, bpf_probe_read_user},
};
use aya_ebpf::maps::ring_buf::RingBufEntry;
use core::ffi::c_void;
use truncwatch_common::{
    AF_INET, AF_INET6, AF_UNIX, EV_OPEN, EV_SEND, FLAG_CLIENT, FLAG_EVENTS_LOST, FLAG_OPEN_LOST,
    FLAG_OPEN_LOST_TLS, FLAG_REQUESTS, FLAG_RESET_RECEIVED, METHOD_NONE, OPEN_CLIENT, OPEN_LATE,
    OPEN_NO_OWNER, OPEN_TLS, Offsets, OpenEvent, SOCK_PREFIX, STATE_RESET_RECEIVED, SendEvent,
    SockState, TAIL, TRACK_HTTP, TRACK_NO, TRACK_TLS, UNIX_PATH,
};

const IPPROTO_TCP: u16 = 6;
const EPIPE: i32 = 32;
const SOCK_STREAM: u16 = 1;

#[inline(always)]
pub fn on_send<S: Store>(sk: *mut c_void, ret: i32) {
    let o = offsets();
    if o.ready == 0 {
        return;
    }
    match S::get(sk, false) {
        Some(st) if st.track == TRACK_HTTP && st.flags & FLAG_CLIENT != 0 => {
            if ret > 0 {
                crate::recv::request(st, &io_call());
            }
        }
        Some(st) if st.track == TRACK_HTTP => {
            account(sk, st, ret, io_call(), 0, S::OWNER_SHARE);
            // A Unix server's send refused with EPIPE: its client closed, and no state change
            // says so. Told as the end of stream the server would read, for the client's own
            // connection (`recv::eof` does nothing more for a TCP server).
            if ret == -EPIPE {
                crate::recv::eof::<S>(sk);
            }
        }
        Some(st) if st.track == TRACK_NO => {}
        Some(st) if st.track == TRACK_TLS => crate::tls::socket_io(sk, ret, true),
        // No state yet, or state made by another hook (a reset that arrived while this very
        // send was blocked): not classified yet.
        _ if ret > 0 => {
            let _ = classify::<S>(sk, ret, o);
        }
        _ => {}
    }
}

/// First accepted send on a socket: is this the server side of HTTP/1 over a stream socket?
/// The answer is kept for the socket's life, so this runs once per socket.
#[inline(always)]
fn classify<S: Store>(sk: *mut c_void, ret: i32, o: &Offsets) -> Option<()> {
    let st = S::get(sk, true)?;
    let call = begin_tracking(sk, st, o, crate::maps::settings().client_side != 0)?;
    account(sk, st, ret, call, 0, S::OWNER_SHARE);
    reset_during_first_send(sk, st);
    Some(())
}

/// A socket's first send (its state `st` fresh): classify it, once, and if it is the server
/// side of HTTP/1, track it from stream offset 0 and tell the agent. Returns the send then.
/// A TCP socket whose first send is a TLS record becomes `TRACK_TLS`: its plaintext is
/// classified in the TLS library (`tls`). With `clients`, one whose first send is a request
/// line is tracked as the client side (`FLAG_CLIENT`): the send is its first request, and its
/// stream, the responses, begins with its first read.
#[inline(always)]
pub fn begin_tracking(
    sk: *mut c_void,
    st: &mut SockState,
    o: &Offsets,
    clients: bool,
) -> Option<IoCall> {
    if st.track != 0 {
        return None; // another CPU classified it meanwhile
    }
    st.track = TRACK_NO;
    let (family, call) = stream_send(sk, o)?;
    let magic = read_user::<[u8; 7]>(call.buf())?;
    if family != AF_UNIX && tls_record(&magic) {
        st.track = TRACK_TLS;
        crate::tls::socket_begins(sk);
        return None;
    }
    if &magic != b"HTTP/1." {
        let method = if clients {
            crate::recv::client_method(&call)
        } else {
            METHOD_NONE
        };
        // A kTLS client (an upper-layer protocol on the socket, kTLS RX): the kernel's counts
        // of bytes read are of records, not of the plaintext it reads, so its reads cannot be
        // checked against them (in the 6.12 guest the kprobe backend counted 3596 bytes too
        // many on a 2 MB download). Not judged rather than misjudged.
        let ulp = || {
            family != AF_UNIX && read_kernel::<u64>(sk as u64 + o.icsk_ulp_ops as u64) != Some(0)
        };
        if method != METHOD_NONE && !ulp() {
            st.track = TRACK_HTTP;
            st.flags |= FLAG_CLIENT;
            st.sent = 0;
            st.head_more = 0;
            st.requests = 1;
            st.method = method;
            open(sk, st, family, o, OPEN_CLIENT);
        }
        return None;
    }
    st.track = TRACK_HTTP;
    st.sent = 0;
    st.head_more = 0;
    open(sk, st, family, o, 0);
    Some(call)
}

/// Whether bytes begin a TLS record (RFC 8446 §5.1, RFC 5246 §6.2.1): content type
/// change_cipher_spec, alert, handshake or application_data, then protocol version 3.x.
#[inline(always)]
fn tls_record(b: &[u8; 7]) -> bool {
    (20..=23).contains(&b[0]) && b[1] == 3 && b[2] <= 4
}

/// The peer reset the connection while its first send was going on: no end will follow, so
/// report it now.
#[inline(always)]
pub fn reset_during_first_send(sk: *mut c_void, st: &mut SockState) {
    if st.flags & FLAG_RESET_RECEIVED != 0 {
        crate::state::emit_state(sk, st, 0, STATE_RESET_RECEIVED);
    }
}

/// A send on a stream socket (TCP, or Unix `SOCK_STREAM`) from a user buffer of at least 7
/// bytes: the socket's family and the send, if so.
#[inline(always)]
fn stream_send(sk: *mut c_void, o: &Offsets) -> Option<(u16, IoCall)> {
    let base = sk as u64;
    let family = read_kernel::<u16>(base + o.skc_family as u64)?;
    let stream = match family {
        AF_INET | AF_INET6 => read_kernel::<u16>(base + o.sk_protocol as u64)? == IPPROTO_TCP,
        AF_UNIX => read_kernel::<u16>(base + o.sk_type as u64)? == SOCK_STREAM,
        _ => false,
    };
    if !stream {
        return None;
    }
    let call = io_call();
    if call.buf() == 0 || call.buf_len() < 7 {
        return None;
    }
    Some((family, call))
}

/// Count one send on a tracked socket and tell the agent about it (`flags` added to its
/// event's flags).
///
/// `share`: hold the owner to its share of the ring buffer (`Store::OWNER_SHARE`).
#[inline(always)]
pub fn account(
    sk: *mut c_void,
    st: &mut SockState,
    ret: i32,
    mut call: IoCall,
    flags: u32,
    share: bool,
) {
    let offset = st.sent;
    if ret > 0 {
        st.sent += ret as u64;
    }
    if !head_begins(sk, st, offset, ret, &call, flags, share) {
        let mut flags = (st.flags & FLAG_EVENTS_LOST) | flags;
        // A client's requests go with its next read, if no head event takes them.
        if st.flags & FLAG_CLIENT != 0 && st.requests > 0 {
            flags |= FLAG_REQUESTS;
            call.seq = st.requests as u32 | (st.method as u32) << 8;
        }
        match reserve_send(share) {
            Some(mut entry) => {
                if flags & FLAG_REQUESTS != 0 {
                    st.requests = 0;
                    st.method = 0;
                }
                fill_send(entry.as_mut_ptr(), EV_SEND, sk, offset, ret, &call, flags);
                entry.submit(wake_flags());
            }
            None => st.flags |= FLAG_EVENTS_LOST,
        }
    }
    head_goes_on(sk, st, offset, ret, &call);
    // Last: here it costs the send programs no stack (a check at the start spilled registers
    // across the call and took kretprobe_unix_stream_send's chain over 512 bytes). This send's
    // own event came before the open, so the agent sees the stream from the next one on.
    if st.flags & FLAG_OPEN_LOST != 0 {
        open_again(sk, st, false);
    }
}

/// Room for a send event, if its owner may have it (`owner_admits`) and the ring buffer has
/// it; a refusal is counted, by reason.
#[inline(always)]
pub fn reserve_send(share: bool) -> Option<RingBufEntry<SendEvent>> {
    if share && !owner_admits(core::mem::size_of::<SendEvent>() as u64) {
        count_lost(LOST_OWNER_SHARE);
        return None;
    }
    let entry = EVENTS.reserve_untyped::<SendEvent>(0);
    if entry.is_none() {
        count_lost(LOST_RINGBUF_FULL);
    }
    entry
}

/// Fields are written one by one into ring buffer memory: the verifier rejects copying a
/// struct assembled on the stack there.
#[inline(always)]
pub fn fill_send(
    ev: *mut SendEvent,
    kind: u32,
    sk: *mut c_void,
    offset: u64,
    ret: i32,
    call: &IoCall,
    flags: u32,
) {
    let h = untimed_header(kind, sk);
    unsafe {
        (*ev).h.kind = h.kind;
        (*ev).h.tgid = h.tgid;
        (*ev).h.sk = h.sk;
        (*ev).h.ts_ns = h.ts_ns;
        (*ev).offset = offset;
        (*ev).requested = call.requested;
        (*ev).ret = ret;
        (*ev).syscall = call.nr as u16;
        (*ev).flags = flags;
        (*ev).seq = call.seq;
        (*ev).tail = [0; TAIL];
        (*ev).tail_len = 0;
        if ret > 0
            && let Some((t, n)) = read_tail(call, ret as u64)
        {
            (*ev).tail = t;
            (*ev).tail_len = n as u16;
        }
    }
}

/// The last bytes (at most `TAIL`) of the first `accepted` bytes of a send, from the caller's
/// buffer, and how many there are.
#[inline(always)]
pub fn read_tail(call: &IoCall, accepted: u64) -> Option<([u8; TAIL], u32)> {
    let (addr, n) = call.tail(accepted)?;
    // Via the stack: the verifier refuses a variable-length write at a variable offset into
    // ring buffer memory.
    let mut t = [0u8; TAIL];
    // Clamped as the u32 the helper gets: older verifiers (6.1) lose a bound checked on the
    // u64 before the cast.
    let len = bounded(n, TAIL as u32);
    if n <= TAIL as u64
        && unsafe { bpf_probe_read_user(t.as_mut_ptr().cast(), len, addr as *const c_void) } == 0
    {
        Some((t, n as u32))
    } else {
        None
    }
}

/// Tell the agent about a newly tracked connection (state `st`): who owns it and its
/// addresses (`flags`: `OPEN_*`). If the event cannot be delivered the socket is marked
/// (`FLAG_OPEN_LOST`), and its next event goes after a late open (`open_again`).
#[inline(always)]
pub fn open(sk: *mut c_void, st: &mut SockState, family: u16, o: &Offsets, flags: u32) {
    let Some(mut entry) = EVENTS.reserve_untyped::<OpenEvent>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        st.flags |= FLAG_EVENTS_LOST | FLAG_OPEN_LOST;
        if flags & OPEN_TLS != 0 {
            st.flags |= FLAG_OPEN_LOST_TLS;
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).h = header(EV_OPEN, sk);
        (*ev).family = family;
        (*ev).sport = if family == AF_UNIX {
            0
        } else {
            read_kernel::<u16>(sk as u64 + o.inet_sport as u64).unwrap_or(0)
        };
        (*ev).flags = flags;
        (*ev).losses = losses();
        (*ev).copied_seq = if family != AF_UNIX && flags & OPEN_CLIENT != 0 {
            read_kernel::<u32>(sk as u64 + o.tcp_copied_seq as u64).unwrap_or(0)
        } else {
            0
        };
        (*ev)._pad = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        if bpf_probe_read_kernel((&raw mut (*ev).sock).cast(), SOCK_PREFIX as u32, sk) != 0 {
            (*ev).sock = [0; SOCK_PREFIX];
        }
        (*ev).unix_path = [0; UNIX_PATH];
        if family == AF_UNIX {
            // A client's own socket is unbound: the path that names the connection is the
            // server's, on the peer socket.
            let named = if flags & OPEN_CLIENT != 0 {
                read_kernel::<u64>(sk as u64 + o.unix_peer as u64).unwrap_or(0) as *mut c_void
            } else {
                sk
            };
            if !named.is_null() {
                unix_path(named, &raw mut (*ev).unix_path, o);
            }
        }
    }
    entry.submit(wake_flags());
}

/// A tracked socket whose open was lost (`FLAG_OPEN_LOST`): try it again, as a late open,
/// before its next event. `no_owner`: from a state change, maybe in another task's context.
/// Not inlined: one copy of `open` per program, whatever calls it (the programs' stack and
/// size; `bpf_stack.rs`).
#[inline(never)]
pub fn open_again(sk: *mut c_void, st: &mut SockState, no_owner: bool) {
    let o = offsets();
    let Some(family) = read_kernel::<u16>(sk as u64 + o.skc_family as u64) else {
        return;
    };
    let mut flags = OPEN_LATE;
    if st.flags & FLAG_OPEN_LOST_TLS != 0 {
        flags |= OPEN_TLS;
    }
    if st.flags & FLAG_CLIENT != 0 {
        flags |= OPEN_CLIENT;
    }
    if no_owner {
        flags |= OPEN_NO_OWNER;
    }
    st.flags &= !(FLAG_OPEN_LOST | FLAG_OPEN_LOST_TLS);
    open(sk, st, family, o, flags);
}

/// The bound path of a Unix socket (for accepted sockets, the listener's), read only as far as
/// the address is long: reading past the allocation could fault (e.g. into a KFENCE guard page).
#[inline(always)]
fn unix_path(sk: *mut c_void, dst: *mut [u8; UNIX_PATH], o: &Offsets) -> Option<()> {
    let addr = read_kernel::<u64>(sk as u64 + o.unix_addr as u64)?;
    if addr == 0 {
        return None; // unbound
    }
    // `len` counts sockaddr_un from its 2-byte sun_family on.
    let len = read_kernel::<i32>(addr + o.unix_address_len as u64)?;
    let mut n = len as i64 - 2;
    if n <= 0 {
        return None;
    }
    if n > UNIX_PATH as i64 {
        n = UNIX_PATH as i64;
    }
    let path = addr + o.unix_address_name as u64 + 2;
    unsafe { bpf_probe_read_kernel(dst.cast(), n as u32, path as *const c_void) };
    Some(())
}
