//! OOM kills: `oom:mark_victim(struct task_struct *task, uid_t uid)` (Linux ≥ 6.8; before,
//! `(int pid)`, see [`victim`]), fired when the OOM killer has sent its victim SIGKILL.
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
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated::bpf_get_current_task},
    macros::{btf_tracepoint, fentry, fexit},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
};
use procmon_common::{
    kind, oom_flags, stat, KernelOffsets, OomConstraint, OomKillRecord, RecordHeader,
};

use crate::{
    cgroup, count, offsets,
    task::{mm_counter, parent_identity, Kptr, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES},
    wakeup_flags, EVENTS, OOM_CONTEXT,
};

#[fentry(function = "out_of_memory")]
pub fn oom_enter(ctx: FEntryContext) -> i32 {
    match try_oom_enter(&ctx) {
        Ok(()) => 0,
        // Full map: `mark_victim` then infers the memory cgroup, as where fentry is
        // unavailable.
        Err(()) => 0,
    }
}

#[inline(always)]
fn try_oom_enter(ctx: &FEntryContext) -> Result<(), ()> {
    let oc: u64 = ctx.arg(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    OOM_CONTEXT.insert(&tid, &oc, 0).map_err(|_| ())
}

#[fexit(function = "out_of_memory")]
pub fn oom_exit(ctx: FExitContext) -> i32 {
    match try_oom_exit(&ctx) {
        Ok(()) => 0,
        // No entry: `oom_enter` could not store one, or was attached after this call began.
        Err(()) => 0,
    }
}

#[inline(always)]
fn try_oom_exit(_ctx: &FExitContext) -> Result<(), ()> {
    let tid = bpf_get_current_pid_tgid() as u32;
    OOM_CONTEXT.remove(&tid).map_err(|_| ())
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> i32 {
    match try_mark_victim(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_mark_victim(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let o = offsets();
    let mut entry = EVENTS
        .reserve::<OomKillRecord>(0)
        .ok_or(stat::RINGBUF_FULL_OOM_KILL)?;
    let r = entry.as_mut_ptr();
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is a plain u64 that only this thread's fentry/fexit write.
    let oc = unsafe { OOM_CONTEXT.get(&tid) }.map(|&p| Kptr(p as *const u8));
    let (victim, uid) = victim(ctx, oc, &o);
    // SAFETY: `r` is the reserved record (2 KiB, too big for the stack), written field by
    // field in place; every field is set below before it is submitted.
    unsafe {
        (*r).header = RecordHeader::new(kind::OOM_KILL, core::mem::size_of::<OomKillRecord>());
        (*r).time_ns = bpf_ktime_get_boot_ns();
        (*r)._pad = 0;
        (*r).flags = 0;
        (*r).constraint = 0;
        (*r).memcg.depth = 0;
        (*r).memcg.flags = 0;
        if let Some(oc) = oc {
            (*r).flags |= oom_flags::CONTEXT;
            (*r).constraint = oc.read(o.oom_control_constraint);
            let memcg = oc.ptr(o.oom_control_memcg);
            if !memcg.0.is_null() {
                (*r).flags |= oom_flags::MEMCG;
                let kn = cgroup::css_kn(Kptr(memcg.0.wrapping_add(o.memcg_css as usize)), &o);
                cgroup::read_path(kn, &mut (*r).memcg, &o);
            }
        }
        match victim {
            Victim::Task(task) => {
                (*r).flags |= oom_flags::TASK;
                fill_victim(r, task, uid, &o);
                if oc.is_none() {
                    let css = cgroup::memcg_at_limit(task, &o);
                    (*r).flags |= oom_flags::INFERRED;
                    if !css.0.is_null() {
                        (*r).flags |= oom_flags::MEMCG;
                        (*r).constraint = OomConstraint::Memcg as u32;
                        cgroup::read_path(cgroup::css_kn(css, &o), &mut (*r).memcg, &o);
                    }
                }
            }
            Victim::PidOnly(pid) => {
                (*r).pid = pid;
                (*r).tid = pid;
                zero_victim(r);
            }
        }
    }
    entry.submit(wakeup_flags());
    Ok(())
}

enum Victim {
    Task(Kptr),
    /// Only the victim's thread id is known (Linux < 6.8 without an OOM context to find its
    /// task in).
    PidOnly(u32),
}

/// The victim and its uid. NB: before Linux 6.8 the tracepoint passes only the victim's
/// thread id (`mark_victim(int pid)`). Every kill runs inside
/// `out_of_memory()`, though: the victim is then either `oc->chosen` (possibly another thread
/// of its group, so it is matched by thread id) or the killing task itself, when it was
/// already exiting and is marked instead of choosing one. A member of a killed
/// `memory.oom.group` is neither and stays pid-only.
#[inline(always)]
fn victim(ctx: &BtfTracePointContext, oc: Option<Kptr>, o: &KernelOffsets) -> (Victim, u32) {
    if o.mark_victim_has_task != 0 {
        return (Victim::Task(Kptr(ctx.arg(0))), ctx.arg::<u64>(1) as u32);
    }
    let tid = ctx.arg::<u64>(0) as u32;
    let uid_of = |task: Kptr| task.ptr(o.task_real_cred).read::<u32>(o.cred_uid);
    if let Some(oc) = oc {
        let chosen = oc.ptr(o.oom_control_chosen);
        if !chosen.0.is_null() && chosen.read::<u32>(o.task_pid) == tid {
            return (Victim::Task(chosen), uid_of(chosen));
        }
    }
    // SAFETY: bpf_get_current_task has no preconditions; the pointer is only read through
    // bpf_probe_read_kernel.
    let current = Kptr(unsafe { bpf_get_current_task() } as *const u8);
    if current.read::<u32>(o.task_pid) == tid {
        return (Victim::Task(current), uid_of(current));
    }
    (Victim::PidOnly(tid), 0)
}

/// Everything the kernel's "Killed process" line says about the victim.
///
/// # Safety
/// `r` points to a writable record.
#[inline(always)]
unsafe fn fill_victim(r: *mut OomKillRecord, task: Kptr, uid: u32, o: &KernelOffsets) {
    // SAFETY: `r` is valid for writes (the caller's contract): plain writes of integer
    // fields, and `read_path`'s own contract holds for `cgroup` inside it.
    unsafe {
        (*r).uid = uid;
        let leader = task.ptr(o.task_group_leader);
        (*r).pid = task.read(o.task_tgid);
        (*r).tid = task.read(o.task_pid);
        (*r).start_ns = leader.read(o.task_start_boottime);
        let (ppid, parent_start_ns) = parent_identity(leader, o);
        (*r).ppid = ppid;
        (*r).parent_start_ns = parent_start_ns;
        (*r).comm = task.comm(o);
        (*r).oom_score_adj = task.ptr(o.task_signal).read::<i16>(o.signal_oom_score_adj) as i32;
        // The victim's task lock is held here, so its mm is stable.
        let mm = task.ptr(o.task_mm);
        (*r).rss_anon_pages = mm_counter(mm, MM_ANONPAGES, o);
        (*r).rss_file_pages = mm_counter(mm, MM_FILEPAGES, o);
        (*r).rss_shmem_pages = mm_counter(mm, MM_SHMEMPAGES, o);
        if mm.0.is_null() {
            (*r).total_vm_pages = 0;
            (*r).pgtables_bytes = 0;
        } else {
            (*r).total_vm_pages = mm.read(o.mm_total_vm);
            (*r).pgtables_bytes = mm.read::<i64>(o.mm_pgtables_bytes).max(0) as u64;
        }
        cgroup::read_path(cgroup::task_memcg_kn(task, o), &mut (*r).cgroup, o);
    }
}

/// Victim fields a pid-only record cannot fill.
///
/// # Safety
/// `r` points to a writable record.
#[inline(always)]
unsafe fn zero_victim(r: *mut OomKillRecord) {
    // SAFETY: `r` is valid for writes (the caller's contract); plain writes of integer
    // fields.
    unsafe {
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
}
