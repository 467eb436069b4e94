//! Median time of conv 3x3 64->64 at 56x56 with 1 and 2 threads, alternating.
use cnnc::jit::*;
use std::time::{Duration, Instant};

fn main() {
    let spec = ConvSpec::square(64, 56, 64, 3, 1, 1);
    let mut km = KernelModule::new().unwrap();
    let p = km.add_conv(&spec).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let x = vec![0.5f32; spec.input_len()];
    let packed = pack_conv_weights(&spec, &vec![0.01; spec.weight_len()], None).unwrap();
    let mut out = vec![0.0; spec.output_len()];
    let pools = [
        ThreadPool::new(1, Duration::ZERO),
        ThreadPool::new(2, Duration::from_micros(200)),
    ];
    let mut scratch = vec![0.0; k.scratch_len() * 2];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..100 {
        for (i, pool) in pools.iter().enumerate() {
            let t = Instant::now();
            k.run_parallel(pool, &x, &packed, None, &mut out, &mut scratch)
                .unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (i, t) in times.iter_mut().enumerate() {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{} thread(s): min {:.2} ms, median {:.2} ms",
            i + 1,
            t[0],
            t[t.len() / 2]
        );
    }
}
