//! Fully connected layer `out[n][k] = sum_c W[k][c] x[n][c] (+ bias[k]) (+ residual[n][k])`,
//! then optional ReLU, for the whole batch in one call.
//!
//! Vectorised along the reduction: an accumulator holds four partial sums of one (row `k`,
//! image `n`) pair over `c mod 4`, and is summed horizontally at the end. Per step of four
//! input features the kernel loads one x vector per image and one weight vector per row; at
//! batch 1 that is 9 loads for 8 FMAs over 128 bytes of weights (the fc is memory-bound: fc
//! 4096->1000 reads 16 MB of weights per call). Weights are packed per block of `R` rows as
//! `[C/4][R][4]` followed by the `C % 4` tail as `[C%4][R]`, so they are read sequentially,
//! from memory once per call: a block of `R * C` floats stays in L2 while the tiles of two
//! images each go over it. At batch 1 the kernel also calls a software prefetch for the
//! weights 8 KB ahead every 1 KB (Cranelift has no prefetch instruction).
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::cg::{fits, off, F32, F32X4, I64, MAX_DIM};
use super::entry::{check_len, Buf, Entry, Slot};
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId, PREFETCH_BYTES};
use super::threads::ThreadPool;
use crate::error::{Error, Result};

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
    /// Images per register tile (more images share a weight vector between more FMAs, which
    /// costs register copies; 3-4 images per tile measured slower than 2).
    fn nb(&self) -> usize {
        self.batch.min(2)
    }
    /// Weight rows (output features) per block: 8 accumulators in all.
    fn rows(&self) -> usize {
        if self.nb() == 1 {
            8
        } else {
            4
        }
    }
    fn nkb(&self) -> usize {
        self.out_features.div_ceil(self.rows())
    }
    /// Floats of the packed weights: `nkb` blocks of `rows * in` then the bias padded to
    /// `nkb * rows`.
    pub fn packed_len(&self) -> usize {
        let r = self.rows();
        self.nkb() * r * self.in_features + self.nkb() * r
    }
    pub fn validate(&self) -> Result<()> {
        let dims = [self.in_features, self.out_features, self.batch];
        if dims.iter().any(|&d| d > MAX_DIM) {
            return Err(Error::Unsupported(format!(
                "fc dimension over {MAX_DIM}: {self:?}"
            )));
        }
        if self.in_features == 0 || self.out_features == 0 || self.batch == 0 {
            return Err(Error::Shape(format!(
                "fc with an empty dimension: {self:?}"
            )));
        }
        let ok = fits(&[self.batch, self.in_features])
            && fits(&[self.batch, self.out_features])
            && fits(&[self.out_features + 8, self.in_features + 1]);
        if !ok {
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
    let (c, k, r) = (spec.in_features, spec.out_features, spec.rows());
    let c4 = c / 4 * 4;
    let mut out = vec![0.0f32; spec.packed_len()];
    for ki in 0..k {
        let (kb, kr) = (ki / r, ki % r);
        let blk = kb * r * c;
        for ci in 0..c4 {
            out[blk + ((ci / 4) * r + kr) * 4 + ci % 4] = weights[ki * c + ci];
        }
        for ci in c4..c {
            out[blk + r * c4 + (ci - c4) * r + kr] = weights[ki * c + ci];
        }
    }
    match (spec.bias, bias) {
        (true, Some(b)) => {
            check_len("fc bias", b.len(), k).map_err(|e| Error::Weights(e.to_string()))?;
            let base = spec.nkb() * r * c;
            out[base..base + k].copy_from_slice(b);
        }
        (false, None) => {}
        (true, None) => return Err(Error::Weights("fc bias missing".into())),
        (false, Some(_)) => return Err(Error::Weights("fc has no bias but one was given".into())),
    }
    Ok(out)
}

/// Unroll of the reduction at batch 1.
const FC_UNROLL: usize = 2;

/// Software prefetch of the weights at batch 1 (`module::cnnc_prefetch`, called every
/// `PREFETCH_BYTES` = 1 KB of weights for the stretch `PREFETCH_AHEAD` bytes ahead). fc
/// 4096->1000 against a plain read of as many bytes (`examples/fcperf.rs`, alternating
/// runs): 75-79% without, 82-89% with (hot weights: 76-83% -> 87-104%). Chunks of 2 KB gave
/// 81-85%, 4 KB 77-78%, 512 B 85-87%; 4 KB ahead 75-81%, 12 KB 78-96%, 24 KB 75-76%.
///
/// The prefetch pays when the weights come from memory (as in a network, where the other
/// layers have evicted them since the last call) and costs when they are already in L3
/// (the same layer run back to back, `examples/fcthreads.rs`: 230-290 us without, 310-440
/// us with on one thread; 150-180 us against 180-260 us on two), through its extra
/// instructions (the call, the chunk sums: about 25% more per weight). Weights smaller than
/// L2 (`PREFETCH_MIN_BYTES`) stay hot between calls more often and are not prefetched.
const FC_PREFETCH: bool = true;
const PREFETCH_AHEAD: usize = 8192;
const PREFETCH_MIN_BYTES: usize = 1 << 20;

struct Args {
    x: Value,
    w: Value,
    res: Value,
    out: Value,
}

fn fc_body(s: &FcSpec, e: &mut Emit, p: &[Value]) -> Result<()> {
    let a = Args {
        x: p[0],
        w: p[1],
        res: p[2],
        out: p[3],
    };
    let (begin, end) = (p[4], p[5]);
    let nb = s.nb();
    let nfull = s.batch / nb;
    let rem = s.batch % nb;
    e.for_range(begin, end, 1, |e, kb| {
        e.for_const(0, nfull as i64, 1, |e, chunk| {
            let n0 = e.mul_imm(chunk, nb as i64);
            fc_tile(s, e, &a, kb, n0, nb)
        })?;
        if rem > 0 {
            let n0 = e.iconst((nfull * nb) as i64);
            fc_tile(s, e, &a, kb, n0, rem)?;
        }
        Ok(())
    })
}

/// Rows `kb*R ..` of the output for images `n0 .. n0 + nimg`.
fn fc_tile(s: &FcSpec, e: &mut Emit, a: &Args, kb: Value, n0: Value, nimg: usize) -> Result<()> {
    let (c, k, r) = (s.in_features, s.out_features, s.rows());
    let c4 = c / 4 * 4;
    let acc: Vec<Variable> = (0..r * nimg)
        .map(|_| {
            let v = e.b.declare_var(F32X4);
            let z = e.fzero(F32X4);
            e.b.def_var(v, z);
            v
        })
        .collect();
    let wo = e.mul_imm(kb, (r * c * 4) as i64);
    let wblk = e.b.ins().iadd(a.w, wo);
    let xo = e.mul_imm(n0, (c * 4) as i64);
    let xb = e.b.ins().iadd(a.x, xo);
    let wvar = e.b.declare_var(I64);
    e.b.def_var(wvar, wblk);
    // `FC_UNROLL` steps of 4 input features per iteration, then single steps. Each accumulator
    // gets one FMA per step; the steps' x vectors are the only operands live across the
    // unrolled body (Cranelift emits it accumulator by accumulator, see `conv`).
    let step = |e: &mut Emit, xp: Value, wp: Value, u: usize| {
        let xs: Vec<Value> = (0..nimg)
            .map(|n| e.load(F32X4, xp, off(n * c * 4 + u * 16)))
            .collect();
        for ri in 0..r {
            let wv = e.load(F32X4, wp, off((u * r + ri) * 16));
            for (n, &xv) in xs.iter().enumerate() {
                let i = ri * nimg + n;
                let av = e.b.use_var(acc[i]);
                let av = e.fmadd(wv, xv, av);
                e.b.def_var(acc[i], av);
            }
        }
    };
    let steps = c4 / 4;
    let unroll = if nimg == 1 { FC_UNROLL } else { 1 };
    let nmain = steps / unroll * unroll;
    let xmid = e.add_imm(xb, (nmain * 16) as i64);
    let main_iter = |e: &mut Emit, xp: Value| {
        let wp = e.b.use_var(wvar);
        for u in 0..unroll {
            step(e, xp, wp, u);
        }
        let wn = e.add_imm(wp, (unroll * r * 16) as i64);
        e.b.def_var(wvar, wn);
        Ok(())
    };
    // At batch 1 the weights stream from memory once: every `PREFETCH_BYTES` of them, a
    // call prefetches the stretch `PREFETCH_AHEAD` bytes further on. The call clobbers every
    // vector register, so each chunk sums into fresh accumulators, added at its end to the
    // totals kept in a stack slot (otherwise the register allocator keeps the accumulators
    // in the stack for the whole loop).
    let iter_bytes = unroll * r * 16;
    let per_chunk = (PREFETCH_BYTES / iter_bytes).max(1);
    let nchunks = if s.batch == 1 && FC_PREFETCH && s.weight_len() * 4 >= PREFETCH_MIN_BYTES {
        nmain / unroll / per_chunk
    } else {
        0
    };
    let xchunks = e.add_imm(xb, (nchunks * per_chunk * unroll * 16) as i64);
    let totals = if nchunks > 0 {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let slot = e.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (acc.len() * 16) as u32,
            4,
        ));
        // One address for the slot (a value per offset would tie up a register each).
        let sp = e.b.ins().stack_addr(I64, slot, 0);
        let z = e.fzero(F32X4);
        for i in 0..acc.len() {
            e.store(z, sp, off(i * 16));
        }
        let chunk_x = (per_chunk * unroll * 16) as i64;
        e.for_range(xb, xchunks, chunk_x, |e, xc| {
            let wp = e.b.use_var(wvar);
            let ahead = e.add_imm(wp, PREFETCH_AHEAD as i64);
            e.b.ins().call(e.prefetch_ref, &[ahead]);
            let z = e.fzero(F32X4);
            for &v in &acc {
                e.b.def_var(v, z);
            }
            let xc_end = e.add_imm(xc, chunk_x);
            e.for_range(xc, xc_end, (unroll * 16) as i64, main_iter)?;
            for (i, &v) in acc.iter().enumerate() {
                let t = e.load_rw(F32X4, sp, off(i * 16));
                let a = e.b.use_var(v);
                let t = e.b.ins().fadd(t, a);
                e.store(t, sp, off(i * 16));
            }
            Ok(())
        })?;
        let z = e.fzero(F32X4);
        for &v in &acc {
            e.b.def_var(v, z);
        }
        Some(sp)
    } else {
        None
    };
    if nmain > nchunks * per_chunk * unroll {
        e.for_range(xchunks, xmid, (unroll * 16) as i64, main_iter)?;
    }
    if steps > nmain {
        let xend = e.add_imm(xb, (steps * 16) as i64);
        e.for_range(xmid, xend, 16, |e, xp| {
            let wp = e.b.use_var(wvar);
            step(e, xp, wp, 0);
            let wn = e.add_imm(wp, (r * 16) as i64);
            e.b.def_var(wvar, wn);
            Ok(())
        })?;
    }
    if let Some(sp) = totals {
        // Totals of the chunks + the remaining steps.
        for (i, &v) in acc.iter().enumerate() {
            let t = e.load_rw(F32X4, sp, off(i * 16));
            let a = e.b.use_var(v);
            let t = e.b.ins().fadd(t, a);
            e.b.def_var(v, t);
        }
    }
    let wtail = e.add_imm(wblk, (r * c4 * 4) as i64);
    let bias_base = (s.nkb() * r * c * 4) as i64;
    let bo = e.mul_imm(kb, (r * 4) as i64);
    let bp = e.b.ins().iadd(a.w, bo);
    let bp = e.add_imm(bp, bias_base);
    // Output element (n0 + n, kb*R + ri) at byte ((n0 + n) * K + kb*R + ri) * 4.
    let no = e.mul_imm(n0, (k * 4) as i64);
    let ob = e.b.ins().iadd(a.out, no);
    let ob = e.b.ins().iadd(ob, bo);
    let rb = e.b.ins().iadd(a.res, no);
    let rb = e.b.ins().iadd(rb, bo);
    let tail = k % r;
    let store_row = |e: &mut Emit, ri: usize| {
        for n in 0..nimg {
            let v = e.b.use_var(acc[ri * nimg + n]);
            let l: Vec<Value> = (0..4).map(|i| e.b.ins().extractlane(v, i as u8)).collect();
            let s01 = e.b.ins().fadd(l[0], l[1]);
            let s23 = e.b.ins().fadd(l[2], l[3]);
            let mut y = e.b.ins().fadd(s01, s23);
            for t in 0..c - c4 {
                let wt = e.load(F32, wtail, off((t * r + ri) * 4));
                let xt = e.load(F32, xb, off((n * c + c4 + t) * 4));
                y = e.fmadd(wt, xt, y);
            }
            if s.bias {
                let b = e.load(F32, bp, off(ri * 4));
                y = e.b.ins().fadd(y, b);
            }
            let o = off((n * k + ri) * 4);
            if s.residual {
                let rr = e.load(F32, rb, o);
                y = e.b.ins().fadd(y, rr);
            }
            if s.relu {
                y = e.relu(y);
            }
            e.store(y, ob, o);
        }
    };
    let always = if tail == 0 { r } else { tail };
    for ri in 0..always {
        store_row(e, ri);
    }
    if tail != 0 {
        let is_tail = e.b.ins().icmp_imm_s(IntCC::Equal, kb, (s.nkb() - 1) as i64);
        e.unless(is_tail, |e| {
            for ri in always..r {
                store_row(e, ri);
            }
            Ok(())
        })?;
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
        let id = self.define(4, move |e, p| fc_body(&s, e, p))?;
        Ok(PendingFc { id, spec: *spec })
    }
}

impl Pending for PendingFc {
    type Kernel = FcKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<FcKernel> {
        let s = &self.spec;
        let slots = vec![
            Slot::read("fc input", s.input_len()),
            Slot::read("fc packed weights", s.packed_len()),
            Slot::read_if(s.residual, "fc residual", s.output_len()),
            Slot::write("fc output", s.output_len()),
        ];
        Ok(FcKernel {
            entry: Entry::new(code, self.id, s.nkb(), slots)?,
            spec: self.spec,
        })
    }
}

/// The caller's buffers in slot order: `[input, packed, residual, out]`.
fn fc_bufs<'a>(
    input: &'a [f32],
    packed: &'a [f32],
    residual: Option<&'a [f32]>,
    out: &'a mut [f32],
) -> [Buf<'a>; 4] {
    [
        Buf::In(input),
        Buf::In(packed),
        Buf::opt(residual),
        Buf::Out(out),
    ]
}

/// A compiled fully connected layer over the whole batch (weights are read once per call).
pub struct FcKernel {
    entry: Entry,
    spec: FcSpec,
}

impl FcKernel {
    /// The machine code's entry point, for callers that generate their own dispatch (a
    /// whole-network runtime): `extern "C" fn(bufs: *const *mut f32, begin, end: i64)`, C ABI,
    /// where `bufs` points to `[input, packed, residual, out]` (`residual` null when the spec
    /// has none), with the buffer sizes `run` checks. Valid while this kernel (or another
    /// holding the same `Compiled`) is alive.
    pub fn code_ptr(&self) -> *const u8 {
        self.entry.code_ptr()
    }
    pub fn spec(&self) -> &FcSpec {
        &self.spec
    }
    /// Work units: blocks of output features (8 at batch 1, else 4).
    pub fn work_units(&self) -> usize {
        self.entry.units()
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
        self.entry
            .run(&mut fc_bufs(input, packed, residual, out), range)
    }

    /// All work units, split across `pool`'s threads.
    pub fn run_parallel(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        self.entry
            .run_parallel(pool, &mut fc_bufs(input, packed, residual, out))
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
