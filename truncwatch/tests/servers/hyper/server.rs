//! A tiny HTTP/1 server on hyper for truncwatch's tests (tests/hyper.rs), one source built
//! against two pinned hyper releases: v1_10/ (hyper 1.10.1, whose connection shutdown drops
//! what hyper still buffers: it cuts slow readers short) and v1_11/ (hyper 1.11.0, which
//! flushes first). Each has a manifest and a lock file of its own: one Cargo graph may not
//! hold two semver-compatible versions of a crate.
//!
//! Every request is answered `200` with one body of `--body` bytes (`Full<Bytes>`, so hyper
//! sets Content-Length); request bodies are never read (the request is dropped at once, as an
//! early answer to an upload does). It listens on 127.0.0.1, over TCP, or over TLS with
//! tokio-rustls (rustls with the ring provider) given a PEM certificate and key.
//!
//! Usage: hyper-1-1x-x PORT [--body BYTES] [--tls CERT_PEM KEY_PEM] [--half-close]
//!
//! PORT 0 lets the kernel pick one. Prints `listening <port>` on stdout once it accepts.
//! `--half-close` sets `http1::Builder::half_close(true)`; without it hyper's default (false)
//! takes a client's half-close as an abort.
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const USAGE: &str = "usage: PORT [--body BYTES] [--tls CERT_PEM KEY_PEM] [--half-close]";

/// The command line, parsed.
struct Options {
    port: u16,
    /// Body bytes per response (4 MiB unless told).
    body: usize,
    /// PEM files: certificate chain, private key.
    tls: Option<(String, String)>,
    half_close: bool,
}

fn options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let port = args.next().ok_or("PORT missing")?;
    let mut o = Options {
        port: port.parse().map_err(|e| format!("PORT {port:?}: {e}"))?,
        body: 4 << 20,
        tls: None,
        half_close: false,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--body" => {
                let v = value()?;
                o.body = v.parse().map_err(|e| format!("--body {v:?}: {e}"))?;
            }
            "--tls" => o.tls = Some((value()?, value()?)),
            "--half-close" => o.half_close = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(o)
}

/// A TLS acceptor for the certificate chain and key in these PEM files; panics with the reason
/// when they cannot be read.
fn acceptor(cert: &str, key: &str) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("certificate {cert}: {e}"));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("key {key}: {e}"));
    // ring, deprecated in rustls 0.23.48 only for lacking post-quantum key exchange (of no
    // matter on loopback): it builds with a C compiler alone, where aws-lc needs cmake.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a usable certificate and key");
    TlsAcceptor::from(Arc::new(config))
}

/// One connection, until hyper ends it: every request answered with `body`, unread.
async fn serve<I>(io: I, body: Bytes, half_close: bool) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let answer = service_fn(move |_request: Request<Incoming>| {
        let body = body.clone();
        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
    });
    http1::Builder::new()
        .half_close(half_close)
        .serve_connection(io, answer)
        .await
}

// One thread: the process's `comm` (what the agent reports) is the binary's name.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let o = options(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2)
    });
    let body = Bytes::from(vec![b'h'; o.body]);
    let tls = o.tls.as_ref().map(|(cert, key)| acceptor(cert, key));
    let listener = TcpListener::bind(("127.0.0.1", o.port))
        .await
        .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{}: {e}", o.port));
    let port = listener.local_addr().expect("a bound address").port();
    // Rust's stdout flushes at each newline: the test reading this line sees it at once.
    println!("listening {port}");
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let (body, tls, half_close) = (body.clone(), tls.clone(), o.half_close);
        tokio::spawn(async move {
            let served = match tls {
                None => serve(TokioIo::new(tcp), body, half_close).await,
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => serve(TokioIo::new(stream), body, half_close).await,
                    Err(e) => return eprintln!("TLS handshake: {e}"),
                },
            };
            if let Err(e) = served {
                eprintln!("connection: {e}");
            }
        });
    }
}
