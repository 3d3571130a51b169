//! Against real processes: this test binary, libc, a `sleep` child, the running kernel.

use std::{
    io::Write as _,
    process::{Child, Command},
    time::{Duration, Instant},
};

use super::*;

#[inline(never)]
fn procmon_probe_target(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(31) ^ 7
}

fn probe_addr() -> u64 {
    // Called once so the symbol is certainly emitted and not folded into a caller.
    assert_ne!(procmon_probe_target(1), 0);
    procmon_probe_target as *const () as u64
}

fn service(debug_syms: bool) -> SymbolizerHandle {
    SymbolizerHandle::spawn(SymbolizeOptions {
        debug_syms,
        ..SymbolizeOptions::default()
    })
}

fn own(user: Vec<u64>) -> Request {
    Request {
        pid: std::process::id(),
        user,
        kernel: vec![],
    }
}

fn symbolize_one(h: &SymbolizerHandle, pid: u32, addr: u64) -> String {
    let resp = h.symbolize_blocking(Request {
        pid,
        user: vec![addr],
        kernel: vec![],
    });
    assert_eq!(resp.user.len(), 1, "one frame per address");
    assert!(resp.kernel.is_empty());
    resp.user[0].to_string()
}

struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn `sleep 30`");
        // Until exec has mapped sleep's text, its maps are a copy of ours (/proc/PID/exe
        // changes earlier in exec than the new mappings appear).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{}/maps", child.id()))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("r-xp") && l.trim_end().ends_with("/sleep"))
        {
            assert!(Instant::now() < deadline, "sleep did not exec within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        Sleeper(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Start of its executable's first executable mapping, and that mapping's file offset.
    fn text(&self) -> (u64, u64) {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).expect("maps");
        let line = maps
            .lines()
            .find(|l| l.contains("r-xp") && l.trim_end().ends_with("/sleep"))
            .unwrap_or_else(|| panic!("no executable mapping of sleep in:\n{maps}"));
        let mut f = line.split_whitespace();
        let start = f.next().unwrap().split('-').next().unwrap();
        let off = f.nth(1).unwrap();
        (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(off, 16).unwrap(),
        )
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn own_function_resolves_to_its_name_without_hash() {
    for debug_syms in [false, true] {
        let h = service(debug_syms);
        let frame = symbolize_one(&h, std::process::id(), probe_addr());
        assert!(
            frame.ends_with("procmon_probe_target"),
            "debug_syms={debug_syms}: got {frame:?}"
        );
        assert!(!frame.contains("::h"), "hash left in {frame:?}");
    }
}

#[test]
fn only_return_addresses_are_moved_back_one_byte() {
    let h = service(false);
    let start = probe_addr();
    // As a leaf, the function's first byte is the function. As a return address, the same
    // value means "the call was the last instruction before it": the caller is whatever
    // precedes, never the function itself.
    let resp = h.symbolize_blocking(own(vec![start, start]));
    assert!(resp.user[0].ends_with("procmon_probe_target"), "{resp:?}");
    assert!(!resp.user[1].ends_with("procmon_probe_target"), "{resp:?}");
    assert!(!resp.user[1].is_empty());
}

#[test]
fn a_batch_keeps_each_stacks_own_leaf_and_matches_single_lookups() {
    let h = service(false);
    let start = probe_addr();
    let libc = libc::getpid as *const () as u64;
    // The same address is a leaf in the first stack and a return address in the second: the
    // batch must adjust it per stack, as two single requests would.
    let stacks = vec![own(vec![start, libc + 1]), own(vec![libc, start])];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let batch = runtime.block_on(h.symbolize_batch(stacks.clone()));
    let single: Vec<Response> = stacks
        .into_iter()
        .map(|r| h.symbolize_blocking(r))
        .collect();
    assert_eq!(batch.len(), 2);
    for (b, s) in batch.iter().zip(&single) {
        assert_eq!(b.user, s.user);
    }
    assert!(
        batch[0].user[0].ends_with("procmon_probe_target"),
        "{batch:?}"
    );
    assert!(
        !batch[1].user[1].ends_with("procmon_probe_target"),
        "{batch:?}"
    );
}

#[test]
fn libc_function_resolves() {
    let h = service(false);
    let addr = libc::getpid as *const () as u64;
    let frame = symbolize_one(&h, std::process::id(), addr);
    assert!(
        frame.contains("getpid"),
        "libc::getpid at {addr:#x} gave {frame:?}"
    );
}

#[test]
fn child_process_and_unmapped_and_exited_addresses() {
    let h = service(false);
    let mut sleeper = Sleeper::start();
    let pid = sleeper.pid();
    let (text, file_off) = sleeper.text();
    let addr = text + 0x40;

    // Debian's sleep is stripped: what resolves is a name from .dynsym or the module offset.
    let frame = symbolize_one(&h, pid, addr);
    let expected_fallback = format!("sleep+{:#x}", file_off + 0x40);
    assert!(
        frame == expected_fallback || !frame.starts_with('['),
        "address {addr:#x} in sleep's text gave {frame:?}"
    );
    println!("sleep text+0x40 -> {frame}");

    // Page 1 is below vm.mmap_min_addr: never mapped.
    assert_eq!(symbolize_one(&h, pid, 0x1000), "[unknown 0x1000]");

    sleeper.stop();
    h.forget(pid);
    let gone = symbolize_one(&h, pid, addr);
    assert_eq!(gone, format!("[unknown {addr:#x}]"), "after exit");
}

/// A file that is mapped but is no ELF: no symbols, so the module and file offset.
#[test]
fn mapped_file_without_symbols_gives_module_and_offset() {
    let path = std::env::temp_dir().join(format!("procmon-nonelf-{}.bin", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("create temp file");
    f.write_all(&[0xcc; 3 * 4096]).expect("write temp file");
    drop(f);
    let file = std::fs::File::open(&path).expect("reopen");
    let len = 3 * 4096;
    // SAFETY: a fresh private read-only mapping of a file we own; nothing else aliases it
    // and it is unmapped below before `file` goes away.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            4096,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );

    let h = service(true);
    let frame = symbolize_one(&h, std::process::id(), base as u64 + 0x234);

    // SAFETY: the mapping made above, with its length; no references into it remain.
    unsafe { libc::munmap(base, len) };
    let _ = std::fs::remove_file(&path);
    let name = path.file_name().unwrap().to_string_lossy();
    // The mapping starts at file offset 4096.
    assert_eq!(frame, format!("{name}+0x1234"));
}

#[test]
fn kernel_address_resolves_through_kallsyms() {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    let syms: Vec<(u64, &str, &str)> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            Some((addr, f.next()?, f.next()?))
        })
        .collect();
    if syms.iter().all(|&(a, _, _)| a == 0) {
        println!("skipped: /proc/kallsyms shows zero addresses (not root, or kptr_restrict)");
        return;
    }
    let unique = |addr: u64| syms.iter().filter(|&&(a, _, _)| a == addr).count() == 1;
    let (addr, name) = ["schedule", "do_exit", "vfs_read", "do_sys_poll"]
        .iter()
        .find_map(|want| {
            syms.iter()
                .find(|&&(a, t, n)| n == *want && matches!(t, "T" | "t") && unique(a))
                .map(|&(a, _, n)| (a, n))
        })
        .expect("none of schedule, do_exit, vfs_read, do_sys_poll in kallsyms");

    let h = service(false);
    let resp = h.symbolize_blocking(Request {
        pid: std::process::id(),
        user: vec![],
        // Leaf inside the function; then a return address just past its start.
        kernel: vec![addr + 4, addr + 1],
    });
    assert_eq!(&*resp.kernel[0], name, "{addr:#x}+4");
    assert_eq!(&*resp.kernel[1], name, "return address {addr:#x}+1");
}

struct PerfMapFile(std::path::PathBuf);

impl Drop for PerfMapFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn perf_map_names_jit_code() {
    let len = 2 * 4096;
    // SAFETY: a fresh anonymous private mapping; only its address is used, to stand for
    // JIT code, and it is unmapped at the end of the test.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let start = base as u64;

    let h = service(false);
    // Before the runtime writes its map, the region is anonymous and not cached...
    assert_eq!(
        symbolize_one(&h, std::process::id(), start + 0x10),
        format!("[unknown {:#x}]", start + 0x10)
    );

    let map = PerfMapFile(format!("/tmp/perf-{}.map", std::process::id()).into());
    std::fs::write(&map.0, format!("{start:x} {:x} hotLoop\n", 0x100)).expect("write perf map");
    // ...so the name shows once it is there.
    let frame = symbolize_one(&h, std::process::id(), start + 0x10);
    let outside = symbolize_one(&h, std::process::id(), start + 0x200);

    // SAFETY: the mapping made above, with its length; nothing points into it.
    unsafe { libc::munmap(base, len) };
    drop(map);
    assert_eq!(frame, "hotLoop");
    assert!(
        outside.starts_with("[unknown"),
        "outside the JIT range: {outside:?}"
    );
}

#[test]
fn second_lookup_is_served_from_the_cache() {
    let h = service(false);
    let addrs = vec![probe_addr() + 1, libc::getpid as *const () as u64 + 2];
    let first = h.symbolize_blocking(own(addrs.clone()));
    let after_first = h.stats();
    assert_eq!(after_first.resolved, 2);
    assert_eq!(after_first.cache_hits, 0);

    let second = h.symbolize_blocking(own(addrs));
    let after_second = h.stats();
    assert_eq!(first, second);
    assert_eq!(after_second.resolved, 2, "nothing re-resolved");
    assert_eq!(after_second.cache_hits, 2);
    assert_eq!(after_second.cached_frames, 2);
}

#[test]
fn equal_names_share_one_allocation() {
    let h = service(false);
    let f = probe_addr();
    // Two addresses (leaf f+1, return address f+3 → f+2) inside the same function.
    let resp = h.symbolize_blocking(own(vec![f + 1, f + 3]));
    assert_eq!(h.stats().resolved, 2, "two distinct lookups");
    assert!(resp.user[0].ends_with("procmon_probe_target"));
    assert!(Arc::ptr_eq(&resp.user[0], &resp.user[1]), "{resp:?}");
    assert_eq!(h.stats().interned_names, 1);
}

#[test]
fn forget_drops_a_pids_frames() {
    let h = service(false);
    let req = own(vec![probe_addr()]);
    h.symbolize_blocking(req.clone());
    assert_eq!(h.stats().cached_frames, 1);
    assert_eq!(h.stats().file_frames, 1);
    h.forget(std::process::id());
    h.symbolize_blocking(req.clone());
    // Forget is ordered before the second request on the channel.
    let s = h.stats();
    assert_eq!(
        s.cached_frames, 1,
        "the pid's frame dropped, then cached again: {s:?}"
    );
    assert_eq!(
        (s.resolved, s.cache_hits),
        (1, 1),
        "answered by file offset, not parsed again: {s:?}"
    );
}

#[test]
fn another_process_of_the_same_binary_is_answered_by_file_offset() {
    let h = service(false);
    let a = Sleeper::start();
    let b = Sleeper::start();
    let (text, _) = a.text();
    let (text_b, _) = b.text();
    let first = symbolize_one(&h, a.pid(), text + 0x40);
    let second = symbolize_one(&h, b.pid(), text_b + 0x40);
    assert_eq!(first, second);
    let s = h.stats();
    assert_eq!((s.resolved, s.cache_hits), (1, 1), "{s:?}");
}

#[test]
fn cache_cap_evicts_the_least_recently_used_process() {
    let h = SymbolizerHandle::spawn(SymbolizeOptions {
        max_cached_frames: 3,
        ..SymbolizeOptions::default()
    });
    let sleeper = Sleeper::start();
    let (text, _) = sleeper.text();
    let f = probe_addr();

    h.symbolize_blocking(own(vec![f, f + 2]));
    assert_eq!(h.stats().cached_frames, 2);
    h.symbolize_blocking(Request {
        pid: sleeper.pid(),
        user: vec![text + 0x10, text + 0x20],
        kernel: vec![],
    });
    let s = h.stats();
    assert_eq!(s.evicted, 1, "{s:?}");
    assert_eq!(
        s.cached_frames, 2,
        "only the sleeper's frames remain: {s:?}"
    );

    h.symbolize_blocking(own(vec![f]));
    let s = h.stats();
    assert_eq!(
        (s.cached_frames, s.resolved, s.cache_hits),
        (3, 4, 1),
        "our own process was evicted, so cached again, from the frames by file offset: {s:?}"
    );
}

#[test]
fn rebuilds_after_forgetting_enough_processes() {
    let h = SymbolizerHandle::spawn(SymbolizeOptions {
        rebuild_after_forgotten: 2,
        release_after_idle: None,
        ..SymbolizeOptions::default()
    });
    let f = probe_addr();
    // A new address each time: one the frames by file offset do not have.
    for i in 0..2 {
        h.symbolize_blocking(own(vec![f + i]));
        h.forget(std::process::id());
    }
    // Forgetting a pid never symbolized does not count.
    h.forget(1);
    let frame = symbolize_one(&h, std::process::id(), f + 2);
    assert!(
        frame.ends_with("procmon_probe_target"),
        "after a rebuild: {frame:?}"
    );
    assert_eq!(h.stats().rebuilds, 1);
}

#[test]
fn releases_elf_data_when_idle_and_keeps_answering() {
    let h = SymbolizerHandle::spawn(SymbolizeOptions {
        release_after_idle: Some(std::time::Duration::from_millis(10)),
        ..SymbolizeOptions::default()
    });
    let f = probe_addr();
    h.symbolize_blocking(own(vec![f]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while h.stats().rebuilds == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no release within 30 s of going idle"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A new address of the same binary is parsed again, from a fresh Symbolizer.
    let frame = symbolize_one(&h, std::process::id(), f + 1);
    assert!(
        frame.ends_with("procmon_probe_target"),
        "after a release: {frame:?}"
    );
}

/// A kernel address of kallsyms' text symbols, or None where addresses are hidden.
fn kernel_text_addr() -> Option<u64> {
    std::fs::read_to_string("/proc/kallsyms")
        .ok()?
        .lines()
        .find(|l| l.ends_with(" T schedule"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .filter(|&a| a != 0)
}

#[test]
fn kallsyms_index_is_released_when_idle_and_kernel_frames_stay_cached() {
    let Some(addr) = kernel_text_addr() else {
        println!("skipped: /proc/kallsyms shows zero addresses (not root, or kptr_restrict)");
        return;
    };
    let kernel = |h: &SymbolizerHandle, a: u64| {
        h.symbolize_blocking(Request {
            pid: std::process::id(),
            user: vec![],
            kernel: vec![a],
        })
        .kernel[0]
            .to_string()
    };
    // The default keeps it for 10 s: two lookups in a row read kallsyms once.
    let kept = service(false);
    let name = kernel(&kept, addr);
    assert!(
        !name.starts_with('['),
        "schedule at {addr:#x} gave {name:?}"
    );
    assert_eq!(kernel(&kept, addr + 1), name);
    assert_eq!(kept.stats().kallsyms_loads, 1);

    let h = SymbolizerHandle::spawn(SymbolizeOptions {
        kernel_release_after_idle: Some(Duration::from_millis(10)),
        ..SymbolizeOptions::default()
    });
    assert_eq!(kernel(&h, addr), name);
    std::thread::sleep(Duration::from_millis(200));
    // Cached: answered without the index.
    assert_eq!(kernel(&h, addr), name);
    assert_eq!(h.stats().kallsyms_loads, 1);
    // A new address after the release: read again.
    assert_eq!(kernel(&h, addr + 2), name);
    assert_eq!(h.stats().kallsyms_loads, 2);
}

#[tokio::test]
async fn async_symbolize_answers_from_a_task() {
    let h = service(false);
    let resp = h
        .symbolize(Request {
            pid: std::process::id(),
            user: vec![probe_addr(), 0x1000],
            kernel: vec![],
        })
        .await;
    assert!(resp.user[0].ends_with("procmon_probe_target"), "{resp:?}");
    // Not a leaf: looked up one byte back.
    assert_eq!(&*resp.user[1], "[unknown 0xfff]");
}

#[test]
fn rust_hash_suffix_is_stripped() {
    assert_eq!(strip_rust_hash("foo::bar::h0123456789abcdef"), "foo::bar");
    assert_eq!(strip_rust_hash("foo::bar"), "foo::bar");
    // Not 16 hex digits: not a hash.
    assert_eq!(
        strip_rust_hash("foo::h0123456789abcde"),
        "foo::h0123456789abcde"
    );
    assert_eq!(
        strip_rust_hash("foo::h0123456789abcdeg"),
        "foo::h0123456789abcdeg"
    );
    assert_eq!(strip_rust_hash("::h0123456789abcdef"), "");
    assert_eq!(strip_rust_hash("é"), "é");
}

/// Figures for the report, not a test: `cargo test -p procmon-user profile::symbolize::tests::measure
/// -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints figures"]
fn measure() {
    fn rss_kib() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("RssAnon:"), field("RssFile:"))
    }
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe_size = std::fs::metadata(&exe).unwrap().len();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let exe_str = exe.to_string_lossy().into_owned();
    let text = maps
        .lines()
        .find(|l| l.contains("r-xp") && l.ends_with(exe_str.as_str()))
        .unwrap();
    let range = text.split_whitespace().next().unwrap();
    let (s, e) = range.split_once('-').unwrap();
    let (s, e) = (
        u64::from_str_radix(s, 16).unwrap(),
        u64::from_str_radix(e, 16).unwrap(),
    );
    const N: u64 = 10_000;
    let addrs: Vec<u64> = (0..N).map(|i| s + (e - s) / N * i).collect();
    println!(
        "binary {} ({} MiB), text {} MiB, {N} addresses",
        exe_str,
        exe_size >> 20,
        (e - s) >> 20
    );
    for debug_syms in [false, true] {
        let before = rss_kib();
        let h = service(debug_syms);
        let t = Instant::now();
        // 127 a request, as a full stack map entry.
        for chunk in addrs.chunks(127) {
            h.symbolize_blocking(own(chunk.to_vec()));
        }
        let cold = t.elapsed();
        let t = Instant::now();
        for chunk in addrs.chunks(127) {
            h.symbolize_blocking(own(chunk.to_vec()));
        }
        let warm = t.elapsed();
        let after = rss_kib();
        let s = h.stats();
        println!(
            "debug_syms={debug_syms}: cold {:.1} ms ({:.1} µs/addr), warm {:.1} ms ({:.2} µs/addr), \
             RssAnon +{} KiB, RssFile +{} KiB, {} names for {} frames",
            cold.as_secs_f64() * 1e3,
            cold.as_secs_f64() * 1e6 / N as f64,
            warm.as_secs_f64() * 1e3,
            warm.as_secs_f64() * 1e6 / N as f64,
            after.0 as i64 - before.0 as i64,
            after.1 as i64 - before.1 as i64,
            s.interned_names,
            s.cached_frames,
        );
    }
    let h = service(false);
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    if let Some(addr) = kallsyms
        .lines()
        .find(|l| l.ends_with(" T schedule"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .filter(|&a| a != 0)
    {
        let t = Instant::now();
        let r = h.symbolize_blocking(Request {
            pid: 0,
            user: vec![],
            kernel: vec![addr],
        });
        println!(
            "kernel cold (kallsyms parse): {:.1} ms -> {}",
            t.elapsed().as_secs_f64() * 1e3,
            r.kernel[0]
        );
    }
}
