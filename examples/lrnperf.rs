//! LRN timing on GoogLeNet's and AlexNet's layers (the runtime's host loop, one item):
//! `cargo run --release --example lrnperf [ROUNDS]`
use cnnc::ir::{Lrn, Shape};
use cnnc::lower::HostOp;
use std::time::Instant;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |s| s.parse().expect("ROUNDS"));
    for (c, hw, size) in [(64, 56, 5), (192, 56, 5), (96, 55, 5), (256, 27, 5)] {
        let input = Shape::chw(c, hw, hw);
        let op = HostOp::Lrn {
            lrn: Lrn {
                size,
                alpha: 1e-4,
                beta: 0.75,
                bias: 1.0,
            },
            input,
        };
        let x: Vec<f32> = (0..input.len()).map(|i| (i % 23) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; input.len()];
        op.run(&x, &mut out);
        let mut times: Vec<f64> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..10 {
                    op.run(&x, &mut out);
                }
                t.elapsed().as_secs_f64() / 10.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let t = times[rounds / 2];
        println!(
            "lrn {size} on {c}x{hw}x{hw}: {:.1} us, {:.2} ns/element, {:.1} GB/s (read + write)",
            t * 1e6,
            t * 1e9 / input.len() as f64,
            (2 * input.len() * 4) as f64 / t / 1e9
        );
    }
}
