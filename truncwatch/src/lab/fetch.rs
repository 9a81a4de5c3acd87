//! `truncwatch lab fetch`: a client that reads as slowly as asked and records ground truth.
use super::{Endpoint, Stream, set_linger0};
use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct FetchArgs {
    /// Server to fetch from: tcp:HOST:PORT or unix:/path.
    #[arg(long)]
    pub connect: Endpoint,
    /// Requests sent one after another on one keep-alive connection.
    #[arg(long, default_value_t = 1)]
    pub requests: u64,
    /// Send all --requests requests at once, before reading any answer (HTTP/1.1 pipelining).
    #[arg(long)]
    pub pipeline: bool,
    /// Clients at once, each on a thread of its own making --connections connections (one
    /// process can then hold many connections blocked together).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
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
    /// Each read waits for all it asks (`recv` with `MSG_WAITALL`; it asks no more than the
    /// response has left), so the kernel copies one read in several passes.
    #[arg(long)]
    pub wait_all: bool,
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
    /// After this many body bytes, stop reading and close the ordinary way (close(2), no
    /// SO_LINGER): a client that has seen enough. Reads stop exactly there. Whether Linux then
    /// ends the connection with a FIN or a reset depends on what is left unread: see --drain.
    #[arg(long)]
    pub close_after: Option<u64>,
    /// Likewise, this long after the request was sent, head or not (an open-ended stream such
    /// as server-sent events, given up on).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub close_after_time: Option<Duration>,
    /// Before such a close, read and discard what arrives until nothing has for 50 ms, so that
    /// nothing is left unread and Linux sends a FIN. Without it the client first waits (up to
    /// 1 s) for bytes it will not read, and closes on them: Linux sends a reset.
    #[arg(long)]
    pub drain: bool,
    /// Sleep between requests on one connection (after an answer, before the next request):
    /// `90ms`, or `MIN..MAX` for gaps spread evenly over that range, to race a server's
    /// keep-alive timeout.
    #[arg(long, default_value = "0ms", value_parser = parse_gap)]
    pub request_gap: Gap,
    /// Send a request body of this many bytes, with Content-Length. With `--header 'Expect:
    /// 100-continue'` the body waits for the server's 100 Continue; if the final answer comes
    /// first, the body is not sent; if nothing comes within 1 s, it is sent anyway (as curl
    /// does).
    #[arg(long)]
    pub body_bytes: Option<u64>,
    /// Give up on a response after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// After the last answer read in full, read and discard whatever else comes until the
    /// server closes (or --timeout passes), then close: a client that lets the server end
    /// the connection. Without it the client closes at once, and bytes the server sent past
    /// the last answer (a desync's next response, say) are left unread: Linux then resets a
    /// TCP connection, and how much of them was acknowledged by then is a race. The drain
    /// reads 64 KiB at a time, ignoring --read-bytes, --read-delay and --wait-all; against a
    /// server that keeps the connection open it waits the whole --timeout.
    #[arg(long)]
    pub until_close: bool,
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
    /// How the response ended: "complete", "eof", "reset", "timeout", "aborted" (by us, with a
    /// reset), "closed" (by us, the ordinary way: --close-after, --close-after-time). A request
    /// that got no answer at all has status 0 and head_bytes 0 ("reset" also when the request
    /// could not even be sent).
    pub end: String,
    /// Bytes of interim heads (1xx but 101, e.g. 100 Continue) that came before this
    /// response's head; not counted in head_bytes nor received_bytes. Printed when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interim_bytes: u64,
    /// End "closed": bytes received but not read when we closed (SIOCINQ). More than 0 makes
    /// Linux reset a TCP connection instead of ending it with a FIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_at_close: Option<u64>,
    /// With --body-bytes: request body bytes sent (0 when the final answer came before the
    /// 100 Continue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_sent: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Received {
    /// A request that got no answer: the connection ended (`end`) before any head.
    fn no_answer(end: &str) -> Received {
        Received {
            status: 0,
            content_length: None,
            chunked: false,
            head_bytes: 0,
            received_bytes: 0,
            complete: false,
            end: end.into(),
            interim_bytes: 0,
            unread_at_close: None,
            body_sent: None,
        }
    }
}

/// --request-gap: from `min` to `max` (equal for a fixed gap).
#[derive(Clone, Copy, Debug)]
pub struct Gap {
    min: Duration,
    max: Duration,
}

/// Gaps handed out so far, by every connection of this process: a connection that loses its
/// race early still moves the sweep on.
static GAPS: AtomicU64 = AtomicU64::new(0);

impl Gap {
    /// The next gap. The k-th is at k × the golden ratio (mod 1) across the range: spread
    /// evenly whatever their count, and the same run to run.
    fn next(&self) -> Duration {
        let k = GAPS.fetch_add(1, Ordering::Relaxed);
        let frac = (k as f64 * 0.618_033_988_749_895).fract();
        self.min + (self.max - self.min).mul_f64(frac)
    }
}

fn parse_gap(s: &str) -> Result<Gap, String> {
    let (lo, hi) = s.split_once("..").unwrap_or((s, s));
    let parse = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| format!("{v:?}: {e}"));
    let (min, max) = (parse(lo)?, parse(hi)?);
    if max < min {
        return Err(format!("{s:?}: the range ends before it starts"));
    }
    Ok(Gap { min, max })
}

pub fn fetch(a: &FetchArgs) -> Result<()> {
    if a.parallel <= 1 {
        return connections(a);
    }
    std::thread::scope(|s| {
        let clients: Vec<_> = (0..a.parallel)
            .map(|_| s.spawn(|| connections(a)))
            .collect();
        clients
            .into_iter()
            .try_for_each(|c| c.join().expect("client thread"))
    })
}

/// The request every connection sends, as bytes.
struct Request {
    head: Vec<u8>,
    body: Vec<u8>,
    /// `Expect: 100-continue`: the body waits for the server's go-ahead.
    expect_continue: bool,
}

impl Request {
    fn new(a: &FetchArgs) -> Request {
        let mut extra: String = a.header.iter().map(|h| format!("{h}\r\n")).collect();
        if let Some(n) = a.body_bytes {
            extra.push_str(&format!("Content-Length: {n}\r\n"));
        }
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: lab\r\n{extra}\r\n",
            a.method, a.path
        );
        let expect_continue = a.body_bytes.is_some()
            && a.header.iter().any(|h| {
                h.split_once(':').is_some_and(|(n, v)| {
                    n.trim().eq_ignore_ascii_case("expect")
                        && v.trim().eq_ignore_ascii_case("100-continue")
                })
            });
        Request {
            head: head.into_bytes(),
            body: vec![b'b'; a.body_bytes.unwrap_or(0) as usize],
            expect_continue,
        }
    }

    /// What goes out before any answer is read.
    fn first_send(&self) -> Vec<u8> {
        if self.expect_continue {
            self.head.clone()
        } else {
            [&self.head[..], &self.body].concat()
        }
    }
}

/// `--connections` connections, one after another.
fn connections(a: &FetchArgs) -> Result<()> {
    let req = Request::new(a);
    for _ in 0..a.connections {
        let s: Box<dyn Stream> = match &a.connect {
            Endpoint::Tcp(addr) => {
                let s =
                    TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect_addr(&super::unix_addr(p)?)
                    .with_context(|| format!("connecting to {p}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
        };
        connection(s, a, &req)?;
    }
    Ok(())
}

/// `--requests` requests on one connection, until one is not answered in full.
fn connection(mut s: Box<dyn Stream>, a: &FetchArgs, req: &Request) -> Result<()> {
    if a.pipeline {
        s.write_all(&req.first_send().repeat(a.requests as usize))?;
    }
    for i in 0..a.requests {
        if !a.pipeline && i > 0 {
            std::thread::sleep(a.request_gap.next());
        }
        let r = if a.pipeline {
            read_response(&mut *s, a, None)?
        } else {
            exchange(&mut *s, a, req)?
        };
        // The whole body promised, but not sent: the server would read our next request as
        // the rest of it.
        let body_owed = r.body_sent.is_some_and(|n| n < req.body.len() as u64);
        if !r.complete || body_owed {
            if r.end == "aborted" {
                set_linger0(&*s)?;
            }
            // Close before printing: what --close-after measured must be what close(2) finds.
            drop(s);
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!("{}", serde_json::to_string(&r)?);
    }
    if a.until_close {
        read_until_close(&mut *s, a.timeout)?;
    }
    Ok(())
}

/// Read and discard until the peer closes (end of stream or reset) or `timeout` passes.
fn read_until_close(s: &mut dyn Stream, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(left);
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if gone(&e) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Send one request and read its answer. A request the server's end refused (it closed and
/// reset before we wrote) got no answer.
fn exchange(s: &mut dyn Stream, a: &FetchArgs, req: &Request) -> Result<Received> {
    match s.write_all(&req.first_send()) {
        Ok(()) => {}
        Err(e) if gone(&e) => return Ok(Received::no_answer("reset")),
        Err(e) => return Err(e.into()),
    }
    let pending = req.expect_continue.then_some(&req.body[..]);
    let mut r = read_response(s, a, pending)?;
    if !req.expect_continue && a.body_bytes.is_some() {
        r.body_sent = Some(req.body.len() as u64);
    }
    Ok(r)
}

fn gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
}

fn set_rcvbuf(s: &impl AsRawFd, size: Option<usize>) -> Result<()> {
    let Some(size) = size else { return Ok(()) };
    let v = size as libc::c_int;
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        bail!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A response head, as read.
#[derive(Clone, Copy, Debug)]
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    /// Bytes, up to and including the blank line.
    len: u64,
}

impl Head {
    /// The head at the start of `data`, once it is all there.
    fn parse(data: &[u8]) -> Result<Option<Head>> {
        let mut hs = vec![httparse::EMPTY_HEADER; 1024]; // heads of any size the servers send
        let mut r = httparse::Response::new(&mut hs);
        let httparse::Status::Complete(len) = r.parse(data)? else {
            return Ok(None);
        };
        let header = |name: &str| r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
        Ok(Some(Head {
            status: r.code.unwrap_or(0),
            content_length: header("content-length")
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok()),
            chunked: r.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.to_ascii_lowercase().ends_with(b"chunked")
            }),
            len: len as u64,
        }))
    }

    /// 1xx but 101 (RFC 9110 §15.2): the final answer to the same request follows.
    fn interim(&self) -> bool {
        self.status / 100 == 1 && self.status != 101
    }

    /// No body by rule (RFC 9112 §6.3): HEAD answers, 1xx, 204, 304.
    fn bodiless(&self, method: &str) -> bool {
        method == "HEAD" || self.status / 100 == 1 || self.status == 204 || self.status == 304
    }
}

/// How long an `Expect: 100-continue` body waits for the go-ahead (curl's default).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// One response as it is read.
struct Progress<'a> {
    a: &'a FetchArgs,
    /// When the request went out (--close-after-time counts from there).
    sent_at: Instant,
    deadline: Instant,
    /// A body waiting for `100 Continue`.
    pending: Option<&'a [u8]>,
    body_sent: Option<u64>,
    /// Bytes received up to the final head (interim heads are moved to `interim`).
    data: Vec<u8>,
    received: u64,
    interim: u64,
    head: Option<Head>,
    /// The last bytes received, to see a chunked body's last chunk arrive.
    recent: Vec<u8>,
    stalled: bool,
}

impl Progress<'_> {
    /// Why reading this response is over, if it is, before the next read.
    fn over(&self) -> Option<&'static str> {
        let a = self.a;
        let close_time = a
            .close_after_time
            .is_some_and(|t| self.sent_at.elapsed() >= t);
        let Some(h) = self.head else {
            return close_time.then_some("closed");
        };
        let body = self.received - h.len;
        match () {
            _ if a.abort_after.is_some_and(|n| body >= n) => Some("aborted"),
            _ if h.bodiless(&a.method) => Some("complete"),
            _ if h.content_length.is_some_and(|cl| body >= cl) => Some("complete"),
            _ if h.chunked && body > 0 && self.recent.ends_with(b"\r\n0\r\n\r\n") => {
                Some("complete")
            }
            _ if close_time || a.close_after.is_some_and(|n| body >= n) => Some("closed"),
            _ => None,
        }
    }

    /// Bytes to ask for in the next read.
    fn want(&self, buf: usize) -> usize {
        let a = self.a;
        let Some(h) = self.head else {
            // Until the head is complete, read byte by byte where what follows it must stay
            // in the socket: a HEAD answer has no body to bound the read, the next pipelined
            // answer may be there already, and --close-after stops at an exact byte.
            let exact = a.method == "HEAD" || a.pipeline || a.close_after.is_some();
            return if exact { 1 } else { buf };
        };
        // Never read past this response's end (the next one is not ours yet), nor past the
        // point where we close.
        let left = |n: u64| (h.len + n).saturating_sub(self.received) as usize;
        let bounds = [h.content_length, a.close_after];
        bounds.into_iter().flatten().map(left).fold(buf, usize::min)
    }

    /// When the next read must give up waiting, to act on time.
    fn wake_at(&self) -> Instant {
        let close = self.a.close_after_time.map(|t| self.sent_at + t);
        let go_ahead = self.pending.map(|_| self.sent_at + CONTINUE_WAIT);
        [close, go_ahead]
            .into_iter()
            .flatten()
            .fold(self.deadline, Instant::min)
    }

    /// `n` bytes were read into `buf`.
    fn took(&mut self, s: &mut dyn Stream, buf: &[u8]) -> Result<()> {
        self.received += buf.len() as u64;
        self.recent.extend_from_slice(buf);
        self.recent.drain(..self.recent.len().saturating_sub(8));
        if self.head.is_none() {
            self.data.extend_from_slice(buf);
            self.find_head(s)?;
        }
        let a = self.a;
        if let (Some(after), Some(h)) = (a.stall_after, self.head)
            && !self.stalled
            && self.received >= h.len + after
        {
            self.stalled = true;
            std::thread::sleep(a.stall);
        }
        Ok(())
    }

    /// Look for the final head in what arrived so far, setting interim heads aside.
    fn find_head(&mut self, s: &mut dyn Stream) -> Result<()> {
        while let Some(h) = Head::parse(&self.data)? {
            let len = h.len as usize;
            if h.interim() {
                self.interim += h.len;
                self.received -= h.len;
                self.data.drain(..len);
                self.send_pending(s)?;
                continue;
            }
            self.head = Some(h);
            // The head and what followed it in this read: the tail check needs the latter.
            self.recent = self.data[len..].to_vec();
            self.recent.drain(..self.recent.len().saturating_sub(8));
            if self.pending.take().is_some() {
                // The final answer came first: the body stays unsent.
                self.body_sent = Some(0);
            }
            if self.a.send_after_head > 0 {
                s.write_all(&vec![b'z'; self.a.send_after_head])?;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Send the body held back for `100 Continue`.
    fn send_pending(&mut self, s: &mut dyn Stream) -> Result<()> {
        if let Some(body) = self.pending.take() {
            s.write_all(body)?;
            self.body_sent = Some(body.len() as u64);
        }
        Ok(())
    }

    fn into_received(self, end: &str, unread_at_close: Option<u64>) -> Received {
        let h = self.head.unwrap_or(Head {
            status: 0,
            content_length: None,
            chunked: false,
            len: 0,
        });
        Received {
            status: h.status,
            content_length: h.content_length,
            chunked: h.chunked,
            head_bytes: h.len,
            received_bytes: self.received,
            complete: end == "complete",
            end: end.into(),
            interim_bytes: self.interim,
            unread_at_close,
            body_sent: self.body_sent,
        }
    }
}

/// Read one response. `pending`: a request body to send once `100 Continue` arrives.
fn read_response(s: &mut dyn Stream, a: &FetchArgs, pending: Option<&[u8]>) -> Result<Received> {
    let now = Instant::now();
    let mut p = Progress {
        a,
        sent_at: now,
        deadline: now + a.timeout,
        pending,
        body_sent: None,
        data: Vec::new(),
        received: 0,
        interim: 0,
        head: None,
        recent: Vec::new(),
        stalled: false,
    };
    let mut buf = vec![0u8; a.read_bytes.max(1)];
    let end = loop {
        if let Some(end) = p.over() {
            break end;
        }
        if Instant::now() > p.deadline {
            break "timeout";
        }
        if p.pending.is_some() && Instant::now() >= p.sent_at + CONTINUE_WAIT {
            p.send_pending(s)?;
        }
        s.set_read_timeout(p.wake_at().saturating_duration_since(Instant::now()));
        let want = p.want(buf.len());
        let read = if a.wait_all {
            recv_wait_all(s, &mut buf[..want])
        } else {
            s.read(&mut buf[..want])
        };
        let n = match read {
            Ok(0) => break "eof",
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            // Woken to act on time: the checks above say what to do.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        };
        p.took(s, &buf[..n])?;
        if !a.read_delay.is_zero() {
            std::thread::sleep(a.read_delay);
        }
    };
    let (end, unread) = match end {
        "closed" => close_as_asked(s, a, &mut p, &mut buf)?,
        _ => (end, None),
    };
    Ok(p.into_received(end, unread))
}

/// `recv(2)` with `MSG_WAITALL`: returns when `buf` is full, at the end of the stream, or at
/// the read timeout with what came by then.
fn recv_wait_all(s: &dyn Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_WAITALL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// How long the stream must stay quiet before a --drain close.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// The longest a close waits: for quiet (--drain), or for bytes to leave unread.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Make the close what was asked: with --drain, nothing left unread (a FIN); without, bytes
/// left unread (a reset). Returns how the response ended after all (a drain may read it to its
/// end: then it is complete, and nothing is closed) and the bytes unread just before the close.
fn close_as_asked(
    s: &mut dyn Stream,
    a: &FetchArgs,
    p: &mut Progress,
    buf: &mut [u8],
) -> Result<(&'static str, Option<u64>)> {
    if !a.drain {
        wait_readable(s, CLOSE_WAIT);
        return Ok(("closed", Some(unread(s))));
    }
    let until = Instant::now() + CLOSE_WAIT;
    while Instant::now() < until {
        s.set_read_timeout(DRAIN_QUIET);
        match s.read(buf) {
            // Drained bytes were read by the application: they count as received. Only this
            // request was sent, so all that can come is the rest of its answer.
            Ok(n) if n > 0 => p.took(s, &buf[..n])?,
            _ => break,
        }
        if p.over() == Some("complete") {
            return Ok(("complete", None));
        }
    }
    Ok(("closed", Some(unread(s))))
}

fn wait_readable(s: &dyn Stream, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&raw mut fd, 1, timeout.as_millis() as libc::c_int) };
}

/// Bytes received but not read yet (SIOCINQ, which is FIONREAD), on TCP and Unix sockets.
fn unread(s: &dyn Stream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: valid fd and int out-parameter.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    if r == 0 { n.max(0) as u64 } else { 0 }
}

trait ReadTimeout {
    fn set_read_timeout(&mut self, d: Duration);
}

impl ReadTimeout for dyn Stream + '_ {
    fn set_read_timeout(&mut self, d: Duration) {
        let d = d.max(Duration::from_millis(1));
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Read;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        a: FetchArgs,
    }

    fn args(extra: &[&str]) -> FetchArgs {
        let argv = ["fetch", "--connect", "unix:/unused"].into_iter();
        Cli::try_parse_from(argv.chain(extra.iter().copied()))
            .unwrap()
            .a
    }

    /// Read up to the end of a request head, one byte at a time (nothing past it).
    fn read_head(s: &mut UnixStream) -> Vec<u8> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8];
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        head
    }

    #[test]
    fn gaps_fixed_or_spread_over_a_range() {
        let g = parse_gap("90ms").unwrap();
        assert_eq!(
            (g.min, g.max),
            (Duration::from_millis(90), Duration::from_millis(90))
        );
        assert_eq!(g.next(), Duration::from_millis(90));
        let g = parse_gap("90ms..110ms").unwrap();
        let gaps: Vec<Duration> = (0..50).map(|_| g.next()).collect();
        assert!(gaps.iter().all(|d| (g.min..=g.max).contains(d)));
        assert!(
            gaps.iter().any(|d| d.as_millis() < 95) && gaps.iter().any(|d| d.as_millis() > 105)
        );
        assert!(parse_gap("110ms..90ms").is_err());
    }

    #[test]
    fn interim_heads_are_set_aside() {
        let h = Head::parse(b"HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.interim() && h.len == 25);
        let h = Head::parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.interim());
        let h = Head::parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n").unwrap();
        assert!(h.is_some_and(|h| h.chunked && h.content_length.is_none()));
        assert!(
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
    }

    /// The body waits for `100 Continue`; the final answer's head is reported apart from it.
    #[test]
    fn expect_continue_sends_the_body_after_the_go_ahead() {
        let a = args(&["--body-bytes", "10", "--header", "Expect: 100-continue"]);
        let req = Request::new(&a);
        let (mut c, mut srv) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let head = read_head(&mut srv);
            srv.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            let mut body = [0u8; 10];
            srv.read_exact(&mut body).unwrap();
            srv.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let r = exchange(&mut c, &a, &req).unwrap();
        assert!(server.join().unwrap().contains("Content-Length: 10\r\n"));
        assert_eq!((r.status, r.head_bytes, r.received_bytes), (200, 38, 40));
        assert_eq!(
            (r.interim_bytes, r.body_sent, r.end.as_str()),
            (25, Some(10), "complete")
        );
    }

    /// --close-after stops reading exactly there; unread bytes are left, or drained first.
    #[test]
    fn close_after_leaves_bytes_unread_unless_drained() {
        for (drain, unread) in [(false, true), (true, false)] {
            let mut extra = vec!["--close-after", "1000"];
            extra.extend(drain.then_some("--drain"));
            let a = args(&extra);
            let (mut c, mut srv) = UnixStream::pair().unwrap();
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
            srv.write_all(head.as_bytes()).unwrap();
            srv.write_all(&[b'x'; 5000]).unwrap();
            let r = read_response(&mut c, &a, None).unwrap();
            assert_eq!((r.end.as_str(), r.complete), ("closed", false));
            let (hl, got) = (head.len() as u64, r.received_bytes);
            assert_eq!(got, if drain { hl + 5000 } else { hl + 1000 });
            assert_eq!(r.unread_at_close, Some(if unread { 4000 } else { 0 }));
        }
    }

    /// --until-close reads what comes after the last answer, late bytes included, up to the
    /// server's close, and stops there (long before its timeout): nothing is left unread for
    /// close(2) to reset the connection on.
    #[test]
    fn until_close_reads_to_the_servers_close() {
        let (mut c, mut srv) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let late = std::thread::spawn(move || {
            srv.write_all(&[b'x'; 5000]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            srv.write_all(&[b'y'; 5000]).unwrap();
        });
        read_until_close(&mut c, Duration::from_secs(10)).unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(5));
        late.join().unwrap();
        assert_eq!(unread(&c), 0);
    }

    /// A request sent to a connection the server has closed gets a line of its own.
    #[test]
    fn a_request_the_server_closed_on_gets_no_answer() {
        let a = args(&[]);
        let req = Request::new(&a);
        let (mut c, srv) = UnixStream::pair().unwrap();
        drop(srv);
        let r = exchange(&mut c, &a, &req).unwrap();
        assert_eq!((r.status, r.head_bytes, r.end.as_str()), (0, 0, "reset"));
    }
}
