//! Strings other processes control (process names, Unix socket paths, container, pod and image
//! names, executable and library paths), made safe for a human output line or stderr.
//!
//! A process names itself (`prctl(PR_SET_NAME)`), names its sockets and files, and so chooses
//! bytes the agent prints. Printed raw, a newline in them forges a whole verdict line (journald
//! stores it as a record of its own), and carriage returns or terminal escapes rewrite what an
//! operator sees. Every such string goes through [`escape`] (or [`escape_bytes`],
//! [`escape_path`]) before it reaches a human line or stderr. JSON (`serde_json`) and the
//! Prometheus text (`prometheus-client`) escape on their own and must not be escaped twice.
use std::borrow::Cow;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `s` with every character that is not printable escaped the way Rust writes it in a string
/// literal (`char::escape_debug`): `\n`, `\r`, `\t`, `\0`, `\\`, `\u{1b}` (ESC), `\u{85}` (a C1
/// control), `\u{2028}`, `\u{202e}` (a bidi override), and so on. Printable characters, quotes
/// included, stay as they are. Borrowed (no copy) when nothing needs escaping, which is the
/// common case. The result never holds a control character, so it cannot end a line.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    push_escaped(&mut out, s);
    Cow::Owned(out)
}

/// Like [`escape`], for bytes that may not be UTF-8 (`/proc` files, paths, socket names): valid
/// UTF-8 is escaped as [`escape`] does; each byte of an invalid sequence becomes `\xNN`.
pub fn escape_bytes(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => escape(s),
        Err(_) => {
            let mut out = String::with_capacity(b.len() + 8);
            for chunk in b.utf8_chunks() {
                push_escaped(&mut out, chunk.valid());
                for byte in chunk.invalid() {
                    let _ = write!(out, "\\x{byte:02x}");
                }
            }
            Cow::Owned(out)
        }
    }
}

/// A path as [`escape_bytes`] shows its bytes.
pub fn escape_path(p: &Path) -> Cow<'_, str> {
    escape_bytes(p.as_os_str().as_bytes())
}

/// Printed as is: printable, and not the escape character itself.
fn plain(c: char) -> bool {
    c != '\\' && matches!(c.escape_debug().next(), Some(first) if first == c) || quote(c)
}

/// `escape_debug` escapes quotes (for literals): here they are printed as they are.
fn quote(c: char) -> bool {
    c == '"' || c == '\''
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if quote(c) {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_borrowed_unchanged() {
        for s in [
            "nginx",
            "/run/app.sock",
            "@abstract-name",
            "shop/api:1.4.2",
            "café ünïcode 日本",
            "o'brien \"q\"",
            "",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn controls_are_escaped_and_never_end_a_line() {
        let forged = "x\n2026-12-07T13:00:00.000000Z short_write tcp 10.1.2.3:443 comm=nginx";
        assert_eq!(
            escape(forged),
            "x\\n2026-12-07T13:00:00.000000Z short_write tcp 10.1.2.3:443 comm=nginx"
        );
        assert_eq!(escape("a\rb\tc\0d"), "a\\rb\\tc\\0d");
        assert_eq!(
            escape("\u{1b}[2J\u{1b}]0;title\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(escape("del\u{7f}"), "del\\u{7f}");
        // C1 controls (NEL among them), line and paragraph separators, bidi overrides.
        assert_eq!(escape("a\u{85}b\u{9b}c"), "a\\u{85}b\\u{9b}c");
        assert_eq!(escape("a\u{2028}b\u{2029}"), "a\\u{2028}b\\u{2029}");
        assert_eq!(escape("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let e = escape(&c.to_string()).into_owned();
            assert!(
                e.starts_with('\\') && e.chars().all(|c| !c.is_control()),
                "{c:?}: {e}"
            );
        }
    }

    #[test]
    fn the_escape_character_is_escaped_so_nothing_is_ambiguous() {
        // A literal backslash-n cannot pass for an escaped newline.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("a\nb"), "a\\nb");
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"ok"), "ok");
        assert_eq!(escape_bytes(b"a\xffb\xc3\x28\n"), "a\\xffb\\xc3(\\n");
        assert_eq!(escape_bytes("é\u{1b}".as_bytes()), "é\\u{1b}");
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/lib\nssl\x80.so"));
        assert_eq!(escape_path(p), "/tmp/lib\\nssl\\x80.so");
    }
}
