//! OOM kills: `oom:mark_victim(struct task_struct *task, uid_t uid)` (Linux ≥ 6.8; before,
//! `(int pid)`), fired when the OOM killer has sent its victim SIGKILL.
//!
//! The tracepoint does not say why the kill happened. `out_of_memory(struct oom_control *oc)`
//! does: every OOM kill (global, memcg, sysrq) runs under it, synchronously, on the killing
//! task, with `oom_lock` held. An fentry program remembers `oc` by the killing thread's id
//! and an fexit program forgets it; `mark_victim` then reads `oc->constraint` (computed after
//! entry, so it is read here, not at entry) and `oc->memcg` (NULL for a global OOM). Keyed
//! by thread, not CPU: a preemptible kernel may migrate the task in between.
//!
//! Where fentry programs cannot be loaded (the 6.18 test VM refuses every one with EPERM),
//! the memory cgroup is inferred from the page counters instead (cgroup::memcg_at_limit).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{btf_tracepoint, fentry, fexit},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
};
use procmon_common::{kind, oom_flags, stat, OomKillRecord, RecordHeader};

use crate::{
    cgroup, count, offsets,
    task::{mm_counter, parent_identity, Kptr, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES},
    wakeup_flags, EVENTS, OOM_CONTEXT,
};

#[fentry(function = "out_of_memory")]
pub fn oom_enter(ctx: FEntryContext) -> i32 {
    let oc: u64 = ctx.arg(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OOM_CONTEXT.insert(&tid, &oc, 0);
    0
}

#[fexit(function = "out_of_memory")]
pub fn oom_exit(_ctx: FExitContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = OOM_CONTEXT.remove(&tid);
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> i32 {
    let o = offsets();
    let Some(mut entry) = EVENTS.reserve::<OomKillRecord>(0) else {
        count(stat::RINGBUF_FULL_OOM_KILL);
        return 0;
    };
    let r = entry.as_mut_ptr();
    let tid = bpf_get_current_pid_tgid() as u32;
    let oc = unsafe { OOM_CONTEXT.get(&tid) }.map(|&p| Kptr(p as *const u8));
    // SAFETY: `r` is the reserved record, written field by field in place (2 KiB).
    unsafe {
        (*r).header = RecordHeader::new(kind::OOM_KILL, core::mem::size_of::<OomKillRecord>());
        (*r).time_ns = bpf_ktime_get_boot_ns();
        (*r)._pad = 0;
        let mut flags = 0;
        (*r).constraint = 0;
        (*r).memcg.depth = 0;
        (*r).memcg.flags = 0;
        if let Some(oc) = oc {
            flags |= oom_flags::CONTEXT;
            (*r).constraint = oc.read(o.oom_control_constraint);
            let memcg = oc.ptr(o.oom_control_memcg);
            if !memcg.0.is_null() {
                flags |= oom_flags::MEMCG;
                let kn = cgroup::css_kn(Kptr(memcg.0.wrapping_add(o.memcg_css as usize)), &o);
                cgroup::read_path(kn, &mut (*r).memcg, &o);
            }
        }
        if o.mark_victim_has_task == 0 {
            // NB: before Linux 6.8 the tracepoint passes only the victim's pid.
            (*r).pid = ctx.arg::<u64>(0) as u32;
            (*r).tid = (*r).pid;
            (*r).flags = flags;
            zero_victim(r);
            entry.submit(wakeup_flags());
            return 0;
        }
        let task = Kptr(ctx.arg(0));
        (*r).flags = flags | oom_flags::TASK;
        (*r).uid = ctx.arg::<u64>(1) as u32;
        let leader = task.ptr(o.task_group_leader);
        (*r).pid = task.read(o.task_tgid);
        (*r).tid = task.read(o.task_pid);
        (*r).start_ns = leader.read(o.task_start_boottime);
        let (ppid, parent_start_ns) = parent_identity(leader, &o);
        (*r).ppid = ppid;
        (*r).parent_start_ns = parent_start_ns;
        (*r).comm = task.comm(&o);
        (*r).oom_score_adj = task.ptr(o.task_signal).read::<i16>(o.signal_oom_score_adj) as i32;
        // The victim's task lock is held here, so its mm is stable.
        let mm = task.ptr(o.task_mm);
        (*r).rss_anon_pages = mm_counter(mm, MM_ANONPAGES, &o);
        (*r).rss_file_pages = mm_counter(mm, MM_FILEPAGES, &o);
        (*r).rss_shmem_pages = mm_counter(mm, MM_SHMEMPAGES, &o);
        if mm.0.is_null() {
            (*r).total_vm_pages = 0;
            (*r).pgtables_bytes = 0;
        } else {
            (*r).total_vm_pages = mm.read(o.mm_total_vm);
            (*r).pgtables_bytes = mm.read::<i64>(o.mm_pgtables_bytes).max(0) as u64;
        }
        cgroup::read_path(cgroup::task_memcg_kn(task, &o), &mut (*r).cgroup, &o);
        if oc.is_none() {
            let css = cgroup::memcg_at_limit(task, &o);
            (*r).flags |= oom_flags::INFERRED;
            if !css.0.is_null() {
                (*r).flags |= oom_flags::MEMCG;
                (*r).constraint = 3; // CONSTRAINT_MEMCG
                cgroup::read_path(cgroup::css_kn(css, &o), &mut (*r).memcg, &o);
            }
        }
    }
    entry.submit(wakeup_flags());
    0
}

/// Victim fields a pid-only tracepoint cannot fill.
#[inline(always)]
unsafe fn zero_victim(r: *mut OomKillRecord) {
    (*r).start_ns = 0;
    (*r).parent_start_ns = 0;
    (*r).ppid = 0;
    (*r).uid = 0;
    (*r).oom_score_adj = 0;
    (*r).comm = [0; procmon_common::COMM_LEN];
    (*r).total_vm_pages = 0;
    (*r).rss_anon_pages = 0;
    (*r).rss_file_pages = 0;
    (*r).rss_shmem_pages = 0;
    (*r).pgtables_bytes = 0;
    (*r).cgroup.depth = 0;
    (*r).cgroup.flags = 0;
}
