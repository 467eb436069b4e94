//! Convolutions with few input channels (the first layer of most CNNs: 3x3/2 3 -> 64 in
//! SqueezeNet, 3x3 3 -> 64 in VGG, 7x7/2 3 -> 64 in ResNet) on the wide x86 micro-kernels, as
//! a GEMM over an im2col matrix built a *band* of output rows at a time.
//!
//! Such a layer has a short reduction (`in_c * kh * kw` taps: 27 for a 3x3 on RGB) and a
//! large output (64 planes of 111 x 111 = 3.2 MB), so its time goes to writing the output.
//! The implicit GEMM ([`super::implicit`]) computes a strip of 32 pixels for all 64 output
//! channels before the next strip: 64 output streams of two lines each, which the hardware
//! prefetchers do not follow, so with the output out of the caches (as in a network) every
//! line waits for its read for ownership. Measured with a C model of the stores alone (3.2
//! MB, 64 MB written before each run): 0.32 ms in that order, 0.13 ms channel block by
//! channel block over a panel of 576 pixels (14 streams of 2.3 KB).
//!
//! So for each band of output rows the compute function copies the band's columns of the
//! im2col matrix (`[taps][band pixels]`, taps `(c, fy, fx)` in the order of the direct
//! kernel) into a panel on its stack, then runs the micro-kernel channel block by channel
//! block, each along the band's pixels: whole vectors across row ends (111-wide rows in
//! strips of 32 fill 87% of the lanes; a band of 5 rows, 555 pixels, 96%). Each output is
//! one fused multiply-add chain over the taps in order from zero, then the epilogue: the
//! same bits as the direct kernel and the implicit GEMM at every ISA level. Padding is the
//! direct kernel's prologue (a zero-bordered copy of the input in the scratch).
//!
//! Work units: bands. Each is independent (its own panel), so a thread computes exactly its
//! bands whatever the split.
//!
//! **A max pool fused in** ([`Im2colGemm::with_max_pool`], session 11): SqueezeNet's first
//! conv writes 3.2 MB that its 3x3/2 max pool reads back from memory. Fused, a work unit is
//! a band of the *pool's* output rows: it computes the conv rows those windows cover (one
//! row more than the next unit's start: recomputed, 1 in 16 at SqueezeNet's 8 pool rows a
//! unit) into its thread's scratch (~0.5 MB, in L2), then pools them with the wide max pool
//! kernel ([`MaxPoolPlane`]) into the output. The conv rows and the pool's windows are
//! computed by the same instructions as unfused: the same bits.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::cg::{off, F32, F32X4};
use super::conv::{call_panel_copy, define_gemm_driver_with_pools, ConvBufs, ConvSpec};
use super::gemm::call_for_block;
use super::implicit::{prefetches_out, shuffle, tile};
use super::module::{Emit, KernelModule, PendingId};
use super::pool::{PoolKind, PoolSpec};
use super::x86::copy::{CopyPiece, PanelCopy};
use super::x86::pool::MaxPoolPlane;
use super::x86::{MicroGemm, Width};
use crate::error::{Error, Result};

/// Taps (`in_c * kh * kw`) up to which a convolution takes this method: 3x3 filters on up
/// to 4 channels (RGB, gray, RGBA). ResNet's 7x7/2 stem (147 taps) measured 1.13x the
/// implicit GEMM's time (`examples/convab.rs`, 600 pairs): its long reduction is bound by
/// the arithmetic, not by the output.
const MAX_TAPS: usize = 36;
/// Bytes of a band's panel (`taps x band pixels`): the micro-kernels read it once per
/// channel block, so it should stay in L1 (48 KB); a band is at least one output row.
/// Against 64 KB (SqueezeNet's 3x3/2 3 -> 64: 5 rows of 111, 60 KB; VGG's 3x3 3 -> 64 at
/// 224: 2 rows), 32 KB (2 rows; 1 row) measured in the network (`cnnc run --profile`, 16
/// alternating pairs, one thread, load 6.4): 0.948x and 0.88x the time; `convab` 0.94x warm,
/// 0.86x cold for SqueezeNet's.
const PANEL_BYTES: usize = 32 * 1024;
/// Beyond this one output row's panel is too large for the stack.
const MAX_PANEL_BYTES: usize = 256 * 1024;
/// Bytes of conv rows a fused max pool's work unit computes at most (its thread's
/// scratch, which should stay in L2 between the conv's stores and the pool's loads).
const FUSED_ROWS_BYTES: usize = 512 * 1024;

/// A max pool computed from the conv's rows in each work unit ([`Im2colGemm::with_max_pool`]).
#[derive(Clone, Copy, Debug)]
struct FusedPool {
    spec: PoolSpec,
    /// Pool output rows per work unit (the last unit: the rest).
    rows: usize,
    /// Conv rows per unit's scratch plane: those a full unit's windows cover.
    conv_rows: usize,
}

impl FusedPool {
    /// Conv rows the windows of `pool_rows` output rows cover.
    fn conv_rows_of(spec: &PoolSpec, pool_rows: usize) -> usize {
        (pool_rows - 1) * spec.stride_h + spec.kernel_h
    }
    fn units(&self) -> usize {
        self.spec.out_h().div_ceil(self.rows)
    }
    /// The pool rows per unit, at most `most`, that give `threads` threads the most even
    /// shares of the work as the thread pool splits the units (`units * t / threads ..`),
    /// counted in conv rows (each unit computes the rows its windows cover, recomputing
    /// those it shares with the previous unit); the larger on a tie (one thread: the fewest
    /// units).
    fn even_rows(spec: &PoolSpec, most: usize, threads: usize) -> usize {
        let (oh, threads) = (spec.out_h(), threads.max(1));
        let largest_share = |rows: usize| {
            let n = oh.div_ceil(rows);
            let cost = |u: usize| Self::conv_rows_of(spec, rows.min(oh - u * rows));
            (0..threads)
                .map(|t| {
                    (n * t / threads..n * (t + 1) / threads)
                        .map(cost)
                        .sum::<usize>()
                })
                .max()
        };
        (1..=most.max(1))
            .rev()
            .min_by_key(|&r| largest_share(r))
            .unwrap_or(1)
    }
    /// `(first unit, count, pool rows, conv rows)` of the full units and the last one.
    fn unit_kinds(&self) -> [(usize, usize, usize, usize); 2] {
        let (oh, n) = (self.spec.out_h(), self.units());
        let last = oh - (n - 1) * self.rows;
        let rows_of = |r| Self::conv_rows_of(&self.spec, r);
        if last == self.rows {
            [(0, n, self.rows, self.conv_rows), (n, 0, 0, 0)]
        } else {
            [
                (0, n - 1, self.rows, self.conv_rows),
                (n - 1, 1, last, rows_of(last)),
            ]
        }
    }
    /// The wide kernel pooling `pool_rows` output rows from `conv_rows` rows of a plane.
    fn plane_kernel(&self, width: Width, pool_rows: usize, conv_rows: usize) -> MaxPoolPlane {
        let s = self.spec;
        MaxPoolPlane {
            width,
            kernel_h: s.kernel_h,
            kernel_w: s.kernel_w,
            stride_h: s.stride_h,
            stride_w: s.stride_w,
            in_h: conv_rows,
            in_w: s.in_w,
            pad_h: 0,
            pad_w: s.pad_w,
            out_h: pool_rows,
            out_w: s.out_w(),
            deinterleave: super::x86::pool::deinterleave_default(),
            // The conv rows are in L2, just written.
            prefetch: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Im2colGemm {
    spec: ConvSpec,
    width: Width,
    /// Output channels per block, pixels per full tile.
    mr: usize,
    np: usize,
    nmb: usize,
    /// `in_c * kh * kw`.
    taps: usize,
    /// Output rows per band.
    band: usize,
    /// Floats per panel row (a band's pixels, rounded up to whole vectors).
    ldp: usize,
    hp: usize,
    wp: usize,
    padded: bool,
    /// Stride-2 copies take filter columns two by two ([`PanelCopy::pairs`]).
    pairs: bool,
    /// Whether the full tiles prefetch the next tile's outputs for writing
    /// ([`MicroGemm::prefetch_out`]).
    prefetch_out: bool,
    /// A max pool fused in: the output is the pool's.
    pool: Option<FusedPool>,
}

impl Im2colGemm {
    /// The plan for `spec` at `width`, or `None` if `spec` has too many taps or one output
    /// row's panel does not fit the stack.
    pub(crate) fn new(spec: ConvSpec, width: Width) -> Option<Self> {
        let taps = spec.in_c * spec.kernel_h * spec.kernel_w;
        if taps > MAX_TAPS {
            return None;
        }
        let (mr, np) = tile(width);
        let (oh, ow) = (spec.out_h(), spec.out_w());
        let row_bytes = taps * ow * 4;
        if row_bytes > MAX_PANEL_BYTES {
            return None;
        }
        let band = (PANEL_BYTES / row_bytes).clamp(1, oh);
        let lanes = width.lanes();
        let plan = Im2colGemm {
            spec,
            width,
            mr,
            np,
            nmb: spec.out_c.div_ceil(mr),
            taps,
            band,
            ldp: (band * ow).div_ceil(lanes) * lanes,
            hp: spec.in_h + 2 * spec.pad_h,
            wp: spec.in_w + 2 * spec.pad_w,
            padded: spec.pad_h > 0 || spec.pad_w > 0,
            pairs: spec.stride_w == 2 && spec.kernel_w >= 2 && super::x86::copy::pairs(),
            prefetch_out: prefetches_out(&spec),
            pool: None,
        };
        // What the generator cannot emit (offsets beyond i32) stays on the other methods.
        plan.micro_variants()
            .iter()
            .all(|m| m.check().is_ok())
            .then_some(plan)
    }

    /// The plan for `spec` followed by the max pool `pool` (on `spec`'s output), computed
    /// as one kernel whose output is the pool's, or `None` where that is not built: a
    /// padded conv or one with a residual, a pool other than max, with vertical padding or
    /// without a wide kernel.
    ///
    /// The units are sized for a pool of `threads` ([`FusedPool::even_rows`]): SqueezeNet's
    /// 55 pool rows, at most 8 a unit, went in 7 units of 8 rows, split 3 / 4 at two
    /// threads (the caller waited 107 us of a 3.8 ms run on Zen 2, `examples/pooltrace.rs`);
    /// now 8 units of 7 (`examples/modelab.rs`, two threads: 0.987 of the time).
    pub(crate) fn with_max_pool(
        spec: ConvSpec,
        width: Width,
        pool: &PoolSpec,
        threads: usize,
    ) -> Option<Self> {
        let fits = pool.kind == PoolKind::Max
            && (pool.channels, pool.in_h, pool.in_w) == (spec.out_c, spec.out_h(), spec.out_w())
            && pool.pad_h == 0
            && pool.validate().is_ok()
            && spec.pad_h == 0
            && spec.pad_w == 0
            && !spec.residual;
        if !fits {
            return None;
        }
        let row_bytes = spec.out_c * spec.out_w() * 4;
        let oh = pool.out_h();
        let most = (1..=oh)
            .take_while(|&r| FusedPool::conv_rows_of(pool, r) * row_bytes <= FUSED_ROWS_BYTES)
            .last()
            .unwrap_or(1);
        // `CNNC_FUSED_POOL_ROWS=r`: units of `r` pool rows (up to `most`), to measure.
        match crate::knobs::number("CNNC_FUSED_POOL_ROWS") {
            Some(r) if (1..=most).contains(&r) => Self::fused(spec, width, pool, r),
            _ => Self::fused(spec, width, pool, FusedPool::even_rows(pool, most, threads))
                .or_else(|| Self::fused(spec, width, pool, FusedPool::even_rows(pool, most, 1))),
        }
    }

    /// [`Self::with_max_pool`] in units of `rows` pool rows, if its kernels take them.
    fn fused(spec: ConvSpec, width: Width, pool: &PoolSpec, rows: usize) -> Option<Self> {
        let fused = FusedPool {
            spec: *pool,
            rows,
            conv_rows: FusedPool::conv_rows_of(pool, rows),
        };
        let plan = Im2colGemm {
            prefetch_out: false,
            pool: Some(fused),
            ..Self::new(spec, width)?
        };
        let kernels_take = (fused.unit_kinds().iter())
            .filter(|k| k.1 > 0)
            .all(|&(_, _, p, c)| fused.plane_kernel(width, p, c).takes());
        let emittable = plan.micro_variants().iter().all(|m| m.check().is_ok());
        (kernels_take && emittable).then_some(plan)
    }

    /// What computes a tile, for profiles and plans: `avx512 14x32 im2col` (`+ max pool`
    /// with one fused in).
    pub(crate) fn micro_kernel(&self) -> String {
        let pool = if self.pool.is_some() {
            " + max pool"
        } else {
            ""
        };
        format!(
            "{} {}x{} im2col{pool}",
            self.width.isa_name(),
            self.mr,
            self.np
        )
    }
    /// Floats of the output: the conv's, or the fused pool's.
    pub(crate) fn output_len(&self) -> usize {
        match &self.pool {
            Some(p) => p.spec.output_len(),
            None => self.spec.output_len(),
        }
    }
    /// Whether each thread needs a scratch of its own (a fused pool's conv rows).
    pub(crate) fn scratch_per_thread(&self) -> bool {
        self.pool.is_some()
    }
    /// Floats between output channel planes of the conv rows the micro-kernels write.
    fn ldo(&self) -> usize {
        match &self.pool {
            Some(p) => p.conv_rows * self.spec.out_w(),
            None => self.spec.out_h() * self.spec.out_w(),
        }
    }
    pub(crate) fn spec(&self) -> &ConvSpec {
        &self.spec
    }
    pub(crate) fn padded(&self) -> bool {
        self.padded
    }
    fn weights_len(&self) -> usize {
        self.nmb * self.taps * self.mr
    }
    pub(crate) fn packed_len(&self) -> usize {
        self.weights_len() + self.nmb * self.mr
    }
    /// The padded copy of the input (none without padding); with a fused pool, a unit's
    /// conv rows (per thread).
    pub(crate) fn scratch_len(&self) -> usize {
        if let Some(p) = &self.pool {
            p.conv_rows * self.spec.out_w() * self.spec.out_c
        } else if self.padded {
            self.spec.in_c * self.hp * self.wp
        } else {
            0
        }
    }
    /// Bands of output rows (with a fused pool: of the pool's output rows).
    pub(crate) fn work_units(&self) -> usize {
        match &self.pool {
            Some(p) => p.units(),
            None => self.spec.out_h().div_ceil(self.band),
        }
    }

    /// `[nmb][taps][mr]` (PyTorch's `[k][c][fy][fx]`, the taps in order), then the bias
    /// padded to `nmb * mr`, into `out` (`packed_len()` zeros).
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let (r, mr) = (self.taps, self.mr);
        for (k, filter) in w.chunks_exact(r).enumerate() {
            let blk = &mut out[(k / mr) * r * mr..];
            for (t, &x) in filter.iter().enumerate() {
                blk[t * mr + k % mr] = x;
            }
        }
        if let Some(b) = bias {
            let base = self.weights_len();
            out[base..base + self.spec.out_c].copy_from_slice(b);
        }
    }

    /// The kernel of a `rows x cols` tile: the whole reduction from the panel, then the
    /// epilogue into the output planes.
    fn micro(&self, rows: usize, cols: usize) -> MicroGemm {
        let s = self.spec;
        let ep = s.epilogue();
        MicroGemm {
            width: self.width,
            rows,
            cols,
            k: self.taps,
            w_stride: self.mr,
            ldx: self.ldp,
            ldo: self.ldo(),
            accumulate: false,
            bias: ep.bias,
            bias_per_col: false,
            residual: ep.residual,
            relu: ep.relu,
            clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
            prefetch_every: 0,
            prefetch_w: 0,
            pf_ldx: 0,
            prefetch_out: self.prefetch_out && cols == self.np,
            extra_x: 0,
            lanes: false,
            lane_blocks: 1,
            block_stride: 0,
            pack: false,
        }
    }

    /// The tile widths of a band of `rows` output rows: full tiles, then the rest (0: none).
    fn tiles(&self, rows: usize) -> (usize, usize) {
        let px = rows * self.spec.out_w();
        (px / self.np, px % self.np)
    }

    /// Bands: `(first, count, rows)` for the full bands and the last, shorter one.
    fn bands(&self) -> [(usize, usize, usize); 2] {
        Self::bands_of(self.spec.out_h(), self.band)
    }
    /// `oh` rows in bands of `band`: `(first, count, rows)`, full bands then the rest.
    fn bands_of(oh: usize, band: usize) -> [(usize, usize, usize); 2] {
        let full = oh / band;
        [(0, full, band), (full, 1, oh % band)]
    }

    /// The row counts of the bands the compute function packs and multiplies (with a
    /// fused pool: each unit's conv rows in bands), once each.
    fn band_rows(&self) -> Vec<usize> {
        let all: Vec<(usize, usize, usize)> = match &self.pool {
            Some(p) => (p.unit_kinds().into_iter())
                .filter(|k| k.1 > 0)
                .flat_map(|(_, _, _, conv_rows)| Self::bands_of(conv_rows, self.band))
                .collect(),
            None => self.bands().to_vec(),
        };
        let mut rows: Vec<usize> = (all.into_iter())
            .filter(|&(_, count, rows)| count > 0 && rows > 0)
            .map(|b| b.2)
            .collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// Every micro-kernel the compute function calls: (rows, columns) of the full and the
    /// tail channel block by the full and the last tile of each kind of band, once each.
    fn micro_variants(&self) -> Vec<MicroGemm> {
        let rows = [self.mr, self.spec.out_c % self.mr];
        let cols = (self.band_rows().into_iter())
            .flat_map(|band_rows| {
                let (full, rest) = self.tiles(band_rows);
                [(full > 0).then_some(self.np), (rest > 0).then_some(rest)]
            })
            .flatten();
        let mut shapes: Vec<(usize, usize)> = cols
            .flat_map(|c| rows.into_iter().filter(|&r| r > 0).map(move |r| (r, c)))
            .collect();
        shapes.sort_unstable();
        shapes.dedup();
        shapes.into_iter().map(|(r, c)| self.micro(r, c)).collect()
    }

    /// Emits the compute function (over the input, or with padding over the scratch copy
    /// that the prologue made).
    pub(crate) fn emit_compute(&self, km: &mut KernelModule) -> Result<PendingId> {
        let plan = self.clone();
        let what = "im2col-gemm micro-kernel";
        define_gemm_driver_with_pools(
            km,
            what,
            (
                self.micro_variants(),
                &self.pool_variants(),
                &self.copy_variants(),
            ),
            move |e, b, begin, end, v| plan.body(e, b, begin, end, v),
        )
    }

    /// The x86 copy that packs a band of `rows` output rows (`None`: stride over 2, copied
    /// by [`Self::copy_row`]): each tap copies one piece per output row.
    fn panel_copy(&self, rows: usize) -> Option<PanelCopy> {
        let s = self.spec;
        let (ow, wp) = (s.out_w(), self.wp);
        let copy = PanelCopy {
            width: self.width,
            stride: s.stride_w,
            kh: s.kernel_h,
            kw: s.kernel_w,
            src_row: wp * 4,
            src_plane: self.hp * wp * 4,
            dst_row: self.ldp * 4,
            pieces: (0..rows)
                .map(|d| CopyPiece {
                    from: (d * s.stride_h * wp * 4) as isize,
                    to: d * ow * 4,
                    len: ow,
                })
                .collect(),
            pad: None,
            pairs: self.pairs,
        };
        copy.takes().then_some(copy)
    }

    /// The panel copies of the bands, once each.
    fn copy_variants(&self) -> Vec<PanelCopy> {
        let mut v: Vec<PanelCopy> = Vec::new();
        for rows in self.band_rows() {
            if let Some(c) = self.panel_copy(rows).filter(|c| !v.contains(c)) {
                v.push(c);
            }
        }
        v
    }

    /// A fused pool's plane kernels: of the full units, then of the last (if shorter).
    fn pool_variants(&self) -> Vec<MaxPoolPlane> {
        let Some(p) = &self.pool else {
            return Vec::new();
        };
        (p.unit_kinds().into_iter())
            .filter(|k| k.1 > 0)
            .map(|(_, _, pool_rows, conv_rows)| p.plane_kernel(self.width, pool_rows, conv_rows))
            .collect()
    }

    /// The bands `begin..end`: full bands in a loop, then the last, shorter one.
    fn body(
        &self,
        e: &mut Emit,
        b: ConvBufs<Value>,
        begin: Value,
        end: Value,
        variants: &[MicroGemm],
    ) -> Result<()> {
        // The panel: `taps` rows of `ldp` floats, 64-byte aligned on the stack. Packing
        // writes rows `< taps`, columns `< rows * ow <= ldp`; the micro-kernels read `taps`
        // rows of their columns, all `< rows * ow`.
        let panel = e.stack_buffer(self.taps * self.ldp * 4, "im2col panel")?;
        let src = if self.padded { b.scratch } else { b.input };
        if let Some(p) = self.pool {
            return self.fused_body(e, &b, (src, panel), (begin, end), variants, &p);
        }
        let ow4 = (self.spec.out_w() * 4) as i64;
        for (first, count, rows) in self.bands() {
            if count == 0 || rows == 0 {
                continue;
            }
            let (lo, hi) = clamp_range(e, (begin, end), first, count);
            e.for_range(lo, hi, 1, |e, band| {
                let oy0 = e.mul_imm(band, self.band as i64);
                self.pack(e, (src, panel), oy0, rows)?;
                let p0 = e.mul_imm(oy0, ow4);
                self.gemm(e, &b, (panel, p0, b.out), rows, variants)
            })?;
        }
        Ok(())
    }

    /// The units `begin..end` of a fused max pool `p`: each computes its conv rows in
    /// bands into the scratch (`conv_rows` rows a channel), then pools them into its
    /// output rows. Writes the scratch's `out_c * conv_rows * ow` floats and `out_c` runs
    /// of the unit's pool rows; the last unit's conv rows end at `(poh - 1) * sh + kh <=
    /// oh`, so every packed input row is inside the input.
    fn fused_body(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        (src, panel): (Value, Value),
        range: (Value, Value),
        variants: &[MicroGemm],
        p: &FusedPool,
    ) -> Result<()> {
        let (ow, out_c) = (self.spec.out_w(), self.spec.out_c);
        let (poh, pow) = (p.spec.out_h(), p.spec.out_w());
        let pools = self.pool_variants();
        for (first, count, pool_rows, conv_rows) in p.unit_kinds() {
            if count == 0 {
                continue;
            }
            let kernel = p.plane_kernel(self.width, pool_rows, conv_rows);
            let i = (pools.iter().position(|k| *k == kernel))
                .ok_or_else(|| Error::Codegen(format!("no max pool kernel {kernel:?}")))?;
            let pool_fn = e.micros[variants.len() + i];
            let (lo, hi) = clamp_range(e, range, first, count);
            e.for_range(lo, hi, 1, |e, u| {
                let oy0 = e.mul_imm(u, (p.rows * p.spec.stride_h) as i64);
                for (bfirst, bcount, rows) in Self::bands_of(conv_rows, self.band) {
                    if bcount == 0 || rows == 0 {
                        continue;
                    }
                    let (k0, k1) = (bfirst as i64, (bfirst + bcount) as i64);
                    e.for_const(k0, k1, 1, |e, k| {
                        let d = e.mul_imm(k, self.band as i64);
                        let oy = e.b.ins().iadd(oy0, d);
                        self.pack(e, (src, panel), oy, rows)?;
                        let p0 = e.mul_imm(k, (self.band * ow * 4) as i64);
                        self.gemm(e, b, (panel, p0, b.scratch), rows, variants)
                    })?;
                }
                let out = e.addr(b.out, u, p.rows * pow * 4);
                e.for_const(0, out_c as i64, 1, |e, c| {
                    let plane = e.addr(b.scratch, c, p.conv_rows * ow * 4);
                    let o = e.addr(out, c, poh * pow * 4);
                    e.b.ins().call(pool_fn, &[plane, o]);
                    Ok(())
                })
            })?;
        }
        Ok(())
    }

    /// Copies the im2col columns of output rows `oy0 .. oy0 + rows` into the panel: row
    /// `(c * kh + fy) * kw + fx`, column `d * ow + x` holds `src[c][(oy0 + d) * sh + fy][x *
    /// sw + fx]`, inside the (padded) input since `(oh - 1) * sh + kh <= hp` and `(ow - 1) *
    /// sw + kw <= wp`.
    fn pack(
        &self,
        e: &mut Emit,
        (src, panel): (Value, Value),
        oy0: Value,
        rows: usize,
    ) -> Result<()> {
        let s = self.spec;
        let (kh, kw, wp, ow) = (s.kernel_h, s.kernel_w, self.wp, s.out_w());
        let first_row = e.addr(src, oy0, s.stride_h * wp * 4);
        if let Some(copy) = self.panel_copy(rows) {
            let n = e.iconst(s.in_c as i64);
            call_panel_copy(e, &self.copy_variants(), &copy, &[first_row, panel, n]);
            return Ok(());
        }
        e.for_const(0, s.in_c as i64, 1, |e, c| {
            let sc = e.addr(first_row, c, self.hp * wp * 4);
            let pc = e.addr(panel, c, kh * kw * self.ldp * 4);
            e.for_const(0, kh as i64, 1, |e, fy| {
                let sy = e.addr(sc, fy, wp * 4);
                let py = e.addr(pc, fy, kw * self.ldp * 4);
                e.for_const(0, rows as i64, 1, |e, d| {
                    let sd = e.addr(sy, d, s.stride_h * wp * 4);
                    let pd = e.addr(py, d, ow * 4);
                    // One copy for every `fx`: the same code at other addresses, reading
                    // at most the `wp - (kw - 1)` floats the last tap's row has (a copy
                    // per `fx` made SqueezeNet's first layer 1,400 CLIF instructions, 0.7
                    // ms of Cranelift's time; the loop, 650 and the same run time).
                    e.for_const(0, kw as i64, 1, |e, fx| {
                        let sf = e.addr(sd, fx, 4);
                        let pf = e.addr(pd, fx, self.ldp * 4);
                        self.copy_row(e, (sf, 0), (pf, 0), wp - (kw - 1));
                        Ok(())
                    })
                })
            })
        })
    }

    /// `dst[to + 4 x] = src[from + 4 x sw]` for the `ow` outputs of a row, straight-line
    /// (immediate offsets from the row's base), reading only the row's `n` floats from
    /// `from`: `(ow - 1) * sw < n`. Stride 1: vectors; stride 2: groups of 4 outputs as the
    /// even lanes of two vectors while those 8 floats are inside the row, then one group
    /// ending at the last output from the column before (odd lanes, overlapping outputs
    /// already written with the same values); the rest one float at a time.
    fn copy_row(
        &self,
        e: &mut Emit,
        (src, from): (Value, usize),
        (dst, to): (Value, usize),
        n: usize,
    ) {
        let (ow, sw) = (self.spec.out_w(), self.spec.stride_w);
        let mut done = 0;
        if sw == 1 {
            done = ow / 4 * 4;
            for j in (0..done).step_by(4) {
                let v = e.load(F32X4, src, off(from + j * 4));
                e.store(v, dst, off(to + j * 4));
            }
        } else if sw == 2 {
            // Groups `g` read floats `8 g .. 8 g + 8`.
            done = (n / 8).min(ow / 4) * 4;
            for j in (0..done).step_by(4) {
                let a = e.load(F32X4, src, off(from + j * 8));
                let b = e.load(F32X4, src, off(from + j * 8 + 16));
                let v = shuffle(e, a, b, [0, 2, 4, 6]);
                e.store(v, dst, off(to + j * 4));
            }
            if done < ow && ow - done <= 4 && ow >= 5 {
                // Floats `2 (ow - 4) - 1 .. 2 ow - 1`, inside since `2 ow - 2 < n`.
                let j = ow - 4;
                let a = e.load(F32X4, src, off(from + (2 * j - 1) * 4));
                let b = e.load(F32X4, src, off(from + (2 * j + 3) * 4));
                let v = shuffle(e, a, b, [1, 3, 5, 7]);
                e.store(v, dst, off(to + j * 4));
                done = ow;
            }
        }
        for j in done..ow {
            let x = e.load(F32, src, off(from + j * sw * 4));
            e.store(x, dst, off(to + j * 4));
        }
    }

    /// The GEMM of a band of `rows` output rows on its panel into the planes at `out_base`
    /// (the output, or a fused pool's scratch), from byte `p0` of each: channel block by
    /// channel block, each along the band's pixels, so that the output goes out as `mr`
    /// sequential streams at a time.
    fn gemm(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        (panel, p0, out_base): (Value, Value, Value),
        rows: usize,
        variants: &[MicroGemm],
    ) -> Result<()> {
        let s = self.spec;
        let (mr, np) = (self.mr, self.np);
        let ohw = self.ldo();
        let find = |e: &Emit, rows: usize, cols: usize| {
            let m = self.micro(rows, cols);
            variants
                .iter()
                .position(|v| *v == m)
                .map(|i| e.micros[i])
                .ok_or_else(|| Error::Codegen(format!("no micro-kernel {m:?}")))
        };
        let (full, rest) = self.tiles(rows);
        let tail = s.out_c % mr;
        let out0 = e.b.ins().iadd(out_base, p0);
        let res0 = e.b.ins().iadd(b.residual, p0);
        let bias0 = e.add_imm(b.packed, (self.weights_len() * 4) as i64);
        e.for_const(0, self.nmb as i64, 1, |e, mb| {
            let w = e.addr(b.packed, mb, self.taps * mr * 4);
            let out = e.addr(out0, mb, mr * ohw * 4);
            let res = e.addr(res0, mb, mr * ohw * 4);
            let bias = e.addr(bias0, mb, mr * 4);
            let call = |e: &mut Emit, t: Value, cols: usize| {
                let at = e.mul_imm(t, (np * 4) as i64);
                let x = e.b.ins().iadd(panel, at);
                let o = e.b.ins().iadd(out, at);
                let r = e.b.ins().iadd(res, at);
                let kernels = (find(e, mr, cols)?, (tail > 0).then(|| find(e, tail, cols)));
                let kernels = (kernels.0, kernels.1.transpose()?);
                // `pf`, the sixth argument, where a kernel takes it (`define_gemm_driver`).
                if !variants.iter().any(|m| m.prefetch_out) {
                    return call_for_block(e, mb, self.nmb, kernels, &[x, w, o, r, bias]);
                }
                // The next tile of the band (of the next band after the last): its `np`
                // columns of each output row when they are inside the plane, else this
                // tile's own (the shorter tiles ignore `pf`).
                let pf = match ohw.checked_sub(2 * np) {
                    Some(last) => {
                        let px = e.b.ins().iadd(p0, at);
                        let inside = (e.b.ins()).icmp_imm_s(
                            IntCC::UnsignedLessThanOrEqual,
                            px,
                            (last * 4) as i64,
                        );
                        let next = e.add_imm(o, (np * 4) as i64);
                        e.b.ins().select(inside, next, o)
                    }
                    None => o,
                };
                call_for_block(e, mb, self.nmb, kernels, &[x, w, o, r, bias, pf])
            };
            e.for_const(0, full as i64, 1, |e, t| call(e, t, np))?;
            if rest > 0 {
                let t = e.iconst(full as i64);
                call(e, t, rest)?;
            }
            Ok(())
        })
    }
}

/// The units `first..first + count` that lie in `begin..end`: `max(begin, first) ..
/// min(end, first + count)`.
fn clamp_range(
    e: &mut Emit,
    (begin, end): (Value, Value),
    first: usize,
    count: usize,
) -> (Value, Value) {
    let lo = e.iconst(first as i64);
    let lo = e.b.ins().smax(begin, lo);
    let hi = e.iconst((first + count) as i64);
    (lo, e.b.ins().smin(end, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_pool_units_even_out_the_threads() {
        // SqueezeNet's 3x3/2 max pool of 111 conv rows (55 pool rows), at most 8 a unit.
        let pool = PoolSpec {
            kind: PoolKind::Max,
            channels: 64,
            in_h: 111,
            in_w: 111,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 2,
            stride_w: 2,
            pad_h: 0,
            pad_w: 0,
        };
        // One thread: the fewest units (7 of 8 rows, 117 conv rows; 8 of 7 would be 118).
        assert_eq!(FusedPool::even_rows(&pool, 8, 1), 8);
        // Two: 8 units of 7 rows, 4 each (60 / 58 conv rows; 7 units of 8: 51 / 66).
        assert_eq!(FusedPool::even_rows(&pool, 8, 2), 7);
        // Three: 10 units of 6 (39 / 39 / 42 conv rows; 8 units of 7: 30 / 45 / 43).
        assert_eq!(FusedPool::even_rows(&pool, 8, 3), 6);
        // No more rows than the pool has, nor a unit of none.
        assert_eq!(FusedPool::even_rows(&pool, 1, 2), 1);
    }
}
