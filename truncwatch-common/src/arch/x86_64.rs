//! x86_64: the syscall ABI the programs read a send's arguments by.
//!
//! Numbers from arch/x86/entry/syscalls/syscall_64.tbl (uapi `asm/unistd_64.h`); the register
//! layout is the ptrace ABI's (`struct pt_regs`, arch/x86/include/asm/ptrace.h), stable.

/// Syscall numbers `sock_send_length` and `sock_recv_length` may find the task in.
pub const SYS_WRITE: u32 = 1;
pub const SYS_WRITEV: u32 = 20;
pub const SYS_SENDTO: u32 = 44;
pub const SYS_SENDMSG: u32 = 46;
pub const SYS_READ: u32 = 0;
pub const SYS_READV: u32 = 19;
pub const SYS_RECVFROM: u32 = 45;
pub const SYS_RECVMSG: u32 = 47;

/// Byte offsets in `struct pt_regs` of the syscall number (`orig_ax`: `ax` is overwritten by
/// the return value) and of the syscall's second and third arguments (`si`, `dx`).
pub const REGS_NR: usize = 120;
pub const REGS_ARG1: usize = 104;
pub const REGS_ARG2: usize = 96;
/// The type of the syscall number's slot (`unsigned long orig_ax`).
pub type RegsNr = u64;
/// `pt_regs` members and the offsets above they must lie at, checked against the running
/// kernel's BTF when the agent starts.
pub const REGS_BTF: &[(&str, usize)] =
    &[("orig_ax", REGS_NR), ("si", REGS_ARG1), ("dx", REGS_ARG2)];
