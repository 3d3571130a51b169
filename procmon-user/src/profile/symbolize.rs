//! The symbolizer service: raw stack addresses in, function names out.
//!
//! blazesym's `Symbolizer` is not `Send` (it caches parsed ELF/DWARF behind `Rc`/`RefCell`),
//! so it lives on a thread of its own, `procmon-symbolize`; the agent's tasks talk to it
//! through a [`SymbolizerHandle`] (a channel, answered on a oneshot).
//!
//! ## What a frame says
//! 1. The function's (demangled) name, without Rust's `::h0123…` hash suffix.
//! 2. Else `module+0xOFFSET`, when the address is in a file mapping whose symbols do not cover
//!    it (a stripped binary, a non-ELF file): module is the file's basename and the offset a
//!    file offset, which `addr2line -e FILE` or a later symbol lookup can still use.
//! 3. Else `[unknown 0xADDR]`: nothing maps the address (the process exec'd or exited,
//!    or anonymous memory, such as a JIT's code, without a perf map entry).
//!
//! ## Return addresses
//! Stacks from `bpf_get_stackid` list the leaf first: the sampled instruction pointer, then
//! return addresses. A return address points after the `call`, and when the call is a
//! function's last instruction (a call to a `noreturn` function) the byte after it belongs
//! to the next function. blazesym takes addresses as given and leaves that adjustment to the
//! caller (its `backtrace` example subtracts 1 from all but the top frame), so we do the same:
//! every entry but the first, user and kernel alike, is looked up at `addr - 1`, which is
//! inside the call instruction. The leaf is exact and is not adjusted. (A user leaf under a
//! kernel stack is the syscall's resume address; it is left alone, since faulting
//! instructions restart at their own address there and adjusting would misplace those.)
//! Hex and `module+0x` fallbacks show the address that was looked up.
//!
//! ## Memory, for an agent that runs for weeks
//! - Frames are cached per process (address → frame) and per kernel, under one cap on the
//!   total number of entries; past it, whole least-recently-used processes are evicted
//!   (counted). [`SymbolizerHandle::forget`] drops a process' entries at exec and exit.
//! - Frames in file mappings are also cached by file and file offset (files.rs), under a
//!   cap of their own: a process's miss is first looked up there (one read of its maps), so
//!   a new process of a known binary (a forked child, any user of libc) costs no parsing.
//! - Equal names share one `Arc<str>` (interned), pruned once nothing else holds them.
//! - blazesym keeps every ELF file it parsed for as long as the `Symbolizer` lives, keyed by
//!   `/proc/PID/map_files/…` paths that it cannot evict by process: the files stay mapped
//!   (their symbol tables resident: 30 MiB of RSS on a host running compilers, libLLVM's
//!   alone 10) and their parsed symbol indices stay on the heap (~15 MiB). So user stacks go
//!   through a `Symbolizer` that is dropped [`RELEASE_AFTER_IDLE`] after its last lookup
//!   (after each drain of the agent's samples that had to parse anything), and after a
//!   number of symbolized processes have been forgotten. The frame caches survive that, so
//!   only new addresses pay for re-parsing. Kernel stacks are looked up in our own compact
//!   kallsyms index (kallsyms.rs, ~4.4 MiB; blazesym's took ~8), dropped
//!   [`KERNEL_RELEASE_AFTER_IDLE`] after its last lookup. After either is dropped, glibc is
//!   asked to return the freed pages (`malloc_trim`).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    panic::{self, AssertUnwindSafe},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use blazesym::{
    normalize::{NormalizeOpts, Normalizer, Reason as NormReason, UserMeta},
    symbolize::{
        evict::{Evict, Process as EvictProcess},
        source::{Process, Source},
        Input, Symbolized, Symbolizer,
    },
};
use tokio::sync::oneshot;

/// How long without lookups before a `Symbolizer` lets go of the ELF files and kallsyms
/// it holds: the agent's drains come once a second, each a burst of per-process batches,
/// so this releases them after every drain that had to parse anything. NB: no floor. One
/// (10 s) was needed while frames were cached only by process: a watched parent forking 300
/// children a second (each sampled child symbolized again in the parent's 40 MiB binary)
/// then cost the agent 6% of a core instead of 2%. Cached by file offset, a new child's
/// frames are found without parsing.
const RELEASE_AFTER_IDLE: Duration = Duration::from_millis(200);
/// How long without a kernel lookup (a kernel address the frame cache did not have) before
/// the kallsyms index (~4.4 MiB) is let go. Reading /proc/kallsyms costs ~70 ms of CPU, most
/// of it the kernel formatting the text; under a fork storm new kernel addresses come in
/// every drain, and releasing after each cost the agent 6% of a core. Kept while misses
/// keep coming, released once they stop: at worst one parse per this long (< 1% of a core).
const KERNEL_RELEASE_AFTER_IDLE: Duration = Duration::from_secs(10);

use self::{
    cache::{FrameCache, Space},
    kallsyms::Kallsyms,
};

/// One symbolized stack entry; see the module doc for its three forms. Never empty.
pub type Frame = Arc<str>;

#[derive(Clone, Debug)]
pub struct SymbolizeOptions {
    /// Consult DWARF (and `.build-id` / debug-link files) besides the ELF symbol tables.
    /// DWARF costs memory (parsed units stay cached), so the always-on agent leaves it off
    /// and `procmon profile` turns it on.
    pub debug_syms: bool,
    /// Cap on cached frames across all processes and the kernel.
    pub max_cached_frames: usize,
    /// Cap on cached frames by file offset, across all files.
    pub max_cached_file_frames: usize,
    /// Build a fresh blazesym `Symbolizer` once this many processes that it symbolized have
    /// been forgotten, releasing the ELF data it keeps for them (see the module doc).
    pub rebuild_after_forgotten: usize,
    /// Drop the user-space `Symbolizer` after this long without a lookup through it (None:
    /// never).
    pub release_after_idle: Option<Duration>,
    /// The same for the kernel index (kallsyms).
    pub kernel_release_after_idle: Option<Duration>,
}

impl Default for SymbolizeOptions {
    fn default() -> Self {
        Self {
            debug_syms: false,
            // ~100 bytes an entry with its share of the names: ~10 MiB at worst.
            max_cached_frames: 100_000,
            max_cached_file_frames: 50_000,
            rebuild_after_forgotten: 256,
            release_after_idle: Some(RELEASE_AFTER_IDLE),
            kernel_release_after_idle: Some(KERNEL_RELEASE_AFTER_IDLE),
        }
    }
}

/// Addresses to symbolize, leaf first (the order of `bpf_get_stackid`'s stack map): the
/// first entry of each list is an instruction pointer, the others return addresses.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub pid: u32,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
}

/// One frame per requested address, in the request's order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    pub user: Vec<Frame>,
    pub kernel: Vec<Frame>,
}

/// Counters since the service started, readable without a round trip to its thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizeStats {
    /// Addresses answered from the frame cache (by process or by file offset).
    pub cache_hits: u64,
    /// Addresses looked up through blazesym (cache misses).
    pub resolved: u64,
    /// Frames in the cache now, by process and kernel address.
    pub cached_frames: u64,
    /// Frames in the cache now, by file offset.
    pub file_frames: u64,
    /// Distinct names interned now.
    pub interned_names: u64,
    /// Processes (or the kernel) whose entries were evicted to stay under the cap.
    pub evicted: u64,
    /// Fresh blazesym `Symbolizer`s built to release ELF data of forgotten processes.
    pub rebuilds: u64,
    /// Requests that panicked inside blazesym and were answered with hex frames.
    pub panics: u64,
    /// Reads of /proc/kallsyms (the first kernel lookup, and each after a release).
    pub kallsyms_loads: u64,
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    resolved: AtomicU64,
    cached_frames: AtomicU64,
    file_frames: AtomicU64,
    interned_names: AtomicU64,
    evicted: AtomicU64,
    rebuilds: AtomicU64,
    panics: AtomicU64,
    kallsyms_loads: AtomicU64,
}

enum Msg {
    /// Stacks of one process, looked up together: one read of its maps for all of them.
    Batch(Vec<Request>, oneshot::Sender<Vec<Response>>),
    Forget(u32),
}

/// A cheap, cloneable handle to the symbolizer thread. The thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct SymbolizerHandle {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

// The agent shares one handle between tasks and threads.
const _: () = {
    const fn shareable<T: Clone + Send + Sync>() {}
    shareable::<SymbolizerHandle>();
};

impl SymbolizerHandle {
    pub fn spawn(opts: SymbolizeOptions) -> SymbolizerHandle {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let spawned = thread::Builder::new()
            .name("procmon-symbolize".into())
            .spawn(move || Service::new(opts, thread_counters).run(rx));
        if let Err(e) = spawned {
            // The receiver is gone with the closure, so every request gets hex frames:
            // profiles lose names but the agent keeps running.
            log::warn!("cannot start the symbolizer thread ({e}); stacks will show raw addresses");
        }
        SymbolizerHandle { tx, counters }
    }

    /// Symbolizes on the calling thread's time. Not from inside an async task (tokio's
    /// `blocking_recv` panics there): use [`Self::symbolize`].
    #[cfg(test)]
    pub fn symbolize_blocking(&self, req: Request) -> Response {
        let lens = (req.user.len(), req.kernel.len());
        let (tx, rx) = oneshot::channel();
        match self.tx.send(Msg::Batch(vec![req], tx)) {
            Ok(()) => rx
                .blocking_recv()
                .ok()
                .and_then(|mut r| r.pop())
                .unwrap_or_else(|| vanished(lens)),
            Err(mpsc::SendError(Msg::Batch(mut reqs, _))) => hex_response(&reqs.remove(0)),
            Err(mpsc::SendError(_)) => unreachable!("sent a Batch"),
        }
    }

    /// One stack: a batch of one.
    #[cfg(test)]
    pub async fn symbolize(&self, req: Request) -> Response {
        let lens = (req.user.len(), req.kernel.len());
        self.symbolize_batch(vec![req])
            .await
            .pop()
            .unwrap_or_else(|| vanished(lens))
    }

    /// Symbolizes several stacks of one process (every request's `pid` is the same) in one
    /// lookup. Per stack, blazesym would read the process's maps again: that read was most
    /// of the agent's sampling cost.
    pub async fn symbolize_batch(&self, reqs: Vec<Request>) -> Vec<Response> {
        debug_assert!(reqs.windows(2).all(|w| w[0].pid == w[1].pid));
        let lens: Vec<(usize, usize)> = reqs
            .iter()
            .map(|r| (r.user.len(), r.kernel.len()))
            .collect();
        let (tx, rx) = oneshot::channel();
        match self.tx.send(Msg::Batch(reqs, tx)) {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| lens.into_iter().map(vanished).collect()),
            Err(mpsc::SendError(Msg::Batch(reqs, _))) => reqs.iter().map(hex_response).collect(),
            Err(mpsc::SendError(_)) => unreachable!("sent a Batch"),
        }
    }

    /// Drops what is cached for `pid`; call it when the pid execs or exits, since its
    /// addresses then mean something else or nothing.
    pub fn forget(&self, pid: u32) {
        let _ = self.tx.send(Msg::Forget(pid));
    }

    pub fn stats(&self) -> SymbolizeStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SymbolizeStats {
            cache_hits: get(&c.cache_hits),
            resolved: get(&c.resolved),
            cached_frames: get(&c.cached_frames),
            file_frames: get(&c.file_frames),
            interned_names: get(&c.interned_names),
            evicted: get(&c.evicted),
            rebuilds: get(&c.rebuilds),
            panics: get(&c.panics),
            kallsyms_loads: get(&c.kallsyms_loads),
        }
    }
}

/// The thread is gone mid-request (it cannot panic past its `catch_unwind`, so this is a
/// process being torn down): keep the response's shape.
fn vanished((user, kernel): (usize, usize)) -> Response {
    let unknown: Frame = Arc::from("[unknown]");
    Response {
        user: vec![Arc::clone(&unknown); user],
        kernel: vec![unknown; kernel],
    }
}

fn hex_response(req: &Request) -> Response {
    let hex = |addrs: &[u64]| {
        adjusted(addrs)
            .map(|a| Arc::from(unknown_frame(a)))
            .collect()
    };
    Response {
        user: hex(&req.user),
        kernel: hex(&req.kernel),
    }
}

/// The address each entry is looked up at: see "Return addresses" in the module doc.
fn adjusted(addrs: &[u64]) -> impl Iterator<Item = u64> + '_ {
    addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
}

fn unknown_frame(addr: u64) -> String {
    format!("[unknown {addr:#x}]")
}

/// Drops a trailing Rust legacy-mangling hash (`::h` and 16 hex digits). blazesym's
/// demangler already does for ELF names; DWARF and perf-map names can still carry one.
pub fn strip_rust_hash(name: &str) -> &str {
    const HASH_LEN: usize = 16;
    let Some(idx) = name.len().checked_sub(HASH_LEN + 3) else {
        return name;
    };
    match name.get(idx..) {
        Some(tail)
            if tail.starts_with("::h") && tail[3..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            &name[..idx]
        }
        _ => name,
    }
}

/// Where a looked-up address ended up, before it is turned into a frame.
enum Resolved {
    Name(String),
    /// In a file mapping, at this file offset, without a symbol.
    Module(String, u64),
    /// In anonymous memory: a perf map entry may still appear, so it is not cached.
    Anonymous,
    Unknown,
}

struct Service {
    opts: SymbolizeOptions,
    counters: Arc<Counters>,
    /// User stacks; released when idle (see the module doc).
    symbolizer: Symbolizer,
    /// When `symbolizer` was last used, if it may hold anything since it was built.
    user_used: Option<Instant>,
    /// Kernel stacks (kallsyms), loaded at the first kernel address the frame cache does not
    /// have and released when idle.
    kallsyms: Option<Kallsyms>,
    kernel_used: Option<Instant>,
    normalizer: Normalizer,
    cache: FrameCache,
    /// Frames by file offset, shared by every process mapping the file.
    files: FrameCache,
    /// Processes looked up through the current `symbolizer`.
    touched: HashSet<u32>,
    forgotten_since_build: usize,
    map_files: bool,
}

impl Service {
    fn new(opts: SymbolizeOptions, counters: Arc<Counters>) -> Self {
        Self {
            symbolizer: build_symbolizer(),
            user_used: None,
            kallsyms: None,
            kernel_used: None,
            // Build IDs are for shipping offsets elsewhere; we only need the file's name.
            normalizer: Normalizer::builder().enable_build_ids(false).build(),
            cache: FrameCache::new(opts.max_cached_frames),
            files: FrameCache::new(opts.max_cached_file_frames),
            touched: HashSet::new(),
            forgotten_since_build: 0,
            map_files: map_files_usable(),
            opts,
            counters,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let received = match self.release_due() {
                Some(after) => rx.recv_timeout(after),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let msg = match received {
                Ok(msg) => msg,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.release_idle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            match msg {
                Msg::Batch(reqs, reply) => {
                    let resp =
                        match panic::catch_unwind(AssertUnwindSafe(|| self.handle_batch(&reqs))) {
                            Ok(resp) => resp,
                            Err(_) => {
                                self.counters.panics.fetch_add(1, Ordering::Relaxed);
                                let pid = reqs.first().map_or(0, |r| r.pid);
                                log::warn!("symbolizer panicked on pid {pid}; rebuilding it");
                                self.rebuild();
                                self.rebuild_kernel();
                                reqs.iter().map(hex_response).collect()
                            }
                        };
                    self.publish_sizes();
                    let _ = reply.send(resp);
                }
                Msg::Forget(pid) => {
                    self.forget(pid);
                    self.publish_sizes();
                }
            }
            // A stream of requests (forgets at every exit) must not hold the release off.
            self.release_idle();
        }
    }

    /// Every stack's addresses adjusted on its own (its leaf is exact), then looked up
    /// together, then split back.
    fn handle_batch(&mut self, reqs: &[Request]) -> Vec<Response> {
        let Some(pid) = reqs.first().map(|r| r.pid) else {
            return Vec::new();
        };
        let user = self.frames(
            Space::Process(pid),
            reqs.iter().flat_map(|r| adjusted(&r.user)).collect(),
        );
        let kernel = self.frames(
            Space::Kernel,
            reqs.iter().flat_map(|r| adjusted(&r.kernel)).collect(),
        );
        self.after_request();
        let (mut user, mut kernel) = (user.into_iter(), kernel.into_iter());
        reqs.iter()
            .map(|r| Response {
                user: user.by_ref().take(r.user.len()).collect(),
                kernel: kernel.by_ref().take(r.kernel.len()).collect(),
            })
            .collect()
    }

    fn after_request(&mut self) {
        let evicted = self.cache.enforce_cap() + self.files.enforce_cap();
        self.counters.evicted.fetch_add(evicted, Ordering::Relaxed);
        self.cache.maybe_prune_names();
    }

    /// `lookups` are the addresses to look up, already adjusted (see [`adjusted`]).
    fn frames(&mut self, space: Space, lookups: Vec<u64>) -> Vec<Frame> {
        if lookups.is_empty() {
            return Vec::new();
        }
        self.cache.touch(space);
        let mut out: Vec<Option<Frame>> = Vec::with_capacity(lookups.len());
        let mut misses: Vec<u64> = Vec::new();
        for &addr in &lookups {
            let hit = self.cache.get(space, addr);
            if hit.is_none() && !misses.contains(&addr) {
                misses.push(addr);
            }
            out.push(hit);
        }
        let mut hits = out.iter().filter(|f| f.is_some()).count() as u64;
        if misses.is_empty() {
            self.counters.cache_hits.fetch_add(hits, Ordering::Relaxed);
            return out.into_iter().flatten().collect();
        }
        let mut fresh: HashMap<u64, Frame> = HashMap::with_capacity(misses.len());
        // A process's misses may be file offsets another process's lookups cached.
        let mut located = match space {
            Space::Process(pid) => files::locate(pid, &misses, self.map_files),
            _ => vec![None; misses.len()],
        };
        if located.iter().any(Option::is_some) {
            let mut left = Vec::with_capacity(misses.len());
            let mut left_located = Vec::with_capacity(misses.len());
            for (&addr, loc) in misses.iter().zip(located) {
                let hit = loc.and_then(|(id, off)| {
                    self.files.touch(Space::File(id));
                    self.files.get(Space::File(id), off)
                });
                match hit {
                    Some(frame) => {
                        self.cache.insert(space, addr, Arc::clone(&frame));
                        fresh.insert(addr, frame);
                    }
                    None => {
                        left.push(addr);
                        left_located.push(loc);
                    }
                }
            }
            hits += (misses.len() - left.len()) as u64;
            misses = left;
            located = left_located;
        }
        self.counters.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.counters
            .resolved
            .fetch_add(misses.len() as u64, Ordering::Relaxed);

        let resolved = match space {
            _ if misses.is_empty() => Vec::new(),
            Space::Kernel => self.resolve_kernel(&misses),
            Space::Process(pid) => self.resolve_user(pid, &misses),
            Space::File(_) => unreachable!("lookups are by process or kernel"),
        };
        for ((&addr, r), loc) in misses.iter().zip(resolved).zip(located) {
            // Per file only what the file itself says: an unknown address may be a process
            // that exited between the two reads of its maps.
            let (frame, cache, per_file) = match r {
                Resolved::Name(name) => (self.cache.intern(&name), true, true),
                Resolved::Module(module, off) => {
                    let mut s = module;
                    let _ = write!(s, "+{off:#x}");
                    (self.cache.intern(&s), true, true)
                }
                Resolved::Anonymous => (Arc::from(unknown_frame(addr)), false, false),
                Resolved::Unknown => (Arc::from(unknown_frame(addr)), true, false),
            };
            if cache {
                self.cache.insert(space, addr, Arc::clone(&frame));
            }
            if let (true, Some((id, off))) = (per_file, loc) {
                self.files.insert(Space::File(id), off, Arc::clone(&frame));
            }
            fresh.insert(addr, frame);
        }
        out.into_iter()
            .zip(&lookups)
            .map(|(hit, addr)| hit.unwrap_or_else(|| Arc::clone(&fresh[addr])))
            .collect()
    }

    fn resolve_user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Resolved> {
        self.touched.insert(pid);
        self.user_used = Some(Instant::now());
        let src = Source::Process(Process {
            debug_syms: self.opts.debug_syms,
            // JIT runtimes (node --perf-basic-prof, JVM agents, .NET) describe their code
            // in /proc/PID/root/tmp/perf-PID.map; on by default, stated because we rely on it.
            perf_map: true,
            map_files: self.map_files,
            vdso: true,
            ..Process::new(pid.into())
        });
        let syms = self
            .symbolizer
            .symbolize(&src, Input::AbsAddr(addrs))
            // The process is gone (or its maps unreadable): every address falls through.
            .unwrap_or_default();
        let mut out: Vec<Resolved> = addrs
            .iter()
            .enumerate()
            .map(|(i, _)| match syms.get(i) {
                Some(Symbolized::Sym(sym)) => named(&sym.name),
                _ => Resolved::Unknown,
            })
            .collect();

        let unresolved: Vec<usize> = (0..out.len())
            .filter(|&i| matches!(out[i], Resolved::Unknown))
            .collect();
        if unresolved.is_empty() {
            return out;
        }
        let addrs_left: Vec<u64> = unresolved.iter().map(|&i| addrs[i]).collect();
        let opts = NormalizeOpts {
            sorted_addrs: false,
            // The symbolic path: only its basename is shown.
            map_files: false,
            ..NormalizeOpts::default()
        };
        let Ok(norm) = self
            .normalizer
            .normalize_user_addrs_opts(pid.into(), &addrs_left, &opts)
        else {
            return out;
        };
        for (&i, &(file_off, meta)) in unresolved.iter().zip(&norm.outputs) {
            out[i] = match norm.meta.get(meta) {
                Some(UserMeta::Elf(elf)) => Resolved::Module(module_name(&elf.path), file_off),
                Some(UserMeta::Unknown(u)) if u.reason == NormReason::MissingComponent => {
                    Resolved::Anonymous
                }
                _ => Resolved::Unknown,
            };
        }
        out
    }

    fn resolve_kernel(&mut self, addrs: &[u64]) -> Vec<Resolved> {
        self.kernel_used = Some(Instant::now());
        // kallsyms only: a vmlinux search stats and may parse a ~500 MB debug image.
        let counters = &self.counters;
        let kallsyms = self.kallsyms.get_or_insert_with(|| {
            counters.kallsyms_loads.fetch_add(1, Ordering::Relaxed);
            Kallsyms::load().unwrap_or_else(|e| {
                log::debug!("cannot read /proc/kallsyms ({e}); kernel frames stay addresses");
                Kallsyms::default()
            })
        });
        addrs
            .iter()
            .map(|&a| kallsyms.find(a).map_or(Resolved::Unknown, named))
            .collect()
    }

    fn forget(&mut self, pid: u32) {
        self.cache.forget(Space::Process(pid));
        if self.touched.remove(&pid) {
            // Releases blazesym's per-pid state (the perf map and its namespace pid).
            let _ = self
                .symbolizer
                .evict(&Evict::Process(EvictProcess::new(pid.into())));
            self.forgotten_since_build += 1;
            if self.forgotten_since_build >= self.opts.rebuild_after_forgotten {
                self.rebuild();
            }
        }
        self.cache.maybe_prune_names();
    }

    /// When the user-space symbolizer, if it holds anything, may be released: idle for
    /// `release_after_idle`.
    fn user_due(&self) -> Option<Instant> {
        Some(self.user_used? + self.opts.release_after_idle?)
    }

    /// When the kernel symbolizer, if it holds anything, may be released.
    fn kernel_due(&self) -> Option<Instant> {
        Some(self.kernel_used? + self.opts.kernel_release_after_idle?)
    }

    /// How long to wait for a request before releasing a symbolizer, if one is to be.
    fn release_due(&self) -> Option<Duration> {
        let at = self.user_due().into_iter().chain(self.kernel_due()).min()?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    /// Releases the symbolizers whose time has come (see [`Self::release_due`]).
    fn release_idle(&mut self) {
        let now = Instant::now();
        if self.user_due().is_some_and(|at| at <= now) {
            self.rebuild();
        }
        if self.kernel_due().is_some_and(|at| at <= now) {
            self.rebuild_kernel();
        }
    }

    /// A fresh user-space `Symbolizer`: the old one's files and indices are released.
    fn rebuild(&mut self) {
        self.user_used = None;
        self.symbolizer = build_symbolizer();
        self.touched.clear();
        self.forgotten_since_build = 0;
        self.counters.rebuilds.fetch_add(1, Ordering::Relaxed);
        crate::allocator::release_free();
    }

    /// Releases the kallsyms index.
    fn rebuild_kernel(&mut self) {
        self.kernel_used = None;
        self.kallsyms = None;
        crate::allocator::release_free();
    }

    fn publish_sizes(&self) {
        let c = &self.counters;
        c.cached_frames
            .store(self.cache.len() as u64, Ordering::Relaxed);
        c.file_frames
            .store(self.files.len() as u64, Ordering::Relaxed);
        c.interned_names
            .store(self.cache.interned() as u64, Ordering::Relaxed);
    }
}

fn build_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        // A frame is a function name: file/line lookups and inlined-function chains cost
        // DWARF line-table parsing and memory for nothing we show.
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .build()
}

fn named(name: &str) -> Resolved {
    let name = strip_rust_hash(name.trim());
    if name.is_empty() {
        Resolved::Unknown
    } else {
        Resolved::Name(name.to_owned())
    }
}

fn module_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned());
    // /proc/PID/maps marks files replaced or deleted since they were mapped.
    match base.strip_suffix(" (deleted)") {
        Some(b) => b.to_owned(),
        None => base,
    }
}

/// Whether `/proc/PID/map_files/` can be opened (CAP_SYS_ADMIN, even for our own process).
/// blazesym prefers those links because they reach deleted files and other mount
/// namespaces; without the capability it falls back to the paths in `/proc/PID/maps`.
fn map_files_usable() -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let Some(range) = maps
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with('/'))
        })
        .and_then(|l| l.split_whitespace().next())
    else {
        return false;
    };
    std::fs::File::open(format!("/proc/self/map_files/{range}")).is_ok()
}

mod cache;
mod files;
mod kallsyms;
#[cfg(test)]
mod tests;
