//! How many verdict lines one owner may print: past a rate, repeated verdicts are summarised,
//! never printed one by one (issue 26: a flood of cut responses printed 875 086 lines, 727 MB,
//! in 12 s, enough for log rotation to push every other verdict out).
//!
//! An owner is what an operator would call one source: the side, the verdict, the process
//! name and its container. Each owner has a bucket of `per_second` lines (a second's worth
//! at once, refilled continuously); a line past it is counted instead, and once a second the
//! count goes out as one summary line per owner. Metrics count every verdict, printed or not.
use crate::judge::correlator::{Kind, Verdict};
use crate::judge::events::Side;
use crate::owner::attribution::Attribution;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines per second one owner may print by default (`--max-lines-per-second`).
pub const DEFAULT_PER_SECOND: u32 = 100;
/// How often an owner's suppressed lines are summarised.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Owners remembered at most; past it, the table is summarised and cleared.
const MAX_OWNERS: usize = 4096;
/// All owners together print at most this many times one owner's rate: a process that renames
/// itself (`comm`) again and again gets a new owner each time, not more output than this.
const ALL_OWNERS: u32 = 10;

/// One source of verdict lines.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub side: Side,
    pub kind: Kind,
    /// The process name (`comm`), as the verdict has it.
    pub comm: String,
    pub container_id: Option<String>,
}

impl Owner {
    pub fn of(v: &Verdict, a: &Attribution) -> Owner {
        Owner {
            side: v.meta.side,
            kind: v.kind,
            comm: v.meta.comm.clone(),
            container_id: a.container_id.clone(),
        }
    }
}

/// Lines of one owner not printed: `count` of them over the last `seconds`.
#[derive(Clone, Debug, PartialEq)]
pub struct Suppressed {
    pub owner: Owner,
    pub count: u64,
    pub seconds: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    /// When the first line not printed since the last summary came.
    since: Option<Instant>,
}

impl Bucket {
    fn full(rate: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate,
            refilled: now,
            suppressed: 0,
            since: None,
        }
    }

    /// Refill at `rate` a second (a second's worth at most), then take one line if there is one.
    fn take(&mut self, rate: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The buckets of every owner seen lately.
#[derive(Debug)]
pub struct LineBudget {
    /// 0: no limit.
    per_second: u32,
    owners: HashMap<Owner, Bucket>,
    /// All owners' lines together (`ALL_OWNERS`).
    all: Option<Bucket>,
    /// Summaries owed for owners dropped from a full table.
    owed: Vec<Suppressed>,
}

impl LineBudget {
    pub fn new(per_second: u32) -> LineBudget {
        LineBudget {
            per_second,
            owners: HashMap::new(),
            all: None,
            owed: Vec::new(),
        }
    }

    /// Whether `owner` may print one more line at `now`; if not, it is counted for its summary.
    pub fn admit(&mut self, owner: &Owner, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = f64::from(self.per_second);
        if !self.owners.contains_key(owner) && self.owners.len() >= MAX_OWNERS {
            self.owed = self.due(now, true); // (it takes what was owed before too)
            self.owners.clear();
        }
        let all_rate = rate * f64::from(ALL_OWNERS);
        let all = self.all.get_or_insert_with(|| Bucket::full(all_rate, now));
        let b = self
            .owners
            .entry(owner.clone())
            .or_insert_with(|| Bucket::full(rate, now));
        if b.take(rate, now) && all.take(all_rate, now) {
            return true;
        }
        b.suppressed += 1;
        b.since.get_or_insert(now);
        false
    }

    /// The summaries due at `now`: owners whose lines were held back for a second or more
    /// (`all`: every owner with lines held back, as when the agent stops). Owners quiet for a
    /// while are forgotten.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Suppressed> {
        let mut out = std::mem::take(&mut self.owed);
        let rate = f64::from(self.per_second.max(1));
        self.owners.retain(|owner, b| {
            if let Some(since) = b.since {
                let seconds = now.saturating_duration_since(since);
                if all || seconds >= SUMMARY_EVERY {
                    out.push(Suppressed {
                        owner: owner.clone(),
                        count: b.suppressed,
                        seconds: seconds.as_secs_f64(),
                    });
                    (b.suppressed, b.since) = (0, None);
                }
            }
            // A full bucket with nothing held back tells nothing a new one would not.
            let idle = now.saturating_duration_since(b.refilled).as_secs_f64() * rate;
            b.since.is_some() || b.tokens + idle < rate
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(comm: &str) -> Owner {
        Owner {
            side: Side::Server,
            kind: Kind::ShortWrite,
            comm: comm.into(),
            container_id: None,
        }
    }

    #[test]
    fn an_owner_prints_its_rate_and_the_rest_is_summarised_once_a_second() {
        let mut b = LineBudget::new(100);
        let t0 = Instant::now();
        let flood = owner("flood");
        let printed = (0..10_000).filter(|_| b.admit(&flood, t0)).count();
        assert_eq!(printed, 100, "a second's worth at once");
        // Another owner is not held back by the flood.
        assert!(b.admit(&owner("innocent"), t0));
        assert!(b.due(t0 + Duration::from_millis(500), false).is_empty());
        let s = b.due(t0 + Duration::from_secs(1), false);
        assert_eq!(s.len(), 1);
        assert_eq!((&s[0].owner, s[0].count), (&flood, 9_900));
        // Refilled at the rate, up to a second's worth.
        let t1 = t0 + Duration::from_millis(1500);
        let printed = (0..1000).filter(|_| b.admit(&flood, t1)).count();
        assert_eq!(printed, 100, "refilled to a second's worth, no more");
        assert_eq!(
            b.due(t1, true)[0].count,
            900,
            "at the stop, whatever is held back"
        );
        assert!(b.due(t1, true).is_empty(), "summarised once");
    }

    #[test]
    fn no_limit_with_zero() {
        let mut b = LineBudget::new(0);
        let t0 = Instant::now();
        assert!((0..100_000).all(|_| b.admit(&owner("x"), t0)));
        assert!(b.due(t0 + Duration::from_secs(5), true).is_empty());
    }

    #[test]
    fn the_owner_table_is_bounded_and_loses_no_count() {
        let mut b = LineBudget::new(1);
        let t0 = Instant::now();
        let mut printed = 0;
        for i in 0..MAX_OWNERS + 10 {
            let o = owner(&i.to_string());
            printed += usize::from(b.admit(&o, t0));
            assert!(!b.admit(&o, t0));
        }
        assert_eq!(printed, ALL_OWNERS as usize, "all owners together");
        assert!(b.owners.len() <= MAX_OWNERS);
        let s = b.due(t0 + Duration::from_secs(1), false);
        assert_eq!(
            s.iter().map(|s| s.count).sum::<u64>(),
            2 * (MAX_OWNERS + 10 - printed) as u64 + printed as u64
        );
    }

    #[test]
    fn renaming_itself_gets_a_flood_no_more_than_ten_owners_worth() {
        let mut b = LineBudget::new(10);
        let t0 = Instant::now();
        let printed = (0..1000)
            .filter(|i| b.admit(&owner(&format!("x{i}")), t0))
            .count();
        assert_eq!(printed, 100);
        let s = b.due(t0 + Duration::from_secs(1), false);
        assert_eq!(s.iter().map(|s| s.count).sum::<u64>(), 900);
    }

    #[test]
    fn quiet_owners_are_forgotten() {
        let mut b = LineBudget::new(10);
        let t0 = Instant::now();
        assert!(b.admit(&owner("once"), t0));
        b.due(t0 + Duration::from_secs(2), false);
        assert!(b.owners.is_empty());
    }
}
