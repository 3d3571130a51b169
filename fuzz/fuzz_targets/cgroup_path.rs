//! Workload identity from a cgroup path (procmon-user/src/workload/identity.rs): paths of
//! every process and of every crash and OOM record, named by whoever creates cgroups.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Paths reach the parser as text: /proc is read as UTF-8, kernel names lossily.
    procmon_fuzz::check_identity(&String::from_utf8_lossy(data));
});
