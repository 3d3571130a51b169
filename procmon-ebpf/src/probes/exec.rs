//! `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.

use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use procmon_common::{kind, stat, ExecRecord, RecordHeader};

use crate::{
    count, offsets,
    task::{parent_identity, process_identity, Kptr},
    wakeup_flags, EVENTS,
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    match try_sched_process_exec(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_exec(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let o = offsets();
    let task = Kptr(ctx.arg(0));
    let old_tid: u32 = ctx.arg(1);
    let bprm = Kptr(ctx.arg(2));
    let mut entry = EVENTS
        .reserve::<ExecRecord>(0)
        .ok_or(stat::RINGBUF_FULL_EXEC)?;
    let (pid, start_ns) = process_identity(task, &o);
    let (ppid, parent_start_ns) = parent_identity(task, &o);
    // Written field by field in place: the 320-byte record does not fit comfortably on the
    // 512-byte BPF stack next to everything else.
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the reserved record, valid for writes until it is submitted; every
    // field is written below before that. bpf_ktime_get_boot_ns has no preconditions, and
    // bpf_probe_read_kernel_str_bytes is bounded by `filename` and safe for any source
    // address.
    unsafe {
        (*r).header = RecordHeader::new(kind::EXEC, core::mem::size_of::<ExecRecord>());
        (*r).time_ns = bpf_ktime_get_boot_ns();
        (*r).start_ns = start_ns;
        (*r).parent_start_ns = parent_start_ns;
        (*r).pid = pid;
        (*r).ppid = ppid;
        (*r).old_tid = old_tid;
        (*r)._pad = 0;
        (*r).comm = task.comm(&o);
        let filename = bprm.ptr(o.binprm_filename);
        if bpf_probe_read_kernel_str_bytes(filename.0, &mut (*r).filename).is_err() {
            (*r).filename[0] = 0;
            count(stat::READ_ERROR);
        }
    }
    entry.submit(wakeup_flags());
    Ok(())
}
