//! Winograd F(4x4, 3x3) convolution for 3x3, stride-1 layers (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! Output channel `k` of a 4x4 block of output pixels (a *tile*) is
//! `Y = Aᵀ [ Σ_c (G g_kc Gᵀ) ⊙ (Bᵀ d_c B) ] A`, where `d_c` is the tile's 6x6 input patch in
//! channel `c` and `g_kc` the 3x3 filter. At each of the 36 positions `ξ` of the transformed
//! tile the sum over `c` is a matrix product `M[ξ] = U[ξ] · V[ξ]` (`[K x C]` by `[C x tiles]`):
//! 36 multiply-adds per tile and channel pair where the direct convolution needs 144. With
//! 128-bit vectors capping the multiply-add rate (see `docs/jit.md`), doing 4x fewer of them is
//! the way to go faster.
//!
//! The generated code, all of it specialised to the layer's shapes:
//! 1. a *prologue* per input channel (threads split the channels): copy the plane into a
//!    zero-bordered scratch plane, then transform every tile, `V[ξ][c][t] = (Bᵀ d B)[ξ]`, four
//!    neighbouring tiles of a tile row at a time (one f32x4 lane each);
//! 2. the *products*, per position `ξ` and block of output channels: the pointwise GEMM's
//!    micro-kernel ([`super::gemm`]) over all tiles;
//! 3. the *output transform* per output channel: `Aᵀ m A`, four tiles at a time, with the
//!    epilogue ([`super::epilogue`]) and the stores; tiles that overhang the output's right
//!    or bottom edge store only their inside.
//!
//! A *compute* function per range of channel blocks calls 2 then 3 for its blocks (the
//! kernel's own work units, after the whole prologue); a thread pool instead runs 1, 2 and 3
//! one after another, each split over its own units, so that both threads get equal parts
//! (a 64-channel layer is 5 blocks of 14 at avx512: split by blocks, 3 against 2).
//!
//! `U = G g Gᵀ` is computed once, when the weights are packed. Rounding differs from the
//! direct convolution (the transforms scale values by up to 8 and 1/24); tests compare both
//! with the f64 reference at the same tolerance.
//!
//! Bounds (what keeps every access inside the buffers `ConvKernel` checks): a tile row `ty <
//! th` reads padded rows `4 ty .. 4 ty + 5 < hp = 4 th + 2`; a group of tiles starting at tile
//! column `tx0 <= tw4 - 4` reads columns below `4 tx0 + 20 <= wp` (dense groups: below
//! `4 tx + 8 <= wp`). Groups store lanes `t .. t + 3` of a `V` row and the GEMM and output
//! transform read the same `M` indices, all below `tp` (`T + tw4 - tw` rounded up to 4; dense:
//! `T` rounded up). The GEMM writes `M` rows of real output channels only, and the output
//! transform stores only the inside part of each tile, into the `K x oh x ow` output.
use cranelift_codegen::ir::{InstBuilder, Value};

use super::cg::{fits, off, F32, F32X4};
use super::conv::{ConvBufs, ConvSpec, PROLOGUE_USES};
use super::epilogue::Epilogue;
use super::gemm::{PixelGemm, PixelGemmSpec, Ptrs};
use super::module::{Emit, KernelModule, PendingId};
use crate::error::Result;
use crate::options::Isa;

/// Output tile edge (`m`), transformed tile edge (`m + r - 1`) and positions per tile.
const TILE: usize = 4;
const ALPHA: usize = 6;
const POS: usize = ALPHA * ALPHA;

/// Input transform `Bᵀ` of F(4x4, 3x3) (interpolation points 0, ±1, ±2, ∞).
const BT: [[f32; ALPHA]; ALPHA] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
/// Output transform `Aᵀ`.
const AT: [[f32; ALPHA]; TILE] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];
/// `24 G` for the filter transform `G` (6x3) of F(4x4, 3x3): small integers, so that the
/// weight transform needs one scaling at the end and no division per weight.
const G24: [[f32; 3]; ALPHA] = [
    [6.0, 0.0, 0.0],
    [-4.0, -4.0, -4.0],
    [-4.0, 4.0, -4.0],
    [1.0, 2.0, 4.0],
    [1.0, -2.0, 4.0],
    [0.0, 0.0, 24.0],
];

/// The distance between two planes of `n` floats that are read or written together (the 36
/// positions of a tile): `n` rounded up to a whole, odd number of cache lines, so that
/// consecutive planes start in different cache sets. Planes a multiple of 4 KB apart (512
/// channels x 8 tiles) all fall into the same sets and evict each other.
fn skewed(n: usize) -> usize {
    let lines = n.div_ceil(16);
    (lines | 1) * 16
}

/// Tile grids up to this size whose rows are not whole groups of 4 use the dense grouping,
/// unrolled at compile time (a 14x14 output, 4x4 tiles, loses nothing by rows and compiled
/// in 10 ms instead of 4.5 when unrolled).
const DENSE_TILES: usize = 16;

/// Channels below which the products are too thin for the GEMM micro-kernel to pay for the
/// transforms (the direct kernel takes those layers).
const MIN_CHANNELS: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct WinogradPlan {
    spec: ConvSpec,
    /// Tile rows and columns.
    th: usize,
    tw: usize,
    /// How the transforms group tiles by 4: along tile rows (then `tw4` is `tw` rounded up to
    /// a multiple of 4, and the last group of a row runs over into the next row's slots or the
    /// end of the plane: computed, never stored), or, for grids of at most 16 tiles with rows not a whole group, in dense
    /// order with each tile's position laid out at compile time (a 7x7 output is 2x2 tiles:
    /// by rows, half of every GEMM would be padding).
    dense: bool,
    tw4: usize,
    /// Floats per `(ξ, channel)` row of `V` and `M` (tiles, rounded up to a group of 4).
    tp: usize,
    /// The zero-bordered plane: `4 th + 2` rows (each tile reads 6), and columns for the last
    /// group's reads (`4 tw4 + 4`: 5 vectors of a row from each group's first tile; dense:
    /// 2 vectors from each tile).
    hp: usize,
    wp: usize,
    gemm: PixelGemm,
}

/// The functions of a Winograd layer ([`WinogradPlan::emit`]).
pub(crate) struct WinogradFns {
    /// Input channels: padded copy and input transform.
    pub prologue: PendingId,
    /// Channel blocks: their products, then their output transform.
    pub compute: PendingId,
    /// [`WinogradPlan::product_units`].
    pub products: PendingId,
    /// Output channels: output transform, epilogue, stores.
    pub output: PendingId,
}

/// How much faster than the direct convolution the cost model must find Winograd. Winograd
/// reads 4x the weights, so where the estimates are close it is the one that loses most when
/// other cores contend for memory bandwidth (a second thread, or other processes).
const WINOGRAD_MARGIN: f64 = 1.25;

impl WinogradPlan {
    /// Whether `s` is a 3x3 stride-1 convolution large enough for Winograd to pay, with a
    /// scratch space the generated code can address.
    pub(crate) fn for_spec(s: &ConvSpec, isa: Isa) -> Option<Self> {
        let shape = s.kernel_h == 3 && s.kernel_w == 3 && s.stride_h == 1 && s.stride_w == 1;
        let big = s.in_c >= MIN_CHANNELS && s.out_c >= MIN_CHANNELS;
        if !(shape && big && s.out_h() >= TILE && s.out_w() >= TILE) {
            return None;
        }
        let plan = Self::new(*s, isa);
        (fits(&[plan.scratch_len()]) && fits(&[plan.packed_len()])).then_some(plan)
    }

    /// Whether this plan is expected to run faster than the direct convolution (the implicit
    /// GEMM at avx2 / avx512) inside a network, where a layer's weights come from memory: a
    /// cost model of `multiply-adds / rate + weight bytes / bandwidth + transforms`.
    ///
    /// Winograd does a quarter of the direct convolution's multiply-adds per tile but reads
    /// 4x its weights (36 values per 3x3 filter), and its GEMMs run on `tp` tile columns
    /// rounded up to whole vectors. On a large output the multiply-adds dominate and Winograd
    /// wins 2-3x; on a 7x7 output (2x2 tiles: one vector, mostly masked, per row) it reads
    /// 37.7 MB for ResNet-50's 512->512 layer where the direct kernel reads 9.4 MB, and
    /// loses 2x. Measured (`examples/convperf.rs`, `CNNC_COPIES=20` so that the weights come
    /// from memory, one thread, Intel Xeon, load 3-5; Winograd / direct, ms): avx512 512->512
    /// at 7x7 5.7 / 3.4, 256->256 at 10x10 1.51 / 1.14, at 12x12 1.52 / 1.67, at 14x14 1.52 /
    /// 1.95, 64->64 at 8x8 0.039 / 0.030; avx2 256->256 at 10x10 1.76 / 2.35, 512->512 at 7x7
    /// 10.8 / 5.4; sse (the f32x4 direct kernel is slower, so Winograd keeps the 7x7 layers)
    /// 512->512 at 7x7 6.6 / 8.6, 128->32 at 7x7 0.045 / 0.094. The model picks the faster of
    /// each pair but two close ones (avx2 16->16 at 8x8, 3 / 4 us; sse 256->256 at 10x10, 3.6 /
    /// 3.3 ms).
    ///
    /// Since the implicit GEMM prefetches its weights, its time is the larger of computing and
    /// reading them, and Winograd must win by [`WINOGRAD_MARGIN`]. Measured 2026-11-30 with
    /// `examples/convab.rs` (alternating pairs, weights from memory, avx512): 256->256 at 14x14,
    /// quiet machine, Winograd 1.53-1.67 ms / direct 1.57-1.66 ms; while other processes
    /// loaded memory (load 7), Winograd took 2.8-3.3x the direct kernel's time on 256->256 and
    /// 2.3-3.3x on 512->512 at 14x14, and about the same on 128->128 at 28x28.
    pub(crate) fn beats_direct(&self, isa: Isa) -> bool {
        // Multiply-adds per second of the wide GEMM and of the implicit-GEMM direct kernel,
        // measured on whole layers (one thread), and one core's memory bandwidth.
        let (gemm_rate, direct_rate, lanes) = match isa {
            Isa::Sse => (17e9, 16e9, 4),
            Isa::Avx2 => (40e9, 30e9, 8),
            Isa::Avx512 => (60e9, 65e9, 16),
        };
        const BYTES_PER_SECOND: f64 = 10e9;
        // The input and output transforms, per tile and channel (f32x4 code at every level).
        const TRANSFORM_SECONDS: f64 = 8e-9;
        let s = &self.spec;
        let pairs = (s.in_c * s.out_c) as f64;
        let pixels = (s.out_h() * s.out_w()) as f64;
        let taps = (s.kernel_h * s.kernel_w) as f64;
        let columns = self.tp.next_multiple_of(lanes) as f64;
        let winograd = POS as f64 * pairs * columns / gemm_rate
            + 4.0 * POS as f64 * pairs / BYTES_PER_SECOND
            + self.tp as f64 * (s.in_c + s.out_c) as f64 * TRANSFORM_SECONDS;
        let (compute, memory) = (
            taps * pairs * pixels / direct_rate,
            4.0 * taps * pairs / BYTES_PER_SECOND,
        );
        // The implicit GEMM prefetches weights that stream from memory while it computes
        // (`implicit.rs`, `WEIGHT_PREFETCH_BYTES`); the f32x4 direct kernel does not.
        let direct = match isa {
            Isa::Sse => compute + memory,
            Isa::Avx2 | Isa::Avx512 => compute.max(memory),
        };
        winograd * WINOGRAD_MARGIN < direct
    }

    fn new(spec: ConvSpec, isa: Isa) -> Self {
        let (th, tw) = (spec.out_h().div_ceil(TILE), spec.out_w().div_ceil(TILE));
        let dense = tw % 4 != 0 && th * tw <= DENSE_TILES;
        let tw4 = if dense { tw } else { tw.next_multiple_of(4) };
        let tp = (th * tw + tw4 - tw).next_multiple_of(4);
        let gemm = PixelGemm::new(
            PixelGemmSpec {
                in_c: spec.in_c,
                out_c: spec.out_c,
                pixels: tp,
                epilogue: Epilogue::default(),
            },
            isa,
        );
        WinogradPlan {
            spec,
            th,
            tw,
            dense,
            tw4,
            tp,
            hp: TILE * th + 2,
            wp: TILE * tw4 + 4,
            gemm,
        }
    }

    /// The GEMM of the 36 positions.
    pub(crate) fn gemm(&self) -> &PixelGemm {
        &self.gemm
    }

    fn plane_len(&self) -> usize {
        self.hp * self.wp
    }
    /// Floats from one position `ξ` of `V`, `M` and `U` to the next.
    fn v_stride(&self) -> usize {
        skewed(self.spec.in_c * self.tp)
    }
    fn m_stride(&self) -> usize {
        skewed(self.spec.out_c * self.tp)
    }
    fn u_stride(&self) -> usize {
        skewed(self.gemm.weights_len())
    }
    /// Padded planes, then `V` (`[ξ][c][tp]`), then `M` (`[ξ][k][tp]`).
    pub(crate) fn scratch_len(&self) -> usize {
        self.spec.in_c * self.plane_len() + POS * (self.v_stride() + self.m_stride())
    }
    /// `U[ξ]` packed for the GEMM micro-kernel, for each `ξ`, then the bias.
    pub(crate) fn packed_len(&self) -> usize {
        POS * self.u_stride() + self.gemm.channel_blocks() * self.gemm.mr()
    }
    /// Blocks of 6 output channels.
    pub(crate) fn work_units(&self) -> usize {
        self.gemm.channel_blocks()
    }
    /// Input channels (the prologue's work units).
    pub(crate) fn prologue_units(&self) -> usize {
        self.spec.in_c
    }

    /// `U[ξ][k][c] = (G g_kc Gᵀ)[ξ]` from PyTorch-layout weights, packed per `ξ` in the
    /// GEMM micro-kernel's order, then the bias. Computed as `(24 G) g (24 G)ᵀ / 576` (small
    /// integer coefficients) one output channel at a time, with loops along the input
    /// channels, which the compiler vectorises: a 512->512 layer has 9.4 M values to make.
    /// Into `out`, `packed_len()` zeros.
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (k, c) = (self.spec.out_c, self.spec.in_c);
        let (wl, mr) = (self.u_stride(), self.gemm.mr());
        // By blocks of `mr` output channels (the packed layout's rows) and chunks of
        // `CHUNK` input channels, all arrays `[..][ci][r]`: each step of the transform is
        // one elementwise pass over `CHUNK x mr` floats, and each of the 36 results is
        // already in the packed order, so it is stored with one copy. (Output channel by
        // output channel, every value was a separate store `mr` floats from the last, and
        // those stores took most of the compile time of ResNet-18.)
        const CHUNK: usize = 16;
        let len = CHUNK * mr;
        let mut g = vec![0.0f32; 9 * len]; // [tap][ci][r]
        let mut gg = vec![0.0f32; ALPHA * 3 * len]; // [i][b][ci][r]: (24 G g)[i][b]
        let mut u = vec![0.0f32; len]; // [ci][r]
                                       // Zipped slices, so that the compiler vectorises it.
        let combine = |dst: &mut [f32], coef: [f32; 3], rows: [&[f32]; 3], scale: f32| {
            let terms = rows[0].iter().zip(rows[1]).zip(rows[2]);
            for (d, ((&r0, &r1), &r2)) in dst.iter_mut().zip(terms) {
                *d = (coef[0] * r0 + coef[1] * r1 + coef[2] * r2) * scale;
            }
        };
        for block in (0..k).step_by(mr) {
            let rows_in_block = mr.min(k - block);
            for c0 in (0..c).step_by(CHUNK) {
                let n = CHUNK.min(c - c0);
                let len = n * mr;
                for r in 0..rows_in_block {
                    let taps = &w[((block + r) * c + c0) * 9..][..9 * n];
                    for (ci, t9) in taps.chunks_exact(9).enumerate() {
                        for (t, &v) in t9.iter().enumerate() {
                            g[(t * n + ci) * mr + r] = v;
                        }
                    }
                }
                for b in 0..3 {
                    let rows = [0, 1, 2].map(|a| &g[(3 * a + b) * len..][..len]);
                    for (i, &coef) in G24.iter().enumerate() {
                        combine(&mut gg[(i * 3 + b) * len..][..len], coef, rows, 1.0);
                    }
                }
                let base = self.gemm.packed_index(block, c0);
                for i in 0..ALPHA {
                    let rows = [0, 1, 2].map(|b| &gg[(i * 3 + b) * len..][..len]);
                    for (j, &coef) in G24.iter().enumerate() {
                        combine(&mut u[..len], coef, rows, 1.0 / 576.0);
                        let dst = &mut out[(i * ALPHA + j) * wl + base..][..len];
                        if rows_in_block == mr {
                            dst.copy_from_slice(&u[..len]);
                        } else {
                            // A partial last block keeps its padding rows as they are (zero).
                            for (d, s) in dst.chunks_exact_mut(mr).zip(u.chunks_exact(mr)) {
                                d[..rows_in_block].copy_from_slice(&s[..rows_in_block]);
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = bias {
            out[POS * wl..POS * wl + k].copy_from_slice(b);
        }
    }

    /// Emits the prologue over input channels `begin..end` (reading `input`, writing their
    /// part of `scratch`), the products over [`Self::product_units`], the output transform
    /// over output channels, and the compute function over output channel blocks
    /// `begin..end` that calls those two, all over the conv buffers (`conv::define_entry`
    /// chains the prologue and the compute function; a thread pool runs the prologue, the
    /// products and the output transform one after another, each split). The transforms
    /// are unrolled straight-line code (2,000 instructions): without the Cranelift optimiser
    /// ([`KernelModule::quickly`]) they compile 3-4x faster and run as fast.
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<WinogradFns> {
        let plan = self.clone();
        let prologue = km.quickly(|km| {
            km.define_using(
                &PROLOGUE_USES.into_array(),
                move |e, b: ConvBufs<_>, begin, end| {
                    plan.prologue(e, b.input, b.scratch, begin, end)
                },
            )
        })?;
        let plan = self.clone();
        let micros = self.gemm.add_micros(km)?;
        let products = km.quickly(|km| {
            km.define_with_micros(&micros, move |e, b, begin, end| {
                plan.products(e, &b, begin, end)
            })
        })?;
        let plan = self.clone();
        let output = km.quickly(|km| {
            km.define(move |e, b: ConvBufs<_>, begin, end| {
                let mbase = plan.m_base(e, b.scratch);
                plan.output_transform(e, &b, mbase, (begin, end))
            })
        })?;
        let (nmb, mr, k) = (self.gemm.channel_blocks(), self.gemm.mr(), self.spec.out_c);
        // Blocks `begin..end`: their units of each position, then their channels.
        let compute =
            km.define_calling::<ConvBufs<Value>>(&[products, output], move |e, begin, end| {
                let (products, output, bufs) = (e.callees[0], e.callees[1], e.bufs);
                e.for_const(0, POS as i64, 1, |e, xi| {
                    let first = e.mul_imm(xi, nmb as i64);
                    let (u0, u1) = (e.b.ins().iadd(first, begin), e.b.ins().iadd(first, end));
                    e.b.ins().call(products, &[bufs, u0, u1]);
                    Ok(())
                })?;
                let k0 = e.mul_imm(begin, mr as i64);
                let k1 = e.mul_imm(end, mr as i64);
                let kmax = e.iconst(k as i64);
                let k1 = e.b.ins().smin(k1, kmax);
                e.b.ins().call(output, &[bufs, k0, k1]);
                Ok(())
            })?;
        Ok(WinogradFns {
            prologue,
            compute,
            products,
            output,
        })
    }

    fn prologue(
        &self,
        e: &mut Emit,
        inp: Value,
        scratch: Value,
        begin: Value,
        end: Value,
    ) -> Result<()> {
        let s = self.spec;
        let plane = self.plane_len();
        let vbase = e.add_imm(scratch, (s.in_c * plane * 4) as i64);
        e.for_range(begin, end, 1, |e, c| {
            let pc = e.pad_channel(
                inp,
                scratch,
                c,
                (s.in_h, s.in_w),
                (self.hp, self.wp),
                (s.pad_h, s.pad_w),
                0.0,
            )?;
            let vc = e.addr(vbase, c, self.tp * 4);
            if self.dense {
                for (g, tiles) in self.dense_groups().iter().enumerate() {
                    let origins = tiles.map(|(ty, tx)| (ty * TILE * self.wp + tx * TILE) * 4);
                    let vp = e.add_imm(vc, (g * 4 * 4) as i64);
                    self.input_group(
                        e,
                        pc,
                        vp,
                        &origins.map(|o| o as i64),
                        &origins.map(|o| o as i64 + 16),
                    );
                }
                return Ok(());
            }
            e.for_const(0, self.th as i64, 1, |e, ty| {
                let prow = e.addr(pc, ty, TILE * self.wp * 4);
                let vrow = e.addr(vc, ty, self.tw * 4);
                e.for_const(0, self.tw4 as i64, 4, |e, tx0| {
                    let pp = e.addr(prow, tx0, TILE * 4);
                    let vp = e.addr(vrow, tx0, 4);
                    // Tile l's columns 0-3 start 4l floats in, columns 4-5 at 4(l+1).
                    self.input_group(e, pp, vp, &[0, 16, 32, 48], &[16, 32, 48, 64]);
                    Ok(())
                })
            })
        })
    }

    /// The tiles `(ty, tx)` of each dense group of 4, the last group padded with the last tile
    /// (its extra lanes are computed and stored into the plane's padding, never read back).
    fn dense_groups(&self) -> Vec<[(usize, usize); 4]> {
        let n = self.th * self.tw;
        (0..n.div_ceil(4))
            .map(|g| {
                std::array::from_fn(|l| {
                    let t = (4 * g + l).min(n - 1);
                    (t / self.tw, t % self.tw)
                })
            })
            .collect()
    }

    /// Transforms 4 tiles of the padded plane at `pp` (which this function wrote: ordinary
    /// loads), whose columns 0-3 start at byte offset `lo[l]` and 4-5 at `hi[l]` for tile
    /// `l`, and stores lane `l` of `V[ξ]` for tile `l` at `vp`.
    fn input_group(&self, e: &mut Emit, pp: Value, vp: Value, lo: &[i64; 4], hi: &[i64; 4]) {
        let wp = self.wp;
        for (i, bt) in BT.iter().enumerate() {
            // Row i of Bᵀ d on 4 columns starting at byte offset `o` (each once: with tiles
            // along a row, one tile's columns 4-5 are the next one's 0-1).
            let mut memo: Vec<(i64, Value)> = Vec::with_capacity(8);
            let mut row = |e: &mut Emit, o: i64| {
                if let Some(&(_, v)) = memo.iter().find(|m| m.0 == o) {
                    return v;
                }
                let terms: Vec<(f32, Value)> = (0..ALPHA)
                    .filter(|&r| bt[r] != 0.0)
                    .map(|r| (bt[r], e.load_rw(F32X4, pp, off(r * wp * 4) + o as i32)))
                    .collect();
                let v = e.lincomb(&terms);
                memo.push((o, v));
                v
            };
            let zl: Vec<Value> = lo.iter().map(|&o| row(e, o)).collect();
            let zh: Vec<Value> = hi.iter().map(|&o| row(e, o)).collect();
            // Transposed: d[s] holds column s of the 4 tiles.
            let lo = e.transpose4(&zl);
            let hi = e.transpose4(&zh);
            let d = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
            for (j, bj) in BT.iter().enumerate() {
                let terms: Vec<(f32, Value)> = (0..ALPHA)
                    .filter(|&s| bj[s] != 0.0)
                    .map(|s| (bj[s], d[s]))
                    .collect();
                let v = e.lincomb(&terms);
                e.store(v, vp, off((i * ALPHA + j) * self.v_stride() * 4));
            }
        }
    }

    /// Where `M` starts in the scratch.
    fn m_base(&self, e: &mut Emit, scratch: Value) -> Value {
        let at = self.spec.in_c * self.plane_len() + POS * self.v_stride();
        e.add_imm(scratch, (at * 4) as i64)
    }

    /// Units of the products: one per position and channel block, position major, so
    /// that a range keeps one `V[ξ]` in cache for all its blocks, and two threads read
    /// half of `V` and of `U` each, in parts equal to a unit (a 64-channel layer has 5
    /// blocks of 14 at avx512: split by blocks, one thread did 3 and the other 2).
    pub(crate) fn product_units(&self) -> usize {
        POS * self.gemm.channel_blocks()
    }

    /// `M[ξ] = U[ξ] V[ξ]` for channel block `mb` for the units `ξ nmb + mb` in
    /// `begin..end`.
    fn products(&self, e: &mut Emit, b: &ConvBufs<Value>, begin: Value, end: Value) -> Result<()> {
        let vbase = e.add_imm(b.scratch, (self.spec.in_c * self.plane_len() * 4) as i64);
        let mbase = self.m_base(e, b.scratch);
        let nmb = self.gemm.channel_blocks() as i64;
        let wl = self.u_stride();
        e.for_range(begin, end, 1, |e, u| {
            let xi = e.b.ins().udiv_imm_s(u, nmb);
            let first = e.mul_imm(xi, nmb);
            let mb = e.b.ins().isub(u, first);
            let ptr = Ptrs {
                inp: e.addr(vbase, xi, self.v_stride() * 4),
                w: e.addr(b.packed, xi, wl * 4),
                res: b.residual,
                out: e.addr(mbase, xi, self.m_stride() * 4),
            };
            self.gemm.block_row(e, &ptr, mb)
        })
    }

    /// `Aᵀ M A`, the epilogue and the stores for the output channels `k0..k1`, a group of 4
    /// tiles at a time.
    fn output_transform(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        mbase: Value,
        (k0, k1): (Value, Value),
    ) -> Result<()> {
        let s = self.spec;
        let (w, res, out, tp) = (b.packed, b.residual, b.out, self.tp);
        let wl = self.u_stride();
        let (oh, ow) = (s.out_h(), s.out_w());
        e.for_range(k0, k1, 1, |e, kk| {
            let mk = e.addr(mbase, kk, tp * 4);
            let ok = e.addr(out, kk, oh * ow * 4);
            let rk = e.addr(res, kk, oh * ow * 4);
            let bias = if s.bias {
                let bp = e.addr(w, kk, 4);
                let b = e.load(F32, bp, off(POS * wl * 4));
                Some((b, e.b.ins().splat(F32X4, b)))
            } else {
                None
            };
            if self.dense {
                let n = self.th * self.tw;
                for (g, tiles) in self.dense_groups().iter().enumerate() {
                    let lanes = std::array::from_fn(|l| {
                        let (ty, tx) = tiles[l];
                        Lane {
                            at: (TILE * ty * ow + TILE * tx) * 4,
                            rows: if 4 * g + l < n {
                                (oh - TILE * ty).min(TILE)
                            } else {
                                0
                            },
                            cols: (ow - TILE * tx).min(TILE),
                        }
                    });
                    let m = e.add_imm(mk, (g * 4 * 4) as i64);
                    self.output_group(e, m, ok, rk, bias, lanes);
                }
                return Ok(());
            }
            let band = |e: &mut Emit, ty: Value, rows: usize| -> Result<()> {
                let mrow = e.addr(mk, ty, self.tw * 4);
                let orow = e.addr(ok, ty, TILE * ow * 4);
                let rrow = e.addr(rk, ty, TILE * ow * 4);
                let at = |e: &mut Emit, tx0: Value| {
                    let m = e.addr(mrow, tx0, 4);
                    let o = e.addr(orow, tx0, TILE * 4);
                    let r = e.addr(rrow, tx0, TILE * 4);
                    (m, o, r)
                };
                // Groups of 4 tiles inside the output, then the group at the right edge.
                let full = ow / (4 * TILE);
                let lanes = |cols: &dyn Fn(usize) -> usize| {
                    std::array::from_fn(|l| Lane {
                        at: TILE * l * 4,
                        rows,
                        cols: cols(l),
                    })
                };
                e.for_const(0, (4 * full) as i64, 4, |e, tx0| {
                    let (m, o, r) = at(e, tx0);
                    self.output_group(e, m, o, r, bias, lanes(&|_| TILE));
                    Ok(())
                })?;
                if 4 * full < self.tw {
                    let tx0 = e.iconst((4 * full) as i64);
                    let (m, o, r) = at(e, tx0);
                    let cols = |l| ow.saturating_sub(TILE * (4 * full + l)).min(TILE);
                    self.output_group(e, m, o, r, bias, lanes(&cols));
                }
                Ok(())
            };
            e.for_const(0, (oh / TILE) as i64, 1, |e, ty| band(e, ty, TILE))?;
            if oh % TILE != 0 {
                let ty = e.iconst((oh / TILE) as i64);
                band(e, ty, oh % TILE)?;
            }
            Ok(())
        })
    }

    /// `Aᵀ m A` for the 4 tiles whose `M` values start at `mp`, then the epilogue and
    /// the stores of each lane's tile (its inside part) at `op`, `rp`.
    fn output_group(
        &self,
        e: &mut Emit,
        mp: Value,
        op: Value,
        rp: Value,
        bias: Option<(Value, Value)>,
        lanes: [Lane; 4],
    ) {
        let s = self.spec;
        let ep = s.epilogue();
        let plane = self.m_stride() * 4;
        let ow = s.out_w();
        let rows = lanes.iter().map(|l| l.rows).max().unwrap_or(0);
        for (a, at) in AT.iter().enumerate().take(rows) {
            // Row a of Aᵀ m, then of (Aᵀ m) A: y[b] holds output (a, b) of the 4 tiles.
            let t: Vec<Value> = (0..ALPHA)
                .map(|j| {
                    let terms: Vec<(f32, Value)> = (0..ALPHA)
                        .filter(|&i| at[i] != 0.0)
                        .map(|i| (at[i], e.load_rw(F32X4, mp, off((i * ALPHA + j) * plane))))
                        .collect();
                    e.lincomb(&terms)
                })
                .collect();
            let y: Vec<Value> = AT
                .iter()
                .map(|ab| {
                    let terms: Vec<(f32, Value)> = (0..ALPHA)
                        .filter(|&j| ab[j] != 0.0)
                        .map(|j| (ab[j], t[j]))
                        .collect();
                    e.lincomb(&terms)
                })
                .collect();
            // Tile l's row a, 4 consecutive output pixels, as one vector.
            let px = e.transpose4(&y);
            for (l, lane) in lanes.iter().enumerate() {
                if a >= lane.rows {
                    continue;
                }
                let (o, n) = (lane.at + a * ow * 4, lane.cols);
                if n == TILE {
                    let bv = bias.map(|(_, bv)| bv);
                    e.epilogue_store(&ep, px[l], bv, (rp, op), off(o));
                    continue;
                }
                for b in 0..n {
                    let x = e.b.ins().extractlane(px[l], b as u8);
                    let bs = bias.map(|(bs, _)| bs);
                    e.epilogue_store(&ep, x, bs, (rp, op), off(o + 4 * b));
                }
            }
        }
    }
}

/// Where one lane (tile) of an output group goes: the byte offset of its top-left output
/// from the group's base, and how many of its rows and columns lie inside the output.
#[derive(Clone, Copy)]
struct Lane {
    at: usize,
    rows: usize,
    cols: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::test_values as values;
    use crate::jit::ConvMethod;

    /// The output of `s` by Winograd at `isa`, with the transforms compiled without the
    /// optimiser (`quick`) or with it, and the bytes of machine code.
    fn run(s: &ConvSpec, isa: Isa, quick: bool) -> (Vec<f32>, usize) {
        let mut km = KernelModule::new().unwrap();
        km.set_isa(isa).unwrap();
        km.keep_listings();
        km.quick_allowed = quick;
        let p = km.add_conv_with(s, ConvMethod::Winograd).unwrap();
        km.compile_pending(None).unwrap();
        let code_bytes = km.take_listings().iter().map(|l| l.code_bytes).sum();
        let (w, b) = (values(s.weight_len(), 1), values(s.out_c, 2));
        let packed = p.pack_weights(&w, Some(&b)).unwrap();
        let r = values(s.output_len(), 3);
        let k = km.finalize().unwrap().get(p).unwrap();
        let mut out = vec![f32::NAN; s.output_len()];
        k.run_all(&values(s.input_len(), 4), &packed, Some(&r), &mut out)
            .unwrap();
        (out, code_bytes)
    }

    /// Compiling the transforms without Cranelift's optimiser changes no bit of the
    /// result, at any ISA level (Cranelift neither reassociates nor contracts floats).
    #[test]
    fn transforms_compiled_without_the_optimiser_give_the_same_bits() {
        for (c, h, w, k) in [
            (16, 9, 11, 20),
            (20, 14, 14, 18),
            (33, 6, 17, 16),
            (24, 28, 28, 32),
        ] {
            let mut s = ConvSpec::square(c, h, k, 3, 1, 1);
            s.in_w = w;
            (s.bias, s.relu, s.residual) = (true, true, true);
            for isa in Isa::host_levels() {
                let ((quick, bytes), (optimised, bytes_optimised)) =
                    (run(&s, isa, true), run(&s, isa, false));
                assert_ne!(bytes, bytes_optimised, "{s:?} at {isa}: the same code");
                assert!(quick.iter().all(|v| v.is_finite()), "{s:?} at {isa}");
                let same = quick.iter().zip(&optimised);
                assert!(
                    same.into_iter().all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{s:?} at {isa}: the optimised transforms give other bits"
                );
            }
        }
    }
}
