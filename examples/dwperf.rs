//! Depthwise conv timing on MobileNet v2's layers, one thread: the depthwise kernel
//! against the dense conv kernel run once per channel (how grouped convs ran before),
//! alternating rounds, plus a streaming copy for the memory bandwidth.
//! `cargo run --release --example dwperf [ROUNDS]`
use cnnc::jit::*;
use std::hint::black_box;
use std::time::Instant;

/// Median seconds of `f` over `rounds` runs of about 20 ms each.
fn time(rounds: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    let t = Instant::now();
    f();
    let reps = ((0.02 / t.elapsed().as_secs_f64()) as usize).clamp(1, 10_000);
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(7, |s| s.parse().expect("ROUNDS"));
    // Streaming copy of 64 MiB: read + write bytes per second.
    let n = 16 << 20;
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let copy = median(time(rounds, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }));
    println!(
        "streaming copy 64 MiB: {:.1} GB/s (read + write)",
        (2 * n * 4) as f64 / copy / 1e9
    );
    println!("layer | depthwise kernel | per-channel dense conv | speed-up");
    for (c, hw, s) in [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (144, 56, 2),
        (960, 7, 1),
    ] {
        let dw = DepthwiseSpec {
            bias: true,
            clip: Some(Clip::RELU6),
            ..DepthwiseSpec::square(c, hw, 3, s, 1)
        };
        let one = ConvSpec {
            bias: true,
            clip: Some(Clip::RELU6),
            ..ConvSpec::square(1, hw, 1, 3, s, 1)
        };
        let mut km = KernelModule::new().unwrap();
        let pd = km.add_depthwise(&dw).unwrap();
        let pc = km.add_conv(&one).unwrap();
        let code = km.finalize().unwrap();
        let w: Vec<f32> = (0..dw.weight_len())
            .map(|i| (i % 13) as f32 * 0.01)
            .collect();
        let b = vec![0.1f32; c];
        let packed_dw = pack_depthwise_weights(&dw, &w, Some(&b)).unwrap();
        let per_group: Vec<cnnc::memory::HugeBuf> = (0..c)
            .map(|g| {
                pc.pack_weights(&w[g * 9..(g + 1) * 9], Some(&b[g..g + 1]))
                    .unwrap()
            })
            .collect();
        let kd = code.get(pd).unwrap();
        let kc = code.get(pc).unwrap();
        let x: Vec<f32> = (0..dw.input_len()).map(|i| (i % 17) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; dw.output_len()];
        let mut sd = vec![0.0f32; kd.scratch_len()];
        let mut sc = vec![0.0f32; kc.scratch_len()];
        let (plane_in, plane_out) = (hw * hw, dw.out_h() * dw.out_w());
        let (mut td, mut tc) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            td.extend(time(1, || {
                kd.run(&x, &packed_dw, None, &mut out, &mut sd, 0..c)
                    .unwrap()
            }));
            tc.extend(time(1, || {
                for g in 0..c {
                    let xs = &x[g * plane_in..(g + 1) * plane_in];
                    let os = &mut out[g * plane_out..(g + 1) * plane_out];
                    kc.run(xs, &per_group[g], None, os, &mut sc, 0..kc.work_units())
                        .unwrap();
                }
            }));
        }
        let (td, tc) = (median(td), median(tc));
        let bytes = ((dw.input_len() + dw.output_len()) * 4) as f64;
        let gf = |t: f64| dw.flops() as f64 / t / 1e9;
        println!(
            "{c}x{hw}x{hw} 3x3 s{s} | {:.1} us, {:.1} GFLOP/s, {:.1} GB/s | {:.1} us, {:.1} GFLOP/s | {:.2}x",
            td * 1e6,
            gf(td),
            bytes / td / 1e9,
            tc * 1e6,
            gf(tc),
            tc / td
        );
    }
}
