//! Reads of kernel structs at BTF-resolved offsets.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use procmon_common::{stat, KernelOffsets, COMM_LEN};

use crate::count;

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

/// `enum mm_counter_type` indexes; the order has been stable since Linux 4.5.
pub const MM_FILEPAGES: u32 = 0;
pub const MM_ANONPAGES: u32 = 1;
pub const MM_SHMEMPAGES: u32 = 3;

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
