//! Where a TLS stream's plaintext lies in its TCP connection's ciphertext: what a peer got of
//! a TLS response when the connection ended with bytes unacknowledged.
//!
//! The TCP counters at the end (`snd_una`, what was never sent) speak of ciphertext. Each TLS
//! write whose records went to the socket within the call comes with the socket's `write_seq`
//! after it (`SendFacts::tls_seq`): a mark (plaintext end, sequence number). A peer can decrypt
//! only whole records, so it got the plaintext up to the last mark at or before the delivered
//! sequence number: exact to one write call, never more than was delivered.
//!
//! A library with a memory BIO (Node.js) writes its records to the socket after the call, so
//! its marks are reckoned: from `write_seq` when the stream's first write returned (the
//! handshake is all before it), each write's plaintext plus `RECORD_OVERHEAD` for each record
//! it takes (`MAX_FRAGMENT` plaintext bytes at most: OpenSSL's default). Then they also tell
//! how much of the plaintext the library accepted reached the kernel at all.

use std::collections::VecDeque;

/// Marks kept per connection. Unacknowledged bytes are bounded by the send buffer (a few MiB),
/// and writes are seldom under 4 KiB (nginx: 16 KiB), so older marks are all acknowledged.
const MAX_MARKS: usize = 1024;

/// Plaintext bytes per record at most (RFC 8446 §5.1, `SSL_CTX_set_max_send_fragment`).
const MAX_FRAGMENT: u64 = 16384;

/// Ciphertext a record adds to its plaintext, at the least, for the AEAD cipher suites of TLS
/// 1.2 and 1.3: header 5 and an 8-byte tag, plus TLS 1.3's content type byte, with AES-CCM-8
/// (14; not enabled by default). The usual suites add more: TLS 1.3's 22, TLS 1.2's AES-GCM 29,
/// its ChaCha20-Poly1305 21. The least, so that a stream whose records all reached the kernel is
/// never taken for one cut short; a cut one may be credited with a few bytes per record more
/// than it delivered (with TLS 1.3's usual 8 per 16 KiB record: about a record per 30 MiB).
const RECORD_OVERHEAD: u64 = 14;

/// A write's mark: where its plaintext ends, where its records end (one past their last byte),
/// and how much plaintext it carried.
#[derive(Clone, Copy, Debug)]
struct Mark {
    plain_end: u64,
    seq_end: u32,
    len: u64,
}

/// A TLS connection's recent marks, oldest first.
#[derive(Clone, Debug, Default)]
pub struct CipherMarks {
    marks: VecDeque<Mark>,
    /// Plaintext end of the newest mark dropped (0: none): delivered, as far as we know.
    dropped_end: u64,
    /// Reckoned marks (memory BIO): `write_seq` when the first write returned, and the records
    /// written since.
    reckoned: Option<(u32, u64)>,
}

impl CipherMarks {
    /// A write of `len` plaintext bytes ending at stream offset `plain_end`, whose records
    /// ended at TCP sequence number `seq` (one past their last byte).
    pub fn push(&mut self, plain_end: u64, len: u64, seq: u32) {
        if self.marks.len() == MAX_MARKS
            && let Some(m) = self.marks.pop_front()
        {
            self.dropped_end = m.plain_end;
        }
        self.marks.push_back(Mark {
            plain_end,
            seq_end: seq,
            len,
        });
    }

    /// A write of `len` plaintext bytes, ending at stream offset `plain_end`, that returned
    /// when the socket's `write_seq` was `seq`, its records not written to the socket yet.
    /// Ignored on a stream with exact marks.
    pub fn push_reckoned(&mut self, plain_end: u64, len: u64, seq: u32) {
        if self.reckoned.is_none() && !self.is_empty() {
            return;
        }
        let (base, records) = self.reckoned.unwrap_or((seq, 0));
        let records = records + len.div_ceil(MAX_FRAGMENT);
        self.reckoned = Some((base, records));
        let end = base.wrapping_add((plain_end + records * RECORD_OVERHEAD) as u32);
        self.push(plain_end, len, end);
    }

    /// Whether the marks are reckoned (a memory BIO): the plaintext the library accepted may
    /// not all have reached the kernel.
    pub fn reckoned(&self) -> bool {
        self.reckoned.is_some()
    }

    /// Forget marks that end at or before `plain`, but the last of them (nothing before it is
    /// asked about again: `plain` is where the oldest response not judged yet begins).
    pub fn forget_before(&mut self, plain: u64) {
        while self.marks.len() > 1 && self.marks[1].plain_end <= plain {
            self.dropped_end = self.marks.pop_front().map_or(0, |m| m.plain_end);
        }
    }

    /// Whether no mark was ever made.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.dropped_end == 0
    }

    /// The plaintext stream offset up to which the peer could decrypt, if the bytes before TCP
    /// sequence number `delivered_seq` reached it and none after: the writes whose records all
    /// came before it, and the whole records of the write it falls in.
    pub fn plain_delivered(&self, delivered_seq: u32) -> u64 {
        // Sequence numbers wrap: a mark is at or before `delivered_seq` if it is less than 2 GiB
        // behind it.
        let before = |seq: u32| delivered_seq.wrapping_sub(seq) < 1 << 31;
        let last = self.marks.iter().rposition(|m| before(m.seq_end));
        let done = last.map_or(self.dropped_end, |i| self.marks[i].plain_end);
        let Some(m) = self.marks.get(last.map_or(0, |i| i + 1)) else {
            return done;
        };
        // The write it falls in: its records are full but the last, and begin at the latest
        // where the least overhead puts them.
        let records = m.len.div_ceil(MAX_FRAGMENT);
        let start = m
            .seq_end
            .wrapping_sub((m.len + records * RECORD_OVERHEAD) as u32);
        if !before(start) {
            return done;
        }
        let whole = u64::from(delivered_seq.wrapping_sub(start)) / (MAX_FRAGMENT + RECORD_OVERHEAD);
        done.max(m.plain_end - m.len + (whole * MAX_FRAGMENT).min(m.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_plaintext_is_that_of_whole_writes() {
        let mut m = CipherMarks::default();
        assert!(m.is_empty());
        // Three 16 KiB writes, each sent as one record of 16 384 + 22 bytes, from seq 1000.
        for i in 1..=3u64 {
            m.push(i * 16384, 16384, 1000 + (i as u32) * 16406);
        }
        assert_eq!(m.plain_delivered(1000 + 3 * 16406), 3 * 16384);
        assert_eq!(m.plain_delivered(1000 + 3 * 16406 - 1), 2 * 16384);
        assert_eq!(m.plain_delivered(1000 + 16406), 16384);
        assert_eq!(m.plain_delivered(1000), 0);
    }

    #[test]
    fn reckoned_marks_add_each_records_overhead() {
        let mut m = CipherMarks::default();
        // A 129-byte head (one record), then a 40 000-byte body (three records), from seq 500.
        m.push_reckoned(129, 129, 500);
        m.push_reckoned(40129, 40000, 700);
        assert!(m.reckoned());
        let head_end = 500 + 129 + 14;
        assert_eq!(m.plain_delivered(head_end), 129);
        assert_eq!(m.plain_delivered(head_end - 1), 0);
        let all = 500 + 40129 + 4 * 14;
        assert_eq!(m.plain_delivered(all as u32), 40129);
        assert_eq!(m.plain_delivered(all as u32 - 1), 129 + 2 * 16384);
        // Exact marks rule a stream that has them.
        let mut e = CipherMarks::default();
        e.push(100, 100, 1000);
        e.push_reckoned(200, 100, 2000);
        assert!(!e.reckoned());
        assert_eq!(e.plain_delivered(5000), 100);
    }

    #[test]
    fn whole_records_of_a_long_write_count() {
        let mut m = CipherMarks::default();
        // A 129-byte head, then one write of 100 000 bytes: 7 records, the last of 1 696.
        m.push_reckoned(129, 129, 0);
        m.push_reckoned(100_129, 100_000, 0);
        let body_start = 129 + 14;
        let rec = 16384 + 14;
        assert_eq!(m.plain_delivered(body_start), 129);
        assert_eq!(m.plain_delivered(body_start + rec - 1), 129);
        assert_eq!(m.plain_delivered(body_start + rec), 129 + 16384);
        assert_eq!(
            m.plain_delivered(body_start + 6 * rec + 1696),
            129 + 6 * 16384
        );
        assert_eq!(m.plain_delivered(body_start + 6 * rec + 1696 + 14), 100_129);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut m = CipherMarks::default();
        m.push(100, 100, u32::MAX - 10);
        m.push(200, 100, 50);
        assert_eq!(m.plain_delivered(60), 200);
        assert_eq!(m.plain_delivered(10), 100);
        assert_eq!(m.plain_delivered(u32::MAX - 20), 0);
    }

    #[test]
    fn bounded_and_forgets_what_is_judged() {
        let mut m = CipherMarks::default();
        for i in 1..=(MAX_MARKS as u64 + 5) {
            m.push(i * 10, 10, (i * 20) as u32);
        }
        assert_eq!(m.marks.len(), MAX_MARKS);
        // Before the oldest kept mark: the newest dropped one's end, a lower bound.
        assert_eq!(m.plain_delivered(0), 50);
        m.forget_before(5000);
        assert_eq!(m.marks.front().map(|x| x.plain_end), Some(5000));
        assert_eq!(m.plain_delivered(9999), 4990);
        assert_eq!(m.plain_delivered(10000), 5000);
    }
}
