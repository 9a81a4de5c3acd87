//! TLS plaintext, from the TLS library's own calls: uprobes on OpenSSL's `SSL_write`,
//! `SSL_write_ex`, `SSL_read` and `SSL_read_ex` (where each begins and returns) and on
//! `SSL_free`.
//!
//! A call's `SSL *` is tied to its TCP socket by the socket I/O the call does itself: OpenSSL's
//! socket BIO writes and reads the records on the calling thread, inside the call, and the
//! socket hooks note a `TRACK_TLS` socket's I/O in the thread's entry while a call is in
//! progress. The tie is kept (by process and `SSL *`) until `SSL_free`. A library with a memory
//! BIO (Node.js) does its socket I/O outside the calls: its first read that returns data is tied
//! to the TLS socket the thread read last, where the records it decrypts came from.
//!
//! The plaintext then goes through the plain path's accounting (`send::account`): the first
//! write that begins `HTTP/1.` makes the connection tracked, stream offsets count plaintext
//! bytes the library accepted, heads are read from the writes' buffers, and requests from the
//! reads'. Its state lives in a hash map keyed by socket (`TLS_SOCKS`): uprobes cannot reach
//! socket storage. The end of the stream comes from the TCP socket (`state_changed`).
use crate::{
    kernel::{IoCall, read_kernel, read_user},
    maps::{LOST_STORAGE, count_lost, offsets},
    send::{account, open},
    state::{TCP_CLOSE, emit_state},
};
use aya_ebpf::{
    btf_maps::{HashMap, LruHashMap},
    helpers::bpf_get_current_pid_tgid,
    macros::btf_map,
};
use core::ffi::c_void;
use truncwatch_common::{
    FLAG_CLIENT, FLAG_TLS_SEQ, FLAG_TLS_SEQ_BEFORE, METHOD_NONE, OPEN_CLIENT, OPEN_TLS,
    SYS_TLS_READ, SYS_TLS_WRITE, SockState, TLS_CALL_READ, TLS_CALL_SENDFILE, TLS_CALL_WRITE,
    TRACK_HTTP, TRACK_NO, TlsCall,
};

/// Each thread's TLS call in progress (`TlsCall`), by `bpf_get_current_pid_tgid`, from where
/// it begins to where it returns. Not an LRU map: an entry evicted mid-call would lose the
/// call's bytes. When full, calls go unseen (`LOST_STORAGE`).
#[btf_map]
static TLS_CALLS: HashMap<u64, TlsCall, 16384> = HashMap::new();

/// The TLS socket each thread last read from: where a library with a memory BIO (Node.js) got
/// the records its first read decrypts. LRU: threads come and go unseen, and an evicted entry
/// only leaves a memory-BIO read unbound.
#[btf_map]
static TLS_LAST_READ: LruHashMap<u64, u64, 16384> = LruHashMap::new();

/// `SSL *` to TCP socket, by `[tgid, SSL *]`, from the first call that showed it until
/// `SSL_free`.
#[btf_map]
static TLS_BOUND: LruHashMap<[u64; 2], u64, 65536> = LruHashMap::new();

/// A client's request written before its `SSL *` was tied to a socket, by `[tgid, SSL *]`:
/// its method (`METHOD_*`). A library with a memory BIO (Node.js) writes the records after
/// the call, and its first read then ties the `SSL *` (see `bound`) and opens the client's
/// stream. LRU: a request never answered only leaves an entry behind.
#[btf_map]
static TLS_UNTIED_REQUESTS: LruHashMap<[u64; 2], u8, 16384> = LruHashMap::new();

/// The plaintext stream's state of each TLS socket that had a call tied to it, by socket
/// address; deleted when the socket reaches CLOSE, and when a new TLS socket is classified at
/// the same address. When full, new TLS connections go untracked (`LOST_STORAGE`).
#[btf_map]
static TLS_SOCKS: HashMap<u64, SockState, 65536> = HashMap::new();

/// A TLS call begins (`kind`: `TLS_CALL_*`; `out`: the `_ex` variants' count pointer, else 0).
#[inline(always)]
pub fn call_begins(kind: u32, ssl: u64, buf: u64, num: u64, out: u64) {
    let call = TlsCall {
        ssl,
        buf,
        num,
        out,
        kind,
        ..TlsCall::default()
    };
    if TLS_CALLS
        .insert(bpf_get_current_pid_tgid(), call, 0)
        .is_err()
    {
        count_lost(LOST_STORAGE);
    }
}

/// The socket hooks saw I/O on a `TRACK_TLS` socket (`ret`: what it returned; `send`: a
/// send): note it in the thread's entry.
#[inline(always)]
pub fn socket_io(sk: *mut c_void, ret: i32, send: bool) {
    let id = bpf_get_current_pid_tgid();
    if let Some(t) = TLS_CALLS.get_ptr_mut(id) {
        let t = unsafe { &mut *t };
        t.sk = sk as u64;
        if send {
            t.send_ret = ret;
        } else {
            t.recv_ret = ret;
            t.reads = t.reads.saturating_add(1);
        }
    }
    // An LRU map's update takes a new element each time: look first (the thread reads the
    // same socket again, mostly).
    // SAFETY: a plain value, copied out at once.
    if !send && TLS_LAST_READ.get_ptr(id).map(|p| unsafe { *p }) != Some(sk as u64) {
        let _ = TLS_LAST_READ.insert(id, sk as u64, 0);
    }
}

/// A TCP socket was classified `TRACK_TLS` at its first send: state left at its address by
/// a socket freed before is not its own.
#[inline(always)]
pub fn socket_begins(sk: *mut c_void) {
    let _ = TLS_SOCKS.remove(sk as u64);
    socket_io(sk, 0, true);
}

/// `SSL_free(ssl)`: its tie to a socket ends (the address may hold another `SSL` next).
#[inline(always)]
pub fn ssl_free(ssl: u64) {
    let _ = TLS_BOUND.remove([bpf_get_current_pid_tgid() >> 32, ssl]);
}

/// A TLS call returned `ret` (an `int`: bytes, or <= 0; the `_ex` variants: 1 or 0, the count
/// behind `out`).
#[inline(always)]
pub fn call_returns(ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let Some(t) = TLS_CALLS.get_ptr(id) else {
        return;
    };
    let c = unsafe { *t };
    let _ = TLS_CALLS.remove(id);
    let n: i64 = if c.kind == TLS_CALL_SENDFILE {
        ret.min(i32::MAX as i64)
    } else if c.out == 0 {
        ret as i32 as i64
    } else if ret as i32 == 1 {
        read_user::<u64>(c.out).map_or(-1, |n| n.min(i32::MAX as u64) as i64)
    } else {
        -1
    };
    let read = c.kind == TLS_CALL_READ;
    // A read that returned nothing (nginx's second read of each request finds nothing yet):
    // nothing to account, and the tie to its socket waits for a call that has bytes. A
    // client's read that found the end of the plaintext is what the client saw of the
    // server's end (issue 25): told, whatever its socket does afterwards.
    if read && n <= 0 {
        if read_found_end(&c, ret)
            && let Some(sk) = bound(&c, false)
            && is_client(sk as *mut c_void)
        {
            crate::recv::send_eof(&crate::recv::tcp_client_eof(sk as *mut c_void));
        }
        return;
    }
    let Some(sk) = bound(&c, read) else {
        if !read && n > 0 {
            untied_request(&c);
        }
        return;
    };
    if read {
        plaintext_read(sk, &c, n as u64);
    } else if c.kind == TLS_CALL_WRITE || c.kind == TLS_CALL_SENDFILE {
        plaintext_write(sk, &c, n);
    }
}

/// Whether a read call `c` that returned `ret` and no bytes met the end of the plaintext: the
/// peer's `close_notify`, or the end of the TCP stream (OpenSSL: `SSL_read` returns 0 then,
/// and -1 when it must wait). The `_ex` variants return 0 for both: an end only if the call's
/// last socket read took bytes (the alert record) or the end of stream, not `-EAGAIN` (after
/// a session ticket, say) and not an error.
#[inline(always)]
fn read_found_end(c: &TlsCall, ret: i64) -> bool {
    if ret as i32 != 0 {
        return false;
    }
    c.out == 0 || (c.reads > 0 && c.recv_ret >= 0)
}

/// The socket of the call `c`: the one it did I/O on, else the one its `SSL *` was tied to,
/// else (`data_read`: a read that returned data) the one the thread read last.
#[inline(always)]
fn bound(c: &TlsCall, data_read: bool) -> Option<u64> {
    let key = [bpf_get_current_pid_tgid() >> 32, c.ssl];
    let tie = |sk: u64| {
        let _ = TLS_BOUND.insert(key, sk, 0);
        Some(sk)
    };
    // SAFETY: a plain value, copied out at once.
    let known = TLS_BOUND.get_ptr(key).map(|p| unsafe { *p });
    if c.sk != 0 {
        if known == Some(c.sk) {
            return Some(c.sk);
        }
        return tie(c.sk);
    }
    if known.is_some() {
        return known;
    }
    if !data_read {
        return None;
    }
    // A memory BIO's first read: only then is the thread's last TLS read looked up.
    match TLS_LAST_READ.get_ptr(bpf_get_current_pid_tgid()) {
        Some(p) if unsafe { *p } != 0 => tie(unsafe { *p }),
        _ => None,
    }
}

/// The TLS socket's plaintext state (`create`: make it, zeroed, if it has none and the socket
/// is connected: one made after its CLOSE would never be deleted, and a stream opened then
/// would never see its end).
#[inline(always)]
fn plaintext(sk: u64, create: bool) -> Option<&'static mut SockState> {
    if let Some(p) = TLS_SOCKS.get_ptr_mut(sk) {
        return Some(unsafe { &mut *p });
    }
    if !create {
        return None;
    }
    // TCP_ESTABLISHED, TCP_CLOSE_WAIT (include/net/tcp_states.h).
    let state = read_kernel::<u8>(sk + offsets().skc_state as u64)?;
    if state != 1 && state != 8 {
        return None;
    }
    let _ = TLS_SOCKS.insert(sk, SockState::default(), 1); // BPF_NOEXIST
    match TLS_SOCKS.get_ptr_mut(sk) {
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_lost(LOST_STORAGE);
            None
        }
    }
}

/// A write `c` not tied to a socket yet: if it is a client's request, remember its method for
/// the read that ties its `SSL *` (client side on only).
#[inline(always)]
fn untied_request(c: &TlsCall) {
    if crate::maps::settings().client_side == 0 {
        return;
    }
    let mut written = IoCall::NONE;
    written.iov[0] = [c.buf, c.num];
    written.niov = 1;
    let method = crate::recv::client_method(&written);
    if method != METHOD_NONE {
        let key = [bpf_get_current_pid_tgid() >> 32, c.ssl];
        let _ = TLS_UNTIED_REQUESTS.insert(key, method, 0);
    }
}

/// `n` plaintext bytes read by the call `c`: a request, maybe (as `recv::request`); on a
/// client's stream, response bytes, accounted as a client's socket reads are. A stream not
/// classified yet whose `SSL *` wrote a request before it was tied is a client's from here.
#[inline(always)]
fn plaintext_read(sk: u64, c: &TlsCall, n: u64) {
    let Some(st) = plaintext(sk, true) else {
        return;
    };
    if st.track == 0 {
        let key = [bpf_get_current_pid_tgid() >> 32, c.ssl];
        // SAFETY: a plain value, copied out at once.
        if let Some(method) = TLS_UNTIED_REQUESTS.get_ptr(key).map(|p| unsafe { *p }) {
            let _ = TLS_UNTIED_REQUESTS.remove(key);
            if open_client(sk, st, method).is_none() {
                return;
            }
        }
    }
    if st.track == TRACK_NO {
        return;
    }
    let mut call = IoCall::NONE;
    call.iov[0] = [c.buf, n];
    call.niov = 1;
    if st.track == TRACK_HTTP && st.flags & FLAG_CLIENT != 0 {
        call.nr = SYS_TLS_READ as u32;
        call.requested = n;
        account(sk as *mut c_void, st, n as i32, call, 0, true);
        return;
    }
    crate::recv::request(st, &call);
}

/// Whether the TLS socket `sk` carries an HTTP client's plaintext (its end of stream is told).
#[inline(always)]
pub fn is_client(sk: *mut c_void) -> bool {
    plaintext(sk as u64, false)
        .is_some_and(|st| st.track == TRACK_HTTP && st.flags & FLAG_CLIENT != 0)
}

/// kTLS (an upper-layer protocol on the socket): the kernel makes the records, within or after
/// the calls depending on the hook backend, which the marks cannot follow. Not judged rather
/// than misjudged.
#[inline(always)]
fn kernel_tls(sk: u64) -> bool {
    read_kernel::<u64>(sk + offsets().icsk_ulp_ops as u64) != Some(0)
}

/// The TLS stream of `sk` (state `st`, new) is a client's, whose first request's method is
/// `method`: its stream is what it reads. None if it is not judged (kTLS).
#[inline(always)]
fn open_client(sk: u64, st: &mut SockState, method: u8) -> Option<()> {
    st.track = TRACK_NO;
    if kernel_tls(sk) {
        return None;
    }
    let o = offsets();
    st.track = TRACK_HTTP;
    st.sent = 0;
    st.head_more = 0;
    st.flags |= FLAG_CLIENT;
    st.requests = 1;
    st.method = method;
    let family = read_kernel::<u16>(sk + o.skc_family as u64).unwrap_or(0);
    open(sk as *mut c_void, st, family, o, OPEN_TLS | OPEN_CLIENT);
    Some(())
}

/// A write call `c` returned (`n`: plaintext bytes the library accepted, or <= 0): classify
/// the stream at its first accepted write, then account it as a send.
#[inline(always)]
fn plaintext_write(sk: u64, c: &TlsCall, n: i64) {
    let o = offsets();
    if o.ready == 0 {
        return;
    }
    let Some(st) = plaintext(sk, n > 0) else {
        return;
    };
    let mut written = IoCall::NONE;
    written.iov[0] = [c.buf, c.num];
    written.niov = 1;
    if st.track == 0 {
        st.track = TRACK_NO;
        let head = c.num >= 7 && read_user::<[u8; 7]>(c.buf) == Some(*b"HTTP/1.");
        let method = if head || crate::maps::settings().client_side == 0 {
            METHOD_NONE
        } else {
            crate::recv::client_method(&written)
        };
        if !head && method == METHOD_NONE {
            return;
        }
        if method != METHOD_NONE {
            // A client's: this write is its first request; its stream is what it reads.
            let _ = open_client(sk, st, method);
            return;
        }
        if kernel_tls(sk) {
            return;
        }
        st.track = TRACK_HTTP;
        st.sent = 0;
        st.head_more = 0;
        let family = read_kernel::<u16>(sk + o.skc_family as u64).unwrap_or(0);
        open(sk as *mut c_void, st, family, o, OPEN_TLS);
    }
    if st.track != TRACK_HTTP {
        return;
    }
    if st.flags & FLAG_CLIENT != 0 {
        if n > 0 {
            crate::recv::request(st, &written);
        }
        return;
    }
    // A refused write counts as the socket's refusal (EAGAIN: the slow-reader evidence).
    let ret = if n > 0 {
        n as i32
    } else if c.send_ret < 0 {
        c.send_ret
    } else {
        return;
    };
    let mut call = IoCall::NONE;
    call.nr = SYS_TLS_WRITE as u32;
    call.requested = c.num;
    call.iov[0] = [c.buf, c.num];
    call.niov = 1;
    let mut flags = 0;
    // Where the write's records lie in the ciphertext: the socket's write_seq now ends them if
    // they went to the socket within the call; else (a memory BIO) they come after it.
    if n > 0
        && let Some(seq) = read_kernel::<u32>(sk + o.tcp_write_seq as u64)
    {
        call.seq = seq;
        flags = if c.sk == sk {
            FLAG_TLS_SEQ
        } else {
            FLAG_TLS_SEQ_BEFORE
        };
    }
    account(sk as *mut c_void, st, ret, call, flags, true);
}

/// A `TRACK_TLS` socket changed state (or `STATE_RESET_RECEIVED`): report it if its plaintext
/// is a tracked stream; forget the plaintext state at CLOSE.
#[inline(always)]
pub fn state_changed(sk: *mut c_void, oldstate: i32, newstate: i32) {
    if let Some(st) = plaintext(sk as u64, false)
        && st.track == TRACK_HTTP
    {
        emit_state(sk, st, oldstate, newstate);
    }
    if newstate == TCP_CLOSE {
        let _ = TLS_SOCKS.remove(sk as u64);
    }
}
