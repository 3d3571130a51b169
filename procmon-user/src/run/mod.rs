//! `procmon run -- CMD`: runs a command as the watched root and, when it exits, reports every
//! process it spawned (even those that lived a millisecond) with CPU, peak RSS, lifetime and
//! outcome, as a tree on stderr and optionally as one JSON document.

mod execute;
pub mod log;
pub mod report;

pub use execute::execute;
