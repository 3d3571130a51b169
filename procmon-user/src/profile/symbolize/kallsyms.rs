//! Kernel function names from `/proc/kallsyms`, in a compact index: sorted addresses and
//! one string of all names. blazesym's kallsyms resolver boxes every name and keeps an enum
//! per symbol, ~8 MiB for this 6.18 kernel's 122,000 symbols; this is ~4.4 MiB (8 bytes of
//! address, 4 of name offset and the name itself per symbol). Only what a frame shows is
//! kept: the name of the nearest symbol at or below an address.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
};

#[derive(Default)]
pub(super) struct Kallsyms {
    /// Ascending.
    addrs: Vec<u64>,
    /// Where each name ends in `names` (it starts where the previous one ends).
    ends: Vec<u32>,
    names: String,
}

impl Kallsyms {
    pub(super) fn load() -> io::Result<Self> {
        Ok(Self::parse(BufReader::new(File::open("/proc/kallsyms")?)))
    }

    /// Parses kallsyms text: `ADDR TYPE NAME [\t[MODULE]]` a line. Lines with a zero address
    /// (addresses hidden by `kptr_restrict`) or that do not parse are skipped.
    pub(super) fn parse(text: impl BufRead) -> Self {
        let mut syms: Vec<(u64, u32, u32)> = Vec::new();
        let mut names = String::new();
        for line in text.lines() {
            let Ok(line) = line else { break };
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(_type), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || names.len() + name.len() > u32::MAX as usize {
                continue;
            }
            let start = names.len() as u32;
            names.push_str(name);
            syms.push((addr, start, names.len() as u32));
        }
        // Module symbols follow the core kernel's, at other addresses. Of names at one
        // address (`_stext` and `startup_64`), the first listed is kept.
        syms.sort_by_key(|&(addr, ..)| addr);
        syms.dedup_by_key(|&mut (addr, ..)| addr);
        // Names stay where they were written; the sorted order needs start and end each.
        let mut out = Kallsyms {
            addrs: Vec::with_capacity(syms.len()),
            ends: Vec::with_capacity(syms.len() * 2),
            names: String::new(),
        };
        for &(addr, start, end) in &syms {
            out.addrs.push(addr);
            out.ends.push(start);
            out.ends.push(end);
        }
        names.shrink_to_fit();
        out.names = names;
        out
    }

    /// The name of the symbol at or below `addr`, if any.
    pub(super) fn find(&self, addr: u64) -> Option<&str> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let (start, end) = (self.ends[2 * i] as usize, self.ends[2 * i + 1] as usize);
        self.names.get(start..end)
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nearest_symbol_below() {
        let text = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t helper
0000000000000000 T hidden
ffffffffc0002000 t mod_fn\t[some_mod]
ffffffffc0001000 t mod_first\t[some_mod]
garbage
";
        let k = Kallsyms::parse(text.as_bytes());
        assert_eq!(k.find(0xffffffff81000010), Some("_stext"));
        assert_eq!(k.find(0xffffffff81001000), Some("helper"));
        assert_eq!(k.find(0xffffffff81ffffff), Some("helper"));
        assert_eq!(k.find(0xffffffffc0001800), Some("mod_first"));
        assert_eq!(k.find(0xffffffffc0002001), Some("mod_fn"));
        assert_eq!(k.find(0x1000), None, "below every symbol");
        assert!(Kallsyms::parse("0000000000000000 T x\n".as_bytes()).is_empty());
    }
}
