//! The x86 GEMM micro-kernels (`cnnc::jit::x86::MicroGemm`) at every wide ISA level the
//! host has, against a plain Rust reference: every row count, every column remainder
//! (masked tails), short and unrolled reductions, every epilogue, NaN-poisoned outputs whose
//! untouched elements must stay NaN. The reference does the same fused multiply-adds in the
//! same order, so results must be bit-identical.
use cnnc::jit::x86::{self, MicroGemm, MicroGemmKernel, Width};
use cnnc::jit::KernelModule;
use cnnc::Isa;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn reference(m: &MicroGemm, x: &[f32], w: &[f32], res: &[f32], bias: &[f32], out: &mut [f32]) {
    // The extra column (`extra_x`) reads its x rows from their own place.
    let extra = usize::from(m.extra_x > 0);
    // With several channel blocks (`lane_blocks`), row `i` is row `i % w_stride` of block
    // `i / w_stride`, whose weights start `block_stride` floats after the previous block's.
    let rows = (m.lane_blocks - 1) * m.w_stride + m.rows;
    for i in 0..rows {
        let wi = |c: usize| (i / m.w_stride) * m.block_stride + c * m.w_stride + i % m.w_stride;
        for j in 0..m.cols + extra {
            let mut acc = if m.accumulate {
                out[i * m.ldo + j]
            } else {
                0.0
            };
            let x0 = if j == m.cols { m.extra_x / 4 } else { j };
            for c in 0..m.k {
                acc = w[wi(c)].mul_add(x[c * m.ldx + x0], acc);
            }
            if m.bias {
                acc += bias[if m.bias_per_col { j } else { i }];
            }
            if m.residual {
                acc += res[i * m.ldo + j];
            }
            if m.relu && acc < 0.0 {
                acc = 0.0;
            }
            if let Some((lo, hi)) = m.clip {
                let (lo, hi) = (f32::from_bits(lo), f32::from_bits(hi));
                if acc < lo {
                    acc = lo;
                }
                if acc > hi {
                    acc = hi;
                }
            }
            out[i * m.ldo + j] = acc;
        }
    }
}

fn widths() -> Vec<Width> {
    Isa::host_levels()
        .into_iter()
        .filter_map(x86::width)
        .collect()
}

fn shapes(w: Width) -> Vec<MicroGemm> {
    let l = w.lanes();
    let max_rows = if w == Width::Z512 { 14 } else { 6 };
    // (relu, clip): none, ReLU, clip, ReLU then clip.
    let clip = Some(((-0.5f32).to_bits(), 0.75f32.to_bits()));
    let acts = [(false, None), (true, None), (false, clip), (true, clip)];
    let mut v = Vec::new();
    let mut n = 0usize;
    // Every column count up to two vectors plus a tail (every remainder of the lanes), with
    // as many rows as the registers allow for that many vectors.
    for cols in 1..=(2 * l + l - 1).min(if w == Width::Z512 { 47 } else { 23 }) {
        let nv = cols.div_ceil(l);
        let cap = if w == Width::Z512 {
            (32 - nv) / nv - 1
        } else {
            (16 - nv - 2) / nv
        };
        for rows in [1, 2, max_rows.min(cap)] {
            for k in [1, 3, 4, 9] {
                n += 1;
                // Every fifth with the fc's bias, one per column.
                let fc = n.is_multiple_of(5);
                v.push(MicroGemm {
                    width: w,
                    rows,
                    cols,
                    k,
                    w_stride: rows + n % 3,
                    ldx: cols + n % 5,
                    ldo: cols + 1 + n % 4,
                    accumulate: n % 7 < 2,
                    bias: n.is_multiple_of(2) || fc,
                    bias_per_col: fc,
                    residual: !n.is_multiple_of(3),
                    relu: acts[n % 4].0,
                    clip: acts[n % 4].1,
                    // A prefetching kernel (of rows of its own x here) computes the same.
                    prefetch_every: [0, 1, 2, 4][(n / 2) % 4],
                    // And of the weights ahead (within `operand_lens`).
                    prefetch_w: [0, 256, 4096, 8192][n % 4],
                    pf_ldx: 0,
                    // Or of its own outputs for writing (one row per loop iteration).
                    prefetch_out: [0, 1, 2, 4][(n / 2) % 4] == 0 && n % 3 != 1,
                    extra_x: 0,
                    lanes: false,
                    lane_blocks: 1,
                    block_stride: 0,
                    pack: false,
                });
            }
        }
    }
    v
}

/// The kernels of `specs`, installed in one module.
fn compile(specs: &[MicroGemm]) -> Vec<MicroGemmKernel> {
    let mut km = KernelModule::new().unwrap();
    let pending: Vec<_> = specs
        .iter()
        .map(|s| km.add_micro_gemm(s).unwrap())
        .collect();
    let code = km.finalize().unwrap();
    pending.into_iter().map(|p| code.get(p).unwrap()).collect()
}

/// Random `(x, w, res, bias)` for `s`, the output it starts from (random where it
/// accumulates, NaN where it must overwrite everything) and the reference's result.
fn operands(rng: &mut Rng, s: &MicroGemm) -> ([Vec<f32>; 4], Vec<f32>, Vec<f32>) {
    let (nx, nw, no, nb) = s.operand_lens();
    let ops = [rng.vec(nx), rng.vec(nw), rng.vec(no), rng.vec(nb)];
    let got = if s.accumulate {
        rng.vec(no)
    } else {
        vec![f32::NAN; no]
    };
    let mut want = got.clone();
    reference(s, &ops[0], &ops[1], &ops[2], &ops[3], &mut want);
    (ops, got, want)
}

#[test]
fn micro_kernels_match_the_reference_bit_for_bit() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for w in widths() {
        let specs: Vec<MicroGemm> = shapes(w)
            .into_iter()
            .filter(|s| s.check().is_ok())
            .collect();
        assert!(specs.len() > 100, "{w:?}: {} shapes", specs.len());
        run_against_the_reference(&mut rng, &specs);
    }
}

#[test]
fn nan_inputs_propagate_through_relu_and_clip() {
    // The vector tile (NaN in its fifth column), and the tiles with the channels in the lanes
    // (avx512: 1-4 pixels; avx2: one), whose epilogue is the scalar one (NaN in its last
    // column).
    let mut cases: Vec<(Width, bool, usize)> = widths()
        .into_iter()
        .map(|w| (w, false, w.lanes() + 3))
        .collect();
    if widths().contains(&Width::Z512) {
        cases.extend((1..=4).map(|cols| (Width::Z512, true, cols)));
    }
    // At avx2, the lanes kernel of one pixel (a block of channels per call here).
    if widths().contains(&Width::Y256) {
        cases.push((Width::Y256, true, 1));
    }
    for (w, lanes, cols) in cases {
        let nan_col = if lanes { cols - 1 } else { 4 };
        for (relu, clip) in [
            (true, None),
            (false, Some((0f32.to_bits(), 6f32.to_bits()))),
        ] {
            let s = MicroGemm {
                width: w,
                rows: 2,
                cols,
                k: 5,
                w_stride: 2,
                ldx: cols,
                ldo: cols,
                accumulate: false,
                bias: false,
                bias_per_col: false,
                residual: false,
                relu,
                clip,
                prefetch_every: 0,
                prefetch_w: 0,
                pf_ldx: 0,
                prefetch_out: false,
                extra_x: 0,
                lanes,
                lane_blocks: 1,
                block_stride: 0,
                pack: false,
            };
            let mut km = KernelModule::new().unwrap();
            let p = km.add_micro_gemm(&s).unwrap();
            let k = km.finalize().unwrap().get(p).unwrap();
            let (nx, nw, no, _) = s.operand_lens();
            let mut x = vec![1.0f32; nx];
            x[s.ldx * 2 + nan_col] = f32::NAN;
            let wt = vec![-1.0f32; nw];
            let mut out = vec![7.0f32; no];
            k.run(&x, &wt, &mut out, None, None).unwrap();
            for i in 0..2 {
                for j in 0..s.cols {
                    let v = out[i * s.ldo + j];
                    assert_eq!(
                        v.is_nan(),
                        j == nan_col,
                        "{w:?} lanes {lanes} relu {relu} clip {clip:?} row {i} col {j}: {v}"
                    );
                    if j != nan_col {
                        assert_eq!(v.to_bits(), 0f32.to_bits(), "-5 clamps to 0");
                    }
                }
            }
        }
    }
}

#[test]
fn short_operands_are_refused() {
    for w in widths() {
        let s = MicroGemm {
            width: w,
            rows: 3,
            cols: 5,
            k: 4,
            w_stride: 3,
            ldx: 5,
            ldo: 5,
            accumulate: false,
            bias: true,
            bias_per_col: false,
            residual: false,
            relu: false,
            clip: None,
            prefetch_every: 0,
            prefetch_w: 0,
            pf_ldx: 0,
            prefetch_out: false,
            extra_x: 0,
            lanes: false,
            lane_blocks: 1,
            block_stride: 0,
            pack: false,
        };
        let mut km = KernelModule::new().unwrap();
        let p = km.add_micro_gemm(&s).unwrap();
        let k = km.finalize().unwrap().get(p).unwrap();
        let (nx, nw, no, nb) = s.operand_lens();
        let (x, wt, b) = (vec![0.0; nx], vec![0.0; nw], vec![0.0; nb]);
        assert!(k
            .run(&x[1..], &wt, &mut vec![0.0; no], None, Some(&b))
            .is_err());
        assert!(k
            .run(&x, &wt, &mut vec![0.0; no - 1], None, Some(&b))
            .is_err());
        assert!(k.run(&x, &wt, &mut vec![0.0; no], None, None).is_err());
        assert!(k.run(&x, &wt, &mut vec![0.0; no], None, Some(&b)).is_ok());
    }
}

/// The extra column (`MicroGemm::extra_x`, AVX-512: the pixel after a full strip, computed
/// with the channels in the lanes of a ymm accumulator): bit for bit the reference, at 1 to
/// 8 rows, strips of 48, 32, 17 (masked) and 1 pixels, short and long reductions, starting
/// from zero or from the stored sums, every epilogue (bias per row or per column), with the
/// weight and output prefetches; untouched outputs stay NaN.
#[test]
fn extra_column_kernels_match_the_reference() {
    if !widths().contains(&Width::Z512) {
        return;
    }
    let mut rng = Rng(0x0e17_4a9c_01d5);
    let clip = Some(((-0.5f32).to_bits(), 0.75f32.to_bits()));
    let mut specs = Vec::new();
    for (n, (rows, cols, k)) in [
        (8, 48, 147),
        (8, 48, 9),
        (6, 48, 4),
        (8, 32, 67),
        (5, 17, 3),
        (1, 1, 1),
        (3, 16, 250),
        (8, 48, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let ldx = cols + 5 + n;
        specs.push(MicroGemm {
            width: Width::Z512,
            rows,
            cols,
            k,
            w_stride: 8,
            ldx,
            ldo: cols + 1 + n % 3,
            accumulate: n % 3 == 1,
            bias: n != 2,
            bias_per_col: n == 4,
            residual: n % 2 == 0,
            relu: n % 3 != 2,
            clip: if n % 4 == 3 { clip } else { None },
            prefetch_every: 0,
            prefetch_w: if n % 2 == 1 { 256 } else { 0 },
            pf_ldx: 0,
            prefetch_out: n % 4 == 0,
            extra_x: (k * ldx + 3 + n) * 4,
            lanes: false,
            lane_blocks: 1,
            block_stride: 0,
            pack: false,
        });
    }
    run_against_the_reference(&mut rng, &specs);
}

/// The kernels with the channels in the lanes (`MicroGemm::lanes`: a pointwise GEMM's last
/// tile column of 1-4 pixels): every row count up to 16 at weight strides of 14 and 16 (and
/// equal to the rows), every column count, reductions shorter than, equal to and past the
/// unrolled step with remainders, every epilogue; bit for bit the reference (the vector
/// tiles' chain and epilogue), NaN-poisoned outputs (the columns between `cols` and `ldo`
/// stay NaN: only the tile is written).
/// A kernel with the channels in the lanes (`rows x cols`, `k` steps, weights at
/// `w_stride`), one block, x and out rows packed, with the `n`-th of a cycle of epilogues
/// (bias, residual, ReLU, clip).
fn lanes_spec(
    width: Width,
    (rows, cols, k, w_stride): (usize, usize, usize, usize),
    n: usize,
) -> MicroGemm {
    let clip = Some(((-0.5f32).to_bits(), 0.75f32.to_bits()));
    MicroGemm {
        width,
        rows,
        cols,
        k,
        w_stride,
        ldx: cols,
        ldo: cols,
        accumulate: false,
        bias: n % 3 != 2,
        bias_per_col: false,
        residual: n.is_multiple_of(2),
        relu: n % 4 < 2,
        clip: if n % 8 >= 5 { clip } else { None },
        prefetch_every: 0,
        prefetch_w: 0,
        pf_ldx: 0,
        prefetch_out: false,
        extra_x: 0,
        lanes: true,
        lane_blocks: 1,
        block_stride: 0,
        pack: false,
    }
}

#[test]
fn lanes_kernels_match_the_reference() {
    if !widths().contains(&Width::Z512) {
        return;
    }
    let mut rng = Rng(0x1a9e_5c0d_77b3);
    let mut specs = Vec::new();
    let mut n = 0usize;
    for rows in 1..=16 {
        for w_stride in [rows, 14, 16].into_iter().filter(|&s| s >= rows) {
            for cols in 1..=x86::gemm::LANES_COLS {
                let k = [1, 3, 4, 9, 67, 256][n % 6];
                specs.push(MicroGemm {
                    ldx: 196 + n % 7,
                    ldo: cols + 1 + n % 5,
                    ..lanes_spec(Width::Z512, (rows, cols, k, w_stride), n)
                });
                n += 1;
            }
        }
    }
    assert!(specs.iter().all(|s| s.check().is_ok()));
    run_against_the_reference(&mut rng, &specs);
    // Past what it supports: refused, not emitted wrong.
    let base = specs[0];
    for bad in [
        MicroGemm { cols: 5, ..base },
        MicroGemm {
            w_stride: 17,
            rows: 17,
            ..base
        },
        MicroGemm {
            accumulate: true,
            ..base
        },
        MicroGemm {
            prefetch_w: 256,
            ..base
        },
        MicroGemm {
            width: Width::Y256,
            cols: 2,
            ..base
        },
        MicroGemm {
            bias_per_col: true,
            ..base
        },
        MicroGemm { pack: true, ..base },
        MicroGemm {
            extra_x: 64,
            ..base
        },
        MicroGemm {
            prefetch_every: 1,
            ..base
        },
        MicroGemm {
            prefetch_out: true,
            ..base
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

/// The AVX2 kernels with the channels in the lanes: one pixel of 1 to `LANE_BLOCKS` channel
/// blocks per call (`lane_blocks`), blocks of 3, 6 and 8 rows, the last block of every row
/// count, blocks packed back to back or apart, short and unrolled reductions, every
/// epilogue; what they do not support is refused.
#[test]
fn lane_block_kernels_match_the_reference() {
    if !widths().contains(&Width::Y256) {
        return;
    }
    let mut rng = Rng(0x0b10_c4a5_e5d1);
    let mut specs = Vec::new();
    let mut n = 0usize;
    for blocks in 1..=x86::gemm::LANE_BLOCKS {
        for w_stride in [3, 6, 8] {
            for rows in [1, w_stride / 2, w_stride].into_iter().filter(|&r| r > 0) {
                let k = [1, 3, 4, 9, 67, 256][n % 6];
                specs.push(MicroGemm {
                    ldx: 49 + n % 7,
                    ldo: 49 + n % 5,
                    lane_blocks: blocks,
                    block_stride: k * w_stride + [0, 5][n % 2] + [0, 8][usize::from(k == 1)],
                    ..lanes_spec(Width::Y256, (rows, 1, k, w_stride), n)
                });
                n += 1;
            }
        }
    }
    assert!(specs.iter().all(|s| s.check().is_ok()));
    run_against_the_reference(&mut rng, &specs);
    let base = specs[specs.len() - 1];
    for bad in [
        MicroGemm { cols: 2, ..base },
        MicroGemm {
            lane_blocks: x86::gemm::LANE_BLOCKS + 1,
            ..base
        },
        MicroGemm {
            block_stride: base.k * base.w_stride - 1,
            ..base
        },
        MicroGemm {
            w_stride: 9,
            ..base
        },
        MicroGemm {
            accumulate: true,
            ..base
        },
        MicroGemm {
            prefetch_w: 256,
            ..base
        },
        MicroGemm {
            lanes: false,
            ..base
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

/// Runs each of `specs` on random operands and compares every output with the reference's
/// bit for bit. A kernel that accumulates starts from the values in `out`; the others must
/// overwrite the NaNs.
fn run_against_the_reference(rng: &mut Rng, specs: &[MicroGemm]) {
    for k in compile(specs) {
        let s = k.spec();
        let ([x, wt, res, bias], mut got, want) = operands(rng, s);
        k.run(&x, &wt, &mut got, Some(&res), Some(&bias)).unwrap();
        for (e, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == r.to_bits(),
                "{s:?}: element {e} (row {}, col {}): got {g}, want {r}",
                e / s.ldo,
                e % s.ldo
            );
        }
    }
}

/// The packing variant (`MicroGemm::pack`, the first channel block of a pointwise tile
/// column): computes the same bits as the reference and stores exactly the `k x cols`
/// inputs it reads, contiguous, into the packed buffer (whose slack stays NaN); prefetching
/// rows at a stride of their own (`pf_ldx`) changes nothing. Without a buffer it is refused.
#[test]
fn packing_kernels_copy_their_input() {
    let mut rng = Rng(0x005e_ed0f_9ac4);
    for w in widths() {
        let l = w.lanes();
        let rows = if w == Width::Z512 { 14 } else { 6 };
        let mut specs = Vec::new();
        for (n, (cols, k)) in [(l, 1), (2 * l, 4), (2 * l, 9), (l, 64), (2 * l, 67)]
            .into_iter()
            .enumerate()
        {
            specs.push(MicroGemm {
                width: w,
                rows: rows - n % 2,
                cols,
                k,
                w_stride: rows,
                ldx: cols + 3 + n,
                ldo: cols + 2,
                accumulate: n == 3,
                bias: n % 2 == 0,
                bias_per_col: false,
                residual: n != 1,
                relu: n % 3 == 0,
                clip: None,
                prefetch_every: n % 2,
                prefetch_w: 0,
                pf_ldx: 2 * cols + 5,
                prefetch_out: false,
                extra_x: 0,
                lanes: false,
                lane_blocks: 1,
                block_stride: 0,
                pack: true,
            });
        }
        for k in compile(&specs) {
            let s = *k.spec();
            let ([x, wt, res, bias], mut got, want) = operands(&mut rng, &s);
            assert!(k.run(&x, &wt, &mut got, Some(&res), Some(&bias)).is_err());
            let mut pack = vec![f32::NAN; s.k * s.cols + 7];
            k.run_packing((&x, &wt, &mut got), (Some(&res), Some(&bias)), &mut pack)
                .unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{s:?}: output");
            for c in 0..s.k {
                let row = &x[c * s.ldx..c * s.ldx + s.cols];
                assert_eq!(&pack[c * s.cols..(c + 1) * s.cols], row, "{s:?}: row {c}");
            }
            assert!(pack[s.k * s.cols..].iter().all(|v| v.is_nan()), "{s:?}");
        }
    }
}
