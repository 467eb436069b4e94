//! The pointwise (1x1, stride 1) convolution `out[k][p] = sum_c W[k][c] x[c][p]` as a GEMM
//! vectorised along pixels (the fully connected layer is in [`super::fc`]). At avx2 /
//! avx512 the strided 1x1 convolution (ResNet's projection shortcut) is the same GEMM over
//! its output pixels, on a copy of the input positions `(y * sh, x * sw)` that a prologue
//! makes ([`Subsample`]); at sse it stays on the direct convolution of [`super::conv`],
//! which samples those pixels in place.
//!
//! The convolution's epilogue ([`super::epilogue`]), then one store.
//!
//! At ISA level avx2 / avx512 each tile is a call to an x86 micro-kernel generated for this
//! GEMM ([`super::x86::MicroGemm`]: 6 channels x 16 pixels in ymm, 14 x 32 in zmm, 8 x 48
//! where the streamed order packs its columns, see [`STREAMED_ZMM_TILE`]) instead of
//! the Cranelift f32x4 tile; the loops around it, the work units and the packing (for the
//! tile's channel block) are the same.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{FuncRef, InstBuilder, StackSlotData, StackSlotKind, Type, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64};
use super::conv::{bcast_flags, ConvBufs, PROLOGUE_USES};
use super::epilogue::Epilogue;
use super::implicit::{
    prefetches_out_over, shuffle, weight_prefetch_bytes, STREAMED_WEIGHTS_BYTES,
    WEIGHT_PREFETCH_BYTES,
};
use super::module::{Emit, KernelModule, MicroId, PendingId};
use super::x86::gemm::KPos;
use super::x86::{self, MicroGemm, Width};
use crate::error::Result;
use crate::options::Isa;

/// Output channels per block of the f32x4 pointwise GEMM.
const MR: usize = 6;
/// f32x4 vectors of pixels per tile (8 pixels).
const NV: usize = 2;
const NP: usize = NV * 4;
/// Bytes of input a pixel panel may occupy (kept in L2 while all channel blocks use it).
const PANEL_BYTES: usize = 192 * 1024;
/// The same for the wide micro-kernels without [`PixelGemm::streamed`] (which goes column by
/// column): a panel of 2 tile columns at 256 channels (`examples/microperf.rs`: 2-4 columns
/// ran 1.5-2x faster than L2-sized panels with AVX-512).
const WIDE_PANEL_BYTES: usize = 64 * 1024;
/// Input channels per reduction chunk of the streamed pointwise GEMM (measured at 256 -> 64
/// on 56 x 56: 64 faster than 32 and 128).
const WIDE_KC: usize = 64;
/// The largest tile column the streamed GEMM packs (`in_c x np` floats, see
/// [`PixelGemm::streamed`]); longer columns go a chunk of [`WIDE_KC`] channels at a time.
/// 128 KB (Zen 5, session 12; 64 KB before): SqueezeNet's 384 / 512 -> 48 / 64 at 13x13
/// then pack on the 8 x 48 tile (72-96 KB, from L2) instead of 14 x 32 / 12 x 32 unpacked:
/// `examples/convab.rs` (`CNNC_PACK_KB - 128`, weights from 4 copies, one thread, load
/// 5-6, 28,000-52,000 pairs) 384 -> 64 0.976, 512 -> 64 0.970, 384 -> 48 0.977, ResNet-50's
/// 512 -> 128 at 28x28 0.995; `examples/modelab.rs` SqueezeNet 0.982, ResNet-50 1.005,
/// DenseNet-121 0.995 (one thread; two threads not measurable at that load).
/// `CNNC_PACK_KB=n` sets it (to measure).
const PACK_BYTES: usize = 128 * 1024;

/// The zmm tile of the streamed pointwise GEMM where its tile column packs (at most
/// [`PACK_BYTES`]: `in_c <= 682`): 8 channels x 48 pixels, as the implicit GEMM's, instead
/// of 14 x 32, whose last channel block is short on the usual channel counts (64 = 4 x 14 +
/// 8, 128 = 9 x 14 + 2, 256 = 18 x 14 + 4). Measured with `examples/convab.rs` (weights
/// from 20 copies, avx512, one thread, 800-5800 pairs, 06:33, load 6.6-7.1), 8 x 48 against
/// 14 x 32, median of pairs: 256 -> 64 at 56x56 0.941, 64 -> 256 at 56x56 0.888, 64 -> 64
/// at 56x56 0.928, 256 -> 128 at 56x56 0.979, 128 -> 512 at 28x28 0.958. Not where the
/// column does not pack at 48 pixels (512 -> 128 at 28x28: 1.103) nor in weight-major
/// order (1024 -> 256 and 256 -> 1024 at 14x14: 1.088, 1.064), which keep 14 x 32.
const STREAMED_ZMM_TILE: (usize, usize) = (8, 48);

/// Whether 12-row zmm tiles pad `out_c` to at least 4% fewer rows than 14-row ones (128
/// channels: 11 blocks of 12 = 132 rows against 10 of 14 = 140, the last block 2 rows,
/// too few accumulators to hide the FMA latency). For the streamed pointwise layers whose
/// 48-pixel column does not pack (over 682 input channels: DenseNet's later 1x1 layers;
/// ResNet-50's 512 -> 128 at 28x28 before session 12), and the weight-major ones.
/// `examples/convab.rs` (avx512, weights from 20 copies, one thread, 07:17-07:25, load 3.7-5.2), 12 x 32 /
/// 14 x 32, median of 2700-64000 pairs: 512 -> 128 at 28x28 0.951, 1024 -> 128 at 14x14
/// 0.985 (10 x 32: 0.970 / 1.011; 8 x 32: 1.007 / 1.056); weight major, 512 -> 128 at 7x7
/// 0.971, 1024 -> 128 at 7x7 0.974, 256 -> 128 at 7x7 0.974, 128 -> 128 at 10x10 0.986.
fn fewer_rows_at_12(out_c: usize) -> bool {
    out_c.div_ceil(14) * 14 * 100 >= out_c.div_ceil(12) * 12 * 104
}

/// The fewest pixels per input channel of a weight-major layer whose units go in pixel
/// parts on a pool ([`PixelGemm::in_parts`]): what the parts save is the next layer's
/// reads of the other core's half of this layer's output (`out_c x pixels` floats), what
/// they cost is every thread reading all the weights (`out_c x in_c`), so the ratio is
/// `pixels / in_c`. ResNet-50 at two threads (`examples/modelab.rs`, session 17, mostly the
/// slow phase): parts for 64 -> 256 at 56x56 (49 pixels per channel) 0.979 of the time of
/// no parts; adding 128 -> 512 at 28x28 (6.1) 1.006 of that, adding the 14x14 layers too
/// (0.8, 0.2) no better.
const PARTS_PIXELS_PER_CHANNEL: usize = 16;

/// The largest input of an expanding pointwise layer computed weight major
/// ([`PixelGemm::expands`]): each channel block reads all of it, from L2.
const EXPANSION_INPUT_BYTES: usize = 1 << 20;

/// The fewest pixels of an expansion ([`PixelGemm::expands`]) that takes the 8 x 48 zmm
/// tile ([`STREAMED_ZMM_TILE`]) instead of 14 x 32: ResNet-50's 64 -> 256 at 56x56 (256 =
/// 32 x 8 rows against 18 x 14 + 4; 11 loads per 24 FMAs against 16 per 28; the 48-pixel
/// x column of 64 channels, 12 KB, stays in L1). `examples/convab.rs` with a residual,
/// avx512, weights from 20 copies, 8 x 48 / 14 x 32, median of 77-909 pairs, 11:47-11:51,
/// load 6.6-7.2: one thread warm 0.913, 0.944, 0.966, cold (`CNNC_FLUSH_MB=32`) 0.943,
/// 0.958, 0.920; two threads warm 0.909, 0.938, 0.950, cold 1.017, 0.966, 0.845. Not below:
/// 128 -> 512 at 28x28 0.998 (2 threads 0.978), 256 -> 1024 at 14x14 1.042, 512 -> 2048 at
/// 7x7 1.018.
const WIDE_EXPANSION: usize = 1024;

/// Outputs larger than this are prefetched for writing by the streamed GEMM's blocks that
/// read the packed column ([`PixelGemm::prefetch_out`]): in a network the output lines come
/// from memory or L3. `examples/convab.rs` (avx512, weights from 20 copies, `CNNC_PREFETCH_OUT`
/// 1 against 0, median of the pairs' ratios, bit-identical; 14:25, load 7): cold
/// (`CNNC_FLUSH_MB=32`) / warm / 2 threads: 256 -> 64 at 56x56 0.917, 0.952 / 0.940, 0.955 /
/// 0.940; 256 -> 128 at 56x56 0.952 / 0.911; 64 -> 64 at 56x56 0.777 / 0.932; 512 -> 128 at
/// 28x28 0.972 / 0.985 / 0.972; 512 -> 256 at 28x28 0.970 / 0.999 / 0.974; 1x1/2 256 -> 512
/// from 56 0.969 / 0.949 / 0.840. Smaller outputs gain cold but not warm: 192 -> 64 at 28x28
/// (200 KB) 0.957 / 0.999, 96 -> 16 at 55x55 0.985 / 1.007, 128 -> 32 at 28x28 0.973 / 1.018.
const PREFETCH_OUT_BYTES: usize = 256 * 1024;

/// The byte offset, in a plane of `pixels`, of the last full tile column of `np` pixels:
/// the columns before it prefetch the next one's outputs, it prefetches its own (the
/// partial column after it is narrower: `np` floats from its start would leave the plane).
fn last_full_column(pixels: usize, np: usize) -> usize {
    (pixels / np).saturating_sub(1) * np * 4
}

/// Where a wide tile's kernel reads its input: the planes, the planes while packing them
/// into the scratch (the first block of a tile column), or that packed copy (the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XSrc {
    Planes,
    Pack,
    Packed,
}

/// Channels x pixels of the x86 micro-kernel tile at a width (registers: zmm 28
/// accumulators + 2 inputs of 32; ymm 12 + 2 + a broadcast + a mask of 16).
pub(crate) fn wide_tile(w: Width) -> (usize, usize) {
    match w {
        Width::Z512 => (14, 32),
        _ => (6, 16),
    }
}

/// `out[k][p] = sum_c W[k][c] x[c][p]` over planes of `pixels` floats, then `epilogue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PixelGemmSpec {
    pub in_c: usize,
    pub out_c: usize,
    pub pixels: usize,
    pub epilogue: Epilogue,
}

#[derive(Clone, Debug)]
pub(crate) struct PixelGemm {
    s: PixelGemmSpec,
    nmb: usize,
    /// Pixels per panel (a multiple of `np`).
    panel: usize,
    /// Output channels per block.
    mr: usize,
    /// Pixels per tile.
    np: usize,
    /// Micro-kernel width, or `None` for the Cranelift f32x4 tiles.
    wide: Option<Width>,
    /// Column by column with prefetches ([`Self::streamed`]).
    streamed: bool,
    /// Work units channel-block major ([`Self::streamed`]: the weights outweigh the input).
    weight_major: bool,
    /// Weight major: pixel parts of the units, one per thread of the pool the kernel is
    /// made for ([`Self::in_parts`]; 1: channel block by channel block over all pixels).
    pixel_parts: usize,
    /// Bytes ahead that the first call of each channel block prefetches the weights
    /// (weight major, weights from memory; 0: not at all).
    prefetch_w: usize,
    /// The first block of each full tile column packs it into the scratch ([`Self::streamed`]).
    pack: bool,
    /// The blocks that read the packed column and prefetch no input prefetch the outputs
    /// of their rows in the next column for writing ([`MicroGemm::prefetch_out`]).
    prefetch_out: bool,
    /// Input channels per reduction chunk of a full tile column (`in_c`: one chunk).
    kc: usize,
    /// A strided 1x1 convolution: the GEMM runs over the scratch, where the prologue
    /// ([`Self::emit_subsample`]) copies the sampled input pixels.
    subsample: Option<Subsample>,
    /// The residual is read from the output buffer ([`crate::jit::ConvSpec::residual_in_place`]).
    residual_in_out: bool,
    /// Weight major over a 7x7 plane at zmm (49 pixels: [`LONE_PIXEL_PLANE`]), or 2-4 such
    /// columns ([`lone_columns`]): columns of 48 pixels on the 8 x 48 tile, whose kernel also
    /// computes the 49th pixel with the channels in the lanes ([`MicroGemm::extra_x`]).
    lone: bool,
    /// Weight major at zmm: a last tile column of at most [`x86::gemm::LANES_COLS`] pixels
    /// runs on the kernel with the channels in the lanes ([`MicroGemm::lanes`]; 14x14
    /// planes on 14 x 32 end in 4 pixels; `CNNC_LANES_TAIL=0`: the vector tile).
    lanes_tail: bool,
    /// At avx2, the one pixel after the full tile columns (a plane of `16 n + 1` pixels: 7x7,
    /// 17x17) goes to the kernel with the channels in the lanes, [`x86::gemm::LANE_BLOCKS`]
    /// channel blocks a call ([`Self::lone_in_lanes`]; `CNNC_LANE_BLOCKS=0`: the masked
    /// vector tile, as before).
    lane_groups: bool,
    /// Floats from one channel's plane (input, output, residual) to the next: `s.pixels`,
    /// or more for a GEMM over the first `s.pixels` columns of wider planes
    /// ([`Self::with_plane_stride`]).
    ld: usize,
}

/// The plane of a weight-major layer computed as one 8 x 48 column and a lone pixel
/// ([`PixelGemm::lone`]): ResNet-50's last stage, 1x1 convs at 7x7 with 1-8 MB of weights.
/// On 14 x 32 tiles its 49 pixels took 4 zmm vectors (32 + 17: 64 lanes, 14 x 4 FMAs per
/// step for 14 channels); 48 + 1 takes 3 zmm vectors and one ymm FMA for 8 channels, a
/// fifth fewer FMAs per channel.
const LONE_PIXEL_PLANE: usize = 49;

/// Whether a weight-major plane is computed in columns of 48 + 1 pixels
/// ([`PixelGemm::lone`]): 7x7 planes, and 14x14 ones (4 columns; 2-4 in general) where
/// both channel counts are 512 or more. On 14x14 the 8-row tile reads the input from L2
/// once per 8 output channels where 14 x 32 reads it once per 14, and its columns start
/// off the cache lines: `examples/convab.rs` (Zen 5, avx512, weights from 20 copies, cold
/// `CNNC_FLUSH_MB=64`, one thread, 390-640 pairs, 17:41, load 5), 48 + 1 / 14 x 32: 1024 ->
/// 512 at 14x14 0.962, 1x1/2 512 -> 1024 from 28 0.938, but 1024 -> 256 1.147 and 256 ->
/// 1024 1.123 (as on the Intel host in session 11: 0.95-0.97 against 1.04-1.08); ResNet-50
/// (`examples/modelab.rs`, one thread) 0.995, 0.996, two threads 1.000 (load 5).
fn lone_columns(s: &PixelGemmSpec) -> bool {
    let n = s.pixels / LONE_PIXEL_PLANE;
    s.pixels.is_multiple_of(LONE_PIXEL_PLANE)
        && (n == 1
            || (n <= 4 && s.in_c >= LONE_COLUMNS_CHANNELS && s.out_c >= LONE_COLUMNS_CHANNELS))
}

/// The fewest input and output channels of a plane of several 48 + 1 pixel columns
/// ([`lone_columns`]).
const LONE_COLUMNS_CHANNELS: usize = 512;

/// The input pixels a strided 1x1 convolution reads, `(y * sh, x * sw)` for every output
/// pixel `(y, x)`, copied into dense planes of the output's size: the pointwise GEMM then
/// runs on them as on any input, with whole vectors of output pixels (the implicit GEMM's
/// strips are output rows, 28 of 32 lanes at 28 x 28) and its streamed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Subsample {
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    pub stride: (usize, usize),
}

impl Subsample {
    /// Copies the sampled pixels of channel `c` of `src` into plane `c` of `dst`.
    fn channel(&self, e: &mut Emit, (src, dst): (Value, Value), c: Value) -> Result<()> {
        let ((h, w), (oh, ow), sh) = (self.in_hw, self.out_hw, self.stride.0);
        let src = e.addr(src, c, h * w * 4);
        let dst = e.addr(dst, c, oh * ow * 4);
        e.for_const(0, oh as i64, 1, |e, y| {
            let s = e.addr(src, y, sh * w * 4);
            let d = e.addr(dst, y, ow * 4);
            self.row(e, s, d)
        })
    }

    /// One output row: `d[x] = s[x * sw]`. At stride 2, groups of 4 outputs are the even
    /// lanes of two vectors from the group's first column while those 8 floats are inside
    /// the row; then one group ending at the row's last output, from the column before (odd
    /// lanes: `2 (ow - 4) - 1 .. 2 ow - 2`, inside since `2 ow - 2 <= w - 1`), overlapping
    /// outputs already written with the same values; what is left, one float at a time.
    fn row(&self, e: &mut Emit, s: Value, d: Value) -> Result<()> {
        let ((_, w), (_, ow), sw) = (self.in_hw, self.out_hw, self.stride.1);
        if sw == 1 {
            return e.copy(s, d, ow);
        }
        let even = if sw == 2 && w >= 8 {
            ((w - 8) / 8 + 1).min(ow / 4)
        } else {
            0
        };
        e.for_const(0, even as i64, 1, |e, g| {
            let sp = e.addr(s, g, 32);
            let dp = e.addr(d, g, 16);
            let a = e.load(F32X4, sp, 0);
            let b = e.load(F32X4, sp, 16);
            let v = shuffle(e, a, b, [0, 2, 4, 6]);
            e.store(v, dp, 0);
            Ok(())
        })?;
        let done = even * 4;
        if sw == 2 && done < ow && ow - done <= 4 && ow >= 5 {
            let j = ow - 4;
            let a = e.load(F32X4, s, off((2 * j - 1) * 4));
            let b = e.load(F32X4, s, off((2 * j + 3) * 4));
            let v = shuffle(e, a, b, [1, 3, 5, 7]);
            e.store(v, d, off(j * 4));
            return Ok(());
        }
        for j in done..ow {
            let x = e.load(F32, s, off(j * sw * 4));
            e.store(x, d, off(j * 4));
        }
        Ok(())
    }
}

impl PixelGemm {
    pub(crate) fn new(s: PixelGemmSpec, isa: Isa) -> Self {
        let wide = x86::width(isa);
        let (mr, np, bytes) = match wide {
            Some(w) => {
                let (mr, np) = wide_tile(w);
                (mr, np, WIDE_PANEL_BYTES)
            }
            None => (MR, NP, PANEL_BYTES),
        };
        let g = PixelGemm {
            s,
            nmb: s.out_c.div_ceil(mr),
            panel: (bytes / (4 * s.in_c) / np).max(1) * np,
            mr,
            np,
            wide,
            streamed: false,
            weight_major: false,
            pixel_parts: 1,
            prefetch_w: 0,
            pack: false,
            prefetch_out: false,
            kc: s.in_c,
            subsample: None,
            residual_in_out: false,
            lone: false,
            ld: s.pixels,
            lanes_tail: false,
            lane_groups: !crate::knobs::off("CNNC_LANE_BLOCKS"),
        };
        // What the generator cannot emit (offsets beyond i32, relu + clip on ymm) stays on
        // the f32x4 path.
        if g.wide.is_some() && g.micro_variants().iter().any(|m| m.check().is_err()) {
            return Self::new(s, Isa::Sse);
        }
        g
    }
    /// The pointwise convolution's GEMM at the wide widths, whose input planes are larger
    /// than L2 as often as not (256 x 56 x 56 floats: 3.2 MB): tile column by tile column,
    /// for each chunk of [`WIDE_KC`] input channels every channel block (the chunk's x rows
    /// and the blocks' partial sums stay in L1 for all the blocks; the later chunks start
    /// from the stored sums, [`MicroGemm::accumulate`], and only the last applies the
    /// epilogue), and each kernel of the first blocks prefetches one line of each row of
    /// the same chunk of the next column. The hardware prefetchers do not follow a tile
    /// column (a line or two in each of `in_c` rows a plane apart), so without this every
    /// column's first block waited for its input from L3.
    ///
    /// Where the weights are larger than the input (`out_c > pixels`: ResNet-50's 14 x 14
    /// and 7 x 7 stages, up to 4 MB of weights against 0.1-0.8 MB of input), the work units
    /// go channel block by channel block instead ([`Self::weight_major`]).
    pub(crate) fn streamed(mut self) -> Self {
        if self.wide.is_some() && (self.s.out_c > self.s.pixels || self.expands()) {
            self.weight_major = true;
            let zmm = self.wide == Some(Width::Z512);
            if zmm && lone_columns(&self.s) && !super::implicit::lone_pixel_off() {
                let (mr, np) = STREAMED_ZMM_TILE;
                self.set_tile(mr, np);
                self.lone = np + 1 == LONE_PIXEL_PLANE;
            } else if zmm && self.expands() && self.s.pixels >= WIDE_EXPANSION {
                let (mr, np) = STREAMED_ZMM_TILE;
                self.set_tile(mr, np);
            } else if self.wide == Some(Width::Z512) && fewer_rows_at_12(self.s.out_c) {
                self.set_tile(12, self.np);
            }
            if self.weights_len() * 4 > STREAMED_WEIGHTS_BYTES {
                self.prefetch_w = weight_prefetch_bytes();
            }
            self.lanes_tail = zmm && self.mr <= 16 && !crate::knobs::off("CNNC_LANES_TAIL");
            // (Not over several columns of 48 + 1: the next column's address would be
            // `np + 1` floats on.)
            if self.expands() && self.s.pixels >= self.np && !(self.lone && self.columns() > 1) {
                let out_bytes = self.s.out_c * self.s.pixels * 4;
                self.prefetch_out = prefetches_out_over(out_bytes, PREFETCH_OUT_BYTES);
            }
        } else if let Some(w) = self.wide {
            let (mr, np) = STREAMED_ZMM_TILE;
            let pack_bytes =
                crate::knobs::number("CNNC_PACK_KB").map_or(PACK_BYTES, |k: usize| k * 1024);
            let packs = self.s.in_c * np * 4 <= pack_bytes && self.s.pixels >= np;
            if w == Width::Z512 && packs {
                self.set_tile(mr, np);
            } else if w == Width::Z512 && fewer_rows_at_12(self.s.out_c) {
                self.set_tile(12, self.np);
            }
            self.streamed = true;
            if self.s.pixels >= self.np && self.s.in_c * self.np * 4 <= pack_bytes {
                self.pack = true;
                let out_bytes = self.s.out_c * self.s.pixels * 4;
                self.prefetch_out = prefetches_out_over(out_bytes, PREFETCH_OUT_BYTES);
            } else if self.s.in_c > WIDE_KC + WIDE_KC / 2 {
                self.kc = WIDE_KC;
            }
        }
        self
    }
    /// The wide tile of `mr` channels x `np` pixels instead of the default.
    pub(crate) fn with_tile(mut self, mr: usize, np: usize) -> Self {
        self.set_tile(mr, np);
        self
    }
    /// Channels x pixels of the wide tile (the panel a whole number of tile columns).
    fn set_tile(&mut self, mr: usize, np: usize) {
        self.mr = mr;
        self.np = np;
        self.nmb = self.s.out_c.div_ceil(mr);
        self.panel = (WIDE_PANEL_BYTES / (4 * self.s.in_c) / np).max(1) * np;
    }
    /// A bottleneck's expansion (`out_c >= 4 * in_c`, at least 32 input channels) whose
    /// input stays in L2 ([`EXPANSION_INPUT_BYTES`]): weight major too. Its output, 4x the
    /// input or more (3.2 MB for ResNet-50's 64 -> 256 at 56x56), then goes out channel
    /// block by channel block, a few planes at a time that the hardware prefetchers
    /// follow, where pixel major every tile column wrote a line or three in each of
    /// `out_c` planes (and read as many of the residual). Measured with
    /// `examples/convab.rs` (avx512, weights from 4 copies, 06:52-06:55, load 5-7; median of
    /// 200-1400 pairs; `CNNC_FLUSH_MB=32`: each run starts cold, as in a network), weight
    /// major / pixel major: 64 -> 256 at 56x56 with residual 0.745 cold, 0.948 warm, 0.921
    /// / 0.873 cold / warm on 2 threads; without residual 0.818 cold; 128 -> 512 at 28x28
    /// with residual 0.627 cold, 0.936 warm, 0.922 warm on 2 threads; 32 -> 128 at 56x56
    /// 0.473 cold, 0.888 warm. Not for smaller ratios (64 -> 128 at 56x56: 0.734 cold but
    /// 1.159 warm; 256 -> 64, 192 -> 64, 256 -> 128 at 28x28: 1.03-1.12) nor 16 channels in
    /// (16 -> 64 at 55x55: 0.52 cold, 1.08 warm).
    fn expands(&self) -> bool {
        let s = &self.s;
        s.out_c >= 4 * s.in_c && s.in_c >= 32 && s.in_c * s.pixels * 4 <= EXPANSION_INPUT_BYTES
    }
    /// Weight major on a pool of `threads` threads: the units go pixel part by pixel part,
    /// one part of the tile columns per thread, and channel block by channel block within
    /// a part ([`Self::by_parts`]), so that each thread computes every output channel of
    /// its own pixels, which the next layer's thread reads (a pointwise layer, a residual
    /// add: the pixel-major layers split by pixels too). Channel-block major over all
    /// pixels, the next layer read half its input from lines the other core wrote: 2.3-4.6x
    /// the cost when the host puts the two vCPUs on two dies (docs/jit-history.md, "Thread
    /// notes (session 13)"). Each thread then reads all the weights (from L1/L2 over its
    /// columns). Not where there are fewer tile columns than threads (a 7x7 plane is one
    /// column of 48 + 1 at avx512), and only where the plane has
    /// [`PARTS_PIXELS_PER_CHANNEL`] pixels per input channel or the layer has a quarter of
    /// the channels out or fewer (ResNet-50's 1024 -> 256 at 14x14, 0.2 pixels per channel: at
    /// two threads 0.988-1.003 of the time without, `CNNC_PARTS_CONTRACTING=0`, in the slow
    /// phase, 0.999-1.013 in the fast one; docs/jit-history.md, "session 18, pw2t").
    /// `CNNC_WEIGHT_MAJOR_PARTS=0` / `=1` (to measure): no layer / every layer in parts.
    ///
    /// A layer whose input (a thread's share of it) outgrows L2 goes in more parts,
    /// [`Self::l2_parts_per_thread`] per thread, at any thread count.
    pub(crate) fn in_parts(self, threads: usize) -> Self {
        self.in_parts_for(threads, super::host_cache::l2_bytes())
    }
    /// [`Self::in_parts`] on a host with `l2` bytes of L2 per core.
    fn in_parts_for(mut self, threads: usize, l2: usize) -> Self {
        let threads = threads.max(1);
        let l2_parts = threads * self.l2_parts_per_thread(threads, l2);
        if self.weight_major && l2_parts > threads && self.columns() >= l2_parts {
            self.pixel_parts = l2_parts;
            return self;
        }
        // With the lone pixel in lanes, the last column costs a fraction of a full one: parts
        // by columns are uneven where a few full columns do not split evenly (a 7x7 plane's
        // 3 + 1 in two parts of 2 and 1 + 1 took 1.01 of the time of channel-block halves
        // at two threads, ResNet-50, `examples/modelab.rs`).
        let full = self.s.pixels / self.np;
        let uneven = self.lone_in_lanes() && !full.is_multiple_of(threads) && full < 4 * threads;
        if !self.weight_major || threads < 2 || self.columns() < threads {
            return self;
        }
        let s = &self.s;
        // A bottleneck's reduction (a quarter of the channels out or fewer: ResNet-50's
        // 1024 -> 256 at 14x14) in parts too: each thread reads all the weights, but its
        // output, and so the next layer's reads, stay on its core, and its input, written by
        // an expansion by channel blocks, is read half from the other core either way. Not
        // DenseNet-121's 1024 -> 512 at 14x14 (before an average pool): 1.002-1.008.
        let contracting = 4 * s.out_c <= s.in_c && !crate::knobs::off("CNNC_PARTS_CONTRACTING");
        let chosen = crate::knobs::forced("CNNC_WEIGHT_MAJOR_PARTS")
            .unwrap_or((s.pixels >= PARTS_PIXELS_PER_CHANNEL * s.in_c || contracting) && !uneven);
        if chosen {
            self.pixel_parts = threads;
        }
        self
    }
    /// Pixel parts per thread of a weight-major layer: every channel block reads all the
    /// input of its part, from L2 only where it fits beside the weights and outputs
    /// streaming through. Where a thread's share of the input is over the host's L2 (`l2`,
    /// [`super::host_cache::l2_bytes`]; half of it for an expansion, [`Self::expands`],
    /// whose output stream is 4x its input), parts of a quarter of it, each of which reads
    /// all the weights. On Zen 2 (512 KB), one thread (`examples/convab.rs`, weights from 20
    /// copies, with and without a residual, warm and `CNNC_FLUSH_MB=16`, 400-1300 pairs):
    /// ResNet-50's 64 -> 256 at 56x56 (784 KB of input) in 7 parts took 0.88-0.94 of the
    /// time in one (4 parts 0.86-0.90, 8 parts 0.99 of 4, 2 parts 1.04 of 4), 128 -> 512 at
    /// 28x28 0.94, 1024 -> 256 and 1024 -> 512 at 14x14 0.94; but 2048 -> 512 at 7x7 (400
    /// KB, 4 MB of weights) 1.05 in parts of 128 KB, so a layer that is not an expansion
    /// stays whole up to the full L2. `examples/modelab.rs`, one thread: ResNet-50 0.986
    /// (expansions) then 0.985 (all), DenseNet-121 0.982; two threads 0.995 (the halves fit).
    /// On a 1 MB L2 the 56x56 expansion goes in 4 parts at one thread, as before at two.
    /// A layer with at least as many channels out as in has an output stream at least the
    /// size of its input too, and goes in parts from half the L2 as well: on Zen 3 (512 KB,
    /// session 21, `CNNC_FLUSH_MB=16`, 330-400 pairs) SqueezeNet's 512 -> 1000 at 13x13 (338
    /// KB of input, 660 KB out) in 3 parts took 0.85-0.89 of the time in one, ResNet-50's
    /// 512 -> 1024 from 28 (392 KB sampled) in 4 parts 0.89-0.90; whole networks at one
    /// thread 0.966 (SqueezeNet), 0.994 (ResNet-50), 0.998 (DenseNet-121).
    /// `CNNC_L2_OUTPUT=0` (to measure): only expansions from half the L2.
    fn l2_parts_per_thread(&self, threads: usize, l2: usize) -> usize {
        let out_streams = self.s.out_c >= self.s.in_c && !crate::knobs::off("CNNC_L2_OUTPUT");
        let limit = if self.expands() || out_streams {
            l2 / 2
        } else {
            l2
        };
        let share = self.s.in_c * self.s.pixels * 4 / threads;
        if share <= limit {
            1
        } else {
            share.div_ceil(l2 / 4)
        }
    }
    /// Reads the residual from the output buffer (only where
    /// [`Self::writes_each_output_once`]).
    pub(crate) fn residual_in_out(mut self, on: bool) -> Self {
        self.residual_in_out = on;
        self
    }
    /// Whether every output element is stored once, by the unit that reads its residual,
    /// after reading it: a reduction in one pass (chunked columns store partial sums in the
    /// output first).
    pub(crate) fn writes_each_output_once(&self) -> bool {
        self.chunks() == 1
    }
    /// The GEMM of a strided 1x1 convolution (`s.pixels` its output pixels): over the
    /// sampled copy of its input in the scratch.
    pub(crate) fn subsampled(mut self, sub: Subsample) -> Self {
        self.subsample = Some(sub);
        self
    }
    pub(crate) fn is_subsampled(&self) -> bool {
        self.subsample.is_some()
    }
    /// Whether the units go channel block by channel block ([`Self::streamed`]).
    pub(crate) fn is_weight_major(&self) -> bool {
        self.weight_major
    }
    /// Work units of the prologue: the input channels it samples (none unless subsampled).
    pub(crate) fn prologue_units(&self) -> usize {
        self.subsample.map_or(0, |_| self.s.in_c)
    }
    /// The sampled copy of the input (none unless subsampled).
    pub(crate) fn scratch_len(&self) -> usize {
        self.subsample.map_or(0, |_| self.s.in_c * self.s.pixels)
    }
    /// The prologue of a subsampled GEMM: the sampled pixels of input channels
    /// `begin..end` into the scratch.
    pub(crate) fn emit_subsample(&self, km: &mut KernelModule) -> Result<PendingId> {
        let sub = self
            .subsample
            .ok_or_else(|| crate::Error::Codegen("a GEMM without subsampling".into()))?;
        km.define_using(
            &PROLOGUE_USES.into_array(),
            move |e, b: ConvBufs<Value>, begin, end| {
                e.for_range(begin, end, 1, |e, c| {
                    sub.channel(e, (b.input, b.scratch), c)
                })
            },
        )
    }
    /// The packed tile column (`in_c x np` floats) on the stack, 64-byte aligned: each
    /// call (thread) has its own. The packing kernel writes exactly those floats, the
    /// others read them (`MicroGemm::pack`). `None` without packing.
    fn pack_buffer(&self, e: &mut Emit) -> Result<Option<Value>> {
        if !self.pack {
            return Ok(None);
        }
        let bytes = u32::try_from(self.s.in_c * self.np * 4 + 64)
            .map_err(|_| crate::Error::Codegen("packed column too large".into()))?;
        let slot =
            e.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 0));
        let raw = e.b.ins().stack_addr(I64, slot, 0);
        let raw = e.add_imm(raw, 63);
        Ok(Some(e.b.ins().band_imm_s(raw, -64)))
    }
    /// Channel blocks whose kernels prefetch, block `mb` line `mb` of each row (0 unless
    /// streamed).
    fn pf_blocks(&self) -> usize {
        if self.streamed {
            self.lines_per_row().min(self.nmb)
        } else {
            0
        }
    }
    /// Reduction chunks of a full tile column.
    fn chunks(&self) -> usize {
        self.s.in_c.div_ceil(self.kc)
    }
    /// The parts a full tile column's reduction is computed in.
    fn column_parts(&self) -> &'static [KPos] {
        KPos::of(self.chunks())
    }
    /// Reduction steps of a part.
    fn part_k(&self, part: KPos) -> usize {
        match part {
            KPos::Only => self.s.in_c,
            KPos::First | KPos::Middle => self.kc,
            KPos::Last => self.s.in_c - (self.chunks() - 1) * self.kc,
        }
    }
    /// Cache lines in a full tile's row.
    fn lines_per_row(&self) -> usize {
        (self.np * 4).div_ceil(64)
    }

    /// Whether a full tile's kernel reading `src` prefetches the next column's outputs (with
    /// [`Self::prefetch_out`]): pixel major the blocks reading the packed column, weight
    /// major (an expansion) every full column.
    fn outputs_prefetched(&self, src: XSrc, cols: usize) -> bool {
        cols == self.np && (src == XSrc::Packed || self.weight_major)
    }

    /// Output channels per block (the packing's row count).
    pub(crate) fn mr(&self) -> usize {
        self.mr
    }
    /// What computes a tile, for profiles and plans: `f32x4 6x8` / `avx512 14x32`.
    pub(crate) fn micro_kernel(&self) -> String {
        let isa = self.wide.map_or("f32x4", x86::Width::isa_name);
        let lone = if self.lone { "+1" } else { "" };
        // A last column of a few pixels with the channels in the lanes (the condition of
        // `micro`'s `lanes`, for the call that covers that column whole).
        let tail = self.s.pixels % self.np;
        let lanes = if self.lanes_tail
            && !self.lone
            && (1..=x86::gemm::LANES_COLS).contains(&tail)
            && self.chunks() == 1
        {
            format!(" +{tail} in lanes")
        } else if self.lone_in_lanes() {
            " +1 in lanes".to_string()
        } else {
            String::new()
        };
        format!("{isa} {}x{}{lone}{lanes}", self.mr, self.np)
    }
    /// Floats of the packed weight matrix alone (`[nmb][c][mr]`).
    pub(crate) fn weights_len(&self) -> usize {
        self.nmb * self.s.in_c * self.mr
    }
    pub(crate) fn packed_len(&self) -> usize {
        // The weight prefetches of the last block reach past the weights, into the bias and
        // this padding.
        self.weights_len() + self.nmb * self.mr + self.prefetch_w.div_ceil(4)
    }
    /// Blocks of `MR` output channels.
    pub(crate) fn channel_blocks(&self) -> usize {
        self.nmb
    }
    /// Tile columns (NP pixels, the last one possibly partial) times channel blocks, pixel
    /// major: a contiguous range of units covers a contiguous range of pixels, so threads
    /// read disjoint parts of the input, and ranges split evenly. With `weight_major`,
    /// channel-block major: threads read disjoint parts of the weights; with
    /// [`Self::in_parts`], that in each of `pixel_parts` pixel parts of
    /// [`Self::columns_per_part`] columns (a part with fewer columns has units that compute
    /// nothing).
    pub(crate) fn work_units(&self) -> usize {
        self.pixel_parts * self.columns_per_part() * self.nmb
    }
    /// Tile columns of the largest pixel part ([`Self::by_parts`]; all of them in one part).
    fn columns_per_part(&self) -> usize {
        self.columns().div_ceil(self.pixel_parts)
    }
    /// Tile columns (the last one possibly partial; with [`Self::lone`], columns of 48
    /// pixels and their lone pixel).
    fn columns(&self) -> usize {
        if self.lone {
            self.s.pixels / LONE_PIXEL_PLANE
        } else {
            self.s.pixels.div_ceil(self.np)
        }
    }
    /// `[nmb][c][MR]` then the bias padded to `nmb * MR`, then zeros to `packed_len()`:
    /// every float written once, in order (no zeroed buffer first, see
    /// [`crate::memory::try_with_capacity`]), row `ci` of a block from column `ci` of its
    /// rows of the `[k][c]` matrix `w` (an index computed per weight, with two divisions by
    /// `mr`, took 1.7 ns a weight: a tenth of SqueezeNet's compile).
    pub(crate) fn packed(&self, w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
        let mut out = crate::memory::try_with_capacity(self.packed_len(), "conv packed weights")?;
        self.pack_to(w, bias, &mut out)?;
        Ok(out)
    }

    /// [`Self::packed`] written over `out` (`packed_len()` floats, whatever they hold: a
    /// mapping of 2 MiB or more, packed into directly rather than through a vector).
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        if out.len() != self.packed_len() {
            let msg = format!(
                "{} floats for {} packed weights",
                out.len(),
                self.packed_len()
            );
            return Err(crate::Error::Internal(msg));
        }
        self.pack_to(w, bias, &mut Cursor { out, at: 0 })
    }

    fn pack_to(&self, w: &[f32], bias: Option<&[f32]>, out: &mut impl Sink) -> Result<()> {
        let (c, k, mr) = (self.s.in_c, self.s.out_c, self.mr);
        let n = self.packed_len();
        // What the blocks and the bias take, checked first: nothing is written past `n`.
        if self.nmb * c * mr + k > n {
            let msg = format!("{} pointwise weights packed for {n}", self.nmb * c * mr + k);
            return Err(crate::Error::Internal(msg));
        }
        for blk in 0..self.nmb {
            let k0 = blk * mr;
            let rows = &w[k0 * c..k.min(k0 + mr) * c];
            let pad = mr - rows.len() / c;
            for ci in 0..c {
                out.put(rows.chunks_exact(c).map(|row| row[ci]));
                out.put(std::iter::repeat_n(0.0, pad));
            }
        }
        match bias {
            Some(b) => out.put(b[..k].iter().copied()),
            None => out.put(std::iter::repeat_n(0.0, k)),
        }
        let rest = n - out.written();
        out.put(std::iter::repeat_n(0.0, rest));
        Ok(())
    }
    /// Where weight `(ki, ci)` goes in the packed matrix.
    pub(crate) fn packed_index(&self, ki: usize, ci: usize) -> usize {
        let mr = self.mr;
        ((ki / mr) * self.s.in_c + ci) * mr + ki % mr
    }

    /// The micro-kernels of a wide GEMM, in the order [`Self::add_micros`] installs them:
    /// (full, channel-tail rows) x (full, pixel-tail columns), those that occur.
    fn micro_variants(&self) -> Vec<MicroGemm> {
        let Some(width) = self.wide else {
            return Vec::new();
        };
        let s = self.s;
        let rows = [self.mr, s.out_c % self.mr];
        let full = if s.pixels >= self.np { self.np } else { 0 };
        // With a lone pixel, the full column's kernel computes it; in lanes, its own (after
        // a vector of the column's other pixels, if any).
        let rest = if self.lone {
            0
        } else {
            s.pixels % self.np - usize::from(self.lone_in_lanes())
        };
        let cols = [full, rest];
        let mut v = Vec::new();
        for &r in rows.iter().filter(|&&r| r > 0) {
            for &c in cols.iter().filter(|&&c| c > 0) {
                let parts = if c == self.np {
                    self.column_parts()
                } else {
                    &[KPos::Only]
                };
                // Full columns prefetch, and with `prefetch_w` a lone partial one.
                let pf_col = c == self.np || (self.prefetch_w > 0 && full == 0);
                let pf: &[bool] = if pf_col && (self.pf_blocks() > 0 || self.prefetch_w > 0) {
                    &[false, true]
                } else {
                    &[false]
                };
                let srcs: &[XSrc] = if c == self.np && self.pack {
                    &[XSrc::Pack, XSrc::Packed]
                } else {
                    &[XSrc::Planes]
                };
                for &part in parts {
                    for &prefetch in pf {
                        for &src in srcs {
                            v.push(self.micro(width, (r, c), (part, prefetch), src));
                        }
                    }
                }
            }
        }
        v.extend(self.lane_group_micros(width));
        v
    }

    /// Whether the last pixel goes in lanes ([`Self::lane_groups`]): the one after the full
    /// tile columns, or after the partial column's full vector (13x13 = 10 x 16 + 8 + 1).
    fn lone_in_lanes(&self) -> bool {
        let lanes = Width::Y256.lanes();
        self.lane_groups
            && self.wide == Some(Width::Y256)
            && self.s.pixels > self.np
            && (self.s.pixels % self.np) % lanes == 1
    }

    /// The kernels of [`Self::lone_in_lanes`]: groups of [`x86::gemm::LANE_BLOCKS`] channel
    /// blocks (if there is one besides the last), then the last group, which holds the
    /// channel tail ([`Self::lane_group`]).
    fn lane_group_micros(&self, width: Width) -> Vec<MicroGemm> {
        if !self.lone_in_lanes() {
            return Vec::new();
        }
        let (full, last) = self.lane_groups_shapes();
        let mut v: Vec<MicroGemm> = full
            .map(|f| self.lane_micro(width, f))
            .into_iter()
            .collect();
        let last = self.lane_micro(width, last);
        if !v.contains(&last) {
            v.push(last);
        }
        v
    }

    /// `(blocks, rows of the last block)` of a full group of [`Self::lone_in_lanes`] (none
    /// where the last group is the only one) and of the last group.
    fn lane_groups_shapes(&self) -> (Option<(usize, usize)>, (usize, usize)) {
        let (g, nmb) = (x86::gemm::LANE_BLOCKS, self.nmb);
        let last_rows = self.s.out_c - (nmb - 1) * self.mr;
        let full = (nmb > g).then_some((g, self.mr));
        (full, ((nmb - 1) % g + 1, last_rows))
    }

    /// The lanes kernel of `blocks` channel blocks for the lone pixel, the last block with
    /// `rows` rows: the whole reduction and the epilogue.
    fn lane_micro(&self, width: Width, (blocks, rows): (usize, usize)) -> MicroGemm {
        MicroGemm {
            lanes: true,
            lane_blocks: blocks,
            block_stride: self.s.in_c * self.mr,
            prefetch_out: false,
            ..self.micro(width, (rows, 1), (KPos::Only, false), XSrc::Planes)
        }
    }

    /// The partial last column of block `mb` (`r` pixels at byte offset `pb` in the planes):
    /// the block's tile of `r` pixels, or with [`Self::lone_in_lanes`] of the `r - 1`
    /// before the last (none or a full vector) and the last pixel in lanes: the unit of the
    /// last block of each group of [`x86::gemm::LANE_BLOCKS`] computes the group's (so its
    /// blocks' weights were the last ones read, in L1/L2), the others nothing.
    fn tail_tile(&self, e: &mut Emit, ptr: &Ptrs, mb: Value, pb: Value, r: usize) -> Result<()> {
        if !self.lone_in_lanes() {
            return self.tile(e, ptr, mb, pb, r);
        }
        if r > 1 {
            self.tile(e, ptr, mb, pb, r - 1)?;
        }
        let pb = e.add_imm(pb, (4 * (r - 1)) as i64);
        let (g, last) = (x86::gemm::LANE_BLOCKS as i64, self.nmb as i64 - 1);
        let (full, last_group) = self.lane_groups_shapes();
        let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, mb, last);
        e.when(is_last, |e| {
            let b0 = e.iconst(last / g * g);
            self.lane_group(e, ptr, b0, pb, last_group)
        })?;
        let Some(full) = full else {
            return Ok(());
        };
        let in_group = e.b.ins().urem_imm_s(mb, g);
        let ends = e.b.ins().icmp_imm_s(IntCC::Equal, in_group, g - 1);
        let not_last = e.b.ins().icmp_imm_s(IntCC::NotEqual, mb, last);
        let ends = e.b.ins().band(ends, not_last);
        e.when(ends, |e| {
            let b0 = e.add_imm(mb, 1 - g);
            self.lane_group(e, ptr, b0, pb, full)
        })
    }

    /// The call of the lanes kernel for `(blocks, rows)` on blocks `b0 ..` at pixel byte
    /// offset `pb`.
    fn lane_group(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        b0: Value,
        pb: Value,
        shape: (usize, usize),
    ) -> Result<()> {
        let m = self.lane_micro(self.wide.unwrap_or(Width::Y256), shape);
        let i = (self.micro_variants().iter().position(|v| *v == m))
            .ok_or_else(|| crate::Error::Codegen(format!("no lanes micro-kernel {m:?}")))?;
        let x = e.b.ins().iadd(ptr.inp, pb);
        let [w, out, res, bias] = self.block_ptrs(e, ptr, b0, pb);
        e.b.ins().call(e.micros[i], &[x, w, out, res, bias, x, x]);
        Ok(())
    }

    /// Block `mb`'s packed weights, its output and residual rows at pixel byte offset `pb`,
    /// and its bias (after the packed weights).
    fn block_ptrs(&self, e: &mut Emit, ptr: &Ptrs, mb: Value, pb: Value) -> [Value; 4] {
        let mr = self.mr;
        let w = e.addr(ptr.w, mb, self.s.in_c * mr * 4);
        let out = e.addr(ptr.out, mb, mr * self.ld * 4);
        let out = e.b.ins().iadd(out, pb);
        let res = e.addr(ptr.res, mb, mr * self.ld * 4);
        let res = e.b.ins().iadd(res, pb);
        let bias = e.addr(ptr.w, mb, mr * 4);
        let bias = e.add_imm(bias, (self.weights_len() * 4) as i64);
        [w, out, res, bias]
    }

    /// The micro-kernel of a `rows x cols` tile computing `part` of the reduction, with or
    /// without the prefetch, reading its input from `src`.
    fn micro(
        &self,
        width: Width,
        (rows, cols): (usize, usize),
        (part, prefetch): (KPos, bool),
        src: XSrc,
    ) -> MicroGemm {
        let ep = self.s.epilogue;
        let epilogue = matches!(part, KPos::Only | KPos::Last);
        MicroGemm {
            width,
            rows,
            cols,
            k: self.part_k(part),
            w_stride: self.mr,
            ldx: if src == XSrc::Packed { cols } else { self.ld },
            ldo: self.ld,
            accumulate: matches!(part, KPos::Middle | KPos::Last),
            bias: epilogue && ep.bias,
            bias_per_col: false,
            residual: epilogue && ep.residual,
            relu: epilogue && ep.relu,
            clip: ep
                .clip
                .filter(|_| epilogue)
                .map(|c| (c.min.to_bits(), c.max.to_bits())),
            prefetch_every: usize::from(prefetch && self.streamed),
            prefetch_w: if prefetch { self.prefetch_w } else { 0 },
            pf_ldx: self.ld,
            prefetch_out: self.prefetch_out && !prefetch && self.outputs_prefetched(src, cols),
            // The pixel after the column, at `x + 4 np` in its plane row.
            extra_x: if self.lone && cols == self.np {
                cols * 4
            } else {
                0
            },
            pack: src == XSrc::Pack,
            lanes: self.lanes_tail
                && cols < self.np
                && cols <= x86::gemm::LANES_COLS
                && part == KPos::Only
                && !prefetch
                && src == XSrc::Planes,
            lane_blocks: 1,
            block_stride: 0,
        }
    }

    /// Installs the micro-kernels (none on the f32x4 path) for
    /// [`KernelModule::define_with_micros`].
    pub(crate) fn add_micros(&self, km: &mut KernelModule) -> Result<Vec<MicroId>> {
        self.micro_variants()
            .iter()
            .map(|m| km.add_micro_once(7, "gemm micro-kernel", m, MicroGemm::emit))
            .collect()
    }

    /// Emits the function over the conv buffers (the scratch unused).
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<PendingId> {
        let g = self.clone();
        let micros = self.add_micros(km)?;
        km.define_driver(&micros, move |e, b: ConvBufs<Value>, begin, end| {
            g.body(e, b, begin, end)
        })
    }

    /// The Winograd GEMMs whose weights (`U`) come from memory: the first tile of each
    /// [`Self::block_row`] prefetches the weights' stream [`WEIGHT_PREFETCH_BYTES`] ahead
    /// (the packed weights need that many bytes after them, [`Self::weight_prefetch`]).
    pub(crate) fn prefetching_weights(mut self) -> Self {
        if self.wide.is_some() {
            // `CNNC_WINOGRAD_WPF=n` (to measure): `n` bytes ahead.
            self.prefetch_w =
                crate::knobs::number("CNNC_WINOGRAD_WPF").unwrap_or(WEIGHT_PREFETCH_BYTES);
        }
        self
    }
    /// The same GEMM over the first `s.pixels` columns of planes `ld >= s.pixels` floats
    /// apart (a Winograd group of fewer tile rows than the others, in the others' `V` and
    /// `M`): only [`Self::block_row`] on the wide tiles, which address every input, output
    /// and residual row at `ld`. Refused (an error, for the caller to fall back) on the
    /// f32x4 tiles and with what addresses planes at `s.pixels` or runs another driver:
    /// streaming, packing, a lone pixel, subsampling, weight or output prefetches (`pf_addr`,
    /// the next column's rows), a residual in the output; and where the kernels' offsets at `ld` leave i32.
    pub(crate) fn with_plane_stride(mut self, ld: usize) -> Result<Self> {
        let plain = !(self.streamed
            || self.weight_major
            || self.pack
            || self.lone
            || self.subsample.is_some()
            || self.prefetch_w > 0
            || self.prefetch_out
            || self.residual_in_out);
        if ld < self.s.pixels || self.wide.is_none() || !plain {
            return Err(crate::Error::Internal(format!(
                "a plane stride of {ld} floats for {} pixels ({:?}, plain {plain})",
                self.s.pixels, self.wide
            )));
        }
        self.ld = ld;
        for m in self.micro_variants() {
            m.check()?;
        }
        Ok(self)
    }

    /// Bytes past its weights that a call prefetches (0: none).
    pub(crate) fn weight_prefetch(&self) -> usize {
        self.prefetch_w
    }

    /// Every tile of channel block `mb` along the pixels (the Winograd GEMMs' loop); with
    /// [`Self::prefetching_weights`], the first one prefetches the weights (a partial one
    /// too, where it is the only one: 16 tiles of a 14x14 or 16x16 output).
    pub(crate) fn block_row(&self, e: &mut Emit, ptr: &Ptrs, mb: Value) -> Result<()> {
        let np = self.np;
        let full = self.s.pixels / np;
        let mut first = 0;
        if self.prefetch_w > 0 && full > 0 {
            let (pb, ci) = (e.iconst(0), e.iconst(0));
            let (tile, src) = ((mb, pb, np), (XSrc::Planes, ptr.inp));
            self.wide_tile(e, ptr, tile, (KPos::Only, ci), Some(ptr.inp), src)?;
            first = 1;
        }
        e.for_const(
            (first * np * 4) as i64,
            (full * np * 4) as i64,
            (np * 4) as i64,
            |e, pb| self.tile(e, ptr, mb, pb, np),
        )?;
        if !self.s.pixels.is_multiple_of(np) {
            let pb = e.iconst((full * np * 4) as i64);
            let cols = self.s.pixels % np;
            if self.prefetch_w > 0 && full == 0 {
                // The row's only tile prefetches (`micro_variants` has that variant).
                let (ci, src) = (e.iconst(0), (XSrc::Planes, ptr.inp));
                let tile = (mb, pb, cols);
                return self.wide_tile(e, ptr, tile, (KPos::Only, ci), Some(ptr.inp), src);
            }
            self.tile(e, ptr, mb, pb, cols)?;
        }
        Ok(())
    }

    fn body(&self, e: &mut Emit, b: ConvBufs<Value>, begin: Value, end: Value) -> Result<()> {
        // The drivers below address planes at `s.pixels` ([`Self::with_plane_stride`]).
        debug_assert_eq!(self.ld, self.s.pixels);
        let s = self.s;
        let ptr = Ptrs {
            inp: if self.is_subsampled() {
                b.scratch
            } else {
                b.input
            },
            w: b.packed,
            // In place, each tile reads its residual from its output before storing it.
            res: if self.residual_in_out {
                b.out
            } else {
                b.residual
            },
            out: b.out,
            last_full_col_bytes: None,
        };
        let nmb = self.nmb as i64;
        let np = self.np;
        let nt_full = (s.pixels / np) as i64;
        let r = s.pixels % np;
        let pt = (self.panel / np) as i64;
        // Unit u = t * nmb + mb covers tile column t (NP pixels) of channel block mb.
        // Full tile columns [t_lo, t_hi) hold every unit of the range (and a few outside it
        // at the ends, skipped by the test in the loop).
        let t_lo = e.b.ins().udiv_imm_s(begin, nmb);
        let t_hi = e.add_imm(end, nmb - 1);
        let t_hi = e.b.ins().udiv_imm_s(t_hi, nmb);
        let full = e.iconst(nt_full);
        let t_hi = e.b.ins().smin(t_hi, full);
        let len = e.b.ins().isub(end, begin);
        // Whether unit `u` is in [begin, end): `u - begin < end - begin` unsigned.
        let in_range = |e: &mut Emit, u: Value| {
            let d = e.b.ins().isub(u, begin);
            e.b.ins().icmp(IntCC::UnsignedLessThan, d, len)
        };
        // Panels of `pt` tile columns: every channel block runs over a panel while its input
        // (about PANEL_BYTES) stays in L2. (No full column: no code for one.)
        if nt_full == 0 {
            return self.last_column(e, &ptr, r, nmb, &in_range);
        }
        if self.weight_major && self.pixel_parts > 1 {
            return self.by_parts(e, &ptr, begin, end, &in_range);
        }
        if self.weight_major {
            return self.by_weights(e, &ptr, begin, end, &in_range);
        }
        if self.pf_blocks() > 0 {
            let pk = self.pack_buffer(e)?.unwrap_or(b.input);
            let first = (begin, pk);
            e.for_range(t_lo, t_hi, 1, |e, t| {
                self.column(e, &ptr, (t, nt_full), first, &in_range)
            })?;
            return self.last_column(e, &ptr, r, nmb, &in_range);
        }
        e.for_range(t_lo, t_hi, pt, |e, p0| {
            let pend = e.add_imm(p0, pt);
            let pend = e.b.ins().smin(pend, t_hi);
            e.for_const(0, nmb, 1, |e, mb| {
                e.for_range(p0, pend, 1, |e, t| {
                    let u = e.mul_imm(t, nmb);
                    let u = e.b.ins().iadd(u, mb);
                    let c = in_range(e, u);
                    e.when(c, |e| {
                        let pb = e.mul_imm(t, (np * 4) as i64);
                        self.tile(e, &ptr, mb, pb, np)
                    })
                })
            })
        })?;
        self.last_column(e, &ptr, r, nmb, &in_range)
    }

    /// The weight-major drivers' full tile columns, the pixels of the partial last one (0:
    /// none) and the bytes from one column's start to the next (with a lone pixel, columns
    /// of `np + 1` pixels, all full).
    fn weight_major_columns(&self) -> (usize, usize, usize) {
        let np = self.np;
        let col_bytes = (np + usize::from(self.lone)) * 4;
        match self.lone {
            true => (self.columns(), 0, col_bytes),
            false => (self.s.pixels / np, self.s.pixels % np, col_bytes),
        }
    }

    /// The units `[begin, end)` channel block by channel block, unit `u = mb * cols + t`
    /// covering tile column `t` (of `cols`, the last one possibly partial) of block `mb`:
    /// each block's weights (`in_c x mr` floats) are read once from memory and reused from
    /// L1/L2 for every column, and two threads each read half the weights.
    fn by_weights(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        begin: Value,
        end: Value,
        in_range: &dyn Fn(&mut Emit, Value) -> Value,
    ) -> Result<()> {
        let np = self.np;
        let cols = self.columns() as i64;
        let (full, r, col_bytes) = self.weight_major_columns();
        let mb_lo = e.b.ins().udiv_imm_s(begin, cols);
        let mb_hi = e.add_imm(end, cols - 1);
        let mb_hi = e.b.ins().udiv_imm_s(mb_hi, cols);
        let zero = e.iconst(0);
        e.for_range(mb_lo, mb_hi, 1, |e, mb| {
            let u0 = e.mul_imm(mb, cols);
            // The block's first column in the range reads its weights from memory: with
            // `prefetch_w`, that call prefetches them ahead.
            let first = e.b.ins().isub(begin, u0);
            let first = e.b.ins().smax(first, zero);
            e.for_const(0, full as i64, 1, |e, t| {
                let u = e.b.ins().iadd(u0, t);
                let c = in_range(e, u);
                e.when(c, |e| {
                    self.block_column(e, ptr, mb, (t, first), col_bytes as i64)
                })
            })?;
            if r > 0 {
                let u = e.add_imm(u0, full as i64);
                let c = in_range(e, u);
                e.when(c, |e| {
                    let pb = e.iconst((full * np * 4) as i64);
                    self.tail_tile(e, ptr, mb, pb, r)
                })?;
            }
            Ok(())
        })
    }

    /// The weight-major tile of block `mb` in full column `t` (`col_bytes` apart): with
    /// `prefetch_w`, the block's first column in the range (`first`) reads its weights from
    /// memory and takes the variant that prefetches them ahead.
    fn block_column(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        mb: Value,
        (t, first): (Value, Value),
        col_bytes: i64,
    ) -> Result<()> {
        let pb = e.mul_imm(t, col_bytes);
        if self.prefetch_w == 0 {
            return self.tile(e, ptr, mb, pb, self.np);
        }
        let ci = e.iconst(0);
        let src = (XSrc::Planes, ptr.inp);
        let tile = (mb, pb, self.np);
        let pf = e.b.ins().icmp(IntCC::Equal, t, first);
        e.when(pf, |e| {
            self.wide_tile(e, ptr, tile, (KPos::Only, ci), Some(ptr.inp), src)
        })?;
        e.unless(pf, |e| {
            self.wide_tile(e, ptr, tile, (KPos::Only, ci), None, src)
        })
    }

    /// [`Self::by_weights`] in `parts = pixel_parts` pixel parts ([`Self::in_parts`]): part
    /// `p` holds the tile columns `cols * p / parts .. cols * (p + 1) / parts` (the pool's
    /// own split of a range, so the parts hold as many pixels as the pixel-major layers give
    /// each thread, to a column) and the units `p * span .. (p + 1) * span`,
    /// `span = nmb * cmax` (`cmax` the largest part's columns, [`Self::columns_per_part`]):
    /// unit `p * span + mb * cmax + i` is the part's column `i` of block `mb`, nothing where
    /// `i` is past the part's columns. On a pool of `parts` threads (without
    /// `CNNC_SPLIT_ROTATE`), the pool's part `p` of the units (`units * p / parts`) is then
    /// exactly pixel part `p` (but for the back chunks another thread steals when one is
    /// late). Correct on any split of the units. The partial last column (if any) is the
    /// last part's.
    fn by_parts(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        begin: Value,
        end: Value,
        in_range: &dyn Fn(&mut Emit, Value) -> Value,
    ) -> Result<()> {
        let np = self.np;
        let (cols, parts) = (self.columns() as i64, self.pixel_parts as i64);
        let (nmb, cmax) = (self.nmb as i64, self.columns_per_part() as i64);
        let span = nmb * cmax;
        let (full, r, col_bytes) = self.weight_major_columns();
        let col_bytes = col_bytes as i64;
        let p_lo = e.b.ins().udiv_imm_s(begin, span);
        let p_hi = e.add_imm(end, span - 1);
        let p_hi = e.b.ins().udiv_imm_s(p_hi, span);
        let zero = e.iconst(0);
        let full_v = e.iconst(full as i64);
        e.for_range(p_lo, p_hi, 1, |e, p| {
            // The part's columns `c0 .. c1`, the full ones `c0 .. fend`.
            let c0 = e.mul_imm(p, cols);
            let c0 = e.b.ins().udiv_imm_s(c0, parts);
            let c1 = e.add_imm(p, 1);
            let c1 = e.mul_imm(c1, cols);
            let c1 = e.b.ins().udiv_imm_s(c1, parts);
            let fend = e.b.ins().smin(c1, full_v);
            let base = e.mul_imm(p, span);
            // The part's blocks with units in the range (`p < p_hi`: `end > base`).
            let lo = e.b.ins().isub(begin, base);
            let lo = e.b.ins().smax(lo, zero);
            let mb_lo = e.b.ins().udiv_imm_s(lo, cmax);
            let hi = e.b.ins().isub(end, base);
            let hi = e.add_imm(hi, cmax - 1);
            let hi = e.b.ins().udiv_imm_s(hi, cmax);
            let mb_hi = e.iconst(nmb);
            let mb_hi = e.b.ins().smin(hi, mb_hi);
            // The part's last full column prefetches its own outputs, not the next part's.
            let last = e.add_imm(fend, -1);
            let last = e.mul_imm(last, col_bytes);
            let part_ptr = Ptrs {
                last_full_col_bytes: Some(last),
                ..*ptr
            };
            let ptr = &part_ptr;
            e.for_range(mb_lo, mb_hi, 1, |e, mb| {
                let u0 = e.mul_imm(mb, cmax);
                let u0 = e.b.ins().iadd(base, u0);
                // Unit of column `t` of the part: `ub + t`.
                let ub = e.b.ins().isub(u0, c0);
                // The block's first column in the range reads its weights from memory:
                // with `prefetch_w`, that call prefetches them ahead.
                let first = e.b.ins().isub(begin, ub);
                let first = e.b.ins().smax(first, c0);
                e.for_range(c0, fend, 1, |e, t| {
                    let u = e.b.ins().iadd(ub, t);
                    let c = in_range(e, u);
                    e.when(c, |e| self.block_column(e, ptr, mb, (t, first), col_bytes))
                })?;
                if r > 0 {
                    // Column `full`, the last part's.
                    let u = e.add_imm(ub, full as i64);
                    let mine = e.b.ins().icmp_imm_s(IntCC::Equal, p, parts - 1);
                    let c = in_range(e, u);
                    let c = e.b.ins().band(c, mine);
                    e.when(c, |e| {
                        let pb = e.iconst((full * np * 4) as i64);
                        self.tail_tile(e, ptr, mb, pb, r)
                    })?;
                }
                Ok(())
            })
        })
    }

    /// Full tile column `t` (of `nt_full`) of every channel block in the range, a reduction
    /// chunk at a time (see [`Self::streamed`]); with `pack`, the first block in the range
    /// (`begin` the range's first unit) packs the column into `pk` for the others.
    fn column(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        (t, nt_full): (Value, i64),
        (begin, pk): (Value, Value),
        in_range: &dyn Fn(&mut Emit, Value) -> Value,
    ) -> Result<()> {
        let nmb = self.nmb as i64;
        let pb = e.mul_imm(t, (self.np * 4) as i64);
        let u0 = e.mul_imm(t, nmb);
        let first = e.b.ins().isub(begin, u0);
        let zero = e.iconst(0);
        let first = e.b.ins().smax(first, zero);
        let blocks = |e: &mut Emit, part: KPos, ci: Value| {
            e.for_const(0, nmb, 1, |e, mb| {
                let u = e.b.ins().iadd(u0, mb);
                let c = in_range(e, u);
                e.when(c, |e| {
                    let pf = self.pf_addr(e, ptr, (mb, t, nt_full), ci);
                    let tile = (mb, pb, self.np);
                    if !self.pack {
                        let src = (XSrc::Planes, pk);
                        return self.wide_tile(e, ptr, tile, (part, ci), pf, src);
                    }
                    let packs = e.b.ins().icmp(IntCC::Equal, mb, first);
                    e.when(packs, |e| {
                        self.wide_tile(e, ptr, tile, (part, ci), pf, (XSrc::Pack, pk))
                    })?;
                    e.unless(packs, |e| {
                        self.wide_tile(e, ptr, tile, (part, ci), pf, (XSrc::Packed, pk))
                    })
                })
            })
        };
        for &part in self.column_parts() {
            match part {
                KPos::Middle => {
                    e.for_const(1, self.chunks() as i64 - 1, 1, |e, ci| blocks(e, part, ci))?;
                }
                KPos::Last => {
                    let ci = e.iconst(self.chunks() as i64 - 1);
                    blocks(e, part, ci)?;
                }
                KPos::Only | KPos::First => {
                    let ci = e.iconst(0);
                    blocks(e, part, ci)?;
                }
            }
        }
        Ok(())
    }

    /// The last, partial tile column (`r` pixels, none when 0).
    fn last_column(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        r: usize,
        nmb: i64,
        in_range: &dyn Fn(&mut Emit, Value) -> Value,
    ) -> Result<()> {
        let nt_full = (self.s.pixels / self.np) as i64;
        if r > 0 {
            e.for_const(0, nmb, 1, |e, mb| {
                let u = e.add_imm(mb, nt_full * nmb);
                let c = in_range(e, u);
                e.when(c, |e| {
                    let pb = e.iconst(nt_full * (self.np * 4) as i64);
                    self.tail_tile(e, ptr, mb, pb, r)
                })
            })?;
        }
        Ok(())
    }

    /// One tile: the output channels of block `mb` by `cols` pixels (at most `np`) starting
    /// at byte offset `pb` within a channel plane (planes of `pixels` floats).
    fn tile(&self, e: &mut Emit, ptr: &Ptrs, mb: Value, pb: Value, cols: usize) -> Result<()> {
        if self.wide.is_some() {
            let ci = e.iconst(0);
            let src = (XSrc::Planes, ptr.inp);
            return self.wide_tile(e, ptr, (mb, pb, cols), (KPos::Only, ci), None, src);
        }
        self.f32x4_tile(e, ptr, mb, pb, cols / 4, cols % 4)
    }

    /// The tile of block `mb` at byte offset `pb` in the planes, `cols` wide, as a call to
    /// the micro-kernel for its shape and `part` of the reduction (chunk `ci`): the last
    /// block of a channel count that is not a multiple of `mr` takes the variant with fewer
    /// rows; with `pf` (full tiles of a prefetching GEMM), the first [`Self::pf_blocks`]
    /// blocks take the variant that prefetches from `pf` (weight major: the variant that
    /// prefetches its weights, [`Self::prefetch_w`]). `src`: where the input is read
    /// (and `pk`, the packed column).
    fn wide_tile(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        (mb, pb, cols): (Value, Value, usize),
        (part, ci): (KPos, Value),
        pf: Option<Value>,
        (src, pk): (XSrc, Value),
    ) -> Result<()> {
        let (s, mr) = (self.s, self.mr);
        let x = e.b.ins().iadd(ptr.inp, pb);
        let x = e.addr(x, ci, self.kc * self.ld * 4);
        let (x, pk) = match src {
            XSrc::Planes => (x, x),
            XSrc::Pack => (x, pk),
            XSrc::Packed => (pk, pk),
        };
        let [w, out, res, bias] = self.block_ptrs(e, ptr, mb, pb);
        let w = e.addr(w, ci, self.kc * mr * 4);
        let pf_out = (self.prefetch_out && self.outputs_prefetched(src, cols)).then(|| {
            // The next full column's outputs of these rows; the last full column's own (the
            // partial column after it is narrower).
            let before = match ptr.last_full_col_bytes {
                Some(last) => e.b.ins().icmp(IntCC::UnsignedLessThan, pb, last),
                None => {
                    let last = last_full_column(s.pixels, self.np) as i64;
                    e.b.ins().icmp_imm_s(IntCC::UnsignedLessThan, pb, last)
                }
            };
            let next = e.add_imm(out, (self.np * 4) as i64);
            e.b.ins().select(before, next, out)
        });
        // The input prefetch's rows (`prefetch`), or the outputs to prefetch for writing.
        let pf_arg = |prefetch: bool| match prefetch {
            true => pf.unwrap_or(x),
            false => pf_out.unwrap_or(x),
        };
        let variants = self.micro_variants();
        let width = self.wide.unwrap_or(Width::Y256);
        let pick = |e: &mut Emit, prefetch: bool| {
            let find = |rows: usize| {
                let m = self.micro(width, (rows, cols), (part, prefetch), src);
                let i = variants.iter().position(|v| *v == m);
                i.map(|i| e.micros[i]).ok_or_else(|| {
                    crate::Error::Codegen(format!("no micro-kernel {m:?} in {variants:?}"))
                })
            };
            let full = find(mr)?;
            let tail = s.out_c % mr;
            let short = if tail > 0 { Some(find(tail)?) } else { None };
            let args = [x, w, out, res, bias, pf_arg(prefetch), pk];
            call_for_block(e, mb, self.nmb, (full, short), &args)
        };
        if pf.is_none() {
            return pick(e, false);
        }
        if self.pf_blocks() >= self.nmb || self.weight_major || self.pf_blocks() == 0 {
            return pick(e, true);
        }
        let on =
            e.b.ins()
                .icmp_imm_s(IntCC::UnsignedLessThan, mb, self.pf_blocks() as i64);
        e.when(on, |e| pick(e, true))?;
        e.unless(on, |e| pick(e, false))
    }

    /// What the kernel of block `mb` (below [`Self::pf_blocks`]) in full tile column `t`
    /// (of `nt_full`) computing chunk `ci` prefetches: line `mb` of every row of the same
    /// chunk of the next column (the last column: of itself), inside the input.
    fn pf_addr(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        (mb, t, nt_full): (Value, Value, i64),
        ci: Value,
    ) -> Option<Value> {
        if self.pf_blocks() == 0 {
            return None;
        }
        let next = e.add_imm(t, 1);
        let lim = e.iconst(nt_full - 1);
        let next = e.b.ins().smin(next, lim);
        let a = e.addr(ptr.inp, next, self.np * 4);
        let a = e.addr(a, ci, self.kc * self.s.pixels * 4);
        Some(e.addr(a, mb, 64))
    }

    /// The f32x4 tile: `nv` vectors + `ns` single pixels.
    fn f32x4_tile(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        mb: Value,
        pb: Value,
        nv: usize,
        ns: usize,
    ) -> Result<()> {
        // Planes `s.pixels` apart ([`Self::with_plane_stride`] refuses the f32x4 tiles).
        debug_assert_eq!(self.ld, self.s.pixels);
        let s = self.s;
        let (c, k, np) = (s.in_c, s.out_c, s.pixels);
        let cols: Vec<(Type, usize)> = (0..nv)
            .map(|v| (F32X4, v * 16))
            .chain((0..ns).map(|j| (F32, nv * 16 + j * 4)))
            .collect();
        let ncol = cols.len();
        let acc: Vec<Variable> = (0..MR * ncol)
            .map(|i| {
                let ty = cols[i % ncol].0;
                let v = e.b.declare_var(ty);
                let z = e.fzero(ty);
                e.b.def_var(v, z);
                v
            })
            .collect();
        let wblk = e.addr(ptr.w, mb, c * MR * 4);
        let xbase = e.b.ins().iadd(ptr.inp, pb);
        let wvar = e.b.declare_var(I64);
        e.b.def_var(wvar, wblk);
        let step = |e: &mut Emit, xp: Value, wp: Value, n: usize| {
            for u in 0..n {
                let xs: Vec<Value> = cols
                    .iter()
                    .map(|&(ty, o)| e.load(ty, xp, off(u * np * 4 + o)))
                    .collect();
                for i in 0..MR {
                    for (col, &(ty, _)) in cols.iter().enumerate() {
                        // A fresh broadcast per FMA (see `conv::bcast_flags`).
                        let ws =
                            e.b.ins()
                                .load(F32, bcast_flags(col), wp, off((u * MR + i) * 4));
                        let wx = if ty == F32 {
                            ws
                        } else {
                            e.b.ins().splat(F32X4, ws)
                        };
                        let a = e.b.use_var(acc[i * ncol + col]);
                        let a = e.fmadd(wx, xs[col], a);
                        e.b.def_var(acc[i * ncol + col], a);
                    }
                }
            }
        };
        // One input channel per iteration (see the note on unrolling in `conv`).
        let xend = e.add_imm(xbase, (c * np * 4) as i64);
        e.for_range(xbase, xend, (np * 4) as i64, |e, xp| {
            let wp = e.b.use_var(wvar);
            step(e, xp, wp, 1);
            let wn = e.add_imm(wp, (MR * 4) as i64);
            e.b.def_var(wvar, wn);
            Ok(())
        })?;
        // Epilogue.
        let ep = s.epilogue;
        let bias_base = (self.nmb * c * MR * 4) as i64;
        let ob = e.addr(ptr.out, mb, MR * np * 4);
        let ob = e.b.ins().iadd(ob, pb);
        let rb = e.addr(ptr.res, mb, MR * np * 4);
        let rb = e.b.ins().iadd(rb, pb);
        let bp = if ep.bias {
            let bp = e.addr(ptr.w, mb, MR * 4);
            Some(e.add_imm(bp, bias_base))
        } else {
            None
        };
        let block = e.channel_block(mb, MR, k);
        e.each_channel(&block, 0, |e, i| {
            let bsc = bp.map(|bp| e.load(F32, bp, off(i * 4)));
            let bvec = if nv > 0 {
                bsc.map(|b| e.b.ins().splat(F32X4, b))
            } else {
                None
            };
            for (col, &(ty, o)) in cols.iter().enumerate() {
                let x = e.b.use_var(acc[i * ncol + col]);
                let b = if ty == F32 { bsc } else { bvec };
                e.epilogue_store(&ep, x, b, (rb, ob), off(i * np * 4 + o));
            }
        })
    }
}

/// Calls the micro-kernel for channel block `mb` of `nmb`: `full`, or for the last block
/// `short` (the variant with the fewer rows of a channel count that is not a multiple of
/// the block) when there is one.
pub(crate) fn call_for_block(
    e: &mut Emit,
    mb: Value,
    nmb: usize,
    (full, short): (FuncRef, Option<FuncRef>),
    args: &[Value],
) -> Result<()> {
    let Some(short) = short else {
        e.b.ins().call(full, args);
        return Ok(());
    };
    let is_tail = e.b.ins().icmp_imm_s(IntCC::Equal, mb, nmb as i64 - 1);
    e.when(is_tail, |e| {
        e.b.ins().call(short, args);
        Ok(())
    })?;
    e.unless(is_tail, |e| {
        e.b.ins().call(full, args);
        Ok(())
    })
}

/// Base pointers of one GEMM: the input planes, the packed weights (of this GEMM), the
/// residual (read only with `residual`) and the output planes.
#[derive(Clone, Copy)]
pub(crate) struct Ptrs {
    pub inp: Value,
    pub w: Value,
    pub res: Value,
    pub out: Value,
    /// The byte offset of the last full tile column whose tiles prefetch the next
    /// column's outputs (`prefetch_out`; the last one prefetches its own): a thread's pixel
    /// part's in [`PixelGemm::by_parts`], else (`None`) the plane's.
    pub last_full_col_bytes: Option<Value>,
}

/// Where [`PixelGemm::pack_to`] writes its floats, in order: a vector (extended) or a
/// slice (filled from the front).
trait Sink {
    fn put(&mut self, vals: impl Iterator<Item = f32>);
    /// Floats written so far.
    fn written(&self) -> usize;
}

impl Sink for Vec<f32> {
    fn put(&mut self, vals: impl Iterator<Item = f32>) {
        self.extend(vals);
    }
    fn written(&self) -> usize {
        self.len()
    }
}

/// A slice filled from `at` on (floats past its end are dropped: `pack_to` checks the
/// count first).
struct Cursor<'a> {
    out: &'a mut [f32],
    at: usize,
}

impl Sink for Cursor<'_> {
    fn put(&mut self, vals: impl Iterator<Item = f32>) {
        let rest = self.out.get_mut(self.at..).unwrap_or_default();
        for (d, v) in rest.iter_mut().zip(vals) {
            *d = v;
            self.at += 1;
        }
    }
    fn written(&self) -> usize {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plane stride is taken only where [`PixelGemm::block_row`]'s wide tiles are all
    /// that runs (a Winograd group's GEMM): not on the f32x4 tiles, not below the pixels,
    /// not with weight prefetches, a streamed driver or a residual in the output, whose
    /// addresses keep `s.pixels`.
    #[test]
    fn weight_major_layers_go_in_parts_that_fit_l2() {
        let spec = |in_c, pixels, out_c| PixelGemmSpec {
            in_c,
            out_c,
            pixels,
            epilogue: Epilogue::default(),
        };
        let parts = |s, threads, l2_kb: usize| {
            let g = PixelGemm::new(s, Isa::Avx2).streamed();
            g.in_parts_for(threads, l2_kb << 10).pixel_parts
        };
        // ResNet-50's 64 -> 256 at 56x56, 784 KB of input: in quarters of a 512 KB L2 at one
        // thread (7 parts) and two (4 each), of a 1 MB L2 at one thread only; in thread
        // parts alone (16 pixels per channel) where the L2 holds it.
        let expansion = spec(64, 3136, 256);
        assert_eq!(parts(expansion, 1, 512), 7);
        assert_eq!(parts(expansion, 2, 512), 8);
        assert_eq!(parts(expansion, 1, 1024), 4);
        assert_eq!(parts(expansion, 2, 1024), 2);
        assert_eq!(parts(expansion, 1, 2048), 1);
        // A reduction, weight major (1024 -> 256 at 14x14, 784 KB): in 7 parts over the
        // whole of a 512 KB L2 at one thread; at two, in the thread parts of a reduction.
        let reduction = spec(1024, 196, 256);
        assert_eq!(parts(reduction, 1, 512), 7);
        assert_eq!(parts(reduction, 2, 512), 2);
        assert_eq!(parts(reduction, 1, 1024), 1);
        // Not 2048 -> 512 at 7x7 (392 KB: inside the L2), however many weights; nor in
        // thread parts (a reduction), whose 3 full columns and lone pixel in lanes would
        // split unevenly. 17x17 (18 full columns) does.
        assert_eq!(parts(spec(2048, 49, 512), 1, 512), 1);
        assert_eq!(parts(spec(2048, 49, 512), 2, 512), 1);
        assert_eq!(parts(spec(2048, 289, 512), 2, 8192), 2);
        // As many channels out as in or more: from half the L2 (512 -> 1000 at 13x13, 338
        // KB, in quarters of it), whole on a 1 MB L2 or at two threads.
        assert_eq!(parts(spec(512, 169, 1000), 1, 512), 3);
        assert_eq!(parts(spec(512, 169, 1000), 1, 1024), 1);
        assert_eq!(parts(spec(512, 169, 1000), 2, 512), 1);
        // Nor a pixel-major layer, whatever its input (256 -> 64 at 56x56).
        assert_eq!(parts(spec(256, 3136, 64), 1, 512), 1);
        // No more parts than tile columns (40 -> 160 at 6x6: 3 columns of 16).
        assert_eq!(parts(spec(40, 36, 160), 1, 1), 1);
    }

    #[test]
    fn a_plane_stride_only_on_the_plain_wide_gemm() {
        let s = PixelGemmSpec {
            in_c: 20,
            out_c: 18,
            pixels: 32,
            epilogue: Epilogue::default(),
        };
        assert!(PixelGemm::new(s, Isa::Sse).with_plane_stride(64).is_err());
        for isa in [Isa::Avx2, Isa::Avx512] {
            let g = || PixelGemm::new(s, isa);
            assert!(g().with_plane_stride(64).is_ok(), "{isa}");
            assert!(g().with_plane_stride(32).is_ok(), "{isa}");
            assert!(g().with_plane_stride(31).is_err(), "{isa}");
            let prefetching = g().prefetching_weights();
            assert!(prefetching.with_plane_stride(64).is_err(), "{isa}");
            assert!(g().streamed().with_plane_stride(64).is_err(), "{isa}");
            let in_out = g().residual_in_out(true);
            assert!(in_out.with_plane_stride(64).is_err(), "{isa}");
        }
    }

    #[test]
    fn output_prefetches_stay_in_the_plane() {
        // Full column t of np pixels prefetches the np floats of the next full column of
        // its rows, or of itself where the next one is partial or absent (each row of the
        // plane: every prefetched float at an offset below pixels).
        for (pixels, np) in [
            (3136, 48),
            (784, 32),
            (96, 48),
            (97, 48),
            (48, 48),
            (3136, 32),
        ] {
            let last = last_full_column(pixels, np);
            for t in 0..pixels / np {
                let pb = t * np * 4;
                let at = if pb < last { pb + np * 4 } else { pb };
                assert!(at + np * 4 <= pixels * 4, "{pixels} {np}: column {t}");
                assert!(at == pb || at == pb + np * 4);
            }
        }
    }

    /// `packed` writes every float of `packed_len()`: each weight where `packed_index`
    /// puts it, the bias after the blocks, zeros everywhere else (padding rows of the last
    /// block, the bias's padding, the prefetch padding), at every tile shape.
    #[test]
    fn packed_weights_are_the_indexed_layout_with_zero_padding() {
        for isa in Isa::host_levels() {
            for (in_c, out_c, bias) in [(5, 19, true), (16, 28, false), (33, 1, true)] {
                let s = PixelGemmSpec {
                    in_c,
                    out_c,
                    pixels: 200,
                    epilogue: Epilogue::default(),
                };
                for g in [
                    PixelGemm::new(s, isa),
                    PixelGemm::new(s, isa).prefetching_weights(),
                ] {
                    let w: Vec<f32> = (0..in_c * out_c).map(|i| i as f32 + 1.0).collect();
                    let b: Vec<f32> = (0..out_c).map(|i| -(i as f32) - 1.0).collect();
                    let got = g.packed(&w, bias.then_some(&b[..])).unwrap();
                    // Written over a buffer of NaN, every float.
                    let mut over = vec![f32::NAN; g.packed_len()];
                    g.pack_into(&w, bias.then_some(&b[..]), &mut over).unwrap();
                    assert!(over
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                    assert!(g.pack_into(&w, None, &mut over[1..]).is_err());
                    let mut want = vec![0.0; g.packed_len()];
                    for ki in 0..out_c {
                        for ci in 0..in_c {
                            want[g.packed_index(ki, ci)] = w[ki * in_c + ci];
                        }
                        if bias {
                            want[g.weights_len() + ki] = b[ki];
                        }
                    }
                    assert_eq!(got, want, "{in_c} -> {out_c} at {isa}, {:?}", g.mr);
                }
            }
        }
    }
}
