//! The batch-1 fully connected layer's block of output features on wide vectors: an AVX2
//! (ymm) or AVX-512 (zmm) kernel assembled with iced-x86, called by the Cranelift driver of
//! [`crate::jit::fc`] once per block of `R = lanes` output features (8 at avx2, 16 at
//! avx512).
//!
//! At batch 1 every weight is used once: the layer streams its weights from memory (or L3)
//! and the kernel's job is to keep that stream going. The block's weights are packed as
//! `[S][R][L]` (`S = ceil(C / L)` steps of `L` input features, one vector per row and step,
//! the last step's lanes past `C` zero), so they are read in order, a whole cache line per
//! zmm load. Per step: one load of the `L` inputs (from L1), then per row one
//! `vfmadd231ps acc, x, [w]` (the weight vector is the FMA's memory operand) into the row's
//! accumulator (`R` independent chains hide the FMA latency), and, when `prefetch > 0`
//! (`CNNC_FC_PREFETCH`; off by default), `prefetcht0` of the lines `prefetch` bytes ahead
//! in the stream (the calls of consecutive blocks read one
//! stream: the prefetches of one block's last steps fetch the next block's first lines; past
//! the last block they ask for the bias or lines after the buffer, which is harmless: a
//! prefetch never faults, and reads nothing architecturally).
//!
//! The last step loads the inputs under a mask (`C % L` lanes; AVX-512 `k2`, AVX2
//! `vmaskmovps`), so the kernel reads exactly `C` inputs; its padded weights are zero.
//!
//! Then the `R` accumulators (each `L` partial sums of one row) are reduced to one vector
//! of the `R` sums by a tree of shuffles and adds: pairs of vectors are combined by two
//! shuffles (selecting halves of each) and one add, which halves the lanes each row
//! occupies and doubles the rows in a vector ([`TREE_ZMM`], [`TREE_YMM`]): 45 instructions for 16 rows at
//! zmm, 21 for 8 at ymm. Which lane ends up holding which accumulator is fixed by the
//! tree ([`FcDot::lane_slots`]); the packing puts row `l` of a block in the slot that ends in
//! lane `l`, so the sums come out in row order. Then the epilogue on that vector: `+ bias`
//! (the packed block's `R` biases), `+ residual`, ReLU, clip, and the store, the residual's
//! load and the store masked to the block's `rows` real features (AVX-512 `k1`, AVX2
//! `vmaskmovps`), so the kernel writes exactly its outputs.
//!
//! Arguments (System V): `rdi` the input (`C` floats), `rsi` the block's packed weights
//! (`S * R * L` floats), `rdx` the block's first output, `rcx` its first residual (read with
//! `residual` only), `r8` the block's `R` biases (read with `bias` only). What it touches:
//! the `C` inputs (whole vectors, then the last `C % L` under the mask), the block's `S * R *
//! L` weights in order, its `R` biases (the packing stores `R` per block, zero past the
//! layer's features, so the whole vector lies in the buffer), and `rows` residuals and
//! outputs (all `R` of a full block, the last block's under the mask); the prefetches only
//! ask for lines.
use iced_x86::code_asm::{byte_ptr, k1, k2, r10, r8, rcx, rdi, rdx, rsi, zmmword_ptr};

use super::vasm::{asm_err, zr, Masks, Vasm, Width};
use super::winograd::Activation;
use crate::error::{Error, Result};

/// Steps per iteration of the reduction loop.
const UNROLL: usize = 2;

/// The kernel of one block shape: everything baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FcDot {
    pub width: Width,
    /// Input features.
    pub c: usize,
    /// Real output features of the block (`1 ..= R`; fewer in the layer's last block).
    pub rows: usize,
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
    /// Then `min(max(x, lo), hi)` (f32 bit patterns).
    pub clip: Option<(u32, u32)>,
    /// Software prefetch of the weight stream this many bytes ahead (0: none; a multiple of
    /// 64).
    pub prefetch: usize,
}

/// How the reduction tree combines two vectors `u`, `v` into `u`: `u = op(u, v, a) +
/// op(u, v, b)`. The same immediates select within 128-bit blocks (`vshufps`, 4 floats)
/// and 128-bit blocks within a zmm (`vshuff32x4`): `0x44` / `0xEE` put the first / second
/// half of each operand's group side by side, `0x88` / `0xDD` its even / odd elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    /// `vshuff32x4` (zmm): 128-bit blocks.
    Blocks(u8, u8),
    /// `vperm2f128` (ymm): the halves, `0x20` / `0x31` (low / high halves side by side).
    Halves,
    /// `vshufps`: floats within each 128-bit block.
    Floats(u8, u8),
}

/// The reduction tree by width: the combine of each level (each halves the vectors).
const TREE_ZMM: [Combine; 4] = [
    Combine::Blocks(0x44, 0xEE),
    Combine::Blocks(0x88, 0xDD),
    Combine::Floats(0x44, 0xEE),
    Combine::Floats(0x88, 0xDD),
];
const TREE_YMM: [Combine; 3] = [
    Combine::Halves,
    Combine::Floats(0x44, 0xEE),
    Combine::Floats(0x88, 0xDD),
];

/// The tree at `w`.
const fn tree(w: Width) -> &'static [Combine] {
    match w {
        Width::Z512 => &TREE_ZMM,
        _ => &TREE_YMM,
    }
}

/// Registers: the accumulators `0 .. R`, then the step's inputs (`UNROLL`), the tree's
/// temporary, the activation's bounds and the AVX2 masks (inputs, rows).
const fn x_reg(r: usize, u: usize) -> usize {
    r + u
}

impl FcDot {
    /// Output features per block: one per lane.
    pub fn block_rows(w: Width) -> usize {
        w.lanes()
    }
    /// Floats of one block's packed weights.
    pub fn block_len(&self) -> usize {
        Self::block_len_for(self.width, self.c)
    }
    pub fn block_len_for(w: Width, c: usize) -> usize {
        c.div_ceil(w.lanes()) * w.lanes() * Self::block_rows(w)
    }
    fn r(&self) -> usize {
        Self::block_rows(self.width)
    }
    fn tmp(&self) -> usize {
        self.r() + UNROLL
    }
    /// The activation's registers.
    fn act(&self) -> Activation {
        let t = self.tmp();
        Activation {
            lo: t + 1,
            hi: t + 2,
        }
    }
    /// AVX2: the registers of the inputs' and the rows' masks.
    fn masks(&self) -> (usize, usize) {
        let t = self.tmp();
        (t + 3, t + 4)
    }
    fn x_tail(&self) -> usize {
        self.c % self.width.lanes()
    }

    /// Lane `l` of the reduced vector holds the sum of accumulator `lane_slots(w)[l]`: the
    /// tree's shuffles replayed on lane labels. (The packing puts row `l` of a block at that
    /// slot of each step.)
    pub fn lane_slots(w: Width) -> Vec<usize> {
        let l = w.lanes();
        // Each vector: per lane, the accumulator whose partial sums it holds.
        let mut vecs: Vec<Vec<usize>> = (0..Self::block_rows(w)).map(|r| vec![r; l]).collect();
        for &op in tree(w) {
            vecs = vecs
                .chunks(2)
                .map(|p| {
                    let (a, b) = op.imms();
                    let x = op.apply(&p[0], &p[1], a);
                    let y = op.apply(&p[0], &p[1], b);
                    // The add sums partials of the same accumulator only (the tree is
                    // constant; `every_lane_ends_with_one_whole_accumulator` also checks
                    // that each lane sums all of them, once). Once per pack, a few tiny
                    // vectors: checked in release builds too.
                    assert_eq!(x, y, "the tree adds lanes of different rows");
                    x
                })
                .collect();
        }
        vecs.pop().expect("one vector left")
    }

    /// Refuses what the generator cannot emit.
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Codegen(format!("fc dot kernel {self:?}: {m}")));
        if self.width == Width::X128 {
            return bad("128-bit kernels are Cranelift's");
        }
        if self.c == 0 || self.rows == 0 || self.rows > self.r() {
            return bad("empty, or more rows than a block");
        }
        if !self.prefetch.is_multiple_of(64) {
            return bad("prefetch distance not whole lines");
        }
        // The highest register named is the AVX2 rows' mask (ymm16 and up: not VEX).
        if self.masks().1 >= self.width.registers() {
            return bad("more registers than the width has");
        }
        disp(UNROLL * self.r() * self.width.bytes() + self.prefetch)?;
        Ok(())
    }

    /// The machine code (position independent).
    pub fn emit(&self) -> Result<Vec<u8>> {
        self.check()?;
        let (l, r, w) = (self.width.lanes(), self.r(), self.width);
        let mut v = Vasm::new(w)?;
        let zmm = w == Width::Z512;
        let (xmask, _) = self.masks();
        let mut masks = Masks::default();
        if self.x_tail() > 0 {
            masks.set(&mut v, (k2, xmask), 0, self.x_tail())?;
        }
        for a in 0..r {
            v.zero(a)?;
        }
        let vb = w.bytes();
        let step_bytes = r * vb;
        // One step `u` of a group: the inputs at `rdi + u * vb`, the weights at `rsi + u *
        // step_bytes`; `masked`: the last, partial step.
        let step = |v: &mut Vasm, u: usize, masked: bool| -> Result<()> {
            let xr = x_reg(r, u);
            let at = rdi + disp(u * vb)?;
            match (masked, zmm) {
                (false, _) => v.load(xr, at)?,
                (true, true) => {
                    v.a.vmovups(zr(xr).k2().z(), zmmword_ptr(at))
                        .map_err(asm_err)?
                }
                (true, false) => v.maskload(xr, xmask, at)?,
            }
            if self.prefetch > 0 {
                for line in (0..step_bytes).step_by(64) {
                    let at = rsi + disp(u * step_bytes + line + self.prefetch)?;
                    v.a.prefetcht0(byte_ptr(at)).map_err(asm_err)?;
                }
            }
            for a in 0..r {
                let at = rsi + disp(u * step_bytes + a * vb)?;
                v.fma_mem(a, xr, at)?;
            }
            Ok(())
        };
        let full = self.c / l;
        let iters = full / UNROLL;
        if iters > 0 {
            v.counted_loop(r10, iters, |v| {
                for u in 0..UNROLL {
                    step(v, u, false)?;
                }
                v.a.add(rdi, disp(UNROLL * vb)?).map_err(asm_err)?;
                v.a.add(rsi, disp(UNROLL * step_bytes)?).map_err(asm_err)
            })?;
        }
        let rest = full % UNROLL;
        for u in 0..rest {
            step(&mut v, u, false)?;
        }
        if self.x_tail() > 0 {
            step(&mut v, rest, true)?;
        }
        self.reduce(&mut v)?;
        self.epilogue(&mut v, &mut masks)?;
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.finish()
    }

    /// The accumulators `0 .. R` to one vector of their sums in register 0 (lane order:
    /// [`Self::lane_slots`]).
    fn reduce(&self, v: &mut Vasm) -> Result<()> {
        let t = self.tmp();
        let mut regs: Vec<usize> = (0..self.r()).collect();
        for &op in tree(self.width) {
            let (a, b) = op.imms();
            for p in regs.chunks(2) {
                let (x, y) = (p[0], p[1]);
                op.emit(v, t, x, y, b)?;
                op.emit(v, x, x, y, a)?;
                v.add(x, x, t)?;
            }
            regs = regs.iter().copied().step_by(2).collect();
        }
        Ok(())
    }

    /// `+ bias`, `+ residual`, the activation and the store of register 0, masked to `rows`.
    fn epilogue(&self, v: &mut Vasm, masks: &mut Masks) -> Result<()> {
        let zmm = self.width == Width::Z512;
        let masked = self.rows < self.r();
        let (_, rmask) = self.masks();
        let t = self.tmp();
        if masked {
            masks.set(v, (k1, rmask), 0, self.rows)?;
        }
        if self.bias {
            // The packed biases of a block are `R` floats (zero past the layer's features).
            v.add_mem(0, 0, r8 + 0)?;
        }
        if self.residual {
            match (masked, zmm) {
                (false, _) => v.add_mem(0, 0, rcx + 0)?,
                (true, true) => v.add_mem_k1(0, 0, rcx + 0)?,
                (true, false) => {
                    v.maskload(t, rmask, rcx + 0)?;
                    v.add(0, 0, t)?;
                }
            }
        }
        let act = self.act();
        act.load(v, self.relu, self.clip)?;
        act.apply(v, 0, self.relu, self.clip.is_some())?;
        match (masked, zmm) {
            (false, _) => v.store(rdx + 0, 0),
            (true, true) => v.store_k1(rdx + 0, 0),
            (true, false) => v.maskstore(rdx + 0, rmask, 0),
        }
    }
}

impl Combine {
    fn imms(self) -> (u8, u8) {
        match self {
            Combine::Blocks(a, b) | Combine::Floats(a, b) => (a, b),
            Combine::Halves => (0x20, 0x31),
        }
    }

    /// `dst = op(u, v, imm)`.
    fn emit(self, vasm: &mut Vasm, dst: usize, u: usize, v: usize, imm: u8) -> Result<()> {
        use iced_x86::code_asm::{get_ymm, get_zmm};
        use iced_x86::Register;
        let z = |i: usize| get_zmm(Register::ZMM0 + i as u32).expect("zmm index below 32");
        let y = |i: usize| get_ymm(Register::YMM0 + i as u32).expect("ymm index below 16");
        let imm = u32::from(imm);
        let a = &mut vasm.a;
        match (self, vasm.w) {
            (Combine::Blocks(..), Width::Z512) => a.vshuff32x4(z(dst), z(u), z(v), imm),
            (Combine::Halves, Width::Y256) => a.vperm2f128(y(dst), y(u), y(v), imm),
            (Combine::Floats(..), Width::Z512) => a.vshufps(z(dst), z(u), z(v), imm),
            (Combine::Floats(..), Width::Y256) => a.vshufps(y(dst), y(u), y(v), imm),
            _ => return Err(Error::Codegen(format!("no {self:?} at {:?}", vasm.w))),
        }
        .map_err(asm_err)
    }

    /// The instruction on lane labels: `op(u, v, imm)`.
    fn apply<T: Clone>(self, u: &[T], v: &[T], imm: u8) -> Vec<T> {
        let n = u.len();
        let sel = |i: usize| usize::from(imm >> (2 * i) & 3);
        let mut out = u.to_vec();
        match self {
            // Block `j` of the result: block `sel(j)` of `u` (j < 2) or `v`.
            Combine::Blocks(..) => {
                for j in 0..4 {
                    let src = if j < 2 { u } else { v };
                    out[4 * j..4 * j + 4].clone_from_slice(&src[4 * sel(j)..4 * sel(j) + 4]);
                }
            }
            // Half `j`: of `[u.lo, u.hi, v.lo, v.hi]` the one `imm >> 4j & 3` names.
            Combine::Halves => {
                for j in 0..2 {
                    let s = usize::from(imm >> (4 * j) & 3);
                    let src = if s < 2 { u } else { v };
                    let h = (s % 2) * 4;
                    out[4 * j..4 * j + 4].clone_from_slice(&src[h..h + 4]);
                }
            }
            // Float `i` of each 128-bit block: float `sel(i)` of the block of `u` (i < 2)
            // or `v`.
            Combine::Floats(..) => {
                for b in (0..n).step_by(4) {
                    for i in 0..4 {
                        let src = if i < 2 { u } else { v };
                        out[b + i] = src[b + sel(i)].clone();
                    }
                }
            }
        }
        out
    }
}

fn disp(bytes: usize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("fc dot kernel offset {bytes} exceeds i32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lane_ends_with_one_whole_accumulator() {
        for w in [Width::Y256, Width::Z512] {
            let mut slots = FcDot::lane_slots(w);
            assert_eq!(slots.len(), w.lanes());
            slots.sort_unstable();
            assert_eq!(slots, (0..w.lanes()).collect::<Vec<_>>(), "{w:?}");
        }
    }

    /// The tree replayed on (accumulator, partial sum) labels, the add a union: each final
    /// lane holds every partial of one accumulator exactly once (so no half is dropped or
    /// counted twice), the accumulators are a permutation, and it is `lane_slots`' order.
    #[test]
    fn the_tree_sums_every_partial_once() {
        for w in [Width::Y256, Width::Z512] {
            let l = w.lanes();
            let mut vecs: Vec<Vec<Vec<(usize, usize)>>> = (0..FcDot::block_rows(w))
                .map(|a| (0..l).map(|p| vec![(a, p)]).collect())
                .collect();
            for &op in tree(w) {
                vecs = vecs
                    .chunks(2)
                    .map(|p| {
                        let (ia, ib) = op.imms();
                        let (x, y) = (op.apply(&p[0], &p[1], ia), op.apply(&p[0], &p[1], ib));
                        x.into_iter().zip(y).map(|(x, y)| [x, y].concat()).collect()
                    })
                    .collect();
            }
            assert_eq!(vecs.len(), 1, "{w:?}");
            let mut accs = Vec::new();
            for (lane, mut labels) in vecs.pop().unwrap().into_iter().enumerate() {
                labels.sort_unstable();
                let a = labels[0].0;
                let whole: Vec<_> = (0..l).map(|p| (a, p)).collect();
                assert_eq!(labels, whole, "{w:?} lane {lane}");
                accs.push(a);
            }
            assert_eq!(accs, FcDot::lane_slots(w), "{w:?}");
            let want: &[usize] = match w {
                Width::Z512 => &[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15],
                _ => &[0, 2, 4, 6, 1, 3, 5, 7],
            };
            assert_eq!(accs, want, "{w:?}");
        }
    }
}
