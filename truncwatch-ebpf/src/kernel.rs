//! Reading kernel and user memory at offsets the agent took from BTF.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    generated::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
};
use core::ffi::c_void;
use truncwatch_common::{
    Header, REGS_ARG1, REGS_ARG2, REGS_NR, RegsNr, SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG,
    SYS_SENDMSG, SYS_SENDTO, SYS_WRITE, SYS_WRITEV, TAIL,
};

#[inline(always)]
pub fn read_kernel<T: Copy>(addr: u64) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let r = unsafe {
        bpf_probe_read_kernel(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        )
    };
    if r == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

#[inline(always)]
pub fn read_user<T: Copy>(addr: u64) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const c_void,
        )
    };
    if r == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

/// `sock->sk`, loaded straight from the BTF-typed `struct socket *` a tracing program gets, so
/// that the verifier knows the result for a `struct sock *` (socket storage needs that; a
/// value read with `bpf_probe_read_kernel` would be a plain number to it). The offset comes
/// from a read-only global, which the verifier treats as the constant it is. (Before the
/// agent fills the offsets in, the handlers do nothing with what this returns.)
#[inline(always)]
pub fn socket_sk(sock: *const u8) -> Option<*mut c_void> {
    if sock.is_null() {
        return None;
    }
    let off = crate::maps::offsets().socket_sk as usize;
    let sk = unsafe { core::ptr::read_volatile(sock.add(off).cast::<*mut c_void>()) };
    if sk.is_null() { None } else { Some(sk) }
}

#[inline(always)]
pub fn header(kind: u32, sk: *mut c_void) -> Header {
    Header {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..untimed_header(kind, sk)
    }
}

/// A header without a timestamp (0), for send events: the agent dates them itself when it
/// reads them (normally within its 20 ms drain interval), which is close enough for what it uses their
/// time for, and reading the clock cost the sender some 35 ns per send here.
#[inline(always)]
pub fn untimed_header(kind: u32, sk: *mut c_void) -> Header {
    Header {
        kind,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        sk: sk as u64,
        ts_ns: 0,
    }
}

/// What the sending (or receiving) task asked for, read from its saved syscall registers: the
/// tracepoints run inside the syscall, so `current`'s `pt_regs` still hold the syscall number
/// and arguments (no syscall hook needed).
pub struct IoCall {
    pub nr: u32,
    /// For a TLS library's write: the TCP socket's `write_seq` after it (`SendEvent::seq`).
    pub seq: u32,
    /// Bytes the caller asked to send in total (0 if unknown).
    pub requested: u64,
    /// The caller's buffers in order (base, length): one for write/sendto, up to `MAX_IOV`
    /// iovecs for writev/sendmsg (`niov` = 0: not known, e.g. longer vectors).
    pub iov: [[u64; 2]; MAX_IOV as usize],
    pub niov: u64,
    /// For writev/sendmsg: the user address of the whole iovec array and its length (0, 0
    /// otherwise), where a head spread over many iovecs is gathered from.
    pub vec: u64,
    pub vlen: u64,
    /// For a read over more buffers than `iov` holds: its last bytes' address and count, found
    /// in its iovec array (`recv::received`); 0 otherwise.
    pub tail_at: u64,
    pub tail_n: u64,
}

impl IoCall {
    /// First user buffer of the send (0 if none: sendfile, splice, kernel senders).
    #[inline(always)]
    pub fn buf(&self) -> u64 {
        self.iov[0][0]
    }

    /// Bytes available at `buf()`.
    #[inline(always)]
    pub fn buf_len(&self) -> u64 {
        self.iov[0][1]
    }

    pub const NONE: IoCall = IoCall {
        nr: u32::MAX,
        seq: 0,
        requested: 0,
        iov: [[0; 2]; MAX_IOV as usize],
        niov: 0,
        vec: 0,
        vlen: 0,
        tail_at: 0,
        tail_n: 0,
    };

    /// User address and length of the last accepted bytes (at most `TAIL`) of a send the kernel
    /// took `accepted` bytes of.
    ///
    /// A fixed number of rounds, without an early exit: LLVM then unrolls it, where a loop
    /// bounded by `niov` became one older verifiers (6.1) cannot bound. Plain integers, not an
    /// `Option` of the answer: LLVM spilled the undefined payload of a `None`, which the
    /// verifier refuses (it did in the kprobe backend's send program on 6.1).
    #[inline(always)]
    pub fn tail(&self, accepted: u64) -> Option<(u64, u64)> {
        let mut before = 0u64;
        let mut found = self.tail_n != 0;
        let (mut addr, mut n) = (self.tail_at, self.tail_n);
        for i in 0..MAX_IOV as usize {
            let [base, len] = self.iov[i];
            if !found && (i as u64) < self.niov && accepted <= before + len {
                let in_seg = accepted - before;
                n = if in_seg < TAIL as u64 {
                    in_seg
                } else {
                    TAIL as u64
                };
                addr = base + in_seg - n;
                found = true;
            }
            before += len;
        }
        if n == 0 { None } else { Some((addr, n)) }
    }
}

/// Up to this many iovecs are summed for `requested`; longer vectors report 0 (unknown).
const MAX_IOV: u64 = 4;

/// The current syscall's I/O arguments; `IoCall::NONE`'s empty buffers where they cannot be
/// known. (Never an `Option`: LLVM then spilled an undefined register on the `None` path, which
/// the verifier refuses.)
#[inline(always)]
pub fn io_call() -> IoCall {
    // A BTF pointer to `struct pt_regs`: loads from it are checked against BTF by the
    // verifier, and cost no helper call.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return IoCall::NONE;
    }
    // Where the number and the arguments sit, and the number's width, are the architecture's
    // (truncwatch_common's arch/ files); what follows is the same everywhere.
    let reg = |off: usize| unsafe { core::ptr::read_volatile(regs.add(off).cast::<u64>()) };
    let nr = unsafe { core::ptr::read_volatile(regs.add(REGS_NR).cast::<RegsNr>()) } as u32;
    let arg1 = reg(REGS_ARG1);
    let arg2 = reg(REGS_ARG2);
    match nr {
        SYS_WRITE | SYS_SENDTO | SYS_READ | SYS_RECVFROM => {
            let mut c = IoCall {
                nr,
                requested: arg2,
                ..IoCall::NONE
            };
            c.iov[0] = [arg1, arg2];
            c.niov = 1;
            c
        }
        SYS_WRITEV | SYS_READV => iov_call(nr, arg1, arg2),
        SYS_SENDMSG | SYS_RECVMSG => {
            // struct user_msghdr (uapi): msg_iov at 16, msg_iovlen at 24.
            match read_user::<[u64; 2]>(arg1 + 16) {
                Some([iov, cnt]) => iov_call(nr, iov, cnt),
                None => IoCall { nr, ..IoCall::NONE },
            }
        }
        _ => IoCall { nr, ..IoCall::NONE },
    }
}

#[inline(always)]
fn iov_call(nr: u32, iov: u64, cnt: u64) -> IoCall {
    // struct iovec (uapi): base, len. One read for the vector, not one per element: each
    // user read costs.
    // An unreadable vector reads as zeroes (no buffer), not as an early return: returning
    // early out of here made LLVM store a register a helper call had clobbered, which older
    // verifiers (6.1) refuse.
    let mut c = IoCall {
        nr,
        vec: iov,
        vlen: cnt,
        ..IoCall::NONE
    };
    match cnt {
        0 => return c,
        1 => c.iov[0] = read_user::<[u64; 2]>(iov).unwrap_or([0; 2]),
        2 => {
            let v = read_user::<[[u64; 2]; 2]>(iov).unwrap_or([[0; 2]; 2]);
            c.iov[0] = v[0];
            c.iov[1] = v[1];
        }
        3..=MAX_IOV => {
            c.iov =
                read_user::<[[u64; 2]; MAX_IOV as usize]>(iov).unwrap_or([[0; 2]; MAX_IOV as usize])
        }
        _ => c.iov[0] = read_user::<[u64; 2]>(iov).unwrap_or([0; 2]), // longer vectors: the first buffer only
    }
    if cnt <= MAX_IOV {
        c.niov = cnt;
        c.requested = c.iov.iter().map(|v| v[1]).sum();
    }
    c
}
