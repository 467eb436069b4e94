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
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::cg::{off, F32, F32X4};
use super::conv::{call_panel_copy, define_gemm_driver, ConvBufs, ConvSpec};
use super::gemm::call_for_block;
use super::implicit::{prefetches_out, shuffle, tile};
use super::module::{Emit, KernelModule, PendingId};
use super::x86::copy::{CopyPiece, PanelCopy};
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
    /// Whether the full tiles prefetch the next tile's outputs for writing
    /// ([`MicroGemm::prefetch_out`]).
    prefetch_out: bool,
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
            prefetch_out: prefetches_out(&spec),
        };
        // What the generator cannot emit (offsets beyond i32) stays on the other methods.
        plan.micro_variants()
            .iter()
            .all(|m| m.check().is_ok())
            .then_some(plan)
    }

    /// What computes a tile, for profiles and plans: `avx512 14x32 im2col`.
    pub(crate) fn micro_kernel(&self) -> String {
        format!("{} {}x{} im2col", self.width.isa_name(), self.mr, self.np)
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
    /// The padded copy of the input (none without padding).
    pub(crate) fn scratch_len(&self) -> usize {
        if self.padded {
            self.spec.in_c * self.hp * self.wp
        } else {
            0
        }
    }
    /// Bands of output rows.
    pub(crate) fn work_units(&self) -> usize {
        self.spec.out_h().div_ceil(self.band)
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
            ldo: s.out_h() * s.out_w(),
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
        let oh = self.spec.out_h();
        let full = oh / self.band;
        [(0, full, self.band), (full, 1, oh % self.band)]
    }

    /// Every micro-kernel the compute function calls: (rows, columns) of the full and the
    /// tail channel block by the full and the last tile of each kind of band, once each.
    fn micro_variants(&self) -> Vec<MicroGemm> {
        let rows = [self.mr, self.spec.out_c % self.mr];
        let cols = (self.bands().into_iter())
            .filter(|&(_, count, band_rows)| count > 0 && band_rows > 0)
            .flat_map(|(_, _, band_rows)| {
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
        define_gemm_driver(
            km,
            what,
            (self.micro_variants(), &self.copy_variants()),
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
        };
        copy.takes().then_some(copy)
    }

    /// The panel copies of the bands (full, last), once each.
    fn copy_variants(&self) -> Vec<PanelCopy> {
        let mut v: Vec<PanelCopy> = Vec::new();
        for (_, count, rows) in self.bands() {
            let copy = (count > 0 && rows > 0)
                .then(|| self.panel_copy(rows))
                .flatten();
            if let Some(c) = copy.filter(|c| !v.contains(c)) {
                v.push(c);
            }
        }
        v
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
        for (first, count, rows) in self.bands() {
            if count == 0 || rows == 0 {
                continue;
            }
            // The bands of this kind in the range: max(begin, first) .. min(end, first + count).
            let lo = e.iconst(first as i64);
            let lo = e.b.ins().smax(begin, lo);
            let hi = e.iconst((first + count) as i64);
            let hi = e.b.ins().smin(end, hi);
            e.for_range(lo, hi, 1, |e, band| {
                let oy0 = e.mul_imm(band, self.band as i64);
                self.pack(e, (src, panel), oy0, rows)?;
                self.gemm(e, &b, (panel, oy0), rows, variants)
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

    /// The GEMM of a band of `rows` output rows from `oy0` on its panel: channel block by
    /// channel block, each along the band's pixels, so that the output goes out as `mr`
    /// sequential streams at a time.
    fn gemm(
        &self,
        e: &mut Emit,
        b: &ConvBufs<Value>,
        (panel, oy0): (Value, Value),
        rows: usize,
        variants: &[MicroGemm],
    ) -> Result<()> {
        let s = self.spec;
        let (mr, np) = (self.mr, self.np);
        let ohw = s.out_h() * s.out_w();
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
        let p0 = e.mul_imm(oy0, (s.out_w() * 4) as i64);
        let out0 = e.b.ins().iadd(b.out, p0);
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
