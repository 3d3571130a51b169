//! Sequences of ring-buffer records through the agent's whole ingest path (decode, tree,
//! attribution, deaths, events, metrics; procmon-user/src/fuzzing.rs): a record that
//! decodes can still say anything (pids that never forked, exits before forks, counters
//! near u64::MAX), and none of it may panic or render an event that is not JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Each record follows its length (u16, little-endian), as in seeds/record_ingest.
    let mut records = Vec::new();
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (record, tail) = tail.split_at(len);
        records.push(record);
        rest = tail;
    }
    procmon_user::fuzzing::ingest(records);
});
