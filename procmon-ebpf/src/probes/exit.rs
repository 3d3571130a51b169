//! `sched_process_exit(struct task_struct *p[, bool group_dead])`, fired once per exiting
//! thread. Only the last thread of a group makes a record: that is the process's death. The
//! record waits in `PENDING_EXITS` until the thread's final context switch (probes/switch.rs)
//! fills in the final CPU times and sends it.

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
    cgroup, count, offsets,
    task::{mm_counter, parent_identity, Kptr, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES},
    wakeup_flags, EVENTS, GROUP_DEAD, PENDING_EXITS, THREAD_EXITS,
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
fn is_group_dead(ctx: &BtfTracePointContext, task: Kptr, o: &KernelOffsets) -> bool {
    if o.exit_has_group_dead != 0 {
        return ctx.arg::<u64>(1) & 0xff != 0;
    }
    let tid: u32 = task.read(o.task_pid);
    // SAFETY: a plain u8 value, written and removed only by this thread's exit path.
    if let Some(&dead) = unsafe { GROUP_DEAD.get(&tid) } {
        let _ = GROUP_DEAD.remove(&tid);
        return dead != 0;
    }
    task.ptr(o.task_signal).read::<i32>(o.signal_live) == 0
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
    let o = offsets();
    let task = Kptr(ctx.arg(0));
    let tid: u32 = task.read(o.task_pid);
    if !is_group_dead(ctx, task, &o) {
        count(stat::THREAD_EXITS);
        // Tells the final switch this thread's exit was traced (probes/switch.rs). Full map:
        // that switch will take it for a skipped process exit, which the agent drops as a
        // duplicate if the process's own exit does arrive.
        let _ = THREAD_EXITS.insert(&tid, &0, 0);
        return Ok(());
    }
    let mut record = new_record(task, &o);
    let mm = task.ptr(o.task_mm);
    if !mm.0.is_null() {
        record.hiwater_pages = mm.read(o.mm_hiwater_rss);
        record.rss_file_pages = mm_counter(mm, MM_FILEPAGES, &o);
        record.rss_anon_pages = mm_counter(mm, MM_ANONPAGES, &o);
        record.rss_shmem_pages = mm_counter(mm, MM_SHMEMPAGES, &o);
    }
    send_cgroup_if_signalled(&record, task, &o);
    add_group_cpu(&mut record, task, &o);
    if PENDING_EXITS.insert(&tid, &record, 0).is_err() {
        count(stat::EXIT_NOT_DEFERRED);
        add_own_cpu(&mut record, task, &o);
        send(&record);
        // Sent: nothing for the final switch to recover.
        let _ = THREAD_EXITS.insert(&tid, &0, 0);
    }
    Ok(())
}

/// An exit record of `task`'s process without CPU or mm figures, which depend on when it
/// is made.
#[inline(always)]
pub fn new_record(task: Kptr, o: &KernelOffsets) -> ExitRecord {
    let leader = task.ptr(o.task_group_leader);
    let (ppid, parent_start_ns) = parent_identity(leader, o);
    ExitRecord {
        header: RecordHeader::new(kind::EXIT, core::mem::size_of::<ExitRecord>()),
        // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_ns: leader.read(o.task_start_boottime),
        parent_start_ns,
        utime_ns: 0,
        stime_ns: 0,
        runtime_ns: 0,
        maxrss_kb: task.ptr(o.task_signal).read(o.signal_maxrss),
        hiwater_pages: 0,
        rss_file_pages: 0,
        rss_anon_pages: 0,
        rss_shmem_pages: 0,
        pid: task.read(o.task_tgid),
        tid: task.read(o.task_pid),
        ppid,
        exit_status: task.read(o.task_exit_code),
        flags: exit_flags::GROUP_DEAD
            | if leader == task {
                exit_flags::LEADER
            } else {
                0
            },
        _pad: 0,
        // The process's name is its leader's, as `ps` shows it: the exiting thread may be
        // a worker named otherwise (rustc's last thread is its `ctrl-c` handler). A leader
        // that ended first stays readable as a zombie until the group is released.
        comm: leader.comm(o),
    }
}

/// Crash signals and SIGKILL send the memory cgroup first (see [`send_cgroup`]).
#[inline(always)]
pub fn send_cgroup_if_signalled(record: &ExitRecord, task: Kptr, o: &KernelOffsets) {
    let death_signal = wait_status::signal(record.exit_status);
    if death_signal < 64 && CGROUP_ON_SIGNALS & (1u64 << death_signal) != 0 {
        send_cgroup(record, task, o);
    }
}

/// The memory cgroup of a process dying of a crash signal or SIGKILL (a rare path), so
/// userspace can attribute the crash to a workload once the exit record follows.
#[inline(always)]
fn send_cgroup(exit: &ExitRecord, task: Kptr, o: &KernelOffsets) {
    let Some(mut entry) = EVENTS.reserve::<CgroupRecord>(0) else {
        count(stat::RINGBUF_FULL_CGROUP);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: `r` is the reserved record, valid for writes until it is submitted and written
    // in place (it is too big for the stack); `read_path`'s contract holds for `path` in it.
    unsafe {
        (*r).header = RecordHeader::new(kind::CGROUP, core::mem::size_of::<CgroupRecord>());
        (*r).time_ns = exit.time_ns;
        (*r).start_ns = exit.start_ns;
        (*r).pid = exit.pid;
        (*r)._pad = 0;
        cgroup::read_path(cgroup::task_memcg_kn(task, o), &mut (*r).path, o);
    }
    entry.submit(wakeup_flags());
}

/// The thread group's CPU apart from the exiting thread: `signal_struct` holds threads
/// already released, and a zombie leader's own counters are added (they are folded in only
/// when it is reaped). NB: read at the exit tracepoint, before exit_notify(): once the
/// parent can reap, release_task() adds this thread to `signal_struct` too, and reading
/// both later would count it twice.
#[inline(always)]
pub fn add_group_cpu(r: &mut ExitRecord, task: Kptr, o: &KernelOffsets) {
    let signal = task.ptr(o.task_signal);
    r.utime_ns = signal.read::<u64>(o.signal_utime);
    r.stime_ns = signal.read::<u64>(o.signal_stime);
    r.runtime_ns = signal.read::<u64>(o.signal_sum_sched_runtime);
    let leader = task.ptr(o.task_group_leader);
    if leader != task {
        r.utime_ns += leader.read::<u64>(o.task_utime);
        r.stime_ns += leader.read::<u64>(o.task_stime);
        r.runtime_ns += leader.read::<u64>(o.task_sum_exec_runtime);
    }
}

/// The exiting thread's own counters: final at its last context switch.
#[inline(always)]
pub fn add_own_cpu(r: &mut ExitRecord, task: Kptr, o: &KernelOffsets) {
    r.utime_ns += task.read::<u64>(o.task_utime);
    r.stime_ns += task.read::<u64>(o.task_stime);
    r.runtime_ns += task.read::<u64>(o.task_sum_exec_runtime);
}

#[inline(always)]
pub fn send(r: &ExitRecord) {
    if EVENTS.output::<ExitRecord>(r, wakeup_flags()).is_err() {
        count(stat::RINGBUF_FULL_EXIT);
    }
}
