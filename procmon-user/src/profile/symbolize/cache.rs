//! The frame cache: per process (and one for the kernel), bounded by a total entry count
//! with whole-space LRU eviction, and names interned so equal frames share one `Arc<str>`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use super::{files::FileId, Frame};

/// What the frame cache is keyed by: kernel addresses mean the same in every process, and
/// file offsets the same in every process that maps the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Space {
    Kernel,
    Process(u32),
    File(FileId),
}

struct SpaceCache {
    frames: HashMap<u64, Frame>,
    last_used: u64,
}

pub(super) struct FrameCache {
    spaces: HashMap<Space, SpaceCache>,
    entries: usize,
    cap: usize,
    tick: u64,
    names: HashSet<Arc<str>>,
}

impl FrameCache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            spaces: HashMap::new(),
            entries: 0,
            cap: cap.max(1),
            tick: 0,
            names: HashSet::new(),
        }
    }

    /// Cached frames, over all spaces.
    pub(super) fn len(&self) -> usize {
        self.entries
    }

    pub(super) fn interned(&self) -> usize {
        self.names.len()
    }

    pub(super) fn get(&mut self, space: Space, addr: u64) -> Option<Frame> {
        self.spaces.get(&space)?.frames.get(&addr).cloned()
    }

    pub(super) fn touch(&mut self, space: Space) {
        self.tick += 1;
        if let Some(s) = self.spaces.get_mut(&space) {
            s.last_used = self.tick;
        }
    }

    pub(super) fn intern(&mut self, name: &str) -> Frame {
        if let Some(existing) = self.names.get(name) {
            return Arc::clone(existing);
        }
        let frame: Frame = Arc::from(name);
        self.names.insert(Arc::clone(&frame));
        frame
    }

    pub(super) fn insert(&mut self, space: Space, addr: u64, frame: Frame) {
        let tick = self.tick;
        let s = self.spaces.entry(space).or_insert_with(|| SpaceCache {
            frames: HashMap::new(),
            last_used: tick,
        });
        if s.frames.insert(addr, frame).is_none() {
            self.entries += 1;
        }
    }

    pub(super) fn forget(&mut self, space: Space) -> bool {
        match self.spaces.remove(&space) {
            Some(s) => {
                self.entries -= s.frames.len();
                true
            }
            None => false,
        }
    }

    /// Evicts whole spaces, least recently used first, down to 90% of the cap (so a full
    /// cache does not scan on every request). Returns how many went.
    pub(super) fn enforce_cap(&mut self) -> u64 {
        if self.entries <= self.cap {
            return 0;
        }
        let target = self.cap - self.cap / 10;
        let mut by_age: Vec<(u64, Space)> = self
            .spaces
            .iter()
            .map(|(space, s)| (s.last_used, *space))
            .collect();
        by_age.sort_unstable();
        let mut evicted = 0;
        for (_, space) in by_age {
            if self.entries <= target {
                break;
            }
            self.forget(space);
            evicted += 1;
        }
        self.prune_names();
        evicted
    }

    /// Drops names nothing but the interner holds, once they could outnumber the live
    /// entries twice: amortized O(1) per insert.
    pub(super) fn maybe_prune_names(&mut self) {
        if self.names.len() > 2 * self.entries.max(1024) {
            self.prune_names();
        }
    }

    fn prune_names(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }
}
