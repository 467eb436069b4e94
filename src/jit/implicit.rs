//! The direct convolution (any filter, stride and padding) as an *implicit GEMM* on the wide
//! x86 micro-kernels (AVX2 / AVX-512): `out[k][p] = Σ_r W[k][r] col[r][p]` with
//! `r = (c, fy, fx)` running over the taps in the order of the f32x4 direct kernel, and
//! `col` the im2col matrix of the (padded) input, never built whole.
//!
//! The output plane is cut into *strips* of at most the micro-kernel tile's pixels ([`tile`]: 48
//! with zmm, three vectors; 16 with ymm), consecutive in the plane: pieces of one output row, or
//! groups of whole rows when the rows are narrower (a 7x7 plane is one strip of 48 and a lone 49th
//! pixel, [`MicroGemm::extra_x`]). For each strip and each block of input channels, the compute
//! function copies the strip's columns of `col` into a *panel* on its stack (`[r][ldp]`, the
//! block's taps by the strip's pixels, an L1/L2-sized buffer), then calls the micro-kernel for
//! every block of output channels against the weights packed at compile time (`[nmb][r][mr]`). A
//! later channel block continues the sums where the previous one stored them
//! ([`MicroGemm::accumulate`]); only the last applies the epilogue. Every output is one fused
//! multiply-add chain over the taps in order, from zero, then the epilogue: the same operations in
//! the same order as the f32x4 direct kernel, so the results are bit-identical to it (tested).
//!
//! Padding: the panel copies read the input where it is and write the zeros themselves
//! ([`SelfPad`], [`ImplicitGemm::pads_itself`]); where they cannot (strips repeated along a
//! row, strides over 2), the direct kernel's prologue copies the input into a zero-bordered
//! scratch buffer first, so that packing has no bounds tests.
//!
//! Work units: (strip, block of output channels) pairs, strip major (as the pointwise GEMM),
//! so a contiguous range covers contiguous pixels; a thread packs the panels of the strips
//! its range touches. Small planes computed all strips at once number them channel-block
//! major instead (a thread reads only its blocks' weights).
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Value};

use super::cg::{off as cg_off, F32, F32X4, I64};
use super::conv::{call_panel_copy, define_gemm_driver, ConvBufs, ConvSpec};
use super::epilogue::Epilogue;
use super::gemm::{call_for_block, wide_tile};
use super::module::{Emit, KernelModule, PendingId};
use super::x86::copy::{CopyPiece, PanelCopy, SelfPad};
use super::x86::gemm::KPos;
use super::x86::{MicroGemm, Width};
use crate::error::{Error, Result};

/// Bytes of the panel (one block of input channels' taps by one strip): the micro-kernel
/// streams it once per block of output channels, so it should stay in L2. Fewer, longer
/// reduction blocks mean fewer calls, each loading and storing its 8 x 48 accumulators:
/// on the Zen 5 host (session 13, `examples/convab.rs`, both orders of the pair, load
/// 4.6-5) 3x3/2 128 -> 128 from 56 (5 blocks of 26 channels at 48 KB, 2 of 64 here)
/// 0.939 and 1 / 1.021 of the time at 48 KB (two threads 0.918, cold 0.976), 3x3/2 64 ->
/// 128 from 56 0.942, 3x3/2 256 -> 256 from 56 0.993; 128 and 256 KB 0.955 and 0.951.
/// (`CNNC_PANEL_KB=n`, a measuring knob.)
const PANEL_BYTES: usize = 192 * 1024;

/// [`PANEL_BYTES`], or `CNNC_PANEL_KB=n` KB (to measure), at most [`MAX_PANEL_BYTES`]: the
/// panel is on the stack of a pool worker (Rust's default 2 MB), whose size was checked
/// against that worst case.
fn panel_bytes() -> usize {
    crate::knobs::number::<usize>("CNNC_PANEL_KB")
        .map_or(PANEL_BYTES, |k| k.min(MAX_PANEL_BYTES / 1024) * 1024)
}
/// Beyond this a single input channel's taps do not fit a panel: such filters (over 500
/// taps with zmm) stay on the f32x4 direct kernel.
const MAX_PANEL_BYTES: usize = 256 * 1024;
/// Outputs of at most this many strips (7x7 and 14x14 planes with zmm, 7x7 with ymm) are
/// computed all strips at once: each block of weights streams once for all strips, where
/// strip by strip the whole weights would stream once per strip (ResNet-50's last two
/// stages hold 2-9 MB of weights per layer for 49-196 output pixels). Measured with the
/// weights coming from memory (`examples/convperf.rs`, `CNNC_COPIES=20`, avx512, load 8-9):
/// 3x3 512->512 at 7x7 3.56 -> 2.55 ms, 1x1/2 1024->2048 to 7x7 3.06 -> 2.29 ms, 3x3/2
/// 256->256 to 14x14 2.16-2.49 -> 1.84-2.10 ms, 1x1/2 512->1024 to 14x14 1.90-2.19 -> 1.69-1.74 ms.
const MAX_GROUPED_STRIPS: usize = 8;
/// The most bytes of one strip's panel when grouped (as [`PANEL_BYTES`] was before session
/// 13: the grouped layers, ResNet-50's 7x7 and 14x14 outputs, were not measured with more).
const GROUPED_PANEL_BYTES: usize = 48 * 1024;
/// The stack bytes of all panels when grouped (each strip's panel gets its share).
const GROUPED_PANELS_BYTES: usize = 192 * 1024;
/// Weights larger than this come from L3 or memory on every pass over them: the pointwise
/// GEMM's weight-major units and Winograd's GEMMs then prefetch the weights' stream
/// ([`STREAM_PREFETCH_BYTES`], [`WEIGHT_PREFETCH_BYTES`]) ahead (the implicit GEMM from
/// [`PREFETCH_WEIGHTS_BYTES`]).
pub(crate) const STREAMED_WEIGHTS_BYTES: usize = 1 << 20;
/// How far ahead Winograd's GEMMs prefetch their weights (`U`). On the Intel host the
/// implicit GEMM on 3x3 512->512 at 7x7 with the weights from memory (`examples/convab.rs`,
/// 250-570 alternating pairs, load 4-5) took 0.95x the time at 512 bytes, 0.90x 1024,
/// 0.85-0.86x 2048, 0.90x 4096, and 2048 served both. On the Zen 5 host (session 12,
/// `CNNC_WINOGRAD_WPF`, weights from 20 copies, cold `CNNC_FLUSH_MB=64`, 18:09-18:10, load
/// 6.5) F(4x4) on 256 -> 256 at 14x14 (9.4 MB of `U`): 4096 / 2048 0.928, 0.929 (warm
/// 0.904, two threads 0.960), 8192 / 4096 0.921, 8192 / 2048 0.858, 16384 / 8192 1.014; 128
/// -> 128 at 28x28: 4096 / 2048 0.960, 8192 / 4096 0.992. ResNet-50 (`examples/modelab.rs`,
/// one thread) 8192 / 2048 0.979, VGG-19 0.953 (load 6.5-7).
pub(crate) const WEIGHT_PREFETCH_BYTES: usize = 8192;
/// How far ahead the implicit GEMM and the pointwise GEMM's weight-major units prefetch
/// their weights. On the Zen 5 host (session 12) 4096 against 2048 bytes,
/// `examples/convab.rs` (avx512, weights from 20 copies, cold `CNNC_FLUSH_MB=64`, one
/// thread, 350-700 pairs, 17:23-17:33, load 6-7): 1024 -> 256 at 14x14 0.980 (8192: 0.983,
/// 1024: 1.033), 256 -> 1024 at 14x14 0.975, 1024 -> 512 at 14x14 0.969, 2048 -> 512 at
/// 7x7 0.968, 3x3 512 -> 512 at 7x7 0.981, 3x3/2 512 -> 512 from 14 0.981, 3x3/2 256 ->
/// 256 from 28 1.000, 3x3/2 128 -> 128 from 56 0.992; ResNet-50 (`examples/modelab.rs`,
/// one thread) 0.985 and 0.993, 8192 against 4096 1.008.
pub(crate) const STREAM_PREFETCH_BYTES: usize = 4096;

/// [`STREAM_PREFETCH_BYTES`], or `CNNC_WPF=n` bytes (to measure).
pub(crate) fn weight_prefetch_bytes() -> usize {
    crate::knobs::number("CNNC_WPF").unwrap_or(STREAM_PREFETCH_BYTES)
}
/// Weights larger than this are prefetched ahead by the implicit GEMM's micro-kernels
/// ([`STREAM_PREFETCH_BYTES`]). In a network a layer's weights come from memory, and strip
/// by strip the first strip streams all of them. `examples/convab.rs` (avx512, weights from
/// 20 copies, 12:03, load 3-3.9), prefetching / not at this threshold (was 1 MB,
/// [`STREAMED_WEIGHTS_BYTES`]): 3x3/2 128 -> 128 from 56 (590 KB) 0.950, 0.942 (cold 0.989,
/// 2 threads 0.944), 3x3 64 -> 256 at 13x13 (590 KB) 0.931 (2 threads 0.928), 3x3/2 64 ->
/// 128 from 56 (295 KB) 0.956, 48 -> 192 at 13x13 (332 KB) 0.991; with the weights in L2
/// (one copy) 0.984 and 1.006.
const PREFETCH_WEIGHTS_BYTES: usize = 256 * 1024;
/// Outputs larger than this (half of L2) come to a layer from memory in a network: the
/// micro-kernels then prefetch the next strip's outputs for writing (the 7x7/2 stem's 3.2
/// MB: 0.83x the time cold, 0.93x warm; the 3x3/2 128 -> 128 into 28x28, 400 KB: 1.04x,
/// so not below).
const PREFETCH_OUT_BYTES: usize = 1 << 20;

/// The last output offset (in floats, within a plane of `ohw`) where a strip of `cols`
/// columns may start and still lie wholly inside the plane: a strip whose successor starts
/// beyond it prefetches its own outputs instead ([`MicroGemm::prefetch_out`]).
fn next_strip_limit(ohw: usize, cols: usize) -> usize {
    ohw.saturating_sub(cols)
}

/// Whether the micro-kernels of `spec` prefetch the next tile's outputs for writing (see
/// [`PREFETCH_OUT_BYTES`]). `CNNC_PREFETCH_OUT`, a measuring knob (`examples/modelab.rs`,
/// `convab.rs`): 1 always, 0 never.
pub(crate) fn prefetches_out(spec: &ConvSpec) -> bool {
    prefetches_out_over(spec.output_len() * 4, PREFETCH_OUT_BYTES)
}

/// Whether an output of `bytes` is prefetched for writing where the default threshold is
/// `limit` bytes (the knob of [`prefetches_out`] applies).
pub(crate) fn prefetches_out_over(bytes: usize, limit: usize) -> bool {
    match crate::knobs::forced("CNNC_PREFETCH_OUT") {
        Some(forced) => forced,
        None => bytes > limit,
    }
}

/// The micro-kernel's tile, output channels by pixels: with zmm 8 x 48 (24 accumulators;
/// per step 3 x vectors and 8 broadcasts for 24 FMAs), where the pointwise GEMM's 14 x 32
/// left a short last block on the usual channel counts (256 = 18 x 14 + 4, 128 = 9 x 14 +
/// 2). Measured with `examples/convab.rs` (weights from 20 copies, avx512, one thread, both
/// on strips across rows, 06:15, load 5-6), 8 x 48 against 14 x 32, median of pairs: 3x3
/// 256 -> 256 at 14x14 0.957, 64 -> 256 at 13x13 0.962, 48 -> 192 at 13x13 0.967, 3x3/2
/// 128 -> 128 from 56 0.993, 256 -> 256 from 28 0.959, 7x7/2 3 -> 64 0.969, 512 -> 512 at
/// 7x7 0.998; 6 x 64, 9 x 48, 12 x 32 and 16 x 16 were 1.00-1.23x the time of 8 x 48.
pub(crate) fn tile(width: Width) -> (usize, usize) {
    match width {
        Width::Z512 => (8, 48),
        _ => wide_tile(width),
    }
}

/// `repeat` strips of `cols` output pixels side by side (a loop in the generated code), each
/// consecutive in the plane: the first starts at row `row` of its group, column `ox0`, and
/// may run on into the next rows (a strip across rows); the `i`-th starts `i * cols`
/// columns further (`repeat > 1` only within one row).
#[derive(Clone, Copy, Debug)]
struct Strip {
    row: usize,
    ox0: usize,
    cols: usize,
    repeat: usize,
}

/// A strip's pixels within one output row: `len` pixels from `dy` rows and `dx` columns
/// past the strip's first pixel (`dx < 0` on the rows after the first), at column `to` of
/// the strip.
#[derive(Clone, Copy, Debug)]
struct Piece {
    dy: usize,
    dx: isize,
    len: usize,
    to: usize,
}

impl Strip {
    fn cols(&self) -> usize {
        self.cols
    }

    /// The strip's first instance cut at the ends of the rows of a plane `ow` wide.
    fn pieces(&self, ow: usize) -> Vec<Piece> {
        let mut v = Vec::new();
        let (mut to, mut x, mut dy) = (0, self.ox0, 0);
        while to < self.cols {
            let len = (ow - x).min(self.cols - to);
            v.push(Piece {
                dy,
                dx: x as isize - self.ox0 as isize,
                len,
                to,
            });
            to += len;
            x = 0;
            dy += 1;
        }
        v
    }
}

/// `count` groups of `rows` output rows from row `row0`, each cut into the same strips.
#[derive(Clone, Debug)]
struct GroupKind {
    row0: usize,
    count: usize,
    rows: usize,
    strips: Vec<Strip>,
    /// Strips per group (the sum of their `repeat`).
    per_group: usize,
    /// Index of the first strip of the kind's first group (strips are numbered in order).
    first_strip: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct ImplicitGemm {
    spec: ConvSpec,
    width: Width,
    /// Output channels per block and blocks, pixels per strip.
    mr: usize,
    nmb: usize,
    np: usize,
    /// Taps per input channel, and the whole reduction `in_c * f`.
    f: usize,
    r: usize,
    /// Input channels per reduction block, and blocks.
    nc: usize,
    nkb: usize,
    /// The source plane the panel copies read: the padded copy's, or the input's where
    /// the copies pad by themselves (`self_pad`).
    hp: usize,
    wp: usize,
    /// Whether a prologue makes a padded copy of the input.
    padded: bool,
    /// Padding done by the panel copies, reading the input where it is
    /// ([`Self::pads_itself`]): no padded copy.
    self_pad: bool,
    /// Stride-2 copies take filter columns two by two ([`PanelCopy::pairs`]).
    pairs: bool,
    kinds: Vec<GroupKind>,
    strips: usize,
    /// Floats per panel row (the widest strip, rounded up to whole vectors).
    ldp: usize,
    /// Whether all strips are computed at once, one panel each (see [`MAX_GROUPED_STRIPS`]).
    grouped: bool,
    /// Bytes ahead that the micro-kernels prefetch the weights (0: not at all).
    prefetch_w: usize,
    /// Whether the call that first writes a strip's outputs (reduction block `Only` or
    /// `First`) prefetches the next strip's for writing ([`MicroGemm::prefetch_out`]).
    prefetch_out: bool,
    /// Grouped, with a last strip of one pixel after a full one (a 7x7 output at zmm: 48 +
    /// 1 pixels): the full strip's kernel also computes that pixel, with the channels in the
    /// lanes ([`MicroGemm::extra_x`]), wherever a thread's range holds both strips' units.
    lone_pixel: bool,
}

impl ImplicitGemm {
    /// The plan for `spec` at `width`, or `None` if a channel's taps do not fit a panel.
    pub(crate) fn new(spec: ConvSpec, width: Width) -> Option<Self> {
        let (mr, np) = tile(width);
        let f = spec.kernel_h * spec.kernel_w;
        let (oh, ow) = (spec.out_h(), spec.out_w());
        let ldp = np.min((oh * ow).div_ceil(width.lanes()) * width.lanes());
        if f * ldp * 4 > MAX_PANEL_BYTES {
            return None;
        }
        // At zmm a lone last pixel costs next to nothing ([`Self::lone_pixel`]).
        let lone_ok = width == Width::Z512 && mr == 8 && !lone_pixel_off();
        let (kinds, strips) = strips(oh, ow, np, width.lanes(), lone_ok);
        // Grouped, the strips' panels share the stack budget of all panels.
        let channel_bytes = f * ldp * 4;
        let grouped = (2..=MAX_GROUPED_STRIPS).contains(&strips)
            && strips * channel_bytes <= GROUPED_PANELS_BYTES;
        let budget = if grouped {
            (GROUPED_PANELS_BYTES / strips).min(GROUPED_PANEL_BYTES)
        } else {
            panel_bytes()
        };
        let nc = (budget / channel_bytes).clamp(1, spec.in_c);
        let nkb = spec.in_c.div_ceil(nc);
        let nc = spec.in_c.div_ceil(nkb);
        let pad = spec.pad_h > 0 || spec.pad_w > 0;
        let self_pad = pad && Self::pads_itself(&spec, width, &kinds);
        let plan = ImplicitGemm {
            spec,
            width,
            mr,
            nmb: spec.out_c.div_ceil(mr),
            np,
            f,
            r: spec.in_c * f,
            nc,
            nkb,
            hp: if self_pad {
                spec.in_h
            } else {
                spec.in_h + 2 * spec.pad_h
            },
            wp: if self_pad {
                spec.in_w
            } else {
                spec.in_w + 2 * spec.pad_w
            },
            padded: pad && !self_pad,
            self_pad,
            pairs: spec.stride_w == 2 && spec.kernel_w >= 2 && super::x86::copy::pairs(),
            grouped,
            prefetch_w: if spec.weight_len() * 4 > PREFETCH_WEIGHTS_BYTES {
                weight_prefetch_bytes()
            } else {
                0
            },
            prefetch_out: prefetches_out(&spec),
            lone_pixel: false,
            kinds,
            strips,
            ldp,
        };
        let mut plan = plan;
        plan.lone_pixel = plan.has_lone_pixel();
        // What the generator cannot emit (offsets beyond i32) stays on the f32x4 path.
        plan.micro_variants()
            .iter()
            .all(|m| m.check().is_ok())
            .then_some(plan)
    }

    /// Whether the panel copies of a padded layer pad by themselves, reading the input
    /// where it is ([`SelfPad`]), instead of a prologue's padded copy of the whole input
    /// (1.7 MB written and read back for ResNet-50's 3x3/2 from 56x56): where the x86
    /// copy takes every strip (strides 1 and 2) and every strip's columns are known when
    /// the copy is emitted (no strip repeated along a row). `CNNC_SELF_PAD=0`, a measuring
    /// knob: never.
    fn pads_itself(spec: &ConvSpec, width: Width, kinds: &[GroupKind]) -> bool {
        PanelCopy::supports(width, spec.stride_w)
            && kinds
                .iter()
                .flat_map(|k| &k.strips)
                .all(|st| st.repeat == 1)
            && !crate::knobs::off("CNNC_SELF_PAD")
    }

    /// Whether the plan's strips end with one pixel after a full strip that the full strip's
    /// kernel can take ([`Self::lone_pixel`]; `CNNC_LONE_PIXEL=0`, a measuring knob, never).
    fn has_lone_pixel(&self) -> bool {
        let strips = self.each_strip();
        let n = strips.len();
        let ends = n >= 2 && strips[n - 1].0.cols == 1 && strips[n - 2].0.cols == self.np;
        ends && self.grouped && self.width == Width::Z512 && self.mr == 8 && !lone_pixel_off()
    }

    /// What computes a tile, for profiles and plans: `avx512 14x32 implicit`.
    pub(crate) fn micro_kernel(&self) -> String {
        format!("{} {}x{} implicit", self.width.isa_name(), self.mr, self.np)
    }
    pub(crate) fn spec(&self) -> &ConvSpec {
        &self.spec
    }
    pub(crate) fn padded(&self) -> bool {
        self.padded
    }
    /// Chunks per thread on a pool: grouped, every call packs the panels of all strips (the
    /// whole input: a range of units is a range of channel blocks for every strip), so one
    /// chunk per thread; two packed the input four times on two threads (3x3 64->256 at
    /// 13x13: 0.93x the time with one, see `docs/jit-history.md`, "Thread notes (session 7)").
    pub(crate) fn chunks_per_part(&self) -> usize {
        if self.grouped {
            1
        } else {
            crate::jit::threads::CHUNKS_PER_PART
        }
    }
    fn weights_len(&self) -> usize {
        self.nmb * self.r * self.mr
    }
    pub(crate) fn packed_len(&self) -> usize {
        // The weight prefetches of the last calls reach past the weights, into the bias and
        // this padding.
        self.weights_len() + self.nmb * self.mr + self.prefetch_w.div_ceil(4)
    }
    /// The padded copy of the input (none without padding).
    pub(crate) fn scratch_len(&self) -> usize {
        if self.padded {
            self.spec.in_c * self.hp * self.wp
        } else {
            0
        }
    }
    pub(crate) fn work_units(&self) -> usize {
        self.strips * self.nmb
    }

    /// `[nkb][nmb][steps][mr]` (the taps `(c, fy, fx)` of PyTorch's `[k][c][fy][fx]` in
    /// order, cut into reduction blocks of `nc` channels), then the bias padded to
    /// `nmb * mr`, into `out` (`packed_len()` zeros). Reduction block major because the
    /// compute reads the weights in that order (for each reduction block, each channel
    /// block): the whole array is then one sequential stream, which the hardware
    /// prefetchers follow; channel block major, every block was a separate 10-60 KB run.
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (r, mr, f) = (self.r, self.mr, self.f);
        for kb in 0..self.nkb {
            let c0 = kb * self.nc;
            let steps = (self.spec.in_c.min(c0 + self.nc) - c0) * f;
            let base = self.block_offset(kb);
            for k in 0..self.spec.out_c {
                let blk = &mut out[base + (k / mr) * steps * mr..];
                let taps = &w[k * r + c0 * f..k * r + c0 * f + steps];
                for (t, &x) in taps.iter().enumerate() {
                    blk[t * mr + k % mr] = x;
                }
            }
        }
        if let Some(b) = bias {
            let base = self.weights_len();
            out[base..base + self.spec.out_c].copy_from_slice(b);
        }
    }

    /// Where reduction block `kb`'s weights start (floats): every block before it has `nc`
    /// channels.
    fn block_offset(&self, kb: usize) -> usize {
        kb * self.nc * self.f * self.nmb * self.mr
    }

    /// Reduction steps of a call at `pos`.
    fn steps(&self, pos: KPos) -> usize {
        match pos {
            KPos::Only => self.r,
            KPos::First | KPos::Middle => self.nc * self.f,
            KPos::Last => (self.spec.in_c - (self.nkb - 1) * self.nc) * self.f,
        }
    }

    /// The positions that occur.
    fn kpositions(&self) -> Vec<KPos> {
        match self.nkb {
            1 => vec![KPos::Only],
            2 => vec![KPos::First, KPos::Last],
            _ => vec![KPos::First, KPos::Middle, KPos::Last],
        }
    }

    /// The kernel of the strip before a lone pixel that computes that pixel too: its panel
    /// is the next one ([`Self::all_strips`]), at the same rows.
    fn micro_lone(&self, pos: KPos, rows: usize) -> MicroGemm {
        MicroGemm {
            extra_x: self.panel_bytes(),
            ..self.micro(pos, rows, self.np)
        }
    }

    fn micro(&self, pos: KPos, rows: usize, cols: usize) -> MicroGemm {
        let s = self.spec;
        let ep = if matches!(pos, KPos::Only | KPos::Last) {
            s.epilogue()
        } else {
            Epilogue::new(false, false, false, None)
        };
        let ohw = s.out_h() * s.out_w();
        MicroGemm {
            width: self.width,
            rows,
            cols,
            k: self.steps(pos),
            w_stride: self.mr,
            ldx: self.ldp,
            ldo: ohw,
            accumulate: matches!(pos, KPos::Middle | KPos::Last),
            bias: ep.bias,
            bias_per_col: false,
            residual: ep.residual,
            relu: ep.relu,
            clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
            prefetch_every: 0,
            prefetch_w: self.prefetch_w,
            pf_ldx: 0,
            prefetch_out: self.prefetch_out && matches!(pos, KPos::Only | KPos::First),
            extra_x: 0,
            lanes: false,
            lane_blocks: 1,
            block_stride: 0,
            pack: false,
        }
    }

    /// Every micro-kernel the compute function calls (deduplicated, in a fixed order).
    fn micro_variants(&self) -> Vec<MicroGemm> {
        let rows = [self.mr, self.spec.out_c % self.mr];
        let mut v: Vec<MicroGemm> = Vec::new();
        for pos in self.kpositions() {
            for &r in rows.iter().filter(|&&r| r > 0) {
                let lone = self.lone_pixel.then(|| self.micro_lone(pos, r));
                for k in &self.kinds {
                    for st in &k.strips {
                        let m = self.micro(pos, r, st.cols());
                        for m in std::iter::once(m).chain(lone) {
                            if !v.contains(&m) {
                                v.push(m);
                            }
                        }
                    }
                }
            }
        }
        v
    }

    /// Emits the compute function (over the input, padding by itself where
    /// [`Self::pads_itself`], else over the scratch copy that the prologue made).
    pub(crate) fn emit_compute(&self, km: &mut KernelModule) -> Result<PendingId> {
        let plan = self.clone();
        let what = "implicit-gemm micro-kernel";
        define_gemm_driver(
            km,
            what,
            (self.micro_variants(), &self.copy_variants()),
            move |e, b, begin, end, v| plan.body(e, b, begin, end, v),
        )
    }

    /// The x86 copy that packs a panel of strips shaped like `st` (`None`: stride over 2,
    /// copied by [`Self::copy_strided`]).
    fn panel_copy(&self, st: &Strip) -> Option<PanelCopy> {
        let s = self.spec;
        let (sh, sw, wp) = (s.stride_h, s.stride_w, self.wp);
        let pieces = (st.pieces(s.out_w()).into_iter())
            .map(|p| CopyPiece {
                from: ((p.dy * sh * wp) as isize + p.dx * sw as isize) * 4,
                to: p.to * 4,
                len: p.len,
            })
            .collect();
        // Padding by the copy: piece `p` starts at column `st.ox0 + p.dx` of its output
        // row, `dy` rows below the strip's first (the strip's columns are fixed: not
        // repeated along a row, `pads_itself`).
        let pad = self.self_pad.then(|| SelfPad {
            rows: s.in_h,
            cols: s.in_w,
            at: (st.pieces(s.out_w()).into_iter())
                .map(|p| {
                    let ox = st.ox0 as isize + p.dx;
                    (p.dy * sh, ox * sw as isize - s.pad_w as isize)
                })
                .collect(),
        });
        let copy = PanelCopy {
            width: self.width,
            stride: sw,
            kh: s.kernel_h,
            kw: s.kernel_w,
            src_row: wp * 4,
            src_plane: self.hp * wp * 4,
            dst_row: self.ldp * 4,
            pieces,
            pad,
            pairs: self.pairs,
        };
        copy.takes().then_some(copy)
    }

    /// Every panel copy the compute function calls, once each, in a fixed order.
    fn copy_variants(&self) -> Vec<PanelCopy> {
        let mut v: Vec<PanelCopy> = Vec::new();
        for st in self.kinds.iter().flat_map(|k| &k.strips) {
            if let Some(c) = self.panel_copy(st).filter(|c| !v.contains(c)) {
                v.push(c);
            }
        }
        v
    }

    fn body(
        &self,
        e: &mut Emit,
        b: ConvBufs<Value>,
        begin: Value,
        end: Value,
        variants: &[MicroGemm],
    ) -> Result<()> {
        // The panel: `nc * f` rows of `ldp` floats, 64-byte aligned on the stack. Packing
        // writes rows `< (channels of the block) * f` and columns `< ldp`, the micro-kernels
        // read `k` rows of `cols <= ldp` from it: all inside.
        // Grouped: one panel per strip, side by side.
        let panels = if self.grouped { self.strips } else { 1 };
        let bytes = panels * self.panel_bytes();
        let slot = e.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            u32::try_from(bytes + 64)
                .map_err(|_| Error::Codegen("implicit-gemm panel too large".into()))?,
            0,
        ));
        let raw = e.b.ins().stack_addr(I64, slot, 0);
        let raw = e.add_imm(raw, 63);
        let panel = e.b.ins().band_imm_s(raw, -64);
        let ctx = Ctx {
            src: match (self.padded, self.self_pad) {
                (true, _) => b.scratch,
                // Where the padded copy's (0, 0) would be: a position (pad_h, pad_w)
                // before the input's first float. Only an address: the copies read
                // nothing outside the input.
                (false, true) => {
                    let s = self.spec;
                    let back = (s.pad_h * self.wp + s.pad_w) * 4;
                    e.add_imm(b.input, -(back as i64))
                }
                (false, false) => b.input,
            },
            b,
            panel,
            begin,
            end,
        };
        if self.grouped {
            return self.all_strips(e, &ctx, variants);
        }
        for kind in &self.kinds {
            self.group_kind(e, &ctx, kind, variants)?;
        }
        Ok(())
    }

    /// Bytes of one strip's panel.
    fn panel_bytes(&self) -> usize {
        self.nc * self.f * self.ldp * 4
    }

    /// Every strip of the plane, in unit order: its shape and first output row and column.
    fn each_strip(&self) -> Vec<(Strip, usize, usize)> {
        let mut v = Vec::new();
        for kind in &self.kinds {
            for g in 0..kind.count {
                for run in &kind.strips {
                    for i in 0..run.repeat {
                        let oy0 = kind.row0 + g * kind.rows + run.row;
                        v.push((*run, oy0, run.ox0 + i * run.cols));
                    }
                }
            }
        }
        v
    }

    /// The grouped compute: for each block of input channels, the panels of the strips with
    /// units in the range, then for each block of output channels the micro-kernel of each
    /// strip. Every output gets the same calls, in the same order of reduction blocks, as
    /// strip by strip. The work units are numbered channel-block major, so that threads
    /// splitting the layer each read their share of the weights (not all of them).
    fn all_strips(&self, e: &mut Emit, c: &Ctx, variants: &[MicroGemm]) -> Result<()> {
        let s = self.spec;
        let nmb = self.nmb as i64;
        let zero = e.iconst(0);
        let nmbv = e.iconst(nmb);
        let placed: Vec<Placed> = self
            .each_strip()
            .into_iter()
            .enumerate()
            .map(|(i, (strip, oy0, ox0))| {
                // Units are channel-block major: the strip's are mb * strips + i, so its
                // blocks in the range are ceil((begin - i) / strips) ..
                // ceil((end - i) / strips), clamped to 0..nmb.
                let n = self.strips as i64;
                let first_block = |e: &mut Emit, unit: Value| {
                    let v = e.add_imm(unit, n - 1 - i as i64);
                    let v = e.b.ins().smax(v, zero);
                    e.b.ins().udiv_imm_s(v, n)
                };
                let mlo = first_block(e, c.begin);
                let mhi = first_block(e, c.end);
                let mhi = e.b.ins().smin(mhi, nmbv);
                let src = (oy0 * s.stride_h * self.wp + ox0 * s.stride_w) * 4;
                Placed {
                    strip,
                    src: e.add_imm(c.src, src as i64),
                    row: e.iconst((oy0 * s.stride_h) as i64 - s.pad_h as i64),
                    out: e.iconst(((oy0 * s.out_w() + ox0) * 4) as i64),
                    mlo,
                    mhi,
                    lone: false,
                }
            })
            .collect();
        let panel = |e: &mut Emit, i: usize| Ctx {
            panel: e.add_imm(c.panel, (i * self.panel_bytes()) as i64),
            ..*c
        };
        // The range's first block of output channels: the least of the strips' `mlo`
        // (units are channel-block major), at most the last block.
        let mb0 = e.b.ins().udiv_imm_s(c.begin, self.strips as i64);
        let last_mb = e.iconst(nmb - 1);
        let mb0 = e.b.ins().smin(mb0, last_mb);
        let warm = self.prefetch_w > 0 && !crate::knobs::off("CNNC_IMPLICIT_WARM");
        e.for_const(0, self.nkb as i64, 1, |e, kb| {
            if warm {
                self.warm_first_weights(e, c, kb, mb0);
            }
            for (i, at) in placed.iter().enumerate() {
                let any = e.b.ins().icmp(IntCC::SignedLessThan, at.mlo, at.mhi);
                let c = panel(e, i);
                e.when(any, |e| self.pack(e, &c, at, kb))?;
            }
            self.for_positions(e, kb, |e, pos| {
                e.for_range(zero, nmbv, 1, |e, mb| {
                    let inside = |e: &mut Emit, at: &Placed| {
                        let lo = e.b.ins().icmp(IntCC::SignedLessThanOrEqual, at.mlo, mb);
                        let hi = e.b.ins().icmp(IntCC::SignedLessThan, mb, at.mhi);
                        e.b.ins().band(lo, hi)
                    };
                    let n = placed.len();
                    // With a lone pixel, the strip before it computes it where the range
                    // holds both units, each alone otherwise (`icmp` gives 0 or 1: `xor 1` negates).
                    let both = match self.lone_pixel {
                        true => {
                            let (a, b) = (inside(e, &placed[n - 2]), inside(e, &placed[n - 1]));
                            Some(e.b.ins().band(a, b))
                        }
                        false => None,
                    };
                    for (i, at) in placed.iter().enumerate() {
                        let mut when = inside(e, at);
                        let c = panel(e, i);
                        if let Some(both) = both.filter(|_| i + 2 >= n) {
                            let apart = e.b.ins().bxor_imm_u(both, 1);
                            when = e.b.ins().band(when, apart);
                            if i + 2 == n {
                                let lone = Placed { lone: true, ..*at };
                                e.when(both, |e| self.call(e, &c, &lone, kb, pos, variants, mb))?;
                            }
                        }
                        e.when(when, |e| self.call(e, &c, at, kb, pos, variants, mb))?;
                    }
                    Ok(())
                })
            })
        })
    }

    /// Touches (loads, results unused) the first [`Self::prefetch_w`] bytes of the weights
    /// of block `mb0` in reduction block `kb`, before the panels of `kb` are packed. The
    /// micro-kernels prefetch the weights' stream `prefetch_w` ahead, so a call's first
    /// lines were asked for by the call before it in the stream; but split channel-block
    /// major on two threads, the thread with the upper blocks starts each reduction block in
    /// the middle of its stream, after the other thread's blocks: nothing asked for its
    /// first lines, and the other thread's last call of the block before asked for the
    /// lower thread's instead. Those misses came one after another at the start of each
    /// of the 19 reduction blocks of 3x3 512 -> 512 at 7x7 (`docs/jit-history.md`, session
    /// 18). Touched here, they arrive while the panels are packed. Loads that may trap (the
    /// default flags), so that Cranelift keeps them; `CNNC_IMPLICIT_WARM=0`, a measuring
    /// knob: not at all.
    ///
    /// In bounds: block `(kb, mb0)` starts inside the weights (`mb0 < nmb`), and the packed
    /// buffer holds `prefetch_w` bytes of padding after the weights and the bias
    /// ([`Self::packed_len`]), so every line read lies inside it.
    fn warm_first_weights(&self, e: &mut Emit, c: &Ctx, kb: Value, mb0: Value) {
        let last =
            e.b.ins()
                .icmp_imm_s(IntCC::Equal, kb, (self.nkb - 1) as i64);
        let (full, short) = (self.steps(KPos::First), self.steps(KPos::Last));
        let full = e.iconst((full * self.mr * 4) as i64);
        let short = e.iconst((short * self.mr * 4) as i64);
        let per_block = e.b.ins().select(last, short, full);
        let wk = e.addr(c.b.packed, kb, self.block_offset(1) * 4);
        let at = e.b.ins().imul(mb0, per_block);
        let w = e.b.ins().iadd(wk, at);
        let may_trap = cranelift_codegen::ir::MemFlagsData::new();
        for line in 0..self.prefetch_w / 64 {
            e.b.ins().load(I64, may_trap, w, cg_off(line * 64));
        }
    }

    /// The groups of `kind` whose units meet `begin..end`.
    fn group_kind(
        &self,
        e: &mut Emit,
        c: &Ctx,
        kind: &GroupKind,
        variants: &[MicroGemm],
    ) -> Result<()> {
        let s = self.spec;
        let nmb = self.nmb as i64;
        let per_group = (kind.per_group * self.nmb) as i64;
        let base = kind.first_strip as i64 * nmb;
        // Groups [lo, hi) hold every unit of the range that is of this kind.
        let zero = e.iconst(0);
        let lo = e.add_imm(c.begin, -base);
        let lo = e.b.ins().smax(lo, zero);
        let lo = e.b.ins().udiv_imm_s(lo, per_group);
        let hi = e.add_imm(c.end, per_group - 1 - base);
        let hi = e.b.ins().smax(hi, zero);
        let hi = e.b.ins().udiv_imm_s(hi, per_group);
        let count = e.iconst(kind.count as i64);
        let hi = e.b.ins().smin(hi, count);
        let ow = s.out_w();
        e.for_range(lo, hi, 1, |e, gi| {
            let oy0 = e.mul_imm(gi, kind.rows as i64);
            let oy0 = e.add_imm(oy0, kind.row0 as i64);
            let mut first = 0;
            for run in &kind.strips {
                e.for_const(0, run.repeat as i64, 1, |e, i| {
                    // Units u0 .. u0 + nmb are this strip's channel blocks.
                    let u0 = e.mul_imm(gi, per_group);
                    let u0 = e.add_imm(u0, base + first as i64 * nmb);
                    let ui = e.mul_imm(i, nmb);
                    let u0 = e.b.ins().iadd(u0, ui);
                    let mlo = e.b.ins().isub(c.begin, u0);
                    let mlo = e.b.ins().smax(mlo, zero);
                    let mhi = e.b.ins().isub(c.end, u0);
                    let nmbv = e.iconst(nmb);
                    let mhi = e.b.ins().smin(mhi, nmbv);
                    let any = e.b.ins().icmp(IntCC::SignedLessThan, mlo, mhi);
                    e.when(any, |e| {
                        // The strip's first pixel: column ox0 = run.ox0 + i * cols of
                        // row oy0 + run.row.
                        let ox0 = e.mul_imm(i, run.cols as i64);
                        let ox0 = e.add_imm(ox0, run.ox0 as i64);
                        let oy0 = e.add_imm(oy0, run.row as i64);
                        let row = e.addr(c.src, oy0, s.stride_h * self.wp * 4);
                        let o = e.mul_imm(oy0, ow as i64);
                        let o = e.b.ins().iadd(o, ox0);
                        let first_row = e.mul_imm(oy0, s.stride_h as i64);
                        let at = Placed {
                            strip: *run,
                            src: e.addr(row, ox0, s.stride_w * 4),
                            row: e.add_imm(first_row, -(s.pad_h as i64)),
                            out: e.mul_imm(o, 4),
                            mlo,
                            mhi,
                            lone: false,
                        };
                        self.strip(e, c, &at, variants)
                    })
                })?;
                first += run.repeat;
            }
            Ok(())
        })
    }

    /// One strip: for each block of input channels, pack the panel, then the micro-kernel
    /// for each block of output channels in `mlo..mhi`.
    fn strip(&self, e: &mut Emit, c: &Ctx, at: &Placed, variants: &[MicroGemm]) -> Result<()> {
        e.for_const(0, self.nkb as i64, 1, |e, kb| {
            self.pack(e, c, at, kb)?;
            self.for_positions(e, kb, |e, pos| {
                e.for_range(at.mlo, at.mhi, 1, |e, mb| {
                    self.call(e, c, at, kb, pos, variants, mb)
                })
            })
        })
    }

    /// Emits `body` once for each position a reduction block can have, each behind the test
    /// that block `kb` has that position.
    fn for_positions(
        &self,
        e: &mut Emit,
        kb: Value,
        mut body: impl FnMut(&mut Emit, KPos) -> Result<()>,
    ) -> Result<()> {
        for pos in self.kpositions() {
            let last = (self.nkb - 1) as i64;
            let cond = match pos {
                KPos::Only => None,
                KPos::First => Some(e.b.ins().icmp_imm_s(IntCC::Equal, kb, 0)),
                KPos::Last => Some(e.b.ins().icmp_imm_s(IntCC::Equal, kb, last)),
                KPos::Middle => {
                    let a = e.b.ins().icmp_imm_s(IntCC::NotEqual, kb, 0);
                    let b = e.b.ins().icmp_imm_s(IntCC::NotEqual, kb, last);
                    Some(e.b.ins().band(a, b))
                }
            };
            match cond {
                None => body(e, pos)?,
                Some(cond) => e.when(cond, |e| body(e, pos))?,
            }
        }
        Ok(())
    }

    /// The micro-kernel call of reduction block `kb` (at `pos`) of a strip for the block of
    /// output channels `mb`.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        e: &mut Emit,
        c: &Ctx,
        at: &Placed,
        kb: Value,
        pos: KPos,
        variants: &[MicroGemm],
        mb: Value,
    ) -> Result<()> {
        let s = self.spec;
        let ohw = s.out_h() * s.out_w();
        let mr = self.mr;
        let cols = at.strip.cols();
        let find = |e: &Emit, rows: usize| {
            let m = match at.lone {
                true => self.micro_lone(pos, rows),
                false => self.micro(pos, rows, cols),
            };
            variants
                .iter()
                .position(|v| *v == m)
                .map(|i| e.micros[i])
                .ok_or_else(|| Error::Codegen(format!("no micro-kernel {m:?}")))
        };
        let full = find(e, mr)?;
        let tail = s.out_c % mr;
        let short = if tail > 0 { Some(find(e, tail)?) } else { None };
        // The block's weights: channel block `mb`'s `[steps][mr]` in reduction block `kb`.
        let wk = e.addr(c.b.packed, kb, self.block_offset(1) * 4);
        let bias0 = e.add_imm(c.b.packed, (self.weights_len() * 4) as i64);
        let out0 = e.b.ins().iadd(c.b.out, at.out);
        let res0 = e.b.ins().iadd(c.b.residual, at.out);
        let w = e.addr(wk, mb, self.steps(pos) * mr * 4);
        let out = e.addr(out0, mb, mr * ohw * 4);
        let res = e.addr(res0, mb, mr * ohw * 4);
        let bias = e.addr(bias0, mb, mr * 4);
        if !self.prefetch_out {
            return call_for_block(
                e,
                mb,
                self.nmb,
                (full, short),
                &[c.panel, w, out, res, bias],
            );
        }
        // The next strip's outputs start where this strip's end (strips are consecutive in
        // the plane). The micro-kernel prefetches `cols` floats from there in each of its
        // rows, so only a next strip of `cols` floats wholly inside the plane is asked for
        // (a narrower last strip would reach into the next plane, or past the buffer for
        // the last channel); otherwise the strip prefetches its own.
        let next = e.add_imm(at.out, (cols * 4) as i64);
        let last_start = (next_strip_limit(ohw, cols) * 4) as i64;
        let inside =
            e.b.ins()
                .icmp_imm_s(IntCC::UnsignedLessThanOrEqual, next, last_start);
        let out_next = e.add_imm(out, (cols * 4) as i64);
        let pf = e.b.ins().select(inside, out_next, out);
        call_for_block(
            e,
            mb,
            self.nmb,
            (full, short),
            &[c.panel, w, out, res, bias, pf],
        )
    }

    /// Copies the strip's columns of the im2col matrix for the input channels of block `kb`
    /// into the panel: row `(c - c0) * f + fy * kw + fx`, column `d * width + j` holds
    /// `src[c][(oy0 + d) * sh + fy][(ox0 + j) * sw + fx]`. With the prologue's padded copy
    /// those source positions are inside it (`(oh - 1) * sh + kh <= hp` and `(ow - 1) * sw
    /// + kw <= wp`); padding by itself, the copy reads only the positions inside the input
    /// (`hp`, `wp` its own) and writes zeros for the others ([`SelfPad`]).
    fn pack(&self, e: &mut Emit, c: &Ctx, at: &Placed, kb: Value) -> Result<()> {
        let s = self.spec;
        let (kh, kw, wp) = (s.kernel_h, s.kernel_w, self.wp);
        let c0 = e.mul_imm(kb, self.nc as i64);
        let c1 = e.add_imm(c0, self.nc as i64);
        let cin = e.iconst(s.in_c as i64);
        let c1 = e.b.ins().smin(c1, cin);
        let plane = self.hp * wp * 4;
        let row_bytes = self.f * self.ldp * 4;
        let src0 = e.addr(at.src, c0, plane);
        if let Some(copy) = self.panel_copy(&at.strip) {
            let n = e.b.ins().isub(c1, c0);
            let args = [src0, c.panel, n, at.row];
            let args = if copy.pad.is_some() {
                &args[..]
            } else {
                &args[..3]
            };
            call_panel_copy(e, &self.copy_variants(), &copy, args);
            return Ok(());
        }
        if self.self_pad {
            // `pads_itself` took only strips the x86 copy takes.
            return Err(Error::Codegen(format!(
                "no self-padding copy for {:?}",
                at.strip
            )));
        }
        let src_end = e.addr(at.src, c1, plane);
        let ldp = self.ldp;
        // The channel's source plane and panel rows advance together.
        let pvar = e.b.declare_var(I64);
        e.b.def_var(pvar, c.panel);
        e.for_range(src0, src_end, plane as i64, |e, sc| {
            let pc = e.b.use_var(pvar);
            e.for_const(0, kh as i64, 1, |e, fy| {
                let sy = e.addr(sc, fy, wp * 4);
                let py = e.addr(pc, fy, kw * ldp * 4);
                let st = at.strip;
                for fx in 0..kw {
                    for p in st.pieces(s.out_w()) {
                        // The piece's first source column, in the first and the last strip
                        // of the run.
                        let col = st.ox0 as isize + p.dx;
                        let last = (st.repeat - 1) * st.cols;
                        let cols = (
                            col as usize * s.stride_w + fx,
                            (col as usize + last) * s.stride_w + fx,
                        );
                        // Inside the source: dy rows down, then dx columns (dx < 0 only
                        // when dy > 0, and |dx| * sw < wp).
                        let from = (p.dy * s.stride_h * wp) as isize + p.dx * s.stride_w as isize;
                        let from = (from + fx as isize) * 4;
                        let to = fx * ldp + p.to;
                        self.copy_strided(e, (sy, from), (py, to * 4), cols, p.len);
                    }
                }
                Ok(())
            })?;
            let pn = e.add_imm(pc, row_bytes as i64);
            e.b.def_var(pvar, pn);
            Ok(())
        })
    }

    /// Copies `n` floats at stride `stride_w` from `src + from` bytes (starting at column `col_lo`
    /// or up to `col_hi` of a source row of `wp` floats, depending on the strip of a run: all
    /// `n` inside the row) to consecutive floats at `dst + to`. Vector loads read only inside
    /// the source row, wherever in `col_lo..=col_hi` the copy starts.
    fn copy_strided(
        &self,
        e: &mut Emit,
        (src, from): (Value, isize),
        (dst, to): (Value, usize),
        (col_lo, col_hi): (usize, usize),
        n: usize,
    ) {
        let (sw, wp) = (self.spec.stride_w, self.wp);
        // Source offsets may be negative (the column before a strip's first, on its row);
        // every address is inside the source row all the same.
        let off = |x: isize| i32::try_from(x).expect("offsets are checked against i32");
        let groups: Vec<usize> = if n >= 4 && sw <= 2 {
            // Groups of 4 outputs; the last one overlaps the one before it when n % 4 != 0.
            (0..n / 4)
                .map(|g| g * 4)
                .chain((!n.is_multiple_of(4)).then_some(n - 4))
                .collect()
        } else {
            Vec::new()
        };
        let mut done = vec![false; n];
        for j in groups {
            let (first_lo, first_hi) = (col_lo + j * sw, col_hi + j * sw);
            let at = from + (j * sw * 4) as isize;
            let v = if sw == 1 {
                Some(e.load(F32X4, src, off(at)))
            } else if first_hi + 7 < wp {
                // Two vectors from the group's first column, the even lanes.
                let a = e.load(F32X4, src, off(at));
                let b = e.load(F32X4, src, off(at + 16));
                Some(shuffle(e, a, b, [0, 2, 4, 6]))
            } else if first_lo >= 1 {
                // At the row's end: from the column before, the odd lanes.
                let a = e.load(F32X4, src, off(at - 4));
                let b = e.load(F32X4, src, off(at + 12));
                Some(shuffle(e, a, b, [1, 3, 5, 7]))
            } else {
                None
            };
            if let Some(v) = v {
                e.store(v, dst, cg_off(to + j * 4));
                done[j..j + 4].iter_mut().for_each(|d| *d = true);
            }
        }
        for j in (0..n).filter(|&j| !done[j]) {
            let x = e.load(F32, src, off(from + (j * sw * 4) as isize));
            e.store(x, dst, cg_off(to + j * 4));
        }
    }
}

/// Lanes `lanes` (0-3 of `a`, 4-7 of `b`) of two f32x4 vectors.
pub(crate) fn shuffle(e: &mut Emit, a: Value, b: Value, lanes: [u8; 4]) -> Value {
    use cranelift_codegen::ir::{types::I8X16, Endianness, MemFlagsData};
    let le = MemFlagsData::new().with_endianness(Endianness::Little);
    let a = e.b.ins().bitcast(I8X16, le, a);
    let b = e.b.ins().bitcast(I8X16, le, b);
    let mut m = [0u8; 16];
    for (i, &l) in lanes.iter().enumerate() {
        for k in 0..4 {
            m[i * 4 + k] = l * 4 + k as u8;
        }
    }
    let imm = e.b.func.dfg.immediates.push(m.to_vec().into());
    let x = e.b.ins().shuffle(a, b, imm);
    e.b.ins().bitcast(F32X4, le, x)
}

/// Cuts an `oh x ow` output plane into strips of at most `np` pixels (`lanes` per vector):
/// by rows ([`row_strips`]) or across rows ([`flat_strips`]), whichever computes fewer
/// vectors, and on a tie whichever has fewer strips (fuller tiles: ResNet's 7x7/2 stem,
/// rows of 112 = 48 + 48 + 16 or strips of 48 across rows, 0.974 of the time,
/// `examples/convab.rs` both orders, session 13; `CNNC_FLAT_TIES=0`: rows, to measure).
/// Returns the kinds and the number of strips.
fn strips(oh: usize, ow: usize, np: usize, lanes: usize, lone_ok: bool) -> (Vec<GroupKind>, usize) {
    let count = |kinds: &[GroupKind]| kinds.iter().map(|k| k.count * k.per_group).sum();
    let vectors = |kinds: &[GroupKind]| -> usize {
        let strip = |s: &Strip| s.repeat * s.cols.div_ceil(lanes);
        let n: usize = (kinds.iter())
            .map(|k| k.count * k.strips.iter().map(strip).sum::<usize>())
            .sum();
        // A lone last pixel after a full strip, computed by that strip's kernel.
        let last = kinds.last().and_then(|k| k.strips.last());
        n - usize::from(lone_ok && (oh * ow) % np == 1 && last.is_some_and(|s| s.cols == 1))
    };
    let rows = row_strips(oh, ow, np);
    match flat_strips(oh, ow, np) {
        Some(f)
            if vectors(&f) < vectors(&rows)
                || (vectors(&f) == vectors(&rows)
                    && count(&f) < count(&rows)
                    && !crate::knobs::off("CNNC_FLAT_TIES")) =>
        {
            let n = count(&f);
            (f, n)
        }
        _ => {
            let n = count(&rows);
            (rows, n)
        }
    }
}

/// Strips of whole rows' pieces: pieces of a row when rows are wider than `np` (full
/// strips, then the rest), else groups of `np / ow` whole rows (then the remaining rows).
fn row_strips(oh: usize, ow: usize, np: usize) -> Vec<GroupKind> {
    let mut kinds = Vec::new();
    if ow >= np {
        let mut v = vec![Strip {
            row: 0,
            ox0: 0,
            cols: np,
            repeat: ow / np,
        }];
        if !ow.is_multiple_of(np) {
            v.push(Strip {
                row: 0,
                ox0: ow / np * np,
                cols: ow % np,
                repeat: 1,
            });
        }
        kinds.push(GroupKind {
            row0: 0,
            count: oh,
            rows: 1,
            per_group: v.len() - 1 + ow / np,
            strips: v,
            first_strip: 0,
        });
    } else {
        let g = (np / ow).min(oh);
        let strip = |rows| Strip {
            row: 0,
            ox0: 0,
            cols: rows * ow,
            repeat: 1,
        };
        kinds.push(GroupKind {
            row0: 0,
            count: oh / g,
            rows: g,
            strips: vec![strip(g)],
            per_group: 1,
            first_strip: 0,
        });
        if !oh.is_multiple_of(g) {
            kinds.push(GroupKind {
                row0: oh / g * g,
                count: 1,
                rows: oh % g,
                strips: vec![strip(oh % g)],
                per_group: 1,
                first_strip: oh / g,
            });
        }
    }
    kinds
}

/// Most strips in one group of rows cut across rows (each strip's packing is straight-line
/// code).
const MAX_FLAT_STRIPS: usize = 8;

/// Strips of `np` consecutive pixels of the plane, across rows: groups of the fewest rows
/// that are a whole number of strips (`lcm(ow, np)` pixels), then the remaining rows cut
/// the same way (the last strip shorter). `None` where a group would need more than
/// [`MAX_FLAT_STRIPS`] strips.
fn flat_strips(oh: usize, ow: usize, np: usize) -> Option<Vec<GroupKind>> {
    let gcd = |mut a: usize, mut b: usize| {
        while b > 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let period = np / gcd(ow, np);
    let group = |row0: usize, count: usize, rows: usize, first_strip: usize| {
        let pixels = rows * ow;
        let strips: Vec<Strip> = (0..pixels.div_ceil(np))
            .map(|i| Strip {
                row: i * np / ow,
                ox0: i * np % ow,
                cols: np.min(pixels - i * np),
                repeat: 1,
            })
            .collect();
        (strips.len() <= MAX_FLAT_STRIPS).then_some(GroupKind {
            row0,
            count,
            rows,
            per_group: strips.len(),
            strips,
            first_strip,
        })
    };
    let mut kinds = Vec::new();
    let full = oh / period;
    if full > 0 {
        kinds.push(group(0, full, period, 0)?);
    }
    if !oh.is_multiple_of(period) {
        let first = full * period * ow / np;
        kinds.push(group(full * period, 1, oh % period, first)?);
    }
    Some(kinds)
}

/// `CNNC_LONE_PIXEL=0`, a measuring knob: strips and kernels as before the lone pixel (and
/// the pointwise GEMM's 7x7 planes on 14 x 32 tiles, `gemm::PixelGemm::lone`). Read when a
/// plan is made: it changes the packed layout (the tile's rows), so a process that flips it
/// must pack with each kernel's own `pack_weights` (its stored plan, as the runtime and
/// `examples/convab.rs` do), not a fresh `pack_conv_weights`.
pub(crate) fn lone_pixel_off() -> bool {
    crate::knobs::off("CNNC_LONE_PIXEL")
}

/// What every strip of the compute function shares.
#[derive(Clone, Copy)]
struct Ctx {
    b: ConvBufs<Value>,
    /// The input, or its padded copy.
    src: Value,
    /// The panel's address (64-byte aligned).
    panel: Value,
    begin: Value,
    end: Value,
}

/// One strip where it is: its first source pixel (of channel 0), the byte offset of its
/// first output pixel within a channel plane, and its range of output channel blocks.
#[derive(Clone, Copy)]
struct Placed {
    strip: Strip,
    src: Value,
    /// The source row of filter row 0 for the strip's first output row, in the unpadded
    /// input (negative above it): the self-padding copies' fourth argument.
    row: Value,
    out: Value,
    mlo: Value,
    mhi: Value,
    /// Its kernel also computes the lone pixel after it ([`ImplicitGemm::lone_pixel`]).
    lone: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outputs a strip prefetches for writing ([`MicroGemm::prefetch_out`]: `cols`
    /// floats of each row of its channel block, from its successor's first output, or its
    /// own where the successor is narrower or the last) lie in the output plane: the
    /// codegen's rule in [`ImplicitGemm::call`], on every strip of layers whose last strips
    /// are narrower than the others (the ResNet stem's 112 x 112 = 261 x 48 + 16, a guard-page
    /// shape's 48 + 17, a 7x7 output's lone pixel).
    #[test]
    fn next_strip_prefetches_stay_in_the_output_plane() {
        let specs = [
            ConvSpec::square(3, 224, 64, 7, 2, 3),
            ConvSpec {
                in_w: 129,
                ..ConvSpec::square(3, 131, 64, 7, 2, 3)
            },
            ConvSpec::square(512, 7, 512, 3, 1, 1),
            ConvSpec::square(16, 28, 32, 5, 1, 2),
        ];
        for spec in specs {
            let (mut narrower_successor, mut ahead) = (false, 0);
            for width in [Width::Z512, Width::Y256] {
                let Some(g) = ImplicitGemm::new(spec, width) else {
                    continue;
                };
                let (ow, ohw) = (spec.out_w(), spec.out_h() * spec.out_w());
                for (strip, oy0, ox0) in g.each_strip() {
                    let (start, cols) = (oy0 * ow + ox0, strip.cols());
                    assert!(start + cols <= ohw, "{spec:?}: a strip past the plane");
                    let next = start + cols;
                    let from = if next <= next_strip_limit(ohw, cols) {
                        next
                    } else {
                        start
                    };
                    assert!(
                        from + cols <= ohw,
                        "{spec:?} {width:?}: the strip at {start} prefetches {from}..{}",
                        from + cols
                    );
                    narrower_successor |= next < ohw && next + cols > ohw;
                    ahead += usize::from(from == next);
                }
            }
            // The shapes are chosen so that the old rule (`next < ohw`) reached out, and the
            // rule still prefetches ahead.
            assert!(narrower_successor, "{spec:?}: no narrower last strip");
            assert!(ahead > 0, "{spec:?}: no strip prefetches its successor");
        }
    }

    /// The shapes `tests/jit_kernels.rs` and `tests/jit_guard_pages.rs` give for reduction
    /// blocks of the large panels strip by strip still make them (a change of
    /// [`PANEL_BYTES`] would otherwise turn those tests into repeats of one-block cases).
    #[test]
    fn large_panel_test_shapes_have_reduction_blocks() {
        for (spec, width, blocks) in [
            (ConvSpec::square(400, 9, 15, 3, 2, 1), Width::Z512, 3),
            (
                ConvSpec {
                    in_w: 8,
                    ..ConvSpec::square(400, 9, 15, 3, 2, 1)
                },
                Width::Z512,
                3,
            ),
            (ConvSpec::square(700, 21, 9, 3, 1, 1), Width::Z512, 7),
            (ConvSpec::square(700, 21, 9, 3, 1, 1), Width::Y256, 3),
        ] {
            if crate::knobs::number::<usize>("CNNC_PANEL_KB").is_some() {
                return; // the measuring knob sets the panels
            }
            let g = ImplicitGemm::new(spec, width).unwrap();
            assert_eq!((g.nkb, g.grouped), (blocks, false), "{spec:?} at {width:?}");
        }
    }

    /// Which padded layers the panel copies pad by themselves (the shapes the tests give
    /// for it, `tests/jit_kernels.rs` and `tests/jit_guard_pages.rs`): ResNet-50's 3x3/2
    /// from 56 and stem (strips across rows), a 7x7 output (all strips at once), rows of
    /// one strip; not rows of 200 (48 strips repeated along the row, ox unknown when a copy
    /// is emitted), stride 3, nor unpadded layers (nothing to pad).
    #[test]
    fn padded_layers_whose_copies_pad_themselves() {
        if crate::knobs::off("CNNC_SELF_PAD") {
            return; // the measuring knob turns it off
        }
        let rect = |c, h, w, k, f, s, p| ConvSpec {
            in_h: h,
            in_w: w,
            ..ConvSpec::square(c, h, k, f, s, p)
        };
        let pairs_2x2 = ConvSpec {
            pad_h: 0,
            ..rect(20, 15, 17, 9, 2, 2, 1)
        };
        let pairs_1x5 = ConvSpec {
            kernel_h: 1,
            stride_h: 1,
            pad_h: 0,
            pad_w: 2,
            ..rect(20, 9, 31, 11, 5, 2, 2)
        };
        for (spec, width, pads) in [
            (ConvSpec::square(128, 56, 128, 3, 2, 1), Width::Z512, true),
            (ConvSpec::square(3, 224, 64, 7, 2, 3), Width::Z512, true),
            (ConvSpec::square(512, 7, 512, 3, 1, 1), Width::Z512, true),
            (rect(40, 3, 4, 9, 5, 1, 2), Width::Z512, true),
            (rect(40, 3, 4, 9, 5, 1, 2), Width::Y256, true),
            (ConvSpec::square(12, 57, 9, 3, 2, 1), Width::Z512, true),
            (ConvSpec::square(12, 57, 9, 3, 2, 1), Width::Y256, true),
            (rect(8, 6, 200, 9, 3, 1, 1), Width::Z512, false),
            // The stride-2 pairs' shapes (`tests/jit_kernels.rs`).
            (pairs_2x2, Width::Z512, true),
            (pairs_2x2, Width::Y256, true),
            (pairs_1x5, Width::Z512, true),
            (pairs_1x5, Width::Y256, true),
            (ConvSpec::square(5, 17, 7, 3, 3, 1), Width::Z512, false),
            (ConvSpec::square(128, 57, 128, 3, 2, 0), Width::Z512, false),
        ] {
            let g = ImplicitGemm::new(spec, width).unwrap();
            assert_eq!(
                (g.self_pad, g.padded),
                (pads, !pads && spec.pad_h > 0),
                "{spec:?} at {width:?}"
            );
            assert_eq!(
                g.scratch_len() == 0,
                g.self_pad || spec.pad_h == 0,
                "{spec:?}"
            );
        }
    }
}
