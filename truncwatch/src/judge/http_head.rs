//! HTTP/1 heads: what a captured response head promises about its body, and what a captured
//! request head says about the response it will get (a HEAD request's has no body).
//!
//! Only the status line or method, and the framing headers, are looked at; no other header value
//! is logged or exported. (The last heads seen are kept in memory, bounded, to compare the next
//! ones against: see `HeadCache`.)

use std::hash::Hasher;

/// What the head says about the body that follows it (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`; ends with the terminating chunk.
    Chunked,
    /// No body by rule: 1xx, 204, 304.
    None,
    /// No framing: the body runs until the connection closes.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, up to and including the blank line.
    pub len: u64,
    pub body: Body,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Head(Head),
    /// The capture ends before the head does (long head, or a head split over sends).
    Incomplete,
    /// Not an HTTP/1 response head, or one whose framing cannot be trusted (RFC 9112 §6.3
    /// says such a message is invalid): conflicting or malformed Content-Length.
    Invalid,
}

/// Header lines parsed on the stack; a head with more (a long run of `Set-Cookie`s) is parsed
/// again with room for as many as its bytes can hold.
const STACK_HEADERS: usize = 64;

pub fn parse(buf: &[u8]) -> Parsed {
    // Left uninitialized: httparse fills only what it finds, and a head per response makes
    // zeroing 64 entries each time show up in the agent's profile.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; STACK_HEADERS];
    match parse_with(buf, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            // Each header line takes at least 3 bytes (`a:` and its line end).
            let mut many = Vec::new();
            many.resize_with(buf.len() / 3 + 1, std::mem::MaybeUninit::uninit);
            parse_with(buf, &mut many).unwrap_or(Parsed::Invalid)
        }
        r => r.unwrap_or(Parsed::Invalid),
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    headers: &mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Parsed, httparse::Error> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let len = match parsed? {
        httparse::Status::Complete(n) => n as u64,
        httparse::Status::Partial => return Ok(Parsed::Incomplete),
    };
    // Three digits, the first 1 to 9 (RFC 9110 §15): httparse takes `000` too.
    let Some(status) = resp.code.filter(|c| (100..=999).contains(c)) else {
        return Ok(Parsed::Invalid);
    };
    Ok(match framing(status, resp.headers) {
        Some(body) => Parsed::Head(Head { status, len, body }),
        None => Parsed::Invalid,
    })
}

/// Heads parsed lately, host-wide. A server mostly sends the same heads again (the same
/// resources, the same `Date` within a second), on one connection and across connections, and
/// finding, hashing and comparing a head's bytes costs a fraction of parsing them: the parse
/// was most of the agent's time per response. Bounded: emptied when full.
#[derive(Debug, Default)]
pub struct HeadCache {
    heads: rustc_hash::FxHashMap<u64, (Box<[u8]>, Head)>,
}

/// Heads kept at most (each at most `HEAD_CAP` bytes).
const CACHED_HEADS: usize = 1024;

impl HeadCache {
    /// `parse(buf)`, from the cache when `buf` begins with a head parsed before: the bytes up
    /// to its first blank line are compared, not only hashed. (A parse looks at nothing past
    /// the head's blank line, so those bytes decide it alone.)
    pub fn parse(&mut self, buf: &[u8]) -> Parsed {
        // The bytes up to the first blank line, and their hash.
        let head = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| {
            let mut hasher = rustc_hash::FxHasher::default();
            hasher.write(&buf[..i + 4]);
            (&buf[..i + 4], hasher.finish())
        });
        if let Some((h, k)) = head
            && let Some((bytes, parsed)) = self.heads.get(&k)
            && **bytes == *h
        {
            return Parsed::Head(*parsed);
        }
        let parsed = parse(buf);
        // Kept only when the parse ended at that blank line (a head may end at a bare `\n\n`
        // before it).
        if let (Parsed::Head(p), Some((h, k))) = (parsed, head)
            && p.len == h.len() as u64
        {
            if self.heads.len() >= CACHED_HEADS {
                self.heads.clear();
            }
            self.heads.insert(k, (h.into(), p));
        }
        parsed
    }
}

/// The body's framing, or None when the headers contradict each other.
fn framing(status: u16, headers: &[httparse::Header]) -> Option<Body> {
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Body::None);
    }
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The final coding decides (RFC 9112 §6.3 item 4).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // Repeated identical values are allowed, different ones are not (§6.3 item 5).
            for v in h.value.split(|&b| b == b',') {
                let n = parse_decimal(trim(v))?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        }
    }
    Some(match (chunked, length) {
        (true, _) => Body::Chunked, // Transfer-Encoding overrides Content-Length (§6.3 item 3)
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::UntilClose,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Digits only (no sign, no spaces inside), no overflow.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Parsed {
        parse(s.as_bytes())
    }

    #[test]
    fn content_length() {
        let h = "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n";
        assert_eq!(
            head(h),
            Parsed::Head(Head {
                status: 200,
                len: h.len() as u64,
                body: Body::Length(42)
            })
        );
    }

    #[test]
    fn head_followed_by_body_in_same_capture() {
        let h = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let p = parse(format!("{h}hello").as_bytes());
        assert_eq!(
            p,
            Parsed::Head(Head {
                status: 200,
                len: h.len() as u64,
                body: Body::Length(5)
            })
        );
    }

    #[test]
    fn header_names_are_case_insensitive() {
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 7\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::Length(7),
                ..
            })
        ));
    }

    #[test]
    fn chunked_overrides_length() {
        let h = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            head(h),
            Parsed::Head(Head {
                body: Body::Chunked,
                ..
            })
        ));
    }

    #[test]
    fn chunked_must_be_last_coding() {
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::Chunked,
                ..
            })
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::UntilClose,
                ..
            })
        ));
    }

    #[test]
    fn no_body_statuses() {
        for s in [
            "100 Continue",
            "101 Switching Protocols",
            "204 No Content",
            "304 Not Modified",
        ] {
            let h = format!("HTTP/1.1 {s}\r\nContent-Length: 10\r\n\r\n");
            assert!(
                matches!(
                    parse(h.as_bytes()),
                    Parsed::Head(Head {
                        body: Body::None,
                        ..
                    })
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn no_framing_runs_until_close() {
        assert!(matches!(
            head("HTTP/1.0 200 OK\r\nServer: x\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::UntilClose,
                ..
            })
        ));
    }

    #[test]
    fn incomplete_heads_are_not_judged() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n"),
            Parsed::Incomplete
        );
        assert_eq!(head("HTTP/1.1 200"), Parsed::Incomplete);
    }

    /// A long run of header lines (cookies, security and tracing headers) is read whole.
    #[test]
    fn many_header_lines_are_read() {
        let many: String = (0..300)
            .map(|i| format!("Set-Cookie: c{i}=y\r\n"))
            .collect();
        let h = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 5\r\n\r\n");
        assert_eq!(
            parse(h.as_bytes()),
            Parsed::Head(Head {
                status: 200,
                len: h.len() as u64,
                body: Body::Length(5)
            })
        );
    }

    #[test]
    fn bad_content_length_is_invalid() {
        for v in ["-1", "abc", "1 2", "", "99999999999999999999", "+5", "0x10"] {
            let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(parse(h.as_bytes()), Parsed::Invalid, "{v:?}");
        }
    }

    #[test]
    fn duplicate_content_length() {
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::Length(3),
                ..
            })
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"),
            Parsed::Head(Head {
                body: Body::Length(3),
                ..
            })
        ));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Parsed::Invalid
        );
    }

    #[test]
    fn not_a_response() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n"), Parsed::Invalid);
        assert_eq!(head("\x16\x03\x01\x02\x00"), Parsed::Invalid);
    }

    #[test]
    fn cache_answers_as_a_parse_does() {
        // Heads that share prefixes, differ in one byte, end at the same place with other
        // framing, carry body bytes after them, or are cut short: every answer from the cache
        // must be the parse's own.
        let heads = [
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\nbody bytes",
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nX: y\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 204 OK\r\nContent-Length: 42\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r",
            "GET / HTTP/1.1\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 2\n\nab\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab\r\n\r\n",
        ];
        let mut cache = HeadCache::default();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let h = heads[(rng % heads.len() as u64) as usize];
            let cut = ((rng >> 8) % (h.len() as u64 + 1)) as usize;
            let buf = if rng >> 20 & 1 == 0 { h } else { &h[..cut] };
            assert_eq!(
                cache.parse(buf.as_bytes()),
                parse(buf.as_bytes()),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = HeadCache::default();
        for n in 0..3 * CACHED_HEADS {
            let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            assert_eq!(cache.parse(h.as_bytes()), parse(h.as_bytes()));
            assert!(cache.heads.len() <= CACHED_HEADS);
        }
    }
}
