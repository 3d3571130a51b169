//! Kernel struct member offsets, resolved from the running kernel's BTF.
//!
//! Rust eBPF emits no CO-RE relocations, so the probes read `task_struct` and friends at
//! offsets handed to them at load time (docs/architecture.md, rule 3). Nested and anonymous members
//! (`se.sum_exec_runtime`, members inside anonymous unions) are found by walking member types.

use std::path::Path;

use btf_rs::{Btf, Struct, Type};
use procmon_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF not found at {0}: procmon needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.8+ distribution kernels have it)")]
    Missing(String),
    #[error("cannot parse kernel BTF at {path}: {source}")]
    Parse { path: String, source: btf_rs::Error },
    #[error(
        "kernel BTF has no `{0}`: this kernel is not supported (please report it with `uname -r`)"
    )]
    NotFound(String),
}

/// Resolves every offset the probes need.
pub fn resolve_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    if !path.exists() {
        return Err(BtfError::Missing(path.display().to_string()));
    }
    let btf = Btf::from_file(path).map_err(|source| BtfError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let r = Resolver { btf: &btf };
    let task = |m: &str| r.byte_offset("task_struct", m);
    let signal = |m: &str| r.byte_offset("signal_struct", m);
    let (mm_rss_stat, mm_rss_stride) = r.rss_stat()?;
    Ok(KernelOffsets {
        task_pid: task("pid")?,
        task_tgid: task("tgid")?,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_comm: task("comm")?,
        task_start_boottime: task("start_boottime")?,
        task_exit_code: task("exit_code")?,
        task_signal: task("signal")?,
        task_utime: task("utime")?,
        task_stime: task("stime")?,
        task_sum_exec_runtime: task("se.sum_exec_runtime")?,
        task_mm: task("mm")?,
        mm_hiwater_rss: r.byte_offset("mm_struct", "hiwater_rss")?,
        mm_rss_stat,
        mm_rss_stride,
        signal_utime: signal("utime")?,
        signal_stime: signal("stime")?,
        signal_sum_sched_runtime: signal("sum_sched_runtime")?,
        signal_maxrss: signal("maxrss")?,
        signal_live: signal("live")?,
        signal_subreaper_bit: r.bit_offset("signal_struct", "is_child_subreaper")?,
        binprm_filename: r.byte_offset("linux_binprm", "filename")?,
        exit_has_group_dead: (r.tracepoint_arity("sched_process_exit")? >= 2) as u32,
        task_cgroups: task("cgroups")?,
        css_set_subsys: r.byte_offset("css_set", "subsys")?,
        // Without CONFIG_MEMCG there is no memory hierarchy: paths are left empty.
        memory_cgrp_id: r
            .enum_value("cgroup_subsys_id", "memory_cgrp_id")
            .unwrap_or(u32::MAX),
        css_cgroup: r.byte_offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: r.byte_offset("cgroup", "kn")?,
        kernfs_name: r.byte_offset("kernfs_node", "name")?,
        // Renamed in Linux 6.15 (it became RCU-protected).
        kernfs_parent: r
            .byte_offset("kernfs_node", "__parent")
            .or_else(|_| r.byte_offset("kernfs_node", "parent"))?,
        memcg_css: r.byte_offset("mem_cgroup", "css").unwrap_or(0),
        mm_total_vm: r.byte_offset("mm_struct", "total_vm")?,
        mm_pgtables_bytes: r.byte_offset("mm_struct", "pgtables_bytes")?,
        signal_oom_score_adj: signal("oom_score_adj")?,
        oom_control_memcg: r.byte_offset("oom_control", "memcg")?,
        oom_control_constraint: r.byte_offset("oom_control", "constraint")?,
        mark_victim_has_task: (r.tracepoint_arity("mark_victim")? >= 2) as u32,
        css_parent: r.byte_offset("cgroup_subsys_state", "parent")?,
        memcg_memory: r.byte_offset("mem_cgroup", "memory").unwrap_or(0),
        page_counter_usage: r.byte_offset("page_counter", "usage").unwrap_or(0),
        page_counter_max: r.byte_offset("page_counter", "max").unwrap_or(0),
        oom_control_chosen: r.byte_offset("oom_control", "chosen")?,
        task_real_cred: task("real_cred")?,
        cred_uid: r.byte_offset("cred", "uid")?,
    })
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    fn byte_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        Ok(self.bit_offset(strukt, path)? / 8)
    }

    /// Bit offset of a dotted member path (`se.sum_exec_runtime`) inside `struct strukt`.
    fn bit_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let not_found = || BtfError::NotFound(format!("{strukt}.{path}"));
        let mut current = self.named_struct(strukt).ok_or_else(not_found)?;
        let mut total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (offset, member_type) = self.find_member(&current, part).ok_or_else(not_found)?;
            total += offset;
            if parts.peek().is_some() {
                current = self.as_struct(member_type).ok_or_else(not_found)?;
            }
        }
        Ok(total)
    }

    /// Where the value of `mm_struct.rss_stat[0]` is and how far apart the entries are:
    /// `struct percpu_counter rss_stat[]` (its `count`) since Linux 6.2,
    /// `struct mm_rss_stat { atomic_long_t count[]; }` before.
    fn rss_stat(&self) -> Result<(u32, u32), BtfError> {
        let not_found = || BtfError::NotFound("mm_struct.rss_stat".into());
        let mm = self.named_struct("mm_struct").ok_or_else(not_found)?;
        let (base, rss_type) = self.find_member(&mm, "rss_stat").ok_or_else(not_found)?;
        match rss_type {
            Type::Array(array) => {
                let element = self
                    .btf
                    .resolve_chained_type(&array)
                    .map_err(|_| not_found())?;
                let counter = self.as_struct(element).ok_or_else(not_found)?;
                let (count, _) = self.find_member(&counter, "count").ok_or_else(not_found)?;
                Ok(((base + count) / 8, counter.size() as u32))
            }
            other => {
                let stat = self.as_struct(other).ok_or_else(not_found)?;
                let (count, _) = self.find_member(&stat, "count").ok_or_else(not_found)?;
                Ok(((base + count) / 8, 8))
            }
        }
    }

    /// Number of arguments of a tracepoint as BTF-enabled programs see it
    /// (`btf_trace_<name>` is a pointer to a prototype whose first parameter is `void *`).
    fn tracepoint_arity(&self, name: &str) -> Result<usize, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let not_found = || BtfError::NotFound(typedef.clone());
        let types = self
            .btf
            .resolve_types_by_name(&typedef)
            .map_err(|_| not_found())?;
        for t in types {
            let mut t = t;
            for _ in 0..4 {
                match t {
                    Type::FuncProto(proto) => return Ok(proto.parameters.len().saturating_sub(1)),
                    other => match other.as_btf_type() {
                        Some(inner) => {
                            t = self
                                .btf
                                .resolve_chained_type(inner)
                                .map_err(|_| not_found())?
                        }
                        None => break,
                    },
                }
            }
        }
        Err(not_found())
    }

    /// The value of enumerator `name` of `enum enum_name`.
    fn enum_value(&self, enum_name: &str, name: &str) -> Option<u32> {
        self.btf
            .resolve_types_by_name(enum_name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .find(|m| self.btf.resolve_name(*m).ok().as_deref() == Some(name))
                    .map(|m| m.val()),
                _ => None,
            })
    }

    fn named_struct(&self, name: &str) -> Option<Struct> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
    }

    /// Follows typedefs and qualifiers down to a struct or union.
    fn as_struct(&self, mut t: Type) -> Option<Struct> {
        for _ in 0..8 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    t = self.btf.resolve_chained_type(t.as_btf_type()?).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Finds `name` among the members of `s`, descending into anonymous structs and unions.
    /// Returns the member's bit offset relative to `s` and its type.
    fn find_member(&self, s: &Struct, name: &str) -> Option<(u32, Type)> {
        for member in &s.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_type = self.btf.resolve_chained_type(member).ok()?;
            if member_name == name {
                return Some((member.bit_offset(), member_type));
            }
            if member_name.is_empty() {
                if let Some(inner) = self.as_struct(member_type) {
                    if let Some((offset, t)) = self.find_member(&inner, name) {
                        return Some((member.bit_offset() + offset, t));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the build machine's own BTF: no privileges needed, but skipped where the kernel
    /// has none (it is not a kernel-matrix test).
    #[test]
    fn resolves_this_kernels_offsets() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} not present on this machine");
            return;
        }
        let o = resolve_offsets(path).expect("offsets resolve on the running kernel");
        assert_eq!(
            o.task_tgid,
            o.task_pid + 4,
            "tgid follows pid in task_struct"
        );
        assert!(o.task_sum_exec_runtime > 0 && o.signal_maxrss > 0 && o.binprm_filename > 0);
        assert!(o.signal_subreaper_bit > o.signal_live * 8);
        assert!(
            o.mm_rss_stat > o.mm_hiwater_rss,
            "rss_stat follows hiwater_rss in mm_struct"
        );
        assert!(
            o.mm_rss_stride == 8 || o.mm_rss_stride >= 24,
            "stride {}",
            o.mm_rss_stride
        );
        assert!(o.memory_cgrp_id < 32, "memory_cgrp_id {}", o.memory_cgrp_id);
        assert!(o.mm_total_vm > 0 && o.mm_pgtables_bytes > 0 && o.kernfs_name > 0);
        assert!(
            o.oom_control_constraint > o.oom_control_memcg,
            "constraint follows memcg in oom_control"
        );
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = resolve_offsets(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
