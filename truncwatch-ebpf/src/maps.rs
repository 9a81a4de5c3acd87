//! Maps and globals shared by the programs.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SkStorage},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ringbuf_query, bpf_sk_storage_get,
    },
    macros::btf_map,
};
use core::ffi::c_void;
use truncwatch_common::{Offsets, PIECE_BUF, ProbeSock, Settings, SockState};

/// Per-socket state; see `SockState`.
#[btf_map]
pub static SOCKS: SkStorage<SockState> = SkStorage::new();

/// Events to the agent. The agent sets its size at load time (`--ring-buffer-mib`).
#[btf_map]
pub static EVENTS: RingBuf<u8, { 8 << 20 }> = RingBuf::new();

/// Wake the agent only once this much is waiting. A wakeup per event costs the sending
/// application microseconds per send (measured: 3.9 µs per nginx response); the agent also
/// drains on a short timer, so quiet periods are still seen within milliseconds.
const WAKE_AFTER_BYTES: u64 = 256 << 10;
pub const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Flags for submitting an event: wake the agent only when a batch is waiting.
#[inline(always)]
pub fn wake_flags() -> u64 {
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    if unsafe { bpf_ringbuf_query(map, BPF_RB_AVAIL_DATA) } >= WAKE_AFTER_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Events that could not be delivered, by reason (`LOST_*`): the agent exports them so an
/// operator can tell "no truncation" from "the detector is blind".
#[btf_map]
pub static LOST: PerCpuArray<u64, 4> = PerCpuArray::new();
pub const LOST_RINGBUF_FULL: u32 = 0;
pub const LOST_STORAGE: u32 = 1;
/// Refused: its owner had taken its share of a ring buffer under pressure (`owner_admits`).
pub const LOST_OWNER_SHARE: u32 = 2;

/// Why an event of `size` bytes found no room: the ring buffer is full, or (it has room now)
/// its owner was refused. Asked only once an event is lost: no live value across the
/// reservation (the send programs' stack), and the two almost never race.
#[inline(always)]
pub fn lost_reason(size: u64) -> u32 {
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    let avail = unsafe { bpf_ringbuf_query(map, BPF_RB_AVAIL_DATA) };
    if avail + size + 8 > settings().ring_bytes as u64 {
        LOST_RINGBUF_FULL
    } else {
        LOST_OWNER_SHARE
    }
}

/// What one owner (a cgroup, or a process outside any cgroup of its own) put in the ring
/// buffer during the current pressure episode (`PRESSURE[0]`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OwnerUse {
    episode: u64,
    bytes: u64,
}

/// The owners seen while the ring buffer was under pressure, least recently used forgotten.
#[btf_map]
pub static OWNERS: LruHashMap<u64, OwnerUse, 4096> = LruHashMap::new();

/// `[episode, under]`: pressure episodes so far, and whether one is going on (the ring half
/// full when an event was last offered). Racing CPUs may bump the episode twice: harmless.
#[btf_map]
pub static PRESSURE: Array<u64, 2> = Array::new();

/// Whether the current task may put `bytes` more in the ring buffer (issue 26: one flooding
/// neighbour filled it, and every other process's verdicts were lost). While the ring is less
/// than half full (the agent keeps up) everyone may; once it is half full, each owner may add
/// a quarter of the ring at most until it drains below half again, so one owner can never
/// take the last quarter from the others. Owners are cgroups (v2 ids), or processes where
/// the task's cgroup is the root (hosts with no cgroup per service). Only bulky events
/// (heads, head pieces, sends) ask: opens, state changes and ends always go, so a refused
/// owner's connections end as `observer_loss` (its sockets are marked), never unseen. A refusal
/// is the caller's to count (`LOST_OWNER_SHARE`): a head event is offered before it is known
/// to be one. Not inlined: the send programs' stack (`bpf_stack.rs`).
#[inline(never)]
pub fn owner_admits(bytes: u64) -> bool {
    let ring = settings().ring_bytes as u64;
    if ring == 0 {
        return true;
    }
    let map = core::ptr::from_ref(&EVENTS).cast_mut().cast::<c_void>();
    let avail = unsafe { bpf_ringbuf_query(map, BPF_RB_AVAIL_DATA) };
    let (Some(episode), Some(under)) = (PRESSURE.get_ptr_mut(0), PRESSURE.get_ptr_mut(1)) else {
        return true;
    };
    if avail * 2 < ring {
        if unsafe { *under } != 0 {
            unsafe {
                *under = 0;
                *episode += 1;
            }
        }
        return true;
    }
    unsafe { *under = 1 };
    let episode = unsafe { *episode };
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let owner = if cgroup > 1 {
        cgroup
    } else {
        (unsafe { bpf_get_current_pid_tgid() } >> 32) | 1 << 63
    };
    let share = ring / 4;
    match OWNERS.get_ptr_mut(owner) {
        Some(u) if unsafe { (*u).episode } == episode => unsafe {
            if (*u).bytes + bytes > share {
                return false;
            }
            (*u).bytes += bytes;
        },
        Some(u) => unsafe { *u = OwnerUse { episode, bytes } },
        None => {
            let _ = OWNERS.insert(owner, OwnerUse { episode, bytes }, 0);
        }
    }
    true
}

/// Field offsets of the running kernel, set by the agent from BTF before loading.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    skc_family: 0,
    sk_type: 0,
    sk_protocol: 0,
    unix_peer: 0,
    unix_addr: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    tcp_write_seq: 0,
    tcp_snd_una: 0,
    tcp_snd_nxt: 0,
    tcp_rcv_nxt: 0,
    tcp_copied_seq: 0,
    inet_sport: 0,
    tcp_snd_wnd: 0,
    tcp_chrono_type: 0,
    tcp_chrono_type_shift: 0,
    tcp_chrono_type_mask: 0,
    tcp_chrono_start: 0,
    tcp_chrono_stat: 0,
    socket_sk: 0,
    skc_state: 0,
    icsk_ulp_ops: 0,
    ready: 0,
};

#[inline(always)]
pub fn offsets() -> &'static Offsets {
    // The values are patched into .rodata at load time, so the compiler must not fold the
    // zeroes above: it gets the address through a volatile read it cannot see through. Only
    // the fields used are loaded (a volatile copy of the whole struct cost every send ~20
    // loads, even on sockets that are not HTTP).
    let p = &raw const OFFSETS;
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Settings from the agent, patched into .rodata at load time like `OFFSETS`.
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    max_head_bytes: 0,
    client_side: 0,
    ring_bytes: 0,
};

#[inline(always)]
pub fn settings() -> &'static Settings {
    let p = &raw const SETTINGS;
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Where a head piece is gathered before it goes out, one per CPU (indexed by CPU: a per-CPU
/// map's values are limited to 32 KiB). The agent sets the entries to the possible CPUs.
/// Programs that use it run with migration disabled and never nest on a CPU (sends run in
/// task context), so a CPU's buffer has one user at a time.
#[btf_map]
pub static PIECES: Array<[u8; PIECE_BUF], 1> = Array::new();

/// This CPU's piece buffer.
#[inline(always)]
pub fn piece_buf() -> Option<*mut [u8; PIECE_BUF]> {
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() };
    PIECES.get_ptr_mut(cpu)
}

/// Ring buffer losses host-wide, one shared counter (losses are rare, so sharing it costs
/// nothing). Racing CPUs may miss an increment, never the change itself, which is all that
/// is compared.
#[btf_map]
pub static LOSSES: Array<u32, 1> = Array::new();

#[inline(always)]
pub fn count_lost(reason: u32) {
    if let Some(p) = LOST.get_ptr_mut(reason) {
        unsafe { *p += 1 };
    }
    if reason != LOST_STORAGE
        && let Some(p) = LOSSES.get_ptr_mut(0)
    {
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

/// `LOSSES` now.
#[inline(always)]
pub fn losses() -> u32 {
    LOSSES.get(0).copied().unwrap_or(0)
}

/// Where per-socket state lives: socket storage for the tracing-program backends, a hash map
/// for the kprobe backend. The handlers are generic over it, so each backend's programs are
/// built with its own, and a kprobe program never names a helper it may not call.
pub trait Store {
    /// Whether its programs hold each owner to its share of a ring buffer under pressure
    /// (`owner_admits`) for heads and sends.
    const OWNER_SHARE: bool;
    /// This socket's state, if it has any (`create`: make it, zeroed, if not).
    fn get(sk: *mut c_void, create: bool) -> Option<&'static mut SockState>;
}

/// Socket-local storage (`tp_btf`, fentry): freed by the kernel with the socket, so a reused
/// socket address never inherits a dead connection's state, and nothing needs evicting.
pub struct SkStore;

impl Store for SkStore {
    const OWNER_SHARE: bool = true;
    #[inline(always)]
    fn get(sk: *mut c_void, create: bool) -> Option<&'static mut SockState> {
        let map = core::ptr::from_ref(&SOCKS).cast_mut().cast::<c_void>();
        let flags = if create { 1 } else { 0 }; // BPF_SK_STORAGE_GET_F_CREATE
        let p = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), flags) };
        if p.is_null() {
            if create {
                count_lost(LOST_STORAGE);
            }
            None
        } else {
            Some(unsafe { &mut *p.cast::<SockState>() })
        }
    }
}

/// The kprobe backend's per-socket state, keyed by socket address, made only for connected
/// sockets. Entries are deleted when a TCP socket reaches CLOSE and when a Unix socket is
/// released, and carry the socket's identity, so a reused address starts afresh even if its
/// end was not seen. Not an LRU map: evicting a live connection's entry would make its next
/// response look like a new connection's. When full, new sockets go untracked (counted as
/// `LOST_STORAGE`). Preallocated: kprobe programs on kernels before 6.1 must not allocate at
/// run time. The agent shrinks these maps to one entry for the other backends.
#[btf_map]
pub static PROBE_SOCKS: HashMap<u64, ProbeSock, 65536> = HashMap::new();

/// Unix sends in progress, by task (`bpf_get_current_pid_tgid`): the return probe learns the
/// socket from it. A return that is never seen leaves its entry until the task sends again.
#[btf_map]
pub static PROBE_SENDING: HashMap<u64, u64, 4096> = HashMap::new();

/// Unix reads in progress, by task: the socket and the read's flags.
#[btf_map]
pub static PROBE_READING: HashMap<u64, [u64; 2], 4096> = HashMap::new();

pub struct ProbeStore;

impl ProbeStore {
    #[inline(always)]
    pub fn sock(sk: *mut c_void, create: bool) -> Option<&'static mut ProbeSock> {
        // `sock_common` begins with addresses, hash and ports, then the family (the x86_64
        // layout since 2.6; the agent checks the family's offset against BTF). Unix sockets
        // have no addresses there: their release is always seen, and they keep id 0.
        let [a, b, family] = crate::kernel::read_kernel::<[u64; 3]>(sk as u64)?;
        let inet = matches!(
            family as u16,
            truncwatch_common::AF_INET | truncwatch_common::AF_INET6
        );
        // Without the local port (`skc_num`, the top 16 bits of `b`): a reset connection gets
        // its state change to CLOSE after its port was released, which zeroes it.
        let id = if inet {
            [a, b & 0x0000_ffff_ffff_ffff]
        } else {
            [0, 0]
        };
        if let Some(p) = PROBE_SOCKS.get_ptr_mut(sk as u64) {
            let ps = unsafe { &mut *p };
            if ps.id == id {
                return Some(ps);
            }
            // A socket freed at this address without its end being seen.
            *ps = ProbeSock {
                id,
                ..ProbeSock::default()
            };
            return Some(ps);
        }
        if !create {
            return None;
        }
        // Connected sockets only: an entry made for one that is closing would never be
        // deleted (TCP and Unix stream sockets both say TCP_ESTABLISHED or, for TCP,
        // TCP_CLOSE_WAIT while connected).
        let state =
            crate::kernel::read_kernel::<u8>(sk as u64 + crate::maps::offsets().skc_state as u64)?;
        if state != 1 && state != 8 {
            return None;
        }
        // BPF_NOEXIST: another CPU may have made it meanwhile; then use that one.
        let _ = PROBE_SOCKS.insert(
            sk as u64,
            ProbeSock {
                id,
                ..ProbeSock::default()
            },
            1,
        );
        match PROBE_SOCKS.get_ptr_mut(sk as u64) {
            Some(p) => Some(unsafe { &mut *p }),
            None => {
                count_lost(LOST_STORAGE);
                None
            }
        }
    }

    #[inline(always)]
    pub fn forget(sk: *mut c_void) {
        let _ = PROBE_SOCKS.remove(sk as u64);
    }
}

impl Store for ProbeStore {
    /// Not the kprobe backend's: the check took its Unix send return program past the
    /// 512 bytes of stack 6.1 allows (`bpf_stack.rs`). Its head pieces are held to it.
    const OWNER_SHARE: bool = false;
    #[inline(always)]
    fn get(sk: *mut c_void, create: bool) -> Option<&'static mut SockState> {
        ProbeStore::sock(sk, create).map(|p| &mut p.st)
    }
}
