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

/// Kernel frames with their `_[k]` mark, one shared string per name across drains (the
/// symbolizer interns names; marking them must not copy each one per sample).
#[derive(Default)]
pub struct KernelFrames(HashMap<Frame, Frame>);

/// Distinct kernel frames kept marked; past it the map starts over (a kernel has tens of
/// thousands of functions, a host's stacks touch far fewer).
const MAX_KERNEL_FRAMES: usize = 16384;

impl KernelFrames {
    fn marked(&mut self, name: Frame) -> Frame {
        if self.0.len() >= MAX_KERNEL_FRAMES && !self.0.contains_key(&name) {
            self.0.clear();
        }
        self.0
            .entry(name)
            .or_insert_with_key(|name| Frame::from(format!("{name}{KERNEL_SUFFIX}")))
            .clone()
    }
}

/// Flips the sampling window, lets in-flight samples land, reads the old window and
/// symbolizes it.
pub async fn drain(
    cpu: &mut CpuSampling,
    symbolizer: &SymbolizerHandle,
    kernel_frames: &mut KernelFrames,
) -> Vec<Sampled> {
    let window = cpu.flip();
    tokio::time::sleep(FLIP_GRACE).await;
    let raw = cpu.collect(window);
    symbolize(raw, symbolizer, kernel_frames).await
}

/// One symbolizer batch per process: each stack keeps its own leaf (looked up exactly) and
/// return addresses (looked up inside the call), and the process's maps are read once.
pub async fn symbolize(
    raw: Vec<RawSample>,
    symbolizer: &SymbolizerHandle,
    kernel_frames: &mut KernelFrames,
) -> Vec<Sampled> {
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
                    .map(|f| kernel_frames.marked(f)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_frames_are_marked_once_and_shared() {
        let mut k = KernelFrames::default();
        let a = k.marked(Frame::from("schedule"));
        let b = k.marked(Frame::from("schedule"));
        assert_eq!(&*a, "schedule_[k]");
        assert!(
            Arc::ptr_eq(&a, &b),
            "one string for every sample of the name"
        );
    }
}
