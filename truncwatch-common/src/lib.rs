//! Types shared by the kernel programs and the agent.
//!
//! Everything here crosses the kernel/user boundary byte for byte, so every struct is
//! `#[repr(C)]` with explicit padding (no implicit holes, no `bool`), and its size is pinned by a
//! compile-time assertion that both sides compile.
#![no_std]

/// Bytes of a response head the kernel copies out with the send that begins it: room for the
/// 1–2 KB heads real sites send (cookies, CSP, HSTS, tracing headers; issue 28), in one record
/// and one user read. A head that does not end within them goes on in `HeadPiece` events.
pub const HEAD_CAP: usize = 2048;
/// The largest `--max-head-bytes`: the kernel captures at most this much of one head. Heads
/// longer than the agent's bound are reported as unparsed, never judged.
pub const MAX_HEAD_LIMIT: usize = 32 << 10;
/// Iovecs of one `writev`/`sendmsg` a head is gathered from, at most. A head written one word
/// per iovec takes about 90 for 1.3 KB and 490 for 9 KB; Apache httpd 2.4 writes four per
/// header field (name, separator, value, line end), 130 to 160 for a 9 KB head. A `writev` may
/// carry 1024 (`UIO_MAXIOV`, include/uapi/linux/uio.h), but each round costs the verifier some
/// 270 instructions: `sock_send_length` verifies in 285K instructions with 512, 424K with 1024
/// (Linux 6.18), against a limit of 1M.
pub const MAX_GATHER_IOV: u32 = 512;
/// Bytes of `struct sock` copied at classification; the agent decodes addresses from it with
/// offsets taken from the running kernel's BTF (`struct sock_common` is 136 bytes on 6.x).
pub const SOCK_PREFIX: usize = 160;
/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH: usize = 108;

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Event kinds, the first `u32` of every ring buffer record.
pub const EV_OPEN: u32 = 1;
pub const EV_SEND: u32 = 2;
pub const EV_HEAD: u32 = 3;
pub const EV_STATE: u32 = 4;
pub const EV_EOF: u32 = 5;
pub const EV_RESET: u32 = 6;
/// More bytes of a head that did not end within its first capture (`HeadPiece`, then the bytes).
pub const EV_HEAD_PIECE: u32 = 8;

// The syscall ABI (syscall numbers, where `struct pt_regs` holds the number and arguments):
// one file per architecture. The programs are built for the agent's architecture
// (`bpf_target_arch`, which aya-build sets from the agent's target), the agent for its own
// (`target_arch`), so both sides see the same file.
#[cfg(any(bpf_target_arch = "x86_64", target_arch = "x86_64"))]
#[path = "arch/x86_64.rs"]
mod arch;
#[cfg(any(bpf_target_arch = "aarch64", target_arch = "aarch64"))]
#[path = "arch/aarch64.rs"]
mod arch;
#[cfg(not(any(
    bpf_target_arch = "x86_64",
    bpf_target_arch = "aarch64",
    target_arch = "x86_64",
    target_arch = "aarch64"
)))]
compile_error!("truncwatch supports x86_64 and aarch64 (arm64) only");
/// Where `sock_send_length` found the sending task: `SYS_*` (the receive side's `SYS_READ`,
/// `SYS_READV`, `SYS_RECVFROM`, `SYS_RECVMSG` have the same argument layout as write, writev,
/// sendto, sendmsg), and `REGS_*`.
pub use arch::*;

/// Methods of requests, as the receive program tells them from a read's first 8 bytes: all the
/// agent needs of a request is whether its answer may carry a body.
pub const METHOD_NONE: u8 = 0;
pub const METHOD_HEAD: u8 = 1;
pub const METHOD_CONNECT: u8 = 2;
pub const METHOD_OTHER: u8 = 3;

/// Field offsets the kernel programs need, read from the running kernel's BTF at start-up and
/// handed over as a read-only global. Rust eBPF has no CO-RE, so nothing here is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `sock_common.skc_family` (u16).
    pub skc_family: u32,
    /// `sock.sk_type` (u16).
    pub sk_type: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `unix_sock.peer` (struct sock *).
    pub unix_peer: u32,
    /// `unix_sock.addr` (struct unix_address *).
    pub unix_addr: u32,
    /// `unix_address.len` (int: bytes of `name` in use, family included).
    pub unix_address_len: u32,
    /// `unix_address.name` (struct sockaddr_un, path after the 2-byte family).
    pub unix_address_name: u32,
    /// `tcp_sock` sequence numbers read when a connection closes.
    pub tcp_write_seq: u32,
    pub tcp_snd_una: u32,
    /// `tcp_sock.snd_nxt`: one past the last byte sent on the wire.
    pub tcp_snd_nxt: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    /// `inet_sock.inet_sport` (network order): unlike `skc_num`, still set when the state
    /// changes to CLOSE (the port is released just before).
    pub inet_sport: u32,
    /// Evidence read when a tracked connection changes state; 0 where this kernel's BTF lacks
    /// the field in a readable form (no struct field is at offset 0 of `tcp_sock`).
    pub tcp_snd_wnd: u32,
    /// The byte holding `tcp_sock.chrono_type`: a u8 on 6.18, a 2-bit bitfield sharing its
    /// byte with other flags on 6.1 and 6.12. The type is `(byte >> shift) & mask`.
    pub tcp_chrono_type: u32,
    pub tcp_chrono_type_shift: u32,
    pub tcp_chrono_type_mask: u32,
    pub tcp_chrono_start: u32,
    pub tcp_chrono_stat: u32,
    /// `socket.sk` (struct sock *): the fentry backend's hooks get a `struct socket *`.
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_state` (u8): the kprobe backend tracks only connected sockets.
    pub skc_state: u32,
    /// `inet_connection_sock.icsk_ulp_ops` (a pointer): set when an upper-layer protocol
    /// runs on the socket, kTLS among them.
    pub icsk_ulp_ops: u32,
    /// Non-zero once userspace filled this in; the programs do nothing until then.
    pub ready: u32,
}

/// Per-socket state kept in socket-local storage (freed by the kernel with the socket).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockState {
    /// `TRACK_*`.
    pub track: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Bytes the kernel accepted on this socket since it was classified.
    pub sent: u64,
    /// The last head captured has not ended yet: bytes of it that may still be captured (the
    /// rest of `--max-head-bytes`), from the next sends.
    pub head_more: u32,
    /// Reads that began like a request line (`METHOD `) since the last response head
    /// (saturating), and the first one's `METHOD_*`. Carried by the next head event.
    pub requests: u8,
    pub method: u8,
    /// Bytes of the send that began the head being gathered that its head event holds: where
    /// its next piece begins.
    pub head_skip: u16,
}

pub const TRACK_NO: u32 = 1;
pub const TRACK_HTTP: u32 = 2;
/// A TCP socket whose first send was a TLS record (RFC 8446 §5.1: content type 20 to 23, then
/// version 3.x): its plaintext is seen in the TLS library (`TlsCall`), and its own sends
/// only tie the library's calls to it.
pub const TRACK_TLS: u32 = 3;
/// The peer sent a reset (set by `tcp_receive_reset`, on any TCP socket).
pub const FLAG_RESET_RECEIVED: u32 = 1;
/// The socket's first read (before classification) was looked at for a request line.
pub const FLAG_RECV_SEEN: u32 = 2;
/// A `TRACK_HTTP` socket is the client side: its first send began with a request line
/// (RFC 9112 §3), so its sends carry the requests and its reads the responses (the stream the
/// send side's accounting follows on a server's socket).
pub const FLAG_CLIENT: u32 = 512;
/// The head being captured (`head_more` > 0) ends so far with `\n`: a next send beginning with
/// `\r` ends it.
pub const FLAG_HEAD_LF: u32 = 32;
/// ... ends so far with `\n\r`: the next send's first byte should end it.
pub const FLAG_HEAD_LFCR: u32 = 64;
/// An event about this socket could not be delivered (ring buffer full). Sticky; carried by
/// every later send and state event, so the agent never judges a stream it saw only in part.
pub const FLAG_EVENTS_LOST: u32 = 4;
/// The connection's open event (`OpenEvent`) could not be delivered (ring buffer full): the
/// next event about it that can be goes after a late open (`OPEN_LATE`), so the agent learns
/// of a connection it would otherwise never judge, and says `observer_loss` for it (issue 26).
pub const FLAG_OPEN_LOST: u32 = 2048;
/// ... and that open was of a TLS stream's plaintext (`OPEN_TLS`).
pub const FLAG_OPEN_LOST_TLS: u32 = 4096;
/// `SendEvent.flags` (kprobe backend): this head event was sent when the send began, before
/// the kernel took any of it; its `ret` and tail are what was offered, not what was accepted.
/// `FLAG_ACCEPTED` events follow with the bytes the kernel took.
pub const FLAG_ANNOUNCED: u32 = 8;
/// `SendEvent.flags` (kprobe backend): the bytes the kernel took of a send announced earlier
/// (`FLAG_ANNOUNCED`); the event only advances the stream.
pub const FLAG_ACCEPTED: u32 = 16;

/// The kprobe backend's per-socket state (a hash map keyed by the socket's address: kprobe
/// programs cannot use socket storage). Its TCP send hook runs only where a send begins (a
/// return probe would miss returns while sends block on a slow reader), so what the kernel
/// took is read off `tcp_sock.write_seq` when the next send begins or the state changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeSock {
    pub st: SockState,
    /// The socket's identity when the entry was made: for TCP, the first 14 bytes of
    /// `sock_common` (addresses, hash, peer port). An entry whose socket no longer matches belongs
    /// to a socket freed at the same address without its end being seen, and starts afresh.
    pub id: [u64; 2],
    /// `write_seq` when `st.sent` was last brought up to date.
    pub seq: u32,
    /// Unix sends begun and not yet returned (a missed return leaves it above 0).
    pub inflight: u32,
    /// The send begun last and not wholly accounted yet (`pend_size` > 0): bytes it still
    /// offers, what the caller asked for, its syscall, and the offered bytes' last few.
    pub pend_size: u64,
    pub pend_syscall: u32,
    /// `FLAG_ANNOUNCED` if a head event went out for it.
    pub pend_flags: u32,
    pub pend_tail: [u8; TAIL],
    /// Bytes in `pend_tail` (at most `TAIL`).
    pub pend_tail_len: u16,
    /// 1 if `read_seq` holds a value.
    pub read_seq_known: u16,
    /// TCP: `tcp_sock.copied_seq` after the last read counted. A read that waits after
    /// copying part of what it asked for (`MSG_WAITALL`, `SO_RCVLOWAT`) passes
    /// `tcp_cleanup_rbuf` once per wait with its running total: only what `copied_seq` moved
    /// since is new.
    pub read_seq: u32,
}

/// First bytes of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    /// Thread group id of the task the event happened in (0 in softirq context).
    pub tgid: u32,
    /// Kernel address of the socket: the connection's identity while it lives.
    pub sk: u64,
    /// `bpf_ktime_get_ns()`; 0 in send events, which the agent dates when it reads them.
    pub ts_ns: u64,
}

/// A socket was classified as the server side of HTTP/1 (its first send began with `HTTP/1.`),
/// or, with `OPEN_CLIENT`, as the client side (it began with a request line).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub h: Header,
    pub family: u16,
    /// Local port, network order (`inet_sport`; see `ResetEvent::sport`).
    pub sport: u16,
    /// `OPEN_TLS` if the stream is a TLS connection's plaintext.
    pub flags: u32,
    pub comm: [u8; 16],
    /// The start of `struct sock` (addresses and ports live in `sock_common`).
    pub sock: [u8; SOCK_PREFIX],
    /// For Unix sockets: the bound path of the socket (for accepted sockets, the listener's).
    pub unix_path: [u8; UNIX_PATH],
    /// Events lost host-wide so far (`LOSSES`, wrapping): see `EofEvent::losses`.
    pub losses: u32,
    /// A TCP client's `tcp_sock.copied_seq` (the next byte the application will read): where
    /// the responses it reads begin. 0 otherwise.
    pub copied_seq: u32,
    pub _pad: u32,
}

/// The kernel accepted (or refused) one send on a tracked socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SendEvent {
    pub h: Header,
    /// Stream offset of this send's first byte (bytes accepted before it).
    pub offset: u64,
    /// Bytes the caller asked to send (0 when unknown, e.g. sendfile chunks).
    pub requested: u64,
    /// `sock_sendmsg`'s return: bytes accepted, or `-errno`.
    pub ret: i32,
    /// Syscall number the sending task is in (`SYS_*`, or another number; `SYS_TLS_WRITE` for a
    /// TLS library's write).
    pub syscall: u16,
    pub tail_len: u16,
    /// The last accepted bytes of this send (`tail[..tail_len]`, up to 8), where the caller's
    /// buffer could be located: how a chunked body's end is seen.
    pub tail: [u8; TAIL],
    /// `FLAG_EVENTS_LOST` if an earlier event about this socket was lost; `FLAG_TLS_SEQ`.
    pub flags: u32,
    /// With `FLAG_TLS_SEQ` or `FLAG_TLS_SEQ_BEFORE`: the TCP socket's `write_seq` when the TLS
    /// write returned.
    pub seq: u32,
}

/// `SendEvent.syscall` of a TLS library's write (`SSL_write`, `SSL_write_ex`): plaintext.
pub const SYS_TLS_WRITE: u16 = 0xfff1;
/// `SendEvent.syscall` of a TLS library's read on a client's stream (`SSL_read`, `SSL_read_ex`).
pub const SYS_TLS_READ: u16 = 0xfff2;
/// `SendEvent.flags`: `seq` is set, and the write's records went to the socket during the call
/// (OpenSSL's socket BIO): `seq` ends them.
pub const FLAG_TLS_SEQ: u32 = 128;
/// `SendEvent.flags`, a client's read that begins no head: `seq` carries the requests sent since
/// the last response head (bits 0..8: how many, saturating; bits 8..16: the first one's
/// `METHOD_*`), which a head event carries otherwise. (A client reading a head a few bytes at a
/// time begins it with no head event.)
pub const FLAG_REQUESTS: u32 = 1024;
/// `SendEvent.flags`: `seq` is set, but the write did no socket I/O (a memory BIO, as in
/// Node.js: the records go to the socket later): `seq` is where they can begin at the earliest.
pub const FLAG_TLS_SEQ_BEFORE: u32 = 256;

/// A thread's TLS library call in progress, kept per thread (`bpf_get_current_pid_tgid`)
/// between a uprobe where the call begins and the return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    /// The `SSL *`, its buffer and length, and where an `_ex` variant (or OpenSSL's internal
    /// function) returns its count (`size_t *`, 0 for `SSL_write`/`SSL_read`).
    pub ssl: u64,
    pub buf: u64,
    pub num: u64,
    pub out: u64,
    /// `TLS_CALL_*`.
    pub kind: u32,
    /// The last send on `sk` during the call: bytes or `-errno` (0: none).
    pub send_ret: i32,
    /// The TLS socket this call did I/O on (0: none): the `SSL *`'s socket for sure.
    pub sk: u64,
    /// The last read on `sk` during the call: bytes, 0 (end of stream) or `-errno`; valid
    /// when `reads` > 0, the number of such reads.
    pub recv_ret: i32,
    pub reads: u32,
}

pub const TLS_CALL_WRITE: u32 = 1;
pub const TLS_CALL_READ: u32 = 2;
/// `SSL_sendfile` (kTLS): a write of a file's bytes, returning `ssize_t`.
pub const TLS_CALL_SENDFILE: u32 = 3;

/// Bytes of each send's end copied out: enough for a last chunk `\r\n0\r\n\r\n` minus one.
pub const TAIL: usize = 8;

/// Settings the agent hands the programs (a read-only global, like `Offsets`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `--max-head-bytes`: a head is captured up to this many bytes (at most `MAX_HEAD_LIMIT`).
    pub max_head_bytes: u32,
    /// 1: HTTP clients are tracked too (`FLAG_CLIENT`); 0: `--no-client-side`.
    pub client_side: u32,
    /// The ring buffer's size in bytes (`--ring-buffer-mib`), for the owners' share of it.
    pub ring_bytes: u32,
}

/// More bytes of a head whose first capture (`HeadEvent`) did not hold its end: the bytes that
/// follow it in the same send (`send_end` is the send's end), or a next send's. The record
/// goes on with `len` bytes, up to the head's end where the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadPiece {
    pub h: Header,
    /// Stream offset of the first byte.
    pub offset: u64,
    /// Stream offset one past the last byte the send these bytes come from offered.
    pub send_end: u64,
    pub len: u32,
    /// `FLAG_EVENTS_LOST` if an earlier event about this socket was lost.
    pub flags: u32,
}

/// The per-CPU buffer a head piece is gathered in before it goes out: its header, then room
/// for `MAX_HEAD_LIMIT` bytes written at an offset below `MAX_HEAD_LIMIT` (the verifier bounds
/// each copy by its largest offset plus its largest length).
/// After them, `PIECE_ARGS` bytes for the kernel's own use (what the piece is gathered from).
pub const PIECE_BUF: usize = core::mem::size_of::<HeadPiece>() + 2 * MAX_HEAD_LIMIT + PIECE_ARGS;
pub const PIECE_ARGS: usize = 128;

/// `OpenEvent.flags`: the stream is the plaintext of a TLS connection (its sends are the TLS
/// library's writes, `SYS_TLS_WRITE`).
pub const OPEN_TLS: u32 = 1;
/// `OpenEvent.flags`: the socket is an HTTP client's (`FLAG_CLIENT`): its stream is the
/// responses it read, and its "send" events are reads (`SYS_READ`, ...).
pub const OPEN_CLIENT: u32 = 2;
/// `OpenEvent.flags`: a late open (`FLAG_OPEN_LOST`): the connection was tracked earlier, its
/// first events were lost, and its stream is seen only from here on.
pub const OPEN_LATE: u32 = 4;
/// `OpenEvent.flags`: sent from a state change, which may run in another task's context (a
/// softirq on the peer's packet): its pid and thread name are not the owner's.
pub const OPEN_NO_OWNER: u32 = 8;

/// A send that began with `HTTP/`: `SendEvent` plus the first bytes of the buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeadEvent {
    pub send: SendEvent,
    pub cap_len: u32,
    /// `SockState::requests` and `method` when this head's send began (`EV_HEAD` only): the
    /// requests this response may answer.
    pub requests: u8,
    pub method: u8,
    pub _pad: u16,
    pub cap: [u8; HEAD_CAP],
}

/// A tracked TCP socket changed state (`inet_sock_set_state`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StateEvent {
    pub h: Header,
    pub oldstate: i32,
    pub newstate: i32,
    /// `write_seq - snd_una`: written bytes not yet acknowledged.
    pub unacked: u32,
    /// `write_seq - snd_nxt`: written bytes not sent on the wire yet.
    pub unsent: u32,
    /// `rcv_nxt - copied_seq`: received bytes not yet read.
    pub unread: u32,
    /// The peer's advertised window, bytes (0: zero window). `u32::MAX`: unknown.
    pub snd_wnd: u32,
    /// Jiffies the connection spent limited by the peer's receive window, and by the send
    /// buffer (`tcp_sock.chrono_stat`, plus the running period). `u32::MAX`: unknown.
    pub rwnd_limited: u32,
    pub sndbuf_limited: u32,
    /// `FLAG_EVENTS_LOST` if an event about this socket was lost.
    pub flags: u32,
    /// `snd_una`: the first byte not acknowledged (a TLS stream's plaintext is mapped to its
    /// ciphertext through it: `SendEvent::seq`).
    pub snd_una: u32,
    /// `copied_seq`: the next byte the application will read (a client's reads are checked
    /// against it: `OpenEvent::copied_seq`).
    pub copied_seq: u32,
    pub _pad: u32,
}

/// `StateEvent.newstate` for `tcp_receive_reset`: the peer reset the connection.
pub const STATE_RESET_RECEIVED: i32 = 100;

/// A Unix stream socket read end of stream (`recv` returned 0). `h.sk` is the reader, `peer`
/// the socket at the other end (the one whose stream ended), if still connected. The kprobe
/// backend sends it when a socket shuts down its sending side or is released: then `h.sk` and
/// `peer` are both that socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EofEvent {
    pub h: Header,
    pub peer: u64,
    /// Events lost host-wide so far (wrapping). The reader's end of stream cannot carry the
    /// server socket's own lost-event mark, so a Unix stream whose count moved since its open
    /// may have lost events of its own.
    pub losses: u32,
    /// `FLAG_EVENTS_LOST` if this socket is known to have lost events (kprobe backend, and
    /// a TCP client's own mark).
    pub flags: u32,
    /// A TCP client's `copied_seq` and `rcv_nxt - copied_seq` (0 for Unix sockets).
    pub copied_seq: u32,
    pub unread: u32,
}

/// This host moved a TCP connection (any, HTTP or not) to CLOSE without a reset from the peer
/// while bytes the application had written were not acknowledged: they are discarded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResetEvent {
    pub h: Header,
    pub family: u16,
    /// Local port, network order (`inet_sport`: `sock_common`'s `skc_num` is zeroed when the
    /// port is released at CLOSE, which may come before the agent first sees a socket).
    pub sport: u16,
    pub oldstate: i32,
    pub comm: [u8; 16],
    pub sock: [u8; SOCK_PREFIX],
    /// `write_seq - snd_una`, less the FIN if one was queued.
    pub unacked: u32,
    /// `write_seq - snd_nxt`, likewise: of those, the bytes never sent. What was sent but not
    /// acknowledged yet still reaches the peer ahead of the reset (it is in flight, in order).
    pub unsent: u32,
    /// `rcv_nxt - copied_seq`: received bytes the application never read.
    pub unread: u32,
    /// `snd_una`, as in `StateEvent`.
    pub snd_una: u32,
}

// Sizes pinned for both sides: a change here must be a deliberate change of the wire format.
const _: () = assert!(core::mem::size_of::<Offsets>() == 92);
const _: () = assert!(core::mem::size_of::<SockState>() == 24);
const _: () = assert!(core::mem::size_of::<ProbeSock>() == 80);
const _: () = assert!(core::mem::size_of::<Header>() == 24);
const _: () =
    assert!(core::mem::size_of::<OpenEvent>() == 24 + 8 + 16 + SOCK_PREFIX + UNIX_PATH + 12);
const _: () = assert!(core::mem::size_of::<SendEvent>() == 64);
const _: () = assert!(core::mem::size_of::<HeadEvent>() == 64 + 8 + HEAD_CAP);
const _: () = assert!(core::mem::size_of::<StateEvent>() == 72);
const _: () = assert!(core::mem::size_of::<EofEvent>() == 48);
const _: () = assert!(core::mem::size_of::<TlsCall>() == 56);
const _: () = assert!(core::mem::size_of::<HeadPiece>() == 48);
const _: () = assert!(core::mem::size_of::<Settings>() == 12);
const _: () = assert!(core::mem::size_of::<ResetEvent>() == 24 + 8 + 16 + SOCK_PREFIX + 16);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for Offsets {}
    // SAFETY: likewise.
    unsafe impl aya::Pod for Settings {}
}
