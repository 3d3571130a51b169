//! `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`:
//! a dying thread's last context switch (prev in TASK_DEAD). Its CPU counters are final
//! here, after the whole exit path, which is what getrusage() reports to the parent.
//!
//! This runs on every context switch, so the common path is one field read and a compare.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    offsets,
    probes::exit::{add_own_cpu, send},
    task::Kptr,
    PENDING_EXITS,
};

/// `TASK_DEAD` in `task_struct.__state`; unchanged since Linux 2.6.
const TASK_DEAD: u32 = 0x80;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let o = offsets();
    let prev = Kptr(ctx.arg(1));
    if prev.read::<u32>(o.task_state) & TASK_DEAD == 0 {
        return 0;
    }
    let tid: u32 = prev.read(o.task_pid);
    let Some(pending) = PENDING_EXITS.get_ptr_mut(&tid) else {
        // A thread exit, or a process whose record was sent without deferral.
        return 0;
    };
    // SAFETY: the pointer is a live map value; only this CPU's final switch of `tid` uses it.
    let record = unsafe { &mut *pending };
    add_own_cpu(record, prev, &o);
    send(record);
    let _ = PENDING_EXITS.remove(&tid);
    0
}
