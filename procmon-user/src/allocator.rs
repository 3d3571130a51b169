//! glibc malloc, tuned for an agent that runs for weeks with a small steady heap after a
//! large start-up peak (the kernel's BTF is parsed twice, ~35 MiB at peak, then dropped).
//!
//! NB: glibc raises its mmap threshold to the size of the largest mmapped block freed (up to
//! 32 MiB), so after the BTF buffers are freed, later large buffers (the rendered /metrics
//! text, 7 MiB with 10,000 child series) come from the heap and their pages stay resident
//! after free. A fixed threshold keeps large buffers in their own mappings, returned to the
//! kernel on free. glibc also gives each thread that allocates its own arena (up to 8 per
//! core), each holding its own free memory; the agent's threads allocate little, so two
//! arenas are enough.

/// Applies the settings; call before the runtime starts its threads.
pub fn tune() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Returns free heap pages to the kernel: after start-up, whose peak is the largest.
pub fn release_free() {
    // SAFETY: malloc_trim takes no pointers and is thread-safe.
    unsafe { libc::malloc_trim(0) };
}
