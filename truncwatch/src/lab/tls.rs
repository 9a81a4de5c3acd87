//! `truncwatch lab tls`: one HTTPS exchange on loopback, server and client in one process, both
//! through the system's `libssl.so.3` loaded at run time (`dlopen`): the library, and so the
//! uprobes, a real server's TLS goes through, with nothing linked into the agent. The server
//! promises `--body` bytes and sends them all, or only `--cut-at` of them and closes; the client
//! prints what it got (one JSON line, as `lab fetch` does). For hosts without Python or an
//! HTTPS server, such as the test kernels' guests.
use anyhow::{Context, Result, bail};
use std::ffi::{CString, c_char, c_int, c_void};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// The server's certificate and key (PEM), e.g. from `openssl req -x509`.
    #[arg(long)]
    pub cert: String,
    #[arg(long)]
    pub key: String,
    /// Body bytes promised (Content-Length).
    #[arg(long, default_value_t = 8_000_000)]
    pub body: u64,
    /// Send only this many body bytes, then close (a short write). Default: all of them.
    #[arg(long)]
    pub cut_at: Option<u64>,
}

type Fn0 = unsafe extern "C" fn() -> *const c_void;
type CtxNew = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type UseFile = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
type SslNew = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type SetFd = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type Handshake = unsafe extern "C" fn(*mut c_void) -> c_int;
type Io = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type Free = unsafe extern "C" fn(*mut c_void);

/// The libssl functions used, looked up once.
struct Lib {
    server_method: Fn0,
    client_method: Fn0,
    ctx_new: CtxNew,
    use_cert: UseFile,
    use_key: UseFile,
    ssl_new: SslNew,
    set_fd: SetFd,
    accept: Handshake,
    connect: Handshake,
    read: Io,
    write: Io,
    shutdown: Handshake,
    free: Free,
}

impl Lib {
    fn load() -> Result<Lib> {
        let name = CString::new("libssl.so.3")?;
        // SAFETY: dlopen with a valid C string; the handle is never closed (the library stays).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        if h.is_null() {
            bail!("dlopen libssl.so.3 failed (Debian package libssl3)");
        }
        let sym = |n: &str| -> Result<*mut c_void> {
            let c = CString::new(n)?;
            // SAFETY: valid handle and name.
            let p = unsafe { libc::dlsym(h, c.as_ptr()) };
            if p.is_null() {
                bail!("libssl.so.3 has no {n}");
            }
            Ok(p)
        };
        // SAFETY: each symbol has the C prototype of OpenSSL 3's API named beside it.
        unsafe {
            Ok(Lib {
                server_method: std::mem::transmute::<*mut c_void, Fn0>(sym("TLS_server_method")?),
                client_method: std::mem::transmute::<*mut c_void, Fn0>(sym("TLS_client_method")?),
                ctx_new: std::mem::transmute::<*mut c_void, CtxNew>(sym("SSL_CTX_new")?),
                use_cert: std::mem::transmute::<*mut c_void, UseFile>(sym(
                    "SSL_CTX_use_certificate_file",
                )?),
                use_key: std::mem::transmute::<*mut c_void, UseFile>(sym(
                    "SSL_CTX_use_PrivateKey_file",
                )?),
                ssl_new: std::mem::transmute::<*mut c_void, SslNew>(sym("SSL_new")?),
                set_fd: std::mem::transmute::<*mut c_void, SetFd>(sym("SSL_set_fd")?),
                accept: std::mem::transmute::<*mut c_void, Handshake>(sym("SSL_accept")?),
                connect: std::mem::transmute::<*mut c_void, Handshake>(sym("SSL_connect")?),
                read: std::mem::transmute::<*mut c_void, Io>(sym("SSL_read")?),
                write: std::mem::transmute::<*mut c_void, Io>(sym("SSL_write")?),
                shutdown: std::mem::transmute::<*mut c_void, Handshake>(sym("SSL_shutdown")?),
                free: std::mem::transmute::<*mut c_void, Free>(sym("SSL_free")?),
            })
        }
    }

    /// A TLS session over `fd`, as the server (`accept`) or the client.
    fn session(&self, ctx: *mut c_void, fd: c_int, server: bool) -> Result<Session<'_>> {
        // SAFETY: ctx is a live SSL_CTX; fd a connected socket that outlives the session.
        unsafe {
            let ssl = (self.ssl_new)(ctx);
            if ssl.is_null() || (self.set_fd)(ssl, fd) != 1 {
                bail!("SSL_new/SSL_set_fd failed");
            }
            let s = Session { lib: self, ssl };
            let r = if server {
                (self.accept)(ssl)
            } else {
                (self.connect)(ssl)
            };
            if r != 1 {
                bail!("TLS handshake failed ({r})");
            }
            Ok(s)
        }
    }
}

struct Session<'a> {
    lib: &'a Lib,
    ssl: *mut c_void,
}

impl Session<'_> {
    fn write_all(&self, mut b: &[u8]) -> Result<()> {
        while !b.is_empty() {
            let n = b.len().min(16384) as c_int;
            // SAFETY: live session; the buffer is valid for n bytes.
            let r = unsafe { (self.lib.write)(self.ssl, b.as_ptr() as *mut c_void, n) };
            if r <= 0 {
                bail!("SSL_write failed ({r})");
            }
            b = &b[r as usize..];
        }
        Ok(())
    }

    /// Bytes read, 0 at the end of the stream (or an error: the client counts what it got).
    fn read(&self, buf: &mut [u8]) -> usize {
        // SAFETY: live session; the buffer is valid for its length.
        let r = unsafe {
            (self.lib.read)(
                self.ssl,
                buf.as_mut_ptr().cast(),
                buf.len().min(c_int::MAX as usize) as c_int,
            )
        };
        r.max(0) as usize
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: the session is live and freed once.
        unsafe {
            (self.lib.shutdown)(self.ssl);
            (self.lib.free)(self.ssl);
        }
    }
}

/// SSL_FILETYPE_PEM.
const PEM: c_int = 1;

pub fn tls(a: &TlsArgs) -> Result<()> {
    let lib = Lib::load()?;
    // SAFETY: OpenSSL 3 initialises itself; the contexts live until the process ends.
    let (server_ctx, client_ctx) = unsafe {
        (
            (lib.ctx_new)((lib.server_method)()),
            (lib.ctx_new)((lib.client_method)()),
        )
    };
    let (cert, key) = (
        CString::new(a.cert.as_str())?,
        CString::new(a.key.as_str())?,
    );
    // SAFETY: a live context and valid paths.
    let loaded = unsafe {
        (lib.use_cert)(server_ctx, cert.as_ptr(), PEM) == 1
            && (lib.use_key)(server_ctx, key.as_ptr(), PEM) == 1
    };
    if server_ctx.is_null() || client_ctx.is_null() || !loaded {
        bail!("cannot set up TLS with {} and {}", a.cert, a.key);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (body, cut) = (a.body, a.cut_at.unwrap_or(a.body).min(a.body));
    let lib_ref: &'static Lib = Box::leak(Box::new(lib));
    let ctx = server_ctx as usize;
    let server = std::thread::Builder::new()
        .name("tw-lab-server".into())
        .spawn(move || -> Result<()> {
            let (s, _) = listener.accept()?;
            let tls = lib_ref.session(ctx as *mut c_void, s.as_raw_fd(), true)?;
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tls.read(&mut buf);
                if n == 0 {
                    return Ok(());
                }
                req.extend_from_slice(&buf[..n]);
            }
            tls.write_all(super::response_head(body).as_bytes())?;
            tls.write_all(&vec![b'x'; cut as usize])?;
            Ok(()) // dropped: close_notify, then the socket closes (a FIN)
        })?;
    let c = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
    let local = c.local_addr()?;
    let tls = lib_ref.session(client_ctx, c.as_raw_fd(), false)?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let got = super::read_one_response(|buf| tls.read(buf), body);
    drop(tls);
    let _ = server.join();
    super::print_exchange(port, local, got)
}
