//! The kernel↔user ABI of procmon.
//!
//! Every record the eBPF programs write into the ring buffer starts with a [`RecordHeader`]
//! (kind, ABI version, total size) so the agent can reject what it does not know instead of
//! misreading it. Records contain fixed-width integers and byte arrays only, with explicit
//! padding, and their sizes are pinned by `const` asserts: a layout change that is not
//! mirrored on both sides fails to compile.
//!
//! Times are `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`, `task_struct.start_boottime`),
//! the clock `/proc/<pid>/stat` reports start times in, so processes seeded from /proc and
//! processes seen by the probes get the same identity.
#![no_std]

use core::mem::size_of;

/// Bumped whenever a record layout changes.
pub const ABI_VERSION: u16 = 1;

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec filename kept; longer paths are truncated (NUL-terminated inside).
pub const FILENAME_LEN: usize = 256;

/// Record kinds (`RecordHeader::kind`). A `u16` on the wire, `TryFrom` on the user side.
pub mod kind {
    pub const FORK: u16 = 1;
    pub const EXEC: u16 = 2;
    pub const EXIT: u16 = 3;
}

/// `ExitRecord::flags` bits.
pub mod exit_flags {
    /// The last thread of the thread group exited: the process is gone.
    pub const GROUP_DEAD: u32 = 1 << 0;
    /// The exiting thread is the thread-group leader (tid == pid).
    pub const LEADER: u32 = 1 << 1;
}

/// Indexes of the per-CPU `STATS` array map the probes count into.
pub mod stat {
    /// A fork record was dropped: the ring buffer had no room.
    pub const RINGBUF_FULL_FORK: u32 = 0;
    /// An exec record was dropped: the ring buffer had no room.
    pub const RINGBUF_FULL_EXEC: u32 = 1;
    /// An exit record was dropped: the ring buffer had no room.
    pub const RINGBUF_FULL_EXIT: u32 = 2;
    /// A kernel memory read failed; the record was sent with that field zeroed.
    pub const READ_ERROR: u32 = 3;
    /// Thread (not process) exits seen; they are counted, not sent.
    pub const THREAD_EXITS: u32 = 4;
    /// The pending-exit map was full: the exit was sent at once, its CPU time read before
    /// the process finished tearing down (slightly low).
    pub const EXIT_NOT_DEFERRED: u32 = 5;
    /// Number of entries in the map.
    pub const COUNT: u32 = 6;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u16,
    pub version: u16,
    /// Size of the whole record, header included.
    pub size: u32,
}

impl RecordHeader {
    pub const fn new(kind: u16, size: usize) -> Self {
        Self {
            kind,
            version: ABI_VERSION,
            size: size as u32,
        }
    }
}

/// A new process (thread group) was created. Thread creations are not sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: RecordHeader,
    /// When the fork happened (boottime ns).
    pub time_ns: u64,
    /// The child's `start_boottime`.
    pub start_ns: u64,
    /// The real parent's thread-group leader `start_boottime`.
    pub parent_start_ns: u64,
    /// Child tgid.
    pub pid: u32,
    /// Real parent's tgid (what `getppid()` returns in the child).
    pub ppid: u32,
    /// [`fork_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// `ForkRecord::flags` bits.
pub mod fork_flags {
    /// The parent has PR_SET_CHILD_SUBREAPER set: orphans below it are reparented to it.
    pub const PARENT_IS_SUBREAPER: u32 = 1 << 0;
}

/// A process replaced its image.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub time_ns: u64,
    /// The thread-group leader's `start_boottime` (exec keeps the process identity).
    pub start_ns: u64,
    pub parent_start_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    /// The thread id that called execve (differs from `pid` when a non-leader thread execs).
    pub old_tid: u32,
    pub _pad: u32,
    /// The new `comm` (basename of the executable, truncated to 15 bytes by the kernel).
    pub comm: [u8; COMM_LEN],
    /// `linux_binprm.filename`, NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
}

/// A process exited (its last thread did).
///
/// The record is captured at `sched_process_exit` and sent at the dying thread's final
/// context switch, so its CPU times include the exit path itself (unmapping memory, closing
/// files), which on Linux 6.16+ runs after the tracepoint. Times are the whole thread
/// group's: `signal_struct` totals plus the exiting thread's (and a zombie leader's) own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub time_ns: u64,
    pub start_ns: u64,
    pub parent_start_ns: u64,
    /// Raw user / system time (tick-sampled, ns); their ratio splits `runtime_ns`.
    pub utime_ns: u64,
    pub stime_ns: u64,
    /// Scheduler runtime of all threads (`sum_exec_runtime`), exact ns.
    pub runtime_ns: u64,
    /// `signal_struct.maxrss`: the high-water RSS in KiB of images replaced by exec (and, on
    /// older kernels, of this one).
    pub maxrss_kb: u64,
    /// The address space at exit, in pages (0 when it was already released): its high-water
    /// mark and current file / anon / shmem resident pages.
    pub hiwater_pages: u64,
    pub rss_file_pages: u64,
    pub rss_anon_pages: u64,
    pub rss_shmem_pages: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    /// The raw wait status: exit code << 8 | terminating signal | 0x80 if a core was dumped.
    pub exit_status: u32,
    /// [`exit_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<RecordHeader>() == 8);
const _: () = assert!(size_of::<ForkRecord>() == 64);
const _: () = assert!(size_of::<ExecRecord>() == 320);
const _: () = assert!(size_of::<ExitRecord>() == 136);

/// One thread, as the task iterator (`iter/task`) reports it for live sampling. Records are
/// concatenated in the iterator's output; a thread-group leader's record also carries the
/// group's exited-thread totals and the process's RSS, so summing a tgid's records gives the
/// process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSample {
    pub pid: u32,
    pub tid: u32,
    /// The thread-group leader's `start_boottime`.
    pub start_ns: u64,
    pub runtime_ns: u64,
    pub utime_ns: u64,
    pub stime_ns: u64,
    /// Resident pages (file + anon + shmem); leader records only.
    pub rss_pages: u64,
}

const _: () = assert!(size_of::<TaskSample>() == 48);

/// Kernel struct member offsets, resolved from the running kernel's BTF at startup and handed
/// to the probes as a load-time global (`OFFSETS`). Rust eBPF emits no CO-RE relocations, so
/// offsets compiled in from one kernel's headers would be silently wrong on another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_start_boottime: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub task_utime: u32,
    pub task_stime: u32,
    /// `task_struct.se.sum_exec_runtime`.
    pub task_sum_exec_runtime: u32,
    /// `task_struct.__state` (`state` before Linux 5.14).
    pub task_state: u32,
    pub task_mm: u32,
    pub mm_hiwater_rss: u32,
    /// Offset of the value of `mm_struct.rss_stat[0]` and the distance between entries
    /// (`struct percpu_counter` since Linux 6.2, `atomic_long_t` before).
    pub mm_rss_stat: u32,
    pub mm_rss_stride: u32,
    pub signal_utime: u32,
    pub signal_stime: u32,
    pub signal_sum_sched_runtime: u32,
    pub signal_maxrss: u32,
    pub signal_live: u32,
    /// Bit offset of the `signal_struct.is_child_subreaper` bitfield.
    pub signal_subreaper_bit: u32,
    pub binprm_filename: u32,
    /// 1 when `sched_process_exit` passes `group_dead` as its second argument (Linux ≥ 6.16),
    /// 0 when the probe must derive it from `signal_struct.live`.
    pub exit_has_group_dead: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 24 * 4);

/// Load-time tunables of the probes (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Records are submitted without waking the reader until this many bytes are pending;
    /// the reader also drains on a timer. Bounds wakeups under fork storms.
    pub wakeup_bytes: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            wakeup_bytes: 64 * 1024,
        }
    }
}

const _: () = assert!(size_of::<ProbeConfig>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProbeConfig {}
}
