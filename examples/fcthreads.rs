//! fc 4096->1000 at batch 1 on 1 and 2 threads, alternating, weights hot (repeated runs):
//! `fcthreads [rounds]`.
use cnnc::jit::*;
use std::time::{Duration, Instant};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut spec = FcSpec::new(4096, 1000, 1);
    spec.bias = true;
    let mut km = KernelModule::new().unwrap();
    let pk = km.add_fc(&spec).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(pk).unwrap();
    let x: Vec<f32> = (0..4096).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let w: Vec<f32> = (0..spec.weight_len())
        .map(|i| (i % 13) as f32 * 0.01 - 0.06)
        .collect();
    let packed = pack_fc_weights(&spec, &w, Some(&vec![0.1; 1000])).unwrap();
    let mut out = vec![0.0; 1000];
    let pools = [
        ThreadPool::new(1, Duration::ZERO),
        ThreadPool::new(2, Duration::from_micros(200)),
    ];
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, pool) in pools.iter().enumerate() {
            let t = Instant::now();
            k.run_parallel(pool, &x, &packed, None, &mut out).unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    for (i, t) in times.iter_mut().enumerate() {
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "fc {} thread(s): min {:.1} us, median {:.1} us",
            i + 1,
            t[0],
            t[t.len() / 2]
        );
    }
}
