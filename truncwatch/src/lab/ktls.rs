//! `truncwatch lab ktls`: one HTTP/1 exchange over kernel TLS (kTLS) on loopback, server and
//! client in one process. The kernel encrypts: the server sets `TLS_TX` on its socket, the
//! client `TLS_RX` on its own, both with one fixed AES-GCM-128 key (no handshake: this is a lab,
//! not a secure channel), and both then use plain `send`/`recv`. The wire carries TLS 1.2
//! records; the applications hand the kernel plaintext through the socket calls the agent
//! watches. The server promises `--body` bytes and sends them all, or only `--cut-at` of them and
//! closes; the client prints what it got (one JSON line, as `lab fetch` does).
//!
//! Needs the kernel's `tls` module (and `gcm`); fails with the kernel's error where it is
//! missing (`TCP_ULP`: ENOENT).
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

#[derive(Clone, Debug, clap::Args)]
pub struct KtlsArgs {
    /// Body bytes promised (Content-Length).
    #[arg(long, default_value_t = 8_000_000)]
    pub body: u64,
    /// Send only this many body bytes, then close (a short write). Default: all of them.
    #[arg(long)]
    pub cut_at: Option<u64>,
}

/// `struct tls12_crypto_info_aes_gcm_128` (include/uapi/linux/tls.h): version and cipher,
/// then IV, key, salt and record sequence number.
#[repr(C)]
struct CryptoInfo {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

/// include/uapi/linux/tls.h.
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_1_2_VERSION: u16 = 0x0303;
const TLS_CIPHER_AES_GCM_128: u16 = 51;

/// Turns `s` into a kTLS socket in one direction (`TLS_TX` or `TLS_RX`) with the lab's key.
fn enable(s: &TcpStream, direction: libc::c_int) -> Result<()> {
    let fd = s.as_raw_fd();
    let ulp = b"tls\0";
    // SAFETY: valid fd; the option value is a NUL-terminated name of its length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as u32,
        )
    };
    if r != 0 {
        bail!(
            "TCP_ULP \"tls\": {} (the kernel's tls module is not loaded?)",
            std::io::Error::last_os_error()
        );
    }
    let info = CryptoInfo {
        version: TLS_1_2_VERSION,
        cipher_type: TLS_CIPHER_AES_GCM_128,
        iv: [1; 8],
        key: [2; 16],
        salt: [3; 4],
        rec_seq: [0; 8],
    };
    // SAFETY: valid fd; the option value is the kernel's struct, of its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_TLS,
            direction,
            (&raw const info).cast(),
            size_of::<CryptoInfo>() as u32,
        )
    };
    if r != 0 {
        bail!(
            "SOL_TLS {}: {} (AES-GCM in the kernel: the gcm module?)",
            if direction == TLS_TX {
                "TLS_TX"
            } else {
                "TLS_RX"
            },
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub fn ktls(a: &KtlsArgs) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (body, cut) = (a.body, a.cut_at.unwrap_or(a.body).min(a.body));
    let server = std::thread::Builder::new()
        .name("tw-lab-server".into())
        .spawn(move || -> Result<()> {
            let (mut s, _) = listener.accept()?;
            // The request comes in plain (the client sends without TLS_TX).
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                req.extend_from_slice(&buf[..n]);
            }
            enable(&s, TLS_TX)?;
            s.write_all(super::response_head(body).as_bytes())?;
            s.write_all(&vec![b'x'; cut as usize])?;
            Ok(()) // dropped: the socket closes (a FIN)
        })?;
    let mut c = TcpStream::connect(("127.0.0.1", port)).context("connecting")?;
    let local = c.local_addr()?;
    // Before the request: the response's records then never arrive ahead of the key.
    enable(&c, TLS_RX)?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let got = super::read_one_response(|buf| c.read(buf).unwrap_or(0), body);
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the lab server panicked"))??;
    super::print_exchange(port, local, got)
}
