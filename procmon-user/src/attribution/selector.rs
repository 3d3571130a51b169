//! `--watch` selectors: which processes are watched.

use std::{fmt, str::FromStr};

use super::TrackedProcess;

/// Which processes are watched: their direct children are attributed individually.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    Comm(String),
    Exe(String),
    Cgroup(String),
}

/// Why a `--watch` selector was rejected; each message names the selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("watch selector `{0}` needs a kind: pid:N, comm:NAME, exe:PATH or cgroup:PATH")]
    NoKind(String),
    #[error("watch selector `{0}` has an empty value")]
    Empty(String),
    #[error("watch selector `{selector}`: `{value}` is not a pid")]
    BadPid { selector: String, value: String },
    #[error(
        "watch selector `{selector}`: unknown kind `{kind}` (expected pid, comm, exe or cgroup)"
    )]
    UnknownKind { selector: String, kind: String },
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| SelectorError::NoKind(s.to_string()))?;
        if value.is_empty() {
            return Err(SelectorError::Empty(s.to_string()));
        }
        match kind {
            "pid" => value
                .parse()
                .map(Selector::Pid)
                .map_err(|_| SelectorError::BadPid {
                    selector: s.to_string(),
                    value: value.to_string(),
                }),
            "comm" => Ok(Selector::Comm(value.to_string())),
            "exe" => Ok(Selector::Exe(value.to_string())),
            "cgroup" => Ok(Selector::Cgroup(value.trim_end_matches('/').to_string())),
            _ => Err(SelectorError::UnknownKind {
                selector: s.to_string(),
                kind: kind.to_string(),
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "pid:{p}"),
            Selector::Comm(c) => write!(f, "comm:{c}"),
            Selector::Exe(e) => write!(f, "exe:{e}"),
            Selector::Cgroup(c) => write!(f, "cgroup:{c}"),
        }
    }
}

impl Selector {
    /// Selectors on names and images are checked when a process execs (or is found at
    /// start), not at fork: a forked child still bears its parent's name.
    pub(super) fn matches_image(&self, p: &TrackedProcess) -> bool {
        match self {
            Selector::Comm(c) => p.comm.as_bytes() == c.as_bytes(),
            Selector::Exe(e) => p.exe.as_deref() == Some(e.as_str()),
            Selector::Pid(_) | Selector::Cgroup(_) => false,
        }
    }

    pub(super) fn matches_cgroup(&self, path: &str) -> bool {
        matches!(self, Selector::Cgroup(c) if path == c || path.strip_prefix(c.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }
}
