//! The security context the DaemonSet declares, read from what `kubectl kustomize
//! deploy/kubernetes` renders, and turned into the podman flags that reproduce it: the
//! container tests run the agent under exactly what the manifest says, so the two cannot
//! drift apart.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::run_with_timeout;

/// What the DaemonSet's pod and its (one) container declare.
#[derive(Debug, Clone)]
pub struct Declared {
    pub host_pid: bool,
    pub privileged: bool,
    pub read_only_root: bool,
    pub allow_privilege_escalation: bool,
    pub run_as_user: Option<u64>,
    /// `CAP_` names, as the kernel and podman spell them.
    pub drop: Vec<String>,
    pub add: Vec<String>,
    /// `seccompProfile.type`: `Unconfined`, `RuntimeDefault`, or None (the runtime's default).
    pub seccomp: Option<String>,
    /// (host path, container path, read-only) of each hostPath volume mount.
    pub host_mounts: Vec<(String, String, bool)>,
    pub args: Vec<String>,
}

/// Renders deploy/kubernetes with kubectl and reads the DaemonSet from it. YAML is read by
/// Python's yaml module (Debian python3-yaml): kubectl 1.20 cannot print JSON offline.
pub fn render(workspace: &Path) -> Declared {
    let rendered = run_with_timeout(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(workspace.join("deploy/kubernetes")),
        Duration::from_secs(60),
    );
    assert!(
        rendered.status.success(),
        "kubectl kustomize deploy/kubernetes failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let dir = crate::TempDir::new("manifest");
    let yaml = dir.path().join("rendered.yaml");
    std::fs::write(&yaml, &rendered.stdout).expect("writing the rendered manifest");
    let json = run_with_timeout(
        Command::new("python3").args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ]).arg(&yaml),
        Duration::from_secs(30),
    );
    assert!(
        json.status.success(),
        "python3 could not read the rendered YAML (install python3-yaml): {}",
        String::from_utf8_lossy(&json.stderr)
    );
    let objects: Vec<Value> = serde_json::from_slice(&json.stdout).expect("JSON from python3");
    let ds = objects
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/kubernetes");
    from_daemonset(ds)
}

pub fn from_daemonset(ds: &Value) -> Declared {
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container in the DaemonSet");
    let c = &containers[0];
    let sc = &c["securityContext"];
    let caps = |key: &str| -> Vec<String> {
        sc["capabilities"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| {
                        let name = v.as_str().expect("capability name").to_uppercase();
                        if name.starts_with("CAP_") || name == "ALL" {
                            name
                        } else {
                            format!("CAP_{name}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let host_mounts = c["volumeMounts"]
        .as_array()
        .map(|mounts| {
            mounts
                .iter()
                .map(|m| {
                    let name = m["name"].as_str().expect("volumeMount name");
                    let volume = volumes
                        .iter()
                        .find(|v| v["name"] == name)
                        .unwrap_or_else(|| panic!("no volume {name}"));
                    let host = volume["hostPath"]["path"]
                        .as_str()
                        .unwrap_or_else(|| panic!("volume {name} is not a hostPath"));
                    (
                        host.to_string(),
                        m["mountPath"].as_str().expect("mountPath").to_string(),
                        m["readOnly"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Declared {
        host_pid: pod["hostPID"].as_bool().unwrap_or(false),
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        allow_privilege_escalation: sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true),
        run_as_user: sc["runAsUser"].as_u64(),
        drop: caps("drop"),
        add: caps("add"),
        seccomp: sc["seccompProfile"]["type"].as_str().map(str::to_string),
        host_mounts,
        args: c["args"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
    }
}

impl Declared {
    /// `podman run` flags for this security context, with capabilities `add` (normally
    /// [`Declared::add`]; the tests drop one at a time).
    pub fn podman_flags(&self, add: &[String]) -> Vec<String> {
        assert!(!self.privileged, "the DaemonSet must not be privileged");
        // Kubelet's runtimes give every pod a private cgroup namespace on cgroup v2 nodes
        // (a pod cannot ask for the host's); the agent must resolve others' cgroups from
        // there, so the tests always run it that way.
        let mut flags = vec!["--cgroupns=private".to_string()];
        if self.host_pid {
            flags.push("--pid=host".to_string());
        }
        if self.read_only_root {
            flags.push("--read-only".to_string());
        }
        if !self.allow_privilege_escalation {
            flags.push("--security-opt=no-new-privileges".to_string());
        }
        if let Some(uid) = self.run_as_user {
            flags.push(format!("--user={uid}"));
        }
        for cap in &self.drop {
            flags.push(format!("--cap-drop={cap}"));
        }
        for cap in add {
            flags.push(format!("--cap-add={cap}"));
        }
        match self.seccomp.as_deref() {
            Some("Unconfined") => flags.push("--security-opt=seccomp=unconfined".to_string()),
            // podman's default profile is the RuntimeDefault of containerd and CRI-O.
            Some("RuntimeDefault") | None => {}
            Some(other) => panic!("seccompProfile {other}: no podman equivalent in the tests"),
        }
        for (host, path, ro) in &self.host_mounts {
            flags.push(format!(
                "--volume={host}:{path}{}",
                if *ro { ":ro" } else { "" }
            ));
        }
        flags
    }
}
