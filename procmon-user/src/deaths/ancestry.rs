//! Who started a dying process: its ancestors from the agent's process tree, as crash and
//! OOM-kill events name them.

use crate::{attribution::ProcessTree, events::Ancestor};

/// A process's ancestors from the tree, nearest first (its parent is `ppid`).
pub fn ancestry(tree: &ProcessTree, ppid: u32) -> Vec<Ancestor> {
    tree.ancestry(ppid)
        .into_iter()
        .map(|(pid, comm)| Ancestor {
            pid,
            comm: comm.map(|c| c.to_lossy()),
        })
        .collect()
}
