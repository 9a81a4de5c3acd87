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
