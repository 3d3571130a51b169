//! One module per hook.
pub mod exec;
pub mod exit;
pub mod fork;
pub mod oom;
pub mod profile;
pub mod release;
pub mod sample;
