//! `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use procmon_common::{fork_flags, kind, stat, ForkRecord, RecordHeader};

use crate::{
    count, offsets,
    task::{parent_identity, Kptr},
    wakeup_flags, EVENTS,
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
    let mut entry = EVENTS
        .reserve::<ForkRecord>(0)
        .ok_or(stat::RINGBUF_FULL_FORK)?;
    let (ppid, parent_start_ns) = parent_identity(child, &o);
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
        comm: child.comm(&o),
    });
    entry.submit(wakeup_flags());
    Ok(())
}
