//! `truncwatch lab`: a small HTTP/1 server that can cut responses short the way real servers
//! do, and a client that reads slowly and records ground truth. Tests, the demo and operators
//! use them to reproduce truncations on a host.
//!
//! Both print one JSON line per response on stdout: what was really sent and received.
mod fetch;
mod heads;
mod ktls;
mod serve;
mod tls;

pub use fetch::{FetchArgs, Received, fetch};
pub use ktls::{KtlsArgs, ktls};
pub use serve::{Mode, SendWith, ServeArgs, serve};
pub use tls::{TlsArgs, tls};

use anyhow::{Result, bail};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// `tcp:HOST:PORT` or `unix:PATH` (`unix:@NAME`: an abstract socket name).
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

/// A Unix socket address: `@NAME` is the abstract name NAME, anything else a path.
fn unix_addr(p: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match p.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(p),
    }
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

fn set_linger0(s: &dyn Stream) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    if r != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The head of the lab's HTTPS and kTLS responses: 200, `body` bytes promised.
fn response_head(body: u64) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n"
    )
}

/// A lab client reading one response with `read` (bytes read; 0 at the end of the stream or on
/// an error: the client counts what it got) until the end, or `body` bytes past the head.
/// Returns (head bytes, bytes received, whether the whole body came).
fn read_one_response(mut read: impl FnMut(&mut [u8]) -> usize, body: u64) -> (usize, usize, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut head_bytes = None;
    loop {
        let n = read(&mut buf);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if head_bytes.is_none() {
            head_bytes = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
        if head_bytes.is_some_and(|h| (got.len() - h) as u64 >= body) {
            break;
        }
    }
    let head = head_bytes.unwrap_or(got.len());
    (head, got.len(), (got.len() - head) as u64 == body)
}

/// The one JSON line of `lab tls` and `lab ktls`: the server's and the client's addresses and
/// what the client got (as `lab fetch` prints per response).
fn print_exchange(
    port: u16,
    client: std::net::SocketAddr,
    (head, received, complete): (usize, usize, bool),
) -> Result<()> {
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::json!({
            "server": format!("127.0.0.1:{port}"),
            "client": client.to_string(),
            "head_bytes": head,
            "received_bytes": received,
            "complete": complete,
        })
    )?;
    Ok(())
}
