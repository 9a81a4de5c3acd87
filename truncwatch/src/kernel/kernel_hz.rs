//! The kernel's timer frequency (CONFIG_HZ), needed to turn the jiffies TCP counts some of its
//! time in into milliseconds. Not exposed directly: measured from `/proc/timer_list`'s
//! `jiffies:` line (root only), or read from the kernel config where one is installed.
use std::time::{Duration, Instant};

/// The frequencies Linux can be built with.
const CANDIDATES: [u64; 4] = [100, 250, 300, 1000];

pub fn detect() -> Option<u64> {
    measure().or_else(from_config)
}

fn measure() -> Option<u64> {
    let a = (jiffies()?, Instant::now());
    std::thread::sleep(Duration::from_millis(200));
    let b = (jiffies()?, Instant::now());
    Some(nearest((b.0 - a.0) as f64 / (b.1 - a.1).as_secs_f64()))
}

fn jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok())
}

fn from_config() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.parse().ok())
}

/// The candidate closest to a measured rate.
fn nearest(rate: f64) -> u64 {
    *CANDIDATES
        .iter()
        .min_by(|a, b| {
            (**a as f64 - rate)
                .abs()
                .total_cmp(&(**b as f64 - rate).abs())
        })
        .unwrap()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_to_a_real_frequency() {
        assert_eq!(super::nearest(247.3), 250);
        assert_eq!(super::nearest(289.0), 300);
        assert_eq!(super::nearest(990.0), 1000);
        assert_eq!(super::nearest(101.0), 100);
    }
}
