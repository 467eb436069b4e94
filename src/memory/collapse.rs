//! Collapsing the chunks that went to small pages into huge pages in place, off the
//! compile's and the runs' path: a background thread while no run is in progress, or the
//! embedder's call.
use super::HUGE_PAGE;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Chunks of live mappings that [`fault_in`] gave small pages (while huge faults were
/// slow), waiting to be collapsed into huge pages in place (`MADV_COLLAPSE`, Linux 6.1+),
/// oldest first, each with its mapping's key. A dropped [`Mapping`] removes its chunks
/// and waits out a collapse in flight in it before it is unmapped, so no collapse touches
/// memory that is not (or no longer) a live buffer's.
///
/// Why: the small chunks cost the runs up to 1-2% (streaming 4 KiB pages), for the
/// model's life. `MADV_COLLAPSE` keeps the contents and is transparent to threads reading
/// or writing the chunk (they wait at a page fault while it copies), as khugepaged's
/// collapses are; but it copies the 2 MiB into a new huge page and must get that page from
/// the host (7-30 ms where the guest had reported it free), so it is done off the
/// compile's path: by a background thread while no run is in progress ([`settle_later`]),
/// or by the caller ([`settle_huge_pages`]). `CNNC_HUGE_COLLAPSE=0` (read at each buffer) leaves the
/// chunks small.
///
/// No lock is held across a system call (a collapse takes 1-30 ms, more under
/// compaction): a collapse marks its mapping `in_flight` under the queue's lock and runs
/// unlocked; only the drop of that one mapping, and the next collapse (they run one at a
/// time, so one mark is enough), wait for it ([`COLLAPSE_ENDED`]). The mark names the
/// process that set it: a child forked during a collapse inherits the mark but not the
/// collapse, and neither its drop of that mapping nor its own collapses wait for it.
pub(super) struct Collapses {
    chunks: std::collections::VecDeque<(u64, usize)>,
    /// The next mapping's key (from 1).
    next_owner: u64,
    /// The key of the mapping a collapse is under way in (0: none) and the process
    /// running it.
    in_flight: u64,
    in_flight_pid: u32,
}

static COLLAPSE_QUEUE: std::sync::Mutex<Collapses> = std::sync::Mutex::new(Collapses {
    chunks: std::collections::VecDeque::new(),
    next_owner: 1,
    in_flight: 0,
    in_flight_pid: 0,
});
/// Signalled (under the [`COLLAPSE_QUEUE`] lock) when a collapse clears `in_flight`.
static COLLAPSE_ENDED: std::sync::Condvar = std::sync::Condvar::new();

/// Full chunks that [`fault_in`] gave small pages, collapsed chunks, and chunks whose
/// collapse failed, since the process started.
pub(super) static SMALL_CHUNKS: AtomicU64 = AtomicU64::new(0);
static COLLAPSED_CHUNKS: AtomicU64 = AtomicU64::new(0);
static FAILED_COLLAPSES: AtomicU64 = AtomicU64::new(0);

/// Whether chunks may be collapsed here, probed once: the kernel knows `MADV_COLLAPSE`
/// (Linux 6.1+; `madvise(0, 0, advice)` returns 0 iff the advice is supported, touching
/// nothing) and the system's THP mode is not `never` (`MADV_COLLAPSE` ignores that mode,
/// so the admin's `never` is respected here). Where not, nothing is queued and no page
/// policy changes. An error after that is one chunk's (EINVAL too: a range with no page
/// in, or write-protected after a fork), not the process's.
pub fn huge_collapse_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
            thp.is_ok_and(|mode| !mode.contains("[never]")) && sys::collapse_known()
        }
        #[cfg(not(target_os = "linux"))]
        false
    })
}

impl Collapses {
    pub(super) fn lock() -> std::sync::MutexGuard<'static, Collapses> {
        // Every change is made whole under the lock.
        COLLAPSE_QUEUE.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the chunks at `starts` (2 MiB each, of one mapping); the mapping's key (0:
    /// none queued, where collapses are not supported: [`huge_collapse_supported`]).
    pub(super) fn add(&mut self, starts: &[usize]) -> u64 {
        if starts.is_empty() || !huge_collapse_supported() {
            return 0;
        }
        let owner = self.next_owner;
        self.next_owner += 1;
        self.chunks.extend(starts.iter().map(|&at| (owner, at)));
        owner
    }

    /// Removes the chunks of mapping `owner`.
    fn remove(&mut self, owner: u64) {
        self.chunks.retain(|&(o, _)| o != owner);
    }

    /// Removes the chunks of mapping `owner` (being dropped) from the process's queue and
    /// waits for a collapse under way in it to end: after this no collapse touches the
    /// mapping, and it can be unmapped.
    pub(super) fn forget(owner: u64) {
        let mut queue = Self::lock();
        queue.remove(owner);
        while queue.collapsing() == Some(owner) {
            queue = Self::wait(queue);
        }
    }

    /// The mapping a collapse of this process is under way in (a mark its parent left
    /// before a fork is no collapse of this process's).
    fn collapsing(&self) -> Option<u64> {
        (self.in_flight != 0 && self.in_flight_pid == std::process::id()).then_some(self.in_flight)
    }

    /// Waits (the lock released meanwhile) for a collapse to end.
    fn wait(queue: std::sync::MutexGuard<'static, Self>) -> std::sync::MutexGuard<'static, Self> {
        COLLAPSE_ENDED
            .wait(queue)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The queue, locked, once no collapse of this process is under way.
    fn lock_between_collapses() -> std::sync::MutexGuard<'static, Self> {
        let mut queue = Self::lock();
        while queue.collapsing().is_some() {
            queue = Self::wait(queue);
        }
        queue
    }

    /// Marks the collapse of a chunk of mapping `owner` under way in this process, until
    /// the returned mark is dropped (so a collapse that panics clears it too: a drop of the
    /// mapping would otherwise wait for ever).
    fn mark_in_flight(&mut self, owner: u64) -> InFlight {
        self.in_flight = owner;
        self.in_flight_pid = std::process::id();
        InFlight(())
    }
}

/// A collapse under way ([`Collapses::mark_in_flight`]): its drop clears the mark and wakes
/// those waiting for it.
struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        Collapses::lock().in_flight = 0;
        COLLAPSE_ENDED.notify_all();
    }
}

/// What became of the 2 MiB chunks of packed weights and arenas that were faulted in on
/// small pages because huge pages were slow to fault in (docs/runtime.md, "Faulted in by
/// the chunk"), since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugeChunkCounts {
    /// Chunks faulted in on small pages.
    pub small: u64,
    /// Of those, collapsed into huge pages since.
    pub collapsed: u64,
    /// Collapses that failed (no huge page to be had, the chunk's pages busy or not
    /// collapsible); where collapses are not supported nothing is queued, so none fails.
    pub failed: u64,
    /// Chunks of live buffers waiting for a collapse.
    pub pending: usize,
}

/// The process's [`HugeChunkCounts`].
pub fn huge_chunk_counts() -> HugeChunkCounts {
    HugeChunkCounts {
        small: SMALL_CHUNKS.load(Ordering::Relaxed),
        collapsed: COLLAPSED_CHUNKS.load(Ordering::Relaxed),
        failed: FAILED_COLLAPSES.load(Ordering::Relaxed),
        pending: Collapses::lock().chunks.len(),
    }
}

/// Collapses every chunk now waiting ([`Collapses`]) into huge pages, on the caller's
/// thread; how many it collapsed. For an embedder that wants its models at full speed
/// before serving, at a time of its choosing (each chunk may take the host 7-30 ms to
/// back; a run reading a chunk meanwhile waits for it). The background thread
/// ([`settle_later`]) does the same while no run is in progress.
pub fn settle_huge_pages() -> usize {
    let mut warm = WarmPage::new();
    let mut n = 0;
    while let Some(done) = collapse_next(&mut warm, &|| true) {
        n += usize::from(done);
    }
    n
}

/// The background collapse's state: whether its thread is started, and the condition it
/// waits on (chunks queued), signalled by [`settle_later`].
static SETTLER: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static SETTLER_WAKE: std::sync::Condvar = std::sync::Condvar::new();
/// Set by the thread once its start-up (the only part of it that allocates: the knob's
/// read, thread-local set-up) is done; [`settle_later`] waits for it, so that no run in
/// progress (a steady `run_into` allocates nothing: tests/jit_run_no_alloc.rs) sees the
/// thread allocate.
static SETTLER_READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static SETTLER_READY_WAKE: std::sync::Condvar = std::sync::Condvar::new();
/// Runs in progress in the process (`Model::run` and the like, [`RunGuard`]), and runs
/// started since it started.
static RUNS: AtomicUsize = AtomicUsize::new(0);
static RUNS_STARTED: AtomicU64 = AtomicU64::new(0);

/// How long no run must have been in progress before the background thread collapses a
/// chunk: a gap between requests, not the moment between two runs of a loop (there a
/// collapse would delay the next run, by up to 20 ms of a 28 ms ResNet-50 run).
const QUIET: Duration = Duration::from_millis(5);

/// While runs are seen, the background thread looks again after this, doubling up to
/// [`MAX_RECHECK`]: the runs' ends do not wake it (that cost every run of a loop a futex
/// wake and the thread a turn on a core where a pool worker spins, only to find no quiet
/// 5 ms), so after the last run it starts within this.
const RECHECK: Duration = Duration::from_millis(10);
const MAX_RECHECK: Duration = Duration::from_secs(1);

/// Counts a run (or a compile) in progress while it lives: the background collapse waits
/// for none to be, so that no run waits for a chunk it reads (a collapse takes 1-30 ms) or
/// shares its CPU, and no compile shares its CPUs. Two atomics, nothing else.
pub(crate) struct RunGuard(());

impl RunGuard {
    pub(crate) fn new() -> Self {
        RUNS_STARTED.fetch_add(1, Ordering::Relaxed);
        RUNS.fetch_add(1, Ordering::SeqCst);
        RunGuard(())
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        RUNS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wakes the process's background thread (started on the first call) to collapse the
/// chunks waiting, if any: after a compile, and after a run that made a workspace. The
/// thread collapses a chunk at a time while no run is in progress: between a server's
/// requests, not during a loop of runs back to back (for that, [`settle_huge_pages`]).
pub(crate) fn settle_later() {
    // The lock is held only briefly, to change the queue (then the thread is awake).
    if COLLAPSE_QUEUE.try_lock().is_ok_and(|q| q.chunks.is_empty()) {
        return;
    }
    let mut started = SETTLER.lock().unwrap_or_else(|p| p.into_inner());
    if !*started {
        let spawned = std::thread::Builder::new()
            .name("cnnc-settle".into())
            .spawn(|| {
                if crate::knobs::forced("CNNC_HUGE_COLLAPSE_IDLE") == Some(true) {
                    lower_own_priority();
                }
                let mut warm = WarmPage::new();
                *SETTLER_READY.lock().unwrap_or_else(|p| p.into_inner()) = true;
                SETTLER_READY_WAKE.notify_all();
                let mut recheck = RECHECK;
                loop {
                    wait_for_work();
                    let started = RUNS_STARTED.load(Ordering::Relaxed);
                    let quiet = || {
                        RUNS.load(Ordering::SeqCst) == 0
                            && RUNS_STARTED.load(Ordering::Relaxed) == started
                    };
                    std::thread::sleep(QUIET);
                    if quiet() {
                        collapse_next(&mut warm, &quiet);
                        recheck = RECHECK;
                    } else {
                        std::thread::sleep(recheck);
                        recheck = (recheck * 2).min(MAX_RECHECK);
                    }
                }
            });
        // Without the thread the chunks stay small (the runs are correct either way).
        *started = spawned.is_ok();
        if *started {
            // The caller (a compile, or a run that made its workspace) waits the thread's
            // start-up out, under SETTLER, which the start-up does not take.
            let mut ready = SETTLER_READY.lock().unwrap_or_else(|p| p.into_inner());
            while !*ready {
                ready = SETTLER_READY_WAKE
                    .wait(ready)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
    SETTLER_WAKE.notify_all();
}

/// Returns once chunks wait (checked under [`SETTLER`], which [`settle_later`] holds to
/// wake the thread).
fn wait_for_work() {
    let mut started = SETTLER.lock().unwrap_or_else(|p| p.into_inner());
    while Collapses::lock().chunks.is_empty() {
        started = SETTLER_WAKE
            .wait(started)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// Puts the calling thread at `SCHED_IDLE` (Linux): it runs only on a CPU nothing else
/// wants. Best effort; a measuring knob (`CNNC_HUGE_COLLAPSE_IDLE=1`): a collapse holds
/// the process's mmap lock, and at idle priority the thread was starved with it held
/// while other processes ran (VGG-19 runs of 1.1-1.4 s against 0.07, load 3).
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    sys::idle_priority();
}

/// A scratch huge page that a collapse has the host back first: the page `MADV_COLLAPSE`
/// allocates is most often the one just freed on this CPU (the per-CPU lists keep huge
/// pages too), so its host fault (7-30 ms where the guest had reported the block free)
/// happens here, where no run waits for it, and the copy under the mmap lock is a copy.
/// (Measured: 27 against 3-6 ms per collapse, load 5; docs/jit-history.md.)
struct WarmPage {
    map: Option<memmap2::MmapMut>,
}

impl WarmPage {
    fn new() -> Self {
        let map = memmap2::MmapMut::map_anon(2 * HUGE_PAGE).ok();
        #[cfg(target_os = "linux")]
        if let Some(m) = &map {
            let _ = m.advise(memmap2::Advice::HugePage);
        }
        WarmPage { map }
    }

    /// Faults in the scratch huge page and frees it.
    fn warm(&mut self) {
        let Some(map) = &mut self.map else { return };
        let at = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        map[at] = 1;
        #[cfg(target_os = "linux")]
        #[allow(unsafe_code)]
        // SAFETY: a huge page inside this mapping, which only `warm` uses and nothing
        // borrows now; what it held (a 1) is not needed.
        let _ = unsafe { sys::madvise(map.as_ptr() as usize + at, HUGE_PAGE, libc::MADV_DONTNEED) };
    }
}

/// Collapses the oldest waiting chunk: `Some(true)` if it is now a huge page,
/// `Some(false)` if that failed or `go_on` said no after the scratch page was faulted in
/// (which can take the host 30 ms: a run may have started), `None` if none waits.
fn collapse_next(warm: &mut WarmPage, go_on: &dyn Fn() -> bool) -> Option<bool> {
    if Collapses::lock().chunks.is_empty() {
        return None;
    }
    warm.warm();
    if !go_on() {
        return Some(false);
    }
    let (at, mark) = {
        // One at a time: the background thread and `settle_huge_pages` callers take turns.
        let mut queue = Collapses::lock_between_collapses();
        let (owner, at) = queue.chunks.pop_front()?;
        (at, queue.mark_in_flight(owner))
    };
    // The chunk's mapping stays live until the mark is cleared: its drop waits for that
    // (`Collapses::forget`).
    let result = collapse(at);
    drop(mark);
    let counter = match result {
        Collapse::Done => &COLLAPSED_CHUNKS,
        Collapse::Failed(_) => &FAILED_COLLAPSES,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Some(result == Collapse::Done)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collapse {
    Done,
    /// This chunk, with the errno: no huge page to be had (ENOMEM, EAGAIN), its pages
    /// busy or changed meanwhile, or not collapsible (EINVAL: none in, write-protected
    /// after a fork, ...). It is advised small again.
    Failed(i32),
}

/// Advises the 2 MiB chunk at `at` huge again (undoing [`fault_in`]'s `MADV_NOHUGEPAGE`)
/// and collapses it into a huge page in place; where that fails, advises it small again,
/// so that khugepaged does not collapse it later at a time of its own (during runs).
/// Meant for a chunk of a live [`HugeBuf`] mapping (marked `in_flight` in [`Collapses`],
/// which its drop waits out), where only
/// `collapse_next` changes the page advice; called only where
/// [`huge_collapse_supported`].
fn collapse(at: usize) -> Collapse {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: `madvise` with these advices never changes memory contents, whatever the
        // range: at worst it fails (ENOMEM where nothing is mapped). That the chunk is a
        // live buffer's (the caller's side) keeps it from changing the page policy of
        // memory that is not ours.
        let done = unsafe {
            // Advice only (where it fails, so does the collapse).
            let _ = sys::madvise(at, HUGE_PAGE, libc::MADV_HUGEPAGE);
            let done = sys::madvise(at, HUGE_PAGE, sys::MADV_COLLAPSE);
            if done.is_err() {
                let _ = sys::madvise(at, HUGE_PAGE, libc::MADV_NOHUGEPAGE);
            }
            done
        };
        match done {
            Ok(()) => Collapse::Done,
            Err(errno) => Collapse::Failed(errno),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = at;
        Collapse::Failed(0)
    }
}

/// The system calls of the collapse, the crate's only ones outside `jit`.
#[cfg(target_os = "linux")]
mod sys {
    /// `MADV_COLLAPSE` (Linux 6.1+): the UAPI value, 25 on every architecture, spelled out
    /// here because libc defines it for glibc targets only (not musl).
    pub(super) const MADV_COLLAPSE: libc::c_int = 25;
    #[cfg(target_env = "gnu")]
    const _: () = assert!(MADV_COLLAPSE == libc::MADV_COLLAPSE);

    /// `madvise(advice)` on the `len` bytes at `at` (whole pages); the errno on failure.
    ///
    /// # Safety
    /// The range is mapped by this process for the call's duration, and the advice keeps
    /// what it holds (`MADV_HUGEPAGE`, `MADV_NOHUGEPAGE`; `MADV_COLLAPSE`, where the kernel copies the pages
    /// into a huge page and maps it in their place, any thread touching the range
    /// meanwhile waiting at a page fault, as with khugepaged), or is `MADV_DONTNEED` on
    /// memory whose contents no one needs (anonymous private memory then reads as zero).
    /// No reference is made to the range, so threads may hold `&` or `&mut` to it.
    #[allow(unsafe_code)]
    pub(super) unsafe fn madvise(
        at: usize,
        len: usize,
        advice: libc::c_int,
    ) -> Result<(), libc::c_int> {
        debug_assert!(matches!(
            advice,
            libc::MADV_HUGEPAGE | libc::MADV_NOHUGEPAGE | MADV_COLLAPSE | libc::MADV_DONTNEED
        ));
        // SAFETY: the caller's guarantee.
        match unsafe { libc::madvise(at as *mut libc::c_void, len, advice) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)),
        }
    }

    /// Whether the kernel knows `MADV_COLLAPSE`: `madvise` on an empty range returns 0 iff
    /// the advice is supported (madvise(2)), and touches no memory.
    pub(super) fn collapse_known() -> bool {
        #[allow(unsafe_code)]
        // SAFETY: an empty range at 0: nothing is advised.
        let known = unsafe { libc::madvise(std::ptr::null_mut(), 0, MADV_COLLAPSE) };
        known == 0
    }

    /// Puts the calling thread at `SCHED_IDLE`: it runs only on a CPU nothing else wants.
    pub(super) fn idle_priority() {
        let param = libc::sched_param { sched_priority: 0 };
        #[allow(unsafe_code)]
        // SAFETY: a system call on the calling thread (0) with a valid parameter.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::huge_buf::tests::{has_thp, unfaulted, vmas};
    use crate::memory::huge_buf::{fault_in, FaultCosts, HugeBuf};

    #[test]
    fn a_dropped_mappings_chunks_leave_the_collapse_queue() {
        let mut q = Collapses {
            chunks: std::collections::VecDeque::new(),
            next_owner: 1,
            in_flight: 0,
            in_flight_pid: 0,
        };
        assert_eq!(q.add(&[]), 0, "nothing queued, no key");
        let a = q.add(&[1 << 21, 2 << 21]);
        let b = q.add(&[5 << 21]);
        assert!(a != 0 && b != 0 && a != b);
        q.remove(a);
        assert_eq!(q.chunks, [(b, 5 << 21)]);
        q.remove(b);
        assert!(q.chunks.is_empty());

        // The process's queue: a mapping with chunks waiting takes them along when dropped.
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false) {
            return;
        }
        let (mut map, offset, _) = unfaulted((4 << 20) / 4);
        let start = map.as_ptr() as usize + offset;
        let chunks = [start, start + HUGE_PAGE];
        map.spare = false;
        map.owner = Collapses::lock().add(&chunks);
        if map.owner == 0 {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        let owner = map.owner;
        drop(map);
        let queue = Collapses::lock();
        assert!(queue.chunks.iter().all(|&(o, _)| o != owner));
    }

    /// The drop of a mapping whose chunk is being collapsed waits for the collapse to end
    /// (it must not unmap the range under it); the drops of other mappings do not.
    #[test]
    fn only_the_collapsed_mappings_drop_waits_for_the_collapse() {
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false) {
            return;
        }
        let queued = || {
            let (mut map, offset, _) = unfaulted((2 << 20) / 4);
            map.spare = false;
            map.owner = Collapses::lock().add(&[map.as_ptr() as usize + offset]);
            map
        };
        let (busy, other) = (queued(), queued());
        if busy.owner == 0 {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        // As `collapse_next` does, without the system call: no real collapse runs
        // meanwhile (they wait while a mark of this process is set), so none clears it.
        let mark = {
            let mut queue = Collapses::lock_between_collapses();
            queue.remove(busy.owner);
            queue.mark_in_flight(busy.owner)
        };
        let dropper = std::thread::spawn(move || drop(busy));
        drop(other);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !dropper.is_finished(),
            "the mapping was dropped during its collapse"
        );
        drop(mark);
        dropper.join().unwrap();
    }

    /// A mark that another process set (a parent's collapse, in flight when it forked this
    /// process) holds up neither the drop of its mapping nor this process's collapses.
    #[test]
    fn a_mark_from_before_a_fork_is_no_collapse_here() {
        if crate::knobs::forced("CNNC_HUGE_PAGES") == Some(false) {
            return;
        }
        let (mut map, offset, _) = unfaulted((2 << 20) / 4);
        map.spare = false;
        map.owner = Collapses::lock().add(&[map.as_ptr() as usize + offset]);
        if map.owner == 0 {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        {
            let mut queue = Collapses::lock_between_collapses();
            queue.in_flight = map.owner;
            queue.in_flight_pid = std::process::id().wrapping_add(1);
            assert_eq!(queue.collapsing(), None);
        }
        let owner = map.owner;
        let dropper = std::thread::spawn(move || drop(map));
        std::thread::sleep(Duration::from_millis(50));
        let dropped = dropper.is_finished();
        {
            let mut queue = Collapses::lock();
            if queue.in_flight == owner {
                queue.in_flight = 0;
            }
        }
        COLLAPSE_ENDED.notify_all();
        dropper.join().unwrap();
        assert!(dropped, "the drop waited for another process's collapse");
    }

    /// A collapse that panics clears its mark: the drop of its mapping does not wait for
    /// ever.
    #[test]
    fn a_collapse_that_panics_clears_its_mark() {
        let owner = u64::MAX;
        let panicked = std::thread::spawn(move || {
            let _mark = Collapses::lock_between_collapses().mark_in_flight(owner);
            panic!("a collapse panicking (on purpose, for the test)");
        })
        .join();
        assert!(panicked.is_err());
        assert_ne!(Collapses::lock().collapsing(), Some(owner));
        Collapses::forget(owner);
    }

    /// A buffer faulted in on small pages holds huge pages after [`collapse`], and the
    /// same floats; readers on other threads meanwhile see them unchanged.
    #[cfg(target_os = "linux")]
    #[test]
    fn small_chunks_collapse_into_huge_pages_and_keep_their_values() {
        if !has_thp() {
            return;
        }
        let n = (6 << 20) / 4 + 3; // three full chunks and a partial one
        let (mut map, offset, len) = unfaulted(n);
        let small = fault_in(
            map.bytes_mut(),
            offset,
            n * 4,
            &FaultCosts::with(u32::MAX, 1),
            0,
        );
        let start = map.as_ptr() as usize + offset;
        assert_eq!(small, [start, start + HUGE_PAGE, start + 2 * HUGE_PAGE]);
        let mut buf = HugeBuf::Mapped { map, offset, len };
        for (i, x) in buf.iter_mut().enumerate() {
            *x = i as f32 * 0.25 - 7.0;
        }
        let huge_kib = || -> u64 { vmas(start, start + n * 4).iter().map(|v| v.2).sum() };
        assert_eq!(huge_kib(), 0, "small pages");
        let expected = |i: usize| (i as f32 * 0.25 - 7.0).to_bits();
        let buf = &buf;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut sweeps = 0;
                while !stop.load(Ordering::Relaxed) || sweeps == 0 {
                    for i in (0..n).step_by(97) {
                        assert_eq!(buf[i].to_bits(), expected(i), "float {i}");
                    }
                    sweeps += 1;
                }
            });
            let mut done = 0u64;
            let mut no_page = 0u64;
            for &at in &small {
                match collapse(at) {
                    Collapse::Done => done += 1,
                    // No free huge page in the system (or none now): only the values to check.
                    Collapse::Failed(libc::ENOMEM | libc::EAGAIN) => no_page += 1,
                    // Anything else (EINVAL: the chunk left advised small, ...) is a bug
                    // where the collapse is supported.
                    Collapse::Failed(errno) => {
                        stop.store(true, Ordering::Relaxed);
                        assert!(!huge_collapse_supported(), "errno {errno} at {at:#x}");
                        eprintln!("skipped: collapses not supported here");
                        return;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            // Each collapse that succeeded left a huge page.
            assert!(
                huge_kib() >= done * 2048,
                "{done}: {:?}",
                vmas(start, start + n * 4)
            );
            assert_eq!(done + no_page, small.len() as u64);
            if done == 0 {
                eprintln!("no chunk collapsed (no huge page to be had): only the values checked");
            }
        });
        assert!((0..n).all(|i| buf[i].to_bits() == expected(i)));
    }

    /// A chunk whose collapse fails (no page in it: EINVAL) is advised small again, and the
    /// failure is that chunk's: collapses stay supported and the next chunk collapses.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_collapse_leaves_its_chunk_small_and_others_collapsible() {
        if !has_thp() || !huge_collapse_supported() {
            eprintln!("skipped: collapses not supported here");
            return;
        }
        let n = (4 << 20) / 4;
        let (mut map, offset, _) = unfaulted(n);
        let start = map.as_ptr() as usize + offset;
        // The first chunk faulted in on small pages, the second never touched.
        fault_in(
            map.bytes_mut(),
            offset,
            HUGE_PAGE,
            &FaultCosts::with(u32::MAX, 1),
            0,
        );
        let empty = start + HUGE_PAGE;
        let flags = |at: usize| vmas(at, at + 1).pop().expect("mapped").0;
        let has = |flags: &str, f: &str| flags.split_whitespace().any(|x| x == f);
        assert!(matches!(collapse(empty), Collapse::Failed(_)));
        let left = flags(empty);
        assert!(has(&left, "nh") && !has(&left, "hg"), "{left}");
        assert!(huge_collapse_supported());
        match collapse(start) {
            Collapse::Done => {
                let now = flags(start);
                assert!(has(&now, "hg"), "{now}");
            }
            Collapse::Failed(libc::ENOMEM | libc::EAGAIN) => {
                eprintln!("no huge page to be had: only the failed chunk checked")
            }
            Collapse::Failed(errno) => panic!("errno {errno}"),
        }
    }
}
