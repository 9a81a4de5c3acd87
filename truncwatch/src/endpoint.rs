//! The HTTP endpoint: `/metrics` (Prometheus text), `/readyz` and `/healthz`.
//!
//! It serves a snapshot the agent's loop refreshes every second, so a scrape never waits on
//! (or slows down) the event path. Small and dependency-free on purpose: three GET routes.
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the endpoint serves, written by the agent's loop.
#[derive(Default)]
pub struct Shared {
    pub metrics: Mutex<String>,
    /// Programs attached, events flowing, and the last canary (if any) passed.
    pub ready: AtomicBool,
}

pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {addr} (--metrics-addr)"))
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // A client that stalls or sends junk only costs its own task, bounded in time.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), handle(stream, &shared))
                    .await;
        });
    }
}

async fn handle(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let path = loop {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            return Ok(());
        }
        n += r;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                );
            }
            Ok(httparse::Status::Partial) if n < buf.len() => continue,
            _ => {
                return respond(
                    &mut s,
                    "400 Bad Request",
                    "text/plain",
                    b"bad request\n",
                    true,
                )
                .await;
            }
        }
    };
    let (method, path) = path;
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            head_only,
        )
        .await;
    }
    let route = path.split('?').next().unwrap_or("");
    match route {
        "/metrics" => {
            let body = shared.metrics.lock().expect("metrics lock").clone();
            respond(
                &mut s,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
            .await
        }
        "/healthz" => respond(&mut s, "200 OK", "text/plain", b"ok\n", head_only).await,
        "/readyz" if shared.ready.load(Ordering::Relaxed) => {
            respond(&mut s, "200 OK", "text/plain", b"ready\n", head_only).await
        }
        "/readyz" => {
            respond(
                &mut s,
                "503 Service Unavailable",
                "text/plain",
                b"not ready\n",
                head_only,
            )
            .await
        }
        _ => {
            respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"try /metrics, /readyz, /healthz\n",
                head_only,
            )
            .await
        }
    }
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if !head_only {
        s.write_all(body).await?;
    }
    s.shutdown().await
}
