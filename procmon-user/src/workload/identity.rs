//! What a cgroup path says a process belongs to: a Kubernetes pod's container, a plain
//! container (podman, docker, containerd's `ctr`), a systemd unit, or the kernel.
//!
//! Paths come from two places and both must parse the same way:
//! - `/proc/<pid>/cgroup`, which the kernel renders relative to the *reader's* cgroup
//!   namespace. An agent in a pod with a private cgroup namespace sees other cgroups as
//!   `/../../kubepods-burstable-pod<uid>.slice/...`, so nothing here relies on a component's
//!   position from the root: every shape is recognised by its own name.
//! - the kernel's walk of kernfs names (crash and OOM records, procmon-ebpf `cgroup.rs`),
//!   which goes up to the hierarchy root whatever namespace the agent is in, and is
//!   prefixed with `...` when deeper than its 8 levels.
//!
//! Container ids are the full id the runtime uses (`podman ps --no-trunc`, `crictl ps`);
//! labels carry its first 12 characters, as `docker ps` shows them.

/// Where the identity came from; the label format follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container of a Kubernetes pod (or a process in the pod's cgroup outside any
    /// container, then without `container_id`).
    Pod,
    /// A container outside Kubernetes.
    Container,
    /// A systemd unit or slice.
    Unit,
    /// Kernel threads, all in one workload.
    Kernel,
    /// Any other cgroup: its last component.
    Cgroup,
    /// The root cgroup or no cgroup known: the process's comm.
    Comm,
}

/// A Kubernetes pod's QoS class, as kubelet names its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The class as the API spells it in `status.qosClass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: Kind,
    /// The bounded label: `nginx.service`, `pod_<uid>/<id12>`, `podman/<id12>`, `kernel`.
    pub workload: String,
    /// `containerd`, `cri-o`, `docker`, `podman`; None where the path does not say (a
    /// kubelet with the cgroupfs driver names container cgroups by bare id).
    pub runtime: Option<&'static str>,
    pub container_id: Option<String>,
    /// With dashes, as the API spells it (the systemd driver escapes them to `_`).
    pub pod_uid: Option<String>,
    /// None when a private cgroup namespace hides the level that names it (cgroupfs driver).
    pub qos: Option<Qos>,
}

/// The workload of everything that runs as a kernel thread.
pub const KERNEL: &str = "kernel";

impl Identity {
    fn new(kind: Kind, workload: String) -> Self {
        Self {
            kind,
            workload,
            runtime: None,
            container_id: None,
            pod_uid: None,
            qos: None,
        }
    }

    pub fn kernel() -> Self {
        Self::new(Kind::Kernel, KERNEL.to_string())
    }

    /// Named by `comm`: for the root cgroup, or when the cgroup is unknown.
    pub fn comm(comm: &str) -> Self {
        let name = if comm.is_empty() { "unknown" } else { comm };
        Self::new(Kind::Comm, name.to_string())
    }

    /// Whether the identity depends on the cgroup path alone (and so may be cached by it).
    pub fn named_by_path(&self) -> bool {
        !matches!(self.kind, Kind::Comm | Kind::Kernel)
    }
}

/// The identity of a process from its cgroup path and comm. `kernel_thread` is what the
/// agent knows from PF_KTHREAD (or kthreadd's parentage): comm alone cannot tell, since a
/// kworker renames itself after the work it runs and anyone may call a process `kworker/0`.
pub fn identify(cgroup_path: Option<&str>, comm: &str, kernel_thread: bool) -> Identity {
    if kernel_thread {
        return Identity::kernel();
    }
    match cgroup_path.and_then(parse) {
        Some(identity) => identity,
        None => Identity::comm(comm),
    }
}

/// The identity a cgroup path alone gives, or None for the root cgroup (and for paths that
/// name nothing: empty, or only `..`).
pub fn parse(path: &str) -> Option<Identity> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".." && *c != "...")
        .collect();
    if parts.is_empty() {
        return None;
    }
    kubernetes(&parts)
        .or_else(|| container(&parts))
        .or_else(|| containerd_namespace(&parts))
        .or_else(|| unit(&parts))
        .or_else(|| {
            let leaf = parts.last()?;
            Some(Identity::new(Kind::Cgroup, leaf.to_string()))
        })
}

/// A pod level, `kubepods-<qos>-pod<uid_>.slice` (systemd driver) or `pod<uid>` (cgroupfs),
/// with the QoS level that names it in the cgroupfs layout (`burstable`, `besteffort`, or
/// `kubepods` for guaranteed pods) just above it.
fn kubernetes(parts: &[&str]) -> Option<Identity> {
    let (at, uid, qos) = parts.iter().enumerate().find_map(|(i, c)| {
        if let Some(slice) = c
            .strip_prefix("kubepods-")
            .and_then(|c| c.strip_suffix(".slice"))
        {
            let (qos, uid) = if let Some(uid) = slice.strip_prefix("burstable-pod") {
                (Qos::Burstable, uid)
            } else if let Some(uid) = slice.strip_prefix("besteffort-pod") {
                (Qos::BestEffort, uid)
            } else {
                (Qos::Guaranteed, slice.strip_prefix("pod")?)
            };
            let uid = uid.replace('_', "-");
            return is_uid(&uid).then_some((i, uid, Some(qos)));
        }
        let uid = c.strip_prefix("pod").filter(|u| is_uid(u))?;
        let qos = match i.checked_sub(1).map(|p| parts[p]) {
            Some("burstable") => Some(Qos::Burstable),
            Some("besteffort") => Some(Qos::BestEffort),
            Some("kubepods") => Some(Qos::Guaranteed),
            // Hidden by a private cgroup namespace.
            _ => None,
        };
        Some((i, uid.to_string(), qos))
    })?;
    let mut id = Identity::new(Kind::Pod, format!("pod_{uid}"));
    if let Some(next) = parts.get(at + 1) {
        if let Some((runtime, cid)) = scoped_container(next) {
            id.runtime = runtime;
            id.container_id = Some(cid.to_string());
        } else if is_hex_id(next, 64) {
            // The cgroupfs driver names the container cgroup by its bare id, whatever the
            // runtime.
            id.container_id = Some(next.to_string());
        }
    }
    if let Some(cid) = &id.container_id {
        id.workload = format!("pod_{uid}/{}", short(cid));
    }
    id.pod_uid = Some(uid);
    id.qos = qos;
    Some(id)
}

/// A container cgroup the runtime names after itself: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope` (systemd), `libpod-<id>`
/// (podman's cgroupfs manager, under `libpod_parent`). Conmon, the monitor podman and
/// CRI-O run next to each container, gets a `-conmon-` scope of its own; it is reported
/// as None here, so that it is not counted as the container.
fn scoped_container(c: &str) -> Option<(Option<&'static str>, &str)> {
    let name = c.strip_suffix(".scope").unwrap_or(c);
    const PREFIXES: [(&str, &str); 4] = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_hex_id(id, 12).then_some((Some(*runtime), id))
    })
}

/// The monitor podman and CRI-O run next to each container, in a scope per container. One
/// workload for all of them: a label per container's monitor would double the series of a
/// busy container host for a process that mostly sleeps.
fn conmon(c: &str) -> Option<&'static str> {
    let name = c.strip_suffix(".scope").unwrap_or(c);
    if name
        .strip_prefix("libpod-conmon-")
        .is_some_and(|id| is_hex_id(id, 12))
    {
        Some("podman")
    } else if name
        .strip_prefix("crio-conmon-")
        .is_some_and(|id| is_hex_id(id, 12))
    {
        Some("cri-o")
    } else {
        None
    }
}

/// A container outside Kubernetes: a runtime-named scope anywhere in the path (the
/// outermost one: a container may make cgroups of its own inside), or docker's cgroupfs
/// layout `/docker/<id>`.
fn container(parts: &[&str]) -> Option<Identity> {
    if let Some(runtime) = parts.iter().find_map(|c| conmon(c)) {
        let mut id = Identity::new(Kind::Unit, "conmon".to_string());
        id.runtime = Some(runtime);
        return Some(id);
    }
    let (runtime, cid) = parts.iter().find_map(|c| scoped_container(c)).or_else(|| {
        parts
            .windows(2)
            .find(|w| w[0] == "docker" && is_hex_id(w[1], 64))
            .map(|w| (Some("docker"), w[1]))
    })?;
    let runtime = runtime.unwrap_or("container");
    let mut id = Identity::new(Kind::Container, format!("{runtime}/{}", short(cid)));
    id.runtime = Some(runtime);
    id.container_id = Some(cid.to_string());
    Some(id)
}

/// containerd's own containers (`ctr run`): the runc shim puts them at
/// `/<namespace>/<container id>`, ids being names the user chose. Only the namespaces
/// containerd's clients use by default are recognised, since any two-level path would
/// match otherwise.
fn containerd_namespace(parts: &[&str]) -> Option<Identity> {
    const NAMESPACES: [&str; 3] = ["default", "k8s.io", "buildkit"];
    let [ns, cid] = parts else { return None };
    if !NAMESPACES.contains(ns) || !is_container_name(cid) {
        return None;
    }
    let mut id = Identity::new(Kind::Container, format!("containerd/{ns}/{}", short(cid)));
    id.runtime = Some("containerd");
    id.container_id = Some(cid.to_string());
    Some(id)
}

/// systemd units. The innermost unit names the workload, with two exceptions that would
/// otherwise grow without bound: login sessions (`session-42.scope`, one per login) are
/// their user's slice, and units of a user's manager are prefixed by the user
/// (`user-1000/pipewire.service`), since every user runs the same ones.
fn unit(parts: &[&str]) -> Option<Identity> {
    let is_unit = |c: &&&str| {
        [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
            .iter()
            .any(|s| c.ends_with(s))
    };
    let leaf = *parts.iter().rev().find(is_unit)?;
    let user_manager = parts.iter().find_map(|c| {
        c.strip_prefix("user@")
            .and_then(|c| c.strip_suffix(".service"))
    });
    let workload = if leaf.starts_with("session-") && leaf.ends_with(".scope") {
        parts
            .iter()
            .rev()
            .find(|c| c.starts_with("user-") && c.ends_with(".slice"))
            .map_or("user.slice", |c| c)
            .to_string()
    } else {
        match user_manager {
            Some(uid) if !leaf.starts_with("user@") => format!("user-{uid}/{leaf}"),
            _ => leaf.to_string(),
        }
    };
    Some(Identity::new(Kind::Unit, workload))
}

/// `8-4-4-4-12` hex digits: how Kubernetes spells a pod UID.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hex_id(s: &str, min_len: usize) -> bool {
    s.len() >= min_len && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What containerd accepts as a container id (its `identifiers.Validate`).
fn is_container_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "4f7a1c0e9b2d3a5f6e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f";
    const UID: &str = "0b2c6a3e-8f1d-4e5a-9c7b-1d2e3f4a5b6c";
    const UID_: &str = "0b2c6a3e_8f1d_4e5a_9c7b_1d2e3f4a5b6c";

    fn pod(path: &str) -> Identity {
        let id = parse(path).unwrap_or_else(|| panic!("{path}: no identity"));
        assert_eq!(id.kind, Kind::Pod, "{path}");
        assert_eq!(id.pod_uid.as_deref(), Some(UID), "{path}");
        id
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let cases = [
            (
                "cri-containerd",
                Some("containerd"),
                "burstable",
                Some(Qos::Burstable),
            ),
            ("crio", Some("cri-o"), "besteffort", Some(Qos::BestEffort)),
            ("docker", Some("docker"), "burstable", Some(Qos::Burstable)),
        ];
        for (prefix, runtime, qos_name, qos) in cases {
            let path = format!(
                "/kubepods.slice/kubepods-{qos_name}.slice/kubepods-{qos_name}-pod{UID_}.slice/{prefix}-{CID}.scope"
            );
            let id = pod(&path);
            assert_eq!(id.runtime, runtime, "{path}");
            assert_eq!(id.qos, qos, "{path}");
            assert_eq!(id.container_id.as_deref(), Some(CID), "{path}");
            assert_eq!(id.workload, format!("pod_{UID}/4f7a1c0e9b2d"), "{path}");
        }
    }

    #[test]
    fn guaranteed_pods_sit_directly_under_kubepods() {
        let systemd =
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(pod(&systemd).qos, Some(Qos::Guaranteed));
        let cgroupfs = format!("/kubepods/pod{UID}/{CID}");
        let id = pod(&cgroupfs);
        assert_eq!(id.qos, Some(Qos::Guaranteed));
        assert_eq!(id.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let id = pod(&format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(id.qos, Some(Qos::Burstable));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        assert_eq!(id.runtime, None, "a bare id does not name its runtime");
        assert_eq!(id.workload, format!("pod_{UID}/4f7a1c0e9b2d"));
        let id = pod(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}"));
        assert_eq!((id.qos, id.runtime), (Some(Qos::BestEffort), Some("cri-o")));
    }

    #[test]
    fn private_cgroup_namespace_paths() {
        // The agent's own pod is the namespace root; others are reached through `..`.
        let id = pod(&format!(
            "/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(id.qos, Some(Qos::BestEffort));
        assert_eq!(id.runtime, Some("containerd"));
        let id = pod(&format!("/../../pod{UID}/{CID}"));
        assert_eq!(id.qos, None, "the QoS level is above the namespace root");
        assert_eq!(id.container_id.as_deref(), Some(CID));
        // The kernel's walk, truncated at 8 levels.
        let id = pod(&format!(".../kubepods-pod{UID_}.slice/crio-{CID}.scope"));
        assert_eq!(id.runtime, Some("cri-o"));
        // The agent's own cgroup, seen from inside its namespace.
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/../.."), None);
    }

    #[test]
    fn pod_level_processes_and_nested_cgroups() {
        let id = pod(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(id.workload, format!("pod_{UID}"));
        assert_eq!(id.container_id, None);
        let id = pod(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope"
        ));
        assert_eq!(
            id.container_id.as_deref(),
            Some(CID),
            "cgroups a container made"
        );
        // CRI-O's monitor is not the container.
        let id = pod(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"
        ));
        assert_eq!(id.container_id, None);
    }

    #[test]
    fn plain_containers() {
        let cases = [
            (format!("/machine.slice/libpod-{CID}.scope"), "podman"),
            (format!("/libpod_parent/libpod-{CID}"), "podman"),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"
                ),
                "podman",
            ),
            (
                format!("/machine.slice/libpod-{CID}.scope/container"),
                "podman",
            ),
            (format!("/system.slice/docker-{CID}.scope"), "docker"),
            (format!("/docker/{CID}"), "docker"),
            (
                format!("/system.slice/cri-containerd-{CID}.scope"),
                "containerd",
            ),
        ];
        for (path, runtime) in cases {
            let id = parse(&path).unwrap();
            assert_eq!(id.kind, Kind::Container, "{path}");
            assert_eq!(id.runtime, Some(runtime), "{path}");
            assert_eq!(id.container_id.as_deref(), Some(CID), "{path}");
            assert_eq!(id.workload, format!("{runtime}/4f7a1c0e9b2d"), "{path}");
            assert_eq!(id.pod_uid, None, "{path}");
        }
        let conmon = parse(&format!("/machine.slice/libpod-conmon-{CID}.scope")).unwrap();
        assert_eq!(
            (
                conmon.workload.as_str(),
                conmon.container_id,
                conmon.runtime
            ),
            ("conmon", None, Some("podman")),
            "podman's monitor is not the container"
        );
        // Podman pods (systemd manager) nest containers in a pod slice.
        let id = parse(&format!(
            "/machine.slice/machine-libpod_pod_{CID}.slice/libpod-{CID}.scope"
        ))
        .unwrap();
        assert_eq!(id.workload, "podman/4f7a1c0e9b2d");
    }

    #[test]
    fn containerd_namespaces() {
        let id = parse("/default/redis").unwrap();
        assert_eq!(id.workload, "containerd/default/redis");
        assert_eq!(id.container_id.as_deref(), Some("redis"));
        assert_eq!(id.runtime, Some("containerd"));
        let id = parse(&format!("/k8s.io/{CID}")).unwrap();
        assert_eq!(id.workload, "containerd/k8s.io/4f7a1c0e9b2d");
        assert_eq!(parse("/other/redis").unwrap().kind, Kind::Cgroup);
    }

    #[test]
    fn systemd_units_and_user_slices() {
        let cases = [
            ("/system.slice/nginx.service", "nginx.service"),
            ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1.service"),
            ("/init.scope", "init.scope"),
            ("/system.slice", "system.slice"),
            ("/user.slice/user-1000.slice/session-42.scope", "user-1000.slice"),
            ("/user.slice/user-1000.slice/session-c3.scope", "user-1000.slice"),
            ("/user.slice/user-1000.slice/user@1000.service/init.scope", "user-1000/init.scope"),
            ("/user.slice/user-1000.slice/user@1000.service", "user@1000.service"),
            (
                "/user.slice/user-1000.slice/user@1000.service/session.slice/pipewire.service",
                "user-1000/pipewire.service",
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope",
                "user-1000/app-gnome-firefox-4242.scope",
            ),
            // The unit stays the workload when the service made cgroups of its own.
            ("/system.slice/containerd.service/sub", "containerd.service"),
        ];
        for (path, want) in cases {
            let id = parse(path).unwrap_or_else(|| panic!("{path}: no identity"));
            assert_eq!(
                (id.kind, id.workload.as_str()),
                (Kind::Unit, want),
                "{path}"
            );
        }
    }

    #[test]
    fn other_cgroups_root_and_kernel_threads() {
        let id = identify(Some("/process_api/c177"), "sh", false);
        assert_eq!((id.kind, id.workload.as_str()), (Kind::Cgroup, "c177"));
        assert_eq!(identify(Some("/"), "bash", false).workload, "bash");
        assert_eq!(identify(None, "bash", false).workload, "bash");
        assert_eq!(identify(Some("/"), "", false).workload, "unknown");
        let k = identify(Some("/"), "kworker/1:2-events", true);
        assert_eq!((k.kind, k.workload.as_str()), (Kind::Kernel, "kernel"));
        // A user process named like a kworker is not the kernel.
        assert_eq!(identify(Some("/"), "kworker/0:0", false).kind, Kind::Comm);
    }

    #[test]
    fn rejects_lookalikes() {
        // Not a UID, not hex: plain cgroups.
        assert_eq!(
            parse("/kubepods/burstable/podcast").unwrap().kind,
            Kind::Cgroup
        );
        assert_eq!(
            parse("/kubepods.slice/kubepods-podzzz.slice").unwrap().kind,
            Kind::Unit
        );
        assert_eq!(
            parse("/system.slice/docker-compose.scope").unwrap().kind,
            Kind::Unit
        );
        assert_eq!(parse("/docker/not-an-id").unwrap().kind, Kind::Cgroup);
        assert_eq!(parse(&format!("/x/{CID}")).unwrap().kind, Kind::Cgroup);
    }
}
