//! A small thread pool that splits one kernel's work range across threads.
//!
//! Waking a parked thread costs ~30 us on this kind of machine (70-110 us at p99), much more
//! than many layers take, so workers spin (bounded by `spin`) after each job before parking:
//! back-to-back layers reach a spinning worker in well under a microsecond.
//!
//! `split(units, f)` cuts `0..units` into `threads()` contiguous parts (part `i` is
//! `units*i/n .. units*(i+1)/n`), runs part 0 on the calling thread and the others on the
//! workers, and returns when all are done. The kernels compute every output element with the
//! same instructions whatever the split, so results do not depend on the thread count.
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type JobFn<'a> = dyn Fn(usize, Range<usize>) + Sync + 'a;

struct Job<'a> {
    f: &'a JobFn<'a>,
    units: usize,
    parts: usize,
}

fn part_range(units: usize, parts: usize, i: usize) -> Range<usize> {
    units * i / parts..units * (i + 1) / parts
}

struct Shared {
    epoch: AtomicUsize,
    done: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    spin: Duration,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    submit: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in total (the caller counts as one, so `threads - 1`
    /// workers are spawned); workers spin for `spin` after each job before parking.
    pub fn new(threads: usize, spin: Duration) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            spin,
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cnnc-worker-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// One thread per available CPU, spinning 200 us before parking.
    pub fn with_available_parallelism() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(n, Duration::from_micros(200))
    }

    /// Total threads, the caller included (the number of parts `split` makes).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(part, range)` for every part of `0..units`, part 0 on this thread.
    /// Panics (after all parts finished) if any part panicked.
    pub fn split(&self, units: usize, f: impl Fn(usize, Range<usize>) + Sync) {
        let parts = self.threads();
        if parts == 1 {
            f(0, 0..units);
            return;
        }
        let _guard = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job = Job {
            f: &f,
            units,
            parts,
        };
        s.done.store(0, Ordering::Relaxed);
        // The workers only dereference the pointer between seeing the new epoch and
        // incrementing `done`, and we wait for `done` below, so `job` outlives every use.
        s.job
            .store(&job as *const Job as *mut Job<'static>, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::Release);
        {
            let sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0, part_range(units, parts, 0))));
        let workers = parts - 1;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < workers {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Err(p) = mine {
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
        let job = s.job.load(Ordering::Acquire);
        #[allow(unsafe_code)] // The job's closure, borrowed across threads for its duration.
        // SAFETY: `split` published `job` before bumping the epoch and keeps it alive until
        // every worker has incremented `done` (below).
        let job = unsafe { &*job };
        let r = catch_unwind(AssertUnwindSafe(|| {
            (job.f)(index, part_range(job.units, job.parts, index))
        }));
        if r.is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self
                .shared
                .sleepers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
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
    let work = || {
        let mut s = state();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            let r = job(&mut s, i);
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
