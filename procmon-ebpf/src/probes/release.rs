//! `sched_process_free(struct task_struct *p)`: a task's last reference is dropped, from the
//! RCU callback queued once both its final context switch and its release (the parent's
//! reap, or at once for threads and auto-reaped children) are done. For a process's leader,
//! which is released last, every thread's counters are folded into `signal_struct` by then:
//! the process's CPU is final, what `wait4()` reported to its parent.
//!
//! This replaces a program on every context switch (the dying thread's last one), which cost
//! every switch of every process on the host: this one runs once per thread that ends.
//!
//! It is also where an exit the kernel did not trace is recovered: where tracepoint programs
//! are preemptible (7.x, PREEMPT_LAZY), the kernel skips a program's run on a CPU where that
//! program is already running, preempted. The agent takes a release without an exit for the
//! exit itself.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use procmon_common::{kind, stat, RecordHeader, ReleaseRecord};

use crate::{cost_floor_stop, count, off, task::Kptr, wakeup_flags, EVENTS};

#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> i32 {
    match try_sched_process_free(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_free(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let task = Kptr(ctx.arg(0));
    let tid: u32 = task.field(off!(task_pid));
    let pid: u32 = task.field(off!(task_tgid));
    if tid != pid {
        // Not a leader: its process lives on, or its leader's release follows.
        return Ok(());
    }
    if cost_floor_stop::<ReleaseRecord>() {
        return Ok(());
    }
    let mut entry = EVENTS
        .reserve::<ReleaseRecord>(0)
        .ok_or(stat::RINGBUF_FULL_RELEASE)?;
    let signal = task.field_ptr(off!(task_signal));
    // Only what is final here: the rest of the exit (parent, name, memory at exit) is in its
    // exit record, and the parent may be gone and freed by now.
    entry.write(ReleaseRecord {
        header: RecordHeader::new(kind::RELEASE, core::mem::size_of::<ReleaseRecord>()),
        pid,
        exit_status: task.field(off!(task_exit_code)),
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_ns: task.field(off!(task_start_boottime)),
        utime_ns: signal.field(off!(signal_utime)),
        stime_ns: signal.field(off!(signal_stime)),
        runtime_ns: signal.field(off!(signal_sum_sched_runtime)),
        maxrss_kb: signal.field(off!(signal_maxrss)),
    });
    entry.submit(wakeup_flags());
    Ok(())
}
