//! The HTTP endpoint: `/metrics` (Prometheus text), `/readyz` and `/healthz`.
//!
//! It serves a snapshot the agent's loop refreshes every second, so a scrape never waits on
//! (or slows down) the event path. Small and dependency-free on purpose: three GET routes.
//!
//! Whoever can reach it may be hostile: a request is bounded in size and time, at most
//! [`MAX_CONNECTIONS`] are open at once (the oldest is closed to make room, so a crowd of idle
//! connections cannot keep a health check out), and when `accept()` fails (no descriptor left:
//! `EMFILE`, `ENFILE`) the oldest connection is closed, or, with none to close, the loop backs
//! off instead of spinning.
use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request and read the answer.
const CLIENT_TIME: Duration = Duration::from_secs(10);
/// Pauses after a failed `accept()` with no connection to close: doubled up to the last.
const BACKOFF: [Duration; 2] = [Duration::from_millis(10), Duration::from_secs(1)];

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

/// What the endpoint counts about itself (exported with the agent's metrics).
#[derive(Clone, Default)]
pub struct Stats {
    dropped: Counter,
    accept_errors: Counter,
}

impl Stats {
    /// Registers `truncwatch_endpoint_dropped_connections_total` and
    /// `truncwatch_endpoint_accept_errors_total` in `metrics`.
    pub fn new(metrics: &mut crate::export::metrics::Metrics) -> Self {
        let s = Stats::default();
        metrics.register(
            "truncwatch_endpoint_dropped_connections",
            "Endpoint connections closed unanswered, the oldest first, to stay within the cap or to free a descriptor",
            s.dropped.clone(),
        );
        metrics.register(
            "truncwatch_endpoint_accept_errors",
            "Failed accept() calls on the endpoint (no descriptor left, ...): each one closes the oldest connection or waits",
            s.accept_errors.clone(),
        );
        s
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stats: Stats) {
    // Open connections, oldest first.
    let mut open: VecDeque<JoinHandle<()>> = VecDeque::new();
    let mut pause = BACKOFF[0];
    loop {
        open.retain(|h| !h.is_finished());
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                stats.accept_errors.inc();
                // Out of descriptors: the oldest connection gives its back.
                if out_of_descriptors(&e) && close_oldest(&mut open).await {
                    stats.dropped.inc();
                } else {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF[1]);
                }
                continue;
            }
        };
        pause = BACKOFF[0];
        if open.len() >= MAX_CONNECTIONS && close_oldest(&mut open).await {
            stats.dropped.inc();
        }
        let shared = shared.clone();
        open.push_back(tokio::spawn(async move {
            // A client that stalls or sends junk only costs its own task, bounded in time.
            let _ = tokio::time::timeout(CLIENT_TIME, handle(stream, &shared)).await;
        }));
        // Let the new connection read its request before more are accepted: a burst of
        // connections must not push it out before it is answered.
        tokio::task::yield_now().await;
    }
}

/// An `accept()` error that a closed descriptor may cure (the connection waits in the
/// backlog meanwhile: retrying at once would spin).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Close the oldest open connection, and wait until its descriptor is released. False if none
/// is open.
async fn close_oldest(open: &mut VecDeque<JoinHandle<()>>) -> bool {
    let Some(oldest) = open.pop_front() else {
        return false;
    };
    oldest.abort();
    let _ = oldest.await;
    true
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
