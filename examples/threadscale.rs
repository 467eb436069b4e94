//! Median time of a conv with 1 and 2 threads, alternating:
//! `threadscale [3x3|1x1] [rounds]` (conv 3x3 64->64 at 56x56, or pointwise 256->64 at
//! 56x56 with bias and ReLU).
use cnnc::jit::*;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("3x3");
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let spec = match which {
        "1x1" => ConvSpec {
            bias: true,
            relu: true,
            ..ConvSpec::square(256, 56, 64, 1, 1, 0)
        },
        _ => ConvSpec::square(64, 56, 64, 3, 1, 1),
    };
    let mut km = KernelModule::new().unwrap();
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
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{which} {} thread(s): min {:.3} ms, median {:.3} ms, {:.1} GFLOP/s (min)",
            i + 1,
            t[0],
            t[t.len() / 2],
            spec.flops() as f64 / t[0] / 1e6
        );
    }
    println!(
        "2 threads / 1: {:.2}x (min), {:.2}x (median)",
        times[0][0] / times[1][0],
        times[0][rounds / 2] / times[1][rounds / 2]
    );
}
