//! JIT kernels against plain, obviously correct reference loops (f64 accumulation).
use cnnc::jit::*;
use proptest::prelude::*;

/// Deterministic values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    let mut max_abs = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w})");
        let d = g as f64 - w;
        num += d * d;
        den += w * w;
        max_abs = max_abs.max(d.abs());
    }
    let rel = (num / den.max(1e-30)).sqrt();
    assert!(
        rel < 1e-5 || (den == 0.0 && num == 0.0),
        "{what}: relative L2 {rel}"
    );
    assert!(max_abs < 1e-4, "{what}: max abs {max_abs}");
}

fn ref_conv(s: &ConvSpec, x: &[f32], w: &[f32], b: Option<&[f32]>, r: Option<&[f32]>) -> Vec<f64> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = vec![0.0f64; s.output_len()];
    for k in 0..s.out_c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b.map_or(0.0, |b| b[k] as f64);
                for c in 0..s.in_c {
                    for fy in 0..s.kernel_h {
                        for fx in 0..s.kernel_w {
                            let iy = (oy * s.stride_h + fy) as isize - s.pad_h as isize;
                            let ix = (ox * s.stride_w + fx) as isize - s.pad_w as isize;
                            if iy < 0 || ix < 0 || iy >= s.in_h as isize || ix >= s.in_w as isize {
                                continue;
                            }
                            let xv = x[(c * s.in_h + iy as usize) * s.in_w + ix as usize] as f64;
                            let wv =
                                w[((k * s.in_c + c) * s.kernel_h + fy) * s.kernel_w + fx] as f64;
                            acc += xv * wv;
                        }
                    }
                }
                let i = (k * oh + oy) * ow + ox;
                if let Some(r) = r {
                    acc += r[i] as f64;
                }
                if s.relu {
                    acc = acc.max(0.0);
                }
                out[i] = acc;
            }
        }
    }
    out
}

/// Compiles `spec`, runs it over the whole range and in 2 and 3 pieces (bit-identical),
/// and compares with the reference.
fn check_conv(s: &ConvSpec, seed: u64) {
    let x = rand_vec(s.input_len(), seed);
    let w = rand_vec(s.weight_len(), seed + 1);
    let b = s.bias.then(|| rand_vec(s.out_c, seed + 2));
    let r = s.residual.then(|| rand_vec(s.output_len(), seed + 3));
    let packed = pack_conv_weights(s, &w, b.as_deref()).unwrap();
    let mut km = KernelModule::new().unwrap();
    let p = km.add_conv(s).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let mut out = vec![f32::NAN; s.output_len()];
    k.run_all(&x, &packed, r.as_deref(), &mut out).unwrap();
    let want = ref_conv(s, &x, &w, b.as_deref(), r.as_deref());
    assert_close(&out, &want, &format!("{s:?}"));
    let units = k.work_units();
    let mut scratch = vec![0.0f32; k.scratch_len()];
    for pieces in [2usize, 3] {
        let mut out2 = vec![f32::NAN; s.output_len()];
        for i in 0..pieces {
            let range = units * i / pieces..units * (i + 1) / pieces;
            k.run(&x, &packed, r.as_deref(), &mut out2, &mut scratch, range)
                .unwrap();
        }
        assert!(
            out.iter()
                .zip(&out2)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{s:?}: split in {pieces} differs"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn spec(
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    fh: usize,
    fw: usize,
    s: (usize, usize),
    p: (usize, usize),
) -> ConvSpec {
    ConvSpec {
        in_c: c,
        in_h: h,
        in_w: w,
        out_c: k,
        kernel_h: fh,
        kernel_w: fw,
        stride_h: s.0,
        stride_w: s.1,
        pad_h: p.0,
        pad_w: p.1,
        bias: false,
        relu: false,
        residual: false,
    }
}

#[test]
fn conv_3x3_basic() {
    check_conv(&spec(3, 8, 8, 8, 3, 3, (1, 1), (1, 1)), 1);
    check_conv(&spec(5, 9, 11, 13, 3, 3, (1, 1), (0, 0)), 2);
}

#[test]
fn conv_shapes() {
    let mut seed = 10;
    for &(c, h, w, k, fh, fw, s, p) in &[
        (1, 1, 1, 1, 1, 1, (1, 1), (0, 0)),
        (3, 7, 5, 9, 3, 3, (2, 2), (1, 1)),
        (7, 13, 17, 11, 5, 5, (3, 3), (2, 2)),
        (3, 23, 23, 16, 7, 7, (2, 2), (3, 3)),
        (6, 9, 10, 5, 1, 3, (1, 1), (0, 1)),
        (6, 10, 9, 7, 3, 1, (1, 2), (1, 0)),
        (17, 6, 6, 19, 1, 1, (1, 1), (0, 0)),
        (17, 9, 9, 19, 1, 1, (2, 2), (0, 0)),
        (9, 5, 5, 12, 3, 3, (1, 1), (3, 3)),
        (4, 3, 3, 4, 3, 3, (1, 1), (0, 0)),
        (4, 2, 3, 33, 3, 3, (1, 1), (1, 1)),
        (10, 14, 3, 70, 2, 2, (1, 1), (0, 0)),
        (2, 4, 40, 3, 3, 5, (3, 1), (2, 3)),
    ] {
        for (bias, relu, residual) in [
            (false, false, false),
            (true, true, true),
            (true, false, true),
            (false, true, false),
        ] {
            let mut sp = spec(c, h, w, k, fh, fw, s, p);
            sp.bias = bias;
            sp.relu = relu;
            sp.residual = residual;
            check_conv(&sp, seed);
            seed += 7;
        }
    }
}
