//! The host's two-thread phase, for the examples that time two threads
//! (`examples/modelab.rs`, `examples/threadscale.rs`): on the Zen 5 host of session 13 the
//! two vCPUs sometimes share a die's L3 and sometimes not, minutes or seconds apart, and a
//! cache line one core wrote then costs the other 2-2.5x as much to read or overwrite
//! (`threadscale xcore`). SqueezeNet at two threads took 1.2 ms in the first phase and 1.8 in
//! the second. On a host loaded by other sessions' builds a two-thread process rarely gets
//! both cores, and with autogroups (`/proc/sys/kernel/sched_autogroup_enabled`) `nice` alone
//! does not help: run it in a session of its own that first writes `-15` to
//! `/proc/self/autogroup` (briefly: it takes the cores from the others).
use std::time::Instant;

/// Below this many microseconds [`cross_core_us`] is the fast phase (6-7 us against 13-16).
pub const FAST_BELOW_US: f64 = 10.0;

/// Microseconds a thread takes to read 512 KB (a load per line) that another thread has just
/// written: 6-7 when the two vCPUs share a die's L3, 13-16 when they do not (Zen 5 host,
/// session 13). Two threads of its own, each writing a half and then reading the other's,
/// meeting at a spinning barrier (a pool's late worker would leave both halves to one
/// thread); the mean of the two reads, NaN if the other thread did not run within 5 ms.
pub fn cross_core_us() -> f64 {
    // Past any pool worker's spin after its last job (200 us): a spinning worker could hold
    // a core, leaving the two probe threads on one core (which reads as the fast phase).
    std::thread::sleep(std::time::Duration::from_millis(1));
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let halves = [
        Mutex::new(vec![0u32; 1 << 17]),
        Mutex::new(vec![0u32; 1 << 17]),
    ];
    let arrived = AtomicUsize::new(0);
    let ns = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for me in 0..2 {
            let (halves, arrived, ns) = (&halves, &arrived, &ns);
            sc.spawn(move || {
                for (i, x) in halves[me].lock().unwrap().iter_mut().enumerate() {
                    *x = i as u32;
                }
                arrived.fetch_add(1, Ordering::AcqRel);
                let t0 = Instant::now();
                while arrived.load(Ordering::Acquire) < 2 {
                    std::hint::spin_loop();
                    if t0.elapsed().as_millis() > 5 {
                        // The other thread is not running: no figure.
                        ns.fetch_add(u64::MAX / 4, Ordering::Relaxed);
                        return;
                    }
                }
                let t = Instant::now();
                let v = halves[1 - me].lock().unwrap();
                std::hint::black_box(v.chunks(16).fold(0u32, |a, c| a ^ c[0]));
                ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            });
        }
    });
    let ns = ns.load(Ordering::Relaxed);
    if ns >= u64::MAX / 4 {
        f64::NAN
    } else {
        ns as f64 / 2e3
    }
}
