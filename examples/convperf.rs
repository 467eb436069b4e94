//! Quick conv timing: `cargo run --release --example convperf -- C HW K F S P [THREADS] [RESIDUAL]`
//! (RESIDUAL = 1 fuses a residual add before the relu). Environment: `CNNC_ISA`, `CNNC_NO_WINOGRAD=1`,
//! `CNNC_COPIES=n` (rotate through n copies of the weights, so that they come from memory),
//! `CNNC_OFFSET=n` (start the input, output and residual n floats after a cache line; default
//! 0: on a line, as the runtime's arena places every tensor), `CNNC_FLUSH_MB=n` (write n MB of
//! other memory before each run, untimed, as a network's other layers do: the layer then
//! starts with its input, output and weights out of the caches, and dirty lines to evict),
//! `CNNC_HUGE=1` (the input on transparent huge pages, as in a network's arena).
use cnnc::jit::*;
use cnnc::runtime::arena::AlignedBuf;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (c, hw, k, f, s, p) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let mut spec = ConvSpec::square(c, hw, k, f, s, p);
    spec.bias = true;
    spec.relu = true;
    spec.residual = a.get(7).copied().unwrap_or(0) != 0;
    let t0 = Instant::now();
    let mut km = KernelModule::new().unwrap();
    km.set_winograd(std::env::var_os("CNNC_NO_WINOGRAD").is_none());
    let pk = km.add_conv(&spec).unwrap();
    let code = km.finalize().unwrap();
    let kern = code.get(pk.clone()).unwrap();
    let ct = t0.elapsed();
    let offset: usize = std::env::var("CNNC_OFFSET").map_or(0, |v| v.parse().unwrap());
    let aligned = |len: usize, f: &dyn Fn(usize) -> f32| {
        let mut b = AlignedBuf::zeroed(len + offset, "convperf").unwrap();
        for (i, v) in b.as_mut_slice()[offset..].iter_mut().enumerate() {
            *v = f(i);
        }
        b
    };
    let mut xb = aligned(spec.input_len(), &|i| (i % 17) as f32 * 0.1 - 0.8);
    // CNNC_HUGE=1: the input on transparent huge pages, as the network's arena has it
    // (`cnnc::memory::HugeBuf`; 3.2 MB of 4 KiB pages is 800 TLB entries).
    let hx = std::env::var_os("CNNC_HUGE").map(|_| {
        let v = (0..spec.input_len()).map(|i| (i % 17) as f32 * 0.1 - 0.8);
        cnnc::memory::HugeBuf::from_vec(v.collect(), "convperf input").unwrap()
    });
    let x: &[f32] = match &hx {
        Some(h) => h,
        None => &xb.as_mut_slice()[offset..],
    };
    let w: Vec<f32> = (0..spec.weight_len())
        .map(|i| (i % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = vec![0.1; k];
    // CNNC_COPIES=n: rotate through n copies of the packed weights, as a network's
    // layers do, so that they come from memory rather than from L2.
    let copies: usize = std::env::var("CNNC_COPIES").map_or(1, |v| v.parse().unwrap());
    let packs: Vec<cnnc::memory::HugeBuf> = (0..copies)
        .map(|_| pk.pack_weights(&w, Some(&b)).unwrap())
        .collect();
    let mut round = 0;
    let mut ob = aligned(spec.output_len(), &|_| 0.0);
    let out = &mut ob.as_mut_slice()[offset..];
    let mut rb = aligned(spec.output_len(), &|i| (i % 11) as f32 * 0.05 - 0.3);
    let res = spec.residual.then_some(&rb.as_mut_slice()[offset..]);
    let threads = a.get(6).copied().unwrap_or(1);
    let pool = ThreadPool::new(threads, std::time::Duration::from_micros(200));
    let mut scratch = vec![0.0; kern.scratch_len() * threads];
    let mut times = Vec::new();
    let flush_mb: usize = std::env::var("CNNC_FLUSH_MB").map_or(0, |v| v.parse().unwrap());
    let mut junk = vec![0u8; flush_mb << 20];
    let t1 = Instant::now();
    while t1.elapsed().as_secs_f64() < 1.5 {
        let packed = &packs[round % copies];
        round += 1;
        for line in junk.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        let t = Instant::now();
        if threads > 1 {
            kern.run_parallel(&pool, x, packed, res, out, &mut scratch)
                .unwrap();
        } else {
            kern.run(x, packed, res, out, &mut scratch, 0..kern.work_units())
                .unwrap();
        }
        times.push(t.elapsed().as_secs_f64());
    }
    // The median too: on a shared host the best run can be 1.5x faster than the typical one.
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    println!(
        "{} {spec:?} threads {}\ncompile {:.2} ms, best {:.3} ms, {:.1} GFLOP/s, median {:.3} ms, {:.1} GFLOP/s",
        kern.method(),
        pool.threads(),
        ct.as_secs_f64() * 1e3,
        best * 1e3,
        spec.flops() as f64 / best / 1e9,
        median * 1e3,
        spec.flops() as f64 / median / 1e9
    );
}
