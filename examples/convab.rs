//! A/B timing of one conv compiled two ways: `convab C HW K F S P VAR A B` compiles the
//! layer with environment variable VAR=A and VAR=B (`-`: unset), then alternates the two runs
//! (weights from `CNNC_COPIES` copies, default 20) and prints both medians and the median
//! ratio of pairs; `CNNC_THREADS=n` runs both split on a pool of n threads, `CNNC_FLUSH_MB=n`
//! writes n MB of other memory before each run (each starts cold). E.g. Winograd against the direct kernel: `convab 256 14 256 3 1 1
//! CNNC_METHOD winograd direct` (`CNNC_NO_WINOGRAD - 1` compares the cost model's pick with
//! the direct kernel). Pairs of runs alternating in one process are the only figures that
//! stayed comparable on a shared host whose memory bandwidth swings several-fold.
use cnnc::jit::*;

#[path = "common/ab.rs"]
mod ab;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n: Vec<usize> = a[..6].iter().map(|s| s.parse().unwrap()).collect();
    let (var, va, vb) = (&a[6], &a[7], &a[8]);
    let mut spec = ConvSpec::square(n[0], n[1], n[2], n[3], n[4], n[5]);
    spec.bias = true;
    spec.relu = true;
    // CNNC_RESIDUAL=1: with a fused residual add (ResNet's last conv of a block).
    spec.residual = std::env::var_os("CNNC_RESIDUAL").is_some();
    let copies: usize = std::env::var("CNNC_COPIES").map_or(20, |v| v.parse().unwrap());
    let w: Vec<f32> = (0..spec.weight_len())
        .map(|i| (i % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = vec![0.1; spec.out_c];
    let x: Vec<f32> = (0..spec.input_len())
        .map(|i| (i % 17) as f32 * 0.1 - 0.8)
        .collect();
    let mut variants = Vec::new();
    for v in [va, vb] {
        ab::set_knob(var, v);
        let mut km = KernelModule::new().unwrap();
        km.set_winograd(std::env::var_os("CNNC_NO_WINOGRAD").is_none());
        // CNNC_METHOD=winograd|direct: that method whatever the cost model picks.
        let pk = match std::env::var("CNNC_METHOD").as_deref() {
            Ok("winograd") => km.add_conv_with(&spec, ConvMethod::Winograd),
            Ok("winograd2") => km.add_conv_with(&spec, ConvMethod::Winograd2),
            Ok("direct") => km.add_conv_with(&spec, ConvMethod::Direct),
            _ => km.add_conv(&spec),
        }
        .unwrap();
        let code = km.finalize().unwrap();
        // Bound now, while VAR has this variant's value.
        let kern = code.get(pk.clone()).unwrap();
        variants.push((kern, pk));
    }
    // Copies allocated alternately for the two variants, so that neither gets luckier
    // memory (all of one variant's first measured up to 2x apart on this host); each run
    // takes the least recently used copy.
    let mut packs: [Vec<cnnc::memory::HugeBuf>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..copies {
        for (v, p) in variants.iter().zip(packs.iter_mut()) {
            p.push(v.1.pack_weights(&w, Some(&b)).unwrap());
        }
    }
    let mut outs = [vec![0.0; spec.output_len()], vec![0.0; spec.output_len()]];
    let res: Vec<f32> = (0..spec.output_len())
        .map(|i| (i % 11) as f32 * 0.05 - 0.3)
        .collect();
    let res = spec.residual.then_some(&res[..]);
    let mut times = [Vec::new(), Vec::new()];
    let t1 = Instant::now();
    let mut round = 0;
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    // A scratch per variant: a kernel may read what another left in it (the Winograd
    // GEMM's padding columns), and denormals there would time the other variant's data.
    let mut scratches: Vec<Vec<f32>> = (variants.iter())
        .map(|(k, _)| vec![0.0; k.scratch_len_on(threads)])
        .collect();
    let pool =
        (threads > 1).then(|| ThreadPool::new(threads, std::time::Duration::from_micros(200)));
    // CNNC_FLUSH_MB=n: write n MB of other memory before each run (untimed), so that each
    // starts cold, as in a network (see `examples/convperf.rs`).
    let flush_mb: usize = std::env::var("CNNC_FLUSH_MB").map_or(0, |v| v.parse().unwrap());
    let mut junk = vec![0u8; flush_mb << 20];
    while t1.elapsed().as_secs_f64() < 4.0 {
        for (i, (kern, _)) in variants.iter().enumerate() {
            let (packed, out) = (&packs[i][round % copies], &mut outs[i]);
            let scratch = &mut scratches[i];
            for line in junk.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            let t = Instant::now();
            match &pool {
                Some(p) => kern.run_parallel(p, &x, packed, res, out, scratch),
                None => kern.run(&x, packed, res, out, scratch, 0..kern.work_units()),
            }
            .unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
        round += 1;
    }
    let same = outs[0]
        .iter()
        .zip(&outs[1])
        .all(|(p, q)| p.to_bits() == q.to_bits());
    let diff = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    println!(
        "outputs {}",
        if same {
            "bit-identical".to_string()
        } else {
            format!("differ by up to {diff:e}")
        }
    );
    let ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(p, q)| q / p).collect();
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    println!("{} {var}={va}: median {:.3} ms min {:.3} | {var}={vb}: median {:.3} ms min {:.3} | B/A median {:.3} ({} pairs)",
        variants[0].0.method(), med(&times[0]), min(&times[0]), med(&times[1]), min(&times[1]), med(&ratios), ratios.len());
}
