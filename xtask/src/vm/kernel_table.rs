//! What ran in each guest and how it went, read back from the guest's console, as the table of
//! `docs/results/kernels.md`.
//!
//! The guest's init prints `VMTEST BEGIN <name>: <command>` and `VMTEST <name> exit=<code>
//! time=<seconds>s` around every command; `<name>` is `check`, `auto-<backend>`, or `<backend>-<run>`. The test
//! suites print libtest's `test result: ok. N passed; M failed; ...` in between.
use std::collections::HashMap;
use std::fmt::Write;

const BACKENDS: [&str; 3] = ["tracepoint", "fentry", "kprobe"];
/// Test suites, by run name, with their column headings.
const SUITES: [(&str, &str); 7] = [
    ("kernel-tests", "kernel tests"),
    ("heads-tests", "heads tests"),
    ("scenarios-tests", "scenario matrix"),
    ("nginx-tests", "nginx"),
    ("hostile-tests", "hostile"),
    ("tls-tests", "HTTPS"),
    ("hyper-tests", "hyper"),
];

/// One guest command: the backend it ran on (`None` for the kernel-wide ones), its run, its
/// exit status, how long it took (s), for a test suite its tests passed and failed, and for the
/// scenario matrix its own totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub backend: Option<String>,
    pub run: String,
    pub exit: i32,
    pub secs: Option<u32>,
    pub tests: Option<(u32, u32)>,
    pub matrix: Option<Matrix>,
}

/// The scenario matrix's totals, from the lines `scenarios.rs` prints (the guest runs it with
/// `--show-output`): `totals: N scenarios, P passed; ...` and `client side: C of N scenarios
/// as expected; ...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matrix {
    pub scenarios: u32,
    pub server_passed: u32,
    pub client_passed: u32,
}

impl Matrix {
    /// Reads one console line into the totals; false if it is not one of them.
    fn read(&mut self, line: &str) -> bool {
        let num = |s: &str| s.trim().parse::<u32>().ok();
        if let Some(r) = line.strip_prefix("totals: ")
            && let Some((n, rest)) = r.split_once(" scenarios, ")
            && let Some((p, _)) = rest.split_once(" passed")
            && let (Some(n), Some(p)) = (num(n), num(p))
        {
            (self.scenarios, self.server_passed) = (n, p);
            return true;
        }
        if let Some(r) = line.strip_prefix("client side: ")
            && let Some((c, _)) = r.split_once(" of ")
            && let Some(c) = num(c)
        {
            self.client_passed = c;
            return true;
        }
        false
    }
}

/// A guest command's last line, `VMTEST <name> exit=<status> time=<seconds>s`: its name, exit
/// status, and time if it says (consoles from before times were printed do not).
pub fn exit_line(line: &str) -> Option<(&str, i32, Option<u32>)> {
    let (name, rest) = line.strip_prefix("VMTEST ")?.rsplit_once(" exit=")?;
    let mut words = rest.split_whitespace();
    let code = words.next()?.parse().ok()?;
    let secs = words
        .next()
        .and_then(|w| w.strip_prefix("time=")?.strip_suffix('s')?.parse().ok());
    Some((name, code, secs))
}

/// The rows of one guest's console, in order.
pub fn rows(console: &[String]) -> Vec<Row> {
    let mut out = Vec::new();
    let mut tests: Option<(u32, u32)> = None;
    let mut matrix: Option<Matrix> = None;
    for line in console {
        let mut m = matrix.unwrap_or_default();
        if line.starts_with("VMTEST BEGIN ") {
            tests = None;
            matrix = None;
        } else if m.read(line.trim_start()) {
            matrix = Some(m);
        } else if let Some(r) = line.trim_start().strip_prefix("test result: ") {
            let count = |word: &str| {
                r.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)?
                            .split_whitespace()
                            .last()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            let (p, f) = tests.unwrap_or((0, 0));
            tests = Some((p + count(" passed"), f + count(" failed")));
        } else if let Some((name, exit, secs)) = exit_line(line) {
            let (backend, run) = match name.split_once('-') {
                Some((b, run)) if BACKENDS.contains(&b) => (Some(b.to_string()), run.to_string()),
                _ => (None, name.to_string()),
            };
            out.push(Row {
                backend,
                run,
                exit,
                secs,
                tests: tests.take(),
                matrix: matrix.take(),
            });
        }
    }
    out
}

impl Matrix {
    fn cell(&self) -> String {
        let n = self.scenarios;
        format!(
            "{}/{n} server side, {}/{n} client side",
            self.server_passed, self.client_passed
        )
    }
}

/// The markdown page: per kernel and backend, the runs and their results, dated `date`. Rows
/// of `previous` (the page as it was) for kernels that did not run now are kept, so that a run
/// of one kernel (`TRUNCWATCH_VM_KERNELS`) updates its rows alone. `ran`: the guests' names
/// (`6.1`, `6.12`), which each release of theirs begins with.
pub fn markdown(
    kernels: &[(String, Vec<Row>)],
    date: &str,
    previous: &str,
    ran: &[&str],
) -> String {
    let mut s = String::from(
        "# Kernels and backends\n\n\
         Written by `cargo xtask vm-test` (also the last step of `cargo xtask test`) from what ran\n\
         in each guest: Debian's kernel packages booted under qemu (TCG), the agent forced onto\n\
         each backend in turn (`TRUNCWATCH_BACKEND`). `check` is `truncwatch check` (a backend\n\
         loads and attaches), `auto` the backend it picks by itself. Detection runs are the\n\
         guest's lab runs, each judged on the server side and the client side with the agent's\n\
         byte counts equal to the client's (`xtask/src/vm/detect.sh`, `tls.sh`). The suites are\n\
         `truncwatch/tests/<name>.rs`, run in the guest with `CI=true` (never skipping): kernel\n\
         and heads from the guest's initramfs; the scenario matrix (`scenarios.rs`), `nginx.rs`,\n\
         `hostile.rs`, `tls.rs` (HTTPS) and `hyper.rs` (hyper 1.10.1 and 1.11.0 from crates.io)\n\
         against real servers, in this machine's own root file system mounted in the guest. A count is of libtest's tests, but the scenario\n\
         matrix's is of its scenarios passed on each side; \"in N s\" is the time it took in the\n\
         guest. Every run (and so CI) runs only part of the suites (`xtask/src/vm/plan.rs`;\n\
         `cargo xtask vm-test --list` prints it); `TRUNCWATCH_VM_FULL=1` runs them all. A result\n\
         that did not run this time shows its last result with the date it ran (\"on ...\", and\n\
         the release when that was an older package of the guest's kernel), or \"not run\".\n\
         This project's own kernel (6.18, tracepoint only) runs every suite in `cargo xtask test`\n\
         itself.\n\n",
    );
    let headings: Vec<&str> = SUITES.iter().map(|(_, h)| *h).collect();
    let header = format!(
        "| kernel | backend | check, auto | selftest | detection runs | {} | run on |",
        headings.join(" | ")
    );
    let _ = writeln!(s, "{header}");
    let _ = writeln!(s, "|{}", "---|".repeat(header.matches(" | ").count() + 1));
    let earlier = earlier_results(previous);
    // Each row with its kernel and backend: new and kept rows are sorted together below.
    let mut lines: Vec<(String, String, String)> = Vec::new();
    for (kernel, rows) in kernels {
        let kernel_wide: Vec<String> = rows
            .iter()
            .filter(|r| r.backend.is_none())
            .map(|r| format!("{} {}", r.run, ok(r.exit)))
            .collect();
        for b in BACKENDS {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.backend.as_deref() == Some(b))
                .collect();
            if mine.is_empty() {
                continue;
            }
            // A column not run now shows its result from an earlier run, dated, if any.
            let before = |heading: &str| earlier_result(&earlier, kernel, b, heading, ran);
            let check = if kernel_wide.is_empty() {
                before("check, auto")
            } else {
                kernel_wide.join(", ")
            };
            let selftest = mine
                .iter()
                .find(|r| r.run == "selftest")
                .map_or_else(|| before("selftest"), |r| took(ok(r.exit), [r.secs]));
            let detection: Vec<&&Row> = mine
                .iter()
                .filter(|r| r.run != "selftest" && !SUITES.iter().any(|(n, _)| *n == r.run))
                .collect();
            let passed = detection.iter().filter(|r| r.exit == 0).count();
            let detection = if detection.is_empty() {
                before("detection runs")
            } else {
                let cell = format!("{passed} of {} passed", detection.len());
                took(&cell, detection.iter().map(|r| r.secs))
            };
            let suite = |(name, heading): &(&str, &str)| {
                let before = || before(heading);
                mine.iter()
                    .find(|r| r.run == *name)
                    .map_or_else(before, |r| {
                        let cell = match (r.exit, r.tests, r.matrix) {
                            (0, _, Some(m)) => m.cell(),
                            (e, _, Some(m)) => format!("FAILED (exit {e}): {}", m.cell()),
                            (0, Some((p, _)), None) => format!("{p} passed"),
                            (e, Some((p, f)), None) => {
                                format!("FAILED (exit {e}): {p} passed, {f} failed")
                            }
                            (e, None, None) => format!("FAILED (exit {e}), no test result"),
                        };
                        took(&cell, [r.secs])
                    })
            };
            let suites: Vec<String> = SUITES.iter().map(suite).collect();
            lines.push((
                kernel.clone(),
                b.to_string(),
                format!(
                    "| {kernel} | {b} | {check} | {selftest} | {detection} | {} | {date} |",
                    suites.join(" | "),
                ),
            ));
        }
    }
    // Kept from the last page: rows of kernels not run now, and of this kernel's backends
    // that did not run now, their cells moved under this page's headings (a column the last
    // page lacked: "not run"). An older release's row gives way to a newer release's row of
    // the same backend written now (which carries its results on, dated: `earlier_result`).
    let columns: Vec<&str> = header[2..header.len() - 2].split(" | ").collect();
    for row in data_rows(previous) {
        let (kernel, backend) = (row[0].1, row[1].1);
        let written = lines
            .iter()
            .any(|(k, b, _)| b == backend && (k == kernel || same_guest(k, kernel, ran)));
        if written {
            continue;
        }
        let cells: Vec<&str> = columns
            .iter()
            .map(|c| {
                row.iter()
                    .find(|(h, _)| h == c)
                    .map_or("not run", |(_, v)| v)
            })
            .collect();
        lines.push((
            kernel.to_string(),
            backend.to_string(),
            format!("| {} |", cells.join(" | ")),
        ));
    }
    // Newest kernel first, backends in BACKENDS order, whichever run each row comes from.
    lines.sort_by_key(|(kernel, backend, _)| {
        let b = BACKENDS.iter().position(|x| x == backend);
        (std::cmp::Reverse(release(kernel)), kernel.clone(), b)
    });
    for (_, _, line) in lines {
        let _ = writeln!(s, "{line}");
    }
    s
}

/// A kernel release's numbers, in order: `6.12.117+deb12-amd64` → `[6, 12, 117, 12, 64]`,
/// `6.1.0-57-amd64` → `[6, 1, 0, 57, 64]`.
fn release(kernel: &str) -> Vec<u32> {
    kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The data rows of a page's tables, each cell with its column's heading (from the table's
/// header row), first the kernel's; rows whose width differs from their header are skipped.
fn data_rows(page: &str) -> Vec<Vec<(&str, &str)>> {
    let mut headings: Vec<&str> = Vec::new();
    let mut rows = Vec::new();
    for line in page.lines() {
        let Some(inner) = line.strip_prefix("| ").and_then(|l| l.strip_suffix(" |")) else {
            continue;
        };
        let cells: Vec<&str> = inner.split(" | ").collect();
        if cells.first() == Some(&"kernel") {
            headings = cells;
        } else if cells[0].starts_with(|c: char| c.is_ascii_digit())
            && cells.len() == headings.len()
            && cells.len() >= 3
        {
            rows.push(headings.iter().copied().zip(cells).collect());
        }
    }
    rows
}

/// The last result of `heading` on `kernel`'s `backend` (from `earlier_results`), or else
/// that of the newest other release of the same guest, with that release named: `86/86 ...
/// (on 2026-12-01, 6.12.117+deb12-amd64)`. Debian updates a guest's kernel package every few
/// weeks, and the suites run on demand keep their last full run's results across it.
fn earlier_result(
    earlier: &HashMap<(String, String, String), String>,
    kernel: &str,
    backend: &str,
    heading: &str,
    ran: &[&str],
) -> String {
    let key = (kernel.to_string(), backend.to_string(), heading.to_string());
    if let Some(cell) = earlier.get(&key) {
        return cell.clone();
    }
    let older = earlier
        .iter()
        .filter(|((k, b, h), _)| b == backend && h == heading && same_guest(k, kernel, ran))
        .max_by_key(|((k, _, _), _)| release(k));
    // Its cell is dated (`... (on <date>)`): the release goes in after the date, unless an
    // earlier carrying put one there.
    match older {
        Some(((k, _, _), cell)) => match cell.rsplit_once(" (on ") {
            Some((result, since)) if !since.contains(", ") => {
                format!("{result} (on {}, {k})", since.trim_end_matches(')'))
            }
            _ => cell.clone(),
        },
        None => "not run".into(),
    }
}

/// Whether releases `a` and `b` (`6.12.117+deb12-amd64`, `6.12.118+deb12-amd64`) are of one
/// guest run now (`ran`: `6.12`).
fn same_guest(a: &str, b: &str, ran: &[&str]) -> bool {
    let of = |k: &str, g: &str| k.strip_prefix(g).is_some_and(|r| r.starts_with(['.', '-']));
    ran.iter().any(|g| of(a, g) && of(b, g))
}

/// The results on the last page (every column but kernel, backend and date), by (kernel,
/// backend, column heading), each with the date it ran: `35 passed (on 2026-12-01)`. Read by heading, so that a page with other columns
/// still gives its results.
fn earlier_results(previous: &str) -> HashMap<(String, String, String), String> {
    let mut out = HashMap::new();
    for row in data_rows(previous) {
        let (kernel, backend, date) = (row[0].1, row[1].1, row[row.len() - 1].1);
        for (heading, cell) in &row {
            let result = !matches!(*heading, "kernel" | "backend" | "run on");
            if !result || cell.starts_with("not run") || cell.is_empty() {
                continue;
            }
            let dated = if cell.contains(" (on ") {
                cell.to_string()
            } else {
                format!("{cell} (on {date})")
            };
            out.insert(
                (kernel.to_string(), backend.to_string(), heading.to_string()),
                dated,
            );
        }
    }
    out
}

/// `cell`, with the time its runs took together (`9 of 9 passed in 80 s`) when each says.
fn took(cell: &str, secs: impl IntoIterator<Item = Option<u32>>) -> String {
    match secs.into_iter().sum::<Option<u32>>() {
        Some(secs) => format!("{cell} in {secs} s"),
        None => cell.to_string(),
    }
}

fn ok(exit: i32) -> &'static str {
    if exit == 0 { "ok" } else { "FAILED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn reads_runs_and_suites_from_the_console() {
        let c = console(
            "VMTEST START kernel=6.12.107+deb12-amd64 uptime=2.7s\n\
             VMTEST BEGIN check: /bin/truncwatch check\n\
             backend: tracepoint (4 hooks loaded and attached, then detached)\n\
             VMTEST check exit=0\n\
             VMTEST BEGIN auto-tracepoint: sh -c ...\n\
             VMTEST auto-tracepoint exit=0\n\
             VMTEST BEGIN tracepoint-selftest: /bin/truncwatch selftest\n\
             VMTEST tracepoint-selftest exit=0 time=6s\n\
             VMTEST BEGIN tracepoint-unix-short-write: /bin/detect.sh\n\
             VMTEST tracepoint-unix-short-write exit=0 time=8s\n\
             VMTEST BEGIN tracepoint-tcp-slow-reader: /bin/detect.sh\n\
             VMTEST tracepoint-tcp-slow-reader exit=1 time=9s\n\
             VMTEST BEGIN tracepoint-kernel-tests: env CI=true /bin/kernel-tests\n\
             test result: ok. 35 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 359.1s\n\
             VMTEST tracepoint-kernel-tests exit=0 time=359s\n\
             VMTEST BEGIN tracepoint-heads-tests: env CI=true /bin/heads-tests\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             VMTEST tracepoint-heads-tests exit=101\n\
             VMTEST BEGIN tracepoint-scenarios-tests: chroot /newroot ...\n\
             totals: 86 scenarios, 86 passed; recall 100% (36/36 server truncations flagged); ...\n\
             client side: 85 of 86 scenarios as expected; recall 97% ...\n\
             test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             VMTEST tracepoint-scenarios-tests exit=101 time=390s\n\
             VMTEST BEGIN fentry-selftest: /bin/truncwatch selftest\n\
             VMTEST fentry-selftest exit=0\n\
             VMTEST END uptime=900s",
        );
        let r = rows(&c);
        assert_eq!(r.len(), 9);
        assert_eq!(
            r[6],
            Row {
                backend: Some("tracepoint".into()),
                run: "heads-tests".into(),
                exit: 101,
                secs: None,
                tests: Some((2, 1)),
                matrix: None,
            }
        );
        assert_eq!((r[5].exit, r[5].secs), (0, Some(359)));
        assert_eq!(
            (r[1].backend.as_deref(), r[1].run.as_str()),
            (None, "auto-tracepoint")
        );
        // The last page had rows of an older 6.12 and of 6.1: this run replaces 6.12's only.
        let previous = "| kernel | backend | detection runs | kernel tests | nginx | run on |\n|---|---|---|\n\
            | 6.12.107+deb12-amd64 | fentry | 9 of 9 passed | 35 passed | 1 passed (on 2026-11-30) | 2026-11-29 |\n\
            | 6.12.100+deb12-amd64 | tracepoint | 1 of 1 passed | old | x | 2026-11-29 |\n\
            | 6.1.0-57-amd64 | kprobe | 7 of 7 passed | 35 passed | 1 passed | 2026-11-28 |\n\
            | 6.12.107+deb12-amd64 | kprobe | 9 of 9 passed | 36 passed | 1 passed | 2026-11-29 |\n\
            | 6.1.0-57-amd64 | fentry | a row of another width |\n";
        let md = markdown(
            &[("6.12.107+deb12-amd64".into(), r)],
            "2026-12-01",
            previous,
            &["6.12"],
        );
        assert!(
            md.contains("| 6.12.107+deb12-amd64 | tracepoint | check ok, auto-tracepoint ok | ok in 6 s | 1 of 2 passed in 17 s | 35 passed in 359 s | FAILED (exit 101): 2 passed, 1 failed | FAILED (exit 101): 86/86 server side, 85/86 client side in 390 s | x (on 2026-11-29, 6.12.100+deb12-amd64) | not run | not run | not run | 2026-12-01 |"),
            "an older release's result carried on, named: {md}"
        );
        assert!(
            md.contains("| 6.12.107+deb12-amd64 | fentry | check ok, auto-tracepoint ok | ok | 9 of 9 passed (on 2026-11-29) | 35 passed (on 2026-11-29) | not run | not run | 1 passed (on 2026-11-30) | not run | not run | not run | 2026-12-01 |"),
            "{md}"
        );
        assert!(
            !md.contains("kprobe | check"),
            "no new row for a backend that did not run"
        );
        assert!(
            md.contains("| 6.12.107+deb12-amd64 | kprobe | not run | not run | 9 of 9 passed | 36 passed | not run | not run | 1 passed | not run | not run | not run | 2026-11-29 |"),
            "its last row is kept: {md}"
        );
        assert!(
            md.contains("| 6.1.0-57-amd64 | kprobe | not run | not run | 7 of 7 passed | 35 passed | not run | not run | 1 passed | not run | not run | not run | 2026-11-28 |")
                && !md.contains("| old |")
                && !md.contains("another width"),
            "{md}"
        );
        // Newest kernel first, then the backends in their order, kept and new rows alike.
        let order: Vec<(&str, &str)> = data_rows(&md).iter().map(|r| (r[0].1, r[1].1)).collect();
        assert_eq!(
            order,
            [
                ("6.12.107+deb12-amd64", "tracepoint"),
                ("6.12.107+deb12-amd64", "fentry"),
                ("6.12.107+deb12-amd64", "kprobe"),
                ("6.1.0-57-amd64", "kprobe"),
            ],
            "{md}"
        );
        assert_eq!(release("6.1.0-57-amd64"), [6, 1, 0, 57, 64]);
        assert!(release("6.1.0-112-amd64") > release("6.1.0-57-amd64"));
        assert_eq!(release("6.12.117+deb12-amd64"), [6, 12, 117, 12, 64]);
    }
}
