//! SIGINT and SIGTERM stop the agent within a few seconds, whatever it is doing.
//!
//! The agent's loop handles them (detach, flush, summary, exit 0), but only when it gets to:
//! a loop stuck in slow work (a blocked stdout, a kernel call that takes long, a file another
//! process made slow) would never see them. A watchdog on a thread of its own learns of the
//! first signal from a handler of its own, and if the agent has not exited [`GRACE`] later,
//! or at a second signal, it ends the process at once (`_exit(1)`, said on stderr). The
//! kernel detaches the programs when their descriptors close, as after SIGKILL.
use std::io::Read;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// From the first SIGINT or SIGTERM to a forced exit.
pub const GRACE: Duration = Duration::from_secs(3);

/// The write end the signal handler wakes the watchdog through.
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// Start the watchdog (once per process; later calls do nothing). Errors: the socket pair, the
/// handlers or the thread could not be made (the agent then runs without it).
pub fn watchdog() -> std::io::Result<()> {
    static STARTED: Once = Once::new();
    let mut result = Ok(());
    STARTED.call_once(|| result = start());
    result
}

fn start() -> std::io::Result<()> {
    let (mut rx, tx) = UnixStream::pair()?;
    // A full buffer drops the byte: one is enough to wake it.
    tx.set_nonblocking(true)?;
    WAKE.store(tx.into_raw_fd(), Ordering::Relaxed);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only calls write(2), which is async-signal-safe.
        unsafe { signal_hook_registry::register(signal, wake) }?;
    }
    std::thread::Builder::new()
        .name("tw-stop-watch".into())
        .spawn(move || {
            let mut byte = [0u8];
            if rx.read_exact(&mut byte).is_err() {
                return;
            }
            let _ = rx.set_read_timeout(Some(GRACE));
            let why = match rx.read_exact(&mut byte) {
                Ok(()) => "a second SIGINT/SIGTERM".to_string(),
                Err(_) => format!("still running {} s after SIGINT/SIGTERM", GRACE.as_secs()),
            };
            force_exit(&why);
        })?;
    Ok(())
}

/// The signal handler: wake the watchdog.
fn wake() {
    let fd = WAKE.load(Ordering::Relaxed);
    // SAFETY: write(2) on a descriptor we own; async-signal-safe.
    unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
}

/// Say why and end the process now: no locks taken (the stuck loop may hold stdout's or
/// stderr's), no destructors run.
fn force_exit(why: &str) -> ! {
    let msg = format!("truncwatch: {why}: exiting now, without the stop summary\n");
    // SAFETY: a valid buffer; _exit has no preconditions.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}
