//! Response head sizes for the real-server scenarios, and the realistic headers that make
//! them: what sites send (security policies, tracing, cookies), not padding.

/// Size of the response head (status line, headers, blank line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// The server's own head, no extra header: 85 to 255 bytes depending on the server.
    Short,
    /// About 1.3 KB: cookies, CSP, HSTS, request ids, as a typical web app sends.
    Long,
    /// Over 8 KB (about 9.2 KB): the long head plus 20 more Set-Cookie headers. Every server
    /// here sends it (HAProxy with larger buffers, see its config).
    Huge,
}

impl Head {
    pub const ALL: [Head; 3] = [Head::Short, Head::Long, Head::Huge];
}

/// The headers each server adds to its own for the long and huge heads, in order. Values
/// avoid `"`, `\`, `%`, `$` and `#`, which some of the config syntaxes would interpret.
pub fn extra_headers(head: Head) -> Vec<(&'static str, String)> {
    const CSP: &str = concat!(
        "default-src 'self'; script-src 'self' 'nonce-rAnd0mN0nc3Xy' https://cdn.example.com ",
        "https://www.googletagmanager.com; style-src 'self' 'unsafe-inline' ",
        "https://fonts.googleapis.com; img-src 'self' data: https://img.example-cdn.com; ",
        "font-src 'self' https://fonts.gstatic.com; connect-src 'self' https://api.example.com ",
        "wss://ws.example.com; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; ",
        "upgrade-insecure-requests",
    );
    const PERMISSIONS: &str = concat!(
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), ",
        "microphone=(), payment=(), usb=()",
    );
    if head == Head::Short {
        return Vec::new();
    }
    let session = format!(
        "session={}; Path=/; Expires=Wed, 01 Dec 2027 10:00:00 GMT; Secure; HttpOnly; SameSite=Lax",
        token(1, 160)
    );
    let mut h: Vec<(&str, String)> = [
        (
            "Cache-Control",
            "private, no-store, no-cache, must-revalidate, max-age=0",
        ),
        (
            "Strict-Transport-Security",
            "max-age=63072000; includeSubDomains; preload",
        ),
        ("Content-Security-Policy", CSP),
        ("Set-Cookie", &session),
        ("X-Request-Id", "5f0c6a8e-2b7d-4c1e-9a3f-7d2e8b1c4a90"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ("Vary", "Accept-Encoding, Cookie"),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.to_string()))
    .collect();
    if head == Head::Huge {
        h.push(("Permissions-Policy", PERMISSIONS.to_string()));
        // 20 more cookies of ~390 bytes: consent, A/B tests, analytics, as big sites send.
        // With the rest that is 35 or so headers, under the client's limit of 64.
        for i in 0..20 {
            let cookie = token(100 + i, 320);
            let v = format!("pref_{i:02}={cookie}; Path=/; Max-Age=31536000; Secure; SameSite=Lax");
            h.push(("Set-Cookie", v));
        }
    }
    debug_assert!(
        h.iter()
            .all(|(_, v)| !v.contains(['"', '\\', '%', '$', '#']))
    );
    h
}

/// A cookie-like value: `len` base64url characters, the same every run.
fn token(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}
