//! Median time of a conv with 1 and 2 threads, alternating:
//! `threadscale [3x3|1x1] [rounds]` (conv 3x3 64->64 at 56x56, or pointwise 256->64 at
//! 56x56 with bias and ReLU), `threadscale conv C HW K F S P [rounds]` (any square conv,
//! with bias and ReLU).
//!
//! `threadscale pool [UNIT_NS] [GAP_US]`: the thread pool alone, 500 jobs of 190 units of
//! busy work (200 ns each) with a busy gap between jobs (80 us) as between layers: each
//! job's time against its work on one thread, and how many units each thread computed.
//!
//! `threadscale xcore [KB] [rounds]`: what touching data the other core wrote costs. Each
//! round, two threads each write one half of a buffer of `KB` kilobytes (as a layer's two
//! parts), then each reads (one load per line), overwrites, reads in tile columns (3 lines
//! of each of 128 planes at a time, as the pointwise GEMM) or overwrites in tile columns (3
//! lines of each of 16 planes, as a GEMM tile's stores) one half: the one it wrote
//! (same) or the other thread's (cross), in turn; minima and medians of that phase.
//!
//! `threadscale phase`: the host's two-thread phase now (`examples/common/phase.rs`): the
//! microseconds of the cross-core probe, the median of 5, then `fast` or `slow`
//! (`scripts/compare_peers.py` labels its two-thread rounds with it).
//!
//! `threadscale GRAPH.yaml [rounds]`: a whole network compiled for 1 and for 2 threads,
//! profiled alternately; per layer the minimum over the rounds at 1 and 2 threads (at 2,
//! over the rounds of each of the host's phases, `examples/common/phase.rs`) and their
//! ratio (the minimum is what the code does when it has the cores; on a shared
//! machine the medians mostly measure the load), then the whole run's minimum and median.
use cnnc::jit::*;
use std::time::{Duration, Instant};

#[path = "common/ab.rs"]
mod ab;
#[path = "common/phase.rs"]
mod phase;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("3x3");
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    if which.ends_with(".yaml") {
        return network(which, rounds);
    }
    if which == "pool" {
        return pool_latency(&args[2..]);
    }
    if which == "xcore" {
        return cross_core(&args[2..]);
    }
    if which == "l3" {
        return l3_reads(&args[2..]);
    }
    if which == "phase" {
        let mut us: Vec<f64> = (0..5).map(|_| phase::cross_core_us()).collect();
        us.sort_by(f64::total_cmp);
        let fast = us[2] < phase::FAST_BELOW_US;
        return println!("{:.1} {}", us[2], if fast { "fast" } else { "slow" });
    }
    let spec = match which {
        "1x1" => ConvSpec {
            bias: true,
            relu: true,
            ..ConvSpec::square(256, 56, 64, 1, 1, 0)
        },
        // `conv C HW K F S P [rounds]`, with bias and ReLU.
        "conv" => {
            let a: Vec<usize> = args[2..8].iter().map(|s| s.parse().unwrap()).collect();
            ConvSpec {
                bias: true,
                relu: true,
                ..ConvSpec::square(a[0], a[1], a[2], a[3], a[4], a[5])
            }
        }
        _ => ConvSpec::square(64, 56, 64, 3, 1, 1),
    };
    let rounds = match which {
        "conv" => args.get(8).and_then(|s| s.parse().ok()).unwrap_or(100),
        _ => rounds,
    };
    let mut km = KernelModule::new().unwrap();
    km.set_winograd(std::env::var_os("CNNC_NO_WINOGRAD").is_none());
    let p = km.add_conv(&spec).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let x: Vec<f32> = (0..spec.input_len())
        .map(|i| (i % 17) as f32 * 0.1 - 0.8)
        .collect();
    let bias = spec.bias.then(|| vec![0.1; spec.out_c]);
    let packed = pack_conv_weights(&spec, &vec![0.01; spec.weight_len()], bias.as_deref()).unwrap();
    let mut out = vec![0.0; spec.output_len()];
    let pools = [
        ThreadPool::new(1, Duration::ZERO),
        ThreadPool::new(2, Duration::from_micros(200)),
    ];
    let mut scratch = vec![0.0; k.scratch_len() * 2];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, pool) in pools.iter().enumerate() {
            let t = Instant::now();
            k.run_parallel(pool, &x, &packed, None, &mut out, &mut scratch)
                .unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (i, t) in times.iter_mut().enumerate() {
        let (min, median) = min_median(t);
        println!(
            "{which} {} thread(s): min {min:.3} ms, median {median:.3} ms, {:.1} GFLOP/s (min)",
            i + 1,
            spec.flops() as f64 / min / 1e6
        );
    }
    println!(
        "{} work units; 2 threads / 1: {:.2}x (min), {:.2}x (median)",
        k.work_units(),
        times[0][0] / times[1][0],
        times[0][rounds / 2] / times[1][rounds / 2]
    );
}

fn network(path: &str, rounds: usize) {
    let g = ab::graph(path);
    let models: Vec<cnnc::Model> = [1, 2].iter().map(|&t| ab::compile(&g, t)).collect();
    let x = ab::input(&g);
    // Huge pages for what the compiles (and the first runs' arenas) faulted in on small
    // pages, as `cnnc bench` does.
    for m in &models {
        m.run(&x).unwrap();
    }
    cnnc::memory::settle_huge_pages();
    let mut layers: Vec<Vec<Vec<f64>>> = vec![Vec::new(), Vec::new()];
    let mut totals = [Vec::new(), Vec::new()];
    // Per round, the run's time outside its profiled steps (between layers, the pool's
    // hand-offs, the profile's own bookkeeping).
    let mut outside = [Vec::new(), Vec::new()];
    let mut names = Vec::new();
    // Each round's phase (`phase::cross_core_us`).
    let mut fast = Vec::new();
    for _ in 0..rounds {
        fast.push(phase::cross_core_us() < phase::FAST_BELOW_US);
        for (i, m) in models.iter().enumerate() {
            let t = Instant::now();
            let (_, prof) = m.profile(&x).unwrap();
            let total = t.elapsed().as_secs_f64() * 1e3;
            totals[i].push(total);
            let steps: f64 = prof.iter().map(|l| l.time.as_secs_f64() * 1e3).sum();
            outside[i].push(total - steps);
            if layers[i].is_empty() {
                layers[i] = vec![Vec::new(); prof.len()];
                names = prof
                    .iter()
                    .map(|l| (l.name.clone(), l.op.clone()))
                    .collect();
            }
            for (l, p) in layers[i].iter_mut().zip(&prof) {
                l.push(p.time.as_secs_f64() * 1e3);
            }
        }
    }
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    // The two-thread minima over the rounds of each phase.
    let in_phase = |v: &[f64], f: bool| -> Vec<f64> {
        v.iter()
            .zip(&fast)
            .filter(|(_, &p)| p == f)
            .map(|(t, _)| *t)
            .collect()
    };
    let n_fast = fast.iter().filter(|&&f| f).count();
    println!(
        "rounds: {n_fast} in the fast phase, {} in the slow one (2T columns: minimum over each)",
        rounds - n_fast
    );
    let mut sums = [0.0; 3];
    println!("layer     1T min ms  2T fast ms  2T slow ms  1T/fast 1T/slow  op");
    for (j, (name, op)) in names.iter().enumerate() {
        let a = min(&layers[0][j]);
        let (f, sl) = (
            min(&in_phase(&layers[1][j], true)),
            min(&in_phase(&layers[1][j], false)),
        );
        for (sum, v) in sums.iter_mut().zip([a, f, sl]) {
            *sum += v;
        }
        println!(
            "{name:<8} {a:>10.3} {:>11} {:>11} {:>7} {:>7}  {op}",
            cell(f, 3),
            cell(sl, 3),
            cell(a / f, 2),
            cell(a / sl, 2)
        );
    }
    println!(
        "sum of minima: {:.3} / {} (fast) / {} (slow) ms = {}x / {}x",
        sums[0],
        cell(sums[1], 3),
        cell(sums[2], 3),
        cell(sums[0] / sums[1], 2),
        cell(sums[0] / sums[2], 2)
    );
    for (i, t) in totals.iter_mut().enumerate() {
        let (min, median) = min_median(t);
        let (_, outside) = min_median(&mut outside[i]);
        println!(
            "{} thread(s), whole run: min {min:.3} ms, median {median:.3} ms; outside the steps: median {outside:.3} ms",
            i + 1
        );
    }
    for f in [true, false] {
        let mut t = in_phase(&totals[1], f);
        if !t.is_empty() {
            let (min, median) = min_median(&mut t);
            let name = if f { "fast" } else { "slow" };
            println!("2 threads, {name} phase: min {min:.3} ms, median {median:.3} ms");
        }
    }
}

/// `v` with `decimals` decimals, or "-" where a phase had no round (its minimum infinite,
/// a ratio to it zero).
fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() && v != 0.0 {
        format!("{v:.decimals$}")
    } else {
        "-".to_string()
    }
}

fn busy(d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {}
}

fn pool_latency(args: &[String]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let arg = |i: usize, default: u64| args.get(i).map_or(default, |s| s.parse().unwrap());
    let (unit_ns, gap_us) = (arg(0, 200), arg(1, 80));
    let pool = ThreadPool::new(2, Duration::from_micros(200));
    let by = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let mut times = Vec::new();
    for _ in 0..500 {
        busy(Duration::from_micros(gap_us));
        let t = Instant::now();
        pool.split(190, |thread, r| {
            busy(Duration::from_nanos(unit_ns * r.len() as u64));
            by[thread].fetch_add(r.len(), Ordering::Relaxed);
        });
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (min, median) = min_median(&mut times);
    println!(
        "job: min {min:.1} us, median {median:.1} us ({:.1} us of work); units by thread {} / {}",
        190.0 * unit_ns as f64 / 1e3,
        by[0].load(Ordering::Relaxed),
        by[1].load(Ordering::Relaxed)
    );
}

fn cross_core(args: &[String]) {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().unwrap());
    let (kb, rounds) = (arg(0, 1024), arg(1, 400));
    let half = kb * 256 / 2;
    // Two threads of our own (not the pool: a late worker would leave both halves to the
    // other thread), meeting at a spinning barrier between the phases.
    let arrived = AtomicUsize::new(0);
    let barrier = |step: usize| {
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < 2 * (step + 1) {
            std::hint::spin_loop();
        }
    };
    let sink = AtomicU32::new(0);
    let bufs: Vec<Mutex<Vec<u32>>> = (0..2).map(|_| Mutex::new(vec![0u32; half])).collect();
    let times: Vec<Mutex<[Vec<f64>; 8]>> = (0..2).map(|_| Mutex::new(Default::default())).collect();
    std::thread::scope(|sc| {
        for me in 0..2 {
            let (bufs, times, barrier, sink) = (&bufs, &times, &barrier, &sink);
            sc.spawn(move || {
                for round in 0..rounds {
                    for (i, x) in bufs[me].lock().unwrap().iter_mut().enumerate() {
                        *x = (i + round) as u32;
                    }
                    barrier(2 * round);
                    // Read same, read cross, write same, write cross, then reads in tile
                    // columns (same, cross).
                    let mode = round % 8;
                    let t = Instant::now();
                    let mut v = bufs[me ^ (mode & 1)].lock().unwrap();
                    if mode < 2 {
                        // One load per cache line (an xor: no latency chain to speak of).
                        let s = v.chunks(16).fold(0u32, |a, c| a ^ c[0]);
                        sink.fetch_xor(s, Ordering::Relaxed);
                    } else if mode < 4 {
                        v.fill(round as u32);
                    } else if mode >= 6 {
                        // As a GEMM tile stores: 3 lines of each of 16 planes, then the next.
                        let plane = half / 16;
                        for col in (0..plane).step_by(48) {
                            for c in 0..16 {
                                let end = (col + 48).min(plane);
                                v[c * plane + col..c * plane + end].fill(round as u32);
                            }
                        }
                    } else {
                        // As a pointwise GEMM reads its input: 3 lines (48 floats) of each of
                        // 128 planes, then the next 3 lines of each.
                        let plane = half / 128;
                        let mut s = 0u32;
                        for col in (0..plane).step_by(48) {
                            for c in 0..128 {
                                let row = &v[c * plane + col..c * plane + (col + 48).min(plane)];
                                s ^= row.iter().step_by(16).fold(0, |a, x| a ^ x);
                            }
                        }
                        sink.fetch_xor(s, Ordering::Relaxed);
                    }
                    drop(v);
                    let el = t.elapsed().as_secs_f64() * 1e6;
                    times[me].lock().unwrap()[mode].push(el);
                    barrier(2 * round + 1);
                }
            });
        }
    });
    let names = [
        "reads same",
        "reads cross",
        "writes same",
        "writes cross",
        "columns same",
        "columns cross",
        "col-writes same",
        "col-writes cross",
    ];
    for (me, t) in times.iter().enumerate() {
        let mut t = t.lock().unwrap();
        for (name, t) in names.iter().zip(t.iter_mut()) {
            let (min, median) = min_median(t);
            println!(
                "{kb} KB, thread {me} {name:>12}: min {min:.1} us, median {median:.1} us ({:.1} GB/s at the median)",
                kb as f64 * 512.0 / median / 1e3
            );
        }
    }
}

/// `threadscale l3 [MB] [rounds]`: two threads each read a buffer of their own of `MB`
/// megabytes (larger than L2, as a network's weights), over and over, at the same time;
/// each thread's time per pass (as each core's L3, or memory, delivers it).
fn l3_reads(args: &[String]) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |s| s.parse().unwrap());
    let (mb, rounds) = (arg(0, 8), arg(1, 50));
    let sink = AtomicU32::new(0);
    let times: Vec<Mutex<Vec<f64>>> = (0..2).map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|sc| {
        for me in 0..2 {
            let (times, sink) = (&times, &sink);
            sc.spawn(move || {
                let v: Vec<u32> = (0..mb << 18).map(|i| i as u32).collect();
                for _ in 0..rounds {
                    let t = Instant::now();
                    let s = v.chunks(16).fold(0u32, |a, c| a ^ c[0]);
                    sink.fetch_xor(s, Ordering::Relaxed);
                    times[me]
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1e6);
                }
            });
        }
    });
    for (me, t) in times.iter().enumerate() {
        let (min, median) = min_median(&mut t.lock().unwrap());
        println!(
            "{mb} MB, thread {me}: min {min:.0} us, median {median:.0} us ({:.1} GB/s at the median)",
            mb as f64 * 1.048576e6 / median / 1e3
        );
    }
}

/// Sorts `t` and returns its minimum and median.
fn min_median(t: &mut [f64]) -> (f64, f64) {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[t.len() / 2])
}
