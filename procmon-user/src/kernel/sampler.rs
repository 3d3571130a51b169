//! Live sampling through the `iter/task` program: one pass over every task, read in a few
//! large read()s. Measured against reading /proc/<pid>/stat for every process by
//! `cargo xtask bench` (see the README's benchmark section).

use std::{collections::HashMap, io::Read, mem::size_of};

use aya::{programs::Iter, Ebpf};
use procmon_common::TaskSample;

use crate::attribution::ProcessSample;

pub struct Sampler {
    ebpf: Ebpf,
    page_size: u64,
    /// Output size of the last pass, to size the next buffer in one allocation.
    last_len: usize,
}

impl Sampler {
    /// Takes the loaded object: it owns every attached program, so the probes stay attached
    /// for as long as the sampler lives.
    pub fn new(ebpf: Ebpf) -> Self {
        let page_size = crate::procfs::page_size();
        Self {
            ebpf,
            page_size,
            last_len: 64 * 1024,
        }
    }

    pub fn into_inner(self) -> Ebpf {
        self.ebpf
    }

    /// Every live process's CPU time (all threads, exited ones included) and RSS, by pid.
    pub fn sample(&mut self) -> std::io::Result<HashMap<u32, ProcessSample>> {
        let bytes = self.read_iterator()?;
        Ok(aggregate(&bytes, self.page_size))
    }

    fn read_iterator(&mut self) -> std::io::Result<Vec<u8>> {
        let err = |e: &dyn std::fmt::Display| std::io::Error::other(format!("task iterator: {e}"));
        let program: &mut Iter = self
            .ebpf
            .program_mut(super::SAMPLE_PROGRAM)
            .ok_or_else(|| err(&"program missing"))?
            .try_into()
            .map_err(|e| err(&e))?;
        // Each pass needs its own iterator instance: a fresh link, read to the end.
        let link_id = program.attach().map_err(|e| err(&e))?;
        let link = program.take_link(link_id).map_err(|e| err(&e))?;
        let mut file = link.into_file().map_err(|e| err(&e))?;
        let mut bytes = Vec::with_capacity(self.last_len + self.last_len / 4);
        file.read_to_end(&mut bytes)?;
        self.last_len = bytes.len();
        Ok(bytes)
    }
}

/// Sums per-thread records into processes. A trailing partial record (which the kernel
/// never writes) is ignored rather than misread.
pub fn aggregate(bytes: &[u8], page_size: u64) -> HashMap<u32, ProcessSample> {
    let mut out: HashMap<u32, ProcessSample> =
        HashMap::with_capacity(bytes.len() / size_of::<TaskSample>() / 2);
    for chunk in bytes.chunks_exact(size_of::<TaskSample>()) {
        // SAFETY: TaskSample is plain integers; the chunk holds exactly its size.
        let t: TaskSample = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
        let p = out.entry(t.pid).or_insert(ProcessSample {
            start_ns: t.start_ns,
            ..Default::default()
        });
        p.cpu_ns += t.runtime_ns;
        p.rss_bytes += t.rss_pages * page_size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(samples: &[TaskSample]) -> Vec<u8> {
        samples.iter().flat_map(crate::record::encode).collect()
    }

    #[test]
    fn sums_threads_into_processes() {
        let leader = TaskSample {
            pid: 10,
            tid: 10,
            start_ns: 5,
            runtime_ns: 100,
            rss_pages: 3,
            ..Default::default()
        };
        let thread = TaskSample {
            pid: 10,
            tid: 11,
            start_ns: 5,
            runtime_ns: 50,
            ..Default::default()
        };
        let other = TaskSample {
            pid: 20,
            tid: 20,
            start_ns: 7,
            runtime_ns: 1,
            rss_pages: 1,
            ..Default::default()
        };
        let mut b = bytes(&[leader, thread, other]);
        b.extend([0u8; 7]); // a torn tail must not become a record
        let got = aggregate(&b, 4096);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[&10],
            ProcessSample {
                start_ns: 5,
                cpu_ns: 150,
                rss_bytes: 3 * 4096
            }
        );
        assert_eq!(got[&20].cpu_ns, 1);
    }
}
