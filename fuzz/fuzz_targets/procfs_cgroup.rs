//! `/proc/<pid>/cgroup` (procmon-user/src/procfs.rs `parse_cgroup`), then the workload that
//! path names, as the agent does for every process it seeds or reconciles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use procmon_user::procfs::parse_cgroup;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file with read_to_string: what is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = parse_cgroup(text);
    assert!(
        path == "/"
            || text
                .lines()
                .any(|l| l.splitn(3, ':').nth(2) == Some(path.as_str())),
        "{path:?} is not the path of any line of {text:?}"
    );
    procmon_fuzz::check_identity(&path);
});
