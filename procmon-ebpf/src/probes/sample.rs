//! `iter/task`: one pass over every task for live sampling. The agent reads the iterator's
//! output in a few large read()s, instead of opening /proc/<pid>/stat for every process.

use aya_ebpf::{bindings::seq_file, helpers::generated::bpf_seq_write};
use procmon_common::TaskSample;

use crate::{
    offsets,
    task::{mm_counter, Kptr, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES},
};

/// `struct bpf_iter_meta`: only `seq` is used.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__task`. NB: both fields must be read with plain loads (not
/// bpf_probe_read) so the verifier keeps their BTF types; `task` is NULL on the final call.
#[repr(C)]
struct IterTask {
    meta: *const IterMeta,
    task: *const u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn sample_tasks(ctx: *mut core::ffi::c_void) -> i32 {
    match try_sample_tasks(ctx) {
        Ok(()) => 0,
        // bpf_seq_write failed: the seq buffer is full, which bpf_iter handles itself.
        Err(()) => 0,
    }
}

#[inline(always)]
fn try_sample_tasks(ctx: *mut core::ffi::c_void) -> Result<(), ()> {
    // SAFETY: an iter/task program is passed a `struct bpf_iter__task *`, valid for the whole
    // call, which `IterTask` mirrors.
    let ctx = unsafe { &*(ctx as *const IterTask) };
    let task = ctx.task;
    if task.is_null() {
        return Ok(());
    }
    let o = offsets();
    let task = Kptr(task);
    let tid: u32 = task.read(o.task_pid);
    let pid: u32 = task.read(o.task_tgid);
    let leader = task.ptr(o.task_group_leader);
    let mut sample = TaskSample {
        pid,
        tid,
        start_ns: leader.read(o.task_start_boottime),
        runtime_ns: task.read(o.task_sum_exec_runtime),
        utime_ns: task.read(o.task_utime),
        stime_ns: task.read(o.task_stime),
        rss_pages: 0,
    };
    if tid == pid {
        // Threads that already exited live on in signal_struct: counted once, here.
        let signal = task.ptr(o.task_signal);
        sample.utime_ns += signal.read::<u64>(o.signal_utime);
        sample.stime_ns += signal.read::<u64>(o.signal_stime);
        sample.runtime_ns += signal.read::<u64>(o.signal_sum_sched_runtime);
        let mm = task.ptr(o.task_mm);
        sample.rss_pages = mm_counter(mm, MM_FILEPAGES, &o)
            + mm_counter(mm, MM_ANONPAGES, &o)
            + mm_counter(mm, MM_SHMEMPAGES, &o);
    }
    // SAFETY: `meta` is the kernel's, valid for the call like `ctx`; bpf_seq_write copies
    // `size_of::<TaskSample>()` bytes from `sample`, which lives on this stack.
    let written = unsafe {
        let seq = (*ctx.meta).seq;
        bpf_seq_write(
            seq,
            (&sample as *const TaskSample).cast(),
            core::mem::size_of::<TaskSample>() as u32,
        )
    };
    if written < 0 {
        return Err(());
    }
    Ok(())
}
