//! A/B timing of one batch-1 fc compiled two ways, with a plain read as the yardstick:
//! `fcab IN OUT VAR A B` compiles the layer (bias) with environment variable VAR=A and VAR=B
//! (`-`: unset), then alternates three timed runs, A, B and a plain read (vector loads
//! summed) of as many bytes, each on the least recently used of `CNNC_COPIES` copies of its
//! buffer (default 8: 64 MB of copies of an 8 MB layer evict each other from the 32 MB L3,
//! so every run streams from memory as in a network; `CNNC_COPIES=1`: from L3 where they
//! fit). Prints the medians, GB/s, each as a share of the read, and the median B/A of pairs.
//! `CNNC_THREADS=n`: A and B split on a pool of n threads (the read stays on one). E.g.
//! the wide kernel against the f32x4 one: `fcab 2048 1000 CNNC_FC_WIDE 0 -`; prefetch
//! distances: `fcab 4096 4096 CNNC_FC_PREFETCH 4096 8192`.
use cnnc::jit::*;

#[path = "common/ab.rs"]
mod ab;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (c, k): (usize, usize) = (a[0].parse().unwrap(), a[1].parse().unwrap());
    let (var, va, vb) = (&a[2], &a[3], &a[4]);
    let mut spec = FcSpec::new(c, k, 1);
    spec.bias = true;
    let copies: usize = std::env::var("CNNC_COPIES").map_or(8, |v| v.parse().unwrap());
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    let w: Vec<f32> = (0..spec.weight_len())
        .map(|i| (i % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = vec![0.1; k];
    let x: Vec<f32> = (0..c).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let mut variants = Vec::new();
    for v in [va, vb] {
        ab::set_knob(var, v);
        let mut km = KernelModule::new().unwrap();
        let pk = km.add_fc(&spec).unwrap();
        let code = km.finalize().unwrap();
        variants.push(code.get(pk).unwrap());
    }
    // Copies allocated in turn for the two variants and the read.
    let mut packs: [Vec<cnnc::memory::HugeBuf>; 2] = [Vec::new(), Vec::new()];
    let mut reads = Vec::new();
    for _ in 0..copies {
        for (v, p) in variants.iter().zip(packs.iter_mut()) {
            p.push(v.pack_weights(&w, Some(&b)).unwrap());
        }
        reads.push(variants[0].pack_weights(&w, Some(&b)).unwrap());
    }
    let pool =
        (threads > 1).then(|| ThreadPool::new(threads, std::time::Duration::from_micros(200)));
    let mut outs = [vec![0.0; k], vec![0.0; k]];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let t1 = Instant::now();
    let mut round = 0;
    while t1.elapsed().as_secs_f64() < 4.0 {
        for (i, kern) in variants.iter().enumerate() {
            let (packed, out) = (&packs[i][round % copies], &mut outs[i]);
            let t = Instant::now();
            match &pool {
                Some(p) => kern.run_parallel(p, &x, packed, None, out),
                None => kern.run_all(&x, packed, None, out),
            }
            .unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
        let t = Instant::now();
        std::hint::black_box(plain_read(&reads[round % copies]));
        times[2].push(t.elapsed().as_secs_f64() * 1e3);
        round += 1;
    }
    let diff = (outs[0].iter().zip(&outs[1]))
        .map(|(p, q): (&f32, &f32)| (p - q).abs())
        .fold(0.0f32, f32::max);
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(p, q)| q / p).collect();
    let read = med(&times[2]);
    let gbs = |ms: f64, floats: usize| floats as f64 * 4.0 / ms / 1e6;
    println!(
        "fc {c}->{k} batch 1, {threads} thread(s), {copies} copies; outputs differ by up to {diff:e}"
    );
    for (i, v) in [va, vb].into_iter().enumerate() {
        let m = med(&times[i]);
        println!(
            "  {var}={v} ({}): median {m:.3} ms, {:.1} GB/s, {:.0}% of the read",
            variants[i].micro_kernel(),
            gbs(m, variants[i].packed_len()),
            100.0 * read / m * variants[i].packed_len() as f64 / reads[0].len() as f64,
        );
    }
    println!(
        "  plain read: median {read:.3} ms, {:.1} GB/s | B/A median {:.3} ({} rounds)",
        gbs(read, reads[0].len()),
        med(&ratios),
        ratios.len()
    );
}

/// The sum of `v` in 8 independent f32x4 chains (the compiler's vector loads).
fn plain_read(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    for ch in v.chunks_exact(32) {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    acc.iter().sum()
}
