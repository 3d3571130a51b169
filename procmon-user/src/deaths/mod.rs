//! Deaths worth more than an exit event: crashes and OOM kills. Their records arrive before
//! the process's exit record (correlation), which then classifies the death; crash and OOM
//! events carry the ancestry of the process.

pub mod ancestry;
pub mod correlation;
pub mod crash;
pub mod oom;

pub use correlation::{Death, Deaths};
