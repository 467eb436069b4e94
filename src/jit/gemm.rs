//! Matrix products: the pointwise (1x1, stride 1) convolution `out[k][p] = sum_c W[k][c] x[c][p]`
//! vectorised along pixels, and the fully connected layer `out[n][k] = sum_c W[k][c] x[n][c]`
//! vectorised along output features. Strided 1x1 convolutions (ResNet's projection shortcut)
//! go through the direct convolution of [`super::conv`], which samples the pixels
//! `(y*s, x*s)` in place (broadcast loads at any stride, no copy).
//!
//! Both take the same epilogue as the convolution: bias, residual, ReLU, then one store.
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64};
use super::conv::{bcast_flags, check_len, check_range};
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId};
use crate::error::{Error, Result};

/// Output channels per block of the pointwise GEMM.
const MR: usize = 6;
/// f32x4 vectors of pixels per tile (8 pixels).
const NV: usize = 2;
const NP: usize = NV * 4;
/// Reduction unroll of the fc kernel (its accumulator sets alternate over these steps).
const FC_UNROLL: usize = 8;
/// Bytes of input a pixel panel may occupy (kept in L2 while all channel blocks use it).
const PANEL_BYTES: usize = 192 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PixelGemmSpec {
    pub in_c: usize,
    pub out_c: usize,
    pub pixels: usize,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
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
    pub(crate) fn packed_len(&self) -> usize {
        self.nmb * self.s.in_c * MR + self.nmb * MR
    }
    pub(crate) fn work_units(&self) -> usize {
        self.nmb
    }
    /// `[nmb][c][MR]` then the bias padded to `nmb * MR`.
    pub(crate) fn pack(&self, w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (c, k) = (self.s.in_c, self.s.out_c);
        let mut out = vec![0.0f32; self.packed_len()];
        for ki in 0..k {
            for ci in 0..c {
                out[((ki / MR) * c + ci) * MR + ki % MR] = w[ki * c + ci];
            }
        }
        if let Some(b) = bias {
            let base = self.nmb * c * MR;
            out[base..base + k].copy_from_slice(b);
        }
        out
    }

    /// Emits `fn(input, packed, residual, out, scratch(unused), begin, end)`.
    pub(crate) fn emit(&self, km: &mut KernelModule) -> Result<PendingId> {
        let g = self.clone();
        km.define(7, move |e, p| g.body(e, p))
    }

    fn body(&self, e: &mut Emit, p: &[Value]) -> Result<()> {
        let s = self.s;
        let (inp, w, res, out, begin, end) = (p[0], p[1], p[2], p[3], p[5], p[6]);
        let npix = s.pixels;
        let nfull = npix / self.panel;
        let ptr = Ptrs { inp, w, res, out };
        // Full panels: a runtime loop over panels, all tiles full.
        if nfull > 0 {
            e.for_const(
                0,
                (nfull * self.panel * 4) as i64,
                (self.panel * 4) as i64,
                |e, p0| {
                    e.for_range(begin, end, 1, |e, mb| {
                        let pend = e.add_imm(p0, (self.panel * 4) as i64);
                        e.for_range(p0, pend, (NP * 4) as i64, |e, pb| {
                            self.tile(e, &ptr, mb, pb, NV, 0)
                        })
                    })
                },
            )?;
        }
        // The last, partial panel, with the pixel tails.
        let rest = npix - nfull * self.panel;
        if rest > 0 {
            let p0 = nfull * self.panel;
            let ntiles = rest / NP;
            let r = rest % NP;
            e.for_range(begin, end, 1, |e, mb| {
                e.for_const(
                    (p0 * 4) as i64,
                    ((p0 + ntiles * NP) * 4) as i64,
                    (NP * 4) as i64,
                    |e, pb| self.tile(e, &ptr, mb, pb, NV, 0),
                )?;
                if r > 0 {
                    let pb = e.iconst(((p0 + ntiles * NP) * 4) as i64);
                    self.tile(e, &ptr, mb, pb, r / 4, r % 4)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// One tile: MR output channels of block `mb` by `nv` vectors + `ns` single pixels starting
    /// at byte offset `pb` within a channel plane.
    fn tile(
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
        let wo = e.mul_imm(mb, (c * MR * 4) as i64);
        let wblk = e.b.ins().iadd(ptr.w, wo);
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
        let bias_base = (self.nmb * c * MR * 4) as i64;
        let ko = e.mul_imm(mb, (MR * np * 4) as i64);
        let ob = e.b.ins().iadd(ptr.out, ko);
        let ob = e.b.ins().iadd(ob, pb);
        let rb = e.b.ins().iadd(ptr.res, ko);
        let rb = e.b.ins().iadd(rb, pb);
        let bp = if s.bias {
            let bo = e.mul_imm(mb, (MR * 4) as i64);
            let bp = e.b.ins().iadd(ptr.w, bo);
            Some(e.add_imm(bp, bias_base))
        } else {
            None
        };
        let tail = k % MR;
        let store_row = |e: &mut Emit, i: usize| {
            let bsc = bp.map(|bp| e.load(F32, bp, off(i * 4)));
            let bvec = if nv > 0 {
                bsc.map(|b| e.b.ins().splat(F32X4, b))
            } else {
                None
            };
            for (col, &(ty, o)) in cols.iter().enumerate() {
                let mut x = e.b.use_var(acc[i * ncol + col]);
                if let Some(b) = bsc {
                    let b = if ty == F32 { b } else { bvec.unwrap() };
                    x = e.b.ins().fadd(x, b);
                }
                let o = off(i * np * 4 + o);
                if s.residual {
                    let r = e.load(ty, rb, o);
                    x = e.b.ins().fadd(x, r);
                }
                if s.relu {
                    x = e.relu(x);
                }
                e.store(x, ob, o);
            }
        };
        let always = if tail == 0 { MR } else { tail };
        for i in 0..always {
            store_row(e, i);
        }
        if tail != 0 {
            let is_tail =
                e.b.ins()
                    .icmp_imm_s(IntCC::Equal, mb, (self.nmb - 1) as i64);
            let more = e.b.create_block();
            let done = e.b.create_block();
            e.b.ins().brif(is_tail, done, &[], more, &[]);
            e.b.switch_to_block(more);
            for i in always..MR {
                store_row(e, i);
            }
            e.b.ins().jump(done, &[]);
            e.b.switch_to_block(done);
        }
        Ok(())
    }
}

struct Ptrs {
    inp: Value,
    w: Value,
    res: Value,
    out: Value,
}

// ---------------------------------------------------------------------------------------------
// Fully connected layer.

/// Output features per block of the fc kernel (two f32x4 vectors).
const FKB: usize = 8;
/// Batch rows per register tile (at most 4: one distinct weight-load flag variant per row).
const FROWS: usize = 4;

/// `out[n][k] = sum_c W[k][c] x[n][c] (+ bias[k]) (+ residual[n][k])`, then optional ReLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FcSpec {
    pub in_features: usize,
    pub out_features: usize,
    pub batch: usize,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
}

impl FcSpec {
    pub fn new(in_features: usize, out_features: usize, batch: usize) -> Self {
        FcSpec {
            in_features,
            out_features,
            batch,
            bias: false,
            relu: false,
            residual: false,
        }
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_features
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_features
    }
    pub fn weight_len(&self) -> usize {
        self.in_features * self.out_features
    }
    pub fn flops(&self) -> u64 {
        2 * (self.weight_len() * self.batch) as u64
    }
    fn nkb(&self) -> usize {
        self.out_features.div_ceil(FKB)
    }
    /// Floats of the packed weights: `[nkb][in][8]` then the bias padded to `nkb * 8`.
    pub fn packed_len(&self) -> usize {
        self.nkb() * self.in_features * FKB + self.nkb() * FKB
    }
    pub fn validate(&self) -> Result<()> {
        if self.in_features == 0 || self.out_features == 0 || self.batch == 0 {
            return Err(Error::Shape(format!(
                "fc with an empty dimension: {self:?}"
            )));
        }
        let big = [self.input_len(), self.output_len(), self.packed_len()];
        if big
            .iter()
            .any(|&n| n.checked_mul(4).is_none_or(|b| b > i32::MAX as usize / 2))
        {
            return Err(Error::Unsupported(format!(
                "fc tensors over 1 GB are not supported: {self:?}"
            )));
        }
        Ok(())
    }
}

/// Packs PyTorch-layout fc weights `[out, in]` (and bias `[out]`) for the fc kernel.
pub fn pack_fc_weights(spec: &FcSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
    spec.validate()?;
    check_len("fc weights", weights.len(), spec.weight_len())
        .map_err(|e| Error::Weights(e.to_string()))?;
    let (c, k) = (spec.in_features, spec.out_features);
    let mut out = vec![0.0f32; spec.packed_len()];
    for ki in 0..k {
        for ci in 0..c {
            out[((ki / FKB) * c + ci) * FKB + ki % FKB] = weights[ki * c + ci];
        }
    }
    match (spec.bias, bias) {
        (true, Some(b)) => {
            check_len("fc bias", b.len(), k).map_err(|e| Error::Weights(e.to_string()))?;
            let base = spec.nkb() * c * FKB;
            out[base..base + k].copy_from_slice(b);
        }
        (false, None) => {}
        (true, None) => return Err(Error::Weights("fc bias missing".into())),
        (false, Some(_)) => return Err(Error::Weights("fc has no bias but one was given".into())),
    }
    Ok(out)
}

fn fc_body(s: &FcSpec, e: &mut Emit, p: &[Value]) -> Result<()> {
    let (x, w, res, out, begin, end) = (p[0], p[1], p[2], p[3], p[4], p[5]);
    let nfull = s.batch / FROWS;
    let rem = s.batch % FROWS;
    e.for_range(begin, end, 1, |e, kb| {
        if nfull > 0 {
            e.for_const(0, nfull as i64, 1, |e, chunk| {
                fc_tile(s, e, x, w, res, out, kb, chunk, FROWS)
            })?;
        }
        if rem > 0 {
            let chunk = e.iconst(nfull as i64);
            fc_tile(s, e, x, w, res, out, kb, chunk, rem)?;
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn fc_tile(
    s: &FcSpec,
    e: &mut Emit,
    x: Value,
    w: Value,
    res: Value,
    out: Value,
    kb: Value,
    chunk: Value,
    rows: usize,
) -> Result<()> {
    let (c, k) = (s.in_features, s.out_features);
    // Independent accumulator sets over the reduction so that at least 8 FMAs are in flight.
    let sets = (8 / (rows * 2)).clamp(1, 4);
    // Cranelift emits each accumulator's chain of FMAs with all of its loads first, so an
    // iteration gives every accumulator at most two FMAs (otherwise: many live loads, spills).
    let unroll = if rows == 1 { FC_UNROLL } else { 1 };
    let acc: Vec<Variable> = (0..sets * rows * 2)
        .map(|_| {
            let v = e.b.declare_var(F32X4);
            let z = e.fzero(F32X4);
            e.b.def_var(v, z);
            v
        })
        .collect();
    let wo = e.mul_imm(kb, (c * FKB * 4) as i64);
    let wblk = e.b.ins().iadd(w, wo);
    let xo = e.mul_imm(chunk, (FROWS * c * 4) as i64);
    let xb = e.b.ins().iadd(x, xo);
    let wvar = e.b.declare_var(I64);
    e.b.def_var(wvar, wblk);
    let step = |e: &mut Emit, xp: Value, wp: Value, n: usize| {
        for u in 0..n {
            let set = u % sets;
            for r in 0..rows {
                for v in 0..2 {
                    // Every FMA gets its own broadcast; at batch 1 also its own weight load (which
                    // becomes the FMA's memory operand), otherwise the rows share the weight
                    // registers.
                    let wflags = if rows == 1 {
                        bcast_flags(r)
                    } else {
                        super::cg::ro()
                    };
                    let wv =
                        e.b.ins()
                            .load(F32X4, wflags, wp, off((u * FKB + v * 4) * 4));
                    let xs =
                        e.b.ins()
                            .load(F32, bcast_flags(v), xp, off((r * c + u) * 4));
                    let xv = e.b.ins().splat(F32X4, xs);
                    let i = (set * rows + r) * 2 + v;
                    let a = e.b.use_var(acc[i]);
                    let a = e.fmadd(xv, wv, a);
                    e.b.def_var(acc[i], a);
                }
            }
        }
    };
    let nmain = c / unroll;
    let xend = e.add_imm(xb, (nmain * unroll * 4) as i64);
    if nmain > 0 {
        e.for_range(xb, xend, (unroll * 4) as i64, |e, xp| {
            let wp = e.b.use_var(wvar);
            step(e, xp, wp, unroll);
            let wn = e.add_imm(wp, (unroll * FKB * 4) as i64);
            e.b.def_var(wvar, wn);
            Ok(())
        })?;
    }
    if c % unroll > 0 {
        let wp = e.b.use_var(wvar);
        step(e, xend, wp, c % unroll);
    }
    // Reduce the sets pairwise, in a fixed order.
    let mut vals: Vec<Value> = (0..rows * 2).map(|i| e.b.use_var(acc[i])).collect();
    for set in 1..sets {
        for (i, v) in vals.iter_mut().enumerate() {
            let a = e.b.use_var(acc[set * rows * 2 + i]);
            *v = e.b.ins().fadd(*v, a);
        }
    }
    let bo = e.mul_imm(kb, (FKB * 4) as i64);
    let bp = e.b.ins().iadd(w, bo);
    let bp = e.add_imm(bp, (s.nkb() * c * FKB * 4) as i64);
    let oo = e.mul_imm(chunk, (FROWS * k * 4) as i64);
    let ob = e.b.ins().iadd(out, oo);
    let ob = e.b.ins().iadd(ob, bo);
    let rb = e.b.ins().iadd(res, oo);
    let rb = e.b.ins().iadd(rb, bo);
    for r in 0..rows {
        for v in 0..2 {
            let mut x = vals[r * 2 + v];
            if s.bias {
                let b = e.load(F32X4, bp, off(v * 16));
                x = e.b.ins().fadd(x, b);
            }
            vals[r * 2 + v] = x;
        }
    }
    let tail = k % FKB;
    let emit_store = |e: &mut Emit, r: usize, v: usize, lanes: Option<Range<usize>>| {
        let mut x = vals[r * 2 + v];
        let o = off((r * k + v * 4) * 4);
        match lanes {
            None => {
                if s.residual {
                    let rr = e.load(F32X4, rb, o);
                    x = e.b.ins().fadd(x, rr);
                }
                if s.relu {
                    x = e.relu(x);
                }
                e.store(x, ob, o);
            }
            Some(lanes) => {
                for l in lanes {
                    let mut y = e.b.ins().extractlane(x, l as u8);
                    let ol = o + (l * 4) as i32;
                    if s.residual {
                        let rr = e.load(F32, rb, ol);
                        y = e.b.ins().fadd(y, rr);
                    }
                    if s.relu {
                        y = e.relu(y);
                    }
                    e.store(y, ob, ol);
                }
            }
        }
    };
    if tail == 0 {
        for r in 0..rows {
            for v in 0..2 {
                emit_store(e, r, v, None);
            }
        }
    } else {
        // The last block holds `tail` valid features: store lane by lane there.
        let is_tail = e.b.ins().icmp_imm_s(IntCC::Equal, kb, (s.nkb() - 1) as i64);
        let full = e.b.create_block();
        let part = e.b.create_block();
        let done = e.b.create_block();
        e.b.ins().brif(is_tail, part, &[], full, &[]);
        e.b.switch_to_block(full);
        for r in 0..rows {
            for v in 0..2 {
                emit_store(e, r, v, None);
            }
        }
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(part);
        for r in 0..rows {
            for v in 0..2 {
                let lo = v * 4;
                if lo < tail {
                    emit_store(e, r, v, Some(0..(tail - lo).min(4)));
                }
            }
        }
        e.b.ins().jump(done, &[]);
        e.b.switch_to_block(done);
    }
    Ok(())
}

/// A fully connected layer defined in a [`KernelModule`], not yet finalized.
pub struct PendingFc {
    id: PendingId,
    spec: FcSpec,
}

impl KernelModule {
    pub fn add_fc(&mut self, spec: &FcSpec) -> Result<PendingFc> {
        spec.validate()?;
        let s = *spec;
        let id = self.define(6, move |e, p| fc_body(&s, e, p))?;
        Ok(PendingFc { id, spec: *spec })
    }
}

type FcFn = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, i64, i64);

impl Pending for PendingFc {
    type Kernel = FcKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<FcKernel> {
        let ptr = code.ptr(self.id)?;
        // SAFETY: defined with 6 i64 parameters, the signature of `FcFn`.
        let f = unsafe { std::mem::transmute::<*const u8, FcFn>(ptr) };
        Ok(FcKernel {
            _code: code.clone(),
            f,
            spec: self.spec,
        })
    }
}

/// A compiled fully connected layer over the whole batch (weights are read once per call).
pub struct FcKernel {
    _code: Arc<Compiled>,
    f: FcFn,
    spec: FcSpec,
}

impl FcKernel {
    pub fn spec(&self) -> &FcSpec {
        &self.spec
    }
    /// Work units: blocks of 8 output features.
    pub fn work_units(&self) -> usize {
        self.spec.nkb()
    }
    /// `input` is `[batch, in]`, `out` and `residual` are `[batch, out]`.
    pub fn run(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        range: Range<usize>,
    ) -> Result<()> {
        let s = &self.spec;
        check_len("fc input", input.len(), s.input_len())?;
        check_len("fc packed weights", packed.len(), s.packed_len())?;
        check_len("fc output", out.len(), s.output_len())?;
        let rp = match (s.residual, residual) {
            (true, Some(r)) => {
                check_len("fc residual", r.len(), s.output_len())?;
                r.as_ptr()
            }
            (false, None) => std::ptr::null(),
            _ => return Err(Error::Input("fc residual given iff spec.residual".into())),
        };
        check_range(&range, self.work_units())?;
        // SAFETY: lengths checked above; the kernel touches input[batch*in], packed[packed_len],
        // residual/out[batch*out] only, at addresses derived from the spec for blocks in range.
        unsafe {
            (self.f)(
                input.as_ptr(),
                packed.as_ptr(),
                rp,
                out.as_mut_ptr(),
                range.start as i64,
                range.end as i64,
            )
        };
        Ok(())
    }
    pub fn run_all(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.run(input, packed, residual, out, 0..self.work_units())
    }
}
