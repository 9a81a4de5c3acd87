//! `truncwatch lab fetch`: a client that reads as slowly as asked and records ground truth.
use super::{Endpoint, Stream, set_linger0};
use anyhow::{Context, Result, bail};
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
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

/// `--connections` connections, one after another.
fn connections(a: &FetchArgs) -> Result<()> {
    for _ in 0..a.connections {
        let mut s: Box<dyn Stream> = match &a.connect {
            Endpoint::Tcp(addr) => {
                let s =
                    TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).with_context(|| format!("connecting to {p}"))?;
                set_rcvbuf(&s, a.rcvbuf)?;
                Box::new(s)
            }
        };
        let extra: String = a.header.iter().map(|h| format!("{h}\r\n")).collect();
        let req = format!(
            "{} {} HTTP/1.1\r\nHost: lab\r\n{extra}\r\n",
            a.method, a.path
        );
        if a.pipeline {
            s.write_all(req.repeat(a.requests as usize).as_bytes())?;
        }
        for _ in 0..a.requests {
            if !a.pipeline {
                s.write_all(req.as_bytes())?;
            }
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
            Some((_, _, hl)) if a.abort_after.is_some_and(|n| received >= hl + n) => {
                break "aborted";
            }
            // No body by rule (RFC 9112 §6.3): HEAD answers, 1xx, 204, 304.
            Some((status, _, hl))
                if (a.method == "HEAD" || status / 100 == 1 || status == 204 || status == 304)
                    && received >= hl =>
            {
                break "complete";
            }
            Some((_, Some(cl), hl)) if received >= hl + cl => break "complete",
            Some((_, _, hl)) if chunked && received > hl && recent.ends_with(b"\r\n0\r\n\r\n") => {
                break "complete";
            }
            _ => {}
        }
        if Instant::now() > deadline {
            break "timeout";
        }
        let want = match head {
            // Never read past this response's end: the next one is not ours yet.
            Some((_, Some(cl), hl)) => buf.len().min((hl + cl - received) as usize),
            // Until the head is complete, read byte by byte: a HEAD answer has no body to
            // bound the read, and the next answer must stay in the socket (so too when
            // pipelining: it may already be there).
            None if a.method == "HEAD" || a.pipeline => 1,
            _ => buf.len(),
        };
        s.set_read_timeout(deadline.saturating_duration_since(Instant::now()));
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => break "eof",
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "timeout";
            }
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
                let cl = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                head = Some((r.code.unwrap_or(0), cl, hl as u64));
                chunked = r.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        && h.value.to_ascii_lowercase().ends_with(b"chunked")
                });
                // The head and what followed it in this read: the tail check needs the latter.
                recent = data[hl..].to_vec();
                recent.drain(..recent.len().saturating_sub(8));
                if a.send_after_head > 0 {
                    s.write_all(&vec![b'z'; a.send_after_head])?;
                }
            }
        }
        if let (Some(after), Some((_, _, hl))) = (a.stall_after, head)
            && !stalled
            && received >= hl + after
        {
            stalled = true;
            std::thread::sleep(a.stall);
        }
        if !a.read_delay.is_zero() {
            std::thread::sleep(a.read_delay);
        }
    };
    let (status, content_length, head_bytes) = head.unwrap_or((0, None, 0));
    Ok(Received {
        status,
        content_length,
        chunked,
        head_bytes,
        received_bytes: received,
        complete: end == "complete",
        end: end.into(),
    })
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
