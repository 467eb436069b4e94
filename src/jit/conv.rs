//! 2-D convolution on one NCHW image, with an optional fused epilogue
//! ([`super::epilogue`]: bias, then a residual tensor of the output's shape, then ReLU and
//! clip, before the single store).
//!
//! Three code generators, chosen from the spec ([`ConvMethod`]):
//! * 3x3, stride 1, at least 16 input and output channels and a 4x4 (2x2) output: Winograd
//!   F(4x4, 3x3), or F(2x2, 3x3) on small outputs ([`super::winograd`]), unless the module
//!   disallows it.
//! * 1x1, stride 1, no padding: a GEMM vectorised along pixels ([`super::gemm`]); at avx2 /
//!   avx512 also 1x1 with a stride (on a copy of the sampled pixels).
//! * everything else: a *direct* convolution vectorised along output channels. The micro-kernel
//!   keeps a tile of `w` output pixels (up to 4, consecutive in one output row) by 8 output
//!   channels in `w * 2` f32x4 accumulators. The reduction runs over the taps
//!   `(c, fy, fx)` in a loop unrolled 2x; per tap it loads two weight vectors (packed so that
//!   they are consecutive), reads the tap's input offset from a table (one i32), and broadcasts
//!   one input value per FMA. Strides cost nothing (the pixel addresses are just further
//!   apart), and padding is taken out of the hot loop by first copying the input into a
//!   zero-bordered scratch buffer, so that every pixel uses the same tap table.
//!   Results are stored transposed (one scalar store per element), except with a residual:
//!   tiles of 4 consecutive pixels are transposed (4x4 shuffles) for a vector epilogue per
//!   channel, and other tiles gather the residuals of 4 channels into a vector.
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::cg::{fits, off, window_out, F32, F32X4, I32, I64, MAX_DIM};
use super::entry::{slot_layout, Buf, Entry, Slot};
use super::epilogue::{ChannelBlock, Clip, Epilogue};
use super::gemm::{self, PixelGemm};
use super::host_fma::{host_zmm_fma, ZmmFma};
use super::im2col::Im2colGemm;
use super::implicit::ImplicitGemm;
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId};
use super::pool::PoolSpec;
use super::threads::ThreadPool;
use super::winograd::WinogradPlan;
use super::x86;
use crate::error::{Error, Result};
use crate::memory::{try_vec, HugeBuf};
use crate::options::Isa;

/// Shapes and fused epilogue of one convolution layer (one image, NCHW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
    /// The residual is read from the output buffer itself, which the caller fills with it
    /// (no residual buffer is passed): each output element's residual is read before that
    /// element is written, by the same work unit. Saves a network the output's own buffer
    /// (its lines are the residual's, already read). Only where the method writes every
    /// output once ([`ConvMethod::reads_residual_in_place`]); needs `residual`.
    pub residual_in_place: bool,
    /// Clip after the ReLU (ReLU6: [`Clip::RELU6`]).
    pub clip: Option<Clip>,
}

impl ConvSpec {
    /// A square-filter convolution without epilogue.
    pub fn square(
        in_c: usize,
        hw: usize,
        out_c: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        ConvSpec {
            in_c,
            in_h: hw,
            in_w: hw,
            out_c,
            kernel_h: k,
            kernel_w: k,
            stride_h: stride,
            stride_w: stride,
            pad_h: pad,
            pad_w: pad,
            bias: false,
            relu: false,
            residual: false,
            residual_in_place: false,
            clip: None,
        }
    }
    /// What the kernel does to each accumulated value before storing it.
    pub(crate) fn epilogue(&self) -> Epilogue {
        Epilogue::new(self.bias, self.residual, self.relu, self.clip)
    }
    pub fn out_h(&self) -> usize {
        window_out(self.in_h, self.pad_h, self.kernel_h, self.stride_h)
    }
    pub fn out_w(&self) -> usize {
        window_out(self.in_w, self.pad_w, self.kernel_w, self.stride_w)
    }
    pub fn input_len(&self) -> usize {
        self.in_c * self.in_h * self.in_w
    }
    pub fn output_len(&self) -> usize {
        self.out_c * self.out_h() * self.out_w()
    }
    /// Length of the PyTorch-layout weights `[out_c, in_c, kernel_h, kernel_w]`.
    pub fn weight_len(&self) -> usize {
        self.out_c * self.in_c * self.kernel_h * self.kernel_w
    }
    /// Multiply-adds times two.
    pub fn flops(&self) -> u64 {
        2 * (self.weight_len() * self.out_h() * self.out_w()) as u64
    }

    pub fn validate(&self) -> Result<()> {
        let s = self;
        let dims = [
            s.in_c, s.in_h, s.in_w, s.out_c, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w,
            s.pad_h, s.pad_w,
        ];
        if dims.iter().any(|&d| d > MAX_DIM) {
            return Err(Error::Unsupported(format!(
                "a conv dimension of {s} is over the limit of {MAX_DIM} (2^24)"
            )));
        }
        if s.in_c == 0 || s.in_h == 0 || s.in_w == 0 || s.out_c == 0 {
            return Err(Error::Shape(format!(
                "a conv of {s} has an empty dimension"
            )));
        }
        if s.kernel_h == 0 || s.kernel_w == 0 || s.stride_h == 0 || s.stride_w == 0 {
            return Err(Error::Shape(format!(
                "a conv of {s}: the filter and stride must be at least 1"
            )));
        }
        if s.residual_in_place && !s.residual {
            return Err(Error::Shape(format!(
                "a conv of {s} reads a residual in place but has none"
            )));
        }
        if let Some(c) = s.clip {
            c.validate()?;
        }
        if s.in_h + 2 * s.pad_h < s.kernel_h || s.in_w + 2 * s.pad_w < s.kernel_w {
            return Err(Error::Shape(format!(
                "conv filter {}x{} larger than the padded input {}x{}",
                s.kernel_h,
                s.kernel_w,
                s.in_h + 2 * s.pad_h,
                s.in_w + 2 * s.pad_w
            )));
        }
        // Every byte offset the generated code computes must fit in an i32.
        let (hp, wp) = (s.in_h + 2 * s.pad_h, s.in_w + 2 * s.pad_w);
        let ok = fits(&[s.in_c, hp, wp])
            && fits(&[s.out_c, s.out_h(), s.out_w()])
            && fits(&[s.out_c + 8, s.in_c, s.kernel_h, s.kernel_w]);
        if !ok {
            return Err(Error::Unsupported(format!(
                "a conv of {s} has tensors over the 1 GiB a JIT kernel addresses"
            )));
        }
        Ok(())
    }

    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_h == 0
            && self.pad_w == 0
    }

    /// 1x1 without padding but with a stride: the pointwise GEMM on the sampled pixels.
    fn is_strided_pointwise(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.pad_h == 0
            && self.pad_w == 0
            && (self.stride_h > 1 || self.stride_w > 1)
    }
}

/// Output-channel vectors per block of the direct kernel: 2 (8 channels). Blocks of 12
/// channels for narrow tiles (at most 4 pixels, 9-12 accumulators) measured 10-20% slower on
/// 7x7 and 4x4 outputs (a 4x12 tile leaves no register to spare), so the plan keeps 8.
fn channel_vectors(_out_w: usize) -> usize {
    2
}

/// Maximum output pixels per micro-kernel tile (4 pixels x 8 channels = 8 accumulators), and
/// taps per loop iteration. Measured on 3x3 and 7x7 layers (best GFLOP/s): 6 px x 1 tap 35, or
/// 29 when the register allocator spilled an accumulator (12 accumulators + 2 weight vectors +
/// 1 broadcast leave one spare register); 5 x 1: 33-36; 4 x 2: 36-41; 4 x 3: 31-32; 4 x 4: 29-30.
/// Cranelift emits an unrolled body accumulator by accumulator with every weight vector of the
/// iteration live, so unrolling only pays while registers remain (8 acc + 4 weights + 1).
const MAX_PX: usize = 4;
const TAP_UNROLL: usize = 2;

#[derive(Clone, Debug)]
pub(crate) struct DirectPlan {
    spec: ConvSpec,
    /// f32x4 vectors of output channels per block, and channels per block (`4 * kv`).
    kv: usize,
    kb: usize,
    nkb: usize,
    taps: usize,
    hp: usize,
    wp: usize,
    padded: bool,
}

impl DirectPlan {
    fn new(spec: ConvSpec) -> Self {
        let padded = spec.pad_h > 0 || spec.pad_w > 0;
        let kv = channel_vectors(spec.out_w());
        let kb = 4 * kv;
        DirectPlan {
            spec,
            kv,
            kb,
            nkb: spec.out_c.div_ceil(kb),
            taps: spec.in_c * spec.kernel_h * spec.kernel_w,
            hp: spec.in_h + 2 * spec.pad_h,
            wp: spec.in_w + 2 * spec.pad_w,
            padded,
        }
    }
    fn packed_len(&self) -> usize {
        self.nkb * self.taps * self.kb + self.nkb * self.kb
    }
    fn scratch_len(&self) -> usize {
        if self.padded {
            self.spec.in_c * self.hp * self.wp
        } else {
            0
        }
    }
    /// Tiles of one output row: `(count, width)` pairs, widths as equal as possible.
    fn row_tiles(&self) -> [(usize, usize); 2] {
        split_even(self.spec.out_w())
    }

    /// Output rows per row group. Narrow outputs (fewer than 9 columns, not a multiple of 6)
    /// would give tiles of at most 4 pixels (8 accumulators or fewer: FMA latency shows), so
    /// their tiles span `g` rows, about 12 pixels per group.
    fn row_group(&self) -> usize {
        let (oh, ow) = (self.spec.out_h(), self.spec.out_w());
        if ow >= 9 || ow % MAX_PX == 0 {
            1
        } else {
            (12usize.div_ceil(ow)).min(oh).max(1)
        }
    }

    /// Tiles of a group of `rows` output rows: lists of pixel byte offsets (input, output)
    /// relative to the group's first pixel.
    fn group_tiles(&self, rows: usize) -> Vec<Vec<(usize, usize)>> {
        let s = &self.spec;
        let ow = s.out_w();
        let mut q = 0;
        let mut tiles = Vec::new();
        for (count, width) in split_even(rows * ow) {
            for _ in 0..count {
                tiles.push(
                    (q..q + width)
                        .map(|p| {
                            let (dy, dx) = (p / ow, p % ow);
                            (
                                (dy * s.stride_h * self.wp + dx * s.stride_w) * 4,
                                (dy * ow + dx) * 4,
                            )
                        })
                        .collect(),
                );
                q += width;
            }
        }
        tiles
    }

    /// `[nkb][c][fy][fx][kb]` then the bias padded to `nkb * kb` into `out` (`packed_len()`
    /// zeros).
    fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        let s = &self.spec;
        let per_k = self.taps;
        for k in 0..s.out_c {
            let (kb, kl) = (k / self.kb, k % self.kb);
            for t in 0..per_k {
                out[(kb * per_k + t) * self.kb + kl] = w[k * per_k + t];
            }
        }
        if let Some(b) = bias {
            let base = self.nkb * self.taps * self.kb;
            out[base..base + s.out_c].copy_from_slice(b);
        }
    }

    fn table(&self) -> Vec<i32> {
        let s = &self.spec;
        let mut t = Vec::with_capacity(self.taps);
        for c in 0..s.in_c {
            for fy in 0..s.kernel_h {
                for fx in 0..s.kernel_w {
                    t.push((((c * self.hp + fy) * self.wp + fx) * 4) as i32);
                }
            }
        }
        t
    }

    /// Emits the function over the conv buffers. With padding that is an entry function
    /// calling a padded-copy function and then the compute function, so that the compute
    /// function's `readonly` loads of the scratch copy are truthful (the scratch is not
    /// written while it runs).
    fn emit(&self, km: &mut KernelModule) -> Result<(PendingId, Option<(PendingId, PendingId)>)> {
        let table = km.add_table(self.table());
        let plan = self.clone();
        let compute = km.define(move |e, b, begin, end| plan.body(e, b, begin, end, table))?;
        if !self.padded {
            return Ok((compute, None));
        }
        with_padded_copy(km, &self.spec, compute)
    }

    /// The compute function: output channel blocks `begin..end`, row by row (or by groups of
    /// rows, [`DirectPlan::row_group`]), a tile of pixels at a time.
    fn body(
        &self,
        e: &mut Emit,
        b: ConvBufs<Value>,
        begin: Value,
        end: Value,
        table: i64,
    ) -> Result<()> {
        let s = self.spec;
        // With padding, the entry function has already copied the input into `scratch`.
        let src = if self.padded { b.scratch } else { b.input };
        let ohw = s.out_h() * s.out_w();
        let bias_base = (self.nkb * self.taps * self.kb * 4) as i64;
        e.for_range(begin, end, 1, |e, kb| {
            let wblk = e.addr(b.packed, kb, self.taps * self.kb * 4);
            let oblk = e.addr(b.out, kb, self.kb * ohw * 4);
            let rblk = e.addr(b.residual, kb, self.kb * ohw * 4);
            let channels = e.channel_block(kb, self.kb, s.out_c);
            let bias = if s.bias {
                let bp = e.addr(b.packed, kb, self.kb * 4);
                Some(e.add_imm(bp, bias_base))
            } else {
                None
            };
            let blk = Block {
                src,
                wblk,
                oblk,
                rblk,
                bias,
                channels,
                table,
            };
            if self.row_group() > 1 {
                self.row_groups(e, &blk)
            } else {
                self.rows(e, &blk)
            }
        })
    }

    /// One output row at a time, in the tiles of [`DirectPlan::row_tiles`].
    fn rows(&self, e: &mut Emit, blk: &Block) -> Result<()> {
        let s = self.spec;
        let (oh, ow) = (s.out_h(), s.out_w());
        e.for_const(0, oh as i64, 1, |e, oy| {
            let irow = e.addr(blk.src, oy, s.stride_h * self.wp * 4);
            let orow = e.addr(blk.oblk, oy, ow * 4);
            let rrow = e.addr(blk.rblk, oy, ow * 4);
            let mut ox0 = 0usize;
            for (count, width) in self.row_tiles() {
                if count == 0 || width == 0 {
                    continue;
                }
                let px: Vec<(usize, usize)> =
                    (0..width).map(|j| (j * s.stride_w * 4, j * 4)).collect();
                e.for_const(
                    ox0 as i64,
                    (ox0 + count * width) as i64,
                    width as i64,
                    |e, ox| {
                        let ip = e.addr(irow, ox, s.stride_w * 4);
                        let op = e.addr(orow, ox, 4);
                        let rp = e.addr(rrow, ox, 4);
                        let t = Tile {
                            px: px.clone(),
                            ip,
                            op,
                            rp,
                        };
                        self.tile(e, blk, &t)
                    },
                )?;
                ox0 += count * width;
            }
            Ok(())
        })
    }

    /// Groups of `g` rows with statically laid out tiles, then the remaining rows.
    fn row_groups(&self, e: &mut Emit, blk: &Block) -> Result<()> {
        let s = self.spec;
        let (oh, ow) = (s.out_h(), s.out_w());
        let g = self.row_group();
        let groups = [(0, oh / g, g), (oh / g * g, 1, oh % g)];
        for (row0, count, rows) in groups {
            if count == 0 || rows == 0 {
                continue;
            }
            let tiles = self.group_tiles(rows);
            e.for_const(
                row0 as i64,
                (row0 + count * rows) as i64,
                rows as i64,
                |e, oy| {
                    let irow = e.addr(blk.src, oy, s.stride_h * self.wp * 4);
                    let orow = e.addr(blk.oblk, oy, ow * 4);
                    let rrow = e.addr(blk.rblk, oy, ow * 4);
                    for px in &tiles {
                        // Rebase on the tile's first pixel so that offsets stay small.
                        let (i0, o0) = px[0];
                        let t = Tile {
                            px: px.iter().map(|&(i, o)| (i - i0, o - o0)).collect(),
                            ip: e.add_imm(irow, i0 as i64),
                            op: e.add_imm(orow, o0 as i64),
                            rp: e.add_imm(rrow, o0 as i64),
                        };
                        self.tile(e, blk, &t)?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// One tile: its pixels by the block's `kb` output channels.
    fn tile(&self, e: &mut Emit, blk: &Block, t: &Tile) -> Result<()> {
        let acc = self.accumulate(e, blk, t)?;
        let vals: Vec<Value> = acc.iter().map(|&v| e.b.use_var(v)).collect();
        self.store_tile(e, blk, t, vals)
    }

    /// The reduction over the taps into `w * kv` accumulators (pixel `j`, channel vector `v`
    /// at `j * kv + v`).
    fn accumulate(&self, e: &mut Emit, blk: &Block, t: &Tile) -> Result<Vec<Variable>> {
        let w = t.px.len();
        let mut acc: Vec<Variable> = Vec::with_capacity(w * self.kv);
        let z = e.fzero(F32X4);
        for _ in 0..w * self.kv {
            let v = e.b.declare_var(F32X4);
            e.b.def_var(v, z);
            acc.push(v);
        }
        let wvar = e.b.declare_var(I64);
        e.b.def_var(wvar, blk.wblk);
        let step = |e: &mut Emit, tp: Value, wp: Value, taps: usize| {
            for u in 0..taps {
                let ioff = e.b.ins().load(I32, super::cg::ro(), tp, off(u * 4));
                let ioff = e.b.ins().sextend(I64, ioff);
                let ip = e.b.ins().iadd(t.ip, ioff);
                let wv: Vec<Value> = (0..self.kv)
                    .map(|v| e.load(F32X4, wp, off((u * self.kb + v * 4) * 4)))
                    .collect();
                for j in 0..w {
                    for (v, &wvv) in wv.iter().enumerate() {
                        // One broadcast per FMA, made distinct by its flags so that GVN does
                        // not merge them: a single-use splat of a load becomes one
                        // `vbroadcastss xmm, m32`, and the FMA may clobber it (no copy).
                        let x = e.b.ins().load(F32, bcast_flags(v), ip, off(t.px[j].0));
                        let x = e.b.ins().splat(F32X4, x);
                        let a = e.b.use_var(acc[j * self.kv + v]);
                        let a = e.fmadd(x, wvv, a);
                        e.b.def_var(acc[j * self.kv + v], a);
                    }
                }
            }
        };
        let u = TAP_UNROLL;
        let nmain = self.taps / u * u;
        let tmid = blk.table + (nmain * 4) as i64;
        e.for_const(blk.table, tmid, (u * 4) as i64, |e, tp| {
            let wp = e.b.use_var(wvar);
            step(e, tp, wp, u);
            let wn = e.add_imm(wp, (u * self.kb * 4) as i64);
            e.b.def_var(wvar, wn);
            Ok(())
        })?;
        let tend = blk.table + (self.taps * 4) as i64;
        e.for_const(tmid, tend, 4, |e, tp| {
            let wp = e.b.use_var(wvar);
            step(e, tp, wp, 1);
            let wn = e.add_imm(wp, (self.kb * 4) as i64);
            e.b.def_var(wvar, wn);
            Ok(())
        })?;
        Ok(acc)
    }

    /// The epilogue and stores of a tile's accumulated values `vals` (as `accumulate` lays
    /// them out): the bias by channel vector (and the activation when no residual follows),
    /// then, transposed to the output's channel planes, one of three store paths.
    fn store_tile(&self, e: &mut Emit, blk: &Block, t: &Tile, mut vals: Vec<Value>) -> Result<()> {
        let ep = self.spec.epilogue();
        let (w, kv) = (t.px.len(), self.kv);
        let first = ep.on_accumulators();
        let ep = ep.at_stores();
        for v in 0..kv {
            let bv = blk.bias.map(|bp| e.load(F32X4, bp, off(v * 16)));
            for j in 0..w {
                vals[j * kv + v] = e.epilogue(&first, vals[j * kv + v], bv, None);
            }
        }
        let ohw = self.spec.out_h() * self.spec.out_w();
        let at = (t.rp, t.op);
        // With a residual and 4 pixels consecutive in memory (in one output row, or a
        // row-spanning tile of a narrow output, whose rows are contiguous), transpose each
        // group of 4 channels x 4 pixels so that every channel's 4 pixels are one vector: then
        // the residual load, add, activation and store are vector operations (same arithmetic
        // order).
        if ep.residual && w == 4 && t.px.iter().enumerate().all(|(j, p)| p.1 == j * 4) {
            let mut rows = Vec::with_capacity(self.kb);
            for v in 0..kv {
                let q: Vec<Value> = (0..4).map(|j| vals[j * kv + v]).collect();
                rows.extend(e.transpose4(&q));
            }
            return e.each_channel(&blk.channels, 0, |e, kl| {
                e.epilogue_store(&ep, rows[kl], None, at, off(kl * ohw * 4));
            });
        }
        // Other tiles with a residual (3 pixels, 1-2 pixels of a narrow output): per pixel,
        // gather the residual of 4 channels into a vector, then the vector epilogue, and
        // scatter the lanes; for the channels of every block only.
        let gathered = if ep.residual {
            blk.channels.in_every_block() / 4
        } else {
            0
        };
        for v in 0..gathered {
            for j in 0..w {
                let o = |l: usize| off((v * 4 + l) * ohw * 4 + t.px[j].1);
                let r0 = e.load(F32, t.rp, o(0));
                let mut r = e.b.ins().scalar_to_vector(F32X4, r0);
                for l in 1..4 {
                    let rl = e.load(F32, t.rp, o(l));
                    r = e.b.ins().insertlane(r, rl, l as u8);
                }
                let x = e.epilogue(&ep, vals[j * kv + v], None, Some(r));
                for l in 0..4 {
                    let xl = e.b.ins().extractlane(x, l as u8);
                    e.store(xl, t.op, o(l));
                }
            }
        }
        // The rest one scalar at a time.
        e.each_channel(&blk.channels, gathered * 4, |e, kl| {
            let (v, l) = (kl / 4, kl % 4);
            for j in 0..w {
                let x = e.b.ins().extractlane(vals[j * kv + v], l as u8);
                e.epilogue_store(&ep, x, None, at, off(kl * ohw * 4 + t.px[j].1));
            }
        })
    }
}

/// The kernel of a convolution whose compute function `compute` reads the zero-padded
/// copy of the input in `scratch`: an entry function calling a prologue that makes the copy
/// (split over input channels), then `compute`. Returns the entry and the two parts.
fn with_padded_copy(
    km: &mut KernelModule,
    s: &ConvSpec,
    compute: PendingId,
) -> Result<(PendingId, Option<(PendingId, PendingId)>)> {
    let s = *s;
    let hw = (s.in_h, s.in_w);
    let hwp = (s.in_h + 2 * s.pad_h, s.in_w + 2 * s.pad_w);
    // Reads `input`, writes the padded copy of channels begin..end into `scratch`.
    let pad = km.define_using(
        &PROLOGUE_USES.into_array(),
        move |e, b: ConvBufs<_>, begin, end| {
            e.for_range(begin, end, 1, |e, c| {
                e.pad_channel(b.input, b.scratch, c, hw, hwp, (s.pad_h, s.pad_w), 0.0)
                    .map(drop)
            })
        },
    )?;
    let entry = define_entry(km, pad, compute, s.in_c)?;
    Ok((entry, Some((pad, compute))))
}

/// Splits `n` pixels into tiles of at most `MAX_PX`, widths as equal as possible:
/// `(count, width)` pairs.
fn split_even(n: usize) -> [(usize, usize); 2] {
    let t = n.div_ceil(MAX_PX);
    let q = n / t;
    let r = n % t;
    [(r, q + 1), (t - r, q)]
}

/// Equivalent read-only flags that differ only in ways that do not matter for f32 loads
/// (`aligned` holds for every f32 in a Rust slice; little-endian is the host order). Four
/// distinct variants; `v` wraps.
pub(crate) fn bcast_flags(v: usize) -> cranelift_codegen::ir::MemFlagsData {
    use cranelift_codegen::ir::Endianness;
    let f = super::cg::ro();
    match v % 4 {
        0 => f,
        1 => f.with_aligned(),
        2 => f.with_endianness(Endianness::Little),
        _ => f.with_aligned().with_endianness(Endianness::Little),
    }
}

/// What the tiles of one block of output channels share.
struct Block {
    /// The input, or its padded copy.
    src: Value,
    /// The block's packed weights, output and residual channel planes, and bias.
    wblk: Value,
    oblk: Value,
    rblk: Value,
    bias: Option<Value>,
    channels: ChannelBlock,
    /// The address of the tap table (input offsets of the taps).
    table: i64,
}

/// One tile of output pixels.
struct Tile {
    /// Byte offsets of each pixel from `ip` (input) and from `op`/`rp` (output, residual).
    px: Vec<(usize, usize)>,
    ip: Value,
    op: Value,
    rp: Value,
}

impl Emit<'_> {
    /// Transposes 4 f32x4 vectors as a 4x4 matrix (row `i` of the result holds lane `i` of
    /// every input), with the classic unpack-low/high dword then qword shuffles.
    pub(crate) fn transpose4(&mut self, q: &[Value]) -> [Value; 4] {
        use cranelift_codegen::ir::{types::I8X16, Endianness, MemFlagsData};
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let b: Vec<Value> = q
            .iter()
            .map(|&x| self.b.ins().bitcast(I8X16, le, x))
            .collect();
        let shuf = |e: &mut Self, x, y, lanes| e.pick_lanes(x, y, lanes);
        let lo01 = shuf(self, b[0], b[1], [0, 4, 1, 5]);
        let lo23 = shuf(self, b[2], b[3], [0, 4, 1, 5]);
        let hi01 = shuf(self, b[0], b[1], [2, 6, 3, 7]);
        let hi23 = shuf(self, b[2], b[3], [2, 6, 3, 7]);
        let r = [
            shuf(self, lo01, lo23, [0, 1, 4, 5]),
            shuf(self, lo01, lo23, [2, 3, 6, 7]),
            shuf(self, hi01, hi23, [0, 1, 4, 5]),
            shuf(self, hi01, hi23, [2, 3, 6, 7]),
        ];
        r.map(|x| self.b.ins().bitcast(F32X4, le, x))
    }

    /// The f32 lanes `lanes` of `x` (0-3) and `y` (4-7), both bitcast to i8x16.
    fn pick_lanes(&mut self, x: Value, y: Value, lanes: [u8; 4]) -> Value {
        let mut m = [0u8; 16];
        for (i, &l) in lanes.iter().enumerate() {
            for k in 0..4 {
                m[i * 4 + k] = l * 4 + k as u8;
            }
        }
        let imm = self.b.func.dfg.immediates.push(m.to_vec().into());
        self.b.ins().shuffle(x, y, imm)
    }

    /// Two f32x4 vectors' lanes interleaved: `[x0 y0 x1 y1]` and `[x2 y2 x3 y3]`.
    pub(crate) fn zip2(&mut self, x: Value, y: Value) -> [Value; 2] {
        use cranelift_codegen::ir::{types::I8X16, Endianness, MemFlagsData};
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let (bx, by) = (
            self.b.ins().bitcast(I8X16, le, x),
            self.b.ins().bitcast(I8X16, le, y),
        );
        [[0, 4, 1, 5], [2, 6, 3, 7]].map(|lanes| {
            let z = self.pick_lanes(bx, by, lanes);
            self.b.ins().bitcast(F32X4, le, z)
        })
    }
}

/// How a convolution is computed (chosen from its spec; see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvMethod {
    /// Direct convolution on register tiles of pixels x 8 output channels.
    Direct,
    /// 1x1 without padding: a GEMM vectorised along pixels (with a stride, on a copy of the
    /// sampled pixels).
    PointwiseGemm,
    /// 3x3 stride 1: Winograd F(4x4, 3x3).
    Winograd,
    /// 3x3 stride 1: Winograd F(2x2, 3x3), for small outputs (few 4x4 tiles).
    Winograd2,
}

/// `3x32x32 input, 16 filters 3x3, stride 1x1, pad 1x1`: the shapes, for messages.
impl std::fmt::Display for ConvSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self;
        let filters = format!("{} filters {}x{}", s.out_c, s.kernel_h, s.kernel_w);
        let input = [s.in_c, s.in_h, s.in_w];
        describe_window(
            f,
            input,
            &filters,
            [s.stride_h, s.stride_w],
            [s.pad_h, s.pad_w],
        )
    }
}

/// `<c>x<h>x<w> input, <window>, stride <h>x<w>, pad <h>x<w>` (conv and pool messages).
pub(super) fn describe_window(
    f: &mut std::fmt::Formatter<'_>,
    [c, h, w]: [usize; 3],
    window: &str,
    [sh, sw]: [usize; 2],
    [ph, pw]: [usize; 2],
) -> std::fmt::Result {
    write!(
        f,
        "{c}x{h}x{w} input, {window}, stride {sh}x{sw}, pad {ph}x{pw}"
    )
}

impl std::fmt::Display for ConvMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvMethod::Direct => "direct",
            ConvMethod::PointwiseGemm => "pointwise-gemm",
            ConvMethod::Winograd => "winograd-f4x4",
            ConvMethod::Winograd2 => "winograd-f2x2",
        })
    }
}

#[derive(Clone, Debug)]
enum Plan {
    Direct(DirectPlan),
    /// The direct convolution on the wide micro-kernels (at avx2 / avx512).
    Implicit(ImplicitGemm),
    /// The same with few input channels: im2col bands (at avx2 / avx512).
    Im2col(Im2colGemm),
    Gemm(PixelGemm),
    Winograd(WinogradPlan),
}

impl ConvMethod {
    /// What computes the tiles of `spec` with this method at `isa`, e.g. `avx512 14x32`
    /// (see [`ConvKernel::micro_kernel`]); empty if the method cannot compute `spec`.
    pub fn micro_kernel(&self, spec: &ConvSpec, isa: Isa) -> String {
        Plan::with_method(spec, *self, isa).map_or_else(|_| String::new(), |p| p.micro_kernel())
    }

    /// The fastest method for `spec` at `isa` on this host (Winograd only if `winograd`
    /// allows it and its cost model expects it to beat the direct kernel: see
    /// `WinogradPlan::beats_direct`; at avx512 that depends on [`host_zmm_fma`]).
    pub fn for_spec(spec: &ConvSpec, winograd: bool, isa: Isa) -> ConvMethod {
        // Measured (once per process) only where it can matter.
        let zmm = match isa {
            Isa::Avx512 if winograd && WinogradPlan::has_shape(spec) => host_zmm_fma(),
            _ => ZmmFma::Full,
        };
        Self::for_host(spec, winograd, isa, zmm)
    }

    /// [`Self::for_spec`] on a host whose 512-bit multiply-adds are `zmm`.
    pub fn for_host(spec: &ConvSpec, winograd: bool, isa: Isa, zmm: ZmmFma) -> ConvMethod {
        let winograd_wins =
            || WinogradPlan::fastest(spec, isa, zmm).filter(|w| w.beats_direct(isa, zmm));
        if let Some(w) = winograd.then(winograd_wins).flatten() {
            match w.has_small_tiles() {
                true => ConvMethod::Winograd2,
                false => ConvMethod::Winograd,
            }
        } else if spec.is_pointwise()
            || (spec.is_strided_pointwise()
                && x86::width(isa).is_some()
                && !Self::strided_on_implicit(spec, isa))
        {
            // Strided, the GEMM pays a copy of the sampled pixels, which the f32x4 direct
            // kernel (it samples in place) does not; the wide implicit GEMM packs them too.
            ConvMethod::PointwiseGemm
        } else {
            ConvMethod::Direct
        }
    }
}

impl ConvMethod {
    /// Whether a strided 1x1 runs on the implicit GEMM (method `Direct`) rather than the
    /// pointwise GEMM over a sampled copy: where that GEMM would go pixel major (the
    /// weight-major order reads a small sampled input once per channel block, and there the
    /// pointwise GEMM measured faster), and the implicit GEMM takes the layer (more than
    /// the im2col bands' 36 taps). Its strips across rows gather the sampled pixels into
    /// panels in L2, where the pointwise GEMM's prologue wrote a sampled copy of the whole
    /// input first (10-14% of those layers): 256 -> 512 from 56 (ResNet-50) 0.93x the time,
    /// 0.90x cold, 0.88x on two threads, 0.99x at avx2; 64 -> 128 from 56 (ResNet-18) 0.91x,
    /// 0.94x at avx2; weight major (512 -> 1024 from 28, 1024 -> 2048 from 14) 1.04x, so
    /// not there (`docs/jit-history.md`, session 14; on a Zen 3 host, session 21, 0.97x and
    /// 1.05x, best of runs). `CNNC_STRIDED_IMPLICIT=0` / `=1`, a measuring knob: never /
    /// wherever the implicit GEMM takes the layer.
    fn strided_on_implicit(spec: &ConvSpec, isa: Isa) -> bool {
        // The plans below divide by strides and channel counts: only a valid spec
        // (`add_conv` refuses the others with a message) may build them.
        let Some(w) = x86::width(isa).filter(|_| spec.validate().is_ok()) else {
            return false;
        };
        let spec = ConvSpec {
            residual_in_place: false,
            ..*spec
        };
        let pixel_major = matches!(
            Plan::for_method(&spec, ConvMethod::PointwiseGemm, isa),
            Ok(Plan::Gemm(g)) if !g.is_weight_major()
        );
        Im2colGemm::new(spec, w).is_none()
            && ImplicitGemm::new(spec, w).is_some()
            && crate::knobs::forced("CNNC_STRIDED_IMPLICIT").unwrap_or(pixel_major)
    }

    /// Whether this method at `isa` can read `spec`'s residual from its output buffer
    /// ([`ConvSpec::residual_in_place`]): it writes every output element once, after
    /// reading its residual, in the same unit. So far the pointwise GEMM whose reduction
    /// is one pass (no partial sums stored in the output first).
    pub fn reads_residual_in_place(&self, spec: &ConvSpec, isa: Isa) -> bool {
        let spec = ConvSpec {
            residual_in_place: false,
            ..*spec
        };
        spec.residual
            && Plan::with_method(&spec, *self, isa)
                .is_ok_and(|p| matches!(p, Plan::Gemm(g) if g.writes_each_output_once()))
    }
}

impl Plan {
    /// The plan computing `spec` with `method`, its GEMMs at `isa`, or an error if the
    /// method cannot.
    fn with_method(spec: &ConvSpec, method: ConvMethod, isa: Isa) -> Result<Plan> {
        if spec.residual_in_place && !method.reads_residual_in_place(spec, isa) {
            return Err(Error::Codegen(format!(
                "a {}x{}/{} convolution with the {method} method at {isa} cannot read its residual in place",
                spec.kernel_h, spec.kernel_w, spec.stride_h
            )));
        }
        Self::for_method(spec, method, isa)
    }
    fn for_method(spec: &ConvSpec, method: ConvMethod, isa: Isa) -> Result<Plan> {
        let unfit = || {
            Error::Codegen(format!(
                "a {}x{}/{} convolution cannot use the {method} method",
                spec.kernel_h, spec.kernel_w, spec.stride_h
            ))
        };
        Ok(match method {
            ConvMethod::Winograd => {
                Plan::Winograd(WinogradPlan::for_spec(spec, isa).ok_or_else(unfit)?)
            }
            ConvMethod::Winograd2 => {
                Plan::Winograd(WinogradPlan::small_tiles(spec, isa).ok_or_else(unfit)?)
            }
            ConvMethod::PointwiseGemm if spec.is_pointwise() || spec.is_strided_pointwise() => {
                let g = PixelGemm::new(
                    gemm::PixelGemmSpec {
                        in_c: spec.in_c,
                        out_c: spec.out_c,
                        pixels: spec.out_h() * spec.out_w(),
                        epilogue: spec.epilogue(),
                    },
                    isa,
                )
                .streamed()
                .residual_in_out(spec.residual_in_place);
                Plan::Gemm(if spec.is_strided_pointwise() {
                    g.subsampled(gemm::Subsample {
                        in_hw: (spec.in_h, spec.in_w),
                        out_hw: (spec.out_h(), spec.out_w()),
                        stride: (spec.stride_h, spec.stride_w),
                    })
                } else {
                    g
                })
            }
            ConvMethod::PointwiseGemm => return Err(unfit()),
            ConvMethod::Direct => {
                let wide = |w| match Im2colGemm::new(*spec, w) {
                    Some(p) => Some(Plan::Im2col(p)),
                    None => ImplicitGemm::new(*spec, w).map(Plan::Implicit),
                };
                x86::width(isa)
                    .and_then(wide)
                    .unwrap_or_else(|| Plan::Direct(DirectPlan::new(*spec)))
            }
        })
    }
    /// The plan for a pool of `threads` threads ([`KernelModule::set_threads`]): the
    /// weight-major pointwise GEMM in pixel parts ([`PixelGemm::in_parts`]).
    fn in_parts(self, threads: usize) -> Plan {
        match self {
            Plan::Gemm(g) => Plan::Gemm(g.in_parts(threads)),
            p => p,
        }
    }
    fn packed_len(&self) -> usize {
        match self {
            Plan::Direct(d) => d.packed_len(),
            Plan::Implicit(d) => d.packed_len(),
            Plan::Im2col(d) => d.packed_len(),
            Plan::Gemm(g) => g.packed_len(),
            Plan::Winograd(w) => w.packed_len(),
        }
    }
    /// Whether each thread of a pool needs a scratch of its own (`Temp` parts of
    /// `scratch_len` floats each, with no prologue).
    fn scratch_per_thread(&self) -> bool {
        match self {
            Plan::Winograd(w) => w.scratch_per_thread(),
            Plan::Im2col(d) => d.scratch_per_thread(),
            _ => false,
        }
    }
    /// Floats of the output: `spec`'s, or a fused max pool's.
    fn output_len(&self, spec: &ConvSpec) -> usize {
        match self {
            Plan::Im2col(d) => d.output_len(),
            _ => spec.output_len(),
        }
    }
    fn scratch_len(&self) -> usize {
        match self {
            Plan::Direct(d) => d.scratch_len(),
            Plan::Implicit(d) => d.scratch_len(),
            Plan::Im2col(d) => d.scratch_len(),
            Plan::Gemm(g) => g.scratch_len(),
            Plan::Winograd(w) => w.scratch_len(),
        }
    }
    fn micro_kernel(&self) -> String {
        match self {
            Plan::Direct(_) => "f32x4 direct".into(),
            Plan::Implicit(d) => d.micro_kernel(),
            Plan::Im2col(d) => d.micro_kernel(),
            Plan::Gemm(g) => g.micro_kernel(),
            Plan::Winograd(w) => w.micro_kernel(),
        }
    }
    fn method(&self) -> ConvMethod {
        match self {
            Plan::Direct(_) | Plan::Implicit(_) | Plan::Im2col(_) => ConvMethod::Direct,
            Plan::Gemm(_) => ConvMethod::PointwiseGemm,
            Plan::Winograd(w) if w.has_small_tiles() => ConvMethod::Winograd2,
            Plan::Winograd(_) => ConvMethod::Winograd,
        }
    }
    /// Work units of the prologue (input channels), when the kernel has one.
    fn prologue_units(&self) -> usize {
        match self {
            Plan::Direct(d) => d.spec.in_c,
            Plan::Implicit(d) => d.spec().in_c,
            Plan::Im2col(d) => d.spec().in_c,
            Plan::Gemm(g) => g.prologue_units(),
            Plan::Winograd(w) => w.prologue_units(),
        }
    }
    /// Chunks per thread on a pool ([`Entry::with_chunks_per_part`]).
    fn chunks_per_part(&self) -> usize {
        match self {
            Plan::Implicit(d) => d.chunks_per_part(),
            Plan::Winograd(w) => w.chunks_per_part(),
            _ => super::threads::CHUNKS_PER_PART,
        }
    }
    fn work_units(&self) -> usize {
        match self {
            Plan::Direct(d) => d.nkb,
            Plan::Implicit(d) => d.work_units(),
            Plan::Im2col(d) => d.work_units(),
            Plan::Gemm(g) => g.work_units(),
            Plan::Winograd(w) => w.work_units(),
        }
    }

    /// Packs PyTorch-layout weights `[out_c, in_c, kernel_h, kernel_w]` (and the bias
    /// `[out_c]` when `spec.bias`) into the order this plan's kernel reads them.
    fn pack(&self, spec: &ConvSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
        check_conv_weights(spec, weights, bias)?;
        let bias = bias.filter(|_| spec.bias);
        // Packers that write into zeros (their padding left as it is).
        let zeroed = |pack: &dyn Fn(&mut [f32])| {
            let mut out = HugeBuf::zeroed(self.packed_len(), "conv packed weights")?;
            pack(&mut out);
            Ok(out)
        };
        match self {
            Plan::Direct(d) => zeroed(&|out| d.pack_into(weights, bias, out)),
            Plan::Implicit(d) => zeroed(&|out| d.pack_into(weights, bias, out)),
            Plan::Im2col(d) => zeroed(&|out| d.pack_into(weights, bias, out)),
            // From 2 MiB up straight into the mapping, else into a vector of its own.
            Plan::Gemm(g) => match HugeBuf::to_overwrite(self.packed_len(), "conv packed weights")?
            {
                Some(mut buf) => {
                    g.pack_into(weights, bias, &mut buf)?;
                    Ok(buf)
                }
                None => Ok(HugeBuf::Small(g.packed(weights, bias)?)),
            },
            Plan::Winograd(w) => zeroed(&|out| w.pack_into(weights, bias, out)),
        }
    }
}

/// Packs PyTorch-layout weights `[out_c, in_c, kernel_h, kernel_w]` (and the bias `[out_c]`
/// when `spec.bias`) into the order the kernel [`KernelModule::add_conv`] generates for `spec`
/// reads them (with Winograd allowed, the default; otherwise use
/// [`PendingConv::pack_weights`]). Done once, at compile time.
pub fn pack_conv_weights(
    spec: &ConvSpec,
    weights: &[f32],
    bias: Option<&[f32]>,
) -> Result<HugeBuf> {
    spec.validate()?;
    let isa = Isa::default_level();
    Plan::with_method(spec, ConvMethod::for_spec(spec, true, isa), isa)?.pack(spec, weights, bias)
}

fn check_conv_weights(spec: &ConvSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<()> {
    if weights.len() != spec.weight_len() {
        return Err(Error::Weights(format!(
            "conv weights: expected {} values ({}x{}x{}x{}), got {}",
            spec.weight_len(),
            spec.out_c,
            spec.in_c,
            spec.kernel_h,
            spec.kernel_w,
            weights.len()
        )));
    }
    match (spec.bias, bias) {
        (true, Some(b)) if b.len() == spec.out_c => Ok(()),
        (true, Some(b)) => Err(Error::Weights(format!(
            "conv bias: expected {} values, got {}",
            spec.out_c,
            b.len()
        ))),
        (true, None) => Err(Error::Weights("conv bias missing".into())),
        (false, Some(_)) => Err(Error::Weights("conv has no bias but one was given".into())),
        (false, None) => Ok(()),
    }
}

impl PendingConv {
    /// Packs the layer's weights for this kernel (see [`pack_conv_weights`]).
    pub fn pack_weights(&self, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
        self.plan.pack(&self.spec, weights, bias)
    }
    /// The algorithm the kernel uses.
    pub fn method(&self) -> ConvMethod {
        self.plan.method()
    }
    /// What computes its tiles (see [`ConvKernel::micro_kernel`]).
    pub fn micro_kernel(&self) -> String {
        self.plan.micro_kernel()
    }
}

/// A conv with a prologue (padded copy, Winograd input transform) as a thread pool runs
/// it: the prologue split over input channels, then each phase split over its units, one
/// phase after the other.
#[derive(Clone)]
struct Parts {
    prologue: PendingId,
    /// Functions and their unit counts.
    phases: Vec<(PendingId, usize)>,
}

/// A convolution defined in a [`KernelModule`], not yet finalized.
#[derive(Clone)]
pub struct PendingConv {
    id: PendingId,
    /// With a prologue (padding, Winograd): how a thread pool runs the kernel.
    parts: Option<Parts>,
    spec: ConvSpec,
    plan: Plan,
    /// The module's threads when it was made ([`KernelModule::set_threads`]).
    threads: usize,
}

impl KernelModule {
    /// Generates the kernel for `spec` (once per module: the same spec again shares the
    /// code), with the method [`ConvMethod::for_spec`] picks.
    pub fn add_conv(&mut self, spec: &ConvSpec) -> Result<PendingConv> {
        spec.validate()?;
        self.add_conv_with(spec, ConvMethod::for_spec(spec, self.winograd, self.isa))
    }

    /// [`KernelModule::add_conv`] with the method chosen by the caller (an execution
    /// plan); an error if `method` cannot compute `spec`.
    pub fn add_conv_with(&mut self, spec: &ConvSpec, method: ConvMethod) -> Result<PendingConv> {
        spec.validate()?;
        if let Some(p) = self.convs.get(&(*spec, method, self.isa)) {
            if p.threads == self.threads {
                return Ok(p.clone());
            }
        }
        let plan = Plan::with_method(spec, method, self.isa)?.in_parts(self.threads);
        // The prologue, then the compute function over the entry's units.
        let units = plan.work_units();
        let one_phase = |(id, parts): (PendingId, Option<(PendingId, PendingId)>)| {
            let parts = parts.map(|(prologue, compute)| Parts {
                prologue,
                phases: vec![(compute, units)],
            });
            (id, parts)
        };
        let (id, parts) = match &plan {
            Plan::Direct(d) => one_phase(d.emit(self)?),
            Plan::Implicit(d) => {
                let compute = d.emit_compute(self)?;
                if d.padded() {
                    one_phase(with_padded_copy(self, spec, compute)?)
                } else {
                    (compute, None)
                }
            }
            Plan::Im2col(d) => {
                let compute = d.emit_compute(self)?;
                if d.padded() {
                    one_phase(with_padded_copy(self, spec, compute)?)
                } else {
                    (compute, None)
                }
            }
            Plan::Gemm(g) if g.is_subsampled() => {
                let (prologue, compute) = (g.emit_subsample(self)?, g.emit(self)?);
                let entry = define_entry(self, prologue, compute, spec.in_c)?;
                one_phase((entry, Some((prologue, compute))))
            }
            Plan::Gemm(g) => (g.emit(self)?, None),
            Plan::Winograd(w) if w.grouped() => (w.emit_grouped(self)?, None),
            Plan::Winograd(w) => {
                let f = w.emit(self)?;
                let entry = define_entry(self, f.prologue, f.compute, spec.in_c)?;
                let phases = vec![(f.products, w.product_units()), (f.output, spec.out_c)];
                let parts = Parts {
                    prologue: f.prologue,
                    phases,
                };
                (entry, Some(parts))
            }
        };
        let pending = PendingConv {
            id,
            parts,
            spec: *spec,
            plan,
            threads: self.threads,
        };
        self.convs
            .insert((*spec, method, self.isa), pending.clone());
        Ok(pending)
    }
}

impl KernelModule {
    /// The kernel of `spec` followed by the max pool `pool` on its output, as one kernel
    /// whose output is the pool's (an unpadded conv of few taps on im2col bands, see
    /// [`conv_max_pool_fuses`]; the same bits as the two layers); it packs its weights as
    /// `spec`'s direct kernel does.
    pub fn add_conv_max_pool(&mut self, spec: &ConvSpec, pool: &PoolSpec) -> Result<PendingConv> {
        spec.validate()?;
        let plan = x86::width(self.isa)
            .and_then(|w| Im2colGemm::with_max_pool(*spec, w, pool, self.threads))
            .ok_or_else(|| {
                Error::Codegen(format!(
                    "no fused kernel for a conv of {spec} and a max pool of {pool} at {}",
                    self.isa
                ))
            })?;
        let id = plan.emit_compute(self)?;
        Ok(PendingConv {
            id,
            parts: None,
            spec: *spec,
            plan: Plan::Im2col(plan),
            threads: self.threads,
        })
    }
}

/// Whether [`KernelModule::add_conv_max_pool`] takes `spec` followed by `pool` at `isa`.
pub fn conv_max_pool_fuses(spec: &ConvSpec, pool: &PoolSpec, isa: Isa) -> bool {
    spec.validate().is_ok()
        && x86::width(isa).is_some_and(|w| Im2colGemm::with_max_pool(*spec, w, pool, 1).is_some())
}

/// The entry function of a conv with a prologue: the prologue over all `channels` input
/// channels, then the compute function over the given range (the same buffer array).
pub(crate) fn define_entry(
    km: &mut KernelModule,
    prologue: PendingId,
    compute: PendingId,
    channels: usize,
) -> Result<PendingId> {
    km.define_calling::<ConvBufs<Value>>(&[prologue, compute], move |e, begin, end| {
        let (prologue, compute, bufs) = (e.callees[0], e.callees[1], e.bufs);
        let (c0, c1) = (e.iconst(0), e.iconst(channels as i64));
        e.b.ins().call(prologue, &[bufs, c0, c1]);
        e.b.ins().call(compute, &[bufs, begin, end]);
        Ok(())
    })
}

/// The compute function of a convolution on the wide micro-kernels `variants` (installed
/// once per module, `what` naming them) and the panel copies `copies`: a driver
/// ([`KernelModule::define_driver`]) whose `body` gets the conv buffers, its range and the
/// variants (`Emit::micros` in their order, then the copies').
pub(crate) fn define_gemm_driver(
    km: &mut KernelModule,
    what: &str,
    (variants, copies): (Vec<x86::MicroGemm>, &[x86::copy::PanelCopy]),
    body: impl FnOnce(&mut Emit, ConvBufs<Value>, Value, Value, &[x86::MicroGemm]) -> Result<()>,
) -> Result<PendingId> {
    define_gemm_driver_with_pools(km, what, (variants, &[], copies), body)
}

/// [`define_gemm_driver`] with wide max pool plane kernels `pools` too (a fused pool's):
/// `Emit::micros` holds the variants, then the pools, then the copies.
pub(crate) fn define_gemm_driver_with_pools(
    km: &mut KernelModule,
    what: &str,
    (variants, pools, copies): (
        Vec<x86::MicroGemm>,
        &[x86::pool::MaxPoolPlane],
        &[x86::copy::PanelCopy],
    ),
    body: impl FnOnce(&mut Emit, ConvBufs<Value>, Value, Value, &[x86::MicroGemm]) -> Result<()>,
) -> Result<PendingId> {
    // The sixth argument, `pf`, only where a kernel prefetches the next tile's outputs.
    let n_params = if variants.iter().any(|m| m.prefetch_out) {
        6
    } else {
        5
    };
    let mut ids: Vec<super::module::MicroId> = (variants.iter())
        .map(|m| km.add_micro_once(n_params, what, m, x86::MicroGemm::emit))
        .collect::<Result<_>>()?;
    for p in pools {
        ids.push(km.add_micro_once(2, "max pool plane", p, x86::pool::MaxPoolPlane::emit)?);
    }
    for c in copies {
        // A self-padding copy's fourth argument: the strip's first source row.
        let n_params = if c.pad.is_some() { 4 } else { 3 };
        ids.push(km.add_micro_once(n_params, "panel copy", c, x86::copy::PanelCopy::emit)?);
    }
    km.define_driver(&ids, move |e, b: ConvBufs<Value>, begin, end| {
        body(e, b, begin, end, &variants)
    })
}

/// Calls `copy`, one of the panel copies `copies` of a compute function defined by
/// [`define_gemm_driver`] (the last of its micro-kernels), with `(source, panel, channels)`.
pub(crate) fn call_panel_copy(
    e: &mut Emit,
    copies: &[x86::copy::PanelCopy],
    copy: &x86::copy::PanelCopy,
    args: &[Value],
) {
    let i = copies
        .iter()
        .position(|c| c == copy)
        .expect("a listed copy");
    let f = e.micros[e.micros.len() - copies.len() + i];
    e.b.ins().call(f, args);
}

slot_layout! {
    /// The buffer array of every conv function (entry, prologue, compute), in slot order.
    pub(crate) struct ConvBufs {
        /// `[in_c, in_h, in_w]`.
        input,
        /// The packed weights and bias.
        packed,
        /// `[out_c, out_h, out_w]`, null without residual.
        residual,
        out,
        /// Temporary storage: the padded copy and (Winograd) the transformed tiles.
        scratch,
    }
}

/// The slots a prologue uses: it reads `input` and writes `scratch`.
pub(crate) const PROLOGUE_USES: ConvBufs<bool> = ConvBufs {
    input: true,
    packed: false,
    residual: false,
    out: false,
    scratch: true,
};

impl ConvBufs<Slot> {
    /// The slots of a conv over everything, the prologue's use of the scratch aside.
    fn new(spec: &ConvSpec, plan: &Plan, scratch: Slot) -> Self {
        ConvBufs {
            input: Slot::read("conv input", spec.input_len()),
            packed: Slot::read("conv packed weights", plan.packed_len()),
            residual: Slot::read_if(
                spec.residual && !spec.residual_in_place,
                "conv residual",
                spec.output_len(),
            ),
            out: Slot::write("conv output", plan.output_len(spec)),
            scratch,
        }
    }
}

impl<'a> ConvBufs<Buf<'a>> {
    /// The caller's buffers.
    pub(crate) fn new(
        input: &'a [f32],
        packed: &'a [f32],
        residual: Option<&'a [f32]>,
        out: &'a mut [f32],
        scratch: &'a mut [f32],
    ) -> Self {
        ConvBufs {
            input: Buf::In(input),
            packed: Buf::In(packed),
            residual: Buf::opt(residual),
            out: Buf::Out(out),
            scratch: Buf::Out(scratch),
        }
    }
}

impl Pending for PendingConv {
    type Kernel = ConvKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<ConvKernel> {
        let (spec, plan) = (&self.spec, &self.plan);
        let scratch_len = plan.scratch_len();
        // The entry function makes its own padded copy (all channels) whatever the range: the
        // scratch is temporary storage of each call.
        let temp = Slot::temp("conv scratch", scratch_len);
        let entry = Entry::new(
            code,
            self.id,
            plan.work_units(),
            ConvBufs::<Slot>::new(spec, plan, temp).into_array(),
        )?
        .with_chunks_per_part(plan.chunks_per_part());
        let split = match &self.parts {
            Some(parts) => {
                // The prologue writes the scratch parts of its input channels; each phase
                // writes (Winograd) or reads only the parts of its units.
                let shared = Slot::write("conv scratch", scratch_len).or_longer();
                let prologue_slots = ConvBufs {
                    input: Slot::read("conv input", spec.input_len()),
                    packed: Slot::absent("conv packed weights"),
                    residual: Slot::absent("conv residual"),
                    out: Slot::absent("conv output"),
                    scratch: shared,
                };
                let prologue = Entry::new(
                    code,
                    parts.prologue,
                    plan.prologue_units(),
                    prologue_slots.into_array(),
                )?;
                let phases = (parts.phases.iter())
                    .map(|&(id, units)| {
                        let slots = ConvBufs::<Slot>::new(spec, plan, shared);
                        Entry::new(code, id, units, slots.into_array())
                            .map(|e| e.with_chunks_per_part(plan.chunks_per_part()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some((prologue, phases))
            }
            None => None,
        };
        Ok(ConvKernel {
            entry,
            split,
            spec: self.spec,
            packed_len: plan.packed_len(),
            scratch_len,
            scratch_per_thread: plan.scratch_per_thread(),
            output_len: plan.output_len(spec),
            method: plan.method(),
            micro_kernel: plan.micro_kernel(),
        })
    }
}

/// A compiled convolution, callable from any thread.
pub struct ConvKernel {
    /// The whole convolution over a range of output blocks (the prologue included).
    entry: Entry,
    /// With a prologue (padded copy, Winograd input transform): the prologue over input
    /// channels and the phases that together do what `entry`'s compute function does
    /// (Winograd: the products, then the output transform), each split on a pool.
    split: Option<(Entry, Vec<Entry>)>,
    spec: ConvSpec,
    packed_len: usize,
    scratch_len: usize,
    /// Whether `run_parallel` needs `scratch_len` floats per thread.
    scratch_per_thread: bool,
    output_len: usize,
    method: ConvMethod,
    micro_kernel: String,
}

impl ConvKernel {
    /// What computes its tiles: `f32x4 6x8` (Cranelift), `avx2 6x16` / `avx512 14x32` (x86
    /// micro-kernels, output channels x pixels), `f32x4 direct` (the direct convolution).
    pub fn micro_kernel(&self) -> &str {
        &self.micro_kernel
    }
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }
    /// The algorithm the generated code uses.
    pub fn method(&self) -> ConvMethod {
        self.method
    }
    /// Floats of the output: the spec's, or (a max pool fused in) the pool's.
    pub fn output_len(&self) -> usize {
        self.output_len
    }
    /// Length of the packed weights ([`pack_conv_weights`]).
    pub fn packed_len(&self) -> usize {
        self.packed_len
    }
    /// Floats of scratch memory each call of `run` needs (the zero-padded input copy; 0
    /// when unpadded). Concurrent calls need separate scratch buffers.
    pub fn scratch_len(&self) -> usize {
        self.scratch_len
    }
    /// Floats of scratch memory `run_parallel` needs on a pool of `threads` threads: the
    /// same as `run`, or (a Winograd layer run tile group by tile group, where each
    /// thread transforms its own groups) `scratch_len()` per thread.
    pub fn scratch_len_on(&self, threads: usize) -> usize {
        if self.scratch_per_thread {
            self.scratch_len * threads.max(1)
        } else {
            self.scratch_len
        }
    }
    /// Number of work units (blocks of output channels; a grouped Winograd layer: groups of
    /// tile rows); `run` computes the units in `range`.
    /// Every output element is computed by the same instructions whatever the split.
    pub fn work_units(&self) -> usize {
        self.entry.units()
    }

    /// Computes the output channel blocks in `range` of `out` (`[out_c, out_h, out_w]`).
    pub fn run(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        range: Range<usize>,
    ) -> Result<()> {
        let bufs = ConvBufs::<Buf>::new(input, packed, residual, out, scratch);
        self.entry.run(&mut bufs.into_array(), range)
    }

    /// All work units, split across `pool`'s threads. `scratch` must hold
    /// `scratch_len_on(pool.threads())` floats: the prologue (the padded copy, the input transform) is split over input
    /// channels first, then every thread reads it; then each phase is split in turn.
    pub fn run_parallel(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let Some((prologue, phases)) = &self.split else {
            // No prologue: the scratch is unused (`scratch_len` is 0).
            let bufs = ConvBufs::<Buf>::new(input, packed, residual, out, scratch);
            return self.entry.run_parallel(pool, &mut bufs.into_array());
        };
        let bufs = ConvBufs {
            input: Buf::In(input),
            packed: Buf::None,
            residual: Buf::None,
            out: Buf::None,
            scratch: Buf::Out(&mut *scratch),
        };
        prologue.run_parallel(pool, &mut bufs.into_array())?;
        for phase in phases {
            let bufs = ConvBufs::<Buf>::new(input, packed, residual, &mut *out, &mut *scratch);
            phase.run_parallel(pool, &mut bufs.into_array())?;
        }
        Ok(())
    }

    /// `run` over all work units, allocating the scratch buffer.
    pub fn run_all(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        let mut scratch = try_vec(self.scratch_len, 0.0f32, "conv scratch")?;
        self.run(
            input,
            packed,
            residual,
            out,
            &mut scratch,
            0..self.work_units(),
        )
    }
}
