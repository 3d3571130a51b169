//! `perf_event` on software `cpu-clock`, one event per online CPU: counts CPU samples per
//! (process, user stack, kernel stack) in the kernel, so the agent reads a few hundred
//! counts per window instead of one record per sample.
//!
//! Two windows alternate (`procmon_common::SampleKey::window`): the probe writes the one that
//! `PROFILE_WINDOW[0]` names into that window's own stack map, while the agent reads and
//! clears the other. A stack map is only ever cleared when nothing writes it, so a stack id
//! read with its counts always means the stack it was counted with.

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event},
    maps::{Array, HashMap, StackTrace},
    programs::{tracing::StackIdContext, PerfEventContext},
};
use procmon_common::{stat, SampleKey};

use crate::count;

/// Default sizes; the agent sizes both from the sampling rate and window length at load.
#[map]
static STACKS_0: StackTrace = StackTrace::with_max_entries(1024, 0);
#[map]
static STACKS_1: StackTrace = StackTrace::with_max_entries(1024, 0);

#[map]
static SAMPLES: HashMap<SampleKey, u64> = HashMap::with_max_entries(2048, 0);

/// `[0]`: the window (0 or 1) samples go to now. Written by the agent only.
#[map]
static PROFILE_WINDOW: Array<u32> = Array::with_max_entries(1, 0);

const EEXIST: i32 = 17;

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    try_cpu_sample(&ctx);
    0
}

#[inline(always)]
fn try_cpu_sample(ctx: &PerfEventContext) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if pid == 0 {
        return; // the idle task: an idle CPU, not a process
    }
    count(stat::CPU_SAMPLES);
    let window = PROFILE_WINDOW.get(0).copied().unwrap_or(0) & 1;
    let stack_id = |flags: u64| -> i32 {
        let id = if window == 0 {
            ctx.get_stackid(&STACKS_0, flags)
        } else {
            ctx.get_stackid(&STACKS_1, flags)
        };
        match id {
            Ok(id) => id as i32,
            Err(e) => {
                if e == -EEXIST {
                    count(stat::STACK_COLLISIONS);
                }
                e
            }
        }
    };
    let key = SampleKey {
        pid,
        user_stack: stack_id(u64::from(BPF_F_USER_STACK)),
        kernel_stack: stack_id(0),
        window,
    };
    if SAMPLES.get_ptr_mut(&key).is_none() {
        // Fails if another CPU inserted the key meanwhile (then it is found below) or the
        // map is full.
        let _ = SAMPLES.insert(&key, &0, u64::from(BPF_NOEXIST));
    }
    match SAMPLES.get_ptr_mut(&key) {
        // SAFETY: the lookup succeeded, so `n` points at the live value of this key, aligned
        // for u64. Two CPUs sampling the same process and stacks at once can lose one
        // increment between them (aya-ebpf has no atomic add); a sampler tolerates that.
        Some(n) => unsafe { *n += 1 },
        None => count(stat::SAMPLES_FULL),
    }
}
