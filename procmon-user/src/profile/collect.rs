//! One drain of the in-kernel CPU sample counts, symbolized while the processes are still
//! alive: raw addresses become frames per process, in one symbolizer request per process.

use std::{collections::HashMap, sync::Arc};

use super::{
    recent::Stack,
    symbolize::{Frame, Request, SymbolizerHandle},
};
use crate::kernel::perf::{CpuSampling, RawSample, FLIP_GRACE};

/// Samples of one process with one stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub pid: u32,
    pub stack: Stack,
    pub samples: u64,
    /// The user stack is a single frame: the binary was likely built without frame pointers.
    pub shallow: bool,
}

/// Marks kernel frames, as flame graph tools expect.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// Flips the sampling window, lets in-flight samples land, reads the old window and
/// symbolizes it.
pub async fn drain(cpu: &mut CpuSampling, symbolizer: &SymbolizerHandle) -> Vec<Sampled> {
    let window = cpu.flip();
    tokio::time::sleep(FLIP_GRACE).await;
    let raw = cpu.collect(window);
    symbolize(raw, symbolizer).await
}

/// One symbolizer batch per process: each stack keeps its own leaf (looked up exactly) and
/// return addresses (looked up inside the call), and the process's maps are read once.
pub async fn symbolize(raw: Vec<RawSample>, symbolizer: &SymbolizerHandle) -> Vec<Sampled> {
    let mut by_pid: HashMap<u32, Vec<RawSample>> = HashMap::new();
    for r in raw {
        by_pid.entry(r.pid).or_default().push(r);
    }
    let mut out = Vec::new();
    for (pid, samples) in by_pid {
        let requests = samples
            .iter()
            .map(|s| Request {
                pid,
                user: s.user.clone(),
                kernel: s.kernel.clone(),
            })
            .collect();
        let responses = symbolizer.symbolize_batch(requests).await;
        for (s, response) in samples.into_iter().zip(responses) {
            let mut frames: Vec<Frame> = Vec::with_capacity(s.user.len() + s.kernel.len() + 1);
            if s.user_lost {
                frames.push(Frame::from("[stack collision]"));
            }
            // The kernel records stacks leaf first; flame graphs want the root first.
            frames.extend(response.user.into_iter().rev());
            frames.extend(
                response
                    .kernel
                    .into_iter()
                    .rev()
                    .map(|f| Frame::from(format!("{f}{KERNEL_SUFFIX}"))),
            );
            if frames.is_empty() {
                frames.push(Frame::from("[unknown]"));
            }
            out.push(Sampled {
                pid,
                shallow: s.user.len() == 1,
                stack: Arc::from(frames),
                samples: s.count,
            });
        }
    }
    out
}
