//! Cgroup paths read in the kernel: a killed process may be reaped before userspace could
//! read its /proc/<pid>/cgroup, so the path is walked here (kernfs node names up to the
//! hierarchy root, bounded depth) and sent with the record.

use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use procmon_common::{cgroup_flags, stat, CgroupPath, KernelOffsets, CGROUP_DEPTH};

use crate::{count, task::Kptr};

/// The cgroup of `task` in the memory controller's hierarchy (v1 `memory` or the v2 unified
/// one), as its kernfs node; null without CONFIG_MEMCG.
#[inline(always)]
pub fn task_memcg_kn(task: Kptr, o: &KernelOffsets) -> Kptr {
    if o.memory_cgrp_id == u32::MAX {
        return Kptr(core::ptr::null());
    }
    let css = task
        .ptr(o.task_cgroups)
        .ptr(o.css_set_subsys + o.memory_cgrp_id * 8);
    css_kn(css, o)
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
/// fit on the BPF stack next to everything else.
#[inline(always)]
pub unsafe fn read_path(kn: Kptr, out: *mut CgroupPath, o: &KernelOffsets) {
    (*out).depth = 0;
    (*out).flags = 0;
    if kn.0.is_null() {
        return;
    }
    (*out).flags = cgroup_flags::KNOWN;
    let mut node = kn;
    let mut i = 0;
    while i < CGROUP_DEPTH {
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
        i += 1;
    }
    if !node.ptr(o.kernfs_parent).0.is_null() {
        (*out).flags |= cgroup_flags::TRUNCATED;
    }
}
