//! `sched_process_exit(struct task_struct *p[, bool group_dead])`, fired once per exiting
//! thread. Only the last thread of a group produces a record: that is the process's death,
//! and its CPU and memory totals are final enough to read here.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use procmon_common::{exit_flags, kind, stat, ExitRecord, RecordHeader};

use crate::{
    count, offsets,
    task::{parent_identity, Kptr},
    wakeup_flags, EVENTS,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let o = offsets();
    let task = Kptr(ctx.arg(0));
    let signal = task.ptr(o.task_signal);
    let group_dead = if o.exit_has_group_dead != 0 {
        ctx.arg::<u64>(1) & 0xff != 0
    } else {
        // NB: before Linux 6.16 the tracepoint has no group_dead argument; do_exit() has
        // already decremented signal->live, so 0 means this is the last thread.
        signal.read::<i32>(o.signal_live) == 0
    };
    if !group_dead {
        count(stat::THREAD_EXITS);
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count(stat::RINGBUF_FULL_EXIT);
        return 0;
    };
    let leader = task.ptr(o.task_group_leader);
    let tid: u32 = task.read(o.task_pid);
    let pid: u32 = task.read(o.task_tgid);
    // signal_struct accumulates threads already released; the exiting thread's own counters
    // are added here, and so are a zombie leader's (it is folded in only when reaped).
    let mut utime: u64 = signal.read::<u64>(o.signal_utime) + task.read::<u64>(o.task_utime);
    let mut stime: u64 = signal.read::<u64>(o.signal_stime) + task.read::<u64>(o.task_stime);
    let mut runtime: u64 = signal.read::<u64>(o.signal_sum_sched_runtime)
        + task.read::<u64>(o.task_sum_exec_runtime);
    let mut flags = exit_flags::GROUP_DEAD;
    if leader == task {
        flags |= exit_flags::LEADER;
    } else {
        utime += leader.read::<u64>(o.task_utime);
        stime += leader.read::<u64>(o.task_stime);
        runtime += leader.read::<u64>(o.task_sum_exec_runtime);
    }
    let (ppid, parent_start_ns) = parent_identity(leader, &o);
    entry.write(ExitRecord {
        header: RecordHeader::new(kind::EXIT, core::mem::size_of::<ExitRecord>()),
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_ns: leader.read(o.task_start_boottime),
        parent_start_ns,
        utime_ns: utime,
        stime_ns: stime,
        runtime_ns: runtime,
        maxrss_kb: signal.read(o.signal_maxrss),
        pid,
        tid,
        ppid,
        exit_status: task.read(o.task_exit_code),
        flags,
        _pad: 0,
        comm: task.comm(&o),
    });
    entry.submit(wakeup_flags());
    0
}
