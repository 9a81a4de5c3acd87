//! `truncwatch lab serve`: an HTTP/1 server that ends responses the ways real servers do.
use super::{Endpoint, Stream, set_linger0};
use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

/// How the server ends each response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Send the whole response (blocking writes), keep the connection alive.
    Full,
    /// The hyper#4022 pattern: non-blocking writes; at the first EAGAIN give up, then
    /// shutdown(SHUT_WR) and close with the rest still in our own buffer.
    ShortShutdown,
    /// Same, but close without shutdown.
    ShortClose,
    /// Hand the kernel the whole response, wait for more input to arrive, then close without
    /// reading it: Linux answers with a reset and drops what the peer has not acknowledged.
    ResetUnread,
    /// The same after shutdown(SHUT_WR): the FIN first, then the close on unread input, whose
    /// reset drops what the FIN was to deliver (hyper's end of a connection after an early
    /// answer to an upload it did not read).
    ShutdownUnread,
    /// Hand the kernel the whole response, then close with SO_LINGER {1, 0}: a reset as well.
    Linger0,
    /// Promise the whole body, send only --truncate-at bytes of it, close: an upstream that
    /// dies mid-response.
    Truncate,
    /// Promise the whole body, send only --truncate-at bytes of it, then a whole second
    /// response on the same connection, then close: a server that lost count of its bytes.
    Desync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SendWith {
    Write,
    Writev,
    Sendmsg,
    /// The head with write, the body through a pipe with splice(2), as proxies do.
    Splice,
    /// One writev: the head as one iovec per word (as some servers gather their headers),
    /// then the body.
    WritevWords,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: tcp:127.0.0.1:0 or unix:/path (an existing socket file is replaced).
    #[arg(long)]
    pub listen: Endpoint,
    #[arg(long, value_enum, default_value = "full")]
    pub mode: Mode,
    /// Body bytes per response (Content-Length).
    #[arg(long, default_value_t = 1 << 20)]
    pub body: u64,
    /// The call that sends each response: `write` (one buffer), `writev` or `sendmsg` (head
    /// and body as two iovecs), or `splice` (head with write, body from a pipe).
    #[arg(long, value_enum, default_value = "write")]
    pub send_with: SendWith,
    /// Send the body chunked (16 KiB chunks, then the last chunk) instead of with
    /// Content-Length.
    #[arg(long)]
    pub chunked: bool,
    /// Send no framing at all (HTTP/1.0, body until close), and close after each response.
    #[arg(long)]
    pub unframed: bool,
    /// Write the head one line per send, as some hand-written servers do.
    #[arg(long)]
    pub split_head: bool,
    /// Pad the head with an `X-Pad` header of this many bytes.
    #[arg(long, default_value_t = 0)]
    pub head_pad: usize,
    /// Make the head at least this many bytes with the headers real sites send (security
    /// policies, tracing, cookies), the framing header last (0: a short head, ~70 bytes).
    #[arg(long, default_value_t = 0)]
    pub head_bytes: usize,
    /// Body bytes sent in --mode truncate.
    #[arg(long, default_value_t = 0)]
    pub truncate_at: u64,
    /// The name of the threads that serve connections: the `comm` the agent reports (tests
    /// pose as other programs with it; the kernel keeps 15 bytes).
    #[arg(long, default_value = "tw-lab-server")]
    pub thread_name: String,
    /// Exit after this many connections (0: serve forever).
    #[arg(long, default_value_t = 0)]
    pub connections: u64,
}

pub fn serve(a: &ServeArgs) -> Result<()> {
    let mut served = 0;
    let mut handles = Vec::new();
    let mut next = |h: std::thread::JoinHandle<()>| {
        handles.push(h);
        served += 1;
        a.connections != 0 && served >= a.connections
    };
    match &a.listen {
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
            announce(&format!("tcp:{}", l.local_addr()?));
            for s in l.incoming() {
                if next(spawn(Box::new(s?), a.clone())?) {
                    break;
                }
            }
        }
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind_addr(&super::unix_addr(path)?)
                .with_context(|| format!("listening on {path}"))?;
            announce(&format!("unix:{path}"));
            for s in l.incoming() {
                if next(spawn(Box::new(s?), a.clone())?) {
                    break;
                }
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn announce(endpoint: &str) {
    // Tests and scripts wait for this line to learn the address.
    eprintln!("lab: listening on {endpoint}");
}

fn spawn(s: Box<dyn Stream>, a: ServeArgs) -> Result<std::thread::JoinHandle<()>> {
    // The thread name is the `comm` the agent reports.
    Ok(std::thread::Builder::new()
        .name(a.thread_name.clone())
        .spawn(move || {
            if let Err(e) = handle(s, &a) {
                eprintln!("lab: connection: {e:#}");
            }
        })?)
}

fn handle(mut s: Box<dyn Stream>, a: &ServeArgs) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(()); // client closed
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let is_head = buf.starts_with(b"HEAD ");
        buf.drain(..end);
        let (head, mut resp) = response(a, is_head);
        let whole = resp.clone();
        if matches!(a.mode, Mode::Truncate | Mode::Desync) {
            resp.truncate(head.len() + a.truncate_at as usize);
        }

        if matches!(a.mode, Mode::ShortShutdown | Mode::ShortClose) {
            s.set_nonblocking(true)?;
            // A small send buffer: the kernel refuses (EAGAIN) long before the body is all
            // handed over, whatever the reader and the kernel's own buffer sizing.
            set_sndbuf(&*s, SHORT_SNDBUF)?;
        }
        let mut sent = send_response(&*s, &resp, head.len(), a)?;
        if a.mode == Mode::Desync {
            // In a send of its own: a head in the middle of a send is not seen (yet).
            sent += send_response(&*s, &whole, head.len(), a)?;
        }
        println!(
            "{}",
            serde_json::json!({"sent_bytes": sent, "expected_bytes": resp.len()})
        );
        match a.mode {
            Mode::Full if a.unframed => return Ok(()), // the close ends the body
            Mode::Full => continue,
            // Before the close, the client's extra input, if it sends any, has time to arrive
            // (a close on unread input resets): on a slow machine the close came first, and
            // the client's write met EPIPE (seen in a 6.1 guest under emulation).
            Mode::ShortShutdown => {
                s.shutdown_write()?;
                wait_readable(&*s, Duration::from_secs(1));
            }
            Mode::ShortClose | Mode::Truncate | Mode::Desync => {}
            // Long enough for the client's extra input to arrive, not for it to read everything.
            Mode::ResetUnread => std::thread::sleep(Duration::from_millis(100)),
            Mode::ShutdownUnread => {
                s.shutdown_write()?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Mode::Linger0 => set_linger0(&*s)?,
        }
        return Ok(()); // dropping the stream closes it
    }
}

/// The send buffer of the short modes' sockets (the kernel doubles it for its bookkeeping).
const SHORT_SNDBUF: usize = 64 << 10;

/// Wait until `s` has input (or end of stream) to read, at most `limit`.
fn wait_readable(s: &dyn Stream, limit: Duration) {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) };
}

fn set_sndbuf(s: &dyn Stream, bytes: usize) -> Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        bail!("SO_SNDBUF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One response: its head, and the whole response (head + body as it goes on the wire).
fn response(a: &ServeArgs, is_head: bool) -> (String, Vec<u8>) {
    let framing = if a.unframed {
        String::new()
    } else if a.chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {}\r\n", a.body)
    };
    let version = if a.unframed { "1.0" } else { "1.1" };
    let head = super::heads::head(version, a.head_bytes, a.head_pad, &framing);
    let mut resp = head.clone().into_bytes();
    if is_head {
        return (head, resp);
    }
    if a.chunked {
        let mut left = a.body as usize;
        while left > 0 {
            let n = left.min(16 << 10);
            resp.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            resp.resize(resp.len() + n, b'x');
            resp.extend_from_slice(b"\r\n");
            left -= n;
        }
        resp.extend_from_slice(b"0\r\n\r\n");
    } else {
        resp.resize(head.len() + a.body as usize, b'x');
    }
    (head, resp)
}

/// Send `resp` (head of `head_len` bytes, then body) with the chosen call until done, or, in
/// the short modes (non-blocking socket), until the kernel first refuses with EAGAIN. Returns
/// the bytes the kernel accepted: the server's own ground truth.
fn send_response(s: &dyn Stream, resp: &[u8], head_len: usize, a: &ServeArgs) -> Result<usize> {
    let mut sent = 0;
    if a.split_head {
        for line in resp[..head_len].split_inclusive(|&b| b == b'\n') {
            // SAFETY: valid fd and buffer; lines are small and the buffer is empty here.
            if unsafe { libc::write(s.as_raw_fd(), line.as_ptr().cast(), line.len()) }
                != line.len() as isize
            {
                bail!("writing a head line: {}", std::io::Error::last_os_error());
            }
        }
        sent = head_len;
    }
    let pipe = if a.send_with == SendWith::Splice {
        Some(Pipe::new()?)
    } else {
        None
    };
    while sent < resp.len() {
        if let (Some(p), true) = (&pipe, sent >= head_len) {
            match p.splice_to(s.as_raw_fd(), &resp[sent..], a.mode != Mode::Full)? {
                Some(n) => {
                    sent += n;
                    continue;
                }
                None if a.mode == Mode::Full => continue,
                None => break,
            }
        }
        let rest = &resp[sent..];
        // Head and body as separate iovecs while the head is not fully sent.
        let split = head_len.saturating_sub(sent).min(rest.len());
        let iov = |b: &[u8]| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        };
        let iovs = [iov(&rest[..split]), iov(&rest[split..])];
        let (iovs, cnt) = if split == 0 {
            (&iovs[1..], 1)
        } else {
            (&iovs[..], 2)
        };
        let fd = s.as_raw_fd();
        // The head one word per iovec, while none of it was taken (then as `writev`).
        let words: Vec<libc::iovec> = if a.send_with == SendWith::WritevWords && sent == 0 {
            let words = super::heads::words(&rest[..split]);
            words.into_iter().chain([&rest[split..]]).map(iov).collect()
        } else {
            Vec::new()
        };
        let (vec, vlen) = if words.is_empty() {
            (iovs.as_ptr(), cnt)
        } else {
            (words.as_ptr(), words.len() as i32)
        };
        // SAFETY: the iovecs point into `resp`, which outlives the call.
        let n = unsafe {
            match a.send_with {
                SendWith::Write => libc::write(fd, rest.as_ptr().cast(), rest.len()),
                SendWith::Splice => libc::write(fd, rest.as_ptr().cast(), split), // the head
                SendWith::Writev | SendWith::WritevWords => libc::writev(fd, vec, vlen),
                SendWith::Sendmsg => {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iovs.as_ptr() as *mut _;
                    msg.msg_iovlen = cnt as _;
                    libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
                }
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::WouldBlock if a.mode != Mode::Full => break,
                ErrorKind::Interrupted | ErrorKind::WouldBlock => continue,
                _ => return Err(e.into()),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// A pipe to splice(2) from: the body goes user memory -> pipe -> socket, never through a
/// send call with a user buffer.
struct Pipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
}

impl Pipe {
    fn new() -> Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: valid array for two fds.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh fds we own.
        Ok(unsafe {
            Pipe {
                r: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                w: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    /// Move up to a pipe's worth of `data` into `sock`. Some(bytes the socket took), or None
    /// when the socket refused (EAGAIN, non-blocking) or was interrupted. Whatever the socket
    /// did not take is drained from the pipe, so each call starts empty.
    /// `nonblocking`: refuse rather than wait when the socket is full (splice does not heed
    /// the socket's own O_NONBLOCK).
    fn splice_to(&self, sock: i32, data: &[u8], nonblocking: bool) -> Result<Option<usize>> {
        let chunk = data.len().min(16 << 10);
        // SAFETY: valid fds and buffer.
        let w = unsafe { libc::write(self.w.as_raw_fd(), data.as_ptr().cast(), chunk) };
        if w <= 0 {
            bail!("pipe write: {}", std::io::Error::last_os_error());
        }
        let n = unsafe {
            libc::splice(
                self.r.as_raw_fd(),
                std::ptr::null_mut(),
                sock,
                std::ptr::null_mut(),
                w as usize,
                libc::SPLICE_F_MOVE
                    | if nonblocking {
                        libc::SPLICE_F_NONBLOCK
                    } else {
                        0
                    },
            )
        };
        let err = std::io::Error::last_os_error();
        let took = n.max(0) as usize;
        let mut rest = vec![0u8; w as usize - took];
        // SAFETY: valid fd and buffer.
        if !rest.is_empty()
            && unsafe { libc::read(self.r.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) } < 0
        {
            bail!("pipe drain: {}", std::io::Error::last_os_error());
        }
        match n {
            0.. if took > 0 => Ok(Some(took)),
            _ if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
            _ => Err(err.into()),
        }
    }
}
