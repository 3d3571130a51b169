//! `sched_process_exit(struct task_struct *p[, bool group_dead])`, fired once per exiting
//! thread. Only the last thread of a group makes a record: that is the process's death. It is
//! sent at once, so it is in the ring buffer before the pid can be reused (the pid is freed
//! later, when the process is released); its final CPU times follow in the release record
//! (probes/release.rs).

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{btf_tracepoint, fentry},
    programs::{BtfTracePointContext, FEntryContext},
};
use procmon_common::{
    exit_flags, kind, stat, wait_status, CgroupRecord, ExitRecord, KernelOffsets, RecordHeader,
    CGROUP_ON_SIGNALS,
};

use crate::{
    cgroup, cost_floor_stop, count, off, offsets,
    task::{
        mm_counter, parent_identity_direct, Kptr, ATOMIC_LONG_STRIDE, MM_ANONPAGES, MM_FILEPAGES,
        MM_SHMEMPAGES,
    },
    wakeup_flags, EVENTS, GROUP_DEAD,
};

/// `taskstats_exit(struct task_struct *tsk, int group_dead)`, called by every exiting thread
/// just before its `sched_process_exit` (Linux 5.8 to 6.15 at least, which is where it is
/// needed): it is told exactly whether this thread took `signal->live` to zero.
#[fentry(function = "taskstats_exit")]
pub fn taskstats_exit(ctx: FEntryContext) -> i32 {
    match try_taskstats_exit(&ctx) {
        Ok(()) => 0,
        // Full map: the exit falls back to reading signal->live.
        Err(()) => 0,
    }
}

#[inline(always)]
fn try_taskstats_exit(ctx: &FEntryContext) -> Result<(), ()> {
    let o = offsets();
    let tid: u32 = Kptr(ctx.arg(0)).read(o.task_pid);
    let group_dead = (ctx.arg::<u64>(1) as u32 != 0) as u8;
    GROUP_DEAD.insert(&tid, &group_dead, 0).map_err(|_| ())
}

/// Whether the exiting `task` is the last thread of its group.
///
/// NB: before Linux 6.16 the tracepoint has no `group_dead` argument. do_exit() has
/// decremented `signal->live` before it, but reading 0 there does not mean this thread took
/// it to 0: when a group exits at once (exit_group(), a fatal signal), threads on other CPUs
/// decrement it too, and several of them read 0 and each sent an exit for the process (seen
/// on 5.10 and 6.1). `taskstats_exit` (fentry, above) says exactly; the `live` read remains
/// where fentry is unavailable, and the agent then drops the duplicates.
#[inline(always)]
fn is_group_dead(ctx: &BtfTracePointContext, task: Kptr) -> bool {
    if off!(exit_has_group_dead) != 0 {
        return ctx.arg::<u64>(1) & 0xff != 0;
    }
    let tid: u32 = task.field(off!(task_pid));
    // SAFETY: a plain u8 value, written and removed only by this thread's exit path.
    if let Some(&dead) = unsafe { GROUP_DEAD.get(&tid) } {
        let _ = GROUP_DEAD.remove(&tid);
        return dead != 0;
    }
    task.field_ptr(off!(task_signal))
        .field::<i32>(off!(signal_live))
        == 0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    match try_sched_process_exit(&ctx) {
        Ok(()) => 0,
        Err(stat) => {
            count(stat);
            0
        }
    }
}

#[inline(always)]
fn try_sched_process_exit(ctx: &BtfTracePointContext) -> Result<(), u32> {
    let task = Kptr(ctx.arg(0));
    if !is_group_dead(ctx, task) {
        count(stat::THREAD_EXITS);
        return Ok(());
    }
    if cost_floor_stop::<ExitRecord>() {
        return Ok(());
    }
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    let time_ns = unsafe { bpf_ktime_get_boot_ns() };
    let pid: u32 = task.field(off!(task_tgid));
    let leader = task.field_ptr(off!(task_group_leader));
    let start_ns: u64 = leader.field(off!(task_start_boottime));
    let exit_status: u32 = task.field(off!(task_exit_code));
    // Before the exit record: the agent attributes the crash when the exit follows.
    if sends_cgroup(exit_status) {
        send_cgroup(time_ns, start_ns, pid, task, &offsets());
    }
    let mut entry = EVENTS
        .reserve::<ExitRecord>(0)
        .ok_or(stat::RINGBUF_FULL_EXIT)?;
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the reserved record, valid for writes until it is submitted; every
    // field is written below before that (in place: it is too big to build on the stack
    // next to the rest).
    unsafe {
        (*r).header = RecordHeader::new(kind::EXIT, core::mem::size_of::<ExitRecord>());
        (*r).time_ns = time_ns;
        (*r).start_ns = start_ns;
        let (ppid, parent_start_ns) = parent_identity_direct(leader);
        (*r).parent_start_ns = parent_start_ns;
        (*r).ppid = ppid;
        (*r).pid = pid;
        (*r).tid = task.field(off!(task_pid));
        (*r).exit_status = exit_status;
        (*r).flags = exit_flags::GROUP_DEAD
            | if leader == task {
                exit_flags::LEADER
            } else {
                0
            };
        (*r)._pad = 0;
        // The process's name is its leader's, as `ps` shows it: the exiting thread may be a
        // worker named otherwise (rustc's last thread is its `ctrl-c` handler). A leader that
        // ended first stays readable as a zombie until the group is released.
        (*r).comm = leader.comm_field();
        let signal = task.field_ptr(off!(task_signal));
        (*r).maxrss_kb = signal.field(off!(signal_maxrss));
        // The group's CPU so far: threads already released are in `signal_struct`; this
        // thread and a zombie leader are not. What the exit path spends after this point
        // comes with the release record.
        let mut utime =
            signal.field::<u64>(off!(signal_utime)) + task.field::<u64>(off!(task_utime));
        let mut stime =
            signal.field::<u64>(off!(signal_stime)) + task.field::<u64>(off!(task_stime));
        let mut runtime = signal.field::<u64>(off!(signal_sum_sched_runtime))
            + task.field::<u64>(off!(task_sum_exec_runtime));
        if leader != task {
            utime += leader.field::<u64>(off!(task_utime));
            stime += leader.field::<u64>(off!(task_stime));
            runtime += leader.field::<u64>(off!(task_sum_exec_runtime));
        }
        (*r).utime_ns = utime;
        (*r).stime_ns = stime;
        (*r).runtime_ns = runtime;
        let mm = task.field_ptr(off!(task_mm));
        if mm.0.is_null() {
            (*r).hiwater_pages = 0;
            (*r).rss_file_pages = 0;
            (*r).rss_anon_pages = 0;
            (*r).rss_shmem_pages = 0;
        } else {
            (*r).hiwater_pages = mm.field(off!(mm_hiwater_rss));
            (*r).rss_file_pages = rss_pages(mm, MM_FILEPAGES);
            (*r).rss_anon_pages = rss_pages(mm, MM_ANONPAGES);
            (*r).rss_shmem_pages = rss_pages(mm, MM_SHMEMPAGES);
        }
    }
    entry.submit(wakeup_flags());
    Ok(())
}

/// An RSS counter of `mm` (BTF-typed, not null), in pages.
///
/// Since Linux 6.2 the counters are `struct percpu_counter`s: a plain load (the helper costs
/// ~80 ns per exit for the three, measured on the development VM). Before, they are
/// `atomic_long_t`, a typedef the 5.10 verifier does not see through ("Type 'atomic_long_t'
/// is not a struct"), so they go through the helper. The stride tells which at load time, so
/// the verifier never walks the branch the running kernel does not take.
#[inline(always)]
fn rss_pages(mm: Kptr, index: u32) -> u64 {
    let stride = off!(mm_rss_stride);
    if stride == ATOMIC_LONG_STRIDE {
        return mm_counter(mm, index, &offsets());
    }
    mm.field::<i64>(off!(mm_rss_stat) + index * stride).max(0) as u64
}

/// Whether a death with this wait status sends the memory cgroup first: crash signals and
/// SIGKILL (OOM kills), see [`send_cgroup`].
#[inline(always)]
pub fn sends_cgroup(exit_status: u32) -> bool {
    let death_signal = wait_status::signal(exit_status);
    death_signal < 64 && CGROUP_ON_SIGNALS & (1u64 << death_signal) != 0
}

/// The memory cgroup of a process dying of a crash signal or SIGKILL (a rare path), so
/// userspace can attribute the crash to a workload once the exit record follows.
#[inline(always)]
fn send_cgroup(time_ns: u64, start_ns: u64, pid: u32, task: Kptr, o: &KernelOffsets) {
    let Some(mut entry) = EVENTS.reserve::<CgroupRecord>(0) else {
        count(stat::RINGBUF_FULL_CGROUP);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the reserved record, valid for writes until it is submitted and written
    // in place (it is too big for the stack); `read_path`'s contract holds for `path` in it.
    unsafe {
        (*r).header = RecordHeader::new(kind::CGROUP, core::mem::size_of::<CgroupRecord>());
        (*r).time_ns = time_ns;
        (*r).start_ns = start_ns;
        (*r).pid = pid;
        (*r)._pad = 0;
        cgroup::read_path(cgroup::task_memcg_kn(task, o), &mut (*r).path, o);
    }
    entry.submit(wakeup_flags());
}
