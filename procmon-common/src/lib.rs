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
pub const ABI_VERSION: u16 = 3;

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec filename kept; longer paths are truncated (NUL-terminated inside).
pub const FILENAME_LEN: usize = 256;

/// Record kinds (`RecordHeader::kind`). A `u16` on the wire, `TryFrom` on the user side.
pub mod kind {
    pub const FORK: u16 = 1;
    pub const EXEC: u16 = 2;
    pub const EXIT: u16 = 3;
    pub const OOM_KILL: u16 = 4;
    pub const CGROUP: u16 = 5;
    /// A process's leader was freed ([`ReleaseRecord`]): its final CPU figures.
    pub const RELEASE: u16 = 6;
}

/// Components of a cgroup path kept, leaf first: the deepest ones name the workload.
pub const CGROUP_DEPTH: usize = 8;
/// Bytes kept of each cgroup directory name (NUL-terminated inside; longer names are cut).
/// Container scopes (`cri-containerd-<64 hex>.scope`) fit.
pub const CGROUP_NAME_LEN: usize = 128;

/// Linux signal numbers the ABI relies on (the generic numbering of x86, arm and riscv).
pub mod signal {
    pub const SIGQUIT: u8 = 3;
    pub const SIGILL: u8 = 4;
    pub const SIGTRAP: u8 = 5;
    pub const SIGABRT: u8 = 6;
    pub const SIGBUS: u8 = 7;
    pub const SIGFPE: u8 = 8;
    pub const SIGKILL: u8 = 9;
    pub const SIGSEGV: u8 = 11;
    pub const SIGSYS: u8 = 31;
}

/// Signals whose default action dumps core: a death by one of them is a crash.
pub const CRASH_SIGNALS: [u8; 8] = [
    signal::SIGSEGV,
    signal::SIGABRT,
    signal::SIGBUS,
    signal::SIGILL,
    signal::SIGFPE,
    signal::SIGTRAP,
    signal::SIGSYS,
    signal::SIGQUIT,
];

/// Bit n set for each signal n of `signals` (evaluated at compile time: no loop reaches
/// the eBPF programs).
pub const fn signal_mask(signals: &[u8]) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < signals.len() {
        mask |= 1 << signals[i];
        i += 1;
    }
    mask
}

/// Wait-status signals whose deaths make the exit probe send a [`CgroupRecord`] first: the
/// crash signals and SIGKILL (OOM kills). Bit n = signal n.
pub const CGROUP_ON_SIGNALS: u64 = signal_mask(&CRASH_SIGNALS) | 1 << signal::SIGKILL;

/// The wait(2) status layout of `task_struct.exit_code`, read on both sides.
pub mod wait_status {
    /// The signal that killed the process, 0 if it exited.
    pub const fn signal(status: u32) -> u32 {
        status & 0x7f
    }

    /// Its exit code, meaningful when [`signal`] is 0.
    pub const fn exit_code(status: u32) -> u32 {
        (status >> 8) & 0xff
    }

    pub const fn core_dumped(status: u32) -> bool {
        status & 0x80 != 0
    }
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
    /// A release record (a process's final CPU) was dropped: the ring buffer had no room.
    /// Its exit goes out with the CPU read at the exit tracepoint.
    pub const RINGBUF_FULL_RELEASE: u32 = 5;
    /// An OOM-kill record was dropped: the ring buffer had no room.
    pub const RINGBUF_FULL_OOM_KILL: u32 = 6;
    /// A cgroup record (of a crashing process) was dropped: the ring buffer had no room.
    pub const RINGBUF_FULL_CGROUP: u32 = 7;
    /// CPU samples taken (`perf_event` program, idle CPUs excluded).
    pub const CPU_SAMPLES: u32 = 8;
    /// A sample's stack hashed to a stack-map slot held by another stack (`-EEXIST`): the
    /// sample is counted with that stack unknown. Many mean the map is too small.
    pub const STACK_COLLISIONS: u32 = 9;
    /// A sample could not be counted: the sample-count map was full for its window.
    pub const SAMPLES_FULL: u32 = 10;
    /// Number of entries in the map.
    pub const COUNT: u32 = 11;
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
/// Sent at `sched_process_exit` of the group's last thread, with the address space's
/// figures. Its CPU times are the whole thread group's so far (`signal_struct` totals plus
/// the exiting thread's and a zombie leader's own), which miss what the exit path still
/// spends after the tracepoint (unmapping memory, closing files: on Linux 6.16+ all of it).
/// The [`ReleaseRecord`] that follows brings the final ones.
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

/// A process was released (kind [`kind::RELEASE`]): its leader's `task_struct` was freed,
/// after its parent reaped it and after the last thread's final context switch. Its CPU
/// times are final, what `wait4()` reported to the parent.
///
/// Only what is final at that point and the process's identity: the rest of the exit is in
/// its [`ExitRecord`]. Half that record's size, which is one cache line less to write into
/// the ring buffer per process (`cargo xtask bench floor`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub header: RecordHeader,
    pub pid: u32,
    /// The raw wait status, as in [`ExitRecord::exit_status`].
    pub exit_status: u32,
    pub time_ns: u64,
    pub start_ns: u64,
    /// As in [`ExitRecord`]: `signal_struct`'s totals, the whole group's.
    pub utime_ns: u64,
    pub stime_ns: u64,
    pub runtime_ns: u64,
    pub maxrss_kb: u64,
}

/// `CgroupPath::flags` bits.
pub mod cgroup_flags {
    /// The path was read (the task had a memory cgroup).
    pub const KNOWN: u32 = 1 << 0;
    /// Deeper than [`super::CGROUP_DEPTH`]: only the innermost components are kept.
    pub const TRUNCATED: u32 = 1 << 1;
}

/// A cgroup's path, read in the kernel by walking its kernfs nodes up to the hierarchy
/// root (which is not stored): `names[0]` is the cgroup's own directory name. Read in the
/// kernel because a killed process may be gone before userspace could look at /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPath {
    /// Components stored in `names` (0: the root cgroup).
    pub depth: u32,
    /// [`cgroup_flags`] bits.
    pub flags: u32,
    pub names: [[u8; CGROUP_NAME_LEN]; CGROUP_DEPTH],
}

/// `OomKillRecord::flags` bits.
pub mod oom_flags {
    /// The OOM context (`struct oom_control`) was seen: `constraint` is valid.
    pub const CONTEXT: u32 = 1 << 0;
    /// The kill was constrained to a memory cgroup (`oc->memcg` set): `memcg` names it.
    pub const MEMCG: u32 = 1 << 1;
    /// The victim's task was found: passed by the tracepoint (Linux ≥ 6.8), or before that
    /// through the OOM context (`oc->chosen`, or the killing task itself when it is the
    /// victim). Without it only the pid is known and the other victim fields are zero.
    pub const TASK: u32 = 1 << 2;
    /// Without the OOM context, the probe checked the victim's memory cgroups for one at its
    /// limit: `constraint` is 3 (memcg, named in `memcg`) if one was, else 0.
    pub const INFERRED: u32 = 1 << 3;
}

/// `enum oom_constraint` (include/linux/oom.h), unchanged since Linux 2.6.35: the value of
/// [`OomKillRecord::constraint`] (a `u32` on the wire; [`OomConstraint::from_raw`] reads it).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomConstraint {
    None = 0,
    Cpuset = 1,
    MemoryPolicy = 2,
    Memcg = 3,
}

impl OomConstraint {
    pub fn from_raw(value: u32) -> Option<OomConstraint> {
        match value {
            0 => Some(OomConstraint::None),
            1 => Some(OomConstraint::Cpuset),
            2 => Some(OomConstraint::MemoryPolicy),
            3 => Some(OomConstraint::Memcg),
            _ => None,
        }
    }

    /// The name events use (`constraint`); the kernel logs `CONSTRAINT_<NAME>`.
    pub fn name(self) -> &'static str {
        match self {
            OomConstraint::None => "global",
            OomConstraint::Cpuset => "cpuset",
            OomConstraint::MemoryPolicy => "memory_policy",
            OomConstraint::Memcg => "memcg",
        }
    }
}

/// The OOM killer chose a victim (`oom:mark_victim`), just after sending it SIGKILL. The
/// memory figures are the ones the kernel logs in its "Killed process" line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKillRecord {
    pub header: RecordHeader,
    pub time_ns: u64,
    /// The victim's thread-group leader `start_boottime`.
    pub start_ns: u64,
    pub parent_start_ns: u64,
    /// `mm_struct.total_vm`, pages.
    pub total_vm_pages: u64,
    pub rss_anon_pages: u64,
    pub rss_file_pages: u64,
    pub rss_shmem_pages: u64,
    /// `mm_struct.pgtables_bytes`.
    pub pgtables_bytes: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// `signal_struct.oom_score_adj` (-1000..=1000).
    pub oom_score_adj: i32,
    /// `enum oom_constraint`: 0 none (global), 1 cpuset, 2 memory policy, 3 memcg.
    pub constraint: u32,
    /// [`oom_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    /// The victim's memory cgroup.
    pub cgroup: CgroupPath,
    /// The memory cgroup whose limit was hit (`oc->memcg`), when [`oom_flags::MEMCG`].
    pub memcg: CgroupPath,
}

/// The memory cgroup of a process dying of a signal in [`CGROUP_ON_SIGNALS`], sent just
/// before its [`ExitRecord`] is captured, so the crash can be attributed to a workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupRecord {
    pub header: RecordHeader,
    pub time_ns: u64,
    pub start_ns: u64,
    pub pid: u32,
    pub _pad: u32,
    pub path: CgroupPath,
}

const _: () = assert!(size_of::<RecordHeader>() == 8);
const _: () = assert!(size_of::<CgroupPath>() == 8 + CGROUP_NAME_LEN * CGROUP_DEPTH);
const _: () = assert!(size_of::<OomKillRecord>() == 120 + 2 * size_of::<CgroupPath>());
const _: () = assert!(size_of::<CgroupRecord>() == 32 + size_of::<CgroupPath>());
const _: () = assert!(size_of::<ForkRecord>() == 64);
const _: () = assert!(size_of::<ExecRecord>() == 320);
const _: () = assert!(size_of::<ExitRecord>() == 136);
const _: () = assert!(size_of::<ReleaseRecord>() == 64);

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

/// Key of the in-kernel CPU sample counts (`SAMPLES` map): one count per process, stack pair
/// and window. Stack ids index the window's stack-trace map; a negative id is `-errno` from
/// `bpf_get_stackid` (`-EFAULT` for the user stack of a kernel thread, `-EEXIST` on a
/// collision), and a kernel stack id is negative for every sample taken in user mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub pid: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
    /// Which of the two windows (0 or 1) the sample belongs to. CPU sampling is drained by
    /// flipping windows: the probe writes the window that `PROFILE_WINDOW[0]` names, into
    /// that window's stack map; the agent flips it, then reads and clears the other one,
    /// which nothing writes any more. Each window's stack map starts empty, so stack ids
    /// never alias across windows.
    pub window: u32,
}

const _: () = assert!(size_of::<SampleKey>() == 16);

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
    // OOM kills and cgroup paths (probes/oom.rs, cgroup.rs).
    pub task_cgroups: u32,
    /// `css_set.subsys[]`.
    pub css_set_subsys: u32,
    /// `memory_cgrp_id` in `enum cgroup_subsys_id`; `u32::MAX` without CONFIG_MEMCG.
    pub memory_cgrp_id: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_name: u32,
    /// `kernfs_node.__parent` (`parent` before Linux 6.15).
    pub kernfs_parent: u32,
    pub memcg_css: u32,
    pub mm_total_vm: u32,
    pub mm_pgtables_bytes: u32,
    pub signal_oom_score_adj: u32,
    pub oom_control_memcg: u32,
    pub oom_control_constraint: u32,
    /// 1 when `mark_victim` passes the victim's `task_struct *` (Linux ≥ 6.8), 0 when only
    /// its pid.
    pub mark_victim_has_task: u32,
    pub css_parent: u32,
    /// `mem_cgroup.memory`, a `struct page_counter`.
    pub memcg_memory: u32,
    pub page_counter_usage: u32,
    pub page_counter_max: u32,
    /// `oom_control.chosen`: where `mark_victim` passes only a pid (before Linux 6.8), the
    /// victim's task is found through the OOM context instead.
    pub oom_control_chosen: u32,
    /// `task_struct.real_cred` and `cred.uid`: the victim's uid, as the 6.8+ tracepoint
    /// passes it.
    pub task_real_cred: u32,
    pub cred_uid: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 44 * 4);

/// Load-time tunables of the probes (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Records are submitted without waking the reader until this many bytes are pending;
    /// the reader also drains on a timer. Bounds wakeups under fork storms.
    pub wakeup_bytes: u64,
    /// [`cost_floor`]: 0 in normal operation. The benchmark's other values make the
    /// lifecycle probes stop early, to measure what the hooks themselves cost.
    pub cost_floor: u32,
    pub _pad: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            wakeup_bytes: 64 * 1024,
            cost_floor: cost_floor::NONE,
            _pad: 0,
        }
    }
}

const _: () = assert!(size_of::<ProbeConfig>() == 16);

/// How far the lifecycle probes (fork, exit, release) go, for `cargo xtask bench floor`,
/// which measures the floor under the BPF cost of a process lifecycle: what any design
/// with a record at each of these three hooks pays before it reads or writes any data.
pub mod cost_floor {
    /// Normal operation: every record is sent.
    pub const NONE: u32 = 0;
    /// Each program stops after telling whether this run concerns a process (the identity
    /// reads it needs for that), and sends nothing.
    pub const HOOKS: u32 = 1;
    /// As [`HOOKS`], plus a ring-buffer reservation of the record, discarded.
    pub const RING: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: repr(C), a u64 then two u32 (size 16, asserted above): no padding, and every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: repr(C), four 4-byte integers (size 16, asserted above): no padding, and every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for super::SampleKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_signals_are_the_crash_signals_and_sigkill() {
        // Quit, Ill, Trap, Abrt, Bus, Fpe, Kill, Segv, Sys: the bits the exit probe tests.
        let expected: u64 = [3, 4, 5, 6, 7, 8, 9, 11, 31]
            .iter()
            .map(|s| 1u64 << s)
            .sum();
        assert_eq!(CGROUP_ON_SIGNALS, expected);
    }

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(wait_status::signal(0x0300), 0);
        assert_eq!(wait_status::exit_code(0x0300), 3);
        assert_eq!(wait_status::signal(11 | 0x80), 11);
        assert!(wait_status::core_dumped(11 | 0x80));
        assert!(!wait_status::core_dumped(9));
    }
}
