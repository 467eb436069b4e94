//! Fully connected layer `out[n][k] = sum_c W[k][c] x[n][c] (+ bias[k]) (+ residual[n][k])`,
//! then optional ReLU and clip ([`super::epilogue`]), for the whole batch in one call.
//!
//! At batch > 1 the layer is a GEMM with the batch items as rows, on the wide micro-kernels
//! at avx2 / avx512 ([`super::fc_gemm`]). At batch 1 it is memory-bound (every weight is
//! used once): at avx2 / avx512 a Cranelift loop over blocks of 8 / 16 output features
//! calls the x86 kernel [`x86::fc_dot::FcDot`] once per block (full-width weight loads; no
//! software prefetch by default); at sse it runs on the f32x4 kernel below.
//!
//! The f32x4 kernel (sse) is vectorised along the reduction: an accumulator holds four partial sums of one (row `k`,
//! image `n`) pair over `c mod 4`, and is summed horizontally at the end. Per step of four
//! input features the kernel loads one x vector per image and one weight vector per row; at
//! batch 1 that is 9 loads for 8 FMAs over 128 bytes of weights (the fc is memory-bound: fc
//! 4096->1000 reads 16 MB of weights per call). Weights are packed per block of `R` rows as
//! `[C/4][R][4]` followed by the `C % 4` tail as `[C%4][R]`, so they are read sequentially,
//! from memory once per call. The kernel also calls a software prefetch for the
//! weights 8 KB ahead every 1 KB (Cranelift has no prefetch instruction).
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::cg::{fits, off, F32, F32X4, I64, MAX_DIM};
use super::entry::{check_len, slot_layout, Buf, Entry, Slot};
use super::epilogue::{Clip, Epilogue};
use super::fc_gemm::FcGemm;
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId, PREFETCH_BYTES};
use super::threads::ThreadPool;
use super::x86::{self, fc_dot::FcDot, Width};
use crate::error::{Error, Result};
use crate::memory::HugeBuf;
use crate::options::Isa;

/// `out[n][k] = sum_c W[k][c] x[n][c] (+ bias[k]) (+ residual[n][k])`, then optional ReLU
/// and clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FcSpec {
    pub in_features: usize,
    pub out_features: usize,
    pub batch: usize,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
    /// Clip after the ReLU (ReLU6: [`Clip::RELU6`]).
    pub clip: Option<Clip>,
}

/// `a batch of 2 x 400 features to 10`: the shapes, for messages.
impl std::fmt::Display for FcSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a batch of {} x {} features to {}",
            self.batch, self.in_features, self.out_features
        )
    }
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
            clip: None,
        }
    }
    /// What the kernel does to each accumulated value before storing it.
    pub(crate) fn epilogue(&self) -> Epilogue {
        Epilogue::new(self.bias, self.residual, self.relu, self.clip)
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
    /// What computes the layer's tiles at `isa`, for plans and profiles.
    pub fn micro_kernel(&self, isa: Isa) -> String {
        FcPlan::new(self, isa).micro_kernel()
    }
    /// Weight rows (output features) per block of the f32x4 batch-1 kernel (sse's, and
    /// every level's under `CNNC_FC_WIDE=0`): 8 accumulators.
    fn rows(&self) -> usize {
        8
    }
    fn nkb(&self) -> usize {
        self.out_features.div_ceil(self.rows())
    }
    /// Floats of the f32x4 batch-1 kernel's packed weights: `nkb` blocks of `rows * in`
    /// then the bias padded to `nkb * rows`.
    fn dot_packed_len(&self) -> usize {
        let r = self.rows();
        self.nkb() * r * self.in_features + self.nkb() * r
    }
    pub fn validate(&self) -> Result<()> {
        let dims = [self.in_features, self.out_features, self.batch];
        if dims.iter().any(|&d| d > MAX_DIM) {
            return Err(Error::Unsupported(format!(
                "an fc of {self} has a dimension over the limit of {MAX_DIM} (2^24)"
            )));
        }
        if self.in_features == 0 || self.out_features == 0 || self.batch == 0 {
            return Err(Error::Shape(format!(
                "an fc of {self} has an empty dimension"
            )));
        }
        if let Some(c) = self.clip {
            c.validate()?;
        }
        // The packings pad the features to whole blocks (at most 32 more outputs, 16 more
        // inputs).
        let ok = fits(&[self.batch, self.in_features])
            && fits(&[self.batch, self.out_features])
            && fits(&[self.out_features + 32, self.in_features + 16]);
        if !ok {
            return Err(Error::Unsupported(format!(
                "an fc of {self} has tensors over the 1 GiB a JIT kernel addresses; use a smaller batch"
            )));
        }
        Ok(())
    }
}

/// How an fc layer is computed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FcPlan {
    /// Batch 1 at sse: dot products vectorised along the reduction (this module).
    Dot,
    /// Batch 1 at avx2 / avx512: the x86 kernel per block of `lanes` features, software
    /// prefetch `prefetch` bytes ahead in the weights (0: none).
    Wide { width: Width, prefetch: usize },
    /// Batch > 1: a GEMM with the items as rows, at the plan's ISA.
    Rows(FcGemm),
}

impl FcPlan {
    pub(crate) fn new(s: &FcSpec, isa: Isa) -> Self {
        if s.batch == 1 {
            match x86::width(isa) {
                // `CNNC_FC_WIDE=0` (a measuring knob): the f32x4 kernel at every level.
                Some(width) if !crate::knobs::off("CNNC_FC_WIDE") => {
                    let prefetch = crate::knobs::number("CNNC_FC_PREFETCH")
                        .map_or(WIDE_PREFETCH, |b: usize| b / 64 * 64);
                    let p = FcPlan::Wide { width, prefetch };
                    // A kernel the generator refuses (a prefetch distance the
                    // displacement cannot hold): the f32x4 kernel. No features: no kernels,
                    // so not wide either (its driver calls the first block's kernel).
                    let ks = p.dot_kernels(s);
                    if !ks.is_empty() && ks.iter().all(|d| d.check().is_ok()) {
                        return p;
                    }
                    FcPlan::Dot
                }
                _ => FcPlan::Dot,
            }
        } else {
            FcPlan::Rows(FcGemm::new(*s, isa))
        }
    }
    /// What computes a tile, for profiles and plans.
    pub(crate) fn micro_kernel(&self) -> String {
        match self {
            FcPlan::Dot => "f32x4 dot 8 features".into(),
            FcPlan::Wide { width, prefetch } => {
                let pf = if *prefetch > 0 {
                    format!(", prefetch {prefetch} B")
                } else {
                    String::new()
                };
                format!("{} dot {} features{pf}", width.isa_name(), width.lanes())
            }
            FcPlan::Rows(g) => format!("batch rows, {}", g.micro_kernel()),
        }
    }
    fn packed_len(&self, s: &FcSpec) -> usize {
        match self {
            FcPlan::Dot => s.dot_packed_len(),
            FcPlan::Wide { width, .. } => Self::wide_packed_len(s, *width),
            FcPlan::Rows(g) => g.packed_len(),
        }
    }
    fn work_units(&self, s: &FcSpec) -> usize {
        match self {
            FcPlan::Dot => s.nkb(),
            FcPlan::Wide { width, .. } => Self::wide_blocks(s, *width),
            FcPlan::Rows(g) => g.work_units(),
        }
    }
    /// PyTorch-layout weights `[out, in]` (and bias `[out]`) in the order the plan's
    /// kernel reads them.
    fn pack(&self, spec: &FcSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
        spec.validate()?;
        check_len("fc weights", weights.len(), spec.weight_len())
            .map_err(|e| Error::Weights(e.to_string()))?;
        let bias = match (spec.bias, bias) {
            (true, Some(b)) => {
                check_len("fc bias", b.len(), spec.out_features)
                    .map_err(|e| Error::Weights(e.to_string()))?;
                Some(b)
            }
            (false, None) => None,
            (true, None) => return Err(Error::Weights("fc bias missing".into())),
            (false, Some(_)) => {
                return Err(Error::Weights("fc has no bias but one was given".into()))
            }
        };
        match self {
            FcPlan::Dot => pack_dot(spec, weights, bias),
            FcPlan::Wide { width, .. } => pack_wide(spec, *width, weights, bias),
            FcPlan::Rows(g) => {
                let mut out = HugeBuf::zeroed(self.packed_len(spec), "fc packed weights")?;
                g.pack_into(weights, bias, &mut out);
                Ok(out)
            }
        }
    }

    /// Blocks of `lanes` output features of the wide batch-1 kernel.
    fn wide_blocks(s: &FcSpec, width: Width) -> usize {
        s.out_features.div_ceil(FcDot::block_rows(width))
    }
    /// Floats of its packed weights and biases.
    fn wide_packed_len(s: &FcSpec, width: Width) -> usize {
        let blocks = Self::wide_blocks(s, width);
        blocks * (FcDot::block_len_for(width, s.in_features) + FcDot::block_rows(width))
    }

    /// The wide batch-1 kernels: for a full block, then (when the blocks do not divide the
    /// features) for the last one.
    fn dot_kernels(&self, s: &FcSpec) -> Vec<FcDot> {
        let FcPlan::Wide { width, prefetch } = *self else {
            return Vec::new();
        };
        let r = FcDot::block_rows(width);
        let ep = s.epilogue();
        let kernel = |rows| FcDot {
            width,
            c: s.in_features,
            rows,
            bias: ep.bias,
            residual: ep.residual,
            relu: ep.relu,
            clip: ep.clip.map(|c| (c.min.to_bits(), c.max.to_bits())),
            prefetch,
        };
        let mut v = Vec::new();
        if s.out_features >= r {
            v.push(kernel(r));
        }
        if !s.out_features.is_multiple_of(r) {
            v.push(kernel(s.out_features % r));
        }
        v
    }
}

/// Packs PyTorch-layout fc weights `[out, in]` (and bias `[out]`) for the fc kernel
/// [`KernelModule::add_fc`] generates for `spec` at the default ISA level
/// ([`Isa::default_level`]; for another level use [`PendingFc::pack_weights`]). At batch 1
/// the layout depends on the level (and on `CNNC_FC_WIDE`), and two layouts can have the
/// same length, which is all a kernel can check: a buffer packed for another level gives
/// wrong results without an error. Pack with the kernel's own [`PendingFc::pack_weights`]
/// wherever the level is not the default.
pub fn pack_fc_weights(spec: &FcSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
    spec.validate()?;
    FcPlan::new(spec, Isa::default_level()).pack(spec, weights, bias)
}

/// The batch-1 layout: per block of `R` rows `[C/4][R][4]`, then the `C % 4` tail as
/// `[C%4][R]`; then the bias padded to `nkb * R`.
fn pack_dot(spec: &FcSpec, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
    let (c, k, r) = (spec.in_features, spec.out_features, spec.rows());
    let c4 = c / 4 * 4;
    // Written in order into zeros, 4 floats of one row at a time (the block's `r` rows being
    // read stay in cache); the rows past `k` in the last block stay zero.
    let mut out = HugeBuf::zeroed(spec.dot_packed_len(), "fc packed weights")?;
    let mut at = 0;
    for kb in 0..spec.nkb() {
        let rows: Vec<&[f32]> = (kb * r..k.min(kb * r + r))
            .map(|ki| &weights[ki * c..ki * c + c])
            .collect();
        for ci4 in (0..c4).step_by(4) {
            for (j, row) in rows.iter().enumerate() {
                out[at + 4 * j..at + 4 * j + 4].copy_from_slice(&row[ci4..ci4 + 4]);
            }
            at += 4 * r;
        }
        for ci in c4..c {
            for (j, row) in rows.iter().enumerate() {
                out[at + j] = row[ci];
            }
            at += r;
        }
    }
    if let Some(b) = bias {
        out[at..at + k].copy_from_slice(&b[..k]);
    }
    Ok(out)
}

/// The wide batch-1 layout ([`x86::fc_dot`]): per block of `R = lanes` rows, per step of
/// `L = lanes` input features, the `R` rows' `L` weights (zero past the last input), row `l`
/// of the block at the slot whose sum the kernel's reduction puts in lane `l`
/// ([`FcDot::lane_slots`]); rows past the last feature zero. Then the bias, `R` per block.
fn pack_wide(
    spec: &FcSpec,
    width: Width,
    weights: &[f32],
    bias: Option<&[f32]>,
) -> Result<HugeBuf> {
    let (c, k, l) = (spec.in_features, spec.out_features, width.lanes());
    let r = FcDot::block_rows(width);
    let blocks = FcPlan::wide_blocks(spec, width);
    let steps = c.div_ceil(l);
    // The row of the block at each slot.
    let mut row_at = vec![0; r];
    for (lane, slot) in FcDot::lane_slots(width).into_iter().enumerate() {
        row_at[slot] = lane;
    }
    // Written in order into zeros (a block's `r` rows stay in cache while it is written).
    let len = FcPlan::wide_packed_len(spec, width);
    let mut buf = HugeBuf::zeroed(len, "fc packed weights")?;
    let (packed, biases) = buf.split_at_mut(blocks * r * steps * l);
    for (kb, block) in packed.chunks_exact_mut(r * steps * l).enumerate() {
        for (st, step) in block.chunks_exact_mut(r * l).enumerate() {
            let (c0, c1) = (st * l, (st * l + l).min(c));
            for (slot, dst) in step.chunks_exact_mut(l).enumerate() {
                let ki = kb * r + row_at[slot];
                if ki < k {
                    dst[..c1 - c0].copy_from_slice(&weights[ki * c + c0..ki * c + c1]);
                }
            }
        }
    }
    if let Some(b) = bias {
        biases[..k].copy_from_slice(&b[..k]);
    }
    Ok(buf)
}

/// The driver of the wide batch-1 kernel: for each block of `begin..end`, one call of
/// `kernels[0]` (full blocks) or, for the layer's last block when it is partial, of the
/// last kernel, with the input, the block's packed weights, outputs, residuals and biases.
fn wide_body(
    s: &FcSpec,
    kernels: &[FcDot],
    e: &mut Emit,
    a: FcBufs<Value>,
    (begin, end): (Value, Value),
) -> Result<()> {
    use cranelift_codegen::ir::condcodes::IntCC;
    let d = kernels[0];
    let r = FcDot::block_rows(d.width);
    let blocks = s.out_features.div_ceil(r);
    let bias_base = (blocks * d.block_len() * 4) as i64;
    let partial = !s.out_features.is_multiple_of(r);
    e.for_range(begin, end, 1, |e, kb| {
        let w = e.addr(a.packed, kb, d.block_len() * 4);
        let b = e.addr(a.packed, kb, r * 4);
        let b = e.add_imm(b, bias_base);
        let out = e.addr(a.out, kb, r * 4);
        let res = e.addr(a.residual, kb, r * 4);
        let args = [a.input, w, out, res, b];
        let call = |e: &mut Emit, i: usize| {
            let f = e.micros[i];
            e.b.ins().call(f, &args);
            Ok(())
        };
        if !partial {
            return call(e, 0);
        }
        if blocks == 1 {
            return call(e, kernels.len() - 1);
        }
        let is_last = e.b.ins().icmp_imm_s(IntCC::Equal, kb, blocks as i64 - 1);
        e.if_else(is_last, |e| call(e, 1), |e| call(e, 0))
    })
}

/// Software prefetch distance of the wide batch-1 kernel, bytes ahead in the weights (0:
/// none; `CNNC_FC_PREFETCH=n` for A/B). Its loop reads the weights as fast as a plain read
/// of the same bytes without it. `prefetcht0` 4 KB ahead, both-order pairs: neutral at one
/// thread from memory, about 5% faster at two, 25% slower from L3; off because of L3 (a
/// candidate: prefetch when the plan has two threads and the weights exceed L3;
/// docs/jit-history.md, session 16).
const WIDE_PREFETCH: usize = 0;

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

slot_layout! {
    /// The buffer array of the fc function, in slot order.
    pub(crate) struct FcBufs {
        /// `[batch, in]`.
        input,
        /// The packed weights and bias.
        packed,
        /// `[batch, out]`, null without residual.
        residual,
        /// `[batch, out]`.
        out,
    }
}

/// The batch-1 kernel: the blocks of output features `begin..end`.
fn dot_body(s: &FcSpec, e: &mut Emit, a: FcBufs<Value>, begin: Value, end: Value) -> Result<()> {
    e.for_range(begin, end, 1, |e, kb| {
        let n0 = e.iconst(0);
        FcTile::new(s, e, &a, kb, n0, 1).emit(e, &a, kb)
    })
}

/// Rows `kb*R ..` of the output for images `n0 .. n0 + nimg`: `R * nimg` accumulators of
/// four partial sums each.
struct FcTile<'a> {
    s: &'a FcSpec,
    nimg: usize,
    /// Rows (output features) per block.
    r: usize,
    /// The input features in whole vectors, `C` rounded down to 4.
    c4: usize,
    acc: Vec<Variable>,
    /// The block's weights, the images' first input and the running weight pointer.
    wblk: Value,
    xb: Value,
    wvar: Variable,
    /// Steps of 4 input features per iteration of the main loop.
    unroll: usize,
    n0: Value,
}

impl<'a> FcTile<'a> {
    fn new(
        s: &'a FcSpec,
        e: &mut Emit,
        a: &FcBufs<Value>,
        kb: Value,
        n0: Value,
        nimg: usize,
    ) -> Self {
        let (c, r) = (s.in_features, s.rows());
        let acc: Vec<Variable> = (0..r * nimg)
            .map(|_| {
                let v = e.b.declare_var(F32X4);
                let z = e.fzero(F32X4);
                e.b.def_var(v, z);
                v
            })
            .collect();
        let wblk = e.addr(a.packed, kb, r * c * 4);
        let xb = e.addr(a.input, n0, c * 4);
        let wvar = e.b.declare_var(I64);
        e.b.def_var(wvar, wblk);
        FcTile {
            s,
            nimg,
            r,
            c4: c / 4 * 4,
            acc,
            wblk,
            xb,
            wvar,
            unroll: if nimg == 1 { FC_UNROLL } else { 1 },
            n0,
        }
    }

    fn emit(&self, e: &mut Emit, a: &FcBufs<Value>, kb: Value) -> Result<()> {
        self.reduce(e)?;
        self.store(e, a, kb)
    }

    /// Step `u` of 4 input features from `xp` (input) and `wp` (weights). Each accumulator
    /// gets one FMA per step; the steps' x vectors are the only operands live across an
    /// unrolled body (Cranelift emits it accumulator by accumulator, see `conv`).
    fn step(&self, e: &mut Emit, xp: Value, wp: Value, u: usize) {
        let (c, r, nimg) = (self.s.in_features, self.r, self.nimg);
        let xs: Vec<Value> = (0..nimg)
            .map(|n| e.load(F32X4, xp, off(n * c * 4 + u * 16)))
            .collect();
        for ri in 0..r {
            let wv = e.load(F32X4, wp, off((u * r + ri) * 16));
            for (n, &xv) in xs.iter().enumerate() {
                let i = ri * nimg + n;
                let av = e.b.use_var(self.acc[i]);
                let av = e.fmadd(wv, xv, av);
                e.b.def_var(self.acc[i], av);
            }
        }
    }

    /// One iteration of the main loop: `unroll` steps.
    fn main_iter(&self, e: &mut Emit, xp: Value) -> Result<()> {
        let wp = e.b.use_var(self.wvar);
        for u in 0..self.unroll {
            self.step(e, xp, wp, u);
        }
        let wn = e.add_imm(wp, (self.unroll * self.r * 16) as i64);
        e.b.def_var(self.wvar, wn);
        Ok(())
    }

    /// The reduction over the whole vectors of input features: the main loop (its first
    /// part in prefetched chunks at batch 1, [`FcTile::prefetched_chunks`]), then single steps.
    fn reduce(&self, e: &mut Emit) -> Result<()> {
        let (s, xb, unroll) = (self.s, self.xb, self.unroll);
        let steps = self.c4 / 4;
        let nmain = steps / unroll * unroll;
        let xmid = e.add_imm(xb, (nmain * 16) as i64);
        let per_chunk = (PREFETCH_BYTES / (unroll * self.r * 16)).max(1);
        let nchunks = if s.batch == 1 && FC_PREFETCH && s.weight_len() * 4 >= PREFETCH_MIN_BYTES {
            nmain / unroll / per_chunk
        } else {
            0
        };
        let xchunks = e.add_imm(xb, (nchunks * per_chunk * unroll * 16) as i64);
        let totals = if nchunks > 0 {
            Some(self.prefetched_chunks(e, xchunks, per_chunk)?)
        } else {
            None
        };
        if nmain > nchunks * per_chunk * unroll {
            e.for_range(xchunks, xmid, (unroll * 16) as i64, |e, xp| {
                self.main_iter(e, xp)
            })?;
        }
        if steps > nmain {
            let xend = e.add_imm(xb, (steps * 16) as i64);
            e.for_range(xmid, xend, 16, |e, xp| {
                let wp = e.b.use_var(self.wvar);
                self.step(e, xp, wp, 0);
                let wn = e.add_imm(wp, (self.r * 16) as i64);
                e.b.def_var(self.wvar, wn);
                Ok(())
            })?;
        }
        if let Some(sp) = totals {
            // Totals of the chunks + the remaining steps.
            for (i, &v) in self.acc.iter().enumerate() {
                let t = e.load_rw(F32X4, sp, off(i * 16));
                let a = e.b.use_var(v);
                let t = e.b.ins().fadd(t, a);
                e.b.def_var(v, t);
            }
        }
        Ok(())
    }

    /// The main loop's iterations from `xb` to `xend` in chunks of `per_chunk`, at batch 1,
    /// where the weights stream from memory once: every `PREFETCH_BYTES` of them, a call
    /// prefetches the stretch `PREFETCH_AHEAD` bytes further on. The call clobbers every
    /// vector register, so each chunk sums into fresh accumulators, added at its end to the
    /// totals kept in a stack slot (otherwise the register allocator keeps the accumulators in
    /// the stack for the whole loop). Returns the address of the totals; the accumulators are
    /// zero again.
    fn prefetched_chunks(&self, e: &mut Emit, xend: Value, per_chunk: usize) -> Result<Value> {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let acc = &self.acc;
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
        let unroll = self.unroll;
        let chunk_x = (per_chunk * unroll * 16) as i64;
        e.for_range(self.xb, xend, chunk_x, |e, xc| {
            let wp = e.b.use_var(self.wvar);
            let ahead = e.add_imm(wp, PREFETCH_AHEAD as i64);
            e.b.ins().call(e.prefetch_ref, &[ahead]);
            let z = e.fzero(F32X4);
            for &v in acc {
                e.b.def_var(v, z);
            }
            let xc_end = e.add_imm(xc, chunk_x);
            e.for_range(xc, xc_end, (unroll * 16) as i64, |e, xp| {
                self.main_iter(e, xp)
            })?;
            for (i, &v) in acc.iter().enumerate() {
                let t = e.load_rw(F32X4, sp, off(i * 16));
                let a = e.b.use_var(v);
                let t = e.b.ins().fadd(t, a);
                e.store(t, sp, off(i * 16));
            }
            Ok(())
        })?;
        let z = e.fzero(F32X4);
        for &v in acc {
            e.b.def_var(v, z);
        }
        Ok(sp)
    }

    /// Per row and image: the horizontal sum of the accumulator, the `C % 4` tail features,
    /// the epilogue and the store.
    fn store(&self, e: &mut Emit, a: &FcBufs<Value>, kb: Value) -> Result<()> {
        let s = self.s;
        let ep = s.epilogue();
        let (c, k, r, c4, nimg) = (s.in_features, s.out_features, self.r, self.c4, self.nimg);
        let wtail = e.add_imm(self.wblk, (r * c4 * 4) as i64);
        let bias_base = (s.nkb() * r * c * 4) as i64;
        let bp = e.addr(a.packed, kb, r * 4);
        let bp = e.add_imm(bp, bias_base);
        // Output element (n0 + n, kb*R + ri) at byte ((n0 + n) * K + kb*R + ri) * 4.
        let no = e.mul_imm(self.n0, (k * 4) as i64);
        let bo = e.mul_imm(kb, (r * 4) as i64);
        let ob = e.b.ins().iadd(a.out, no);
        let ob = e.b.ins().iadd(ob, bo);
        let rb = e.b.ins().iadd(a.residual, no);
        let rb = e.b.ins().iadd(rb, bo);
        let block = e.channel_block(kb, r, k);
        e.each_channel(&block, 0, |e, ri| {
            for n in 0..nimg {
                let v = e.b.use_var(self.acc[ri * nimg + n]);
                let l: Vec<Value> = (0..4).map(|i| e.b.ins().extractlane(v, i as u8)).collect();
                let s01 = e.b.ins().fadd(l[0], l[1]);
                let s23 = e.b.ins().fadd(l[2], l[3]);
                let mut y = e.b.ins().fadd(s01, s23);
                for t in 0..c - c4 {
                    let wt = e.load(F32, wtail, off((t * r + ri) * 4));
                    let xt = e.load(F32, self.xb, off((n * c + c4 + t) * 4));
                    y = e.fmadd(wt, xt, y);
                }
                let b = ep.bias.then(|| e.load(F32, bp, off(ri * 4)));
                e.epilogue_store(&ep, y, b, (rb, ob), off((n * k + ri) * 4));
            }
        })
    }
}

/// A fully connected layer defined in a [`KernelModule`], not yet finalized.
pub struct PendingFc {
    id: PendingId,
    spec: FcSpec,
    plan: FcPlan,
}

impl KernelModule {
    /// The fc kernel for `spec`, at the module's ISA level ([`KernelModule::set_isa`]).
    pub fn add_fc(&mut self, spec: &FcSpec) -> Result<PendingFc> {
        spec.validate()?;
        self.add_fc_planned(spec, FcPlan::new(spec, self.isa()))
    }

    /// The fc kernel for `spec` computed as `plan` says.
    fn add_fc_planned(&mut self, spec: &FcSpec, plan: FcPlan) -> Result<PendingFc> {
        let s = *spec;
        let id = match &plan {
            // Streams the weights once (memory-bound): without the optimiser
            // ([`KernelModule::quickly`]; `CNNC_FC_OPT=1`, a measuring knob, keeps it) it
            // compiles ~3x faster (vgg_cifar's 4096 -> 512: 0.44 ms).
            FcPlan::Dot if crate::knobs::forced("CNNC_FC_OPT") != Some(true) => self
                .quickly(|km| km.define(move |e, b, begin, end| dot_body(&s, e, b, begin, end)))?,
            FcPlan::Dot => self.define(move |e, b, begin, end| dot_body(&s, e, b, begin, end))?,
            FcPlan::Wide { .. } => {
                let kernels = plan.dot_kernels(&s);
                let ids: Vec<_> = (kernels.iter())
                    .map(|d| self.add_micro_once(5, "fc dot kernel", d, FcDot::emit))
                    .collect::<Result<_>>()?;
                self.define_driver(&ids, move |e, b, begin, end| {
                    wide_body(&s, &kernels, e, b, (begin, end))
                })?
            }
            FcPlan::Rows(g) => g.emit(self)?,
        };
        Ok(PendingFc {
            id,
            spec: *spec,
            plan,
        })
    }
}

impl PendingFc {
    /// Packs the layer's weights `[out, in]` (and bias) for this kernel.
    pub fn pack_weights(&self, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
        self.plan.pack(&self.spec, weights, bias)
    }
    /// What computes its tiles (see [`FcKernel::micro_kernel`]).
    pub fn micro_kernel(&self) -> String {
        self.plan.micro_kernel()
    }
}

impl Pending for PendingFc {
    type Kernel = FcKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<FcKernel> {
        let s = &self.spec;
        let slots = FcBufs {
            input: Slot::read("fc input", s.input_len()),
            packed: Slot::read("fc packed weights", self.plan.packed_len(s)),
            residual: Slot::read_if(s.residual, "fc residual", s.output_len()),
            out: Slot::write("fc output", s.output_len()),
        };
        let units = self.plan.work_units(s);
        Ok(FcKernel {
            entry: Entry::new(code, self.id, units, slots.into_array())?,
            spec: self.spec,
            plan: self.plan,
        })
    }
}

impl<'a> FcBufs<Buf<'a>> {
    /// The caller's buffers.
    fn new(
        input: &'a [f32],
        packed: &'a [f32],
        residual: Option<&'a [f32]>,
        out: &'a mut [f32],
    ) -> Self {
        FcBufs {
            input: Buf::In(input),
            packed: Buf::In(packed),
            residual: Buf::opt(residual),
            out: Buf::Out(out),
        }
    }
}

/// A compiled fully connected layer over the whole batch (weights are read once per call).
pub struct FcKernel {
    entry: Entry,
    spec: FcSpec,
    plan: FcPlan,
}

impl FcKernel {
    pub fn spec(&self) -> &FcSpec {
        &self.spec
    }
    /// What computes its tiles: at batch 1 `avx512 dot 16 features`, `avx2 dot 8 features`
    /// or `f32x4 dot 8 features`, else the batch-row GEMM's tile, e.g. `batch rows, avx512
    /// 8x32` (items x features).
    pub fn micro_kernel(&self) -> String {
        self.plan.micro_kernel()
    }
    /// Packs the layer's weights `[out, in]` (and bias) for this kernel, as
    /// [`PendingFc::pack_weights`] does.
    pub fn pack_weights(&self, weights: &[f32], bias: Option<&[f32]>) -> Result<HugeBuf> {
        self.plan.pack(&self.spec, weights, bias)
    }
    /// Floats of the packed weights it reads ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        self.plan.packed_len(&self.spec)
    }
    /// Work units: blocks of output features (at batch 1 16 with zmm, 8 with ymm or f32x4,
    /// else panels of the GEMM: 8 features with f32x4, 16 with ymm, 32 with zmm).
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
        let bufs = FcBufs::new(input, packed, residual, out);
        self.entry.run(&mut bufs.into_array(), range)
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
        let bufs = FcBufs::new(input, packed, residual, out);
        self.entry.run_parallel(pool, &mut bufs.into_array())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// No output features: no wide kernels to call, so the plan is the f32x4 one at every
    /// level (the wide driver indexes the first block's kernel).
    #[test]
    fn no_outputs_is_not_a_wide_plan() {
        for isa in Isa::host_levels() {
            let p = FcPlan::new(&FcSpec::new(37, 0, 1), isa);
            assert!(matches!(p, FcPlan::Dot), "{isa}");
        }
    }

    /// The wide batch-1 kernel with software prefetches (`CNNC_FC_PREFETCH`, off by
    /// default) gives the bits of the one without, at every wide level the host has: the
    /// prefetches only ask for lines (up to 16 KB past the packed weights: a prefetch never
    /// faults). Input and output tails, several blocks, every epilogue but clip.
    #[test]
    fn prefetching_changes_no_bits() {
        let levels = Isa::host_levels();
        let widths = levels.iter().filter_map(|&isa| x86::width(isa));
        for width in widths {
            for (c, k) in [(37, 19), (2048 + 5, 40), (16, 16), (3, 100)] {
                let mut s = FcSpec::new(c, k, 1);
                (s.bias, s.relu, s.residual) = (true, true, true);
                let w: Vec<f32> = (0..c * k).map(|i| (i % 29) as f32 * 0.1 - 1.4).collect();
                let b: Vec<f32> = (0..k).map(|i| i as f32 * 0.01).collect();
                let x: Vec<f32> = (0..c).map(|i| (i % 7) as f32 * 0.3 - 1.0).collect();
                let res: Vec<f32> = (0..k).map(|i| (i % 5) as f32 - 2.0).collect();
                let outs: Vec<Vec<f32>> = [0, 64, 4096, 16384]
                    .into_iter()
                    .map(|prefetch| {
                        let mut km = KernelModule::new().unwrap();
                        let plan = FcPlan::Wide { width, prefetch };
                        let p = km.add_fc_planned(&s, plan).unwrap();
                        let packed = p.pack_weights(&w, Some(&b)).unwrap();
                        let code = km.finalize().unwrap();
                        let kern = code.get(p).unwrap();
                        let mut out = vec![f32::NAN; k];
                        kern.run_all(&x, &packed, Some(&res), &mut out).unwrap();
                        assert!(out.iter().all(|v| v.is_finite()), "{s:?} {prefetch}");
                        out
                    })
                    .collect();
                for o in &outs[1..] {
                    let same = o
                        .iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{s:?} at {width:?}: prefetching changed the bits");
                }
            }
        }
    }
}
