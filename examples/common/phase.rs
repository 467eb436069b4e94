//! The host's two-thread phase, for the examples that time two threads
//! (`examples/modelab.rs`, `examples/threadscale.rs`): on the Zen 5 host of session 13 the
//! two vCPUs sometimes share a die's L3 and sometimes not, minutes or seconds apart, and a
//! cache line one core wrote then costs the other 2-2.5x as much to read or overwrite
//! (`threadscale xcore`). SqueezeNet at two threads took 1.2 ms in the first phase and 1.8 in
//! the second.
use std::time::Instant;

/// Below this many microseconds [`cross_core_us`] is the fast phase (6-7 us against 13-16).
pub const FAST_BELOW_US: f64 = 10.0;

/// Microseconds a thread takes to read 512 KB (a load per line) that the other thread of
/// a pool of two has just written: 6-7 when the two vCPUs share a die's L3, 13-16 when they
/// do not (Zen 5 host, session 13); NaN when one thread did both halves five times.
pub fn cross_core_us(pool: &cnnc::jit::ThreadPool) -> f64 {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let halves = [
        Mutex::new(vec![0u32; 1 << 17]),
        Mutex::new(vec![0u32; 1 << 17]),
    ];
    let writer = [AtomicUsize::new(0), AtomicUsize::new(0)];
    for _ in 0..5 {
        pool.split(2, |thread, r| {
            for h in r {
                for (i, x) in halves[h].lock().unwrap().iter_mut().enumerate() {
                    *x = i as u32;
                }
                writer[h].store(thread, Ordering::Relaxed);
            }
        });
        let w = [0, 1].map(|h| writer[h].load(Ordering::Relaxed));
        if w[0] == w[1] {
            continue;
        }
        let ns = [AtomicU64::new(0), AtomicU64::new(0)];
        pool.split(2, |thread, r| {
            for _ in r {
                // The half the other thread wrote.
                let h = usize::from(w[1] != thread);
                let t = Instant::now();
                let v = halves[h].lock().unwrap();
                std::hint::black_box(v.chunks(16).fold(0u32, |a, c| a ^ c[0]));
                ns[thread].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        });
        // The mean of the two threads' (as `threadscale xcore 1024`'s figures).
        return (ns[0].load(Ordering::Relaxed) + ns[1].load(Ordering::Relaxed)) as f64 / 2e3;
    }
    f64::NAN
}
