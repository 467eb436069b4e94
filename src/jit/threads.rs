//! A small thread pool that splits one kernel's work range across threads.
//!
//! Waking a parked thread costs ~30 us on this kind of machine (70-110 us at p99), much more
//! than many layers take, so workers spin (bounded by `spin`) after each job before parking:
//! back-to-back layers reach a spinning worker in well under a microsecond.
//!
//! `split(units, f)` gives each thread one contiguous part of `0..units` (part `i` is
//! `units*i/n .. units*(i+1)/n`), which it computes in a few chunks from the front
//! (`f(thread, chunk)`); a thread done with its own part takes chunks from the back of the
//! others'. The caller is thread 0 and returns when every chunk is done. So a worker that
//! is late (descheduled on a busy machine: the caller used to wait for it, a scheduler time
//! slice, for every layer) costs at most the chunk it has taken: the caller computes the
//! rest. The kernels compute every output element with the same instructions whatever the
//! split, so results do not depend on the thread count or on who computed what.
//!
//! A dropped pool's workers are not joined: each parks as an idle worker of the process
//! (up to [`MAX_IDLE_WORKERS`]) and the next pool made takes it instead of starting a new
//! thread. Starting a thread costs a model's compile the wait for it to run (tens of
//! microseconds on a quiet machine, a scheduler time slice on a busy one), which is most
//! of a small network's warm compile at two threads.
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type JobFn<'a> = dyn Fn(usize, Range<usize>) + Sync + 'a;

struct Job<'a> {
    f: &'a JobFn<'a>,
}

fn part_range(units: usize, parts: usize, i: usize) -> Range<usize> {
    units * i / parts..units * (i + 1) / parts
}

/// Chunks a thread's own part is computed in: two, so that a thread that starts late
/// leaves the others half of its part to take, while each call's fixed costs stay small
/// (the implicit GEMM of a small plane packs the input panels of all its strips in every
/// call: for 3x3 512->512 at 7x7 that is 0.9 MB of panels, several per cent of the layer).
pub(crate) const CHUNKS_PER_PART: usize = 2;

/// A part's units not yet taken, `lo..hi`, as `hi << 32 | lo`: its owner takes from the
/// front, the others from the back.
struct PartRange(AtomicU64);

impl PartRange {
    fn set(&self, r: Range<usize>) {
        self.0
            .store(((r.end as u64) << 32) | r.start as u64, Ordering::Relaxed);
    }
    /// Takes up to `n` units from the front (or from the back); `guided`, at most half of
    /// what is left (rounded up), so that the part's last units go in ever smaller chunks
    /// another thread can take.
    fn take(&self, n: usize, back: bool, guided: bool) -> Option<Range<usize>> {
        let mut v = self.0.load(Ordering::Acquire);
        loop {
            let (lo, hi) = ((v & 0xffff_ffff) as usize, (v >> 32) as usize);
            if lo >= hi {
                return None;
            }
            let left = hi - lo;
            let n = n.min(if guided { left.div_ceil(2) } else { left });
            let (taken, next) = if back {
                (hi - n..hi, (((hi - n) as u64) << 32) | lo as u64)
            } else {
                (lo..lo + n, ((hi as u64) << 32) | (lo + n) as u64)
            };
            match self
                .0
                .compare_exchange_weak(v, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(taken),
                Err(now) => v = now,
            }
        }
    }
}

struct Shared {
    epoch: AtomicUsize,
    /// The running job, null between jobs.
    job: AtomicPtr<Job<'static>>,
    /// Workers inside a job (between announcing themselves and their last chunk).
    active: AtomicUsize,
    /// What is left of each thread's part of the running job.
    parts: Box<[PartRange]>,
    /// Units per chunk of the running job.
    chunk: AtomicUsize,
    /// Whether the running job's chunks are guided ([`PartRange::take`]): jobs of two or
    /// more chunks a part, with `guided` (`CNNC_POOL_GUIDED=0`: none).
    guided_job: AtomicBool,
    guided: bool,
    /// Thread `t` starts on part `(t + shift) % n` of the running job (0 but to measure:
    /// `rotate`).
    shift: AtomicUsize,
    /// `CNNC_SPLIT_ROTATE=1`: each job starts every thread on the next thread's part of the
    /// job before (a measurement of what reading the other core's data costs).
    rotate: bool,
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    spin: Duration,
    /// Workers running: new threads once started, idle workers once handed the pool.
    started: AtomicUsize,
    /// `CNNC_POOL_TRACE=1`: each job's timeline (a measuring knob).
    trace: Option<Trace>,
}

/// One thread's part in a traced job: nanoseconds since the pool's `origin`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadSpan {
    /// When it took its first chunk (0: it took none).
    pub start: u64,
    /// When its last chunk ended.
    pub end: u64,
    /// Time inside chunks.
    pub busy: u64,
    pub chunks: u32,
}

/// A traced job ([`ThreadPool::take_trace`]): nanoseconds since the pool's `origin`.
#[derive(Clone, Debug, Default)]
pub struct JobTrace {
    /// The caller's tag when the job ran ([`ThreadPool::set_tag`]: the model's step).
    pub tag: usize,
    pub units: usize,
    /// When `split` published the job, and when it saw every worker out of it.
    pub submit: u64,
    pub done: u64,
    /// Per thread (0: the caller).
    pub threads: Vec<ThreadSpan>,
}

/// One thread's span of the running job, on a cache line pair of its own.
#[repr(align(128))]
#[derive(Default)]
struct SpanSlot(Mutex<ThreadSpan>);

struct Trace {
    tag: AtomicUsize,
    origin: Instant,
    spans: Box<[SpanSlot]>,
    jobs: Mutex<Vec<JobTrace>>,
}

impl Trace {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

impl Shared {
    /// Computes chunks of the running job as thread `me`: its own part from the front, then
    /// the others' from the back, until none is left.
    fn work(&self, job: &Job, me: usize) {
        let n = self.parts.len();
        let chunk = self.chunk.load(Ordering::Relaxed);
        let guided = self.guided_job.load(Ordering::Relaxed);
        let shift = self.shift.load(Ordering::Relaxed);
        let mut span = ThreadSpan::default();
        for k in 0..n {
            let victim = (me + shift + k) % n;
            while let Some(r) = self.parts[victim].take(chunk, k > 0, guided) {
                match &self.trace {
                    Some(t) => {
                        let t0 = t.now();
                        (job.f)(me, r);
                        let t1 = t.now();
                        if span.chunks == 0 {
                            span.start = t0;
                        }
                        span.end = t1;
                        span.busy += t1 - t0;
                        span.chunks += 1;
                    }
                    None => (job.f)(me, r),
                }
            }
        }
        if let Some(t) = &self.trace {
            *t.spans[me].0.lock().unwrap_or_else(|e| e.into_inner()) = span;
        }
    }
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    /// Worker threads (the caller not counted).
    workers: usize,
    submit: Mutex<()>,
}

/// What a worker thread is to do: be worker `index` (1..) of the pool sharing `shared`.
struct Assignment {
    shared: Arc<Shared>,
    index: usize,
}

/// Idle workers kept for later pools at most (more are let go): a machine's cores are
/// rarely more, and a parked thread costs only its stack.
pub const MAX_IDLE_WORKERS: usize = 16;

/// A parked worker's mailbox: its next pool, or `Some(None)` to exit.
#[derive(Default)]
struct Mailbox {
    next: Mutex<Option<Option<Assignment>>>,
    wake: Condvar,
}

/// The process's idle workers, in a fixed array: a worker going idle allocates nothing
/// (it may do so while another model runs, `tests/jit_run_no_alloc.rs`).
static IDLE: Mutex<[Option<Arc<Mailbox>>; MAX_IDLE_WORKERS]> =
    Mutex::new([const { None }; MAX_IDLE_WORKERS]);

fn idle_workers() -> std::sync::MutexGuard<'static, [Option<Arc<Mailbox>>; MAX_IDLE_WORKERS]> {
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lets every idle worker thread exit (they are kept for later pools: [`ThreadPool`]); for
/// an embedder that makes no more models for a while. Pools dropped later leave theirs
/// idle again.
pub fn release_idle_workers() {
    for slot in idle_workers().iter_mut() {
        if let Some(mailbox) = slot.take() {
            *mailbox.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(None);
            mailbox.wake.notify_one();
        }
    }
}

/// The idle workers now (for tests and measurements).
pub fn idle_worker_count() -> usize {
    idle_workers().iter().flatten().count()
}

/// A worker thread's life: the pools it is handed, one after the other, parked in
/// [`IDLE`] between them.
fn worker_thread(first: Assignment) {
    let mailbox = Arc::new(Mailbox::default());
    first.shared.started.fetch_add(1, Ordering::Release);
    let mut next = first;
    loop {
        worker(&next.shared, next.index);
        drop(next);
        {
            let mut idle = idle_workers();
            let Some(slot) = idle.iter_mut().find(|m| m.is_none()) else {
                return;
            };
            *slot = Some(mailbox.clone());
        }
        let mut g = mailbox.next.lock().unwrap_or_else(|e| e.into_inner());
        next = loop {
            match g.take() {
                Some(Some(a)) => break a,
                Some(None) => return,
                None => g = mailbox.wake.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        };
    }
}

/// Hands `a` to an idle worker (counted as started), or gives it back if there is none.
fn hire_idle(a: Assignment) -> Option<Assignment> {
    let mailbox = idle_workers().iter_mut().find_map(Option::take);
    let Some(mailbox) = mailbox else {
        return Some(a);
    };
    a.shared.started.fetch_add(1, Ordering::Release);
    *mailbox.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(Some(a));
    mailbox.wake.notify_one();
    None
}

impl ThreadPool {
    /// A pool of `threads` threads in total (the caller counts as one, so `threads - 1`
    /// workers: idle ones of dropped pools first, then new threads); workers spin for
    /// `spin` after each job before parking. Returns once every worker runs.
    pub fn new(threads: usize, spin: Duration) -> Self {
        let pool = Self::spawn(threads, spin);
        pool.wait_until_started();
        pool
    }

    /// [`ThreadPool::new`] without waiting for the workers to run: the pool is usable at
    /// once (a job's chunks go to the threads running; a worker that starts later joins
    /// the job then running, if any). A model spawns its pool, compiles, and only then
    /// waits ([`ThreadPool::wait_until_started`]): on a busy machine the scheduler may
    /// start a new thread a time slice late (2-3 ms at 2 threads and a load of 3.5, more
    /// than a small network's whole compile).
    pub(crate) fn spawn(threads: usize, spin: Duration) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            parts: (0..threads).map(|_| PartRange(AtomicU64::new(0))).collect(),
            chunk: AtomicUsize::new(1),
            guided_job: AtomicBool::new(false),
            guided: !crate::knobs::off("CNNC_POOL_GUIDED"),
            shift: AtomicUsize::new(0),
            rotate: crate::knobs::forced("CNNC_SPLIT_ROTATE") == Some(true),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            spin,
            started: AtomicUsize::new(0),
            trace: (crate::knobs::forced("CNNC_POOL_TRACE") == Some(true)).then(|| Trace {
                tag: AtomicUsize::new(0),
                origin: Instant::now(),
                spans: (0..threads).map(|_| SpanSlot::default()).collect(),
                jobs: Mutex::new(Vec::with_capacity(1 << 16)),
            }),
        });
        for index in 1..threads {
            let a = Assignment {
                shared: shared.clone(),
                index,
            };
            if let Some(a) = hire_idle(a) {
                // Detached: a dropped pool's workers go idle rather than being joined.
                std::thread::Builder::new()
                    .name("cnnc-worker".into())
                    .spawn(move || worker_thread(a))
                    .expect("spawning a worker thread");
            }
        }
        ThreadPool {
            shared,
            workers: threads - 1,
            submit: Mutex::new(()),
        }
    }

    /// Returns once every worker runs. A new thread allocates as it starts (std keeps its
    /// name, the worker its mailbox): a model waits before its first run, so that a worker
    /// the scheduler starts late does not allocate during a run (`run_into` allocates
    /// nothing, `tests/jit_run_no_alloc.rs`). An idle worker handed the pool counts as
    /// running at once: it allocates nothing to join.
    pub(crate) fn wait_until_started(&self) {
        while self.shared.started.load(Ordering::Acquire) < self.workers {
            std::thread::yield_now();
        }
    }

    /// One thread per available CPU, spinning 200 us before parking.
    pub fn with_available_parallelism() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(n, Duration::from_micros(200))
    }

    /// The jobs traced since the last call (`CNNC_POOL_TRACE=1` when the pool was made;
    /// otherwise none), in order.
    pub fn take_trace(&self) -> Vec<JobTrace> {
        self.shared.trace.as_ref().map_or(Vec::new(), |t| {
            let mut jobs = t.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let cap = jobs.capacity();
            std::mem::replace(&mut *jobs, Vec::with_capacity(cap))
        })
    }

    /// Labels the jobs traced from now on (with `CNNC_POOL_TRACE=1`; else nothing).
    pub fn set_tag(&self, tag: usize) {
        if let Some(t) = &self.shared.trace {
            t.tag.store(tag, Ordering::Relaxed);
        }
    }

    /// Total threads, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(thread, range)` over chunks that together cover `0..units` once, on this
    /// thread (thread 0) and the workers (see the module docs); each thread's calls are
    /// sequential. Panics (after all chunks taken are done) if any call panicked.
    pub fn split(&self, units: usize, f: impl Fn(usize, Range<usize>) + Sync) {
        self.split_in_chunks(units, CHUNKS_PER_PART, f)
    }

    /// [`ThreadPool::split`] with each thread's part computed in `chunks_per_part` chunks
    /// (at least 1): 1 for kernels whose every call repeats a large fixed cost (a chunk taken
    /// by a thread done early is then a whole part).
    pub fn split_in_chunks(
        &self,
        units: usize,
        chunks_per_part: usize,
        f: impl Fn(usize, Range<usize>) + Sync,
    ) {
        let parts = self.threads();
        if parts == 1 || units <= 1 || units > u32::MAX as usize {
            f(0, 0..units);
            return;
        }
        let _guard = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        for (i, p) in s.parts.iter().enumerate() {
            p.set(part_range(units, parts, i));
        }
        let chunk = units.div_ceil(parts * chunks_per_part.max(1));
        s.chunk.store(chunk, Ordering::Relaxed);
        // A job of one chunk a part keeps its parts whole (each call repeats a large cost).
        s.guided_job
            .store(s.guided && chunks_per_part >= 2, Ordering::Relaxed);
        if s.rotate {
            let next = (s.shift.load(Ordering::Relaxed) + 1) % parts;
            s.shift.store(next, Ordering::Relaxed);
        }
        let job = Job { f: &f };
        let submit = s.trace.as_ref().map_or(0, |t| t.now());
        // A worker uses the job only between incrementing `active` and seeing the pointer
        // non-null, and decrementing `active`; the pointer is cleared and `active` waited
        // for below before `job` goes out of scope.
        s.job
            .store(&job as *const Job as *mut Job<'static>, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| s.work(&job, 0)));
        if mine.is_err() {
            // Take what is left, so that the workers stop soon.
            for p in s.parts.iter() {
                while p.take(usize::MAX, false, false).is_some() {}
            }
        }
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.load(Ordering::SeqCst) > 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Some(t) = &s.trace {
            let done = t.now();
            let threads = (t.spans.iter())
                .map(|sp| std::mem::take(&mut *sp.0.lock().unwrap_or_else(|e| e.into_inner())))
                .collect();
            let mut jobs = t.jobs.lock().unwrap_or_else(|e| e.into_inner());
            // A bounded record: past its capacity (set at creation) jobs go untraced.
            if jobs.len() < jobs.capacity() {
                jobs.push(JobTrace {
                    tag: t.tag.load(Ordering::Relaxed),
                    units,
                    submit,
                    done,
                    threads,
                });
            }
        }
        if let Err(p) = mine {
            s.panicked.store(false, Ordering::Relaxed);
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread panicked while running a job");
        }
    }
    /// Runs `f(offset, part)` for one contiguous part of `data` per thread, part 0 on this
    /// thread; parts start at multiples of `align` elements (`offset` is where `part`
    /// starts in `data`). For plain copies and fills, whose elements have no order.
    pub fn split_slice<T: Send>(
        &self,
        data: &mut [T],
        align: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let parts = self.threads();
        let (len, align) = (data.len(), align.max(1));
        let start = |i: usize| (part_range(len.div_ceil(align), parts, i).start * align).min(len);
        // Each part behind its own (uncontended) lock: the one way to hand disjoint `&mut`
        // parts to the workers without `unsafe`; on the stack up to STACK_PARTS threads.
        const STACK_PARTS: usize = 8;
        let mut stack: [Mutex<&mut [T]>; STACK_PARTS] = Default::default();
        let mut heap = Vec::new();
        let slots: &mut [Mutex<&mut [T]>] = if parts <= STACK_PARTS {
            &mut stack[..parts]
        } else {
            heap.resize_with(parts, Default::default);
            &mut heap
        };
        let mut rest = data;
        for (i, slot) in slots.iter_mut().enumerate() {
            let (part, tail) = rest.split_at_mut(start(i + 1) - start(i));
            *slot.get_mut().unwrap_or_else(|e| e.into_inner()) = part;
            rest = tail;
        }
        let slots = &*slots;
        self.split(parts, |_, range| {
            for i in range {
                let mut part = slots[i].lock().unwrap_or_else(|e| e.into_inner());
                f(start(i), &mut part);
            }
        });
    }
}

/// Worker `index` of the pool sharing `s`, until the pool is dropped.
fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin first, then park.
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || t0.elapsed() < s.spin {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
            while s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            *g -= 1;
        }
        // Announce, then look: `split` clears the pointer before it waits for `active`, so
        // a job seen here is still running (if it has finished, the pointer is null or the
        // next job's, which is as good: its chunks are claimed atomically).
        s.active.fetch_add(1, Ordering::SeqCst);
        let job = s.job.load(Ordering::SeqCst);
        if !job.is_null() {
            #[allow(unsafe_code)] // The job's closure, borrowed across threads for its duration.
            // SAFETY: `split` published `job` before bumping the epoch, and clears it and
            // waits for `active` to drop to zero before `job` goes out of scope; we
            // incremented `active` before loading the pointer (both SeqCst), so either the
            // load saw null or `split` is waiting for our decrement below.
            let job = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| s.work(job, index))).is_err() {
                s.panicked.store(true, Ordering::Release);
                for p in s.parts.iter() {
                    while p.take(usize::MAX, false, false).is_some() {}
                }
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Not joined: the workers leave [`worker`] at the shutdown and go idle ([`worker_thread`]).
/// No job is running (`split` borrows the pool), so none still uses the pool's closures.
impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _g = (self.shared.sleepers.lock()).unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

/// Runs jobs `0..n` on the pool's threads (or on this one without a pool), each thread
/// taking the next job not yet taken, so that a few long jobs (packing a Winograd layer,
/// compiling a large kernel) do not leave the other threads idle. Each thread makes its own
/// `state` (e.g. a compilation context) once and passes it to every job it runs. Returns the
/// results in the jobs' order, or the first job's error.
pub fn run_jobs<S, T: Send>(
    n: usize,
    pool: Option<&ThreadPool>,
    state: impl Fn() -> S + Sync,
    job: impl Fn(&mut S, usize) -> crate::error::Result<T> + Sync,
) -> crate::error::Result<Vec<T>> {
    let results: Vec<Mutex<Option<crate::error::Result<T>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    // A thread may be handed a second part (another's, not started): it makes its state
    // only once it has a job.
    let work = || {
        let mut s = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let r = job(s.get_or_insert_with(&state), i);
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
    };
    match pool {
        Some(p) if n > 1 => p.split(p.threads(), |_, _| work()),
        _ => work(),
    }
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(crate::error::Error::Internal("a job did not run".into())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn takes(part: Range<usize>, n: usize, back: bool, guided: bool) -> Vec<Range<usize>> {
        let p = PartRange(AtomicU64::new(0));
        p.set(part);
        std::iter::from_fn(|| p.take(n, back, guided)).collect()
    }

    #[test]
    fn guided_takes_halve_what_is_left() {
        // Chunks of 3 from the front: whole chunks while half of what is left is more.
        let sizes: Vec<usize> = takes(0..16, 3, false, true)
            .iter()
            .map(|r| r.len())
            .collect();
        assert_eq!(sizes, [3, 3, 3, 3, 2, 1, 1]);
        // From the back, at most half of what is left each time.
        assert_eq!(takes(4..11, 100, true, true), [7..11, 5..7, 4..5]);
        // Unguided: the chunk, the rest.
        assert_eq!(takes(0..7, 3, false, false), [0..3, 3..6, 6..7]);
        assert_eq!(takes(4..11, 100, true, false), vec![(4..11)]);
    }
}
