//! The register-blocked GEMM micro-kernel, `out[i][j] = act((Σ_c w[c][i] x[c][j] + bias[i]) +
//! res[i][j])` for `rows` output rows by `cols` columns, with every size, stride and the
//! epilogue baked in.
//!
//! Calling convention (System V): `fn(x: *const f32, w: *const f32, out: *mut f32,
//! res: *const f32, bias: *const f32, pf: *const f32, pk: *mut f32)`.
//! * `x`: row `c` (of `k`) at `x + c * ldx`, `cols` floats each (the input pixels of one
//!   channel: NCHW planes, so the kernel reads them where they are, no packing);
//! * `w`: packed weights, step `c` at `w + c * w_stride`, `rows` floats each (one column of
//!   the layer's weight block);
//! * `out` / `res`: row `i` at `out + i * ldo`; `res` is read only with `residual`, `bias`
//!   (`rows` floats) only with `bias`;
//! * `pf`: only with `prefetch_every`, rows `pf + j * pf_ldx` to prefetch (a hint: a
//!   prefetch never faults, but the callers pass rows of their input all the same);
//! * `pk`: only with `pack`, where the kernel stores the x rows it reads, `[k][cols]`
//!   contiguous (the seventh argument, on the stack).
//!
//! The `rows x vectors` accumulators stay in registers for the whole reduction. Each step
//! loads the `vectors` x vectors once and multiplies each by every row's weight, broadcast
//! by one `vbroadcastss` per row (AVX-512 tiles of one vector: an embedded broadcast,
//! `vfmadd231ps zmm, zmm, [w]{1to16}`; see `bcst_in_reg`). The columns beyond the last full vector are
//! loaded and stored under a mask (AVX-512: `k1`, AVX2: `vmaskmovps`), so the kernel reads and
//! writes exactly the `rows x cols` elements (and `k x cols` inputs) it is given.
//! Tiles of 1-4 pixels can instead put the channels in the lanes (`MicroGemm::lanes`: one
//! accumulator per pixel, the step's `rows` weights in one masked load, `x` broadcast).
//! The sum runs over `c` in order with one fused multiply-add per step, starting from zero,
//! then `+ bias`, `+ residual`, the activation: the same operations in the same order as
//! the Cranelift kernels, so results are bit-identical across ISA levels.
use iced_x86::code_asm::{
    byte_ptr, dword_ptr, eax, get_xmm, get_ymm, k1, qword_ptr, r10, r11, r8, r9, rcx, rdi, rdx,
    rsi, rsp, ymmword_ptr, AsmMemoryOperand, AsmRegisterXmm, AsmRegisterYmm,
};
use iced_x86::Register;

use std::sync::Arc;

use super::vasm::{asm_err, Masks, Vasm, Width};
use crate::error::{Error, Result};
use crate::jit::module::{Compiled, KernelModule, MicroId, Pending};

/// Reduction steps per loop iteration (the rest are emitted after the loop).
pub(crate) const UNROLL: usize = 4;

/// Where a call sits in a reduction split into chunks (of channels, of taps): the only one
/// (from zero, then the epilogue), the first (from zero; stores the partial sums), a middle
/// one or the last (both from the stored sums, [`MicroGemm::accumulate`]; the last applies
/// the epilogue). The partial sums are stored as the f32 the registers held, so each output
/// is still one FMA chain in order, as with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KPos {
    Only,
    First,
    Middle,
    Last,
}

impl KPos {
    /// The positions that occur in a reduction of `chunks` chunks.
    pub(crate) fn of(chunks: usize) -> &'static [KPos] {
        match chunks {
            1 => &[KPos::Only],
            2 => &[KPos::First, KPos::Last],
            _ => &[KPos::First, KPos::Middle, KPos::Last],
        }
    }
}

/// One micro-kernel's shape and epilogue. Sizes in floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MicroGemm {
    pub width: Width,
    pub rows: usize,
    pub cols: usize,
    pub k: usize,
    pub w_stride: usize,
    pub ldx: usize,
    pub ldo: usize,
    /// Start from the values in `out` instead of zero (a later block of a reduction split
    /// into blocks: the sum goes on where the previous call stored it, so the result is the
    /// same as one call over the whole reduction, bit for bit).
    pub accumulate: bool,
    pub bias: bool,
    /// The bias is one value per column (`bias + j`) instead of one per row.
    pub bias_per_col: bool,
    pub residual: bool,
    /// `max(x, 0)`, keeping NaN and `-0.0` (as the Cranelift kernels' ReLU).
    pub relu: bool,
    /// Then `min(max(x, lo), hi)` (f32 bit patterns), keeping NaN (as their clip).
    pub clip: Option<(u32, u32)>,
    /// Software prefetch of rows of another tile, spread over the reduction: every
    /// `prefetch_every` steps (0: never) one cache line, the rows from a sixth argument `pf`
    /// in turn (step `j * prefetch_every` asks for `pf + j * ldx`). The caller picks which
    /// line of which rows, so that the calls of one tile column fetch the next one.
    pub prefetch_every: usize,
    /// Software prefetch of the weights' stream: each step asks for the line `prefetch_w`
    /// bytes past its weights (0: never), so that weights streamed from memory arrive
    /// before they are needed. The caller makes sure those lines are its own.
    pub prefetch_w: usize,
    /// The stride of the prefetched rows in floats (0: `ldx`).
    pub pf_ldx: usize,
    /// Prefetch for writing (`prefetchw`) the `rows x cols` outputs of the tile at `pf` (row
    /// `i` at `pf + i * ldo`; the next tile a caller will store), one row per iteration of
    /// the unrolled reduction loop (the first `rows` iterations), so that the next tile's
    /// stores find their lines owned instead of waiting for memory. Each row's lines are
    /// asked for at its first float, every 16 floats after it, and its last float: only
    /// lines of that row. Not with `prefetch_every` (both read `pf`).
    pub prefetch_out: bool,
    /// One more output column, `cols` (the pixel after the tile's last), computed with the
    /// channels in the lanes of one ymm accumulator (AVX-512 only, `w_stride == 8`, `rows <=
    /// 8`): step `c` multiplies the 8 packed weights of the step by the broadcast
    /// `x[extra_x / 4 + c * ldx]`; 0: none. A lone pixel after a full strip (a 7x7 output is
    /// 48 + 1 pixels) would otherwise cost a third of a strip's FMAs for one lane in 16.
    /// Each output is still one FMA chain over `c` in order, then the same epilogue
    /// (scalar), so the bits are those of a call for that pixel alone.
    pub extra_x: usize,
    /// The tile with the channels in the lanes (AVX-512, `rows <= w_stride <= 16`, at most
    /// [`LANES_COLS`] pixels, one reduction, no prefetch, pack or extra column): one zmm
    /// accumulator per pixel, each step one masked load of the step's `rows` packed weights
    /// and per pixel an FMA with its `x` broadcast from memory. For a tile column of a few
    /// pixels (14x14 planes on 14 x 32 end in 4), whose vector tile spends `rows` FMAs a step
    /// on them (14 for 4 pixels: 5-8% of the layer): `cols` FMAs and `cols + 1` loads. Each
    /// output is the same FMA chain in the same order (`x * w + acc`), and the epilogue the
    /// lone pixel's scalar one, so the bits are the vector tile's (for NaN inputs, NaN-ness:
    /// the FMA's operands are `w, [x]` where the tile's are `x, w`, so of two NaNs with
    /// different payloads another one may come out).
    pub lanes: bool,
    /// With [`Self::lanes`] at AVX2 ([`Self::emit_lane_blocks`]): the channel blocks one call
    /// computes for its one pixel (`cols == 1`), block `b`'s weights `block_stride` floats
    /// after block `b - 1`'s and its rows `b * w_stride ..` of `out`, `res` and `bias`; all
    /// blocks `w_stride` rows but the last, `rows`. 1 everywhere else.
    pub lane_blocks: usize,
    /// Floats from one block's packed weights to the next ([`Self::lane_blocks`]; 0 with one).
    pub block_stride: usize,
    /// Also store every x vector read at `pk + step * cols + j * lanes`: the tile's input
    /// packed contiguous, for the calls after it to read (full vectors only).
    pub pack: bool,
}

/// The most pixels a [`MicroGemm::lanes`] tile computes.
pub const LANES_COLS: usize = 4;

/// The most channel blocks of an AVX2 [`MicroGemm::lanes`] call (an accumulator each, with
/// the broadcast input, the last block's weights, the mask and the epilogue's temporaries
/// in the 16 ymm registers). `LANE_BLOCKS` chains of one FMA per step hide the FMA latency
/// (Zen 2: 5 cycles, 2 a cycle) with the load ports (`LANE_BLOCKS + 2` loads a step) busy.
pub const LANE_BLOCKS: usize = 8;

fn xmm(i: usize) -> AsmRegisterXmm {
    get_xmm(Register::XMM0 + i as u32).expect("xmm index below 32")
}
fn ymm(i: usize) -> AsmRegisterYmm {
    get_ymm(Register::YMM0 + i as u32).expect("ymm index below 32")
}

fn disp(bytes: usize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("x86 micro-kernel offset {bytes} exceeds i32")))
}

impl MicroGemm {
    /// Vector registers per row (the last one masked when `cols` is not a multiple).
    pub fn vectors(&self) -> usize {
        self.cols.div_ceil(self.width.lanes())
    }
    /// Columns in the masked last vector (0: none).
    pub fn tail(&self) -> usize {
        self.cols % self.width.lanes()
    }
    /// Floating-point operations of one call (two per multiply-add).
    pub fn flops(&self) -> usize {
        2 * self.rows * self.cols * self.k
    }

    /// Whether each step broadcasts a row's weight into a register once for its `vectors()`
    /// FMAs. AVX2 has no other way; with AVX-512 an embedded broadcast per FMA
    /// (`vfmadd231ps zmm, zmm, [w]{1to16}`) saves the register but loads the weight once per
    /// vector: with two vectors (14x32: 28 broadcast loads + 2 x loads per 28 FMAs) the load
    /// ports limit it. One `vbroadcastss` per row measured 6-7% faster on whole
    /// convolutions (pointwise 256->64 and 3x3/2 256 at 28, alternating runs), so AVX-512
    /// uses the register whenever one is left.
    fn bcst_in_reg(&self) -> bool {
        let nv = self.vectors();
        self.width != Width::Z512 || (nv > 1 && self.rows * nv + nv < self.width.registers())
    }

    /// A ReLU without clip (with a clip the two make one `max`, see `epilogue`).
    fn relu_alone(&self) -> bool {
        self.relu && self.clip.is_none()
    }

    /// The register that holds the AVX2 tail mask, if any.
    fn mask_reg(&self) -> Option<usize> {
        (self.width != Width::Z512 && self.tail() > 0).then_some(15)
    }

    /// Registers free after the reduction (the epilogue's temporaries).
    fn free_regs(&self) -> Vec<usize> {
        let m = self.mask_reg();
        let e = self.extra_regs().map(|(acc, _)| acc);
        (self.rows * self.vectors()..self.width.registers())
            .filter(|&r| Some(r) != m && Some(r) != e)
            .collect()
    }

    /// The extra column's accumulator and broadcast registers (the last two).
    fn extra_regs(&self) -> Option<(usize, usize)> {
        (self.extra_x > 0).then_some((31, 30))
    }

    /// Refuses shapes the generator cannot emit (too many accumulators, offsets beyond i32).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Codegen(format!("x86 micro-kernel {self:?}: {m}")));
        if self.width == Width::X128 {
            return bad("128-bit kernels are Cranelift's".into());
        }
        if self.rows == 0 || self.cols == 0 || self.k == 0 || self.rows > self.w_stride {
            return bad("empty, or more rows than the weight stride".into());
        }
        if self.prefetch_every > 0 && !UNROLL.is_multiple_of(self.prefetch_every) {
            return bad(format!("prefetch every {} steps", self.prefetch_every));
        }
        if self.prefetch_out && self.prefetch_every > 0 {
            return bad("two prefetch patterns of `pf`".into());
        }
        if self.pack && self.tail() > 0 {
            return bad("packing a partial vector".into());
        }
        if self.lanes && self.width == Width::Y256 {
            return self.check_lane_blocks();
        }
        if self.lane_blocks != 1 {
            return bad("several channel blocks in one call: AVX2 lanes only".into());
        }
        if self.lanes {
            let ok = self.width == Width::Z512
                && self.w_stride <= 16
                && self.cols <= LANES_COLS
                && self.plain_reduction();
            if !ok {
                return bad("channels in the lanes: a plain zmm tile of a few pixels".into());
            }
            disp((UNROLL * self.ldx + self.cols) * 4)?;
            disp(UNROLL * self.w_stride * 4)?;
            disp(((self.rows - 1) * self.ldo + self.cols) * 4)?;
            return Ok(());
        }
        let extra_ok = self.width == Width::Z512 && self.w_stride == 8 && self.rows <= 8;
        if self.extra_x > 0 && (!extra_ok || self.pack || !self.extra_x.is_multiple_of(4)) {
            return bad("an extra column needs 8-float zmm steps".into());
        }
        let nv = self.vectors();
        // Accumulators + the step's x vectors (+ the AVX2 broadcast register and mask).
        let extra = usize::from(self.bcst_in_reg());
        let used = self.rows * nv
            + nv
            + extra
            + usize::from(self.mask_reg().is_some())
            + 2 * usize::from(self.extra_x > 0);
        // The epilogue's temporary, zero for ReLU, the clip bounds.
        let temps = 1 + usize::from(self.relu_alone()) + 2 * usize::from(self.clip.is_some());
        if used > self.width.registers() || self.free_regs().len() < temps {
            return bad(format!("{used} registers needed"));
        }
        disp((UNROLL * self.ldx + self.cols) * 4)?;
        disp(UNROLL * self.w_stride * 4 + self.prefetch_w)?;
        disp(UNROLL * self.pf_stride() * 4)?;
        disp(self.ldo * 4 + self.cols * 4)?;
        disp(self.extra_x + UNROLL * self.ldx * 4)?;
        disp(self.rows * self.ldo * 4 + self.cols * 4)?;
        disp(UNROLL * self.cols * 4)?;
        disp(self.rows * self.ldo * 4)?;
        Ok(())
    }

    /// One reduction from zero with the per-row epilogue and nothing else: no accumulate,
    /// pack, per-column bias, extra column or prefetch (what the [`Self::lanes`] kernels take).
    fn plain_reduction(&self) -> bool {
        !self.accumulate
            && !self.pack
            && !self.bias_per_col
            && self.extra_x == 0
            && self.prefetch_every == 0
            && self.prefetch_w == 0
            && !self.prefetch_out
    }

    /// [`Self::check`] of an AVX2 [`Self::lanes`] kernel ([`Self::emit_lane_blocks`]).
    fn check_lane_blocks(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Codegen(format!("x86 micro-kernel {self:?}: {m}")));
        if !self.plain_reduction() || self.cols != 1 || self.w_stride > 8 {
            return bad("AVX2 channels in the lanes: one pixel, at most 8 rows a block");
        }
        if !(1..=LANE_BLOCKS).contains(&self.lane_blocks) {
            return bad("AVX2 channels in the lanes: 1 to LANE_BLOCKS blocks");
        }
        // A block but the last reads 8 floats a step (`w_stride` its own): up to 8 -
        // `w_stride` floats of its next step, or of the next block, which holds at least
        // `rows` floats after `block_stride` (so the reads stay in `operand_lens`).
        if self.lane_blocks > 1
            && (self.block_stride < self.k * self.w_stride || self.block_stride + self.rows < 8)
        {
            return bad("AVX2 channels in the lanes: overlapping or short blocks");
        }
        let last = self.lane_blocks - 1;
        disp(UNROLL * self.ldx * 4)?;
        disp((last * self.block_stride + UNROLL * self.w_stride) * 4)?;
        disp((last * self.w_stride + self.rows) * self.ldo * 4)?;
        Ok(())
    }

    /// The machine code (position independent).
    pub fn emit(&self) -> Result<Vec<u8>> {
        self.check()?;
        if self.lanes && self.width == Width::Y256 {
            return self.emit_lane_blocks();
        }
        if self.lanes {
            return self.emit_lanes();
        }
        let mut v = Vasm::new(self.width)?;
        // The extra column's ymm / xmm instructions name registers 16-31: EVEX only.
        v.a.set_prefer_vex(self.extra_x == 0);
        let mut masks = Masks::default();
        if self.tail() > 0 {
            // `mask_reg` is `Some` below AVX-512; AVX-512 sets `k1` and names no register.
            let reg = self.mask_reg().unwrap_or_default();
            masks.set(&mut v, (k1, reg), 0, self.tail())?;
        }
        self.reduction(&mut v)?;
        self.epilogue(&mut v)?;
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.finish()
    }

    /// The [`Self::lanes`] kernel. Registers: the accumulators of pixels `0..cols`, the
    /// step's weights (`cols`), then the epilogue's scalar, zero and clip bounds; `k1` holds
    /// the `rows` lanes (the weights' masked loads and the bias's add read only those, so
    /// nothing past the packed rows is touched).
    fn emit_lanes(&self) -> Result<Vec<u8>> {
        let mut v = Vasm::new(self.width)?;
        v.a.set_prefer_vex(false);
        let (cols, w) = (self.cols, self.cols);
        v.kmask(k1, 0, self.rows)?;
        for j in 0..cols {
            v.zero(j)?;
        }
        let step = |v: &mut Vasm, u: usize| -> Result<()> {
            v.load_k1(w, rsi + disp(u * self.w_stride * 4)?)?;
            for j in 0..cols {
                // `acc += w * x`: the vector tile's `acc += x * w` (one rounding).
                v.fma_bcst(j, w, rdi + disp((u * self.ldx + j) * 4)?)?;
            }
            Ok(())
        };
        // (`check` refuses prefetches and packing here: the loop only steps `rdi`, `rsi`.)
        self.reduction_loop(&mut v, self.k / UNROLL, false, step)?;
        for u in 0..self.k % UNROLL {
            step(&mut v, u)?;
        }
        // The epilogue: the bias as a vector (`acc + b`, as the vector rows' add), then
        // through the red zone (64 bytes below the stack pointer: a leaf function's own)
        // each row's residual, ReLU and clip as scalars in the vector rows' order, and the
        // store.
        let regs = (w + 1, w + 2, w + 3, w + 4);
        self.epilogue_constants(&mut v, regs)?;
        for j in 0..cols {
            if self.bias {
                v.add_mem_k1(j, j, r8 + 0)?;
            }
            v.store(rsp - 64, j)?;
            for i in 0..self.rows {
                v.a.vmovss(xmm(regs.0), dword_ptr(rsp - 64 + (i * 4) as i32))
                    .map_err(asm_err)?;
                self.scalar_epilogue(&mut v, regs, disp((i * self.ldo + j) * 4)?)?;
            }
        }
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        v.finish()
    }

    /// The AVX2 [`Self::lanes`] kernel: one pixel of [`Self::lane_blocks`] channel blocks,
    /// each block's channels in the lanes of one accumulator (registers `0..blocks`). Each
    /// step broadcasts the pixel's input into register `blocks` and multiplies it by every
    /// block's packed weights of the step: a memory operand (8 floats, see
    /// [`Self::check_lane_blocks`]), but for the last block a masked load of its `rows`
    /// lanes (register `blocks + 1` under the mask in register 15), so the call reads no
    /// weight past its last block's. For the one pixel a vector tile leaves after its full
    /// columns (7x7 planes on 16-pixel columns: 3 x 16 + 1), whose masked tile spends as
    /// many FMAs on it as on 16 pixels: here one FMA per block and step, with `blocks`
    /// independent chains to hide the FMA latency. Each output is the same FMA chain in the
    /// same order (`x * w + acc`, as the vector tile's), then the same epilogue as scalars.
    fn emit_lane_blocks(&self) -> Result<Vec<u8>> {
        let mut v = Vasm::new(self.width)?;
        let nb = self.lane_blocks;
        let (x, t, mask) = (nb, nb + 1, 15);
        let mut masks = Masks::default();
        masks.set(&mut v, (k1, mask), 0, self.rows)?;
        for b in 0..nb {
            v.zero(b)?;
        }
        let step = |v: &mut Vasm, u: usize| -> Result<()> {
            v.bcst(x, rdi + disp(u * self.ldx * 4)?)?;
            for b in 0..nb {
                let at = rsi + disp((b * self.block_stride + u * self.w_stride) * 4)?;
                if b + 1 < nb {
                    v.fma_mem(b, x, at)?;
                } else {
                    v.maskload(t, mask, at)?;
                    v.fma(b, x, t)?;
                }
            }
            Ok(())
        };
        self.reduction_loop(&mut v, self.k / UNROLL, false, step)?;
        for u in 0..self.k % UNROLL {
            step(&mut v, u)?;
        }
        // Each block's lanes through the red zone (32 bytes below the stack pointer: a leaf
        // function's own), then per row the bias, residual, ReLU and clip as scalars, in the
        // vector rows' order, and the store.
        let regs = (nb, nb + 1, nb + 2, nb + 3);
        self.epilogue_constants(&mut v, regs)?;
        for b in 0..nb {
            v.store(rsp - 32, b)?;
            let rows = if b + 1 < nb { self.w_stride } else { self.rows };
            for i in 0..rows {
                let row = b * self.w_stride + i;
                v.a.vmovss(xmm(regs.0), dword_ptr(rsp - 32 + (i * 4) as i32))
                    .map_err(asm_err)?;
                if self.bias {
                    v.a.vaddss(xmm(regs.0), xmm(regs.0), dword_ptr(r8 + disp(row * 4)?))
                        .map_err(asm_err)?;
                }
                self.scalar_epilogue(&mut v, regs, disp(row * self.ldo * 4)?)?;
            }
        }
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.finish()
    }

    /// The stride of the prefetched rows (floats).
    fn pf_stride(&self) -> usize {
        if self.pf_ldx == 0 {
            self.ldx
        } else {
            self.pf_ldx
        }
    }

    fn acc(&self, i: usize, j: usize) -> usize {
        i * self.vectors() + j
    }

    /// One reduction step `u` of an unrolled group: x row at `rdi + u * ldx`, weights at
    /// `rsi + u * w_stride`; with `out_row`, also its share of the prefetches of the output
    /// row at `r9` ([`Self::prefetch_out`]).
    fn step(&self, v: &mut Vasm, u: usize, out_row: bool) -> Result<()> {
        let (nv, lanes) = (self.vectors(), self.width.lanes());
        let xr = self.rows * nv;
        for j in 0..nv {
            let at = rdi + disp((u * self.ldx + j * lanes) * 4)?;
            if j + 1 == nv && self.tail() > 0 {
                match self.mask_reg() {
                    Some(m) => v.maskload(xr + j, m, at)?,
                    None => v.load_k1(xr + j, at)?,
                }
            } else {
                v.load(xr + j, at)?;
            }
            if self.pack {
                v.store(r11 + disp((u * self.cols + j * lanes) * 4)?, xr + j)?;
            }
        }
        let bc = xr + nv;
        let e = self.prefetch_every;
        if e > 0 && u.is_multiple_of(e) {
            // Into L1 (measured against `prefetcht2`, into L2: the same or slower).
            let at = r9 + disp((u / e) * self.pf_stride() * 4)?;
            v.a.prefetcht0(byte_ptr(at)).map_err(asm_err)?;
        }
        if self.prefetch_w > 0 {
            let at = rsi + disp(u * self.w_stride * 4 + self.prefetch_w)?;
            v.a.prefetcht0(byte_ptr(at)).map_err(asm_err)?;
        }
        if out_row {
            for (_, off) in
                (self.out_line_offsets().into_iter().enumerate()).filter(|(j, _)| j % UNROLL == u)
            {
                v.a.prefetchw(byte_ptr(r9 + disp(off)?)).map_err(asm_err)?;
            }
        }
        if let Some((acc, xb)) = self.extra_regs() {
            let at = rdi + disp(self.extra_x + u * self.ldx * 4)?;
            v.a.vbroadcastss(ymm(xb), dword_ptr(at)).map_err(asm_err)?;
            let w = rsi + disp(u * self.w_stride * 4)?;
            // `acc += x * w` per lane: the same FMA as a pixel lane's `acc += x * w`.
            v.a.vfmadd231ps(ymm(acc), ymm(xb), ymmword_ptr(w))
                .map_err(asm_err)?;
        }
        for i in 0..self.rows {
            let w = rsi + disp((u * self.w_stride + i) * 4)?;
            if !self.bcst_in_reg() {
                for j in 0..nv {
                    v.fma_bcst(self.acc(i, j), xr + j, w)?;
                }
            } else {
                v.bcst(bc, w)?;
                for j in 0..nv {
                    v.fma(self.acc(i, j), xr + j, bc)?;
                }
            }
        }
        Ok(())
    }

    /// Zeroes the accumulators (or loads them from `out`), then runs the `k` steps:
    /// `k / UNROLL` iterations of an unrolled loop, then the remaining steps straight.
    fn reduction(&self, v: &mut Vasm) -> Result<()> {
        let nv = self.vectors();
        if self.pack {
            // The seventh argument, above the return address.
            v.a.mov(r11, qword_ptr(rsp + 8)).map_err(asm_err)?;
        }
        for i in 0..self.rows {
            for j in 0..nv {
                let r = self.acc(i, j);
                if !self.accumulate {
                    v.zero(r)?;
                    continue;
                }
                let at = rdx + disp(i * self.ldo * 4 + j * self.width.bytes())?;
                match (j + 1 == nv && self.tail() > 0, self.mask_reg()) {
                    (false, _) => v.load(r, at)?,
                    (true, None) => v.load_k1(r, at)?,
                    (true, Some(m)) => v.maskload(r, m, at)?,
                }
            }
        }
        if let Some((acc, t)) = self.extra_regs() {
            if self.accumulate {
                // The stored partial sums of the column, one per row, gathered through the
                // red zone below the stack pointer (a leaf function's own).
                for i in 0..self.rows {
                    let at = rdx + disp(i * self.ldo * 4 + self.cols * 4)?;
                    v.a.vmovss(xmm(t), dword_ptr(at)).map_err(asm_err)?;
                    v.a.vmovss(dword_ptr(rsp - 32 + (i * 4) as i32), xmm(t))
                        .map_err(asm_err)?;
                }
                v.a.vmovups(ymm(acc), ymmword_ptr(rsp - 32))
                    .map_err(asm_err)?;
            } else {
                v.a.vxorps(ymm(acc), ymm(acc), ymm(acc)).map_err(asm_err)?;
            }
        }
        let iters = self.k / UNROLL;
        // The output prefetches go one row per iteration in the first iterations.
        let out_rows = if self.prefetch_out {
            iters.min(self.rows)
        } else {
            0
        };
        self.reduction_loop(v, out_rows, true, |v, u| self.step(v, u, true))?;
        self.reduction_loop(v, iters - out_rows, false, |v, u| self.step(v, u, false))?;
        for u in 0..self.k % UNROLL {
            self.step(v, u, false)?;
        }
        Ok(())
    }

    /// Byte offsets in an output row of `cols` floats at which [`Self::prefetch_out`] asks
    /// for a line: the row's first float, every 16 floats after it, and its last float.
    fn out_line_offsets(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.cols).step_by(16).map(|c| c * 4).collect();
        if !(self.cols - 1).is_multiple_of(16) {
            v.push((self.cols - 1) * 4);
        }
        v
    }

    /// `count` iterations of the unrolled reduction loop (`UNROLL` steps each); with
    /// `out_rows`, each also prefetches the output row at `r9` and moves `r9` a row on.
    fn reduction_loop(
        &self,
        v: &mut Vasm,
        count: usize,
        out_rows: bool,
        step: impl Fn(&mut Vasm, usize) -> Result<()>,
    ) -> Result<()> {
        v.counted_loop(r10, count, |v| {
            for u in 0..UNROLL {
                step(v, u)?;
            }
            v.a.add(rdi, disp(UNROLL * self.ldx * 4)?)
                .map_err(asm_err)?;
            v.a.add(rsi, disp(UNROLL * self.w_stride * 4)?)
                .map_err(asm_err)?;
            if self.prefetch_every > 0 {
                let rows = UNROLL.div_ceil(self.prefetch_every);
                v.a.add(r9, disp(rows * self.pf_stride() * 4)?)
                    .map_err(asm_err)?;
            }
            if out_rows {
                v.a.add(r9, disp(self.ldo * 4)?).map_err(asm_err)?;
            }
            if self.pack {
                v.a.add(r11, disp(UNROLL * self.cols * 4)?)
                    .map_err(asm_err)?;
            }
            Ok(())
        })
    }

    /// Bias, residual, activation and the store, row by row (`rdx`, `rcx` walk the rows).
    fn epilogue(&self, v: &mut Vasm) -> Result<()> {
        let (nv, bytes) = (self.vectors(), self.width.bytes());
        // `check` made sure there are enough free registers.
        let mut free = self.free_regs().into_iter();
        let mut take = || free.next().unwrap_or(0);
        let t = take();
        let zero = if self.relu_alone() { take() } else { 0 };
        let (lo, hi) = match self.clip {
            Some(_) => (take(), take()),
            None => (0, 0),
        };
        self.epilogue_constants(v, (t, zero, lo, hi))?;
        self.extra_epilogue(v, (t, zero, lo, hi))?;
        let masked = |j: usize| j + 1 == nv && self.tail() > 0;
        for i in 0..self.rows {
            if self.bias && !self.bias_per_col {
                let b = r8 + disp(i * 4)?;
                if self.width == Width::Z512 {
                    for j in 0..nv {
                        v.add_bcst(self.acc(i, j), self.acc(i, j), b)?;
                    }
                } else {
                    v.bcst(t, b)?;
                    for j in 0..nv {
                        v.add(self.acc(i, j), self.acc(i, j), t)?;
                    }
                }
            }
            for j in 0..nv {
                let a = self.acc(i, j);
                let at = disp(j * bytes)?;
                if self.bias && self.bias_per_col {
                    self.add_masked(v, (a, t), r8 + at, masked(j))?;
                }
                if self.residual {
                    self.add_masked(v, (a, t), rcx + at, masked(j))?;
                }
                if self.relu_alone() {
                    v.max(a, zero, a)?;
                }
                if self.clip.is_some() {
                    v.max(a, lo, a)?;
                    v.min(a, hi, a)?;
                }
                match (masked(j), self.mask_reg()) {
                    (false, _) => v.store(rdx + at, a)?,
                    (true, None) => v.store_k1(rdx + at, a)?,
                    (true, Some(m)) => v.maskstore(rdx + at, m, a)?,
                }
            }
            if i + 1 < self.rows {
                v.a.add(rdx, disp(self.ldo * 4)?).map_err(asm_err)?;
                if self.residual {
                    v.a.add(rcx, disp(self.ldo * 4)?).map_err(asm_err)?;
                }
            }
        }
        Ok(())
    }

    /// The extra column's epilogue (before the rows', while `rdx` and `rcx` point at row 0):
    /// the bias as a vector (one per lane, `a + b` as the rows' `+ bias`), then through the
    /// red zone row by row the residual, ReLU and clip as scalars (the same operations and
    /// operand order as the rows' vectors) and the store.
    fn extra_epilogue(
        &self,
        v: &mut Vasm,
        (t, zero, lo, hi): (usize, usize, usize, usize),
    ) -> Result<()> {
        let Some((acc, _)) = self.extra_regs() else {
            return Ok(());
        };
        if self.bias && !self.bias_per_col {
            v.a.vaddps(ymm(acc), ymm(acc), ymmword_ptr(r8))
                .map_err(asm_err)?;
        }
        v.a.vmovups(ymmword_ptr(rsp - 32), ymm(acc))
            .map_err(asm_err)?;
        for i in 0..self.rows {
            v.a.vmovss(xmm(t), dword_ptr(rsp - 32 + (i * 4) as i32))
                .map_err(asm_err)?;
            if self.bias && self.bias_per_col {
                v.a.vaddss(xmm(t), xmm(t), dword_ptr(r8 + disp(self.cols * 4)?))
                    .map_err(asm_err)?;
            }
            self.scalar_epilogue(
                v,
                (t, zero, lo, hi),
                disp(i * self.ldo * 4 + self.cols * 4)?,
            )?;
        }
        Ok(())
    }

    /// The epilogue's constants: zero for ReLU, the clip bounds. ReLU then clip is
    /// `max(x, max(lo, 0))` then `min`: the same values, NaN and `-0.0` included
    /// (`max(lo, max(0, x))`: both keep a NaN or `-0.0` x, and give `lo` where `lo > 0`
    /// exceeds `x`), with one register and one instruction less. (A NaN `lo` is a no-op in
    /// `max`: it becomes 0, the ReLU alone.)
    fn epilogue_constants(
        &self,
        v: &mut Vasm,
        (_, zero, lo, hi): (usize, usize, usize, usize),
    ) -> Result<()> {
        if self.relu_alone() {
            v.zero(zero)?;
        }
        if let Some((l, h)) = self.clip {
            let positive = f32::from_bits(l) > 0.0;
            let l = if self.relu && !positive {
                0.0f32.to_bits()
            } else {
                l
            };
            for (r, bits) in [(lo, l), (hi, h)] {
                v.a.mov(eax, bits as i32).map_err(asm_err)?;
                v.splat_eax(r)?;
            }
        }
        Ok(())
    }

    /// The rest of one output's epilogue as a scalar in `t` (the vector rows' operations in
    /// their order): the residual at `rcx + at`, ReLU, clip, and the store at `rdx + at`.
    fn scalar_epilogue(
        &self,
        v: &mut Vasm,
        (t, zero, lo, hi): (usize, usize, usize, usize),
        at: i32,
    ) -> Result<()> {
        if self.residual {
            v.a.vaddss(xmm(t), xmm(t), dword_ptr(rcx + at))
                .map_err(asm_err)?;
        }
        if self.relu_alone() {
            v.a.vmaxss(xmm(t), xmm(zero), xmm(t)).map_err(asm_err)?;
        }
        if self.clip.is_some() {
            v.a.vmaxss(xmm(t), xmm(lo), xmm(t)).map_err(asm_err)?;
            v.a.vminss(xmm(t), xmm(hi), xmm(t)).map_err(asm_err)?;
        }
        v.a.vmovss(dword_ptr(rdx + at), xmm(t)).map_err(asm_err)
    }

    /// `a += [at]`, a vector from memory, only the tail's lanes when `masked` (AVX2: through
    /// the temporary `t`).
    fn add_masked(
        &self,
        v: &mut Vasm,
        (a, t): (usize, usize),
        at: AsmMemoryOperand,
        masked: bool,
    ) -> Result<()> {
        match (masked, self.mask_reg()) {
            (false, _) => v.add_mem(a, a, at),
            (true, None) => v.add_mem_k1(a, a, at),
            (true, Some(m)) => {
                v.maskload(t, m, at)?;
                v.add(a, a, t)
            }
        }
    }

    /// Floats each operand must hold for one call: `(x, w, out and res, bias)`.
    /// Floats of `w` up to the end of the last line the weight prefetches ask for (0 without).
    pub fn w_reach(&self) -> usize {
        if self.prefetch_w == 0 {
            return 0;
        }
        ((self.k - 1) * self.w_stride * 4 + self.prefetch_w + 64).div_ceil(4)
    }

    pub fn operand_lens(&self) -> (usize, usize, usize, usize) {
        // The extra column: its x rows, 8 weights a step and 8 biases (`rows <= 8` of them
        // used), one more output per row (and bias per column).
        if self.lane_blocks > 1 {
            let before = (self.lane_blocks - 1) * self.w_stride;
            return (
                (self.k - 1) * self.ldx + 1,
                (self.lane_blocks - 1) * self.block_stride
                    + (self.k - 1) * self.w_stride
                    + self.rows,
                (before + self.rows - 1) * self.ldo + 1,
                before + self.rows,
            );
        }
        let extra = usize::from(self.extra_x > 0);
        let x_extra = extra * (self.extra_x / 4 + (self.k - 1) * self.ldx + 1);
        let rows_read = if extra > 0 { 8 } else { self.rows };
        (
            ((self.k - 1) * self.ldx + self.cols).max(x_extra),
            // The prefetches ask only for lines of `w` too.
            ((self.k - 1) * self.w_stride + rows_read).max(self.w_reach()),
            (self.rows - 1) * self.ldo + self.cols + extra,
            if self.bias_per_col {
                self.cols + extra
            } else {
                rows_read
            },
        )
    }

    /// Runs the kernel on slices, after checking that each holds what the kernel reads or
    /// writes ([`Self::operand_lens`]). For tests and benchmarks; the model's kernels call
    /// the micro-kernels from generated code.
    fn run_checked(
        &self,
        f: usize,
        (x, w, out): (&[f32], &[f32], &mut [f32]),
        (res, bias): (Option<&[f32]>, Option<&[f32]>),
        pack: Option<&mut [f32]>,
    ) -> Result<()> {
        let isa = if self.width == Width::Z512 {
            crate::Isa::Avx512
        } else {
            crate::Isa::Avx2
        };
        isa.check_host()?;
        self.check()?;
        let (nx, nw, no, nb) = self.operand_lens();
        let short = |what: &str, len: usize, need: usize| {
            Err(Error::Input(format!(
                "micro-kernel {what}: {len} floats, needs {need}"
            )))
        };
        if x.len() < nx {
            return short("x", x.len(), nx);
        }
        if w.len() < nw {
            return short("w", w.len(), nw);
        }
        if out.len() < no {
            return short("out", out.len(), no);
        }
        let res = match (self.residual, res) {
            (true, Some(r)) if r.len() >= no => r.as_ptr(),
            (true, r) => return short("residual", r.map_or(0, |r| r.len()), no),
            (false, _) => std::ptr::null(),
        };
        let bias = match (self.bias, bias) {
            (true, Some(b)) if b.len() >= nb => b.as_ptr(),
            (true, b) => return short("bias", b.map_or(0, |b| b.len()), nb),
            (false, _) => std::ptr::null(),
        };
        let npk = self.k * self.cols;
        let pack = match (self.pack, pack) {
            (true, Some(p)) if p.len() >= npk => p.as_mut_ptr(),
            (true, p) => return short("pack", p.map_or(0, |p| p.len()), npk),
            (false, _) => std::ptr::null_mut(),
        };
        type Micro = extern "C" fn(
            *const f32,
            *const f32,
            *mut f32,
            *const f32,
            *const f32,
            *const f32,
            *mut f32,
        );
        // SAFETY: `f` is this spec's code, installed in a module that the calling
        // `MicroGemmKernel` keeps alive (it is made only by `bind` below). The code reads
        // `x`, `w`, `res`, `bias` and writes `out` only within `operand_lens()` floats from
        // each pointer (the loads and stores of the last vector of a row are masked to
        // `cols`), checked above against the slices; `res` / `bias` are read only when the
        // spec has them, `pack` (`k x cols` floats) written only when it packs;
        // `check_host` made sure the CPU has the instructions.
        #[allow(unsafe_code)]
        let f: Micro = unsafe { std::mem::transmute(f as *const u8) };
        // A prefetching kernel asks for the lines of `x` itself, or for writing those of
        // its own `out` (a prefetch never faults).
        let pf = if self.prefetch_out {
            out.as_ptr()
        } else {
            x.as_ptr()
        };
        f(
            x.as_ptr(),
            w.as_ptr(),
            out.as_mut_ptr(),
            res,
            bias,
            pf,
            pack,
        );
        Ok(())
    }
}

/// A [`MicroGemm`] installed with [`KernelModule::add_micro_gemm`], before finalization.
pub struct PendingMicroGemm {
    id: MicroId,
    spec: MicroGemm,
}

impl KernelModule {
    /// Generates and installs `m` as a function of its own (for tests and benchmarks; the
    /// layers' kernels install theirs with [`KernelModule::add_micro`]).
    pub fn add_micro_gemm(&mut self, m: &MicroGemm) -> Result<PendingMicroGemm> {
        Ok(PendingMicroGemm {
            id: self.add_micro(7, &m.emit()?, "micro-kernel")?,
            spec: *m,
        })
    }
}

/// A callable micro-kernel; keeps its code alive.
pub struct MicroGemmKernel {
    _code: Arc<Compiled>,
    f: usize,
    spec: MicroGemm,
}

impl Pending for PendingMicroGemm {
    type Kernel = MicroGemmKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<MicroGemmKernel> {
        Ok(MicroGemmKernel {
            _code: code.clone(),
            f: code.micro_ptr(self.id)? as usize,
            spec: self.spec,
        })
    }
}

impl MicroGemmKernel {
    pub fn spec(&self) -> &MicroGemm {
        &self.spec
    }
    /// One call: `out = act(w x + bias + res)` (see the module documentation for the
    /// layouts). `Err` if a slice is too short, an operand the spec uses is missing, or the
    /// host lacks the ISA.
    pub fn run(
        &self,
        x: &[f32],
        w: &[f32],
        out: &mut [f32],
        res: Option<&[f32]>,
        bias: Option<&[f32]>,
    ) -> Result<()> {
        self.spec
            .run_checked(self.f, (x, w, out), (res, bias), None)
    }
    /// [`Self::run`] of a kernel that packs (`MicroGemm::pack`): also stores the `k x cols`
    /// inputs it reads into `pack`, contiguous.
    pub fn run_packing(
        &self,
        (x, w, out): (&[f32], &[f32], &mut [f32]),
        (res, bias): (Option<&[f32]>, Option<&[f32]>),
        pack: &mut [f32],
    ) -> Result<()> {
        self.spec
            .run_checked(self.f, (x, w, out), (res, bias), Some(pack))
    }
}
