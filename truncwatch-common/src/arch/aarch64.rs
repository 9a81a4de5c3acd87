//! aarch64 (arm64): the syscall ABI the programs read a send's arguments by.
//!
//! Numbers from include/uapi/asm-generic/unistd.h (arm64 has no table of its own); the
//! registers from arch/arm64/include/asm/ptrace.h: `struct pt_regs` begins with the uapi
//! `user_pt_regs` (`u64 regs[31]`, sp, pc, pstate), then `u64 orig_x0`, `s32 syscallno`
//! (little-endian layout). Checked against Debian 12's 6.1.0-57-arm64 BTF: `syscallno` at
//! byte 280, `regs` at 0.

/// Syscall numbers `sock_send_length` and `sock_recv_length` may find the task in.
pub const SYS_WRITE: u32 = 64;
pub const SYS_WRITEV: u32 = 66;
pub const SYS_SENDTO: u32 = 206;
pub const SYS_SENDMSG: u32 = 211;
pub const SYS_READ: u32 = 63;
pub const SYS_READV: u32 = 65;
pub const SYS_RECVFROM: u32 = 207;
pub const SYS_RECVMSG: u32 = 212;

/// Byte offsets in `struct pt_regs` of the syscall number (`syscallno`) and of the syscall's
/// second and third arguments (`regs[1]`, `regs[2]`: x0 is overwritten by the return value,
/// x1 and x2 are not).
pub const REGS_NR: usize = 280;
pub const REGS_ARG1: usize = 8;
pub const REGS_ARG2: usize = 16;
/// The type of the syscall number's slot (`s32 syscallno`; the verifier refuses a wider load
/// from a BTF pointer than the member it lands in).
pub type RegsNr = i32;
/// `pt_regs` members and the offsets they must lie at, checked against the running kernel's
/// BTF when the agent starts. `regs` is `u64[31]`, so the arguments follow from its offset.
pub const REGS_BTF: &[(&str, usize)] = &[("syscallno", REGS_NR), ("regs", REGS_ARG1 - 8)];
