//! Cgroup paths read in the kernel: a killed process may be reaped before userspace could
//! read its /proc/<pid>/cgroup, so the path is walked here (kernfs node names up to the
//! hierarchy root, bounded depth) and sent with the record.

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use procmon_common::{cgroup_flags, stat, CgroupPath, KernelOffsets, CGROUP_DEPTH};

use crate::{count, task::Kptr};

/// Runs `$body` once per cgroup level, `$i` = 0..CGROUP_DEPTH, as straight-line code.
///
/// NB: not a loop. LLVM compiled the bounded `while` this replaces into a loop entered in its
/// middle and closed by the fall-through after a helper call. The CFG check of older verifiers
/// (5.10 and 6.1 tested; 6.12 is fixed) allows a back edge only on a jump, so it refused the
/// program before simulating one instruction ("back-edge from insn N to N+1 ... processed 0
/// insns"), although those kernels accept bounded loops. Unrolled code has no back edge at
/// all, so every verifier from our minimum kernel (5.8) on accepts it.
macro_rules! for_each_level {
    ($i:ident => $body:block) => {
        for_each_level!(@levels $i, $body, 0 1 2 3 4 5 6 7)
    };
    (@levels $i:ident, $body:block, $($level:literal)*) => {
        $({
            #[allow(unused_variables)]
            let $i: usize = $level;
            $body
        })*
    };
}
const _: () = assert!(
    CGROUP_DEPTH == 8,
    "for_each_level! lists one literal per cgroup level"
);

/// The cgroup of `task` in the memory controller's hierarchy (v1 `memory` or the v2 unified
/// one), as its kernfs node; null without CONFIG_MEMCG.
#[inline(always)]
pub fn task_memcg_kn(task: Kptr, o: &KernelOffsets) -> Kptr {
    css_kn(task_memcg_css(task, o), o)
}

/// `task`'s memory cgroup state (the `css` a `mem_cgroup` starts with); null without
/// CONFIG_MEMCG.
#[inline(always)]
pub fn task_memcg_css(task: Kptr, o: &KernelOffsets) -> Kptr {
    if o.memory_cgrp_id == u32::MAX {
        return Kptr(core::ptr::null());
    }
    task.ptr(o.task_cgroups)
        .ptr(o.css_set_subsys + o.memory_cgrp_id * 8)
}

/// Headroom below a memory limit within which a memory cgroup counts as "at its limit":
/// a charge fails when usage + the charge (one page, or 512 for a huge page) exceeds the
/// limit, and the per-CPU charge caches are drained before the OOM killer runs.
const AT_LIMIT_PAGES: u64 = 1024;

/// Without the OOM context (no fentry), the memory cgroup whose limit caused an OOM kill is
/// inferred: the victim's innermost memory cgroup (itself or an ancestor, below the root)
/// whose usage is within [`AT_LIMIT_PAGES`] of its limit. Null when none is: a global OOM
/// (or a cpuset / mempolicy one, which this does not tell apart).
#[inline(always)]
#[allow(unused_assignments)] // the last level's `css = parent` is never read
pub fn memcg_at_limit(task: Kptr, o: &KernelOffsets) -> Kptr {
    let mut css = task_memcg_css(task, o);
    if o.memcg_memory == 0 {
        return Kptr(core::ptr::null());
    }
    for_each_level!(_level => {
        if css.0.is_null() {
            return Kptr(core::ptr::null());
        }
        let parent = css.ptr(o.css_parent);
        if parent.0.is_null() {
            // The root memory cgroup has no limit.
            return Kptr(core::ptr::null());
        }
        let memcg = Kptr(css.0.wrapping_sub(o.memcg_css as usize));
        let usage = memcg
            .read::<i64>(o.memcg_memory + o.page_counter_usage)
            .max(0) as u64;
        let max: u64 = memcg.read(o.memcg_memory + o.page_counter_max);
        if max.saturating_sub(usage) <= AT_LIMIT_PAGES {
            return css;
        }
        css = parent;
    });
    Kptr(core::ptr::null())
}

/// The kernfs node of a `cgroup_subsys_state`'s cgroup (a `mem_cgroup` starts with one).
#[inline(always)]
pub fn css_kn(css: Kptr, o: &KernelOffsets) -> Kptr {
    if css.0.is_null() {
        return css;
    }
    let cgroup = css.ptr(o.css_cgroup);
    if cgroup.0.is_null() {
        return cgroup;
    }
    cgroup.ptr(o.cgroup_kn)
}

/// Fills `out` with the path of the cgroup whose kernfs node is `kn`, innermost first.
///
/// # Safety
/// `out` points to writable memory (a reserved ring-buffer record): the 1 KiB path does not
/// fit on the BPF stack next to everything else. Its contents need not be initialized: only
/// fields written here are read.
#[inline(always)]
pub unsafe fn read_path(kn: Kptr, out: *mut CgroupPath, o: &KernelOffsets) {
    // SAFETY: `out` is valid for writes (the caller's contract). Below are plain writes of
    // integer fields, `flags |=` after `flags` is written, and string reads into `names[i]`
    // (i < CGROUP_DEPTH) that bpf_probe_read_kernel_str_bytes bounds by the slice and makes
    // safe for any source address.
    unsafe {
        (*out).depth = 0;
        (*out).flags = 0;
        if kn.0.is_null() {
            return;
        }
        (*out).flags = cgroup_flags::KNOWN;
        let mut node = kn;
        for_each_level!(i => {
            let parent = node.ptr(o.kernfs_parent);
            if parent.0.is_null() {
                // The hierarchy root: its name is empty and not part of the path.
                return;
            }
            let name = node.ptr(o.kernfs_name);
            if bpf_probe_read_kernel_str_bytes(name.0, &mut (*out).names[i]).is_err() {
                (*out).names[i][0] = 0;
                count(stat::READ_ERROR);
            }
            (*out).depth = i as u32 + 1;
            node = parent;
        });
        if !node.ptr(o.kernfs_parent).0.is_null() {
            (*out).flags |= cgroup_flags::TRUNCATED;
        }
    }
}
