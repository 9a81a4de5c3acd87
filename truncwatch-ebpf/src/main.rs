//! truncwatch kernel programs: BTF raw tracepoints (`tp_btf`) on the socket send, receive and
//! TCP state paths. No syscall hooks: on this project's reference machine they cost a web
//! server about 12% even when empty, while socket tracepoints are close to free.
//!
//! `tp_btf` programs get a typed `struct sock *`, which lets them keep per-socket state in
//! socket-local storage: the kernel frees it with the socket, so a reused socket address never
//! inherits a dead connection's state, and nothing needs evicting.
#![no_std]
#![no_main]

mod head;
mod kernel;
mod maps;
mod probe;
mod recv;
mod send;
mod state;
mod tls;

use aya_ebpf::{
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, tracepoint, uprobe, uretprobe},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
    },
};
use maps::SkStore;

/// `TP_PROTO(struct sock *sk, int ret, int flags)`, fired in `sock_sendmsg_nosec()` for every
/// send on every socket (write, writev, send*, and since 6.5 sendfile/splice chunks). Since 6.3.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    send::on_send::<SkStore>(ctx.arg(0), ctx.arg(1));
    0
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)`, fired in `sock_recvmsg_nosec()`. Since 6.3.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    recv::on_recv::<SkStore>(ctx.arg(0), ctx.arg(1), ctx.arg(2), 0);
    0
}

// The fentry backend, for kernels without `sock_send_length`/`sock_recv_length` (before 6.3):
// fexit programs with the same handlers. fexit, not a kretprobe: a send blocks while the send
// buffer is full (the slow-reader case), and kretprobe instances run out while many are
// blocked. BTF trampolines since 5.5.
//
// Sends are hooked per protocol, where the socket layer calls through a function pointer:
// `sock_sendmsg` itself is inlined into some of its callers (write(2) on 6.1), and fentry sees
// only calls to the out-of-line copy. Before 6.5, sendfile and splice to a socket take the
// sendpage path, hooked too where it exists. Receives go through `sock_recvmsg`.

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    send::on_send::<SkStore>(ctx.arg(0), ctx.arg(3));
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)`:
/// sendfile and splice to TCP before 6.5 (removed there; they go through `tcp_sendmsg`).
#[fexit(function = "tcp_sendpage")]
pub fn fexit_tcp_sendpage(ctx: FExitContext) -> i32 {
    send::on_send::<SkStore>(ctx.arg(0), ctx.arg(5));
    0
}

/// `ssize_t unix_stream_sendpage(struct socket *socket, struct page *page, int offset,
/// size_t size, int flags)`: the same for Unix sockets, before 6.5.
#[fexit(function = "unix_stream_sendpage")]
pub fn fexit_unix_stream_sendpage(ctx: FExitContext) -> i32 {
    if let Some(sk) = kernel::socket_sk(ctx.arg(0)) {
        send::on_send::<SkStore>(sk, ctx.arg(5));
    }
    0
}

/// `int unix_stream_sendmsg(struct socket *sock, struct msghdr *msg, size_t len)`.
#[fexit(function = "unix_stream_sendmsg")]
pub fn fexit_unix_stream_sendmsg(ctx: FExitContext) -> i32 {
    if let Some(sk) = kernel::socket_sk(ctx.arg(0)) {
        send::on_send::<SkStore>(sk, ctx.arg(3));
    }
    0
}

/// `int sock_recvmsg(struct socket *sock, struct msghdr *msg, int flags)`: read, recv*.
#[fexit(function = "sock_recvmsg")]
pub fn fexit_sock_recvmsg(ctx: FExitContext) -> i32 {
    if let Some(sk) = kernel::socket_sk(ctx.arg(0)) {
        recv::on_recv::<SkStore>(sk, ctx.arg(3), ctx.arg(2), 0);
    }
    0
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`. Since 4.16.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    state::on_state::<SkStore>(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

/// `TP_PROTO(struct sock *sk)`, fired when a RST arrives. Since 4.19.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    state::on_reset_received::<SkStore>(ctx.arg(0));
    0
}

// The kprobe backend, for kernels with neither the socket tracepoints nor BTF trampolines:
// kprobes where sends begin, return probes only on Unix sends (see `probe`), and classic
// tracepoints for the TCP state paths (their `tp_btf` twins above keep state in socket
// storage, which kprobe programs cannot reach). Kprobes since 4.x; the handlers also need
// the ring buffer (5.8) and `bpf_task_pt_regs` (5.15).

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(size)) = (ctx.arg::<*mut core::ffi::c_void>(0), ctx.arg::<u64>(2)) {
        probe::tcp_send_begins(sk, size);
    }
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)`,
/// before 6.5.
#[kprobe]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(size)) = (ctx.arg::<*mut core::ffi::c_void>(0), ctx.arg::<u64>(3)) {
        probe::tcp_send_begins(sk, size);
    }
    0
}

/// `int unix_stream_sendmsg(struct socket *sock, struct msghdr *msg, size_t len)`, and
/// `unix_stream_sendpage(struct socket *socket, ...)` before 6.5: where they begin...
#[kprobe]
pub fn kprobe_unix_stream_send(ctx: ProbeContext) -> u32 {
    if let Some(sock) = ctx.arg::<u64>(0) {
        probe::unix_send_begins(sock);
    }
    0
}

/// ... and where they return.
#[kretprobe]
pub fn kretprobe_unix_stream_send(ctx: RetProbeContext) -> u32 {
    probe::unix_send_returns(ctx.ret::<i64>() as i32);
    0
}

/// `void tcp_cleanup_rbuf(struct sock *sk, int copied)`: after a TCP read copied its bytes.
#[kprobe]
pub fn kprobe_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(copied)) = (ctx.arg::<*mut core::ffi::c_void>(0), ctx.arg::<i32>(1)) {
        probe::tcp_read(sk, copied);
    }
    0
}

/// `int unix_stream_recvmsg(struct socket *sock, struct msghdr *msg, size_t size, int flags)`:
/// where it begins...
#[kprobe]
pub fn kprobe_unix_stream_recvmsg(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(flags)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(3)) {
        probe::unix_read_begins(sock, flags);
    }
    0
}

/// ... and where it returns.
#[kretprobe]
pub fn kretprobe_unix_stream_recvmsg(ctx: RetProbeContext) -> u32 {
    probe::unix_read_returns(ctx.ret::<i64>() as i32);
    0
}

/// `int unix_shutdown(struct socket *sock, int mode)`: mode SHUT_WR (1) or SHUT_RDWR (2)
/// ends the sending side.
#[kprobe]
pub fn kprobe_unix_shutdown(ctx: ProbeContext) -> u32 {
    if let (Some(sock), Some(mode)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1))
        && (mode == 1 || mode == 2)
    {
        probe::unix_ends(sock, false);
    }
    0
}

/// `int unix_release(struct socket *sock)`: the last close of a Unix socket.
#[kprobe]
pub fn kprobe_unix_release(ctx: ProbeContext) -> u32 {
    if let Some(sock) = ctx.arg::<u64>(0) {
        probe::unix_ends(sock, true);
    }
    0
}

/// `sock:inet_sock_set_state` as a classic tracepoint (fields at the offsets its `format`
/// gives: skaddr 8, oldstate 16, newstate 20; stable since 4.16).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let read = |off| unsafe { ctx.read_at::<i32>(off) }.ok();
    if let (Ok(sk), Some(old), Some(new)) = (unsafe { ctx.read_at::<u64>(8) }, read(16), read(20)) {
        probe::tcp_state(sk as *mut core::ffi::c_void, old, new);
    }
    0
}

/// `tcp:tcp_receive_reset` as a classic tracepoint (skaddr at 8; since 4.19).
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(8) } {
        probe::tcp_reset_received(sk as *mut core::ffi::c_void);
    }
    0
}

// TLS plaintext: uprobes on the TLS library (OpenSSL 3's API, in libssl.so.3 or in an
// executable that exports it), for every backend (uprobes since 3.5; the handlers need the
// ring buffer, 5.8). See `tls`.

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn uprobe_ssl_write(ctx: ProbeContext) -> u32 {
    tls_call(&ctx, truncwatch_common::TLS_CALL_WRITE, false);
    0
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn uprobe_ssl_write_ex(ctx: ProbeContext) -> u32 {
    tls_call(&ctx, truncwatch_common::TLS_CALL_WRITE, true);
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn uprobe_ssl_read(ctx: ProbeContext) -> u32 {
    tls_call(&ctx, truncwatch_common::TLS_CALL_READ, false);
    0
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn uprobe_ssl_read_ex(ctx: ProbeContext) -> u32 {
    tls_call(&ctx, truncwatch_common::TLS_CALL_READ, true);
    0
}

/// `ossl_ssize_t SSL_sendfile(SSL *s, int fd, off_t offset, size_t size, int flags)`: a file's
/// bytes over kTLS (no buffer to read a head from; the body of a head written before).
#[uprobe]
pub fn uprobe_ssl_sendfile(ctx: ProbeContext) -> u32 {
    if let (Some(ssl), Some(size)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) {
        tls::call_begins(truncwatch_common::TLS_CALL_SENDFILE, ssl, 0, size, 0);
    }
    0
}

/// Where the calls above return: `int`, bytes (or <= 0), or 1/0 for the `_ex` variants (and
/// OpenSSL's internal functions they call, hooked in their stead where found: `tls_hooks.rs`),
/// `ssize_t` for `SSL_sendfile`.
#[uretprobe]
pub fn uretprobe_ssl_call(ctx: RetProbeContext) -> u32 {
    tls::call_returns(ctx.ret::<i64>());
    0
}

/// `void SSL_free(SSL *ssl)`.
#[uprobe]
pub fn uprobe_ssl_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        tls::ssl_free(ssl);
    }
    0
}

/// A TLS call's arguments: `int num` for the plain variants (only the register's low half is
/// the argument), `size_t num` and the count's pointer for the `_ex` ones.
#[inline(always)]
fn tls_call(ctx: &ProbeContext, kind: u32, ex: bool) {
    if let (Some(ssl), Some(buf), Some(num)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    {
        let (num, out) = if ex {
            (num, ctx.arg::<u64>(3).unwrap_or(0))
        } else {
            ((num as i32).max(0) as u64, 0)
        };
        if !ex || out != 0 {
            tls::call_begins(kind, ssl, buf, num, out);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
