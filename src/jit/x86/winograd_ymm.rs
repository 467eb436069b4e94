//! The input and output transforms of Winograd F(4x4, 3x3)'s whole layout at avx2 (and at
//! avx512 where no zmm layout applies), on 8
//! tiles per ymm register, assembled with iced-x86 and called by the Cranelift code of the
//! layer ([`crate::jit::winograd`]) once per channel and tile row.
//!
//! They compute every value with the operations of the f32x4 transforms (`Emit::lincomb`:
//! the terms of a row of `Bᵀ` or `Aᵀ` in order, the first a copy or a product, then adds,
//! subtracts and FMAs), so the layer gives the same bits with either; only the grouping of
//! lanes differs. The f32x4 transforms put 4 tiles in a vector and need two 4x4 transposes
//! per row of `Bᵀ d` and per group of 4 tiles; at avx2 they were a third of a 64 -> 64 layer
//! at 56x56 whose GEMMs run at the ymm FMA peak (session 12).
//!
//! **Input** ([`YmmInput`]), for each vector of 8 tiles and each row `i` of `Bᵀ d`: the
//! vertical pass `(Bᵀ d)[i]` on 5 consecutive ymm of the padded rows (floats `32 q ..
//! 32 q + 40`, tile `l`'s 4 columns `4 l .. 4 l + 4`, then tile 8's first), computed in
//! place on the row's columns as the f32x4 code does on its 4-float chunks; then the gather of
//! column `s` of the 8 tiles: `vperm2f128` pairs the 128-bit halves so that half `h` of
//! vector `k` holds tile `k + 4 h` (`k = 0..5`), and an in-lane 4x4 transpose of vectors
//! 0-3 (`vunpck{l,h}ps`, `vunpck{l,h}pd`) gives columns 0-3 of the 8 tiles in order, the
//! same of vectors 1-4 columns 4 and 5 (tile `l + 1`'s 0 and 1); then the horizontal pass
//! `(Bᵀ d B)[i][j]` on those registers, stored as one vector of 8 tiles of `V[6 i + j]`.
//! No stack: 5 constants and 11 working registers.
//!
//! Rows of 4 tiles (14x14 and 13x13 outputs) go two to a vector (`stack`): the halves are
//! paired across the two tile rows instead, tile `m` of the first row with tile `m` of the
//! second, so that `V` keeps the rows 4 tiles apart and the GEMMs run on as many columns as
//! the f32x4 layout's (with one vector a row, 20 columns for 16 tiles, the layer took
//! 1.56-1.66x the time).
//!
//! **Output** ([`YmmOutput`]), for each vector of 8 tiles and output row `a`: the 6 values
//! `(Aᵀ m)[a][j]` from `M` (memory operands), the 4 of `(Aᵀ m A)[a][b]` (lane `l`: pixel
//! `4 l + b` of the row), an in-lane 4x4 transpose and `vperm2f128` into 4 vectors of 8
//! consecutive pixels (2 tiles each), the epilogue in the other kernels' order (bias,
//! residual, ReLU / clip keeping NaN and -0.0) and the stores, `vmaskmovps` for the one
//! vector at the output's right edge (its masked-off lanes neither read nor written).
//!
//! Arguments (System V). Input: `rdi` the tile row's first padded row (column 0), `rsi` the
//! tile row's first tile in `V[0]` of the channel; reads 6 rows of `32 vectors + 8` floats
//! `wp` apart, writes `8 vectors` floats of each of the 36 planes `v_stride` apart (tiles
//! past the row's last are the next row's slots, which its own call writes later);
//! stacked, 10 rows of 24 floats and one vector of each plane.
//! Output: `rdi` the tile row's first tile in `M[0]` of the channel, `rsi` the tile row's
//! first output pixel, `rdx` the same in the residual, `rcx` the channel's bias; reads
//! `8 vectors` floats of each of the 36 planes `m_stride` apart, the `rows x ow` pixels at
//! `rdx` (with a residual), writes those at `rsi` (stacked: the `rows[1] x ow` pixels 4
//! rows below too).
use iced_x86::code_asm::{rcx, rdi, rdx, rsi, ymmword_ptr, AsmMemoryOperand, CodeLabel};

use super::vasm::{asm_err, yr, Vasm, Width};
use super::winograd::{disp, splat, Activation, OutputStore};
use crate::error::{Error, Result};
use crate::jit::winograd::{AT, BT};

/// Tiles (lanes) per vector.
pub const YMM_LANES: usize = 8;

/// The input transform of one tile row of one channel, shapes baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct YmmInput {
    /// Vectors of 8 tiles along the row.
    pub vectors: usize,
    /// Tile rows per call: 1, or 2 rows of 4 tiles in one vector (lanes 0-3 the first row,
    /// 4-7 the second, whose padded rows start `4 wp` floats on).
    pub stack: usize,
    /// Floats per padded row (at least `32 vectors + 8`; stacked, 24).
    pub wp: usize,
    /// Floats from one position `ξ` of `V` to the next.
    pub v_stride: usize,
}

/// The output transform of one tile row of one output channel, with the epilogue and the
/// stores, shapes baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct YmmOutput {
    /// Vectors of 8 tiles along the row.
    pub vectors: usize,
    /// Tile rows per call, as [`YmmInput::stack`]: the second row's pixels are stored 4
    /// output rows below the first's.
    pub stack: usize,
    /// Output rows of each of the call's tile rows (4, fewer for the output's last, 0 for a
    /// second row past it).
    pub rows: [usize; 2],
    pub store: OutputStore,
}

/// A term's value: a register, or a vector in memory.
#[derive(Clone, Copy)]
enum Src {
    Reg(usize),
    Mem(AsmMemoryOperand),
}

/// The constants a set of linear combinations needs in registers: the coefficient of a
/// first term that is not ±1 (a product), the magnitude of a later one (an FMA, or its
/// negated form for a negative coefficient: `acc - |c| x` is `acc + c x` exactly, rounded
/// once).
struct Consts {
    regs: Vec<(u32, usize)>,
}

impl Consts {
    fn new(rows: &[[f32; 6]], first: usize) -> Self {
        let mut bits: Vec<u32> = Vec::new();
        for row in rows {
            let mut head = true;
            for &c in row.iter().filter(|&&c| c != 0.0) {
                let k = match head {
                    true if c.abs() != 1.0 => Some(c),
                    false if c.abs() != 1.0 => Some(c.abs()),
                    _ => None,
                };
                head = false;
                if let Some(k) = k.map(f32::to_bits) {
                    if !bits.contains(&k) {
                        bits.push(k);
                    }
                }
            }
        }
        Consts {
            regs: bits.into_iter().zip(first..).collect(),
        }
    }

    fn len(&self) -> usize {
        self.regs.len()
    }

    fn reg(&self, c: f32) -> Result<usize> {
        self.regs
            .iter()
            .find(|r| r.0 == c.to_bits())
            .map(|r| r.1)
            .ok_or_else(|| Error::Codegen(format!("Winograd transform: no register for {c}")))
    }

    fn load(&self, v: &mut Vasm) -> Result<()> {
        for &(bits, r) in &self.regs {
            splat(v, r, bits)?;
        }
        Ok(())
    }
}

/// `acc = Σ c_t x_t` over the nonzero coefficients of `row` in order, with the operations of
/// `Emit::lincomb` (first term: copy, or product with its coefficient; then add, subtract,
/// or one FMA), `x(t)` the value of term `t`. A first coefficient of -1 is not supported
/// (no row of `Bᵀ` or `Aᵀ` has one).
fn lincomb(
    v: &mut Vasm,
    k: &Consts,
    acc: usize,
    row: &[f32; 6],
    x: impl Fn(usize) -> Result<Src>,
) -> Result<()> {
    let mut first = true;
    for (t, &c) in row.iter().enumerate().filter(|(_, &c)| c != 0.0) {
        let (src, head) = (x(t)?, std::mem::replace(&mut first, false));
        let (d, a) = (yr(acc), &mut v.a);
        match (head, Coef::of(c)) {
            (true, Coef::One) => match src {
                Src::Reg(r) if r == acc => Ok(()),
                Src::Reg(r) => a.vmovaps(d, yr(r)),
                Src::Mem(m) => a.vmovups(d, ymmword_ptr(m)),
            },
            (true, Coef::MinusOne) => {
                return Err(Error::Codegen(
                    "Winograd transform: a first coefficient of -1".into(),
                ))
            }
            (true, _) => {
                let kr = yr(k.reg(c)?);
                match src {
                    Src::Reg(r) => a.vmulps(d, kr, yr(r)),
                    Src::Mem(m) => a.vmulps(d, kr, ymmword_ptr(m)),
                }
            }
            (false, Coef::One) => match src {
                Src::Reg(r) => a.vaddps(d, d, yr(r)),
                Src::Mem(m) => a.vaddps(d, d, ymmword_ptr(m)),
            },
            (false, Coef::MinusOne) => match src {
                Src::Reg(r) => a.vsubps(d, d, yr(r)),
                Src::Mem(m) => a.vsubps(d, d, ymmword_ptr(m)),
            },
            (false, Coef::Positive) => {
                let kr = yr(k.reg(c)?);
                match src {
                    Src::Reg(r) => a.vfmadd231ps(d, kr, yr(r)),
                    Src::Mem(m) => a.vfmadd231ps(d, kr, ymmword_ptr(m)),
                }
            }
            (false, Coef::Negative) => {
                let kr = yr(k.reg(-c)?);
                match src {
                    Src::Reg(r) => a.vfnmadd231ps(d, kr, yr(r)),
                    Src::Mem(m) => a.vfnmadd231ps(d, kr, ymmword_ptr(m)),
                }
            }
        }
        .map_err(asm_err)?;
    }
    if first {
        return Err(Error::Codegen("Winograd transform: an empty row".into()));
    }
    Ok(())
}

/// How [`lincomb`] applies a coefficient.
#[derive(Clone, Copy, PartialEq)]
enum Coef {
    One,
    MinusOne,
    Positive,
    Negative,
}

impl Coef {
    fn of(c: f32) -> Self {
        match c {
            _ if c == 1.0 => Coef::One,
            _ if c == -1.0 => Coef::MinusOne,
            _ if c > 0.0 => Coef::Positive,
            _ => Coef::Negative,
        }
    }
}

/// The return: upper halves cleared for the Cranelift SSE code around.
fn ret(v: &mut Vasm) -> Result<()> {
    v.a.vzeroupper().map_err(asm_err)?;
    v.a.ret().map_err(asm_err)
}

/// Transposes, in each 128-bit half, the 4x4 floats of registers `x[0..4]` (vector `k`,
/// element `s` to vector `s`, element `k`) into registers `out[0..4]`, through `tmp[0..4]`.
/// `tmp` must not overlap `x`; `out` may be `x` (read before) but not `tmp`.
fn transpose_halves(v: &mut Vasm, x: [usize; 4], tmp: [usize; 4], out: [usize; 4]) -> Result<()> {
    let a = &mut v.a;
    // tmp0 = (x0[0], x1[0], x0[1], x1[1]), tmp1 = (x0[2], x1[2], x0[3], x1[3]), the same of
    // x2 and x3 in tmp2 and tmp3; then their 64-bit pairs.
    a.vunpcklps(yr(tmp[0]), yr(x[0]), yr(x[1]))
        .map_err(asm_err)?;
    a.vunpckhps(yr(tmp[1]), yr(x[0]), yr(x[1]))
        .map_err(asm_err)?;
    a.vunpcklps(yr(tmp[2]), yr(x[2]), yr(x[3]))
        .map_err(asm_err)?;
    a.vunpckhps(yr(tmp[3]), yr(x[2]), yr(x[3]))
        .map_err(asm_err)?;
    a.vunpcklpd(yr(out[0]), yr(tmp[0]), yr(tmp[2]))
        .map_err(asm_err)?;
    a.vunpckhpd(yr(out[1]), yr(tmp[0]), yr(tmp[2]))
        .map_err(asm_err)?;
    a.vunpcklpd(yr(out[2]), yr(tmp[1]), yr(tmp[3]))
        .map_err(asm_err)?;
    a.vunpckhpd(yr(out[3]), yr(tmp[1]), yr(tmp[3]))
        .map_err(asm_err)
}

// Input registers: constants from 0, the vertical pass's 5 vectors, the paired halves,
// then the transposes' temporaries and the 6 columns.
const IN_CHUNKS: usize = 5;
const IN_PAIRS: usize = 10;
const IN_SPARE: usize = 15;

impl YmmInput {
    pub fn emit(&self) -> Result<Vec<u8>> {
        let fits = match self.stack {
            1 => self.wp >= 32 * self.vectors + 8,
            2 => self.vectors == 1 && self.wp >= 24,
            _ => false,
        };
        if self.vectors == 0 || !fits {
            return Err(Error::Codegen(format!(
                "no Winograd input transform for {self:?}"
            )));
        }
        disp((9 * self.wp + 32 * self.vectors + 8) * 4)?;
        disp((35 * self.v_stride + 8 * self.vectors) * 4)?;
        let k = Consts::new(&BT, 0);
        if k.len() > IN_CHUNKS {
            return Err(Error::Codegen(format!(
                "Winograd input transform: {} constants",
                k.len()
            )));
        }
        let mut v = Vasm::new(Width::Y256)?;
        k.load(&mut v)?;
        for q in 0..self.vectors {
            for i in 0..6 {
                self.row(&mut v, &k, q, i)?;
            }
        }
        ret(&mut v)?;
        v.finish()
    }

    /// Row `i` of `Bᵀ d B` for tiles `8 q .. 8 q + 8`.
    fn row(&self, v: &mut Vasm, k: &Consts, q: usize, i: usize) -> Result<()> {
        let c = |n: usize| IN_CHUNKS + n;
        let p = |m: usize| IN_PAIRS + m;
        // Vertical: chunk n (floats `col ..`, from padded row `row`) of row i of Bᵀ d.
        let chunk = |v: &mut Vasm, reg: usize, row: usize, col: usize| {
            lincomb(v, k, reg, &BT[i], |r| {
                Ok(Src::Mem(rdi + disp(((row + r) * self.wp + col) * 4)?))
            })
        };
        let pair = |v: &mut Vasm, m: usize, lo: usize, hi: usize, imm: i32| {
            v.a.vperm2f128(yr(p(m)), yr(c(lo)), yr(c(hi)), imm)
                .map_err(asm_err)
        };
        // Halves paired: p[m] = (tile m, tile m + 4) for m = 0..5, from chunks of two
        // tiles (floats 32 q + 8 n ..: tiles 2 n, 2 n + 1); stacked, (tile m of the first
        // row, tile m of the second), from chunks n of each (floats 8 n ..).
        if self.stack == 1 {
            for n in 0..5 {
                chunk(v, c(n), 0, 32 * q + 8 * n)?;
            }
            for (m, lo, hi, imm) in [
                (0, 0, 2, 0x20),
                (1, 0, 2, 0x31),
                (2, 1, 3, 0x20),
                (3, 1, 3, 0x31),
                (4, 2, 4, 0x20),
            ] {
                pair(v, m, lo, hi, imm)?;
            }
        } else {
            for n in 0..3 {
                chunk(v, c(0), 0, 8 * n)?;
                chunk(v, c(1), 4, 8 * n)?;
                pair(v, 2 * n, 0, 1, 0x20)?;
                if n < 2 {
                    pair(v, 2 * n + 1, 0, 1, 0x31)?;
                }
            }
        }
        let a = &mut v.a;
        // Columns 4 and 5 of the 8 tiles (tile l + 1's columns 0 and 1) from pairs 1-4,
        // through c0 and the spare, into p4 and the spare; then columns 0-3 from pairs 0-3
        // in place, through c0-c3.
        a.vunpcklps(yr(c(0)), yr(p(1)), yr(p(2))).map_err(asm_err)?;
        a.vunpcklps(yr(IN_SPARE), yr(p(3)), yr(p(4)))
            .map_err(asm_err)?;
        a.vunpcklpd(yr(p(4)), yr(c(0)), yr(IN_SPARE))
            .map_err(asm_err)?;
        a.vunpckhpd(yr(IN_SPARE), yr(c(0)), yr(IN_SPARE))
            .map_err(asm_err)?;
        let x = [p(0), p(1), p(2), p(3)];
        transpose_halves(v, x, [c(0), c(1), c(2), c(3)], x)?;
        let cols = [p(0), p(1), p(2), p(3), p(4), IN_SPARE];
        // Horizontal: V[6 i + j], accumulated in c4 (free once paired).
        let acc = c(4);
        for (j, bt) in BT.iter().enumerate() {
            lincomb(v, k, acc, bt, |s| Ok(Src::Reg(cols[s])))?;
            let at = rsi + disp(((6 * i + j) * self.v_stride + 8 * q) * 4)?;
            v.a.vmovups(ymmword_ptr(at), yr(acc)).map_err(asm_err)?;
        }
        Ok(())
    }
}

// Output registers: the constants of `Aᵀ` (2, 4, 8) from 0, the activation's, the bias,
// then 10 working registers.
const OUT_ACT: Activation = Activation { lo: 3, hi: 4 };
const OUT_BIAS: usize = 5;
const OUT_WORK: usize = 6;

impl YmmOutput {
    pub fn emit(&self) -> Result<Vec<u8>> {
        let edge = self.store.ow % YMM_LANES;
        let shape = match self.stack {
            1 => self.store.ow.div_ceil(32) == self.vectors && self.rows[1] == 0,
            2 => self.vectors == 1 && self.store.ow.div_ceil(4) == 4,
            _ => false,
        };
        if !shape || !(1..=4).contains(&self.rows[0]) || self.rows[1] > 4 {
            return Err(Error::Codegen(format!(
                "no Winograd output transform for {self:?}"
            )));
        }
        disp((35 * self.store.m_stride + 8 * self.vectors) * 4)?;
        disp((7 * self.store.ow + 32 * self.vectors) * 4)?;
        let k = Consts::new(&AT, 0);
        if k.len() > OUT_ACT.lo {
            return Err(Error::Codegen(format!(
                "Winograd output transform: {} constants",
                k.len()
            )));
        }
        let mut v = Vasm::new(Width::Y256)?;
        let mut mask = v.a.create_label();
        k.load(&mut v)?;
        OUT_ACT.load(&mut v, self.store.relu, self.store.clip)?;
        if self.store.bias {
            v.bcst(OUT_BIAS, rcx + 0)?;
        }
        for q in 0..self.vectors {
            for a in 0..self.rows[0].max(self.rows[1]) {
                self.row(&mut v, &k, (q, a), mask)?;
            }
        }
        ret(&mut v)?;
        if edge != 0 {
            // Lanes below `ow % 8` of the vector at the right edge.
            v.a.set_label(&mut mask).map_err(asm_err)?;
            v.mask_data(0, edge)?;
        }
        v.finish()
    }

    /// Output row `a` of tiles `8 q .. 8 q + 8`.
    fn row(&self, v: &mut Vasm, k: &Consts, (q, a): (usize, usize), mask: CodeLabel) -> Result<()> {
        let w = |n: usize| OUT_WORK + n;
        // t[j] = (Aᵀ m)[a][j] in w0..w5.
        let t = [w(0), w(1), w(2), w(3), w(4), w(5)];
        for (j, &tj) in t.iter().enumerate() {
            lincomb(v, k, tj, &AT[a], |i| {
                Ok(Src::Mem(
                    rdi + disp(((6 * i + j) * self.store.m_stride + 8 * q) * 4)?,
                ))
            })?;
        }
        // y[b] = (Aᵀ m A)[a][b]: y1..y3 in w6..w8, then y0 over t0 (which only it reads).
        let y = [w(0), w(6), w(7), w(8)];
        for b in [1, 2, 3, 0] {
            lincomb(v, k, y[b], &AT[b], |j| Ok(Src::Reg(t[j])))?;
        }
        // Lane l of y[b] is pixel 4 l + b: transposed in each half into z[m] = (tile m,
        // tile m + 4), then px[n] = pixels 8 n .. 8 n + 8 (tiles 2 n, 2 n + 1; stacked,
        // n = 0, 1 of the first tile row, 2, 3 of the second).
        let z = [w(5), w(4), w(0), w(6)];
        transpose_halves(v, y, [w(1), w(9), w(2), w(3)], z)?;
        let px = [w(7), w(8), w(1), w(9)];
        for (n, lo, hi, imm) in [
            (0, 0, 1, 0x20),
            (1, 2, 3, 0x20),
            (2, 0, 1, 0x31),
            (3, 2, 3, 0x31),
        ] {
            v.a.vperm2f128(yr(px[n]), yr(z[lo]), yr(z[hi]), imm)
                .map_err(asm_err)?;
        }
        for (n, &x) in px.iter().enumerate() {
            let (j, col) = match self.stack {
                1 => (0, 32 * q + 8 * n),
                _ => (n / 2, 8 * (n % 2)),
            };
            let inside = self.store.ow.saturating_sub(col).min(YMM_LANES);
            if inside == 0 || a >= self.rows[j] {
                continue;
            }
            let at = disp(((4 * j + a) * self.store.ow + col) * 4)?;
            self.epilogue(v, x, at, (inside < YMM_LANES).then_some(mask))?;
        }
        Ok(())
    }

    /// The epilogue of register `x` and its store at byte `at` from `rsi` (residual: from
    /// `rdx`); with `mask`, on the lanes of the right edge's mask only.
    fn epilogue(&self, v: &mut Vasm, x: usize, at: i32, mask: Option<CodeLabel>) -> Result<()> {
        // Free once the pixels are out of the transpose: w2 (the mask), w3 (a residual).
        let (mreg, rreg) = (OUT_WORK + 2, OUT_WORK + 3);
        let a = &mut v.a;
        if let Some(m) = mask {
            a.vmovups(yr(mreg), ymmword_ptr(m)).map_err(asm_err)?;
        }
        if self.store.bias {
            a.vaddps(yr(x), yr(x), yr(OUT_BIAS)).map_err(asm_err)?;
        }
        if self.store.residual {
            let r = ymmword_ptr(rdx + at);
            match mask {
                Some(_) => {
                    a.vmaskmovps(yr(rreg), yr(mreg), r).map_err(asm_err)?;
                    a.vaddps(yr(x), yr(x), yr(rreg)).map_err(asm_err)?;
                }
                None => a.vaddps(yr(x), yr(x), r).map_err(asm_err)?,
            }
        }
        OUT_ACT.apply(v, x, self.store.relu, self.store.clip.is_some())?;
        let o = ymmword_ptr(rsi + at);
        match mask {
            Some(_) => v.a.vmaskmovps(o, yr(mreg), yr(x)),
            None => v.a.vmovups(o, yr(x)),
        }
        .map_err(asm_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};

    /// Every memory operand of `code` (straight-line code up to its `ret`, then data) on a
    /// base register: (register, byte offset, bytes, whether a `vmaskmovps`).
    fn accesses(code: &[u8]) -> Vec<(Register, usize, usize, bool)> {
        let mut out = Vec::new();
        for ins in Decoder::new(64, code, DecoderOptions::NONE) {
            let ins: Instruction = ins;
            if ins.mnemonic() == Mnemonic::Ret {
                break;
            }
            // No branch: every offset below is from the argument registers as passed.
            assert_eq!(ins.flow_control(), FlowControl::Next, "{ins}");
            let memory = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
            if !memory || ins.memory_base() == Register::RIP {
                continue; // constants and masks of the kernel's own data
            }
            assert_eq!(ins.memory_index(), Register::None, "{ins}");
            let size = ins.memory_size().size();
            let at = usize::try_from(ins.memory_displacement64() as i64).expect("no negative");
            out.push((
                ins.memory_base(),
                at,
                size,
                ins.mnemonic() == Mnemonic::Vmaskmovps,
            ));
        }
        out
    }

    /// The input transform reads only the 6 padded rows of its tile row (10 when stacked)
    /// and each row's first `32 vectors + 8` floats (stacked: 24), and writes only the first
    /// `8 vectors` floats of each of the 36 planes of `V`: what `WinogradPlan` sizes the
    /// padded plane and `V` for (a read or write past them stays inside the scratch, where
    /// the guard pages cannot see it).
    #[test]
    fn input_transform_stays_in_its_rows_and_planes() {
        for (vectors, stack, wp, v_stride) in [
            (1, 1, 40, 64),
            (2, 1, 72, 130),
            (3, 1, 107, 200),
            (1, 2, 24, 40),
            (1, 2, 31, 33),
        ] {
            let k = YmmInput {
                vectors,
                stack,
                wp,
                v_stride,
            };
            let (rows, cols, lanes) = match stack {
                1 => (6, 32 * vectors + 8, 8 * vectors),
                _ => (10, 24, 8),
            };
            let (mut reads, mut writes) = (0, 0);
            for (base, at, size, _) in accesses(&k.emit().unwrap()) {
                let (f, n) = (at / 4, size / 4);
                match base {
                    Register::RDI => {
                        assert!(f / wp < rows && f % wp + n <= cols, "{k:?}: reads {f}");
                        reads += 1;
                    }
                    Register::RSI => {
                        assert!(f / v_stride < 36, "{k:?}: writes {f}");
                        assert!(f % v_stride + n <= lanes, "{k:?}: writes {f}");
                        writes += 1;
                    }
                    other => panic!("{k:?}: an access through {other:?}"),
                }
            }
            assert_eq!(writes, 36 * vectors, "{k:?}");
            assert!(reads >= 6 * vectors, "{k:?}");
        }
    }

    /// The output transform reads only the first `8 vectors` floats of each of `M`'s 36
    /// planes, the bias at `rcx`, and reads (residual) and writes only pixels of its output
    /// rows (`rows[0]`, and stacked `rows[1]` 4 rows below), each vector inside its row: a
    /// full vector ends at or before `ow`, the masked one at the right edge covers exactly
    /// the `ow % 8` lanes up to it.
    #[test]
    fn output_transform_stays_in_its_planes_and_pixels() {
        for (ow, stack, rows) in [
            (32usize, 1, [4, 0]),
            (33, 1, [3, 0]),
            (70, 1, [1, 0]),
            (96, 1, [2, 0]),
            (13, 2, [4, 1]),
            (16, 2, [4, 0]),
            (15, 2, [4, 4]),
        ] {
            let vectors: usize = if stack == 2 { 1 } else { ow.div_ceil(32) };
            let m_stride = 8 * vectors + 3;
            let k = YmmOutput {
                vectors,
                stack,
                rows,
                store: OutputStore {
                    ow,
                    m_stride,
                    bias: true,
                    residual: true,
                    relu: true,
                    clip: None,
                },
            };
            let edge = ow % 8;
            let mut stores = 0;
            for (base, at, size, masked) in accesses(&k.emit().unwrap()) {
                let (f, n) = (at / 4, size / 4);
                match base {
                    Register::RDI => {
                        assert!(f / m_stride < 36, "{k:?}: reads M at {f}");
                        assert!(f % m_stride + n <= 8 * vectors, "{k:?}: reads M at {f}");
                    }
                    Register::RCX => assert_eq!((f, n), (0, 1), "{k:?}: the bias"),
                    Register::RSI | Register::RDX => {
                        let (row, col) = (f / ow, f % ow);
                        let in_rows = row < rows[0] || (4..4 + rows[1]).contains(&row);
                        let end = if masked { col + edge } else { col + n };
                        assert!(in_rows && end <= ow, "{k:?}: pixel {f} ({n} lanes)");
                        assert!(!masked || end == ow, "{k:?}: a masked vector inside");
                        stores += usize::from(base == Register::RSI);
                    }
                    other => panic!("{k:?}: an access through {other:?}"),
                }
            }
            // Every output row stored, a vector of 8 pixels at a time.
            assert_eq!(stores, (rows[0] + rows[1]) * ow.div_ceil(8), "{k:?}");
        }
    }
}
