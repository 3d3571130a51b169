//! The agent and CLI behind the `procmon` binary (main.rs).
//!
//! A library so that code outside the binary can reach the parsers of untrusted input: the
//! fuzz targets in `fuzz/` (cargo-fuzz) call [`record`], [`procfs`] and [`workload`]
//! directly, and the whole ingest pipeline through `fuzzing` (built only for them). Only
//! what main.rs or the fuzz targets use is public; the rest stays private, so unused code is
//! still reported.

// Used by main.rs.
pub mod agent;
pub mod allocator;
pub mod cli;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod profile;
pub mod run;

// Parsers of untrusted input, used by the fuzz targets.
pub mod comm;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod procfs;
pub mod record;
pub mod workload;

mod attribution;
mod clock;
mod deaths;
mod events;
mod ingest;
mod metrics;
mod release;
mod state;
mod tree;
mod whole_file;
