//! Quick fc timing: `cargo run --release --example fcperf -- IN OUT BATCH [hot]`: the best
//! time of the kernel and of a plain read of as many bytes, alternating (each after the
//! other has gone over its own buffer), or with `hot` each timed on its second run in a row
//! (weights in L3 when they fit).
use cnnc::jit::*;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .take(3)
        .map(|s| s.parse().unwrap())
        .collect();
    let hot = std::env::args().nth(4).as_deref() == Some("hot");
    let mut spec = FcSpec::new(a[0], a[1], a[2]);
    spec.bias = true;
    let mut km = KernelModule::new().unwrap();
    let pk = km.add_fc(&spec).unwrap();
    let code = km.finalize().unwrap();
    let kern = code.get(pk).unwrap();
    let x: Vec<f32> = (0..spec.input_len())
        .map(|i| (i % 17) as f32 * 0.1 - 0.8)
        .collect();
    let w: Vec<f32> = (0..spec.weight_len())
        .map(|i| (i % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = vec![0.1; spec.out_features];
    let packed = pack_fc_weights(&spec, &w, Some(&b)).unwrap();
    let mut out = vec![0.0; spec.output_len()];
    let buf: Vec<u32> = (0..packed.len() as u32).collect();
    let (mut best, mut best_bw) = (f64::MAX, f64::MAX);
    let t1 = Instant::now();
    let read = || {
        std::hint::black_box(
            std::hint::black_box(&buf)
                .iter()
                .fold(0u32, |a, &v| a.wrapping_add(v)),
        )
    };
    while t1.elapsed().as_secs_f64() < 2.0 {
        if hot {
            kern.run_all(&x, &packed, None, &mut out).unwrap();
        }
        let t = Instant::now();
        kern.run_all(&x, &packed, None, &mut out).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        if hot {
            read();
        }
        let t = Instant::now();
        read();
        best_bw = best_bw.min(t.elapsed().as_secs_f64());
    }
    let bytes = (packed.len() * 4) as f64;
    println!(
        "{spec:?}\nfc best {:.3} ms = {:.1} GB/s of weights, {:.1} GFLOP/s; plain read of the same bytes {:.3} ms = {:.1} GB/s; ratio {:.0}%",
        best * 1e3,
        bytes / best / 1e9,
        spec.flops() as f64 / best / 1e9,
        best_bw * 1e3,
        bytes / best_bw / 1e9,
        100.0 * best_bw / best
    );
}
