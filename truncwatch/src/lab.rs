//! `truncwatch lab`: a small HTTP/1 server that can cut responses short the way real servers
//! do, and a client that reads slowly and records ground truth. Tests, the demo and operators
//! use them to reproduce truncations on a host.
//!
//! Both print one JSON line per response on stdout: what was really sent and received.
use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// `tcp:HOST:PORT` or `unix:PATH`.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Tcp(String),
    Unix(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("tcp", a)) if !a.is_empty() => Ok(Endpoint::Tcp(a.to_string())),
            Some(("unix", p)) if !p.is_empty() => Ok(Endpoint::Unix(p.to_string())),
            _ => Err(format!("{s:?}: expected tcp:HOST:PORT or unix:PATH")),
        }
    }
}

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
    /// Hand the kernel the whole response, then close with SO_LINGER {1, 0}: a reset as well.
    Linger0,
    /// Promise the whole body, send only --truncate-at bytes of it, close: an upstream that
    /// dies mid-response.
    Truncate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SendWith {
    Write,
    Writev,
    Sendmsg,
    /// The head with write, the body through a pipe with splice(2), as proxies do.
    Splice,
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
    /// and body as two iovecs).
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
    /// Body bytes sent in --mode truncate.
    #[arg(long, default_value_t = 0)]
    pub truncate_at: u64,
    /// Exit after this many connections (0: serve forever).
    #[arg(long, default_value_t = 0)]
    pub connections: u64,
}

#[derive(Clone, Debug, clap::Args)]
pub struct FetchArgs {
    /// Server to fetch from: tcp:HOST:PORT or unix:/path.
    #[arg(long)]
    pub connect: Endpoint,
    /// Requests sent one after another on one keep-alive connection.
    #[arg(long, default_value_t = 1)]
    pub requests: u64,
    /// Connections, one after another, each carrying --requests requests.
    #[arg(long, default_value_t = 1)]
    pub connections: u64,
    /// Path to request.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Request method; HEAD responses carry no body.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Read at most this many bytes per read.
    #[arg(long, default_value_t = 65536)]
    pub read_bytes: usize,
    /// Sleep this long after each read (a slow but steady reader).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub read_delay: Duration,
    /// After this many body bytes, stall once for --stall (a reader that stops, then resumes).
    #[arg(long)]
    pub stall_after: Option<u64>,
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub stall: Duration,
    /// Receive buffer size to ask for (SO_RCVBUF); small values fill the sender's buffer sooner.
    #[arg(long)]
    pub rcvbuf: Option<usize>,
    /// Once the response head has arrived, send this many more bytes (input the server will
    /// not read).
    #[arg(long, default_value_t = 0)]
    pub send_after_head: usize,
    /// Extra request header (`Name: value`), repeatable.
    #[arg(long)]
    pub header: Vec<String>,
    /// After this many body bytes, abort: close with SO_LINGER {1, 0}, sending a reset.
    #[arg(long)]
    pub abort_after: Option<u64>,
    /// Give up on a response after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

trait Stream: Read + Write + AsRawFd + Send {
    fn shutdown_write(&self) -> std::io::Result<()>;
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
}
impl Stream for TcpStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
}
impl Stream for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
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
            let l = UnixListener::bind(path).with_context(|| format!("listening on {path}"))?;
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
    Ok(std::thread::Builder::new().name("tw-lab-server".into()).spawn(move || {
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
        if a.mode == Mode::Truncate {
            resp.truncate(head.len() + a.truncate_at as usize);
        }
        if matches!(a.mode, Mode::ShortShutdown | Mode::ShortClose) {
            s.set_nonblocking(true)?;
        }
        let sent = send_response(&*s, &resp, head.len(), a)?;
        println!("{}", serde_json::json!({"sent_bytes": sent, "expected_bytes": resp.len()}));
        match a.mode {
            Mode::Full if a.unframed => return Ok(()), // the close ends the body
            Mode::Full => continue,
            Mode::ShortShutdown => s.shutdown_write()?,
            Mode::ShortClose | Mode::Truncate => {}
            // Long enough for the client's extra input to arrive, not for it to read everything.
            Mode::ResetUnread => std::thread::sleep(Duration::from_millis(100)),
            Mode::Linger0 => set_linger0(&*s)?,
        }
        return Ok(()); // dropping the stream closes it
    }
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
    let pad = if a.head_pad > 0 { format!("X-Pad: {}\r\n", "p".repeat(a.head_pad)) } else { String::new() };
    let version = if a.unframed { "1.0" } else { "1.1" };
    let head = format!("HTTP/{version} 200 OK\r\nContent-Type: application/octet-stream\r\n{pad}{framing}\r\n");
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
            if unsafe { libc::write(s.as_raw_fd(), line.as_ptr().cast(), line.len()) } != line.len() as isize {
                bail!("writing a head line: {}", std::io::Error::last_os_error());
            }
        }
        sent = head_len;
    }
    let pipe = if a.send_with == SendWith::Splice { Some(Pipe::new()?) } else { None };
    while sent < resp.len() {
        if let (Some(p), true) = (&pipe, sent >= head_len) {
            match p.splice_to(s.as_raw_fd(), &resp[sent..])? {
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
        let iov = |b: &[u8]| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() };
        let iovs = [iov(&rest[..split]), iov(&rest[split..])];
        let (iovs, cnt) = if split == 0 { (&iovs[1..], 1) } else { (&iovs[..], 2) };
        let fd = s.as_raw_fd();
        // SAFETY: the iovecs point into `resp`, which outlives the call.
        let n = unsafe {
            match a.send_with {
                SendWith::Write => libc::write(fd, rest.as_ptr().cast(), rest.len()),
                SendWith::Splice => libc::write(fd, rest.as_ptr().cast(), split), // the head
                SendWith::Writev => libc::writev(fd, iovs.as_ptr(), cnt),
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
        Ok(unsafe { Pipe { r: std::os::fd::OwnedFd::from_raw_fd(fds[0]), w: std::os::fd::OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// Move up to a pipe's worth of `data` into `sock`. Some(bytes the socket took), or None
    /// when the socket refused (EAGAIN, non-blocking) or was interrupted. Whatever the socket
    /// did not take is drained from the pipe, so each call starts empty.
    fn splice_to(&self, sock: i32, data: &[u8]) -> Result<Option<usize>> {
        let chunk = data.len().min(16 << 10);
        // SAFETY: valid fds and buffer.
        let w = unsafe { libc::write(self.w.as_raw_fd(), data.as_ptr().cast(), chunk) };
        if w <= 0 {
            bail!("pipe write: {}", std::io::Error::last_os_error());
        }
        let n = unsafe {
            libc::splice(self.r.as_raw_fd(), std::ptr::null_mut(), sock, std::ptr::null_mut(), w as usize, libc::SPLICE_F_MOVE)
        };
        let err = std::io::Error::last_os_error();
        let took = n.max(0) as usize;
        let mut rest = vec![0u8; w as usize - took];
        // SAFETY: valid fd and buffer.
        if !rest.is_empty() && unsafe { libc::read(self.r.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) } < 0 {
            bail!("pipe drain: {}", std::io::Error::last_os_error());
        }
        match n {
            0.. if took > 0 => Ok(Some(took)),
            _ if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
            _ => Err(err.into()),
        }
    }
}

/// Ground truth of one response, as the client saw it.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Received {
    pub status: u16,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub head_bytes: u64,
    /// Head + body bytes received.
    pub received_bytes: u64,
    pub complete: bool,
    /// How the response ended: "complete", "eof", "reset", "timeout", "aborted" (by us).
    pub end: String,
}

pub fn fetch(a: &FetchArgs) -> Result<()> {
    for _ in 0..a.connections {
        let mut s: Box<dyn Stream> = match &a.connect {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).with_context(|| format!("connecting to {p}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
        };
        for _ in 0..a.requests {
            let extra: String = a.header.iter().map(|h| format!("{h}\r\n")).collect();
            let req = format!("{} {} HTTP/1.1\r\nHost: lab\r\n{extra}\r\n", a.method, a.path);
            s.write_all(req.as_bytes())?;
            let r = read_response(&mut *s, a)?;
            println!("{}", serde_json::to_string(&r)?);
            if r.end == "aborted" {
                set_linger0(&*s)?;
            }
            if !r.complete {
                break;
            }
        }
    }
    Ok(())
}

fn set_linger0(s: &dyn Stream) -> Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const l).cast(), size_of::<libc::linger>() as u32)
    };
    if r != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_rcvbuf(s: &impl AsRawFd, size: Option<usize>) -> Result<()> {
    let Some(size) = size else { return Ok(()) };
    let v = size as libc::c_int;
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const v).cast(), size_of::<libc::c_int>() as u32)
    };
    if r != 0 {
        bail!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn read_response(s: &mut dyn Stream, a: &FetchArgs) -> Result<Received> {
    let deadline = Instant::now() + a.timeout;
    let mut buf = vec![0u8; a.read_bytes.max(1)];
    let mut data = Vec::new();
    let mut received = 0u64;
    let mut head: Option<(u16, Option<u64>, u64)> = None;
    let mut chunked = false;
    // The last bytes received, to see a chunked body's last chunk arrive.
    let mut recent: Vec<u8> = Vec::new();
    let mut stalled = false;
    let end = loop {
        match head {
            Some((_, _, hl)) if a.abort_after.is_some_and(|n| received >= hl + n) => break "aborted",
            // No body by rule (RFC 9112 §6.3): HEAD answers, 1xx, 204, 304.
            Some((status, _, hl)) if (a.method == "HEAD" || status / 100 == 1 || status == 204 || status == 304) && received >= hl => {
                break "complete"
            }
            Some((_, Some(cl), hl)) if received >= hl + cl => break "complete",
            Some((_, _, hl)) if chunked && received > hl && recent.ends_with(b"\r\n0\r\n\r\n") => break "complete",
            _ => {}
        }
        if Instant::now() > deadline {
            break "timeout";
        }
        let want = match head {
            // Never read past this response's end: the next one is not ours yet.
            Some((_, Some(cl), hl)) => buf.len().min((hl + cl - received) as usize),
            // Until the head is complete, read byte by byte: a HEAD answer has no body to
            // bound the read, and the next answer must stay in the socket.
            None if a.method == "HEAD" => 1,
            _ => buf.len(),
        };
        s.set_read_timeout(deadline.saturating_duration_since(Instant::now()));
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => break "eof",
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break "timeout",
            Err(e) => return Err(e.into()),
        };
        received += n as u64;
        recent.extend_from_slice(&buf[..n]);
        recent.drain(..recent.len().saturating_sub(8));
        if head.is_none() {
            data.extend_from_slice(&buf[..n]);
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(hl) = r.parse(&data)? {
                let cl = r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                head = Some((r.code.unwrap_or(0), cl, hl as u64));
                chunked = r.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.to_ascii_lowercase().ends_with(b"chunked")
                });
                // The head and what followed it in this read: the tail check needs the latter.
                recent = data[hl..].to_vec();
                recent.drain(..recent.len().saturating_sub(8));
                if a.send_after_head > 0 {
                    s.write_all(&vec![b'z'; a.send_after_head])?;
                }
            }
        }
        if let (Some(after), Some((_, _, hl))) = (a.stall_after, head) {
            if !stalled && received >= hl + after {
                stalled = true;
                std::thread::sleep(a.stall);
            }
        }
        if !a.read_delay.is_zero() {
            std::thread::sleep(a.read_delay);
        }
    };
    let (status, content_length, head_bytes) = head.unwrap_or((0, None, 0));
    Ok(Received { status, content_length, chunked, head_bytes, received_bytes: received, complete: end == "complete", end: end.into() })
}

trait ReadTimeout {
    fn set_read_timeout(&mut self, d: Duration);
}
impl ReadTimeout for dyn Stream + '_ {
    fn set_read_timeout(&mut self, d: Duration) {
        let d = d.max(Duration::from_millis(1));
        let tv = libc::timeval { tv_sec: d.as_secs() as libc::time_t, tv_usec: d.subsec_micros() as libc::suseconds_t };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), size_of::<libc::timeval>() as u32);
        }
    }
}
