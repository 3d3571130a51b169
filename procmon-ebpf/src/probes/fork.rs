//! `sched_process_fork(struct task_struct *parent, struct task_struct *child)`, and
//! `sched_wakeup_new(struct task_struct *p)` as its fallback.
//!
//! NB: where tracepoint programs are preemptible (7.x, PREEMPT_LAZY), the kernel skips a
//! program's run on a CPU where that program is already running, preempted: a fork there is
//! not traced. `wake_up_new_task()` follows every fork in the same thread, and its
//! tracepoint runs another program: a child whose fork was not traced is sent from there.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use procmon_common::KernelOffsets;
use procmon_common::{fork_flags, kind, stat, ForkRecord, RecordHeader};

use crate::{
    count, offsets,
    task::{parent_identity, Kptr},
    wakeup_flags, EVENTS, FORKS_TRACED,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    match try_sched_process_fork(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_fork(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let o = offsets();
    let child = Kptr(ctx.arg(1));
    let pid: u32 = child.read(o.task_pid);
    let tgid: u32 = child.read(o.task_tgid);
    if pid != tgid {
        // A new thread, not a new process: the tree tracks thread groups.
        return Ok(());
    }
    send_fork(child, &o)?;
    // For sched_wakeup_new: traced. An LRU map, so markers of children whose wakeup run was
    // itself skipped age out instead of filling it.
    let _ = FORKS_TRACED.insert(&pid, &0, 0);
    Ok(())
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    match try_sched_wakeup_new(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_sched_wakeup_new(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let o = offsets();
    let child = Kptr(ctx.arg(0));
    let pid: u32 = child.read(o.task_pid);
    if pid != child.read::<u32>(o.task_tgid) || FORKS_TRACED.remove(&pid).is_ok() {
        return Ok(());
    }
    count(stat::FORK_RECOVERED);
    send_fork(child, &o)
}

/// The fork record of process `child`.
#[inline(always)]
fn send_fork(child: Kptr, o: &KernelOffsets) -> Result<(), u32> {
    let tgid: u32 = child.read(o.task_tgid);
    let mut entry = EVENTS
        .reserve::<ForkRecord>(0)
        .ok_or(stat::RINGBUF_FULL_FORK)?;
    let (ppid, parent_start_ns) = parent_identity(child, o);
    let parent_signal = child.ptr(o.task_real_parent).ptr(o.task_signal);
    let bit = o.signal_subreaper_bit;
    let word: u32 = parent_signal.read((bit / 32) * 4);
    let flags = if word & (1 << (bit % 32)) != 0 {
        fork_flags::PARENT_IS_SUBREAPER
    } else {
        0
    };
    entry.write(ForkRecord {
        header: RecordHeader::new(kind::FORK, core::mem::size_of::<ForkRecord>()),
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_ns: child.read(o.task_start_boottime),
        parent_start_ns,
        pid: tgid,
        ppid,
        flags,
        _pad: 0,
        comm: child.comm(o),
    });
    entry.submit(wakeup_flags());
    Ok(())
}
