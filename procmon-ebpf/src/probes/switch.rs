//! `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`:
//! a dying thread's last context switch (prev in TASK_DEAD). Its CPU counters are final
//! here, after the whole exit path, which is what getrusage() reports to the parent.
//!
//! This runs on every context switch, so the common path is one field read and a compare.
//!
//! NB: it is also where an exit the kernel did not trace is recovered. A tracing program
//! runs at most once per CPU at a time, and where tracepoint programs are preemptible (the
//! 7.3 kernel of the matrix, PREEMPT_LAZY) a task exiting while the exit program of another
//! is preempted on the same CPU is skipped: 83 skipped runs in a burst of 2,000 children.
//! The switch program itself never nests (the scheduler runs with preemption off).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use procmon_common::{exit_flags, stat, KernelOffsets};

use crate::{
    count, offsets,
    probes::exit::{add_own_cpu, new_record, send, send_cgroup_if_signalled},
    task::Kptr,
    PENDING_EXITS, THREAD_EXITS,
};

/// `TASK_DEAD` in `task_struct.__state`; unchanged since Linux 2.6.
const TASK_DEAD: u32 = 0x80;
/// `EXIT_DEAD` in `task_struct.exit_state`: released, its counters folded into
/// `signal_struct`; unchanged since Linux 2.6.
const EXIT_DEAD: u32 = 0x10;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    match try_sched_switch(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

/// Nothing here is an error to count: a full ring buffer and a recovered exit are counted
/// where they happen.
#[inline(always)]
fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let o = offsets();
    let prev = Kptr(ctx.arg(1));
    if prev.read::<u32>(o.task_state) & TASK_DEAD == 0 {
        return Ok(());
    }
    let tid: u32 = prev.read(o.task_pid);
    if let Some(pending) = PENDING_EXITS.get_ptr_mut(&tid) {
        // SAFETY: a live map value; only this CPU's final switch of `tid` uses it.
        let record = unsafe { &mut *pending };
        add_own_cpu(record, prev, &o);
        send(record);
        let _ = PENDING_EXITS.remove(&tid);
        return Ok(());
    }
    if THREAD_EXITS.remove(&tid).is_ok() {
        // A thread exit, traced.
        return Ok(());
    }
    recover_exit(prev, &o);
    Ok(())
}

/// The exit tracepoint's run for `task` was skipped (or its record went out undeferred).
/// If `task` ended its process, send the exit now: CPU from the counters (final here), the
/// peak RSS from `signal->maxrss`; the rest of the mm is gone.
#[inline(always)]
fn recover_exit(task: Kptr, o: &KernelOffsets) {
    let signal = task.ptr(o.task_signal);
    if signal.read::<i32>(o.signal_live) != 0 {
        return;
    }
    let mut record = new_record(task, o);
    record.flags |= exit_flags::RECOVERED;
    send_cgroup_if_signalled(&record, task, o);
    record.utime_ns = signal.read::<u64>(o.signal_utime);
    record.stime_ns = signal.read::<u64>(o.signal_stime);
    record.runtime_ns = signal.read::<u64>(o.signal_sum_sched_runtime);
    // Released tasks are already in the signal totals; a zombie leader and this task, if it
    // is not released yet, are not.
    let leader = task.ptr(o.task_group_leader);
    if leader != task && leader.read::<u32>(o.task_exit_state) != EXIT_DEAD {
        add_own_cpu(&mut record, leader, o);
    }
    if task.read::<u32>(o.task_exit_state) != EXIT_DEAD {
        add_own_cpu(&mut record, task, o);
    }
    count(stat::EXIT_RECOVERED);
    send(&record);
}
