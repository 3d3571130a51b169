//! procmon's kernel programs: one BTF-enabled tracepoint per process lifecycle hook, writing
//! fixed-size records (procmon-common) into one BPF ring buffer.
//!
//! tp_btf programs get typed `task_struct` pointers, so nothing depends on the tracepoint
//! record layouts (which move between kernels: `sched_process_fork`'s comm fields became
//! `__data_loc` in 6.x). Struct member offsets come from the running kernel's BTF via the
//! `OFFSETS` load-time global.
#![no_std]
#![no_main]
// NB: aya's map methods take `impl Borrow<K>`. Keys and values are passed as references on
// purpose: by value is another monomorphization, and LLVM lays it out differently (passing
// the exit record by value took `sched_process_exit` over the 512-byte BPF stack).
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "pins the map calls' codegen and stack use"
)]

mod cgroup;
mod probes;
mod task;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use procmon_common::{cost_floor, stat, KernelOffsets, ProbeConfig};

/// Default size; the agent overrides it at load time (`--ringbuf-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU counters, indexed by `procmon_common::stat`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Whether each exiting thread is its group's last, by tid, as `taskstats_exit()` is told
/// (probes/exit.rs): written just before, and taken at, the thread's `sched_process_exit`.
#[map]
static GROUP_DEAD: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `struct oom_control *` of the `out_of_memory()` call in progress, by the thread running
/// it (probes/oom.rs). Calls are serialized by `oom_lock`; the bound is slack.
#[map]
static OOM_CONTEXT: HashMap<u32, u64> = HashMap::with_max_entries(64, 0);

/// Filled in by the agent from /sys/kernel/btf/vmlinux before load.
#[unsafe(no_mangle)]
// SAFETY: `KernelOffsets` is `repr(C)` with integer fields only: all zeroes is a valid value.
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig {
    wakeup_bytes: 64 * 1024,
    cost_floor: cost_floor::NONE,
    _pad: 0,
};

/// Load-time globals live in a frozen .rodata map: the volatile read keeps the compiler from
/// folding in the zeroes compiled above, and the verifier then sees the real constants.
#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a reference to a static is valid and aligned, and nothing writes the global
    // once the program is loaded (its map is frozen).
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// One field of a load-time global (`OFFSETS`, `CONFIG`), read straight from the frozen
/// .rodata map where it is used, so the verifier knows it as a constant (what
/// [`task::Kptr::field`] needs of an offset, and what lets it drop branches on `CONFIG`).
/// NB: not a copy of the whole global: the compiler keeps such a copy on the BPF stack, and
/// verifiers before 5.13 or so forget the value of a 4-byte constant stored there.
macro_rules! load_time {
    ($global:ident . $field:ident) => {
        $crate::read_load_time(core::ptr::addr_of!($crate::$global.$field))
    };
}
pub(crate) use load_time;

/// A load-time offset (`OFFSETS.$field`), see [`load_time!`].
macro_rules! off {
    ($field:ident) => {
        $crate::load_time!(OFFSETS.$field)
    };
}
pub(crate) use off;

/// The `load_time!` read.
#[inline(always)]
fn read_load_time<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` is the address of a field of a load-time global (the only caller is
    // `load_time!`): a static, so valid and aligned for its type, whose integer fields take
    // any bits, and which nothing writes once the program is loaded (its map is frozen).
    // Volatile, as in `offsets`.
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the lookup succeeded, so `slot` is this CPU's value of a live entry of an
        // array map (never removed), aligned for u64. Only programs on this CPU touch it; one
        // preempting another (PREEMPT_LAZY kernels) can lose an increment, never corrupt it.
        unsafe { *slot += 1 };
    }
}

/// Submit flags: wake the reader only once enough is pending (it also drains on a timer), so
/// a fork storm does not cost one wakeup per event.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= load_time!(CONFIG.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether a lifecycle probe stops here, having told that its run concerns a process:
/// `cargo xtask bench floor` measures the hooks' own cost that way (procmon_common::cost_floor).
/// With `RING` it first reserves a `T` in the ring buffer and discards it. In normal
/// operation the verifier knows the constant and removes the branches: what is left is the
/// constant's load.
#[inline(always)]
fn cost_floor_stop<T: 'static>() -> bool {
    match load_time!(CONFIG.cost_floor) {
        cost_floor::NONE => false,
        cost_floor::RING => {
            if let Some(entry) = EVENTS.reserve::<T>(0) {
                entry.discard(BPF_RB_NO_WAKEUP as u64);
            }
            true
        }
        _ => true,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program whose panic path is reachable; this never runs.
    loop {}
}
