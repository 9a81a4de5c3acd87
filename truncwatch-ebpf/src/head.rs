//! Response heads: the first bytes of a send that begins one, and, for a head that does not end
//! there, the rest of it: from the same send's later bytes and iovecs, then from the next sends,
//! up to `--max-head-bytes`.
//!
//! The common case costs what it always did: the first `HEAD_CAP` bytes go straight into the
//! head event, and a capture that ends with `\r\n\r\n` (a head in a buffer of its own, as nginx,
//! hyper and most servers write it) is done after one more load. Only a capture that ends
//! otherwise is scanned for the blank line (a head and body in one buffer), and only a head that
//! does not end within it pays for the gathering (`more`).
use crate::{
    kernel::{IoCall, read_user, untimed_header},
    maps::{
        BPF_RB_NO_WAKEUP, EVENTS, count_lost, lost_reason, owner_admits, piece_buf, settings,
        wake_flags,
    },
    send::fill_send,
};
use aya_ebpf::helpers::generated::{bpf_probe_read_user, bpf_ringbuf_output};
use core::ffi::c_void;
use truncwatch_common::{
    EV_HEAD, EV_HEAD_PIECE, FLAG_EVENTS_LOST, FLAG_HEAD_LF, FLAG_HEAD_LFCR, HEAD_CAP, HeadEvent,
    HeadPiece, MAX_GATHER_IOV, MAX_HEAD_LIMIT, PIECE_ARGS, PIECE_BUF, SockState,
};

/// A send (`ret` bytes of it taken, at stream offset `offset`) on a tracked socket, first
/// step: if it begins a response head, send the head event (`flags` added to its flags) and
/// return true; the caller sends a plain send event otherwise. Then, as the send's last step,
/// the caller calls `head_goes_on`.
#[inline(always)]
pub fn head_begins(
    sk: *mut c_void,
    st: &mut SockState,
    offset: u64,
    ret: i32,
    call: &IoCall,
    flags: u32,
    share: bool,
) -> bool {
    let readable = ret > 0 && call.buf() != 0;
    let fits = readable && call.buf_len() >= 5;
    // A request was read since the last head: this send most likely starts the response, so
    // copy the head straight away and check its first bytes there, saving a user read (each
    // costs the sender some 70 ns). Otherwise look at the first bytes before copying anything.
    let guess = fits && st.head_more == 0 && st.requests > 0;
    let known = !guess && fits && begins_head(call.buf());
    let began = (guess || known) && head(sk, st, offset, ret, call, flags, known, share);
    if !began {
        if readable && st.head_more > 0 {
            st.head_skip = 0; // a head being gathered goes on in this send, from its start
        } else {
            st.head_more = 0;
        }
    }
    began
}

/// A send's last step: if a head has not ended yet (in the capture of a head event this send
/// just sent, or in the sends before), gather its next bytes from this send.
///
/// Last, and in this one place whatever led here, with what it needs passed through the piece
/// buffer (map memory, of which the verifier knows no more than its type): the verifier then
/// follows it once, not once for every way of getting here.
#[inline(always)]
pub fn head_goes_on(sk: *mut c_void, st: &mut SockState, offset: u64, ret: i32, call: &IoCall) {
    if reload(&st.head_more) == 0 {
        return;
    }
    let Some(buf) = piece_buf() else { return };
    let args = gather_args(buf);
    unsafe {
        (*args).seg0 = call.iov[0];
        (*args).vec = call.vec;
        (*args).vlen = call.vlen;
        (*args).offset = offset;
        (*args).send_end = send_end(offset, ret, call);
        (*args).sk = sk as u64;
    }
    // Two calls, each from here: a call inside a call would add up their stacks, and older
    // verifiers (6.1) count every frame of a chain against 512 bytes.
    let got = truncwatch_head_gather(st);
    if got != 0 {
        piece_end(st, got);
    }
}

/// `gather_piece`, as a BPF global function: the verifier checks it once, on its own, whatever
/// the paths that lead to it (a static function is checked again for each way in, and those
/// were enough to reach the verifier's limit). Its arguments must be scalars or pointers to
/// memory of a known size: the rest comes through this CPU's piece buffer.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn truncwatch_head_gather(st: *mut SockState) -> u32 {
    match (unsafe { st.as_mut() }, piece_buf()) {
        (Some(st), Some(buf)) => gather_piece(st, buf),
        _ => 0,
    }
}

/// `blank_line` over the first `n` bytes of the piece in this CPU's buffer (`carry`: what the
/// bytes before them ended with), as a BPF global function (see `truncwatch_head_gather`).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn truncwatch_piece_scan(n: u32, carry: u32) -> u32 {
    let Some(buf) = piece_buf() else { return ENDED };
    let bytes = unsafe { buf.cast::<u8>().add(core::mem::size_of::<HeadPiece>()) };
    blank_line::<{ PIECE_SCAN / 8 }>(bytes, n & (MAX_HEAD_LIMIT as u32 - 1), carry)
}

/// Bytes of a piece looked at for the head's end.
const PIECE_SCAN: usize = 2048;

/// What `more` gathers from, kept after the bytes in the piece buffer.
#[repr(C)]
struct GatherArgs {
    /// The send's first buffer (base, length), and its iovec array and length if it has one.
    seg0: [u64; 2],
    vec: u64,
    vlen: u64,
    /// Stream offset of the send's first byte, and one past its last offered byte.
    offset: u64,
    send_end: u64,
    /// The socket (its address, for the event).
    sk: u64,
}

#[inline(always)]
fn gather_args(buf: *mut [u8; PIECE_BUF]) -> *mut GatherArgs {
    unsafe {
        buf.cast::<u8>()
            .add(PIECE_BUF - PIECE_ARGS)
            .cast::<GatherArgs>()
    }
}

const _: () = assert!(core::mem::size_of::<GatherArgs>() <= PIECE_ARGS);

/// Whether the user buffer at `buf` begins with `HTTP/`.
#[inline(always)]
fn begins_head(buf: u64) -> bool {
    read_user::<[u8; 5]>(buf).is_some_and(|m| &m == b"HTTP/")
}

/// Stream offset one past the last byte a send at `offset` offered (or took, if more: the
/// offered size is unknown for long iovec arrays).
#[inline(always)]
fn send_end(offset: u64, ret: i32, call: &IoCall) -> u64 {
    let took = if ret > 0 { ret as u64 } else { 0 };
    offset
        + if call.requested > took {
            call.requested
        } else {
            took
        }
}

/// A send that may start a response head: copy up to `HEAD_CAP` bytes of it from the caller's
/// buffer, whether or not the kernel accepted them all (the head's promise is what matters, and
/// a head the kernel took only part of is exactly the slow-reader case), and send the head
/// event. Returns whether it was a head. If the head does not end within the capture, set
/// `st.head_more` for the rest of it.
///
/// `known`: the caller checked the send begins a head. If not, the copy is checked here.
/// `share`: hold the owner to its share of the ring buffer (`Store::OWNER_SHARE`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head(
    sk: *mut c_void,
    st: &mut SockState,
    offset: u64,
    ret: i32,
    call: &IoCall,
    flags: u32,
    known: bool,
    share: bool,
) -> bool {
    // (Before the reservation: a discarded record keeps its room until the agent reads past
    // it.)
    let size = core::mem::size_of::<HeadEvent>() as u64;
    let entry = if share && !owner_admits(size) {
        None
    } else {
        EVENTS.reserve_untyped::<HeadEvent>(0)
    };
    let Some(mut entry) = entry else {
        if known || begins_head(call.buf()) {
            count_lost(lost_reason(size));
            st.flags |= FLAG_EVENTS_LOST;
            st.head_more = 0;
            return true;
        }
        return false;
    };
    let ev = entry.as_mut_ptr();
    let n = bounded(call.buf_len(), HEAD_CAP as u32);
    let cap = unsafe { (&raw mut (*ev).cap).cast::<u8>() };
    let copied = unsafe { bpf_probe_read_user(cap.cast(), n, call.buf() as *const c_void) } == 0;
    // A guess is checked in the copy; if the copy failed (a page not present), in a look at
    // the first bytes alone.
    let is_head = known
        || if copied {
            let first: [u8; 5] = unsafe { core::ptr::read_unaligned(cap.cast::<[u8; 5]>()) };
            first == *b"HTTP/"
        } else {
            begins_head(call.buf())
        };
    if !is_head {
        // Nothing to read behind a discarded record: no wakeup, no ring query for one.
        entry.discard(BPF_RB_NO_WAKEUP);
        return false;
    }

    unsafe {
        (*ev).cap_len = if copied { n } else { 0 };
        fill_send(
            &raw mut (*ev).send,
            EV_HEAD,
            sk,
            offset,
            ret,
            call,
            (st.flags & FLAG_EVENTS_LOST) | flags,
        );
        (*ev)._pad = 0;
        // The requests read since the last head go with this one.
        (*ev).requests = st.requests;
        (*ev).method = st.method;
    }
    st.requests = 0;
    st.method = 0;
    // Most heads end exactly where their buffer does; others are looked for.
    let found = if !copied {
        ENDED // nothing to go on with: the agent finds it unparsed
    } else if n >= 4 && ends_blank(cap, n) {
        ENDED
    } else {
        truncwatch_head_end(cap.cast(), n)
    };
    entry.submit(wake_flags());
    // The head goes on past the capture (in this send's later bytes, or the next sends): the
    // rest is gathered next (`head_or_more`), up to `--max-head-bytes`.
    let max = settings().max_head_bytes;
    st.head_more = if found & ENDED == 0 && max > n {
        max - n
    } else {
        0
    };
    st.head_skip = n as u16;
    st.flags = (st.flags & !(FLAG_HEAD_LF | FLAG_HEAD_LFCR)) | carry_flags(found);
    true
}

/// `blank_line` over a head event's capture, as a BPF global function: checked once by the
/// verifier, not once for every way a send comes to it.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn truncwatch_head_end(cap: *const [u8; HEAD_CAP], n: u32) -> u32 {
    if cap.is_null() {
        return ENDED;
    }
    blank_line::<{ HEAD_CAP / 8 }>(cap.cast(), n.min(HEAD_CAP as u32), 0)
}

/// More of a head that has not ended yet (`st.head_more` bytes of it may still be captured):
/// gather the send's bytes from data position `st.head_skip` on into this CPU's piece buffer
/// `buf` and send them as a `HeadPiece`. Returns how many (`| WHOLE` if they were all the
/// send's, not cut by the budget or an unreadable buffer), for `piece_end` to look at; 0 if
/// none (then `st.head_more` says whether the head goes on in the next send). The send is
/// described by the buffer's `GatherArgs`.
///
/// Everything comes from memory, loaded afresh (volatile: LLVM would otherwise hand over the
/// values just stored, and with them all the verifier knew of them), and sizes are masked
/// below `HEAD_CAP` and `MAX_HEAD_LIMIT`, which shows the verifier their bounds.
#[inline(always)]
fn gather_piece(st: &mut SockState, buf: *mut [u8; PIECE_BUF]) -> u32 {
    let skip = reload(&st.head_skip) as u64 & (2 * HEAD_CAP as u64 - 1);
    let budget = reload(&st.head_more) as u64 & (MAX_HEAD_LIMIT as u64 - 1);
    let args = gather_args(buf);
    let (offset, send_end) = unsafe { (reload(&(*args).offset), reload(&(*args).send_end)) };
    let sk = unsafe { reload(&(*args).sk) } as *mut c_void;
    if offset + skip >= send_end {
        return 0; // nothing after the head event's capture in this send: on in the next one
    }
    let piece = buf.cast::<HeadPiece>();
    let bytes = unsafe { buf.cast::<u8>().add(core::mem::size_of::<HeadPiece>()) };
    let got = gather(args, skip, budget, piece, bytes);
    if got == 0 {
        st.head_more = 0; // unreadable: the agent finds the head unfinished (unparsed)
        return 0;
    }
    let offset = offset + skip;
    // All that was gathered goes out (the head's end and maybe some body: the agent parses no
    // further than the end). Trimming it at the end found would make the verifier follow
    // every place the end can be, one by one.
    unsafe {
        (*piece).h = untimed_header(EV_HEAD_PIECE, sk);
        (*piece).offset = offset;
        (*piece).send_end = send_end;
        (*piece).len = got as u32;
        (*piece).flags = st.flags & FLAG_EVENTS_LOST;
    }
    let size = core::mem::size_of::<HeadPiece>() as u64 + got;
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    if !owner_admits(size)
        || unsafe { bpf_ringbuf_output(map, buf.cast(), size, wake_flags()) } != 0
    {
        count_lost(lost_reason(size));
        st.flags |= FLAG_EVENTS_LOST;
        st.head_more = 0;
        return 0;
    }
    let whole = got < budget && offset + got >= send_end;
    got as u32 | if whole { WHOLE } else { 0 }
}

/// `gather_piece`'s answer: the bytes gathered were all of the send's.
const WHOLE: u32 = 1 << 31;

/// After `gather_piece` sent a piece (`got`, its answer): does the head end in it? If not,
/// and the piece was all of its send, the head goes on in the next send (`st.head_more`, the
/// budget left); otherwise no more of it is gathered.
///
/// Only the piece's first `PIECE_SCAN` bytes are looked at (each 64 bytes cost the verifier
/// some 650 instructions): a head whose end lies further is taken to go on, and the next sends
/// are gathered up to the bound, for the agent to find the end.
#[inline(always)]
fn piece_end(st: &mut SockState, got: u32) {
    let budget = reload(&st.head_more) & (MAX_HEAD_LIMIT as u32 - 1);
    let carry = reload(&st.flags) & (FLAG_HEAD_LF | FLAG_HEAD_LFCR);
    st.head_more = 0;
    st.flags &= !(FLAG_HEAD_LF | FLAG_HEAD_LFCR);
    let n = got & (MAX_HEAD_LIMIT as u32 - 1);
    let found = truncwatch_piece_scan(n, carry);
    if found & ENDED == 0 && got & WHOLE != 0 && n < budget {
        st.head_more = budget - n;
        st.flags |= carry_flags(found);
    }
}

/// Copy the send's bytes from data position `skip` on, at most `max` (below `MAX_HEAD_LIMIT`)
/// of them, to `dst`, buffer after buffer; returns how many were copied (it stops at the first
/// that cannot be read).
///
/// The count so far lives in the piece buffer's `len`, not in a register, and sizes are
/// bounded by masks, not clamps: the verifier then sees every round begin alike, rather than
/// following each round once per way the rounds before it went.
#[inline(always)]
fn gather(
    args: *const GatherArgs,
    skip: u64,
    max: u64,
    piece: *mut HeadPiece,
    dst: *mut u8,
) -> u64 {
    const MASK: u64 = MAX_HEAD_LIMIT as u64 - 1;
    unsafe { (*piece).len = 0 };
    let mut seen = 0u64; // data position where buffer `i` begins
    let rounds = opaque(MAX_GATHER_IOV); // a loop LLVM does not unroll
    let mut i = 0u32;
    while i < rounds {
        let pos = unsafe { (*piece).len } as u64 & MASK;
        if pos >= max {
            break;
        }
        let [base, len] = segment(args, i);
        if base == 0 && len == 0 {
            break;
        }
        if seen + len > skip {
            let from = if skip > seen { skip - seen } else { 0 };
            let room = max - pos;
            let want = len - from;
            // Below MAX_HEAD_LIMIT already; the mask shows it to the verifier (on a value LLVM
            // cannot see through: it would drop the mask as redundant, and 6.1's verifier does
            // not follow the bound through the comparison).
            let n = opaque(if want > room { room } else { want }) & MASK;
            let at = unsafe { dst.add(pos as usize) };
            if unsafe { bpf_probe_read_user(at.cast(), n as u32, (base + from) as *const c_void) }
                != 0
            {
                break;
            }
            unsafe { (*piece).len = (pos + n) as u32 };
        }
        seen += len;
        i += 1;
    }
    (unsafe { (*piece).len }) as u64 & MASK
}

/// The `i`th buffer of the send (base, length): the first as the syscall's registers gave it,
/// the others read from the caller's iovec array; [0, 0] past the end or if unreadable.
#[inline(always)]
fn segment(args: *const GatherArgs, i: u32) -> [u64; 2] {
    let (vec, vlen) = unsafe { (reload(&(*args).vec), reload(&(*args).vlen)) };
    if i == 0 {
        return unsafe { reload(&(*args).seg0) };
    }
    if vec == 0 || i as u64 >= vlen {
        return [0; 2];
    }
    read_user::<[u64; 2]>(vec + 16 * i as u64).unwrap_or([0; 2])
}

/// `blank_line`'s answer when the head ends in the bytes; otherwise it says what they end with
/// (`carry_flags`' input).
const ENDED: u32 = 4;
/// The bytes end with `\n`, or with `\n\r`.
const ENDS_LF: u32 = 1;
const ENDS_LFCR: u32 = 2;

/// The `FLAG_HEAD_*` that carry a `blank_line` answer's last bytes to the next scan.
#[inline(always)]
fn carry_flags(found: u32) -> u32 {
    if found & ENDED != 0 {
        0
    } else if found == ENDS_LFCR {
        FLAG_HEAD_LFCR
    } else if found == ENDS_LF {
        FLAG_HEAD_LF
    } else {
        0
    }
}

/// Whether `p[n-4..n]` is `\r\n\r\n` (`n` in 4..=`HEAD_CAP`).
#[inline(always)]
fn ends_blank(p: *const u8, n: u32) -> bool {
    let at = (n - 4) as usize;
    at <= HEAD_CAP - 4
        && unsafe { core::ptr::read_unaligned(p.add(at).cast::<u32>()) }
            == u32::from_le_bytes(*b"\r\n\r\n")
}

/// Whether the head whose bytes `p[..n]` continue ends there: `ENDED`. Otherwise
/// `ENDS_LF`/`ENDS_LFCR` if the bytes end on the way to its blank line, or 0. `carry`: the `FLAG_HEAD_*` the bytes before `p` ended with. At most `WORDS` * 8 bytes
/// are looked at; `p` is 8-byte aligned.
///
/// The blank line is found by its `\n\r`: a field value holds neither byte (RFC 9112 §5), and a
/// folded line continues with a space, so in a well-formed head the pair only begins the blank
/// line. (A head ending with a bare `\n\n` is not seen here: it is gathered on to the bound,
/// and the agent finds its end.) Eight bytes at a time, each byte that is `\n`, and each that is
/// `\r`, becomes its top bit in a mask, and a `\n` whose next byte is `\r` is one AND away.
///
/// For the verifier, 64 bytes at a time, each block folded into two bitmasks (bit `i`: byte
/// `i` is a `\n`; byte `i` is a `\r` after a `\n`) by arithmetic alone: it keeps a state for
/// every branch it has yet to follow (at most 8192), and a branch per byte would swamp it.
#[inline(always)]
fn blank_line<const WORDS: usize>(p: *const u8, n: u32, carry: u32) -> u32 {
    if carry & FLAG_HEAD_LFCR != 0 {
        // `\n\r` ended the bytes before: this should be the blank line's `\n`.
        return ENDED;
    }
    let mut lf_in = (carry & FLAG_HEAD_LF != 0) as u64; // the byte before the block is `\n`
    // Blocks to look at, at most `WORDS / 8`. The loop compares block counts, never `n`
    // itself, and only its answer outlives it: anything else that differed between its ways
    // out would make the verifier follow all that comes after once for each.
    let blocks = ((n as usize + 63) / 64).min(opaque(WORDS / 8));
    let mut found = 0;
    let mut block = 0usize;
    while block < blocks {
        let mut pairs = 0u64;
        // Eight words in straight code (a loop here, which LLVM keeps, would cost the
        // verifier eight states a block), each loaded where it is used (a copy of the block
        // would take stack, of which a call chain has 512 bytes in all).
        macro_rules! word {
            ($k:literal) => {
                let w = unsafe { core::ptr::read(p.add(block * 64 + 8 * $k).cast::<u64>()) };
                let (lf, cr) = (eq(w, b'\n'), eq(w, b'\r'));
                // Top bit of byte `b` set where byte `b - 1` is `\n`.
                let after_lf = (lf << 8) | (lf_in << 7);
                pairs |= movemask(cr & after_lf) << (8 * $k);
                lf_in = lf >> 63;
            };
        }
        word!(0);
        word!(1);
        word!(2);
        word!(3);
        word!(4);
        word!(5);
        word!(6);
        word!(7);
        let left = n - block as u32 * 64; // bytes of the block before `n` (1..)
        // A `\r` after a `\n` with the blank line's `\n` after it; or at the very end.
        if pairs & valid(left - 1) != 0 {
            found = ENDED;
            break;
        }
        if block + 1 >= blocks {
            found = if pairs & valid(left) != 0 {
                ENDS_LFCR
            } else if left <= 64 && last_byte(p, n, WORDS) == b'\n' {
                ENDS_LF
            } else {
                0
            };
            break;
        }
        block += 1;
    }
    found
}

/// `p[n - 1]` (`n` in 1..=`words` * 8).
#[inline(always)]
fn last_byte(p: *const u8, n: u32, words: usize) -> u8 {
    let at = (n.wrapping_sub(1) as usize).min(words * 8 - 1);
    unsafe { *p.add(at) }
}

/// The bits of the first `n` bytes of a block.
#[inline(always)]
fn valid(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The top bits of the 8 bytes of `m` (all its set bits), as 8 bits.
#[inline(always)]
fn movemask(m: u64) -> u64 {
    (((m >> 7) & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// `*v`, loaded afresh from memory.
#[inline(always)]
fn reload<T: Copy>(v: &T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

/// `v`, as a value LLVM cannot see through (a loop bounded by it is not unrolled).
#[inline(always)]
fn opaque<T: Copy>(v: T) -> T {
    unsafe { core::ptr::read_volatile(&v) }
}

/// The top bit of each byte of `w` that equals `b` (exact: no borrow from byte to byte).
#[inline(always)]
fn eq(w: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (b as u64 * 0x0101_0101_0101_0101);
    !(((x & LOW7) + LOW7) | x) & !LOW7
}

/// `n` as a helper's u32 size, at most `max`: the clamp is done on the 32-bit value itself, so
/// every verifier sees the bound on the register the helper gets. The volatile read keeps
/// LLVM from dropping the clamp as redundant (it often knows `n <= max` already; 6.1's
/// verifier does not).
#[inline(always)]
pub fn bounded(n: u64, max: u32) -> u32 {
    let v = if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    };
    let n = unsafe { core::ptr::read_volatile(&v) };
    if n > max { max } else { n }
}
