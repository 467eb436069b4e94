//! One pool layer at several ISA levels, alternated in one process (on a shared machine
//! only figures measured alternately mean anything), against a plain read of its input
//! and write of its output (`memory`: what the pool would take at memory speed).
//!
//! `cargo run --release --example poolab -- C H W K S P [max|avg] [ROUNDS]`, e.g.
//! SqueezeNet's first pool: `poolab 64 111 111 3 2 0`. `poolab C H W K S P max ROUNDS VAR A
//! B` compares the best level compiled with environment variable VAR=A and VAR=B instead.
//! `CNNC_COPIES=n` rotates n copies of the input (n x its size larger than L2: the input
//! comes from memory, as after a conv whose output did not stay in cache). Prints per variant the minimum and median of the
//! rounds' times (each round: the best of 5 runs) and the input bandwidth at the minimum.
use cnnc::jit::{KernelModule, PoolKind, PoolSpec};
use cnnc::Isa;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).map_or(d, |a| a.parse().expect("a number"));
    let kind = match args.get(6).map(String::as_str) {
        Some("avg") => PoolKind::Avg,
        _ => PoolKind::Max,
    };
    let s = PoolSpec {
        kind,
        channels: num(0, 64),
        in_h: num(1, 111),
        in_w: num(2, 111),
        kernel_h: num(3, 3),
        kernel_w: num(3, 3),
        stride_h: num(4, 2),
        stride_w: num(4, 2),
        pad_h: num(5, 0),
        pad_w: num(5, 0),
    };
    let rounds = num(7, 40);
    let copies: usize = std::env::var("CNNC_COPIES").map_or(1, |c| c.parse().expect("n"));
    let inputs: Vec<Vec<f32>> = (0..copies)
        .map(|i| cnnc::weights::standard_normal(i as u64, "x", s.input_len()))
        .collect();
    let mut out = vec![0.0f32; s.output_len()];
    // `VAR A B` after the rounds: the best level compiled with VAR=A and with VAR=B
    // (`-`: unset) instead of every level.
    let variants: Vec<(Isa, Option<(String, String)>)> = match args.get(8..11) {
        Some([var, a, b]) => [a, b]
            .iter()
            .map(|v| (Isa::default_level(), Some((var.clone(), v.to_string()))))
            .collect(),
        _ => Isa::host_levels().iter().map(|&i| (i, None)).collect(),
    };
    let kernels: Vec<_> = variants
        .iter()
        .map(|(isa, var)| {
            let name = match var {
                Some((var, v)) => {
                    match v.as_str() {
                        "-" => std::env::remove_var(var),
                        v => std::env::set_var(var, v),
                    }
                    format!("{var}={v}")
                }
                None => isa.to_string(),
            };
            let mut km = KernelModule::new().unwrap();
            km.set_isa(*isa).unwrap();
            let p = km.add_pool(&s).unwrap();
            let code = km.finalize().unwrap();
            let k = code.get(p).unwrap();
            (name, k, code)
        })
        .collect();
    let mut scratch = vec![0.0f32; kernels[0].1.scratch_len()];
    let units = kernels[0].1.work_units();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kernels.len() + 1];
    let mut turn = 0;
    for _ in 0..rounds {
        for (v, t) in times.iter_mut().enumerate() {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let x = &inputs[turn % copies];
                turn += 1;
                let t0 = Instant::now();
                match kernels.get(v) {
                    Some((_, k, _)) => k.run(x, &mut out, &mut scratch, 0..units).unwrap(),
                    None => {
                        // Read every input line and write the output: memory speed.
                        let mut acc = 0.0f32;
                        for c in x.chunks(16) {
                            acc += c[0];
                        }
                        out.fill(acc);
                    }
                }
                best = best.min(t0.elapsed().as_secs_f64());
                std::hint::black_box(&out);
            }
            t.push(best);
        }
    }
    println!("{s}, {kind:?}, {rounds} rounds, {copies} input copies");
    for (v, t) in times.iter_mut().enumerate() {
        t.sort_by(f64::total_cmp);
        let name = kernels.get(v).map_or("memory".to_string(), |k| k.0.clone());
        let gbs = (s.input_len() * 4) as f64 / t[0] / 1e9;
        println!(
            "{name:>8}: min {:8.1} us  median {:8.1} us  ({gbs:.1} GB/s of input)",
            t[0] * 1e6,
            t[t.len() / 2] * 1e6
        );
    }
}
