//! A dropped pool's worker threads go idle and the next pool takes them
//! (`jit::threads`): no new thread to wait for in a later model's compile. One test in this
//! binary: the idle workers are the process's.
use cnnc::jit::threads::{idle_worker_count, release_idle_workers, MAX_IDLE_WORKERS};
use cnnc::jit::ThreadPool;
use std::collections::HashSet;
use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Runs jobs on `pool` until a worker has taken a chunk, checking every job covers its
/// range once; the worker threads seen.
fn worker_ids(pool: &ThreadPool) -> HashSet<ThreadId> {
    let caller = std::thread::current().id();
    let seen = Mutex::new(HashSet::new());
    let start = Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no worker took a chunk"
        );
        let done: Vec<Mutex<u32>> = (0..64).map(|_| Mutex::new(0)).collect();
        pool.split(64, |t, r| {
            let me = std::thread::current().id();
            assert_eq!(t == 0, me == caller, "thread 0 is the caller");
            if t > 0 {
                seen.lock().unwrap().insert(me);
            }
            // Long enough chunks that a woken worker finds some left.
            std::thread::sleep(Duration::from_micros(50));
            for u in r {
                *done[u].lock().unwrap() += 1;
            }
        });
        assert!(done.iter().all(|d| *d.lock().unwrap() == 1));
    }
    seen.into_inner().unwrap()
}

fn wait_for_idle(n: usize) {
    let start = Instant::now();
    while idle_worker_count() != n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} idle workers, expected {n}",
            idle_worker_count()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dropped_pools_leave_their_workers_to_the_next() {
    release_idle_workers();
    wait_for_idle(0);

    let first = ThreadPool::new(2, Duration::from_micros(200));
    let a = worker_ids(&first);
    assert_eq!(a.len(), 1);
    drop(first);
    wait_for_idle(1);

    // The next pool takes the idle worker: the same thread, none left idle.
    let second = ThreadPool::new(3, Duration::from_micros(200));
    assert_eq!(idle_worker_count(), 0);
    let mut b = HashSet::new();
    while b.len() < 2 {
        b.extend(worker_ids(&second));
    }
    assert!(a.is_subset(&b), "the first pool's worker serves the second");
    drop(second);
    wait_for_idle(2);

    // Pools one after another, each made once the last one's workers are idle: the same
    // two threads throughout.
    for _ in 0..20 {
        let p = ThreadPool::new(3, Duration::ZERO);
        assert!(
            worker_ids(&p).is_subset(&b),
            "a new thread despite idle workers"
        );
        drop(p);
        wait_for_idle(2);
    }
    // Made at once, the next pool may find them still leaving the last one and start
    // threads of its own; the idle list stays bounded.
    for _ in 0..2 * MAX_IDLE_WORKERS {
        drop(ThreadPool::new(3, Duration::ZERO));
    }
    assert!(idle_worker_count() <= MAX_IDLE_WORKERS);

    // Released workers exit; a later pool starts a thread of its own. A worker of the
    // pools just dropped may still be on its way to idle (it parks after leaving its
    // pool, on its own time): release until none has come for a while.
    let start = Instant::now();
    let mut quiet = 0;
    while quiet < 20 {
        release_idle_workers();
        std::thread::sleep(Duration::from_millis(5));
        quiet = if idle_worker_count() == 0 {
            quiet + 1
        } else {
            0
        };
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "released workers keep coming back"
        );
    }
    let third = ThreadPool::new(2, Duration::from_micros(200));
    let c = worker_ids(&third);
    assert!(c.is_disjoint(&b), "released workers are not reused");
}
