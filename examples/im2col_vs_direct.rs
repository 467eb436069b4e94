//! Measures the alternative to the direct kernel: im2col (Rust copy) + the pointwise GEMM
//! kernel, for conv 3x3 64->64 at 56x56 pad 1. `cargo run --release --example im2col_vs_direct`
use cnnc::jit::*;
use std::time::Instant;

fn best(mut f: impl FnMut()) -> f64 {
    let mut b = f64::MAX;
    let t1 = Instant::now();
    while t1.elapsed().as_secs_f64() < 1.5 {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let (c, hw, k) = (64usize, 56usize, 64usize);
    let direct = ConvSpec::square(c, hw, k, 3, 1, 1);
    // The GEMM view: in_c = c*9 "channels" of hw*hw pixels.
    let gemm = ConvSpec::square(c * 9, hw, k, 1, 1, 0);
    let mut km = KernelModule::new().unwrap();
    let (pd, pg) = (km.add_conv(&direct).unwrap(), km.add_conv(&gemm).unwrap());
    let code = km.finalize().unwrap();
    let (kd, kg) = (code.get(pd).unwrap(), code.get(pg).unwrap());
    let x: Vec<f32> = (0..direct.input_len())
        .map(|i| (i % 17) as f32 * 0.1 - 0.8)
        .collect();
    let wd = pack_conv_weights(&direct, &vec![0.01; direct.weight_len()], None).unwrap();
    let wg = pack_conv_weights(&gemm, &vec![0.01; gemm.weight_len()], None).unwrap();
    let mut out = vec![0.0; direct.output_len()];
    let mut scratch = vec![0.0; kd.scratch_len()];
    let mut col = vec![0.0f32; c * 9 * hw * hw];
    let im2col = |col: &mut [f32]| {
        for ci in 0..c {
            for fy in 0..3 {
                for fx in 0..3 {
                    let row = &mut col[((ci * 3 + fy) * 3 + fx) * hw * hw..][..hw * hw];
                    for oy in 0..hw {
                        let iy = oy as isize + fy as isize - 1;
                        for ox in 0..hw {
                            let ix = ox as isize + fx as isize - 1;
                            row[oy * hw + ox] =
                                if iy < 0 || ix < 0 || iy >= hw as isize || ix >= hw as isize {
                                    0.0
                                } else {
                                    x[(ci * hw + iy as usize) * hw + ix as usize]
                                };
                        }
                    }
                }
            }
        }
    };
    let flops = direct.flops() as f64;
    let td = best(|| {
        kd.run(&x, &wd, None, &mut out, &mut scratch, 0..kd.work_units())
            .unwrap()
    });
    let ti = best(|| im2col(&mut col));
    let tg = best(|| {
        kg.run(&col, &wg, None, &mut out, &mut [], 0..kg.work_units())
            .unwrap()
    });
    println!(
        "direct: {:.3} ms ({:.1} GFLOP/s)",
        td * 1e3,
        flops / td / 1e9
    );
    println!(
        "im2col {:.3} ms + GEMM {:.3} ms = {:.3} ms ({:.1} GFLOP/s; GEMM alone {:.1})",
        ti * 1e3,
        tg * 1e3,
        (ti + tg) * 1e3,
        flops / (ti + tg) / 1e9,
        flops / tg / 1e9
    );
}
