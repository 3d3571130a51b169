//! Runs of a probe that the kernel skipped: `bpf_prog_info.recursion_misses`.
//!
//! The kernel allows one run of a tracing program per CPU at a time. Where tracepoint
//! programs can be preempted (seen on the 7.3 kernel of the matrix, built PREEMPT_LAZY), a
//! task that hits the same tracepoint on that CPU while an earlier run is preempted is not
//! traced at all: the event never reaches the ring buffer and no drop counter sees it. This
//! is the only place such a loss shows. aya 0.14's `ProgramInfo` does not expose the field,
//! hence the raw `BPF_OBJ_GET_INFO_BY_FD`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// The program's recursion misses so far; None where the kernel does not report them
/// (before 5.12) or the call fails.
pub fn recursion_misses(prog: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: both are plain C structs of integers (bindgen), valid when all zero.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // `info` is the union member BPF_OBJ_GET_INFO_BY_FD reads; it points to `info`, alive
    // for the syscall.
    attr.info.bpf_fd = prog.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    // SAFETY: `attr` is a valid bpf_attr for this command, of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    // SAFETY: the kernel wrote at most `info_len` bytes of `info`; reading back the length
    // it reports is reading an integer field of the union member just used.
    let written = unsafe { attr.info.info_len } as usize;
    let end = std::mem::offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();
    (ret == 0 && written >= end).then_some(info.recursion_misses)
}

/// Each named program's fd, duplicated, so its misses can be read after `ebpf` moved on.
pub fn program_fds(
    ebpf: &aya::Ebpf,
    names: impl IntoIterator<Item = &'static str>,
) -> Vec<(&'static str, OwnedFd)> {
    names
        .into_iter()
        .filter_map(|name| {
            let fd = ebpf.program(name)?.fd().ok()?;
            Some((name, fd.as_fd().try_clone_to_owned().ok()?))
        })
        .collect()
}
