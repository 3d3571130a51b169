//! Process names as the kernel keeps them.

use std::fmt;

use procmon_common::COMM_LEN;

/// A kernel `comm`: up to 15 bytes, NUL-padded, not necessarily UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut c = [0u8; COMM_LEN];
        let n = bytes.len().min(COMM_LEN - 1);
        c[..n].copy_from_slice(&bytes[..n]);
        Comm(c)
    }

    pub fn from_raw(raw: [u8; COMM_LEN]) -> Self {
        Self::from_bytes(c_str(&raw))
    }

    /// The NUL-padded bytes, as a record carries them.
    pub fn raw(self) -> [u8; COMM_LEN] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        c_str(&self.0)
    }

    /// For labels and JSON: invalid UTF-8 becomes U+FFFD.
    pub fn to_lossy(self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_lossy())
    }
}

/// The bytes of a kernel C string up to its first NUL.
pub fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}
