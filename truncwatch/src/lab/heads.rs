//! The response heads the lab server sends: a status line, headers of the kinds real sites send
//! (security policies, tracing, cookies) up to a requested size, and the framing header last,
//! after all of them (so that a reader must get through the whole head to find it).

/// Headers most sites send, whatever the size asked for (about 400 bytes).
const COMMON: &[(&str, &str)] = &[
    ("Server", "lab/1.0"),
    ("Content-Type", "application/octet-stream"),
    (
        "Cache-Control",
        "private, no-cache, no-store, max-age=0, must-revalidate",
    ),
    (
        "Strict-Transport-Security",
        "max-age=63072000; includeSubDomains; preload",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Request-Id", "9f1c2a7e4b6d48e0a3c5f7091b2d4e6f"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
];

/// A Content-Security-Policy of the usual length (about 400 bytes).
const CSP: &str = "default-src 'self'; script-src 'self' 'nonce-Zm9vYmFyYmF6cXV4' \
    https://cdn.example.com https://www.googletagmanager.com; style-src 'self' 'unsafe-inline' \
    https://fonts.googleapis.com; img-src 'self' data: https:; font-src 'self' \
    https://fonts.gstatic.com; connect-src 'self' https://api.example.com wss://ws.example.com; \
    frame-ancestors 'none'; base-uri 'self'; form-action 'self'; upgrade-insecure-requests";

/// A head of at least `size` bytes (`size` 0: the lab's short head of about 70 bytes):
/// `HTTP/<version> 200 OK`, then, for a size, the common headers, a CSP and as many
/// `Set-Cookie` lines as it takes, then `pad` bytes in an `X-Pad` header (if any), then
/// `framing` (a header line with its CRLF, or empty), then the blank line.
pub fn head(version: &str, size: usize, pad: usize, framing: &str) -> String {
    let mut h = format!("HTTP/{version} 200 OK\r\n");
    if size == 0 {
        h += "Content-Type: application/octet-stream\r\n";
    } else {
        for (name, value) in COMMON {
            h += &format!("{name}: {value}\r\n");
        }
        h += &format!("Content-Security-Policy: {CSP}\r\n");
        let rest = framing.len() + 2;
        let mut i = 0;
        while h.len() + rest < size {
            h += &format!(
                "Set-Cookie: pref{i}=dGhlbWU9ZGFyazsgbGFuZz1lbjsgdHo9VVRDOyB2aWV3PWdyaWQ{i:04}; \
                 Path=/; Domain=example.com; Max-Age=31536000; Secure; HttpOnly; SameSite=Lax\r\n"
            );
            i += 1;
        }
    }
    if pad > 0 {
        h += &format!("X-Pad: {}\r\n", "p".repeat(pad));
    }
    h + framing + "\r\n"
}

/// `head` cut into the pieces a server writing one iovec per word hands `writev`: each word
/// with the space or line end after it.
pub fn words(head: &[u8]) -> Vec<&[u8]> {
    head.split_inclusive(|&b| b == b' ' || b == b'\n').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_framing_last() {
        for size in [0, 1300, 9000, 16000] {
            let h = head("1.1", size, 0, "Content-Length: 5\r\n");
            assert!(
                h.len() >= size && h.len() < size.max(1000) + 200,
                "{size}: {}",
                h.len()
            );
            assert!(h.ends_with("Content-Length: 5\r\n\r\n"));
            let mut headers = vec![httparse::EMPTY_HEADER; 256];
            let mut r = httparse::Response::new(&mut headers);
            assert_eq!(
                r.parse(h.as_bytes()).unwrap(),
                httparse::Status::Complete(h.len())
            );
        }
    }

    #[test]
    fn words_join_back() {
        let h = head("1.1", 1300, 0, "");
        let w = words(h.as_bytes());
        assert!(w.len() > 40, "{}", w.len());
        assert_eq!(w.concat(), h.as_bytes());
    }
}
