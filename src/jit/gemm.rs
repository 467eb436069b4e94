//! The pointwise (1x1, stride 1) convolution `out[k][p] = sum_c W[k][c] x[c][p]` as a GEMM
//! vectorised along pixels (the fully connected layer is in [`super::fc`]). Strided 1x1
//! convolutions (ResNet's projection shortcut) go through the direct convolution of
//! [`super::conv`], which samples the pixels `(y*s, x*s)` in place (broadcast loads at any
//! stride, no copy).
//!
//! The convolution's epilogue ([`super::epilogue`]), then one store.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64};
use super::conv::{bcast_flags, ConvBufs};
use super::epilogue::Epilogue;
use super::module::{Emit, KernelModule, PendingId};
use crate::error::Result;

/// Output channels per block of the pointwise GEMM.
pub(crate) const MR: usize = 6;
/// f32x4 vectors of pixels per tile (8 pixels).
const NV: usize = 2;
const NP: usize = NV * 4;
/// Bytes of input a pixel panel may occupy (kept in L2 while all channel blocks use it).
const PANEL_BYTES: usize = 192 * 1024;

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
    panel: usize,
}

impl PixelGemm {
    pub(crate) fn new(s: PixelGemmSpec) -> Self {
        let panel = (PANEL_BYTES / (4 * s.in_c) / NP).max(1) * NP;
        PixelGemm {
            s,
            nmb: s.out_c.div_ceil(MR),
            panel,
        }
    }
    /// Floats of the packed weight matrix alone (`[nmb][c][MR]`).
    pub(crate) fn weights_len(&self) -> usize {
        self.nmb * self.s.in_c * MR
    }
    pub(crate) fn packed_len(&self) -> usize {
        self.weights_len() + self.nmb * MR
    }
    /// Blocks of `MR` output channels.
    pub(crate) fn channel_blocks(&self) -> usize {
        self.nmb
    }
    /// Tile columns (NP pixels, the last one possibly partial) times channel blocks, pixel
    /// major: a contiguous range of units covers a contiguous range of pixels, so threads
    /// read disjoint parts of the input, and ranges split evenly.
    pub(crate) fn work_units(&self) -> usize {
        self.s.pixels.div_ceil(NP) * self.nmb
    }
    /// `[nmb][c][MR]` then the bias padded to `nmb * MR` into `out` (`packed_len()` zeros).
    pub(crate) fn pack_into(&self, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
        self.pack_weights_into(w, &mut out[..self.weights_len()]);
        if let Some(b) = bias {
            let base = self.weights_len();
            out[base..base + self.s.out_c].copy_from_slice(b);
        }
    }
    /// Packs the `[k][c]` matrix `w` into `out` (`weights_len()` floats, zero-initialised).
    pub(crate) fn pack_weights_into(&self, w: &[f32], out: &mut [f32]) {
        let (c, k) = (self.s.in_c, self.s.out_c);
        for ki in 0..k {
            for ci in 0..c {
                out[self.packed_index(ki, ci)] = w[ki * c + ci];
            }
        }
    }
    /// Where weight `(ki, ci)` goes in the packed matrix.
    pub(crate) fn packed_index(&self, ki: usize, ci: usize) -> usize {
        ((ki / MR) * self.s.in_c + ci) * MR + ki % MR
    }

    /// Emits the function over the conv buffers (the scratch unused).
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<PendingId> {
        let g = self.clone();
        km.define(move |e, b: ConvBufs<Value>, begin, end| g.body(e, b, begin, end))
    }

    fn body(&self, e: &mut Emit, b: ConvBufs<Value>, begin: Value, end: Value) -> Result<()> {
        let s = self.s;
        let ptr = Ptrs {
            inp: b.input,
            w: b.packed,
            res: b.residual,
            out: b.out,
        };
        let nmb = self.nmb as i64;
        let nt_full = (s.pixels / NP) as i64;
        let r = s.pixels % NP;
        let pt = (self.panel / NP) as i64;
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
        // (about PANEL_BYTES) stays in L2.
        e.for_range(t_lo, t_hi, pt, |e, p0| {
            let pend = e.add_imm(p0, pt);
            let pend = e.b.ins().smin(pend, t_hi);
            e.for_const(0, nmb, 1, |e, mb| {
                e.for_range(p0, pend, 1, |e, t| {
                    let u = e.mul_imm(t, nmb);
                    let u = e.b.ins().iadd(u, mb);
                    let c = in_range(e, u);
                    e.when(c, |e| {
                        let pb = e.mul_imm(t, (NP * 4) as i64);
                        self.tile(e, &ptr, mb, pb, NV, 0)
                    })
                })
            })
        })?;
        // The last, partial tile column (`r` pixels).
        if r > 0 {
            e.for_const(0, nmb, 1, |e, mb| {
                let u = e.add_imm(mb, nt_full * nmb);
                let c = in_range(e, u);
                e.when(c, |e| {
                    let pb = e.iconst(nt_full * (NP * 4) as i64);
                    self.tile(e, &ptr, mb, pb, r / 4, r % 4)
                })
            })?;
        }
        Ok(())
    }

    /// One tile: MR output channels of block `mb` by `nv` vectors + `ns` single pixels starting
    /// at byte offset `pb` within a channel plane (planes of `pixels` floats). Also the
    /// micro-kernel of the Winograd convolution's per-position GEMMs.
    pub(crate) fn tile(
        &self,
        e: &mut Emit,
        ptr: &Ptrs,
        mb: Value,
        pb: Value,
        nv: usize,
        ns: usize,
    ) -> Result<()> {
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

/// Base pointers of one GEMM: the input planes, the packed weights (of this GEMM), the
/// residual (read only with `residual`) and the output planes.
pub(crate) struct Ptrs {
    pub inp: Value,
    pub w: Value,
    pub res: Value,
    pub out: Value,
}
