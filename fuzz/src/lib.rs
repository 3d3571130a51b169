//! What the fuzz targets check beyond "no panic", where more than one target reaches it.

use procmon_user::workload::identity::{self, Identity, Kind};

/// The invariants of the workload identity the agent derives from a cgroup `path`, whichever
/// way the path was read (/proc/<pid>/cgroup, or the kernel's walk in a record).
pub fn check_identity(path: &str) {
    let Some(id) = identity::parse(path) else {
        // Nothing named: the process is named by its comm.
        assert_eq!(identity::identify(Some(path), "sh", false).workload, "sh");
        return;
    };
    check(path, &id);
    // Paths are read relative to the reader's cgroup namespace (`/../../x`) or cut to the
    // innermost levels by the kernel walk (`.../x`): neither may change what they name.
    for prefix in ["/../../", ".../"] {
        let moved = format!("{prefix}{path}");
        assert_eq!(
            identity::parse(&moved).as_ref(),
            Some(&id),
            "{moved:?} vs {path:?}"
        );
    }
}

fn check(path: &str, id: &Identity) {
    assert!(!id.workload.is_empty(), "{path:?}: empty workload");
    assert!(id.named_by_path(), "{path:?}: {id:?}");
    if let Some(cid) = &id.container_id {
        assert!(
            path.contains(cid.as_str()),
            "{path:?}: container id {cid:?} not in the path"
        );
        let short = &cid[..cid.len().min(12)];
        assert!(id.workload.ends_with(short), "{path:?}: {id:?}");
    }
    match id.kind {
        Kind::Pod => {
            let uid = id.pod_uid.as_deref().expect("a pod without its uid");
            let groups: Vec<&str> = uid.split('-').collect();
            assert!(
                groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
                    && uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{path:?}: pod uid {uid:?}"
            );
            assert!(
                id.workload.starts_with(&format!("pod_{uid}")),
                "{path:?}: {id:?}"
            );
        }
        Kind::Container => {
            assert!(
                id.container_id.is_some() && id.runtime.is_some(),
                "{path:?}: {id:?}"
            );
            assert!(id.pod_uid.is_none(), "{path:?}: {id:?}");
        }
        Kind::Unit => {
            let units = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
            assert!(
                id.workload == "conmon" || units.iter().any(|s| id.workload.ends_with(s)),
                "{path:?}: unit {:?}",
                id.workload
            );
        }
        Kind::Cgroup => {
            assert!(
                path.split('/').any(|c| c == id.workload),
                "{path:?}: {:?} is not one of its components",
                id.workload
            );
        }
        Kind::Kernel | Kind::Comm => unreachable!("named_by_path checked above"),
    }
    // Label cardinality is bounded by the number of containers, not by what their ids or
    // pod uids look like.
    if matches!(id.kind, Kind::Pod | Kind::Container) {
        assert!(
            id.workload.len() <= 64,
            "{path:?}: workload {:?}",
            id.workload
        );
    }
}
