//! Where a TLS stream's plaintext lies in its TCP connection's ciphertext: what a peer got of
//! a TLS response when the connection ended with bytes unacknowledged.
//!
//! The TCP counters at the end (`snd_una`, what was never sent) speak of ciphertext. Each TLS
//! write whose records went to the socket within the call comes with the socket's `write_seq`
//! after it (`SendFacts::tls_seq`): a mark (plaintext end, sequence number). A peer can decrypt
//! only whole records, so it got the plaintext up to the last mark at or before the delivered
//! sequence number: exact to one write call, never more than was delivered.

use std::collections::VecDeque;

/// Marks kept per connection. Unacknowledged bytes are bounded by the send buffer (a few MiB),
/// and writes are seldom under 4 KiB (nginx: 16 KiB), so older marks are all acknowledged.
const MAX_MARKS: usize = 1024;

/// A TLS connection's recent marks, oldest first.
#[derive(Clone, Debug, Default)]
pub struct CipherMarks {
    marks: VecDeque<(u64, u32)>,
    /// Plaintext end of the newest mark dropped (0: none): delivered, as far as we know.
    dropped_end: u64,
}

impl CipherMarks {
    /// A write's plaintext ended at stream offset `plain_end` and its records at TCP sequence
    /// number `seq` (one past their last byte).
    pub fn push(&mut self, plain_end: u64, seq: u32) {
        if self.marks.len() == MAX_MARKS
            && let Some((end, _)) = self.marks.pop_front()
        {
            self.dropped_end = end;
        }
        self.marks.push_back((plain_end, seq));
    }

    /// Forget marks that end at or before `plain`, but the last of them (nothing before it is
    /// asked about again: `plain` is where the oldest response not judged yet begins).
    pub fn forget_before(&mut self, plain: u64) {
        while self.marks.len() > 1 && self.marks[1].0 <= plain {
            self.dropped_end = self.marks.pop_front().map_or(0, |m| m.0);
        }
    }

    /// Whether any mark was ever made (a library with a memory BIO makes none).
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.dropped_end == 0
    }

    /// The plaintext stream offset up to which the peer could decrypt, if the bytes before TCP
    /// sequence number `delivered_seq` reached it and none after.
    pub fn plain_delivered(&self, delivered_seq: u32) -> u64 {
        // Sequence numbers wrap: a mark is at or before `delivered_seq` if it is less than 2 GiB
        // behind it.
        let before = |seq: u32| delivered_seq.wrapping_sub(seq) < 1 << 31;
        self.marks
            .iter()
            .rev()
            .find(|(_, seq)| before(*seq))
            .map_or(self.dropped_end, |(end, _)| *end)
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
            m.push(i * 16384, 1000 + (i as u32) * 16406);
        }
        assert_eq!(m.plain_delivered(1000 + 3 * 16406), 3 * 16384);
        assert_eq!(m.plain_delivered(1000 + 3 * 16406 - 1), 2 * 16384);
        assert_eq!(m.plain_delivered(1000 + 16406), 16384);
        assert_eq!(m.plain_delivered(1000), 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut m = CipherMarks::default();
        m.push(100, u32::MAX - 10);
        m.push(200, 50);
        assert_eq!(m.plain_delivered(60), 200);
        assert_eq!(m.plain_delivered(10), 100);
        assert_eq!(m.plain_delivered(u32::MAX - 20), 0);
    }

    #[test]
    fn bounded_and_forgets_what_is_judged() {
        let mut m = CipherMarks::default();
        for i in 1..=(MAX_MARKS as u64 + 5) {
            m.push(i * 10, (i * 20) as u32);
        }
        assert_eq!(m.marks.len(), MAX_MARKS);
        // Before the oldest kept mark: the newest dropped one's end, a lower bound.
        assert_eq!(m.plain_delivered(0), 50);
        m.forget_before(5000);
        assert_eq!(m.marks.front().map(|x| x.0), Some(5000));
        assert_eq!(m.plain_delivered(9999), 4990);
        assert_eq!(m.plain_delivered(10000), 5000);
    }
}
