//! `Model::run_into` allocates nothing once the model has run once: every golden network
//! (conv, fc, pools, batchnorm, add, concat, pad, softmax...) at -O0 and -O2, batch 1 and 3,
//! 1 and 2 threads, counted by a global allocator. One test in this binary, so no other
//! test allocates concurrently.
mod common;
use cnnc::{compile, OptLevel, Options};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// The kernel's id of the thread that allocated last: a failure names it (the run's own
/// thread, or a pool worker or background thread allocating meanwhile).
static LAST_TID: AtomicUsize = AtomicUsize::new(0);

fn count() {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    #[cfg(target_os = "linux")]
    // SAFETY: gettid takes no arguments and cannot fail (no allocation either).
    LAST_TID.store(
        unsafe { libc::syscall(libc::SYS_gettid) } as usize,
        Ordering::Relaxed,
    );
}

/// The name of thread `tid` of this process, if it still runs.
fn thread_name(tid: usize) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map_or_else(|_| "exited".into(), |n| n.trim().to_string())
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn run_into_allocates_nothing_in_steady_state() {
    for case in common::golden_cases() {
        for (level, batch, threads) in [
            (OptLevel::O0, 1, 1),
            (OptLevel::O2, 1, 2),
            (OptLevel::O2, 3, 1),
            (OptLevel::O0, 3, 2),
        ] {
            let opts = Options {
                opt_level: level,
                batch,
                threads,
                ..Default::default()
            };
            let model = compile(&case.graph, &opts).unwrap();
            let mut outs = model.run(&case.input).unwrap();
            let before = ALLOCS.load(Ordering::Relaxed);
            model.run_into(&case.input, &mut outs).unwrap();
            let n = ALLOCS.load(Ordering::Relaxed) - before;
            let tid = LAST_TID.load(Ordering::Relaxed);
            assert_eq!(
                n,
                0,
                "{} ({level}, batch {batch}, {threads} threads): {n} allocations, the last by \
                 thread {tid} ({})",
                case.name,
                thread_name(tid)
            );
        }
    }
}
