//! Reads of kernel structs at BTF-resolved offsets.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use procmon_common::{stat, KernelOffsets, COMM_LEN};

use crate::{count, off};

/// A kernel pointer (`task_struct *`, `signal_struct *`, ...).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Kptr(pub *const u8);

impl Kptr {
    /// Reads a `T` at `offset`; a failed read is counted and yields zero, so one bad field
    /// never costs the whole record. `T` must be valid for any bytes (an integer or an array
    /// of them).
    #[inline(always)]
    pub fn read<T: Copy + Default>(self, offset: u32) -> T {
        // SAFETY: bpf_probe_read_kernel takes any address: a bad one is a failed read (an
        // error), never a fault. Every `T` read through here is an integer or an array of
        // them, valid for whatever bytes the kernel held.
        match unsafe { bpf_probe_read_kernel(self.0.wrapping_add(offset as usize) as *const T) } {
            Ok(v) => v,
            Err(_) => {
                count(stat::READ_ERROR);
                T::default()
            }
        }
    }

    /// Reads a `T` at `offset` with a plain load instead of a helper call (which costs
    /// 50-100 ns per field on the development VM). `self` must be a BTF-typed pointer: a
    /// tp_btf or fentry argument, or a pointer field loaded from one with
    /// [`Kptr::field_ptr`]; `offset` must be a load-time constant (the `off!` macro). The
    /// verifier then checks the access against the kernel's BTF, and the JIT emits a load
    /// that yields zero instead of faulting on a bad address. `T` is an integer of the
    /// field's size.
    #[inline(always)]
    pub fn field<T: Copy>(self, offset: u32) -> T {
        // SAFETY: see above: the verifier proves the access is within a kernel struct's
        // field, and a bad address reads as zero.
        unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset as usize) as *const T) }
    }

    /// `task_struct.comm` read with [`Kptr::field`]: two 8-byte loads inside the array.
    #[inline(always)]
    pub fn comm_field(self) -> [u8; COMM_LEN] {
        let lo: u64 = self.field(off!(task_comm));
        let hi: u64 = self.field(off!(task_comm) + 8);
        let mut comm = [0u8; COMM_LEN];
        comm[..8].copy_from_slice(&lo.to_ne_bytes());
        comm[8..].copy_from_slice(&hi.to_ne_bytes());
        comm
    }

    /// A pointer field read with [`Kptr::field`]: itself BTF-typed.
    #[inline(always)]
    pub fn field_ptr(self, offset: u32) -> Kptr {
        Kptr(self.field::<u64>(offset) as *const u8)
    }

    #[inline(always)]
    pub fn ptr(self, offset: u32) -> Kptr {
        Kptr(self.read::<u64>(offset) as *const u8)
    }

    #[inline(always)]
    pub fn comm(self, o: &KernelOffsets) -> [u8; COMM_LEN] {
        self.read(o.task_comm)
    }
}

/// The thread group's identity: (tgid, leader's start_boottime).
#[inline(always)]
pub fn process_identity(task: Kptr, o: &KernelOffsets) -> (u32, u64) {
    let leader = task.ptr(o.task_group_leader);
    (task.read(o.task_tgid), leader.read(o.task_start_boottime))
}

/// The real parent's process identity (what getppid() reports, CLONE_PARENT included).
#[inline(always)]
pub fn parent_identity(task: Kptr, o: &KernelOffsets) -> (u32, u64) {
    process_identity(task.ptr(o.task_real_parent), o)
}

/// [`parent_identity`] with plain loads (see [`Kptr::field`]): `task` must be BTF-typed.
#[inline(always)]
pub fn parent_identity_direct(task: Kptr) -> (u32, u64) {
    let parent = task.field_ptr(off!(task_real_parent));
    let leader = parent.field_ptr(off!(task_group_leader));
    (
        parent.field(off!(task_tgid)),
        leader.field(off!(task_start_boottime)),
    )
}

/// `enum mm_counter_type` indexes; the order has been stable since Linux 4.5.
pub const MM_FILEPAGES: u32 = 0;
pub const MM_ANONPAGES: u32 = 1;
pub const MM_SHMEMPAGES: u32 = 3;

/// `mm_rss_stride` of the `atomic_long_t` counters before Linux 6.2 (a `percpu_counter` is
/// at least 24 bytes).
pub const ATOMIC_LONG_STRIDE: u32 = 8;

/// An `mm_struct` RSS counter in pages (0 without an address space). This is the
/// percpu_counter's global count, what the kernel's own get_mm_counter() and its OOM report
/// use: per-CPU deltas not yet folded in (a few hundred KiB at most) are missed.
#[inline(always)]
pub fn mm_counter(mm: Kptr, index: u32, o: &KernelOffsets) -> u64 {
    if mm.0.is_null() {
        return 0;
    }
    mm.read::<i64>(o.mm_rss_stat + index * o.mm_rss_stride)
        .max(0) as u64
}
