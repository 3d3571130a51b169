//! `sched_wakeup_new(struct task_struct *p)`: a new task's first wakeup, in the thread that
//! forked it, right after the fork (`wake_up_new_task()` follows every `copy_process()`).
//!
//! NB: not `sched_process_fork`, which fires a few instructions earlier. This one runs with
//! the new task's runqueue locked and interrupts off: the child cannot have run yet (its
//! exit cannot precede its fork in the ring buffer), and the program cannot be preempted.
//! Where tracepoint programs are preemptible (7.x, PREEMPT_LAZY), the kernel skips a
//! program's run on a CPU where that program is already running, preempted; the fork
//! tracepoint lost forks that way and needed this one as its fallback (with a map of forks
//! seen, by pid). Here nothing is skipped and one program does it all.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use procmon_common::{fork_flags, kind, stat, ForkRecord, RecordHeader};

use crate::{
    cost_floor_stop, count, off,
    task::{parent_identity_direct, Kptr},
    wakeup_flags, EVENTS,
};

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
    let child = Kptr(ctx.arg(0));
    let pid: u32 = child.field(off!(task_pid));
    let tgid: u32 = child.field(off!(task_tgid));
    if pid != tgid {
        // A new thread, not a new process: the tree tracks thread groups.
        return Ok(());
    }
    if cost_floor_stop::<ForkRecord>() {
        return Ok(());
    }
    let mut entry = EVENTS
        .reserve::<ForkRecord>(0)
        .ok_or(stat::RINGBUF_FULL_FORK)?;
    let (ppid, parent_start_ns) = parent_identity_direct(child);
    let parent_signal = child
        .field_ptr(off!(task_real_parent))
        .field_ptr(off!(task_signal));
    // A bitfield: the 4-byte word that holds it, through the helper. NB: a plain load is
    // refused by 7.x verifiers ("access beyond the end of member is_child_subreaper"), which
    // check loads against the bitfield's own bytes.
    let bit: u32 = off!(signal_subreaper_bit);
    let word: u32 = parent_signal.read((bit / 32) * 4);
    let flags = if word & (1 << (bit % 32)) != 0 {
        fork_flags::PARENT_IS_SUBREAPER
    } else {
        0
    };
    // The fork's time is the child's start: copy_process() took it from the same clock a
    // moment ago, which saves a helper call here.
    let start_ns = child.field(off!(task_start_boottime));
    entry.write(ForkRecord {
        header: RecordHeader::new(kind::FORK, core::mem::size_of::<ForkRecord>()),
        time_ns: start_ns,
        start_ns,
        parent_start_ns,
        pid,
        ppid,
        flags,
        _pad: 0,
        comm: child.comm_field(),
    });
    entry.submit(wakeup_flags());
    Ok(())
}
