//! Response heads that did not end within what one event carried, gathered from what follows
//! (a server's: the kernel's head pieces; a client's: reads of a few bytes each).
//!
//! Bounded twice: each head by `--max-head-bytes` (the correlator's check), and all heads being
//! gathered together by a byte budget, so a neighbour holding many connections with long,
//! unfinished heads cannot grow the agent without bound (issue 26: max-connections ×
//! max-head-bytes was 1 GiB). And parsed once, when the blank line that ends a head may have
//! arrived (RFC 9112 §2.1: `CRLF CRLF`, or `LF LF` from lenient senders), not on every piece:
//! a head written a byte per send cost the agent 25 ms per 16 KiB head before.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes all heads being gathered may hold together, by default: 1 024 heads of 16 KiB.
pub const DEFAULT_BUDGET: usize = 16 << 20;

/// Where a head is, and its bytes so far: a head just captured, or a gathered one.
#[derive(Clone, Copy, Debug)]
pub struct HeadAt<'a> {
    /// Stream offset of its first byte.
    pub start: u64,
    pub bytes: &'a [u8],
    /// The thread that sent it (0: not known).
    pub tgid: u32,
    /// Stream offset one past the last byte the sends it came from offered.
    pub send_end: u64,
}

/// The byte budget shared by every head being gathered (cloned handles count together).
#[derive(Clone, Debug)]
pub struct HeadBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    used: AtomicUsize,
    limit: usize,
}

impl HeadBudget {
    pub fn new(limit: usize) -> HeadBudget {
        HeadBudget(Arc::new(Shared {
            used: AtomicUsize::new(0),
            limit,
        }))
    }

    /// Bytes held now by all heads being gathered.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        let used = self.used();
        if used.saturating_add(n) > self.0.limit {
            return false;
        }
        self.0.used.store(used + n, Ordering::Relaxed);
        true
    }

    fn give_back(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A head being gathered: its bytes are charged to the budget until it is dropped.
#[derive(Debug)]
pub struct PartialHead {
    pub start: u64,
    pub tgid: u32,
    pub send_end: u64,
    bytes: Vec<u8>,
    budget: HeadBudget,
}

impl PartialHead {
    /// A copy of `at`'s bytes, charged to `budget`; None if they do not fit in what is left.
    pub fn new(budget: &HeadBudget, at: HeadAt<'_>) -> Option<PartialHead> {
        if !budget.take(at.bytes.len()) {
            return None;
        }
        Some(PartialHead {
            start: at.start,
            tgid: at.tgid,
            send_end: at.send_end,
            bytes: at.bytes.to_vec(),
            budget: budget.clone(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn at(&self) -> HeadAt<'_> {
        HeadAt {
            start: self.start,
            bytes: &self.bytes,
            tgid: self.tgid,
            send_end: self.send_end,
        }
    }

    /// Replace the bytes from `at` (at most its length) on with `more`. False, and the bytes
    /// from `at` on gone, if `more` does not fit in the budget.
    pub fn put(&mut self, at: usize, more: &[u8]) -> bool {
        let at = at.min(self.bytes.len());
        self.budget.give_back(self.bytes.len() - at);
        self.bytes.truncate(at);
        if !self.budget.take(more.len()) {
            return false;
        }
        self.bytes.extend_from_slice(more);
        true
    }

    /// Whether the head may have ended in its bytes from `from` on: they (with the three
    /// bytes before, where an end may begin) hold `\n\n` or `\n\r\n`. Parsing can wait
    /// until then: what comes before cannot end a head.
    pub fn may_have_ended(&self, from: usize) -> bool {
        let from = from.min(self.bytes.len()).saturating_sub(3);
        let b = &self.bytes[from..];
        b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
    }
}

impl Drop for PartialHead {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bytes: &[u8]) -> HeadAt<'_> {
        HeadAt {
            start: 0,
            bytes,
            tgid: 1,
            send_end: bytes.len() as u64,
        }
    }

    #[test]
    fn heads_share_the_budget_and_give_it_back_when_dropped() {
        let budget = HeadBudget::new(100);
        let a = PartialHead::new(&budget, at(&[b'a'; 60])).unwrap();
        assert!(PartialHead::new(&budget, at(&[b'b'; 41])).is_none());
        let mut b = PartialHead::new(&budget, at(&[b'b'; 40])).unwrap();
        assert_eq!(budget.used(), 100);
        assert!(!b.put(40, b"x"), "over the budget");
        assert_eq!((b.bytes().len(), budget.used()), (40, 100));
        // Bytes offered again replace their first offer: only the difference is charged.
        assert!(b.put(10, &[b'c'; 30]));
        assert_eq!((b.bytes().len(), budget.used()), (40, 100));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.put(40, &[b'd'; 60]));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_head_may_have_ended_only_where_a_blank_line_may_be() {
        let budget = HeadBudget::new(1 << 20);
        let mut p = PartialHead::new(&budget, at(b"HTTP/1.1 200 OK\r\nA: b\r")).unwrap();
        assert!(!p.may_have_ended(0));
        let n = p.bytes().len();
        p.put(n, b"\n\r");
        assert!(!p.may_have_ended(n));
        let n = p.bytes().len();
        p.put(n, b"\n");
        // The end straddles three pieces: found from the last one's start.
        assert!(p.may_have_ended(n));
        let mut lf = PartialHead::new(&budget, at(b"HTTP/1.1 200 OK\nA: b\n")).unwrap();
        assert!(!lf.may_have_ended(0));
        lf.put(lf.bytes().len(), b"\n");
        assert!(lf.may_have_ended(lf.bytes().len() - 1));
    }
}
