//! The thread-split knobs that change which thread computes what (`CNNC_SPLIT_ROTATE`,
//! `CNNC_POOL_GUIDED`; docs/jit.md, "Measuring knobs") must give the bits of the default
//! split. Knobs are
//! environment variables read when a pool is built, so this file holds one test (its own
//! process: no other test sees them set).
mod common;
use cnnc::jit::*;
use common::xorshift_vec as rand_vec;
use std::time::Duration;

/// Compiles `s` as Winograd (F(4x4) or F(2x2)) at `isa` and runs it on NaN-poisoned outputs:
/// the whole range, split in 2 and 3 ranges, and on `pools`; every run must give the bits of
/// the first.
fn run(s: &ConvSpec, method: ConvMethod, isa: cnnc::Isa, pools: &[ThreadPool]) -> Vec<f32> {
    let x = rand_vec(s.input_len(), 1);
    let scale = 1.0 / ((s.in_c * 9) as f32).sqrt();
    let w: Vec<f32> = rand_vec(s.weight_len(), 2)
        .iter()
        .map(|v| v * scale)
        .collect();
    let b = s.bias.then(|| rand_vec(s.out_c, 3));
    let r = s.residual.then(|| rand_vec(s.output_len(), 4));
    let mut km = KernelModule::new().unwrap();
    km.set_isa(isa).unwrap();
    let p = km.add_conv_with(s, method).unwrap();
    let packed = p.pack_weights(&w, b.as_deref()).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let mut out = vec![f32::NAN; s.output_len()];
    k.run_all(&x, &packed, r.as_deref(), &mut out).unwrap();
    let what = format!("{s:?} by {method:?} at {isa}");
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
    let units = k.work_units();
    let mut scratch = vec![0.0; k.scratch_len()];
    for pieces in [2, 3] {
        let mut o = vec![f32::NAN; s.output_len()];
        for i in 0..pieces {
            let range = units * i / pieces..units * (i + 1) / pieces;
            k.run(&x, &packed, r.as_deref(), &mut o, &mut scratch, range)
                .unwrap();
        }
        assert!(same(&out, &o), "{what}: {pieces} ranges differ");
    }
    for pool in pools {
        // Twice: a rotating pool starts its threads on other parts at each job.
        for _ in 0..2 {
            let mut scratch = vec![0.0; k.scratch_len_on(pool.threads())];
            let mut o = vec![f32::NAN; s.output_len()];
            k.run_parallel(pool, &x, &packed, r.as_deref(), &mut o, &mut scratch)
                .unwrap();
            assert!(same(&out, &o), "{what}: {} threads differ", pool.threads());
        }
    }
    out
}

#[test]
fn a_rotating_pool_gives_the_default_bits() {
    let pools = || [2, 3].map(|n| ThreadPool::new(n, Duration::from_micros(20)));
    let default_pools = pools();
    // Read when a pool is built.
    std::env::set_var("CNNC_SPLIT_ROTATE", "1");
    let rotating = pools();
    std::env::remove_var("CNNC_SPLIT_ROTATE");
    // And pools whose parts go in whole chunks (`CNNC_POOL_GUIDED=0`), where by default a
    // part's last chunks shrink, each taking half of what is left.
    std::env::set_var("CNNC_POOL_GUIDED", "0");
    let unguided = pools();
    std::env::remove_var("CNNC_POOL_GUIDED");
    // Winograd's whole layouts (three splits, each rotated: every phase's threads read
    // what the other wrote) of both algorithms: f32x4 transforms (rows of 10 tiles, dense
    // 7x7), zmm transforms of 2 and 4 tile rows a vector at avx512 (27x27, 13x13), more
    // output than input channels and fewer, channel tails, every epilogue, pads 0 and 1; and
    // the grouped layout (56x56 at avx512).
    let shapes = [
        (16, 27, 27, 64, 1, ConvMethod::Winograd),
        (48, 13, 13, 192, 1, ConvMethod::Winograd),
        (37, 38, 40, 20, 1, ConvMethod::Winograd),
        (20, 7, 7, 33, 0, ConvMethod::Winograd),
        (24, 8, 8, 71, 1, ConvMethod::Winograd2),
        (16, 56, 56, 16, 1, ConvMethod::Winograd),
    ];
    for (seed, (c, h, w, k, p, method)) in shapes.into_iter().enumerate() {
        for isa in cnnc::Isa::host_levels() {
            let s = ConvSpec {
                bias: seed % 2 == 0,
                residual: seed % 3 != 1,
                relu: true,
                ..ConvSpec::square(c, h, k, 3, 1, p)
            };
            let s = ConvSpec { in_w: w, ..s };
            let base = run(&s, method, isa, &default_pools);
            let what = format!("{s:?} by {method:?} at {isa}");
            for (knob, pools) in [("rotate", &rotating), ("unguided", &unguided)] {
                let other = run(&s, method, isa, pools);
                assert!(
                    base.iter()
                        .zip(&other)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: the {knob} knob changes the bits"
                );
            }
        }
    }
}
