//! Runs `cargo test`, passing its output through, and totals the results: libtest counts a
//! skipped kernel test as passed, so skips (`SKIP <test>: <reason>` lines) are counted apart.
use anyhow::Result;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub success: bool,
}

pub fn run(c: Command) -> Result<Tally> {
    run_filtered(c, |_| true)
}

/// Like `run`, passing through only the output lines `show` keeps.
pub fn run_filtered(mut c: Command, show: fn(&str) -> bool) -> Result<Tally> {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let t = tally.clone();
    let relay_err = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("SKIP ") {
                t.lock().unwrap().skipped += 1;
            }
            if show(&line) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    });
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if let Some((p, f)) = result_line(&line) {
            let mut t = tally.lock().unwrap();
            t.passed += p;
            t.failed += f;
        }
        if show(&line) {
            println!("{line}");
        }
    }
    let _ = relay_err.join();
    let status = child.wait()?;
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.success = status.success();
    Ok(t)
}

/// `test result: ok. 12 passed; 0 failed; ...` -> (12, 0).
fn result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        let i = rest.find(&format!(" {word}"))?;
        rest[..i]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((num("passed")?, num("failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_libtest_result_lines() {
        let l = "test result: ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 7.30s";
        assert_eq!(super::result_line(l), Some((12, 3)));
        assert_eq!(super::result_line("running 12 tests"), None);
    }
}
