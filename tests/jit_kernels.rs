//! JIT kernels against plain, obviously correct reference loops (f64 accumulation).
use cnnc::jit::*;
use proptest::prelude::*;

mod common;

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

/// Unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// `γ(n) = n u / (1 - n u)`: the relative error bound of `n` rounded operations in a row.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    assert!(
        nu < 0.5,
        "gamma({n}): too many operations for a meaningful bound"
    );
    nu / (1.0 - nu)
}

/// The exact result of a kernel (f64, from f32 inputs) and, per element, how far a correct
/// f32 computation may be from it. For a sum of `n` terms evaluated in any order, with or
/// without FMA, `|fl(s) - s| <= γ(n) * Σ|terms|` (Higham, *Accuracy and Stability of
/// Numerical Algorithms*, 2nd ed., §3.1 and §4.2): the bound follows the sum's condition,
/// not its value, so an output that cancels to nearly 0 gets the tolerance its terms call
/// for. ReLU and clip are 1-Lipschitz and keep the bound; storing the f32 result adds
/// `u * |value|`.
struct Expected {
    value: Vec<f64>,
    bound: Vec<f64>,
}

/// One output's sum: its exact value, `Σ|terms|` and the longest chain of roundings.
#[derive(Clone, Copy, Default)]
struct Acc {
    sum: f64,
    abs: f64,
    depth: usize,
}

impl Acc {
    fn add(&mut self, term: f64) {
        self.sum += term;
        self.abs += term.abs();
        self.depth += 1;
    }

    /// The sum times `k` (a division, or a product with a rounded reciprocal: two
    /// roundings more).
    fn scaled(self, k: f64) -> Acc {
        Acc {
            sum: self.sum * k,
            abs: self.abs * k.abs(),
            depth: self.depth + 2,
        }
    }
}

impl Expected {
    fn new(len: usize) -> Self {
        Expected {
            value: Vec::with_capacity(len),
            bound: Vec::with_capacity(len),
        }
    }

    /// An output computed as the sum `acc` and then `f`, a 1-Lipschitz function (identity,
    /// ReLU, clip). A term that is a product was rounded once more than the sum counts.
    fn push(&mut self, acc: Acc, f: impl Fn(f64) -> f64) {
        let v = f(acc.sum);
        self.value.push(v);
        self.bound
            .push(gamma(acc.depth + 1) * acc.abs + U * v.abs());
    }

    /// Outputs the kernel computes exactly (max pool, ReLU): only the store rounds.
    fn exact(values: Vec<f64>) -> Self {
        let bound = values.iter().map(|v| U * v.abs()).collect();
        Expected {
            value: values,
            bound,
        }
    }
}

/// Asserts every element of `got` is within its bound of the exact value (and finite).
fn assert_close(got: &[f32], want: &Expected, what: &str) {
    assert_eq!(got.len(), want.value.len(), "{what}: length");
    for (i, ((&g, &w), &b)) in got.iter().zip(&want.value).zip(&want.bound).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g} (want {w})");
        let err = (g as f64 - w).abs();
        assert!(
            err <= b,
            "{what}: element {i} is {g}, want {w}: error {err:e} over the bound {b:e}"
        );
    }
}

/// The reference convolution. With `winograd`, each output's bound is that of the
/// Winograd F(4x4, 3x3) evaluation instead (see [`winograd_bounds`]).
fn ref_conv(s: &ConvSpec, x: &[f32], w: &[f32], b: Option<&[f32]>, r: Option<&[f32]>) -> Expected {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = Expected::new(s.output_len());
    for k in 0..s.out_c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = Acc::default();
                if let Some(b) = b {
                    acc.add(b[k] as f64);
                }
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
                            acc.add(xv * wv);
                        }
                    }
                }
                if let Some(r) = r {
                    acc.add(r[(k * oh + oy) * ow + ox] as f64);
                }
                out.push(acc, |v| epilogue(v, s.relu, s.clip));
            }
        }
    }
    out
}

fn epilogue(mut v: f64, relu: bool, clip: Option<Clip>) -> f64 {
    if relu {
        v = v.max(0.0);
    }
    if let Some(c) = clip {
        v = v.clamp(c.min as f64, c.max as f64);
    }
    v
}

/// Winograd F(4x4, 3x3) (Lavin & Gray's matrices, as in `src/jit/winograd.rs`).
const WINO_BT: [[f64; 6]; 6] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const WINO_G24: [[f64; 3]; 6] = [
    [6.0, 0.0, 0.0],
    [-4.0, -4.0, -4.0],
    [-4.0, 4.0, -4.0],
    [1.0, 2.0, 4.0],
    [1.0, -2.0, 4.0],
    [0.0, 0.0, 24.0],
];
const WINO_AT: [[f64; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// `|M| X |M|ᵀ` for a small matrix `M` (rows x cols) and `X` (cols x cols).
fn abs_sandwich<const R: usize, const C: usize>(
    m: &[[f64; C]; R],
    x: &[[f64; C]; C],
) -> [[f64; R]; R] {
    let mut t = [[0.0; C]; R];
    for i in 0..R {
        for j in 0..C {
            t[i][j] = (0..C).map(|l| m[i][l].abs() * x[l][j]).sum();
        }
    }
    let mut y = [[0.0; R]; R];
    for i in 0..R {
        for j in 0..R {
            y[i][j] = (0..C).map(|l| t[i][l] * m[j][l].abs()).sum();
        }
    }
    y
}

/// A conv's input, weights, bias and residual.
type ConvData<'a> = (&'a [f32], &'a [f32], Option<&'a [f32]>, Option<&'a [f32]>);
/// A Winograd algorithm's `Bᵀ`, `G` and `Aᵀ` (`α = A`, tile `T`).
type WinoMatrices<'a, const A: usize, const T: usize> =
    (&'a [[f64; A]; A], &'a [[f64; 3]; A], &'a [[f64; A]; T]);

/// Winograd F(2x2, 3x3).
const WINO2_BT: [[f64; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
const WINO2_G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const WINO2_AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Error bounds of a Winograd conv (3x3, stride 1) by `method` (F(4x4, 3x3) or F(2x2,
/// 3x3)): the same algorithm evaluated on absolute values, `Σ_c |Aᵀ| (|G| |g| |Gᵀ| ⊙ |Bᵀ|
/// |d| |B|) |A|` (plus |bias| and |residual|), times γ of its depth: `α + α` roundings in
/// the input transform, 3 + 3 and a scaling in the filter transform, the product, the sum
/// over the channels, `α + α` in the output transform, bias and residual (Higham §3.1
/// applied to the algorithm's evaluation graph). The transforms scale values by up to 8x
/// (F(4x4)), so this is wider than the direct sum's.
fn winograd_bounds(method: ConvMethod, s: &ConvSpec, io: ConvData, want: &mut Expected) {
    if method == ConvMethod::Winograd2 {
        winograd_bounds_of(s, io, want, (&WINO2_BT, &WINO2_G, &WINO2_AT));
    } else {
        let g: [[f64; 3]; 6] = WINO_G24.map(|row| row.map(|v| v / 24.0));
        winograd_bounds_of(s, io, want, (&WINO_BT, &g, &WINO_AT));
    }
}

/// [`winograd_bounds`] of F(`T`x`T`, 3x3) with `α = A = T + 2`.
fn winograd_bounds_of<const A: usize, const T: usize>(
    s: &ConvSpec,
    (x, w, b, r): ConvData,
    want: &mut Expected,
    (bt, g, at): WinoMatrices<A, T>,
) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let depth = 2 * A + 7 + 1 + s.in_c + 2 * A + 2;
    let pixel = |c: usize, y: isize, xx: isize| -> f64 {
        if y < 0 || xx < 0 || y >= s.in_h as isize || xx >= s.in_w as isize {
            0.0
        } else {
            x[(c * s.in_h + y as usize) * s.in_w + xx as usize].abs() as f64
        }
    };
    let filters: Vec<[[f64; A]; A]> = (0..s.out_c * s.in_c)
        .map(|kc| {
            let f: [[f64; 3]; 3] = std::array::from_fn(|i| {
                std::array::from_fn(|j| w[kc * 9 + i * 3 + j].abs() as f64)
            });
            abs_sandwich(g, &f)
        })
        .collect();
    for ty in 0..oh.div_ceil(T) {
        for tx in 0..ow.div_ceil(T) {
            let patches: Vec<[[f64; A]; A]> = (0..s.in_c)
                .map(|c| {
                    let d: [[f64; A]; A] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| {
                            let y = (T * ty + i) as isize - s.pad_h as isize;
                            let xx = (T * tx + j) as isize - s.pad_w as isize;
                            pixel(c, y, xx)
                        })
                    });
                    abs_sandwich(bt, &d)
                })
                .collect();
            for k in 0..s.out_c {
                let mut m = [[0.0f64; A]; A];
                for (c, v) in patches.iter().enumerate() {
                    let u = &filters[k * s.in_c + c];
                    for i in 0..A {
                        for j in 0..A {
                            m[i][j] += u[i][j] * v[i][j];
                        }
                    }
                }
                let y = abs_sandwich(at, &m);
                for (i, row) in y.iter().enumerate() {
                    for (j, &mag) in row.iter().enumerate() {
                        let (oy, ox) = (T * ty + i, T * tx + j);
                        if oy >= oh || ox >= ow {
                            continue;
                        }
                        let o = (k * oh + oy) * ow + ox;
                        let extra = b.map_or(0.0, |b| b[k].abs() as f64)
                            + r.map_or(0.0, |r| r[o].abs() as f64);
                        want.bound[o] = gamma(depth) * (mag + extra) + U * want.value[o].abs();
                    }
                }
            }
        }
    }
}

/// Compiles `spec`, runs it over the whole range and in 2 and 3 pieces (bit-identical),
/// and compares with the reference. Returns the method the kernel used.
/// Checks `s` with the method the kernel module picks and, when Winograd (F(4x4) or F(2x2))
/// can compute `s` but was not picked, with Winograd too: its cost model keeps it to large
/// (F(2x2): small) outputs, and its code must be right on every shape. Returns the methods
/// checked, the picked one first.
fn check_conv(s: &ConvSpec, seed: u64) -> Vec<ConvMethod> {
    let mut checked = vec![check_conv_with(s, seed, None, None).1];
    for method in [ConvMethod::Winograd, ConvMethod::Winograd2] {
        let fits = KernelModule::new()
            .unwrap()
            .add_conv_with(s, method)
            .is_ok();
        if fits && checked[0] != method {
            check_conv_with(s, seed, None, Some(method));
            checked.push(method);
        }
    }
    checked
}

/// Compiles `s` at `isa` (`None`: the default level, with Winograd where it applies, and the
/// weights packed by `pack_conv_weights`; `Some`: that level, without Winograd), with
/// `method` if given, runs it on NaN-poisoned outputs over the whole range and split in 2, 3
/// and 7 pieces (bit-identical), checks it against the reference; returns the output, the
/// method and the micro-kernel.
fn check_conv_with(
    s: &ConvSpec,
    seed: u64,
    isa: Option<cnnc::Isa>,
    method: Option<ConvMethod>,
) -> (Vec<f32>, ConvMethod, String) {
    let x = rand_vec(s.input_len(), seed);
    // Weights scaled by 1/sqrt(fan-in), as in trained networks, so outputs are O(1).
    let scale = 1.0 / ((s.in_c * s.kernel_h * s.kernel_w) as f32).sqrt();
    let w: Vec<f32> = rand_vec(s.weight_len(), seed + 1)
        .iter()
        .map(|v| v * scale)
        .collect();
    let b = s.bias.then(|| rand_vec(s.out_c, seed + 2));
    let r = s.residual.then(|| rand_vec(s.output_len(), seed + 3));
    let mut km = KernelModule::new().unwrap();
    if let Some(isa) = isa {
        km.set_isa(isa).unwrap();
        km.set_winograd(false);
    }
    let p = match method {
        Some(m) => km.add_conv_with(s, m).unwrap(),
        None => km.add_conv(s).unwrap(),
    };
    let packed = match (isa, method) {
        (None, None) => pack_conv_weights(s, &w, b.as_deref()).unwrap(),
        _ => p.pack_weights(&w, b.as_deref()).unwrap(),
    };
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let what = format!("{s:?} at {isa:?} by {method:?}");
    let mut out = vec![f32::NAN; s.output_len()];
    k.run_all(&x, &packed, r.as_deref(), &mut out).unwrap();
    let mut want = ref_conv(s, &x, &w, b.as_deref(), r.as_deref());
    if matches!(k.method(), ConvMethod::Winograd | ConvMethod::Winograd2) {
        let io = (&x[..], &w[..], b.as_deref(), r.as_deref());
        winograd_bounds(k.method(), s, io, &mut want);
    }
    assert_close(&out, &want, &what);
    let units = k.work_units();
    let mut scratch = vec![0.0f32; k.scratch_len()];
    for pieces in [2usize, 3, 7] {
        let mut out2 = vec![f32::NAN; s.output_len()];
        for i in 0..pieces {
            let range = units * i / pieces..units * (i + 1) / pieces;
            k.run(&x, &packed, r.as_deref(), &mut out2, &mut scratch, range)
                .unwrap();
        }
        let same = out
            .iter()
            .zip(&out2)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: split in {pieces} differs");
    }
    // On a thread pool, as the runtime runs it: the prologue, then each phase split
    // (Winograd: the products by position and block, the output transform by channel).
    for pool in split_pools() {
        let mut scratch = vec![0.0f32; k.scratch_len_on(pool.threads())];
        let mut out2 = vec![f32::NAN; s.output_len()];
        k.run_parallel(pool, &x, &packed, r.as_deref(), &mut out2, &mut scratch)
            .unwrap();
        let same = out
            .iter()
            .zip(&out2)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: on {} threads differs", pool.threads());
    }
    (out, k.method(), k.micro_kernel().to_string())
}

/// Pools of 2 and 3 threads shared by the tests (workers spin briefly, then park).
fn split_pools() -> &'static [ThreadPool; 2] {
    static POOLS: std::sync::OnceLock<[ThreadPool; 2]> = std::sync::OnceLock::new();
    POOLS.get_or_init(|| [2, 3].map(|n| ThreadPool::new(n, std::time::Duration::from_micros(20))))
}

/// Winograd at every ISA level, whole range, split ranges and on 2 and 3 threads (whose
/// products are split by position and channel block and whose output transform by
/// channel): bit-identical, and against the reference. Shapes: 1..3 blocks of 14 and of 6
/// channels with tails (16 channels at least: below, Winograd does not apply), dense tile
/// groups (7x7, 9x11) and row groups with partial last tiles, bias, residual and ReLU.
/// At avx512 the transforms are AVX-512 code on 16 tiles per vector: grids whose rows are
/// 13-16 or 30 tiles run tile group by tile group (`G`: one or two vectors of 16 tiles per
/// row; groups of 1 and 2 tile rows, a range's last group cut short at its end (a GEMM over
/// its own columns), also inside a group where the pool splits the tile rows; partial last
/// tile rows and columns; pads 0 and 1), and the grids of rows of up to 8 tiles that are not
/// dense run the whole layout on them (`W`), rows of up to 8 (4) tiles stacked 2 (4) to a
/// vector. At avx2 every grid that is not dense runs the AVX2 transforms on 8 tiles per
/// vector ("ymm transforms"): rows of 1-3 vectors, the last vector with 1-8 real tiles,
/// output widths at every remainder of 8 (the masked right edge), last tile rows of 1-4
/// output rows, rows of 4 tiles two to a vector; at avx512 too, where neither zmm layout
/// applies and the rows have 9 tiles or more.
#[test]
fn conv_winograd_every_isa_on_a_pool() {
    let mut seed = 2000;
    // Where the transforms run at avx512: f32x4 code (`F`), grouped, or the whole layout.
    const F: &str = "";
    const G: &str = "groups of";
    const W: &str = "a vector";
    for (c, h, w, k, p, at_avx512) in [
        (16, 7, 7, 16, 1, F),
        (17, 9, 11, 29, 1, F),
        (20, 14, 14, 43, 1, W),
        (33, 17, 6, 17, 1, F),
        (24, 22, 19, 64, 1, W),
        (16, 13, 50, 20, 1, G),
        (17, 23, 61, 29, 1, G),
        (20, 30, 58, 33, 0, G),
        (16, 9, 118, 16, 1, G),
        (16, 36, 50, 17, 1, G),
        // More input than output channels: the group's `V` and `M` share planes of `in_c`
        // rows (`M[ξ]` over `V[ξ - 1]`).
        (37, 11, 55, 16, 1, G),
        // The whole layout: rows of 7 and 8 tiles two to a vector (the last vector's second
        // tile row past the grid, or of 3 output rows), rows of 4 and 2 tiles four to a
        // vector (the last vector half past the grid); one row of 16 tiles (too few rows to
        // group) and rows of 10 tiles: the ymm transforms (f32x4 with CNNC_WINOGRAD_YMM=0).
        (16, 28, 28, 20, 1, W),
        (20, 15, 30, 33, 1, W),
        (24, 22, 13, 20, 1, W),
        (19, 38, 10, 17, 0, W),
        (17, 4, 62, 16, 1, F),
        (16, 19, 40, 18, 1, F),
        // `U` above 1 MB: the GEMM's first tile of each block row prefetches its weights
        // (at 14x14, 16 tiles, the row's only, partial tile at avx512).
        (96, 26, 30, 80, 1, W),
        (96, 10, 62, 80, 1, F),
        (96, 14, 14, 80, 1, W),
        // The AVX2 transforms: rows of 18 tiles (3 vectors, the last with 2 tiles; 70
        // pixels: 6 lanes of the right edge's vector), of 8 tiles (one vector, 32 pixels:
        // no masked edge), 11 tiles (41 pixels: one lane), 9 tiles (33 pixels, a vector
        // of one tile), a last tile row of 1 output row.
        (17, 11, 70, 19, 1, F),
        (16, 9, 32, 16, 1, W),
        (18, 13, 39, 17, 2, F),
        (16, 17, 35, 20, 0, F),
        (20, 5, 94, 16, 1, F),
        // Rows of 4 tiles, two to a vector: 13x13 (4 tile rows, the last of one output
        // row), 5 tile rows (the last call's second past the grid) of 15 and 14 pixels.
        (20, 13, 13, 24, 1, W),
        (16, 18, 15, 18, 1, W),
        (17, 22, 16, 16, 0, W),
    ] {
        for isa in cnnc::Isa::host_levels() {
            let mut s = spec(c, h, w, k, 3, 3, (1, 1), (p, p));
            (s.bias, s.residual, s.relu) = (seed % 2 == 0, seed % 3 != 0, true);
            let (_, _, micro) = check_conv_with(&s, seed, Some(isa), Some(ConvMethod::Winograd));
            let zmm = isa == cnnc::Isa::Avx512 && at_avx512 != F;
            let (oh, ow) = (s.out_h(), s.out_w());
            let dense = ow.div_ceil(4) % 4 != 0 && oh.div_ceil(4) * ow.div_ceil(4) <= 16;
            // At avx512 where neither zmm layout applies: rows of 9 tiles or more.
            let ymm = !dense
                && ow > 12
                && match isa {
                    cnnc::Isa::Avx2 => true,
                    cnnc::Isa::Avx512 => at_avx512 == F && ow > 32,
                    cnnc::Isa::Sse => false,
                };
            assert_eq!(
                micro.contains("ymm transforms"),
                ymm,
                "{s:?} at {isa}: {micro}"
            );
            assert_eq!(
                micro.contains("zmm transforms"),
                zmm,
                "{s:?} at {isa}: {micro}"
            );
            assert!(!zmm || micro.contains(at_avx512), "{s:?} at {isa}: {micro}");
            seed += 1;
        }
    }
}

/// Winograd F(2x2, 3x3) at every ISA level, whole range, split ranges and on 2 and 3
/// threads: bit-identical, and against the reference (its own error bound). Shapes: output
/// sizes of both parities (a last tile column or row of one pixel), dense grids of at most
/// 16 tiles whose rows are not whole groups of 4 (3x3 and 5x5 outputs; one tile at 2x2),
/// rows of groups of 4 with a partial last group, grids of one tile row, pads 0-3 and
/// unequal pads on the two axes, channel counts off the GEMM's blocks and the vector width,
/// `U` above 1 MB (the GEMM prefetches its stream), every epilogue. The f32x4 transforms and the GEMM's FMA chains in channel
/// order give the same bits at every level.
#[test]
fn conv_winograd_small_tiles_every_isa_on_a_pool() {
    let shapes = [
        (16, 8, 8, 16, 1),
        (17, 7, 9, 23, 1),
        (16, 2, 2, 16, 1),
        (20, 5, 5, 18, 1),
        (33, 7, 7, 17, 0),
        (24, 13, 10, 40, 1),
        (16, 9, 30, 16, 2),
        (19, 14, 14, 29, 1),
        (16, 4, 19, 33, 0),
        (16, 2, 35, 16, 1),
        (17, 3, 40, 20, 1),
        (96, 8, 8, 200, 1),
        (130, 7, 9, 140, 1),
    ]
    .map(|(c, h, w, k, p)| (c, h, w, k, (p, p)));
    // Pads of 3 (a whole tile of padding) and unequal pads.
    let padded = [
        (16, 9, 7, 16, (3, 3)),
        (18, 8, 11, 20, (0, 2)),
        (16, 6, 6, 17, (2, 1)),
    ];
    for (seed, (c, h, w, k, pads)) in (3000..).zip(shapes.into_iter().chain(padded)) {
        let mut s = spec(c, h, w, k, 3, 3, (1, 1), pads);
        (s.bias, s.residual, s.relu) = (seed % 2 == 0, seed % 3 != 0, seed % 5 != 0);
        let mut first: Option<Vec<f32>> = None;
        for isa in cnnc::Isa::host_levels() {
            let (out, method, _) =
                check_conv_with(&s, seed, Some(isa), Some(ConvMethod::Winograd2));
            assert_eq!(method, ConvMethod::Winograd2, "{s:?} at {isa}");
            let same = |f: &Vec<f32>| f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                first.as_ref().is_none_or(same),
                "{s:?}: other bits at {isa}"
            );
            first.get_or_insert(out);
        }
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
        residual_in_place: false,
        clip: None,
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

#[test]
fn conv_winograd_shapes() {
    // 3x3 stride 1 with at least 16 channels: output sizes of every remainder mod 4 on both
    // axes (tiles overhanging the edge), groups of 1-4 real tiles at the right edge, one tile,
    // pads 0-2, channel counts off the 6-channel block and the vector width, every epilogue.
    let mut seed = 500;
    for &(c, h, w, k, p) in &[
        (16, 6, 6, 16, 0),
        (17, 7, 9, 23, 0),
        (16, 8, 8, 16, 1),
        (19, 13, 11, 37, 1),
        (32, 14, 14, 33, 1),
        (20, 18, 21, 16, 2),
        (24, 30, 5, 18, 1),
        (64, 7, 7, 70, 1),
        (40, 29, 19, 16, 1),
        (16, 3, 70, 17, 2),
    ] {
        for (bias, relu, residual) in [
            (false, false, false),
            (true, true, true),
            (true, false, true),
            (false, true, false),
        ] {
            let mut sp = spec(c, h, w, k, 3, 3, (1, 1), (p, p));
            sp.bias = bias;
            sp.relu = relu;
            sp.residual = residual;
            assert!(
                check_conv(&sp, seed).contains(&ConvMethod::Winograd),
                "{sp:?}"
            );
            seed += 7;
        }
    }
    // Too few channels, strided or not 3x3: the direct kernel.
    for sp in [
        spec(8, 10, 10, 32, 3, 3, (1, 1), (1, 1)),
        spec(32, 10, 10, 32, 3, 3, (2, 2), (1, 1)),
        spec(32, 10, 10, 32, 3, 5, (1, 1), (1, 1)),
    ] {
        assert_eq!(check_conv(&sp, 3), [ConvMethod::Direct], "{sp:?}");
    }
}

#[test]
fn conv_tiles_and_channel_tails() {
    // Output widths 1..=13 exercise every tile split; out_c 1..=17 every channel tail.
    let mut seed = 500;
    for ow in 1..=13 {
        check_conv(&spec(3, 3, ow + 2, 5, 3, 3, (1, 1), (0, 0)), seed);
        seed += 1;
    }
    for k in 1..=17 {
        let mut s = spec(5, 6, 7, k, 3, 3, (1, 1), (1, 1));
        s.bias = true;
        s.residual = k % 2 == 0;
        s.relu = k % 3 == 0;
        check_conv(&s, seed);
        seed += 1;
    }
}

#[test]
fn conv_pointwise_gemm_tails() {
    // 1x1 stride 1 goes through the pixel GEMM: pixel tails 0..11, channel tails, C % 4.
    let mut seed = 900;
    for (c, h, w, k) in [
        (1, 1, 1, 1),
        (3, 1, 5, 2),
        (5, 3, 5, 7),
        (9, 4, 4, 4),
        (13, 7, 7, 9),
        (64, 5, 9, 12),
        (6, 1, 25, 3),
        (70, 20, 20, 5),
    ] {
        for (bias, relu, residual) in [
            (false, false, false),
            (true, true, true),
            (true, false, false),
        ] {
            let mut s = spec(c, h, w, k, 1, 1, (1, 1), (0, 0));
            s.bias = bias;
            s.relu = relu;
            s.residual = residual;
            check_conv(&s, seed);
            seed += 1;
        }
    }
}

#[test]
fn conv_pointwise_pixel_ranges() {
    // The pointwise GEMM's work units are (8-pixel column, channel block) pairs, pixel
    // major: any range boundary (mid-column, mid-panel, in the partial last column) must
    // give the same bits, and every unit on its own must write exactly its outputs.
    let mut seed = 950;
    for (c, h, w, k, residual) in [
        (256, 23, 29, 13, true),  // 3+ panels of 192 pixels, partial last column of 3
        (300, 9, 9, 64, false),   // 81 pixels: 10 full columns and one single pixel
        (33, 7, 12, 7, true),     // 84 pixels: last column of 4
        (700, 10, 10, 20, true),  // avx512: a column of 48 too long to pack: 12x32 (24 rows)
        (700, 10, 10, 29, false), // the same, 14x32 (30 rows, against 36 at 12)
        (32, 12, 12, 130, true),  // a 4x expansion: channel block major (and a channel tail)
        (32, 33, 32, 130, true),  // the same over 1024 pixels: avx512 8x48 tiles
        // More output channels than pixels: at avx2 / avx512 the units go channel block
        // by channel block (full and partial columns; 20 pixels: no full zmm column).
        (40, 6, 6, 50, true),
        (130, 5, 7, 45, false),
        (20, 4, 5, 30, true),
        // A 7x7 plane, weight major: at avx512 one 48-pixel column per channel block whose
        // kernel computes the 49th pixel too (8 x 48 + 1), with a channel tail; at avx2
        // three 16-pixel columns and the 49th pixel in lanes (3 groups of 8 blocks of 6
        // channels, the last of 6 blocks and a tail of 4; 2 groups, the last of 3 blocks).
        (37, 7, 7, 130, true),
        (70, 7, 7, 64, false),
        // 289 = 18 x 16 + 1 pixels: at avx2 the lone pixel in lanes, pixel major (1 group
        // of 8 blocks, the last 2 rows) and weight major (an expansion; 8 groups of 8 and
        // one block in the last group).
        (64, 17, 17, 44, true),
        (32, 17, 17, 294, false),
        // 169 = 10 x 16 + 8 + 1 pixels (SqueezeNet's 13x13): at avx2 a last column of one
        // vector and the last pixel in lanes, weight major with a channel tail (a 1000-class
        // classifier's shape, smaller) and pixel major.
        (96, 13, 13, 200, true),
        (70, 13, 13, 20, false),
        // 14x14 and 7x14 planes, weight major with 512+ channels in and out: at avx512
        // columns of 48 + 1 pixels (4 and 2), a channel tail of 5; over 1 MB of weights.
        (520, 14, 14, 517, true),
        (512, 7, 14, 600, false),
        // Over 256 KB of output, packed 48-pixel columns (avx512): the blocks reading the
        // packed column prefetch the next full column's outputs (the last full one its own).
        (64, 33, 33, 70, true),
        (200, 23, 29, 120, false),
    ] {
        let mut s = spec(c, h, w, k, 1, 1, (1, 1), (0, 0));
        s.bias = true;
        s.relu = true;
        s.residual = residual;
        // The lone 49th pixel's epilogue in its own (ymm) accumulator: clip too.
        if h * w == 49 {
            s.clip = Some(PROP_CLIP);
        }
        check_conv(&s, seed);
        let x = rand_vec(s.input_len(), seed);
        let wt = rand_vec(s.weight_len(), seed + 1);
        let b = rand_vec(k, seed + 2);
        let r = residual.then(|| rand_vec(s.output_len(), seed + 3));
        let packed = pack_conv_weights(&s, &wt, Some(&b)).unwrap();
        let mut km = KernelModule::new().unwrap();
        let p = km.add_conv(&s).unwrap();
        let code = km.finalize().unwrap();
        let kn = code.get(p).unwrap();
        let units = kn.work_units();
        if cnnc::Isa::default_level() == cnnc::Isa::Avx2 {
            let lanes = h * w > 16 && (h * w % 16) % 8 == 1;
            assert_eq!(kn.micro_kernel().ends_with("+1 in lanes"), lanes, "{s:?}");
        }
        // Tile (channels, pixels) per ISA level: f32x4 6x8, avx2 6x16, avx512 8x48 where
        // the tile column packs (at most 128 KB, pixel major) else 14x32.
        // Channel block major where the weights outweigh the input or a bottleneck expands
        // 4x from an input in L2 (`PixelGemm::streamed`, at avx2 / avx512).
        let expands = k >= 4 * c && c >= 32 && c * h * w * 4 <= 1 << 20;
        let weight_major = k > h * w || expands;
        // 8x48 also for an expansion of at least 1024 pixels.
        let packs48 = (c * 48 * 4 <= 128 * 1024 && h * w >= 48 && !weight_major)
            || (expands && h * w >= 1024);
        // Otherwise 12x32 where that pads the channels to at least 4% fewer rows than 14.
        let rows12 = k.div_ceil(14) * 14 * 100 >= k.div_ceil(12) * 12 * 104;
        // A weight-major 7x7 plane at avx512: one column of 48 + 1 pixels; 2-4 such columns
        // with 512+ channels in and out.
        let lone_plane =
            h * w == 49 || ((h * w).is_multiple_of(49) && h * w / 49 <= 4 && c >= 512 && k >= 512);
        let lone = weight_major && lone_plane && cnnc::Isa::default_level() == cnnc::Isa::Avx512;
        let (mr, np) = match cnnc::Isa::default_level() {
            cnnc::Isa::Sse => (6, 8),
            cnnc::Isa::Avx2 => (6, 16),
            cnnc::Isa::Avx512 if packs48 || lone => (8, 48),
            cnnc::Isa::Avx512 if rows12 => (12, 32),
            cnnc::Isa::Avx512 => (14, 32),
        };
        let cols = if lone {
            h * w / 49
        } else {
            (h * w).div_ceil(np)
        };
        // Pixels from one column's start to the next.
        let col_px = if lone { 49 } else { np };
        assert_eq!(units, cols * k.div_ceil(mr), "{s:?}");
        let mut all = vec![f32::NAN; s.output_len()];
        kn.run_all(&x, &packed, r.as_deref(), &mut all).unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        for cuts in [
            vec![1, 7],
            vec![5, 6, units - 1],
            vec![units / 3, units / 2 + 1],
        ] {
            let mut out = vec![f32::NAN; s.output_len()];
            let mut prev = 0;
            for &cut in cuts.iter().chain(std::iter::once(&units)) {
                // Wide tiles give fewer units: cuts past the end collapse onto it.
                let cut = cut.clamp(prev, units);
                kn.run(&x, &packed, r.as_deref(), &mut out, &mut [], prev..cut)
                    .unwrap();
                prev = cut;
            }
            assert!(same(&all, &out), "{s:?}: cuts {cuts:?}");
        }
        // Unit by unit: each writes only its own np x mr block (the rest stays NaN).
        let mut out = vec![f32::NAN; s.output_len()];
        let mut written = 0;
        for u in 0..units {
            kn.run(&x, &packed, r.as_deref(), &mut out, &mut [], u..u + 1)
                .unwrap();
            // Pixel major, or channel-block major where the wide kernels' weights outweigh
            // the input (`PixelGemm::streamed`).
            let nmb = k.div_ceil(mr);
            let (t, mb) = if np > 8 && weight_major {
                (u % cols, u / cols)
            } else {
                (u / nmb, u % nmb)
            };
            let px = (h * w - t * col_px).min(col_px);
            let ch = (k - mb * mr).min(mr);
            // At avx2 the last pixel after the full columns or after the last column's full
            // vector (`16 n + 1` or `16 n + 9` pixels) goes in lanes, 8 channel blocks a
            // call: the unit of each group's last block computes the group's, the others
            // none.
            let lone_lanes = cnnc::Isa::default_level() == cnnc::Isa::Avx2
                && h * w > np
                && (h * w % np) % 8 == 1
                && t == cols - 1;
            let first_block = match (mb + 1 == nmb, mb % 8 == 7) {
                (true, _) => mb / 8 * 8,
                (false, true) => mb - 7,
                (false, false) => mb + 1,
            };
            let lone_rows = match lone_lanes {
                true => first_block * mr..(k.min((mb + 1) * mr)).max(first_block * mr),
                false => 0..0,
            };
            let vector_px = px - usize::from(lone_lanes);
            let now = out.iter().filter(|v| !v.is_nan()).count();
            assert_eq!(
                now - written,
                vector_px * ch + lone_rows.len(),
                "{s:?} unit {u}"
            );
            for ki in mb * mr..mb * mr + ch {
                let at = ki * h * w + t * col_px;
                let row = &out[at..at + vector_px];
                assert!(row.iter().all(|v| !v.is_nan()), "{s:?} unit {u}");
            }
            for ki in lone_rows {
                assert!(!out[ki * h * w + h * w - 1].is_nan(), "{s:?} unit {u}");
            }
            written = now;
        }
        assert!(same(&all, &out), "{s:?}: unit by unit");
        seed += 10;
    }
}

#[test]
fn conv_rejects_bad_buffers() {
    let s = spec(3, 5, 5, 4, 3, 3, (1, 1), (1, 1));
    let mut km = KernelModule::new().unwrap();
    let p = km.add_conv(&s).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let x = vec![0.0; s.input_len()];
    let packed = pack_conv_weights(&s, &vec![0.0; s.weight_len()], None).unwrap();
    let mut out = vec![0.0; s.output_len()];
    let mut scratch = vec![0.0; k.scratch_len()];
    assert!(k
        .run(&x[1..], &packed, None, &mut out, &mut scratch, 0..1)
        .is_err());
    assert!(k
        .run(&x, &packed[1..], None, &mut out, &mut scratch, 0..1)
        .is_err());
    assert!(k
        .run(
            &x,
            &packed,
            Some(&out.clone()),
            &mut out,
            &mut scratch,
            0..1
        )
        .is_err());
    assert!(k
        .run(&x, &packed, None, &mut out, &mut scratch[1..], 0..1)
        .is_err());
    assert!(k
        .run(&x, &packed, None, &mut out, &mut scratch, 0..2)
        .is_err());
    assert!(k
        .run(&x, &packed, None, &mut out[1..], &mut scratch, 0..1)
        .is_err());
    assert!(pack_conv_weights(&s, &[0.0; 3], None).is_err());
    assert!(KernelModule::new()
        .unwrap()
        .add_conv(&spec(3, 2, 2, 4, 3, 3, (1, 1), (0, 0)))
        .is_err());
    // A handle from another module is refused.
    let mut km2 = KernelModule::new().unwrap();
    let p2 = km2.add_conv(&s).unwrap();
    let _code2 = km2.finalize().unwrap();
    assert!(code.get(p2).is_err());
}

fn ref_fc(s: &FcSpec, x: &[f32], w: &[f32], b: Option<&[f32]>, r: Option<&[f32]>) -> Expected {
    let (c, k) = (s.in_features, s.out_features);
    let mut out = Expected::new(s.output_len());
    for n in 0..s.batch {
        for ki in 0..k {
            let mut acc = Acc::default();
            if let Some(b) = b {
                acc.add(b[ki] as f64);
            }
            for ci in 0..c {
                acc.add(w[ki * c + ci] as f64 * x[n * c + ci] as f64);
            }
            if let Some(r) = r {
                acc.add(r[n * k + ki] as f64);
            }
            out.push(acc, |v| epilogue(v, s.relu, s.clip));
        }
    }
    out
}

fn check_fc(s: &FcSpec, seed: u64) {
    check_fc_at(s, seed, None);
}

/// Compiles `s` at `isa` (`None`: the default level, the weights packed by
/// `pack_fc_weights`), runs it on NaN-poisoned outputs over the whole range and split in 2, 3
/// and 7 pieces (bit-identical), checks it against the reference; returns the output and
/// the micro-kernel.
fn check_fc_at(s: &FcSpec, seed: u64, isa: Option<cnnc::Isa>) -> (Vec<f32>, String) {
    let x = rand_vec(s.input_len(), seed);
    let scale = 1.0 / (s.in_features as f32).sqrt();
    let w: Vec<f32> = rand_vec(s.weight_len(), seed + 1)
        .iter()
        .map(|v| v * scale)
        .collect();
    let b = s.bias.then(|| rand_vec(s.out_features, seed + 2));
    let r = s.residual.then(|| rand_vec(s.output_len(), seed + 3));
    let mut km = KernelModule::new().unwrap();
    if let Some(isa) = isa {
        km.set_isa(isa).unwrap();
    }
    let p = km.add_fc(s).unwrap();
    let packed = match isa {
        None => pack_fc_weights(s, &w, b.as_deref()).unwrap(),
        Some(_) => p.pack_weights(&w, b.as_deref()).unwrap(),
    };
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    assert_eq!(packed.len(), k.packed_len());
    if isa.is_some() {
        // The compiled kernel packs as its pending handle did.
        let again = k.pack_weights(&w, b.as_deref()).unwrap();
        assert!(again
            .iter()
            .zip(packed.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert_eq!(again.len(), packed.len());
    }
    let what = format!("{s:?} at {isa:?} ({})", k.micro_kernel());
    let mut out = vec![f32::NAN; s.output_len()];
    k.run_all(&x, &packed, r.as_deref(), &mut out).unwrap();
    assert_close(&out, &ref_fc(s, &x, &w, b.as_deref(), r.as_deref()), &what);
    let units = k.work_units();
    for pieces in [2usize, 3, 7] {
        let mut out2 = vec![f32::NAN; s.output_len()];
        for i in 0..pieces {
            let range = units * i / pieces..units * (i + 1) / pieces;
            k.run(&x, &packed, r.as_deref(), &mut out2, range).unwrap();
        }
        assert!(
            out.iter()
                .zip(&out2)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: split in {pieces}"
        );
    }
    (out, k.micro_kernel())
}

/// fc at batch > 1 at every ISA level the host has: the batch-row GEMM on the f32x4 tile
/// (sse) and the micro-kernels (avx2 6x16, avx512 14x32), batch 2..33 (every batch-tile
/// remainder of 6 and 14, balanced tiles), input features odd and around multiples of
/// 16 / 32, the reduction in 1, 2 and 3+ chunks, output features with every remainder of
/// 8, 16 and 32 (masked tails), every epilogue; against the reference, and bit-identical
/// across split ranges and levels.
#[test]
fn fc_batch_every_isa_bit_identical() {
    let mut shapes = vec![
        (1, 1, 2),
        (31, 33, 15),
        (33, 65, 29),
        (64, 47, 33),
        (129, 100, 14),
        (17, 96, 28),
        (300, 19, 3),
        (4, 4, 4),
        // Reductions in 2 and 3+ chunks (128 KB of copied inputs each) at every level.
        (2001, 9, 33),
        (1203, 40, 30),
        (4099, 17, 8),
    ];
    for k in 1..=33 {
        shapes.push((3 + 2 * (k % 9), k, 2 + k % 32));
    }
    let levels = cnnc::Isa::host_levels();
    let mut seed = 5000;
    for (i, (c, k, n)) in shapes.into_iter().enumerate() {
        let s = FcSpec {
            bias: i % 2 == 0,
            relu: i % 3 != 1,
            residual: i % 4 < 2,
            clip: (i % 5 == 3).then_some(PROP_CLIP),
            ..FcSpec::new(c, k, n)
        };
        let mut outs = Vec::new();
        for &isa in &levels {
            let (out, micro) = check_fc_at(&s, seed, Some(isa));
            let tile = match isa {
                cnnc::Isa::Sse => "f32x4",
                cnnc::Isa::Avx2 => "avx2",
                cnnc::Isa::Avx512 => "avx512",
            };
            let want = format!("batch rows, {tile} ");
            assert!(micro.starts_with(&want), "{s:?} at {isa}: {micro}");
            outs.push((isa, out));
        }
        assert_levels_agree(&s, &outs);
        seed += 5;
    }
}

/// fc at batch 1 at every ISA level the host has: at avx2 / avx512 the wide kernel
/// (`x86::fc_dot`, one call per block of 8 / 16 output features), at sse the f32x4 kernel.
/// In-features with every remainder of 8 and 16 (the wide kernel's masked last step: 1-17,
/// 31-33, 1000, 2048 + 5; 53 and 63: an odd number of whole zmm steps, so the counted loop
/// then a plain step), out-features around the blocks (its masked last block: 1, 7-9,
/// 15-17, 33, 100, 1000; several whole blocks and no partial one: 32, 48), every epilogue
/// combination; against the reference on NaN-poisoned outputs, bit-identical across split
/// ranges (`check_fc_at`).
#[test]
fn fc_batch1_every_isa() {
    let ins = (1..=17).chain([31, 32, 33, 53, 63, 1000, 2048 + 5]);
    let outs = [1, 7, 8, 9, 15, 16, 17, 32, 33, 48, 100, 1000];
    let mut seed = 7000;
    for isa in cnnc::Isa::host_levels() {
        // `CNNC_FC_WIDE=0` keeps the f32x4 kernel at every level; `CNNC_FC_PREFETCH` only
        // appends its distance to the name.
        let wide_off = std::env::var("CNNC_FC_WIDE").is_ok_and(|v| v.trim() == "0");
        let want = match isa {
            _ if wide_off => "f32x4 dot 8 features",
            cnnc::Isa::Sse => "f32x4 dot 8 features",
            cnnc::Isa::Avx2 => "avx2 dot 8 features",
            cnnc::Isa::Avx512 => "avx512 dot 16 features",
        };
        for (i, c) in ins.clone().enumerate() {
            for j in 0..3 {
                let k = outs[(i + 3 * j) % outs.len()];
                let flags = (i * 3 + j) % 16;
                let s = FcSpec {
                    bias: flags & 1 != 0,
                    relu: flags & 2 != 0,
                    residual: flags & 4 != 0,
                    clip: (flags & 8 != 0).then_some(PROP_CLIP),
                    ..FcSpec::new(c, k, 1)
                };
                let (_, micro) = check_fc_at(&s, seed, Some(isa));
                assert!(micro.starts_with(want), "{s:?} at {isa}: {micro}");
                seed += 4;
            }
        }
        // Every epilogue combination on a masked step and a masked block.
        for flags in 0..16 {
            let s = FcSpec {
                bias: flags & 1 != 0,
                relu: flags & 2 != 0,
                residual: flags & 4 != 0,
                clip: (flags & 8 != 0).then_some(PROP_CLIP),
                ..FcSpec::new(37, 21, 1)
            };
            check_fc_at(&s, seed, Some(isa));
            seed += 4;
        }
    }
}

#[test]
fn fc_shapes() {
    let mut seed = 2000;
    for (c, k, n) in [
        (1, 1, 1),
        (3, 5, 1),
        (17, 10, 2),
        (64, 8, 3),
        (33, 19, 6),
        (7, 70, 7),
        (100, 13, 13),
        (512, 1000, 1),
        (9, 16, 5),
        // Batch 1 with at least 1 MB of weights: the f32x4 kernel's (sse's) chunks of 32
        // inputs (1 KB of weights) with prefetches, run at sse as well as at the default
        // level (the wide kernel at avx2 / avx512). Exactly one chunk, one plus a 2-step
        // iteration, one plus a single step and a 3-input tail, many chunks with every
        // remainder.
        (32, 8200, 1),
        (40, 6600, 1),
        (39, 6801, 1),
        (4096 + 32 + 8 + 4 + 3, 70, 1),
    ] {
        for (bias, relu, residual) in [
            (false, false, false),
            (true, true, true),
            (true, false, false),
        ] {
            let mut s = FcSpec::new(c, k, n);
            s.bias = bias;
            s.relu = relu;
            s.residual = residual;
            check_fc(&s, seed);
            if n == 1 {
                check_fc_at(&s, seed, Some(cnnc::Isa::Sse));
            }
            seed += 4;
        }
    }
}

/// Max pool is exact; average pool is a sum of the window divided by its size (one
/// more rounding).
fn ref_pool(s: &PoolSpec, x: &[f32]) -> Expected {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut out = Expected::new(s.output_len());
    for c in 0..s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f64::NEG_INFINITY;
                let mut acc = Acc::default();
                for fy in 0..s.kernel_h {
                    for fx in 0..s.kernel_w {
                        let iy = (oy * s.stride_h + fy) as isize - s.pad_h as isize;
                        let ix = (ox * s.stride_w + fx) as isize - s.pad_w as isize;
                        if iy < 0 || ix < 0 || iy >= s.in_h as isize || ix >= s.in_w as isize {
                            continue;
                        }
                        let v = x[(c * s.in_h + iy as usize) * s.in_w + ix as usize] as f64;
                        m = m.max(v);
                        acc.add(v);
                    }
                }
                match s.kind {
                    PoolKind::Max => out.push(
                        Acc {
                            sum: m,
                            abs: 0.0,
                            depth: 0,
                        },
                        |v| v,
                    ),
                    PoolKind::Avg => {
                        out.push(acc.scaled(1.0 / (s.kernel_h * s.kernel_w) as f64), |v| v)
                    }
                }
            }
        }
    }
    out
}

/// The pool `s` compiled at level `isa`.
fn pool_at(s: &PoolSpec, isa: cnnc::Isa) -> PoolKernel {
    let mut km = KernelModule::new().unwrap();
    km.set_isa(isa).unwrap();
    let p = km.add_pool(s).unwrap();
    km.finalize().unwrap().get(p).unwrap()
}

/// At every ISA level (max pools with horizontal stride 1 or 2 take the wide kernel at
/// avx2 and avx512): against the reference, with the same bits at every level and for
/// any split of the channels.
fn check_pool(s: &PoolSpec, seed: u64) {
    let x = rand_vec(s.input_len(), seed);
    let mut first: Option<Vec<f32>> = None;
    for isa in cnnc::Isa::host_levels() {
        let k = pool_at(s, isa);
        let mut out = vec![f32::NAN; s.output_len()];
        k.run_all(&x, &mut out).unwrap();
        assert_close(&out, &ref_pool(s, &x), &format!("{s:?} at {isa}"));
        let mut out2 = vec![f32::NAN; s.output_len()];
        let mut scratch = vec![0.0; k.scratch_len()];
        let c = s.channels;
        for i in 0..2 {
            k.run(&x, &mut out2, &mut scratch, c * i / 2..c * (i + 1) / 2)
                .unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&out), bits(&out2), "{s:?} at {isa}: split");
        match &first {
            Some(f) => assert_eq!(
                bits(f),
                bits(&out),
                "{s:?} at {isa}: not the first level's bits"
            ),
            None => first = Some(out),
        }
    }
}

#[test]
fn pool_shapes() {
    let mut seed = 3000;
    for kind in [PoolKind::Max, PoolKind::Avg] {
        for &(c, h, w, kh, kw, sh, sw, ph, pw) in &[
            (1, 1, 1, 1, 1, 1, 1, 0, 0),
            (3, 8, 8, 2, 2, 2, 2, 0, 0),
            (2, 9, 11, 2, 2, 2, 2, 0, 0),
            (5, 13, 17, 3, 3, 2, 2, 1, 1),
            (3, 7, 7, 3, 3, 1, 1, 1, 1),
            (2, 20, 23, 3, 3, 2, 2, 1, 1),
            (4, 11, 12, 5, 3, 3, 2, 2, 1),
            (2, 15, 15, 7, 7, 1, 1, 3, 3),
            (3, 10, 30, 2, 4, 1, 2, 0, 2),
            (2, 6, 33, 1, 1, 3, 3, 0, 0),
            (64, 112, 112, 2, 2, 2, 2, 0, 0),
            (8, 112, 112, 3, 3, 2, 2, 1, 1),
            // Inputs over 2 MB prefetch rows ahead (`x86::pool::prefetch_rows_for`;
            // `jit::pool::tests::pools_over_2_mb_prefetch` checks that these do):
            // ResNet's first pool, and a stride-1 window.
            (64, 112, 112, 3, 3, 2, 2, 1, 1),
            (48, 120, 117, 3, 3, 1, 1, 1, 1),
            // SqueezeNet's (full groups, a masked tail); stride 1 with tails at both
            // widths; the widest window the wide kernel takes, and one it leaves to
            // Cranelift; one output column; rows of less than one vector.
            (4, 111, 111, 3, 3, 2, 2, 0, 0),
            (3, 13, 40, 3, 3, 1, 1, 1, 1),
            (2, 9, 40, 2, 8, 1, 2, 0, 3),
            (1, 12, 30, 3, 9, 2, 2, 1, 4),
            (2, 5, 3, 3, 3, 2, 2, 0, 0),
            (3, 6, 5, 2, 2, 1, 2, 0, 0),
            (2, 7, 70, 7, 7, 2, 2, 3, 3),
            // avx512 splits 2- and 3-column stride-2 windows into even and odd lanes
            // (`x86::pool`, `deinterleaves`), reading 32 columns and a 33rd: rows that end
            // exactly there, one column short of it or past it, in the loop and at the ends.
            (2, 7, 33, 3, 3, 2, 2, 0, 0),
            (2, 7, 32, 3, 3, 2, 2, 0, 0),
            (2, 9, 66, 3, 3, 2, 2, 0, 0),
            (2, 9, 67, 3, 3, 2, 2, 1, 1),
            (2, 8, 97, 3, 3, 2, 2, 1, 1),
            (2, 6, 64, 2, 2, 2, 2, 0, 0),
            (2, 6, 65, 2, 2, 2, 2, 1, 1),
            (2, 5, 31, 2, 3, 3, 2, 1, 1),
        ] {
            let s = PoolSpec {
                kind,
                channels: c,
                in_h: h,
                in_w: w,
                kernel_h: kh,
                kernel_w: kw,
                stride_h: sh,
                stride_w: sw,
                pad_h: ph,
                pad_w: pw,
            };
            check_pool(&s, seed);
            seed += 1;
        }
    }
}

#[test]
fn max_pool_negative_inputs_ignore_padding() {
    // All inputs negative: padding (-inf) must never win, and avg counts padding as zeros.
    let s = PoolSpec::square(PoolKind::Max, 2, 5, 3, 2, 1);
    let x: Vec<f32> = rand_vec(s.input_len(), 7)
        .iter()
        .map(|v| -v.abs() - 1.0)
        .collect();
    let mut km = KernelModule::new().unwrap();
    let p = km.add_pool(&s).unwrap();
    let code = km.finalize().unwrap();
    let mut out = vec![f32::NAN; s.output_len()];
    code.get(p).unwrap().run_all(&x, &mut out).unwrap();
    assert_close(&out, &ref_pool(&s, &x), "max pool negative");
    assert!(out.iter().all(|v| *v < -1.0 + 1e-6));
}

fn run_elt(s: &EltSpec, inputs: &[Vec<f32>], out_len: usize) -> Vec<f32> {
    run_elt_at(s, inputs, out_len, cnnc::Isa::default_level())
}

/// [`run_elt`] at ISA level `isa`.
fn run_elt_at(s: &EltSpec, inputs: &[Vec<f32>], out_len: usize, isa: cnnc::Isa) -> Vec<f32> {
    let mut km = KernelModule::new().unwrap();
    km.set_isa(isa).unwrap();
    let p = km.add_elementwise(s).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![f32::NAN; out_len];
    k.run_all(&refs, &mut out).unwrap();
    let units = k.work_units();
    let mut out2 = vec![f32::NAN; out_len];
    for i in 0..3 {
        k.run(&refs, &mut out2, units * i / 3..units * (i + 1) / 3)
            .unwrap();
    }
    assert!(
        out.iter()
            .zip(&out2)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{s:?} split"
    );
    out
}

#[test]
fn elementwise_ops() {
    for len in [1usize, 3, 4, 7, 64, 1001] {
        // 16 and 17 inputs: the last on the stack and the first with a heap pointer array.
        for n in (1..=4).chain([16, 17]) {
            for relu in [false, true] {
                let ins: Vec<Vec<f32>> = (0..n)
                    .map(|i| rand_vec(len, (len * 10 + i) as u64))
                    .collect();
                let got = run_elt(
                    &EltSpec::Add {
                        inputs: n,
                        len,
                        relu,
                    },
                    &ins,
                    len,
                );
                let mut want = Expected::new(len);
                for j in 0..len {
                    let mut acc = Acc::default();
                    ins.iter().for_each(|v| acc.add(v[j] as f64));
                    want.push(acc, |v| epilogue(v, relu, None));
                }
                assert_close(&got, &want, "add");
            }
        }
        let x = rand_vec(len, 77);
        let got = run_elt(&EltSpec::Relu { len }, std::slice::from_ref(&x), len);
        assert_close(
            &got,
            &Expected::exact(x.iter().map(|&v| (v as f64).max(0.0)).collect()),
            "relu",
        );
    }
    for (c, hw) in [(1usize, 1usize), (3, 5), (16, 49), (7, 3136)] {
        let x = rand_vec(c * hw, 5);
        let sc = rand_vec(c, 6);
        let sh = rand_vec(c, 7);
        for relu in [false, true] {
            let got = run_elt(
                &EltSpec::ScaleShift {
                    channels: c,
                    hw,
                    relu,
                },
                &[x.clone(), sc.clone(), sh.clone()],
                c * hw,
            );
            let mut want = Expected::new(c * hw);
            for i in 0..c * hw {
                let mut acc = Acc::default();
                acc.add(x[i] as f64 * sc[i / hw] as f64);
                acc.add(sh[i / hw] as f64);
                want.push(acc, |v| epilogue(v, relu, None));
            }
            assert_close(&got, &want, "scale_shift");
        }
        let got = run_elt(
            &EltSpec::GlobalAvgPool { channels: c, hw },
            std::slice::from_ref(&x),
            c,
        );
        let mut want = Expected::new(c);
        for plane in x.chunks(hw) {
            let mut acc = Acc::default();
            plane.iter().for_each(|&v| acc.add(v as f64));
            want.push(acc.scaled(1.0 / hw as f64), |v| v);
        }
        assert_close(&got, &want, "gap");
    }
    for (c, hw) in [(1usize, 1usize), (10, 1), (1000, 1), (5, 7), (21, 16)] {
        // Large logits: without subtracting the max, exp would overflow.
        let x: Vec<f32> = rand_vec(c * hw, 9).iter().map(|v| v * 80.0).collect();
        let got = run_elt(
            &EltSpec::Softmax { channels: c, hw },
            std::slice::from_ref(&x),
            c * hw,
        );
        let want = ref_softmax(&x, c, hw);
        assert_close(&got, &want, "softmax");
    }
}

fn run_fc(s: &FcSpec, x: &[f32], w: &[f32]) -> Vec<f32> {
    let packed = pack_fc_weights(s, w, None).unwrap();
    let mut km = KernelModule::new().unwrap();
    let p = km.add_fc(s).unwrap();
    let code = km.finalize().unwrap();
    let mut out = vec![f32::NAN; s.output_len()];
    code.get(p)
        .unwrap()
        .run_all(x, &packed, None, &mut out)
        .unwrap();
    out
}

#[test]
fn the_closeness_bound_follows_the_condition_of_the_sum() {
    // One output whose terms cancel to almost nothing (prop_fc's flaky case): the f32 sum
    // is off by far more than 1e-5 of its tiny value, but well within the bound of its
    // terms' magnitude.
    let s = FcSpec::new(3, 1, 1);
    let (x, w) = ([1.0f32, 1.0, 1.0], [0.1f32, 0.2, -0.3]);
    let got = run_fc(&s, &x, &w);
    let want = ref_fc(&s, &x, &w, None, None);
    assert!(
        want.value[0].abs() < 1e-7
            && (got[0] as f64 - want.value[0]).abs() > 1e-5 * want.value[0].abs()
    );
    assert_close(&got, &want, "cancelling fc");

    // A broken result still fails: one element off by 1e-3 of the output's size, or a
    // kernel that skips one input feature (one term of 300: the bound, γ(302) ≈ 1.8e-5 of
    // Σ|terms|, is below a typical term's Σ|terms| / 300 for sums of up to ~4000 terms).
    let s = FcSpec::new(300, 7, 2);
    let x = rand_vec(s.input_len(), 1);
    let w: Vec<f32> = rand_vec(s.weight_len(), 2)
        .iter()
        .map(|v| v / 17.0)
        .collect();
    let want = ref_fc(&s, &x, &w, None, None);
    let good = run_fc(&s, &x, &w);
    assert_close(&good, &want, "fc");
    let fails =
        |got: &[f32]| std::panic::catch_unwind(|| assert_close(got, &want, "broken fc")).is_err();
    let mut off = good.clone();
    off[9] += 1e-3 * want.value.iter().fold(0.0f64, |m, v| m.max(v.abs())) as f32;
    assert!(fails(&off), "an element off by 1e-3 passed");
    for skipped in [0, 150, 299] {
        let mut x2 = x.clone();
        x2[skipped] = 0.0;
        x2[300 + skipped] = 0.0;
        assert!(
            fails(&run_fc(&s, &x2, &w)),
            "skipping feature {skipped} passed"
        );
    }
}

/// Softmax over `c` channels of `hw` pixels. Each `exp(x - max)` is computed from a
/// rounded difference `d` (relative error `|d| u` after `exp`) by a libm `expf` (within
/// 1 ulp, 2u); the sum of the `c` exponentials adds `γ(c)`, the division `u`. So each
/// output's relative error is within `(|d_i| + 2) u + max_j (|d_j| + 2) u + γ(c) + 2u`.
fn ref_softmax(x: &[f32], c: usize, hw: usize) -> Expected {
    let mut want = Expected {
        value: vec![0.0; c * hw],
        bound: vec![0.0; c * hw],
    };
    for p in 0..hw {
        let at = |ci: usize| x[ci * hw + p] as f64;
        let m = (0..c).map(at).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..c).map(|ci| (at(ci) - m).exp()).sum();
        let worst = (0..c).map(|ci| m - at(ci)).fold(0.0, f64::max);
        for ci in 0..c {
            let y = (at(ci) - m).exp() / s;
            let d = m - at(ci);
            want.value[ci * hw + p] = y;
            // Plus 2^-149 for an exponential or quotient that underflows to a subnormal.
            want.bound[ci * hw + p] =
                y * ((d + 2.0) * U + (worst + 2.0) * U + gamma(c) + 3.0 * U) + f64::powi(2.0, -149);
        }
    }
    want
}

/// The clip of the property tests: bounds that outputs of size O(1) cross on both sides.
const PROP_CLIP: Clip = Clip {
    min: -0.3,
    max: 0.4,
};

proptest! {
    #![proptest_config(common::proptest_config(200))]
    #[test]
    fn prop_conv(c in 1usize..70, k in 1usize..70, h in 1usize..40, w in 1usize..40,
                 fh in 1usize..8, fw in 1usize..8, sh in 1usize..4, sw in 1usize..4,
                 ph in 0usize..4, pw in 0usize..4, flags in 0u8..16, seed in 0u64..1000) {
        prop_assume!(h + 2 * ph >= fh && w + 2 * pw >= fw);
        let mut s = spec(c, h, w, k, fh, fw, (sh, sw), (ph, pw));
        s.bias = flags & 1 != 0;
        s.relu = flags & 2 != 0;
        s.residual = flags & 4 != 0;
        s.clip = (flags & 8 != 0).then_some(PROP_CLIP);
        prop_assume!(s.flops() < 60_000_000);
        check_conv(&s, seed);
    }

    #[test]
    fn prop_pool(c in 1usize..9, h in 1usize..40, w in 1usize..40, kh in 1usize..8, kw in 1usize..8,
                 sh in 1usize..4, sw in 1usize..4, ph in 0usize..4, pw in 0usize..4, max in any::<bool>(), seed in 0u64..1000) {
        prop_assume!(h + 2 * ph >= kh && w + 2 * pw >= kw && 2 * ph <= kh && 2 * pw <= kw);
        let kind = if max { PoolKind::Max } else { PoolKind::Avg };
        let s = PoolSpec { kind, channels: c, in_h: h, in_w: w, kernel_h: kh, kernel_w: kw, stride_h: sh, stride_w: sw, pad_h: ph, pad_w: pw };
        check_pool(&s, seed);
    }

    #[test]
    fn prop_fc(c in 1usize..300, k in 1usize..100, n in 1usize..15, flags in 0u8..16, seed in 0u64..1000) {
        let mut s = FcSpec::new(c, k, n);
        s.bias = flags & 1 != 0;
        s.relu = flags & 2 != 0;
        s.residual = flags & 4 != 0;
        s.clip = (flags & 8 != 0).then_some(PROP_CLIP);
        check_fc(&s, seed);
        // At batch 1 the default level is the wide kernel on AVX2 / AVX-512 hosts: keep the
        // f32x4 batch-1 kernel under the property test too.
        if n == 1 {
            check_fc_at(&s, seed, Some(cnnc::Isa::Sse));
        }
    }
}

#[test]
fn thread_pool_conv_matches_single_thread() {
    use std::time::Duration;
    let mut s = spec(19, 23, 21, 37, 3, 3, (1, 1), (1, 1));
    s.bias = true;
    s.residual = true;
    s.relu = true;
    let x = rand_vec(s.input_len(), 1);
    let w = rand_vec(s.weight_len(), 2);
    let b = rand_vec(s.out_c, 3);
    let r = rand_vec(s.output_len(), 4);
    let packed = pack_conv_weights(&s, &w, Some(&b)).unwrap();
    let mut km = KernelModule::new().unwrap();
    let p = km.add_conv(&s).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let mut want = vec![f32::NAN; s.output_len()];
    k.run_all(&x, &packed, Some(&r), &mut want).unwrap();
    for threads in [1, 2, 3, 5] {
        // Zero spin: the workers park between jobs, exercising the wake-up path.
        for spin in [Duration::ZERO, Duration::from_millis(1)] {
            let pool = ThreadPool::new(threads, spin);
            let mut scratch = vec![0.0; k.scratch_len_on(threads)];
            for _ in 0..20 {
                let mut out = vec![f32::NAN; s.output_len()];
                k.run_parallel(&pool, &x, &packed, Some(&r), &mut out, &mut scratch)
                    .unwrap();
                assert!(want
                    .iter()
                    .zip(&out)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            let mut small = vec![0.0; 1];
            assert!(
                k.run_parallel(
                    &pool,
                    &x,
                    &packed,
                    Some(&r),
                    &mut vec![0.0; s.output_len()],
                    &mut small
                )
                .is_err()
                    || k.scratch_len() == 0
            );
        }
    }
}

#[test]
fn thread_pool_covers_every_unit_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = ThreadPool::new(3, std::time::Duration::from_micros(50));
    for units in [0usize, 1, 2, 3, 7, 100] {
        for _ in 0..50 {
            let hits: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
            pool.split(units, |_, range| {
                for i in range {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
    // A panic is reported on the calling thread, whichever thread ran the unit, and the
    // pool stays usable.
    for bad in [0, 50, 99] {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.split(100, |_, range| {
                if range.contains(&bad) {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        pool.split(3, |_, _| {});
    }
}

/// Chunks are taken dynamically (a thread done with its part takes from the others'): every
/// unit still runs once, each thread's calls never overlap (its scratch is its own), and a
/// slow chunk on any thread, or workers parked between jobs, change neither.
#[test]
fn thread_pool_chunks_cover_every_unit_once_with_slow_threads() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    for (threads, spin) in [(2, 0), (2, 200), (3, 0), (4, 50)] {
        let pool = ThreadPool::new(threads, std::time::Duration::from_micros(spin));
        let busy: Vec<AtomicBool> = (0..threads).map(|_| AtomicBool::new(false)).collect();
        for (round, units) in [2usize, 5, 8, 13, 64, 257, 1000]
            .iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let hits: Vec<AtomicUsize> = (0..*units).map(|_| AtomicUsize::new(0)).collect();
            let slow = (round * 7919) % units;
            // The default two chunks per thread, and one (a whole part: what a thread done
            // early takes then) and three.
            let chunks = [2, 1, 3][(round / 3) % 3];
            pool.split_in_chunks(*units, chunks, |thread, range| {
                assert!(thread < threads);
                assert!(
                    !busy[thread].swap(true, Ordering::AcqRel),
                    "overlapping calls"
                );
                if range.contains(&slow) && round % 3 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                for i in range {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
                busy[thread].store(false, Ordering::Release);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{threads} threads, {units} units, {chunks} chunks per thread"
            );
        }
    }
}

#[test]
fn thread_pool_split_slice_hands_out_every_element_once() {
    for threads in [1, 2, 3, 9] {
        let pool = ThreadPool::new(threads, std::time::Duration::from_micros(50));
        for len in [0usize, 1, 15, 16, 17, 100, 1001] {
            for align in [1, 16] {
                let mut data = vec![0u32; len];
                pool.split_slice(&mut data, align, |from, part| {
                    assert!(from.is_multiple_of(align) || part.is_empty());
                    for (i, v) in part.iter_mut().enumerate() {
                        *v += (from + i) as u32 + 1;
                    }
                });
                let want: Vec<u32> = (1..=len as u32).collect();
                assert_eq!(
                    data, want,
                    "{threads} threads, {len} elements, align {align}"
                );
            }
        }
    }
}

#[test]
fn max_pool_ties_of_signed_zeros_same_bits_every_level() {
    // Where a window's largest values are +0.0 and -0.0 the first in the f32x4 kernel's
    // order wins (vertical first at stride 2); the wide kernels (the even / odd lanes of
    // avx512's 2- and 3-column windows among them) keep that order, so the same bits on
    // these shapes; not on every shape: the f32x4 kernel's scalar tail goes in row order,
    // as the interpreter (docs/jit.md, "Ties of +0.0 and -0.0").
    for (hw, k, s, p) in [
        (41usize, 3usize, 2usize, 0usize),
        (40, 2, 2, 0),
        (35, 3, 2, 1),
    ] {
        let spec = PoolSpec::square(PoolKind::Max, 3, hw, k, s, p);
        let x: Vec<f32> = (0..spec.input_len())
            .map(|i| [0.0, -0.0, -1.0][(i * 7 + i / 5) % 3])
            .collect();
        let mut first: Option<Vec<u32>> = None;
        for isa in cnnc::Isa::host_levels() {
            let mut out = vec![f32::NAN; spec.output_len()];
            pool_at(&spec, isa).run_all(&x, &mut out).unwrap();
            let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert!(
                bits.contains(&0) && bits.contains(&(-0.0f32).to_bits()),
                "{isa}"
            );
            match &first {
                Some(f) => assert_eq!(f, &bits, "{isa}: hw {hw} k {k} s {s} pad {p}"),
                None => first = Some(bits),
            }
        }
    }
}

#[test]
fn max_pool_propagates_nan() {
    // Stride 2 reduces each column over the rows before the lanes are picked
    // (`max_stride2`): 3x3/2 and 5x5/2 over two vector groups and a scalar tail, with a NaN
    // at every position.
    // At avx2 and avx512 the wide kernel (`x86::pool`): 41 columns are two zmm groups and
    // a masked tail (five ymm groups and a tail); 3x3/1 at 37 puts NaNs in the loop and
    // in the tail; with padding (which the wide kernel does by itself) at both ends.
    for (hw, k, s, p) in [
        (8usize, 2usize, 2usize, 0usize),
        (9, 3, 1, 0),
        (7, 3, 3, 0),
        (19, 3, 2, 0),
        (21, 5, 2, 0),
        (41, 3, 2, 0),
        (37, 3, 1, 0),
        (41, 3, 2, 1),
        (37, 3, 1, 1),
        (23, 5, 2, 2),
        (33, 3, 2, 0),
        (34, 2, 2, 1),
    ] {
        for isa in cnnc::Isa::host_levels() {
            let spec = PoolSpec::square(PoolKind::Max, 1, hw, k, s, p);
            let kern = pool_at(&spec, isa);
            let positions: Vec<usize> = if (s == 2 && k > 2) || hw > 30 {
                (0..hw * hw).collect()
            } else {
                vec![0, hw + 1, hw * hw - 1]
            };
            for pos in positions {
                let mut x = rand_vec(hw * hw, pos as u64);
                x[pos] = f32::NAN;
                let mut out = vec![0.0; spec.output_len()];
                kern.run_all(&x, &mut out).unwrap();
                let (py, px) = (pos / hw, pos % hw);
                let ow = spec.out_w();
                for (i, v) in out.iter().enumerate() {
                    let (oy, ox) = (i / ow, i % ow);
                    // The window in padded coordinates.
                    let covers = (oy * s..oy * s + k).contains(&(py + p))
                        && (ox * s..ox * s + k).contains(&(px + p));
                    assert_eq!(
                        v.is_nan(),
                        covers,
                        "{isa}: hw {hw} k {k} s {s} pad {p} pos {pos} out {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn thread_pool_other_kernels_match_single_thread() {
    let pool = ThreadPool::new(3, std::time::Duration::from_micros(100));
    let mut km = KernelModule::new().unwrap();
    let mut fs = FcSpec::new(37, 29, 3);
    fs.bias = true;
    let ps = PoolSpec::square(PoolKind::Max, 7, 13, 3, 2, 1);
    let es = EltSpec::Add {
        inputs: 2,
        len: 1001,
        relu: true,
    };
    let (pf, pp, pe) = (
        km.add_fc(&fs).unwrap(),
        km.add_pool(&ps).unwrap(),
        km.add_elementwise(&es).unwrap(),
    );
    let code = km.finalize().unwrap();
    let (fk, pk, ek) = (
        code.get(pf).unwrap(),
        code.get(pp).unwrap(),
        code.get(pe).unwrap(),
    );

    let x = rand_vec(fs.input_len(), 1);
    let packed =
        pack_fc_weights(&fs, &rand_vec(fs.weight_len(), 2), Some(&rand_vec(29, 3))).unwrap();
    let (mut a, mut b) = (
        vec![f32::NAN; fs.output_len()],
        vec![f32::NAN; fs.output_len()],
    );
    fk.run_all(&x, &packed, None, &mut a).unwrap();
    fk.run_parallel(&pool, &x, &packed, None, &mut b).unwrap();
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));

    let x = rand_vec(ps.input_len(), 4);
    let (mut a, mut b) = (
        vec![f32::NAN; ps.output_len()],
        vec![f32::NAN; ps.output_len()],
    );
    pk.run_all(&x, &mut a).unwrap();
    let mut scratch = vec![0.0; pk.scratch_len() * pool.threads()];
    pk.run_parallel(&pool, &x, &mut b, &mut scratch).unwrap();
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    assert!(pk
        .run_parallel(&pool, &x, &mut b, &mut scratch[1..])
        .is_err());

    let (u, v) = (rand_vec(1001, 5), rand_vec(1001, 6));
    let (mut a, mut b) = (vec![f32::NAN; 1001], vec![f32::NAN; 1001]);
    ek.run_all(&[&u, &v], &mut a).unwrap();
    ek.run_parallel(&pool, &[&u, &v], &mut b).unwrap();
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[test]
fn relu_propagates_nan_and_clamps() {
    let x = vec![
        f32::NAN,
        -1.0,
        2.0,
        -0.0,
        0.5,
        f32::NEG_INFINITY,
        f32::INFINITY,
        -3.0,
        f32::NAN,
    ];
    let got = run_elt(
        &EltSpec::Relu { len: x.len() },
        std::slice::from_ref(&x),
        x.len(),
    );
    for (g, v) in got.iter().zip(&x) {
        if v.is_nan() {
            assert!(g.is_nan());
        } else {
            assert_eq!(*g, v.max(0.0), "relu({v})");
        }
    }
}

/// Specs too large for the generated code's offsets are refused for their size (not for
/// their weights, nor by a panic or an allocation).
#[test]
fn huge_specs_are_refused_not_panicking() {
    let too_big = |r: cnnc::Result<_>, what: &dyn std::fmt::Debug| match r {
        Err(cnnc::Error::Unsupported(_)) => {}
        Err(e) => panic!("{what:?}: refused for another reason: {e}"),
        Ok(_) => panic!("{what:?}: accepted"),
    };
    let mut km = KernelModule::new().unwrap();
    let big = usize::MAX / 3;
    let mut s = spec(3, 5, 5, 4, 3, 3, (1, 1), (1, 1));
    for f in 0..10 {
        let mut t = s;
        match f {
            0 => t.in_c = big,
            1 => t.in_h = big,
            2 => t.in_w = big,
            3 => t.out_c = big,
            4 => t.kernel_h = big,
            5 => t.stride_w = big,
            6 => t.pad_h = big,
            7 => t.pad_w = big,
            8 => (t.in_c, t.in_h, t.in_w) = (4096, 4096, 4096),
            _ => (t.out_c, t.in_c, t.kernel_h, t.kernel_w) = (100_000, 100_000, 3, 3),
        }
        too_big(km.add_conv(&t).map(drop), &t);
        // Refused before the weights (absent here) are looked at.
        too_big(pack_conv_weights(&t, &[], None).map(drop), &t);
    }
    s.out_c = 0;
    assert!(km.add_conv(&s).is_err());
    for t in [FcSpec::new(big, 10, 1), FcSpec::new(100_000, 100_000, 1)] {
        too_big(km.add_fc(&t).map(drop), &t);
        too_big(pack_fc_weights(&t, &[], None).map(drop), &t);
    }
    assert!(km.add_fc(&FcSpec::new(10, 10, 0)).is_err());
    for t in [
        PoolSpec::square(PoolKind::Max, big, 4, 2, 2, 0),
        PoolSpec::square(PoolKind::Max, 4096, 4096, 2, 2, 0),
    ] {
        too_big(km.add_pool(&t).map(drop), &t);
    }
    assert!(km
        .add_pool(&PoolSpec::square(PoolKind::Max, 1, 4, 2, 2, 2))
        .is_err());
    for t in [
        EltSpec::Add {
            inputs: big,
            len: 4,
            relu: false,
        },
        EltSpec::Softmax {
            channels: big,
            hw: big,
        },
        EltSpec::ScaleShift {
            channels: 1 << 20,
            hw: 1 << 20,
            relu: false,
        },
    ] {
        too_big(km.add_elementwise(&t).map(drop), &t);
    }
    assert!(km.add_elementwise(&EltSpec::Relu { len: 0 }).is_err());
}

/// The global average pool sums each plane in one fixed order whether the kernel pools the
/// channel alone or beside three others (groups of 4 from the start of the range): four
/// lanes of partial sums over the whole vectors, `(l0 + l1) + (l2 + l3)`, then the rest in
/// order, divided by the plane's size. Bit for bit against that order, NaN in some planes,
/// for every range of channels (so groups start at every channel).
#[test]
fn global_avgpool_sums_every_plane_in_one_order() {
    for (c, hw) in [
        (1usize, 1usize),
        (3, 7),
        (4, 4),
        (5, 169),
        (9, 3),
        (13, 49),
        (6, 18),
    ] {
        let mut x = rand_vec(c * hw, 31);
        x[(c / 2) * hw] = f32::NAN;
        let want: Vec<f32> = x
            .chunks(hw)
            .map(|p| {
                let n4 = hw / 4 * 4;
                let mut l = [0.0f32; 4];
                for q in p[..n4].chunks(4) {
                    (0..4).for_each(|j| l[j] += q[j]);
                }
                let t = p[n4..]
                    .iter()
                    .fold((l[0] + l[1]) + (l[2] + l[3]), |t, v| t + v);
                t / hw as f32
            })
            .collect();
        let s = EltSpec::GlobalAvgPool { channels: c, hw };
        for &isa in &cnnc::Isa::host_levels() {
            let mut km = KernelModule::new().unwrap();
            km.set_isa(isa).unwrap();
            let p = km.add_elementwise(&s).unwrap();
            let code = km.finalize().unwrap();
            let k = code.get(p).unwrap();
            for lo in 0..c {
                for hi in lo + 1..=c {
                    let mut out = vec![f32::NAN; c];
                    k.run(&[&x], &mut out, lo..hi).unwrap();
                    for ch in 0..c {
                        let got = out[ch].to_bits();
                        let w = if (lo..hi).contains(&ch) {
                            want[ch].to_bits()
                        } else {
                            f32::NAN.to_bits()
                        };
                        assert_eq!(got, w, "{s:?} at {isa}, channels {lo}..{hi}, channel {ch}");
                    }
                }
            }
        }
    }
}

/// The scale-shift (inference batchnorm, + ReLU) at every ISA level: at avx2 / avx512 one
/// call of the wide kernel per channel plane (`src/jit/x86/eltwise.rs`: a multiply then an
/// add, `vmaxps` with zero for the ReLU), at sse the f32x4 loop: the same bits at every
/// level, split or not, and within the reference's bound. Planes of 1 float to several
/// loop iterations, with masked tails of every kind (shorter than a vector, after whole
/// vectors, after whole groups of 4 vectors); NaN, infinities, -0.0 and negative values in
/// the input and the scale (the ReLU keeps NaN and -0.0, as the f32x4 kernel does).
#[test]
fn scale_shift_every_isa_bit_identical() {
    for (c, hw) in [
        (1usize, 1usize),
        (3, 5),
        (2, 16),
        (4, 17),
        (3, 47),
        (2, 64),
        (5, 65),
        (7, 196),
        (3, 3139),
        // From 512 floats a plane the wide kernel runs each plane in two halves (units:
        // every first half, then every second half), cut at a multiple of 16: 511 whole,
        // 256 + 256, 256 + 257 (a masked tail in the second), 384 + 400 (28x28), and above
        // 1568 + 1571.
        (2, 511),
        (3, 512),
        (2, 513),
        (5, 784),
    ] {
        let mut x = rand_vec(c * hw, 11);
        let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, -3.5];
        for (i, v) in special.iter().enumerate() {
            if i * 7 < x.len() {
                x[i * 7] = *v;
            }
        }
        let mut sc = rand_vec(c, 12);
        sc[0] = if c > 1 { -0.0 } else { sc[0] };
        let sh = rand_vec(c, 13);
        for relu in [false, true] {
            let spec = EltSpec::ScaleShift {
                channels: c,
                hw,
                relu,
            };
            let ins = [x.clone(), sc.clone(), sh.clone()];
            let outs: Vec<_> = cnnc::Isa::host_levels()
                .into_iter()
                .map(|isa| (isa, run_elt_at(&spec, &ins, c * hw, isa)))
                .collect();
            assert_levels_agree(&spec, &outs);
            let want: Vec<f32> = (0..c * hw)
                .map(|i| {
                    let v = x[i] * sc[i / hw] + sh[i / hw];
                    if relu && v < 0.0 {
                        0.0
                    } else {
                        v
                    }
                })
                .collect();
            let same = outs[0]
                .1
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{spec:?} against x * scale + shift (then ReLU) in f32"
            );
        }
    }
}

#[test]
fn conv_narrow_outputs_row_groups() {
    // Outputs narrower than 9 columns use tiles spanning several rows, plus a rest group.
    let mut seed = 7000;
    for ow in 1..=8 {
        for oh in 1..=7 {
            for stride in [1, 2] {
                let mut s = spec(
                    3,
                    (oh - 1) * stride + 3,
                    (ow - 1) * stride + 3,
                    10,
                    3,
                    3,
                    (stride, stride),
                    (0, 0),
                );
                s.bias = true;
                s.residual = seed % 2 == 0;
                s.relu = seed % 3 == 0;
                assert_eq!((s.out_h(), s.out_w()), (oh, ow));
                check_conv(&s, seed);
                seed += 1;
            }
        }
    }
}

/// The fused residual epilogue is exactly `((acc + bias) + residual)` then ReLU then clip,
/// in that order: bit-identical to the kernel without residual and ReLU followed by the add and ReLU
/// in Rust, for row tiles of 4 contiguous pixels (vector epilogue), 3-pixel tiles, tiles
/// spanning rows, strides and channel tails; the residual holds NaN, -0.0 and +-inf.
#[test]
fn conv_residual_epilogue_is_exact() {
    let shapes = [
        spec(5, 16, 16, 13, 3, 3, (1, 1), (1, 1)),
        spec(3, 9, 12, 8, 3, 3, (1, 1), (0, 0)),
        spec(4, 11, 22, 20, 3, 3, (1, 1), (1, 1)),
        spec(6, 17, 17, 9, 3, 3, (2, 2), (1, 1)),
        spec(7, 7, 7, 16, 3, 3, (1, 1), (1, 1)),
        spec(8, 10, 32, 12, 1, 1, (2, 2), (0, 0)),
        // Narrow outputs (tiles spanning rows): 7x7 strided with a channel tail, 5x5
        // (tiles 4+4+4+3), 13x2 (groups of 6 rows), 7x3, 3x3 with 1 row left over.
        spec(6, 13, 13, 11, 3, 3, (2, 2), (1, 1)),
        spec(5, 5, 5, 12, 3, 3, (1, 1), (1, 1)),
        spec(4, 13, 2, 9, 3, 3, (1, 1), (1, 1)),
        spec(3, 8, 4, 20, 2, 2, (1, 1), (0, 0)),
        spec(2, 3, 3, 5, 3, 3, (1, 1), (1, 1)),
    ];
    for (i, base) in shapes.into_iter().enumerate() {
        let seed = 40 + i as u64;
        let x = rand_vec(base.input_len(), seed);
        let w = rand_vec(base.weight_len(), seed + 1);
        let b = rand_vec(base.out_c, seed + 2);
        let mut r = rand_vec(base.output_len(), seed + 3);
        for (j, v) in r.iter_mut().enumerate() {
            match j % 37 {
                0 => *v = f32::NAN,
                1 => *v = -0.0,
                2 => *v = f32::INFINITY,
                3 => *v = f32::NEG_INFINITY,
                _ => {}
            }
        }
        let plain = ConvSpec { bias: true, ..base };
        let mut km = KernelModule::new().unwrap();
        let pp = km.add_conv(&plain).unwrap();
        let fused: Vec<ConvSpec> = [
            (false, None),
            (true, None),
            (true, Some(Clip::RELU6)),
            (
                false,
                Some(Clip {
                    min: -0.5,
                    max: 0.5,
                }),
            ),
        ]
        .map(|(relu, clip)| ConvSpec {
            bias: true,
            residual: true,
            relu,
            clip,
            ..base
        })
        .to_vec();
        let pf: Vec<_> = fused.iter().map(|s| km.add_conv(s).unwrap()).collect();
        let code = km.finalize().unwrap();
        let packed = pack_conv_weights(&plain, &w, Some(&b)).unwrap();
        let mut acc = vec![f32::NAN; plain.output_len()];
        code.get(pp)
            .unwrap()
            .run_all(&x, &packed, None, &mut acc)
            .unwrap();
        for (s, p) in fused.iter().zip(pf) {
            let mut out = vec![f32::NAN; s.output_len()];
            code.get(p)
                .unwrap()
                .run_all(&x, &packed, Some(&r), &mut out)
                .unwrap();
            for (j, (&a, &rv)) in acc.iter().zip(&r).enumerate() {
                let mut want = a + rv;
                if s.relu && want < 0.0 {
                    want = 0.0;
                }
                if let Some(c) = s.clip {
                    // NaN stays NaN (no comparison holds).
                    if want < c.min {
                        want = c.min;
                    } else if want > c.max {
                        want = c.max;
                    }
                }
                assert_eq!(out[j].to_bits(), want.to_bits(), "{s:?} at {j}");
            }
        }
    }
}

/// A clip activation (ReLU6, or bounds that most outputs cross on both sides, with and
/// without ReLU, bias and residual) on every conv method and the fc at batch 1-3, against the
/// reference; bounds that are not numbers with `min <= max` are refused.
#[test]
fn clip_epilogue_on_every_kernel() {
    let clips = [
        (true, Clip::RELU6),
        (
            false,
            Clip {
                min: -0.25,
                max: 0.3,
            },
        ),
        (true, Clip { min: 0.1, max: 0.2 }),
    ];
    let shapes = [
        spec(5, 16, 16, 13, 3, 3, (1, 1), (1, 1)),
        spec(6, 13, 13, 11, 3, 3, (2, 2), (1, 1)),
        spec(4, 13, 2, 9, 3, 3, (1, 1), (1, 1)),
        spec(3, 15, 15, 10, 7, 7, (2, 2), (3, 3)),
        spec(20, 9, 7, 14, 1, 1, (1, 1), (0, 0)),
        spec(16, 10, 11, 19, 3, 3, (1, 1), (1, 1)),
        spec(24, 9, 9, 17, 3, 3, (1, 1), (0, 0)),
    ];
    let mut methods = Vec::new();
    let mut seed = 900;
    for base in shapes {
        for (i, &(relu, clip)) in clips.iter().enumerate() {
            let s = ConvSpec {
                bias: i != 1,
                residual: i != 0,
                relu,
                clip: Some(clip),
                ..base
            };
            methods.extend(check_conv(&s, seed));
            seed += 4;
        }
    }
    for m in [
        ConvMethod::Direct,
        ConvMethod::PointwiseGemm,
        ConvMethod::Winograd,
    ] {
        assert!(methods.contains(&m), "{m:?} not covered");
    }
    for (c, k, n) in [(37, 13, 1), (300, 19, 2), (64, 9, 3)] {
        for (i, &(relu, clip)) in clips.iter().enumerate() {
            let s = FcSpec {
                bias: i != 1,
                residual: i != 0,
                relu,
                clip: Some(clip),
                ..FcSpec::new(c, k, n)
            };
            check_fc(&s, seed);
            seed += 4;
        }
    }
    let bad = ConvSpec {
        clip: Some(Clip { min: 1.0, max: 0.0 }),
        ..spec(3, 8, 8, 4, 3, 3, (1, 1), (1, 1))
    };
    assert!(KernelModule::new().unwrap().add_conv(&bad).is_err());
    let nan = FcSpec {
        clip: Some(Clip {
            min: f32::NAN,
            max: 1.0,
        }),
        ..FcSpec::new(4, 4, 1)
    };
    assert!(KernelModule::new().unwrap().add_fc(&nan).is_err());
}

/// Shape `i` of a table with the epilogue cycled over the shapes: bias, ReLU, residual and
/// clip each on some and off on others, in every combination over 60 shapes.
fn cycled_epilogue(i: usize, base: ConvSpec) -> ConvSpec {
    ConvSpec {
        bias: i.is_multiple_of(2),
        relu: i % 3 != 1,
        residual: i % 4 < 2,
        clip: (i % 5 == 3).then_some(PROP_CLIP),
        ..base
    }
}

/// Every level's output (first the reference level's) equal bit for bit.
fn assert_levels_agree(what: &impl std::fmt::Debug, outs: &[(cnnc::Isa, Vec<f32>)]) {
    for (isa, out) in &outs[1..] {
        let same = out
            .iter()
            .zip(&outs[0].1)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what:?}: {isa} differs from {}", outs[0].0);
    }
}

/// The pointwise GEMM at every ISA level the host has: at avx2 / avx512 its reduction is
/// computed a chunk of 64 input channels at a time for each tile column (the partial sums
/// stored and reloaded as f32, only the last chunk applying the epilogue) while the kernels
/// prefetch the next column; each output is still one FMA chain over the channels in order,
/// so all levels agree bit for bit. Shapes: 1, 2, 3 and 5 chunks (a short last chunk, and
/// 97 channels: one chunk), channel tails of the 6- and 14-row blocks and exact multiples,
/// partial last tile columns and planes narrower than one tile, every epilogue; the avx512
/// tile shapes (8x48, 12x32, 14x32) and the weight-major expansion.
#[test]
fn conv_pointwise_every_isa_bit_identical() {
    let shapes = [
        (97, 9, 7, 15),
        (128, 6, 11, 14),
        (130, 8, 8, 29),
        (200, 5, 13, 6),
        (300, 7, 9, 64),
        (256, 2, 3, 13),
        (131, 16, 16, 12),
        // More output channels than pixels (channel-block major at avx2 / avx512).
        (300, 5, 7, 50),
        (97, 6, 6, 40),
        (64, 3, 7, 33),
        // avx512: 8x48 tiles (packed 48-pixel columns, channel tails of 8), 12x32 ones
        // (over 682 channels; packed and in chunks), a 4x expansion (weight major).
        (64, 10, 10, 61),
        (700, 8, 8, 20),
        (1100, 9, 9, 44),
        (40, 13, 13, 161),
        // A 4x expansion of over 1024 pixels: weight major on 8x48 tiles (a pixel tail).
        (32, 33, 33, 130),
        // Weight major on 12-row tiles, over 1 MB of weights (prefetched).
        (2100, 5, 5, 130),
        // Weight major over a 7x7 plane (avx512: 8 x 48 + 1), a channel tail of 5; over
        // 1 MB of weights (prefetched).
        (130, 7, 7, 61),
        (600, 7, 7, 520),
        // Weight major over 14x14 with 512+ channels (avx512: 4 columns of 48 + 1).
        (512, 14, 14, 523),
        // Over 256 KB of output from packed columns (output prefetches), pixel tails.
        (64, 33, 33, 70),
        (200, 23, 29, 120),
        // Weight major with a last tile column of 1-4 pixels (avx512: the kernel with the
        // channels in the lanes): 14x14 (ResNet-50's 1024 -> 256, and a channel tail),
        // 33, 34 and 35 pixels.
        (1024, 14, 14, 256),
        (256, 14, 14, 300),
        (100, 11, 3, 45),
        (77, 17, 2, 50),
        (40, 5, 7, 37),
        // Planes of 1-4 pixels only (no full column: the lanes kernel is the whole GEMM),
        // the last over 1 MB of weights (prefetched, so the vector tile).
        (300, 1, 1, 40),
        (64, 2, 2, 70),
        (1024, 1, 1, 300),
    ];
    let levels = cnnc::Isa::host_levels();
    let mut seed = 3000;
    for (i, &(c, h, w, k)) in shapes.iter().enumerate() {
        let s = cycled_epilogue(i, spec(c, h, w, k, 1, 1, (1, 1), (0, 0)));
        let outs: Vec<_> = levels
            .iter()
            .map(|&isa| (isa, check_conv_with(&s, seed, Some(isa), None).0))
            .collect();
        assert_levels_agree(&s, &outs);
        seed += 5;
    }
}

/// A pointwise conv reading its residual from its output buffer
/// (`ConvSpec::residual_in_place`, the output filled with the residual first) gives the
/// bits of the same conv with a residual buffer, at every ISA level, on whole, split and
/// pooled ranges: pixel-major columns (packed or not, with pixel tails), weight-major
/// blocks (expansions, more channels than pixels, prefetched weights), strided 1x1 with
/// its sampled copy, channel tails of every block height, every epilogue. Where the method
/// stores partial sums in the output first (columns in chunks of input channels), in
/// place is refused, and an in-place kernel refuses a residual buffer.
#[test]
fn conv_residual_read_in_place_every_isa() {
    let shapes = [
        spec(97, 9, 7, 15, 1, 1, (1, 1), (0, 0)),
        spec(64, 10, 10, 61, 1, 1, (1, 1), (0, 0)),
        spec(40, 13, 13, 161, 1, 1, (1, 1), (0, 0)),
        spec(300, 5, 7, 50, 1, 1, (1, 1), (0, 0)),
        spec(130, 8, 8, 29, 1, 1, (1, 1), (0, 0)),
        spec(600, 9, 9, 44, 1, 1, (1, 1), (0, 0)),
        spec(1100, 9, 9, 20, 1, 1, (1, 1), (0, 0)),
        spec(2200, 6, 6, 20, 1, 1, (1, 1), (0, 0)),
        spec(2100, 5, 5, 130, 1, 1, (1, 1), (0, 0)),
        spec(300, 7, 7, 70, 1, 1, (1, 1), (0, 0)),
        spec(64, 33, 33, 70, 1, 1, (1, 1), (0, 0)),
        // A 4x expansion over 1024 pixels (weight major, 8 x 48): outputs prefetched.
        spec(32, 33, 33, 130, 1, 1, (1, 1), (0, 0)),
        spec(33, 15, 13, 70, 1, 1, (2, 2), (0, 0)),
        spec(16, 9, 9, 7, 1, 1, (3, 2), (0, 0)),
    ];
    let (mut in_place, mut refused) = (0, 0);
    for (i, base) in shapes.iter().enumerate() {
        let s = ConvSpec {
            residual: true,
            ..cycled_epilogue(i, *base)
        };
        let seed = 7000 + 10 * i as u64;
        let x = rand_vec(s.input_len(), seed);
        let scale = 1.0 / (s.in_c as f32).sqrt();
        let w: Vec<f32> = rand_vec(s.weight_len(), seed + 1)
            .iter()
            .map(|v| v * scale)
            .collect();
        let b = s.bias.then(|| rand_vec(s.out_c, seed + 2));
        let r = rand_vec(s.output_len(), seed + 3);
        let ip = ConvSpec {
            residual_in_place: true,
            ..s
        };
        for isa in cnnc::Isa::host_levels() {
            let m = ConvMethod::PointwiseGemm;
            let what = format!("{s:?} at {isa:?}");
            let mut km = KernelModule::new().unwrap();
            km.set_isa(isa).unwrap();
            if !m.reads_residual_in_place(&s, isa) {
                assert!(km.add_conv_with(&ip, m).is_err(), "{what}");
                refused += 1;
                continue;
            }
            in_place += 1;
            let (pa, pb) = (
                km.add_conv_with(&s, m).unwrap(),
                km.add_conv_with(&ip, m).unwrap(),
            );
            let packed = pa.pack_weights(&w, b.as_deref()).unwrap();
            assert_eq!(packed, pb.pack_weights(&w, b.as_deref()).unwrap(), "{what}");
            let code = km.finalize().unwrap();
            let (ka, kb) = (code.get(pa).unwrap(), code.get(pb).unwrap());
            let mut want = vec![f32::NAN; s.output_len()];
            ka.run_all(&x, &packed, Some(&r), &mut want).unwrap();
            let mut out = r.clone();
            assert!(
                kb.run_all(&x, &packed, Some(&r), &mut out).is_err(),
                "{what}"
            );
            kb.run_all(&x, &packed, None, &mut out).unwrap();
            assert_bits(&out, &want, &what);
            let units = kb.work_units();
            let mut scratch = vec![0.0f32; kb.scratch_len()];
            for pieces in [2usize, 3, 7] {
                let mut out = r.clone();
                for i in 0..pieces {
                    let range = units * i / pieces..units * (i + 1) / pieces;
                    kb.run(&x, &packed, None, &mut out, &mut scratch, range)
                        .unwrap();
                }
                assert_bits(&out, &want, &format!("{what}, split in {pieces}"));
            }
            for pool in split_pools() {
                let mut scratch = vec![0.0f32; kb.scratch_len_on(pool.threads())];
                let mut out = r.clone();
                kb.run_parallel(pool, &x, &packed, None, &mut out, &mut scratch)
                    .unwrap();
                assert_bits(&out, &want, &format!("{what}, {} threads", pool.threads()));
            }
        }
    }
    assert!(in_place >= shapes.len(), "{in_place} in place");
    // Columns over 128 KB go in chunks of input channels: at avx2 (16 pixels) the
    // 2200-channel ones, at avx512 (48 pixels) the 600- and 1100-channel ones too; the
    // f32x4 tiles never.
    if cnnc::Isa::host_levels().len() > 1 {
        assert!(refused >= 1, "{refused} refused");
    }
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    let same = got
        .iter()
        .zip(want)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same && got.len() == want.len(), "{what}: differs");
}

/// The direct convolutions at every ISA level the host has: at avx2 / avx512 the implicit
/// GEMM on the wide micro-kernels, at sse the f32x4 direct kernel. Both compute each output
/// as one FMA chain over the taps in the same order, so all levels agree bit for bit.
/// Shapes: the stem (7x7/2 pad 3), strided 3x3 and 1x1 projections, stride 3, rectangular
/// filters and strides, padding 0-3, outputs narrower and wider than a strip (every row
/// grouping), output channels of every remainder of the 6- and 14-row blocks, input channel
/// counts that split the reduction into 1, 2 and 3+ blocks, every epilogue.
#[test]
fn conv_direct_every_isa_bit_identical() {
    let mut shapes = vec![
        spec(3, 35, 37, 16, 7, 7, (2, 2), (3, 3)),
        spec(8, 29, 29, 20, 3, 3, (2, 2), (1, 1)),
        spec(16, 15, 15, 33, 1, 1, (2, 2), (0, 0)),
        spec(5, 17, 13, 7, 3, 3, (3, 3), (1, 1)),
        spec(4, 9, 70, 9, 3, 5, (1, 2), (1, 2)),
        spec(6, 12, 11, 5, 2, 4, (2, 1), (0, 3)),
        spec(7, 8, 8, 3, 3, 3, (1, 1), (1, 1)),
        spec(2, 1, 1, 4, 1, 1, (1, 1), (1, 1)),
        spec(5, 40, 3, 6, 3, 3, (1, 1), (0, 1)),
        // Reduction blocks: 2 and 3+ blocks of input channels at both widths.
        spec(100, 9, 9, 15, 3, 3, (2, 2), (1, 1)),
        spec(230, 7, 7, 29, 3, 3, (2, 2), (1, 1)),
        spec(600, 5, 5, 17, 1, 1, (2, 2), (0, 0)),
        // Few strips, computed all at once (7x7: 2 strips of zmm, 4 of ymm; 9x9: 3 of zmm),
        // with 1 and 3 reduction blocks.
        spec(100, 7, 7, 30, 3, 3, (1, 1), (1, 1)),
        spec(64, 14, 14, 37, 1, 1, (2, 2), (0, 0)),
        spec(50, 9, 9, 20, 3, 3, (1, 1), (1, 1)),
        // Weights over 1 MB, which the micro-kernels prefetch ahead (into the packed
        // buffer's padding at its end): grouped, and strip by strip.
        spec(300, 7, 7, 131, 3, 3, (1, 1), (1, 1)),
        spec(290, 39, 41, 115, 3, 3, (2, 2), (1, 1)),
        // Strips across rows (zmm 48 pixels, ymm 16): a 14x14 output (zmm: 4 strips and
        // one of 4 pixels, all at once; ymm: a group of 8 rows in 7 strips, then 6 rows),
        // 13x13, 28x28 from stride 2 (zmm: 2 groups of 12 rows, then 4 rows), rows of 56
        // (zmm: 6 rows in 7 strips), a 14x14 stem-like 7x7/2 (the stride-2 copies' odd
        // lanes from the column before a strip's first on its row), 12x14 from stride 2
        // with odd input sizes; reduction blocks on 2 of them.
        spec(20, 14, 14, 13, 3, 3, (1, 1), (1, 1)),
        spec(70, 13, 13, 15, 3, 3, (1, 1), (1, 1)),
        spec(10, 56, 56, 9, 3, 3, (2, 2), (1, 1)),
        spec(5, 20, 56, 12, 3, 3, (1, 1), (1, 1)),
        spec(3, 27, 27, 10, 7, 7, (2, 2), (3, 3)),
        spec(130, 23, 27, 11, 3, 3, (2, 2), (1, 1)),
        // Outputs over 1 MB, whose next strip's outputs the first call of each strip
        // prefetches for writing (the plane's last strip its own): a stem strip by strip,
        // a channel tail with 2 reduction blocks, and all strips at once.
        spec(3, 131, 129, 64, 7, 7, (2, 2), (3, 3)),
        spec(50, 61, 62, 70, 3, 3, (1, 1), (1, 1)),
        spec(20, 14, 14, 1400, 3, 3, (1, 1), (1, 1)),
        // 7x7 outputs from stride 1 and 2 (zmm: strips of 48 and 1 pixels, all at once; the
        // full strip's kernel computes the lone pixel where a range holds both), 1 and 2
        // reduction blocks, channel tails.
        spec(40, 13, 14, 19, 3, 3, (2, 2), (1, 1)),
        spec(70, 7, 7, 16, 3, 3, (1, 1), (1, 1)),
        // Weights over 256 KB, prefetched ahead: one strip, and 12 strips of 3 reduction
        // blocks.
        spec(70, 11, 12, 110, 3, 3, (2, 2), (1, 1)),
        spec(64, 23, 25, 130, 3, 3, (1, 1), (1, 1)),
        // Reduction blocks of the 192 KB panels strip by strip: 3 at zmm on one strip of
        // 25 pixels, 7 at zmm and 3 at ymm on 21x21 (10 strips of 48), a channel tail.
        spec(400, 9, 9, 15, 3, 3, (2, 2), (1, 1)),
        spec(700, 21, 21, 9, 3, 3, (1, 1), (1, 1)),
        // Padding done by the panel copies (`x86::copy::SelfPad`; most shapes above pad
        // too): a 5x5 with padding 2 on a 3x4 input (filter rows above and below it, pieces
        // wholly and partly left and right of it); stride 2 from 57x57 (the last output's
        // filter column 2 right of the input, the stride-2 lanes' spans starting and ending
        // inside a vector); rows of 200 (48 x 4 + 8: strips repeated along a row, so the
        // prologue's padded copy instead).
        spec(40, 3, 4, 9, 5, 5, (1, 1), (2, 2)),
        spec(12, 57, 57, 9, 3, 3, (2, 2), (1, 1)),
        spec(8, 6, 200, 9, 3, 3, (1, 1), (1, 1)),
        // Stride-2 copies taking filter columns two by two (`PanelCopy::pair`): 2x2/2 (one
        // pair) with a padding column on each side and none above or below, 1x5 at stride
        // (1, 2) with padding 2 (two pairs and a lone column, spans of either tap of a pair
        // at the row's ends).
        spec(20, 15, 17, 9, 2, 2, (2, 2), (0, 1)),
        spec(20, 9, 31, 11, 1, 5, (1, 2), (0, 2)),
        // Self-padding at the extremes: padding 3 around a 2x2 input (whole strips' filter
        // rows and columns outside it), a one-row input, stride (3, 1) with padding.
        spec(40, 2, 2, 9, 3, 3, (1, 1), (3, 3)),
        spec(40, 1, 5, 9, 3, 3, (1, 1), (1, 1)),
        spec(8, 13, 11, 9, 3, 3, (3, 1), (1, 1)),
    ];
    // (5 input channels: with 4 or fewer, 3x3 filters take the im2col bands.)
    for k in 1..=15 {
        shapes.push(spec(5, 11, 9, k, 3, 3, (2, 2), (1, 1)));
    }
    let levels = cnnc::Isa::host_levels();
    let mut seed = 2000;
    for (i, base) in shapes.into_iter().enumerate() {
        let s = cycled_epilogue(i, base);
        let mut outs = Vec::new();
        for &isa in &levels {
            let (out, method, micro) = check_conv_with(&s, seed, Some(isa), None);
            let wide = isa != cnnc::Isa::Sse;
            // At avx2 / avx512 the strided 1x1 shapes take the pointwise GEMM on their
            // sampled pixels where it goes weight major or the input has at most 36
            // channels, else the implicit GEMM
            // (`conv_strided_pointwise_every_isa_bit_identical`).
            let strided_1x1 = wide
                && s.kernel_h * s.kernel_w == 1
                && s.pad_h + s.pad_w == 0
                && (s.out_c > s.out_h() * s.out_w() || s.in_c <= 36);
            // Few taps (3x3 on up to 4 channels) take the im2col bands instead
            // (`conv_few_taps_im2col_every_isa_bit_identical`).
            let gemm = ["implicit", "im2col"];
            if strided_1x1 {
                assert_eq!(method, ConvMethod::PointwiseGemm, "{s:?} at {isa}: {micro}");
            } else {
                let on_gemm = gemm.iter().any(|g| micro.ends_with(g));
                assert_eq!(on_gemm, wide, "{s:?} at {isa}: {micro}");
            }
            outs.push((isa, out));
        }
        assert_levels_agree(&s, &outs);
        seed += 5;
    }
}

/// Convolutions with few taps (`in_c * kh * kw <= 36`: the first layer of most CNNs) at
/// every ISA level: at avx2 / avx512 the im2col bands (`src/jit/im2col.rs`: a band of output
/// rows copied into a stack panel as `[taps][pixels]`, then the micro-kernel channel block
/// by channel block along the band's pixels, vectors across row ends), at sse the f32x4
/// direct kernel; both one FMA chain over the taps in order, so every level and every split
/// agree bit for bit. Shapes: 1 to 4 input channels; 1x1 with padding, 3x3, 5x5, 1x7 and
/// 3x2 filters; strides 1, 2, 3 and (1, 2) / (2, 1) on even and odd widths (the copy's
/// vector groups, its last group from the column before, rows narrower than a group);
/// padding 0 to 2; one band and many, a short last band; bands whose pixels are fewer than,
/// a multiple of and not a multiple of a vector tile; output channels of every remainder
/// of the 6- and 14-row blocks; every epilogue.
#[test]
fn conv_few_taps_im2col_every_isa_bit_identical() {
    let mut shapes = vec![
        spec(3, 224, 224, 64, 3, 3, (2, 2), (0, 0)),
        spec(3, 57, 59, 29, 3, 3, (2, 2), (0, 0)),
        spec(3, 64, 48, 16, 3, 3, (1, 1), (1, 1)),
        spec(1, 28, 28, 6, 5, 5, (1, 1), (0, 0)),
        spec(1, 33, 31, 20, 5, 5, (2, 2), (2, 2)),
        spec(2, 9, 70, 9, 3, 3, (1, 2), (1, 1)),
        spec(4, 70, 9, 15, 3, 3, (2, 1), (1, 0)),
        spec(4, 17, 23, 7, 3, 3, (3, 3), (2, 1)),
        spec(2, 5, 5, 13, 1, 1, (1, 1), (1, 1)),
        spec(3, 12, 40, 33, 1, 7, (1, 1), (0, 3)),
        spec(4, 10, 11, 5, 3, 2, (1, 1), (0, 1)),
        spec(3, 3, 200, 14, 3, 3, (1, 1), (0, 1)),
        spec(1, 1, 9, 2, 1, 3, (1, 1), (0, 0)),
        spec(3, 9, 4, 28, 3, 3, (2, 2), (1, 1)),
        // Outputs over 1 MB, whose full tiles prefetch the next tile's outputs for writing
        // (the plane's last full tiles their own): a channel tail, and a plane shorter
        // than two tiles.
        spec(3, 150, 149, 29, 3, 3, (1, 1), (1, 1)),
        spec(4, 7, 9, 4100, 3, 3, (1, 1), (1, 1)),
    ];
    for k in 1..=15 {
        shapes.push(spec(3, 31, 19, k, 3, 3, (2, 2), (1, 1)));
    }
    let levels = cnnc::Isa::host_levels();
    let mut seed = 7000;
    for (i, base) in shapes.into_iter().enumerate() {
        let s = cycled_epilogue(i, base);
        let mut outs = Vec::new();
        for &isa in &levels {
            let (out, method, micro) = check_conv_with(&s, seed, Some(isa), None);
            assert_eq!(method, ConvMethod::Direct, "{s:?} at {isa}: {micro}");
            let wide = isa != cnnc::Isa::Sse;
            assert_eq!(micro.ends_with("im2col"), wide, "{s:?} at {isa}: {micro}");
            outs.push((isa, out));
        }
        assert_levels_agree(&s, &outs);
        seed += 5;
    }
}

/// The strided 1x1 convolution (ResNet's projection shortcut): at avx2 / avx512 the
/// pointwise GEMM over its output pixels, on a copy of the sampled input pixels made by a
/// prologue (split over input channels), where it goes weight major or the layer has at
/// most 36 input channels, else the implicit GEMM (the direct method,
/// `ConvMethod::strided_on_implicit`); at sse the f32x4 direct kernel. Both wide methods
/// run on every shape. Every output is one FMA chain over the input channels in order, then
/// the epilogue, so every level, both methods and every split agree bit for bit.
/// Shapes: stride 2 on even and odd widths (the copy's vector groups, its last group from
/// the column before, rows narrower than a group), strides 3 and (1, 2) / (2, 1), pixel and
/// channel tails, reduction chunks, the packed tile column, weight-major units with and
/// without the weight prefetch (weights over 1 MB), every epilogue.
#[test]
fn conv_strided_pointwise_every_isa_bit_identical() {
    let shapes = [
        spec(16, 15, 15, 33, 1, 1, (2, 2), (0, 0)),
        spec(40, 16, 16, 20, 1, 1, (2, 2), (0, 0)),
        spec(9, 17, 19, 15, 1, 1, (2, 2), (0, 0)),
        spec(5, 9, 7, 6, 1, 1, (2, 2), (0, 0)),
        spec(7, 4, 3, 5, 1, 1, (2, 2), (0, 0)),
        spec(3, 1, 9, 2, 1, 1, (2, 2), (0, 0)),
        // Strides 3, (1, 2) and (2, 1) on more than 36 channels: the implicit GEMM's
        // copies by default (its f32x4 copy at stride 3).
        spec(40, 22, 31, 13, 1, 1, (3, 3), (0, 0)),
        spec(40, 13, 14, 9, 1, 1, (1, 2), (0, 0)),
        spec(40, 14, 13, 9, 1, 1, (2, 1), (0, 0)),
        // 28 x 28 outputs: 24 full zmm tile columns and a half one; the column packed
        // (256 channels) and in chunks (600).
        spec(256, 56, 56, 29, 1, 1, (2, 2), (0, 0)),
        spec(600, 55, 55, 15, 1, 1, (2, 2), (0, 0)),
        // More output channels than pixels: weight major; over 1 MB of weights, prefetched.
        spec(70, 14, 14, 100, 1, 1, (2, 2), (0, 0)),
        spec(600, 13, 13, 480, 1, 1, (2, 2), (0, 0)),
        // Into 7x7, weight major (avx512: 8 x 48 + 1), a channel tail.
        spec(90, 14, 14, 101, 1, 1, (2, 2), (0, 0)),
    ];
    let levels = cnnc::Isa::host_levels();
    let mut seed = 5000;
    for (i, base) in shapes.into_iter().enumerate() {
        let s = cycled_epilogue(i, base);
        let mut outs = Vec::new();
        for &isa in &levels {
            let (out, method, micro) = check_conv_with(&s, seed, Some(isa), None);
            // Weight major where the output channels outnumber the pixels (no shape here
            // is a bottleneck's expansion).
            let weight_major = s.out_c > s.out_h() * s.out_w();
            let want = if isa != cnnc::Isa::Sse && (weight_major || s.in_c <= 36) {
                ConvMethod::PointwiseGemm
            } else {
                ConvMethod::Direct
            };
            assert_eq!(method, want, "{s:?} at {isa}: {micro}");
            outs.push((isa, out));
            if isa != cnnc::Isa::Sse {
                for m in [ConvMethod::Direct, ConvMethod::PointwiseGemm] {
                    let (out, _, micro) = check_conv_with(&s, seed, Some(isa), Some(m));
                    // (The im2col bands where the input has at most 36 channels.)
                    let on = ["implicit", "im2col"].iter().any(|g| micro.ends_with(g));
                    assert!(on || m != ConvMethod::Direct, "{s:?} at {isa}: {micro}");
                    outs.push((isa, out));
                }
            }
        }
        assert_levels_agree(&s, &outs);
        seed += 5;
    }
}

/// A conv followed by a max pool as one kernel (`KernelModule::add_conv_max_pool`, im2col
/// bands computing a band of the pool's rows at a time into a per-thread scratch): the
/// same bits as the conv kernel then the pool kernel at the same level, over the whole
/// range, split ranges and on 2 and 3 threads, into NaN-poisoned outputs. Shapes:
/// SqueezeNet's first layer (7 units, a shorter last one), a channel tail, 5x5 on one
/// channel with a 2x2/2 pool, stride (2, 1) with a 3x3/1 pool padded left and right, many
/// units with recomputed rows between them, a single unit of one pool row, a 2-row
/// pool window with stride 3 (rows no window reads), a 3x3/1 pool cut into many units;
/// every epilogue but the residual; a NaN in the input. Padded convs, residuals, vertical
/// pool padding and sse are not taken.
#[test]
fn conv_max_pool_fused_is_the_conv_then_the_pool() {
    let pool = |c: &ConvSpec, k: (usize, usize), s: (usize, usize), pad_w: usize| PoolSpec {
        kind: PoolKind::Max,
        channels: c.out_c,
        in_h: c.out_h(),
        in_w: c.out_w(),
        kernel_h: k.0,
        kernel_w: k.1,
        stride_h: s.0,
        stride_w: s.1,
        pad_h: 0,
        pad_w,
    };
    let shapes = [
        (
            spec(3, 224, 224, 64, 3, 3, (2, 2), (0, 0)),
            (3, 3),
            (2, 2),
            0,
        ),
        (spec(3, 57, 59, 29, 3, 3, (2, 2), (0, 0)), (3, 3), (2, 2), 0),
        (spec(1, 33, 31, 20, 5, 5, (1, 1), (0, 0)), (2, 2), (2, 2), 0),
        (spec(4, 70, 9, 15, 3, 3, (2, 1), (0, 0)), (3, 3), (1, 1), 1),
        (
            spec(3, 301, 37, 70, 3, 3, (1, 1), (0, 0)),
            (3, 3),
            (2, 2),
            1,
        ),
        (spec(2, 5, 40, 9, 3, 3, (1, 1), (0, 0)), (3, 3), (2, 2), 0),
        (spec(3, 60, 45, 33, 3, 3, (1, 1), (0, 0)), (2, 3), (3, 2), 0),
        (
            spec(3, 100, 120, 64, 3, 3, (1, 1), (0, 0)),
            (3, 3),
            (1, 1),
            0,
        ),
    ];
    let mut seed = 9100;
    // A pool of stride 1 whose rows are cut into several units: each unit recomputes the
    // conv rows its first windows share with the previous unit's last ones.
    let mut most_units_at_pool_stride_1 = 0;
    for (i, (base, k, s, pad_w)) in shapes.into_iter().enumerate() {
        let c = ConvSpec {
            residual: false,
            ..cycled_epilogue(i, base)
        };
        let p = pool(&c, k, s, pad_w);
        let mut x = rand_vec(c.input_len(), seed);
        if i == 1 {
            x[c.in_w * 7 + 11] = f32::NAN;
        }
        let w = rand_vec(c.weight_len(), seed + 1);
        let b = c.bias.then(|| rand_vec(c.out_c, seed + 2));
        for isa in cnnc::Isa::host_levels() {
            let what = format!("{c:?} then {p:?} at {isa}");
            assert_eq!(
                conv_max_pool_fuses(&c, &p, isa),
                isa != cnnc::Isa::Sse,
                "{what}"
            );
            if isa == cnnc::Isa::Sse {
                continue;
            }
            let mut km = KernelModule::new().unwrap();
            km.set_isa(isa).unwrap();
            let (pc, pp) = (
                km.add_conv_with(&c, ConvMethod::Direct).unwrap(),
                km.add_pool(&p).unwrap(),
            );
            let pf = km.add_conv_max_pool(&c, &p).unwrap();
            let (packed, packed_f) = (
                pc.pack_weights(&w, b.as_deref()).unwrap(),
                pf.pack_weights(&w, b.as_deref()).unwrap(),
            );
            let code = km.finalize().unwrap();
            let (kc, kp, kf) = (
                code.get(pc).unwrap(),
                code.get(pp).unwrap(),
                code.get(pf).unwrap(),
            );
            assert!(
                kf.micro_kernel().ends_with("im2col + max pool"),
                "{what}: {}",
                kf.micro_kernel()
            );
            let mut conv_out = vec![f32::NAN; c.output_len()];
            kc.run_all(&x, &packed, None, &mut conv_out).unwrap();
            let mut want = vec![f32::NAN; p.output_len()];
            kp.run_all(&conv_out, &mut want).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            let mut got = vec![f32::NAN; p.output_len()];
            kf.run_all(&x, &packed_f, None, &mut got).unwrap();
            assert_eq!(bits(&got), bits(&want), "{what}");
            assert_eq!(i == 1, got.iter().any(|v| v.is_nan()), "{what}: NaN");
            let units = kf.work_units();
            if s.0 == 1 {
                most_units_at_pool_stride_1 = most_units_at_pool_stride_1.max(units);
            }
            let mut scratch = vec![0.0f32; kf.scratch_len()];
            for pieces in [2usize, 3, 7] {
                let mut out = vec![f32::NAN; p.output_len()];
                for j in 0..pieces {
                    let range = units * j / pieces..units * (j + 1) / pieces;
                    kf.run(&x, &packed_f, None, &mut out, &mut scratch, range)
                        .unwrap();
                }
                assert_eq!(bits(&out), bits(&want), "{what}: split in {pieces}");
            }
            for tp in split_pools() {
                let mut scratch = vec![0.0f32; kf.scratch_len_on(tp.threads())];
                let mut out = vec![f32::NAN; p.output_len()];
                kf.run_parallel(tp, &x, &packed_f, None, &mut out, &mut scratch)
                    .unwrap();
                assert_eq!(
                    bits(&out),
                    bits(&want),
                    "{what}: on {} threads",
                    tp.threads()
                );
            }
            // Made for a pool of 2 or 3 threads (`set_threads`: units sized to even out
            // the threads; SqueezeNet's 7 units for one thread become 8 and 10), the same
            // bits on each pool.
            for threads in [2usize, 3] {
                let mut km = KernelModule::new().unwrap();
                km.set_isa(isa).unwrap();
                km.set_threads(threads);
                let pt = km.add_conv_max_pool(&c, &p).unwrap();
                let code = km.finalize().unwrap();
                let kt = code.get(pt).unwrap();
                if i == 0 {
                    assert_eq!((units, kt.work_units()), (7, 4 + 2 * threads), "{what}");
                }
                for tp in split_pools() {
                    let mut scratch = vec![0.0f32; kt.scratch_len_on(tp.threads())];
                    let mut out = vec![f32::NAN; p.output_len()];
                    kt.run_parallel(tp, &x, &packed_f, None, &mut out, &mut scratch)
                        .unwrap();
                    let on = tp.threads();
                    assert_eq!(
                        bits(&out),
                        bits(&want),
                        "{what}: made for {threads}, on {on}"
                    );
                }
            }
        }
        seed += 7;
    }
    assert!(
        most_units_at_pool_stride_1 >= 3,
        "{most_units_at_pool_stride_1} units"
    );
    // Not taken: a padded conv, a residual, a pool padded vertically, an average pool.
    let c = spec(3, 30, 30, 8, 3, 3, (2, 2), (0, 0));
    let isa = cnnc::Isa::default_level();
    let padded = spec(3, 30, 30, 8, 3, 3, (2, 2), (1, 1));
    assert!(!conv_max_pool_fuses(
        &padded,
        &pool(&padded, (3, 3), (2, 2), 0),
        isa
    ));
    let residual = ConvSpec {
        residual: true,
        ..c
    };
    assert!(!conv_max_pool_fuses(
        &residual,
        &pool(&c, (3, 3), (2, 2), 0),
        isa
    ));
    let tall = PoolSpec {
        pad_h: 1,
        ..pool(&c, (3, 3), (2, 2), 0)
    };
    assert!(!conv_max_pool_fuses(&c, &tall, isa));
    let avg = PoolSpec {
        kind: PoolKind::Avg,
        ..pool(&c, (3, 3), (2, 2), 0)
    };
    assert!(!conv_max_pool_fuses(&c, &avg, isa));
}
