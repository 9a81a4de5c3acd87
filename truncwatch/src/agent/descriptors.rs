//! The agent's descriptor limit (`RLIMIT_NOFILE`). systemd and most shells give processes a
//! soft limit of 1 024 under a far higher hard one; the agent holds a descriptor per program,
//! link, map, hooked library, endpoint connection and canary socket, so it raises its soft
//! limit to the hard one at start, and says so when the limit stays low.
use std::io::Error;

/// A soft limit under this is said on stderr at start.
pub const LOW: u64 = 4096;

/// Raise the soft limit to the hard one (to `fs.nr_open` where the hard one is unlimited).
/// Returns (soft, hard) as they are afterwards. Errors: getrlimit/setrlimit refused.
pub fn raise() -> Result<(u64, u64), Error> {
    let (soft, hard) = get()?;
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if soft < target {
        let l = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(Error::last_os_error());
        }
    }
    get()
}

fn get() -> Result<(u64, u64), Error> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// [`raise`], and a line on stderr when the limit stays under [`LOW`] or cannot be read.
pub fn raise_and_report() {
    match raise() {
        Ok((soft, hard)) if soft < LOW => eprintln!(
            "truncwatch: the descriptor limit (RLIMIT_NOFILE) stays at {soft} (hard limit {hard}): under {LOW}, a host with many TLS libraries or endpoint clients may exhaust it (raise it: systemd LimitNOFILE=, ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("truncwatch: cannot raise the descriptor limit (RLIMIT_NOFILE): {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let (soft, hard) = super::raise().unwrap();
        assert!(
            soft == hard || hard == libc::RLIM_INFINITY,
            "{soft} < {hard}"
        );
    }
}
