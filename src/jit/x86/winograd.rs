//! The input transform of Winograd F(4x4, 3x3) on 16 tiles per zmm register (AVX-512),
//! assembled with iced-x86 and called by the Cranelift code of a grouped Winograd layer
//! ([`crate::jit::winograd`]) once per channel and tile row.
//!
//! The f32x4 Cranelift transform puts 4 tiles in a vector and needs two 4x4 transposes per
//! row of each group of 4 (its input is the padded plane, where a tile's 6 columns are
//! consecutive): 35% of a 64 -> 64 layer at 56x56. Here lane `l` is tile `tx0 + l`, and
//! column `s` of the 16 tiles (padded columns `4 (tx0 + l) + s`) is gathered from the row
//! by two `vpermt2ps` (lanes 0-7 from the row's first 32 floats, lanes 8-15 from the next
//! 32: the index `4 l + s` wraps modulo 32) and a masked blend for `s < 4`, and by
//! `valignd` (one lane on) from columns 0 and 1 for `s = 4, 5`.
//!
//! `V = Bᵀ d B` in two passes of the same 6-point transform ([`Bt`]): each of the 6 padded
//! rows `r` of the tile row to `t[r][·] = (d B)[r]`, kept on the stack, then each column
//! `j` to `V[ξ = 6 i + j] = (Bᵀ t)[i][j]`, stored as one vector of 16 tiles.
//!
//! Arguments (System V): `rdi` the tile row's first padded row (column 0), `rsi` the tile
//! row's first tile in `V[0]` of the channel. Reads `6` rows of `wp` floats from `rdi`
//! (each vector of 16 tiles reads columns `4 tx0 .. 4 tx0 + 80`: the caller's rows hold
//! `4 vectors * 16 + 16` columns), writes 36 vectors of 16 floats `v_stride` floats apart.
use iced_x86::code_asm::{
    eax, k1, k2, r11, rcx, rdi, rdx, rsi, rsp, zmmword_ptr, AsmMemoryOperand, CodeLabel,
};

use super::vasm::{asm_err, zr, Vasm, Width};
use crate::error::{Error, Result};

/// The input transform of one tile row of one channel, shapes baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WinogradInput {
    /// Vectors of 16 tiles along the row.
    pub vectors: usize,
    /// Floats per padded row (at least `64 vectors + 16`).
    pub wp: usize,
    /// Floats from one position `ξ` of `V` to the next.
    pub v_stride: usize,
    /// `Some((in_w, pad_w))`: read the input rows themselves, `in_w` floats apart, `rdi` at
    /// column `-pad_w` of the first (the padded row's column 0), the lanes of a load that
    /// fall left or right of the row masked to zero (masked-off lanes do not fault); `None`:
    /// padded rows `wp` floats apart.
    pub direct: Option<(usize, usize)>,
    /// Tile rows per vector: 1, or for rows of at most 8 (4) tiles 2 (4) tile rows of
    /// `16 / stack` lanes each, whose padded rows start `4 wp` floats apart (padded rows
    /// only, one vector per call; [`Self::gather_stacked`]).
    pub stack: usize,
}

/// Lanes (tiles) per vector.
pub const LANES: usize = 16;

// Registers: the 6 inputs of a 6-point transform, its temporaries and outputs, then
// constants and the gather's scratch.
const D: usize = 0;
const T: usize = 6;
const Z: usize = 12;
const IDX: usize = 18;
const C4: usize = 22;
const C2: usize = 23;
const C5: usize = 24;
const HI: usize = 25;
const A4: usize = 26;
const A5: usize = 27;
/// The first of 4 registers holding masked loads (`direct`).
const MASKED: usize = 28;

/// Bytes of the stack area holding `t` (36 vectors).
const STACK: usize = 36 * 64;

pub(super) fn disp(bytes: usize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("Winograd transform offset {bytes} exceeds i32")))
}

pub(super) fn splat(v: &mut Vasm, r: usize, bits: u32) -> Result<()> {
    v.a.mov(eax, bits as i32).map_err(asm_err)?;
    v.splat_eax(r)
}

/// The start of a transform: 4 index vectors, from tables after the code, into registers
/// `first .. first + 4` (one label each: a label plus a displacement is not RIP-relative
/// in iced's assembler), and the constants `(register, value)`.
fn start(v: &mut Vasm, first: usize, consts: &[(usize, f32)]) -> Result<[CodeLabel; 4]> {
    let tables = [(); 4].map(|_| v.a.create_label());
    for (i, t) in tables.iter().enumerate() {
        v.load(first + i, AsmMemoryOperand::from(*t))?;
    }
    for &(r, c) in consts {
        splat(v, r, c.to_bits())?;
    }
    Ok(tables)
}

/// `body` with `bytes` of stack from `rsp`, on whole cache lines (a vector across two
/// lines costs two accesses; `rsp` kept in `r11`), then the return.
fn on_stack(v: &mut Vasm, bytes: usize, body: impl FnOnce(&mut Vasm) -> Result<()>) -> Result<()> {
    v.a.mov(r11, rsp).map_err(asm_err)?;
    v.a.sub(rsp, bytes as i32).map_err(asm_err)?;
    v.a.and(rsp, -64).map_err(asm_err)?;
    body(v)?;
    v.a.mov(rsp, r11).map_err(asm_err)?;
    // The Cranelift code around is SSE: leave the upper halves clean.
    v.a.vzeroupper().map_err(asm_err)?;
    v.a.ret().map_err(asm_err)
}

/// The index tables after the code, and the machine code.
fn finish(mut v: Vasm, mut tables: [CodeLabel; 4], data: [Vec<u32>; 4]) -> Result<Vec<u8>> {
    for (t, d) in tables.iter_mut().zip(data) {
        v.a.set_label(t).map_err(asm_err)?;
        v.a.dd(&d).map_err(asm_err)?;
    }
    v.finish()
}

impl WinogradInput {
    pub fn emit(&self) -> Result<Vec<u8>> {
        let stacked_ok = match self.stack {
            1 => true,
            2 | 4 => self.vectors == 1 && self.direct.is_none() && self.wp >= 64 / self.stack + 4,
            _ => false,
        };
        let short = self.stack == 1 && self.direct.is_none() && self.wp < 64 * self.vectors + 16;
        if !stacked_ok || short {
            return Err(Error::Codegen(format!(
                "no Winograd input transform for {self:?}"
            )));
        }
        disp(35 * self.v_stride * 4 + self.vectors * LANES * 4)?;
        disp(5 * self.row_stride() * 4 + self.vectors * LANES * 16 + 256)?;
        disp(((5 + 4 * (self.stack - 1)) * self.row_stride() + 64 + 4) * 4)?;
        let mut v = Vasm::new(Width::Z512)?;
        let tables = start(&mut v, IDX, &[(C4, 4.0), (C2, 2.0), (C5, 5.0)])?;
        v.kmask(k1, 8, 16)?;
        on_stack(&mut v, STACK, |v| {
            (0..self.vectors).try_for_each(|q| self.vector(v, q))
        })?;
        let idx = |s: u32| (0..LANES as u32).map(|l| 4 * l + s).collect();
        finish(v, tables, [idx(0), idx(1), idx(2), idx(3)])
    }

    /// Tiles `16 q .. 16 q + 16` of the row.
    fn vector(&self, v: &mut Vasm, q: usize) -> Result<()> {
        let col = q * LANES * 4;
        for r in 0..6 {
            if self.stack > 1 {
                self.gather_stacked(v, r * self.row_stride() * 4)?;
            } else {
                self.gather(v, r * self.row_stride() * 4, col)?;
            }
            Bt::apply(v, D, Z)?;
            for j in 0..6 {
                let at = rsp + disp((r * 6 + j) * 64)?;
                v.a.vmovups(zmmword_ptr(at), zr(Z + j)).map_err(asm_err)?;
            }
        }
        for j in 0..6 {
            for r in 0..6 {
                let at = rsp + disp((r * 6 + j) * 64)?;
                v.a.vmovups(zr(D + r), zmmword_ptr(at)).map_err(asm_err)?;
            }
            Bt::apply(v, D, Z)?;
            for i in 0..6 {
                let at = rsi + disp(((i * 6 + j) * self.v_stride + q * LANES) * 4)?;
                v.a.vmovups(zmmword_ptr(at), zr(Z + i)).map_err(asm_err)?;
            }
        }
        Ok(())
    }

    fn row_stride(&self) -> usize {
        self.direct.map_or(self.wp, |(w, _)| w)
    }

    /// The lanes of the 16 floats from column `o` of a padded row that hold input columns
    /// (`direct`), or `None` when all do (or with padded rows).
    fn lanes(&self, o: usize) -> Option<u32> {
        let (w, p) = self.direct?;
        let inside = |l: usize| o + l >= p && o + l - p < w;
        let bits = (0..LANES)
            .filter(|&l| inside(l))
            .fold(0u32, |m, l| m | 1 << l);
        (bits != 0xFFFF).then_some(bits)
    }

    /// Columns `s = 0..6` of the 16 tiles from padded column `col` of the row at byte `at`
    /// from `rdi` (floats `4 l + s`) into registers `D + s`.
    fn gather(&self, v: &mut Vasm, at: usize, col: usize) -> Result<()> {
        let m = |o: usize| -> Result<AsmMemoryOperand> {
            Ok(zmmword_ptr(rdi + disp(at + (col + o) * 4)?))
        };
        // The 5 vectors of the row: in memory, or (partly outside the row) loaded masked.
        let mut src = [Src::Mem(0); 5];
        for (i, sr) in src.iter_mut().enumerate() {
            *sr = Src::Mem(16 * i);
            let Some(bits) = self.lanes(col + 16 * i) else {
                continue;
            };
            let r = if i == 4 { A4 } else { MASKED + i };
            if bits == 0 {
                v.zero(r)?;
            } else {
                v.kmask_bits(k2, bits)?;
                v.a.vmovups(zr(r).k2().z(), m(16 * i)?).map_err(asm_err)?;
            }
            *sr = Src::Reg(r);
        }
        let copy = |v: &mut Vasm, dst: usize, s: Src| -> Result<()> {
            match s {
                Src::Mem(o) => v.a.vmovups(zr(dst), m(o)?),
                Src::Reg(r) => v.a.vmovaps(zr(dst), zr(r)),
            }
            .map_err(asm_err)
        };
        let permute = |v: &mut Vasm, dst: usize, idx: usize, s: Src| -> Result<()> {
            match s {
                Src::Mem(o) => v.a.vpermt2ps(zr(dst), zr(idx), m(o)?),
                Src::Reg(r) => v.a.vpermt2ps(zr(dst), zr(idx), zr(r)),
            }
            .map_err(asm_err)
        };
        for s in 0..4 {
            copy(v, D + s, src[0])?;
            permute(v, D + s, IDX + s, src[1])?;
            copy(v, HI, src[2])?;
            permute(v, HI, IDX + s, src[3])?;
            v.a.vmovaps(zr(D + s).k1(), zr(HI)).map_err(asm_err)?;
        }
        // Columns 4 and 5 are columns 0 and 1 one tile on: lane 15 from floats 64, 65.
        if let Src::Mem(o) = src[4] {
            v.a.vmovups(zr(A4), m(o)?).map_err(asm_err)?;
        }
        v.a.valignd(zr(D + 4), zr(A4), zr(D), 1).map_err(asm_err)?;
        v.a.valignd(zr(A5), zr(A4), zr(A4), 1).map_err(asm_err)?;
        v.a.valignd(zr(D + 5), zr(A5), zr(D + 1), 1)
            .map_err(asm_err)?;
        Ok(())
    }
}

impl WinogradInput {
    /// [`Self::gather`] of `stack` tile rows of `16 / stack` tiles each (padded rows `at`
    /// bytes from `rdi`, the next tile row's `4 wp` floats on): the index `4 l + s` of
    /// `vpermt2ps` picks lanes 0-7 from two vectors of 16 floats and lanes 8-15 from two
    /// more, so those four vectors are the rows' first 32 floats (2 tile rows of 8 lanes:
    /// floats 0-15 and 16-31 of each) or first 16 (4 tile rows of 4). Columns 4 and 5 are
    /// gathered the same way from 4 floats on: the next lane may be another tile row's.
    fn gather_stacked(&self, v: &mut Vasm, at: usize) -> Result<()> {
        let per_row = 4 / self.stack;
        let m = |i: usize, shift: usize| -> Result<AsmMemoryOperand> {
            let (j, o) = (i / per_row, (i % per_row) * LANES);
            Ok(zmmword_ptr(
                rdi + disp(at + (4 * j * self.wp + o + shift) * 4)?,
            ))
        };
        for s in 0..6 {
            let (idx, shift) = if s < 4 {
                (IDX + s, 0)
            } else {
                (IDX + s - 4, 4)
            };
            let a = &mut v.a;
            a.vmovups(zr(D + s), m(0, shift)?).map_err(asm_err)?;
            a.vpermt2ps(zr(D + s), zr(idx), m(1, shift)?)
                .map_err(asm_err)?;
            a.vmovups(zr(HI), m(2, shift)?).map_err(asm_err)?;
            a.vpermt2ps(zr(HI), zr(idx), m(3, shift)?)
                .map_err(asm_err)?;
            a.vmovaps(zr(D + s).k1(), zr(HI)).map_err(asm_err)?;
        }
        Ok(())
    }
}

/// Where a vector of a row comes from: memory (float offset from the vector's column), or a
/// register it was loaded into (masked).
#[derive(Clone, Copy)]
enum Src {
    Mem(usize),
    Reg(usize),
}

/// The 6-point transform `z = Bᵀ d` of F(4x4, 3x3):
/// `z0 = 4 d0 - 5 d2 + d4`, `z1 = (d3 + d4) - 4 (d1 + d2)`, `z2 = (d4 - d3) + 4 (d1 - d2)`,
/// `z3 = (d4 - d2) + 2 (d3 - d1)`, `z4 = (d4 - d2) - 2 (d3 - d1)`, `z5 = 4 d1 - 5 d3 + d5`.
struct Bt;

impl Bt {
    /// Registers `d .. d + 6` to `z .. z + 6` (temporaries `T ..`; `d` is kept).
    fn apply(v: &mut Vasm, d: usize, z: usize) -> Result<()> {
        let (dr, zr_, tr) = (|i| zr(d + i), |i| zr(z + i), |i| zr(T + i));
        let a = &mut v.a;
        a.vaddps(tr(0), dr(1), dr(2)).map_err(asm_err)?;
        a.vaddps(zr_(1), dr(3), dr(4)).map_err(asm_err)?;
        a.vfnmadd231ps(zr_(1), tr(0), zr(C4)).map_err(asm_err)?;
        a.vsubps(tr(1), dr(1), dr(2)).map_err(asm_err)?;
        a.vsubps(zr_(2), dr(4), dr(3)).map_err(asm_err)?;
        a.vfmadd231ps(zr_(2), tr(1), zr(C4)).map_err(asm_err)?;
        a.vsubps(tr(2), dr(3), dr(1)).map_err(asm_err)?;
        a.vsubps(zr_(3), dr(4), dr(2)).map_err(asm_err)?;
        a.vmovaps(zr_(4), zr_(3)).map_err(asm_err)?;
        a.vfmadd231ps(zr_(3), tr(2), zr(C2)).map_err(asm_err)?;
        a.vfnmadd231ps(zr_(4), tr(2), zr(C2)).map_err(asm_err)?;
        a.vmovaps(zr_(0), dr(4)).map_err(asm_err)?;
        a.vfmadd231ps(zr_(0), dr(0), zr(C4)).map_err(asm_err)?;
        a.vfnmadd231ps(zr_(0), dr(2), zr(C5)).map_err(asm_err)?;
        a.vmovaps(zr_(5), dr(5)).map_err(asm_err)?;
        a.vfmadd231ps(zr_(5), dr(1), zr(C4)).map_err(asm_err)?;
        a.vfnmadd231ps(zr_(5), dr(3), zr(C5)).map_err(asm_err)?;
        Ok(())
    }
}

/// The output transform of one tile row of one output channel, with the convolution's
/// epilogue and the stores, shapes baked in: `Y = Aᵀ m A` on 16 tiles per vector in two
/// passes of the 6-to-4-point transform ([`At`]; `u = m A` on the stack, then `Aᵀ u`), then
/// each output row `a` of the 16 tiles, four vectors `Y[a][b]` (lane `l`: pixel `4 l + b`),
/// interleaved into 64 consecutive pixels by two rounds of `vpermt2ps`, the epilogue (bias,
/// residual, ReLU, clip, in the order of the other kernels) and the stores, masked at the
/// output's right edge.
///
/// Arguments (System V): `rdi` the tile row's first tile in `M[0]` of the channel, `rsi`
/// the tile row's first output pixel (row `4 ty`), `rdx` the same in the residual, `rcx`
/// the channel's bias. Reads 36 vectors `m_stride` floats apart from `rdi` for each vector
/// of 16 tiles, the `rows x ow` pixels at `rdx` (with a residual), writes those at `rsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WinogradOutput {
    /// Vectors of 16 tiles along the row.
    pub vectors: usize,
    /// Tile rows per vector, as [`WinogradInput::stack`]: tile row `j` of a call is stored
    /// `4 j` output rows below the first.
    pub stack: usize,
    /// Output rows of each of the call's `stack` tile rows (4, fewer for the output's last
    /// tile row, 0 for the rows of a last vector past it).
    pub rows: [usize; 4],
    pub store: OutputStore,
}

/// What the output transforms read and store besides their tile rows, shapes baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutputStore {
    /// Output width (pixels from `ow` on are not stored).
    pub ow: usize,
    /// Floats from one position `ξ` of `M` to the next.
    pub m_stride: usize,
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
    /// `min(max(x, lo), hi)` (f32 bit patterns), NaN kept.
    pub clip: Option<(u32, u32)>,
}

// Registers of the output transform besides `D`, `T`, `Z` (`T .. T + 4`, `Z .. Z + 4`):
// constants, the interleave's indices, and the 4 x 2 vectors it goes through.
const C8: usize = 25;
/// The activation's registers ([`Activation`]): zero, or the clip's bounds.
const ACT: Activation = Activation { lo: 27, hi: 28 };
const IL: usize = 18;
const QU: usize = 20;
const PAIRS: usize = 6;
const CHUNKS: usize = 10;
const RES: usize = 30;
/// Bytes of the stack area holding `u` (24 vectors) and `Y` (16).
const OUT_STACK: usize = 40 * 64;

impl WinogradOutput {
    pub fn emit(&self) -> Result<Vec<u8>> {
        let stacked_ok = match self.stack {
            1 => self.rows[1..].iter().all(|&r| r == 0),
            2 | 4 => self.vectors == 1 && self.rows[self.stack..].iter().all(|&r| r == 0),
            _ => false,
        };
        let rows_ok = (1..=4).contains(&self.rows[0]) && self.rows.iter().all(|&r| r <= 4);
        if !stacked_ok || !rows_ok || self.store.ow > LANES * 4 * self.vectors / self.stack {
            return Err(Error::Codegen(format!(
                "no Winograd output transform for {self:?}"
            )));
        }
        disp(35 * self.store.m_stride * 4 + self.vectors * LANES * 4)?;
        disp(((4 * self.stack - 1) * self.store.ow + LANES * 4 * self.vectors) * 4)?;
        let mut v = Vasm::new(Width::Z512)?;
        let tables = start(&mut v, IL, &[(C4, 4.0), (C2, 2.0), (C8, 8.0)])?;
        ACT.load(&mut v, self.store.relu, self.store.clip)?;
        on_stack(&mut v, OUT_STACK, |v| {
            (0..self.vectors).try_for_each(|q| self.vector(v, q))
        })?;
        // Interleave indices: pairs `(Y0[i], Y1[i])` of lanes 0-7, of lanes 8-15; then
        // `(A[2l], A[2l + 1], C[2l], C[2l + 1])` for tiles 0-3 of 8, for tiles 4-7.
        let il = |half: u32| -> Vec<u32> {
            (0..16).map(|p| (p / 2) + 8 * half + 16 * (p % 2)).collect()
        };
        let qu = |half: u32| -> Vec<u32> {
            (0..16)
                .map(|p| {
                    let (l, b) = (p / 4 + 4 * half, p % 4);
                    if b < 2 {
                        2 * l + b
                    } else {
                        16 + 2 * l + b - 2
                    }
                })
                .collect()
        };
        finish(v, tables, [il(0), il(1), qu(0), qu(1)])
    }

    /// Tiles `16 q .. 16 q + 16` of the row.
    fn vector(&self, v: &mut Vasm, q: usize) -> Result<()> {
        let slot = |i: usize| -> Result<AsmMemoryOperand> { Ok(zmmword_ptr(rsp + disp(i * 64)?)) };
        for r in 0..6 {
            for j in 0..6 {
                let at = rdi + disp(((r * 6 + j) * self.store.m_stride + q * LANES) * 4)?;
                v.a.vmovups(zr(D + j), zmmword_ptr(at)).map_err(asm_err)?;
            }
            At::apply(v)?;
            for b in 0..4 {
                v.a.vmovups(slot(r * 4 + b)?, zr(Z + b)).map_err(asm_err)?;
            }
        }
        for b in 0..4 {
            for r in 0..6 {
                v.a.vmovups(zr(D + r), slot(r * 4 + b)?).map_err(asm_err)?;
            }
            At::apply(v)?;
            for a in 0..4 {
                v.a.vmovups(slot(24 + a * 4 + b)?, zr(Z + a))
                    .map_err(asm_err)?;
            }
        }
        for a in 0..self.rows.iter().copied().max().unwrap_or(0) {
            self.output_row(v, q, a, &slot)?;
        }
        Ok(())
    }

    /// Output row `a` of the 16 tiles: `Y[a][0..4]` from the stack, interleaved, the
    /// epilogue and the stores of the pixels inside the output.
    fn output_row(
        &self,
        v: &mut Vasm,
        q: usize,
        a: usize,
        slot: &dyn Fn(usize) -> Result<AsmMemoryOperand>,
    ) -> Result<()> {
        // Pairs: (Y0, Y1) lanes 0-7, lanes 8-15, then (Y2, Y3) the same.
        for (p, (y, half)) in [(0, 0), (0, 1), (2, 0), (2, 1)].into_iter().enumerate() {
            v.a.vmovups(zr(PAIRS + p), slot(24 + a * 4 + y)?)
                .map_err(asm_err)?;
            let other = slot(24 + a * 4 + y + 1)?;
            v.a.vpermt2ps(zr(PAIRS + p), zr(IL + half), other)
                .map_err(asm_err)?;
        }
        // Chunk m: tiles 4 m .. 4 m + 4, from pairs (A, C) = (0, 2) for m < 2, (1, 3) after;
        // of tile row `j` of the call, from its column `col`.
        let per_row = 4 / self.stack;
        for m in 0..4 {
            let j = m / per_row;
            let col = q * LANES * 4 + (m % per_row) * LANES;
            let n = self.store.ow.saturating_sub(col).min(LANES);
            if n == 0 || a >= self.rows[j] {
                continue;
            }
            let (first, second) = if m < 2 { (0, 2) } else { (1, 3) };
            let c = zr(CHUNKS + m);
            v.a.vmovaps(c, zr(PAIRS + first)).map_err(asm_err)?;
            v.a.vpermt2ps(c, zr(QU + m % 2), zr(PAIRS + second))
                .map_err(asm_err)?;
            if n < LANES {
                v.kmask(k2, 0, n)?;
            }
            let at = disp(((4 * j + a) * self.store.ow + col) * 4)?;
            self.epilogue(v, CHUNKS + m, at, n < LANES)?;
        }
        Ok(())
    }

    /// The epilogue of register `x` and its store at byte `at` from `rsi` (residual: from
    /// `rdx`), on the lanes of `k2` when `masked`.
    fn epilogue(&self, v: &mut Vasm, x: usize, at: i32, masked: bool) -> Result<()> {
        let a = &mut v.a;
        if self.store.bias {
            a.vaddps(zr(x), zr(x), iced_x86::code_asm::dword_bcst(rcx + 0))
                .map_err(asm_err)?;
        }
        if self.store.residual {
            let r = zmmword_ptr(rdx + at);
            if masked {
                a.vmovups(zr(RES).k2().z(), r).map_err(asm_err)?;
                a.vaddps(zr(x), zr(x), zr(RES)).map_err(asm_err)?;
            } else {
                a.vaddps(zr(x), zr(x), r).map_err(asm_err)?;
            }
        }
        ACT.apply(v, x, self.store.relu, self.store.clip.is_some())?;
        let o = zmmword_ptr(rsi + at);
        if masked {
            v.a.vmovups(o.k2(), zr(x)).map_err(asm_err)
        } else {
            v.a.vmovups(o, zr(x)).map_err(asm_err)
        }
    }
}

/// The activation of the output transforms (ReLU, clip), in the registers `lo` (zero for a
/// ReLU alone, else the clip's lower bound) and `hi`, at the [`Vasm`]'s width.
#[derive(Clone, Copy)]
pub(super) struct Activation {
    pub lo: usize,
    pub hi: usize,
}

impl Activation {
    /// Loads the registers (`clip`: f32 bit patterns).
    pub fn load(self, v: &mut Vasm, relu: bool, clip: Option<(u32, u32)>) -> Result<()> {
        if let Some((lo, hi)) = clip {
            // ReLU then clip is `max(x, max(lo, 0))` then `min` (see the GEMM kernels).
            let lo = if relu && f32::from_bits(lo) <= 0.0 {
                0
            } else {
                lo
            };
            splat(v, self.lo, lo)?;
            splat(v, self.hi, hi)
        } else if relu {
            v.zero(self.lo)
        } else {
            Ok(())
        }
    }

    /// Register `x` activated: `max` then `min` keep a NaN `x` (and `-0.0`), as the other
    /// kernels' ReLU and clip do.
    pub fn apply(self, v: &mut Vasm, x: usize, relu: bool, clip: bool) -> Result<()> {
        if clip {
            v.max(x, self.lo, x)?;
            v.min(x, self.hi, x)
        } else if relu {
            v.max(x, self.lo, x)
        } else {
            Ok(())
        }
    }
}

/// The 6-to-4-point transform `z = Aᵀ d` of F(4x4, 3x3), registers `D ..` to `Z .. Z + 4`:
/// `z0 = d0 + (d1 + d2) + (d3 + d4)`, `z1 = (d1 - d2) + 2 (d3 - d4)`,
/// `z2 = (d1 + d2) + 4 (d3 + d4)`, `z3 = (d1 - d2) + d5 + 8 (d3 - d4)`.
struct At;

impl At {
    fn apply(v: &mut Vasm) -> Result<()> {
        let (d, t, z) = (|i| zr(D + i), |i| zr(T + i), |i| zr(Z + i));
        let a = &mut v.a;
        a.vaddps(t(0), d(1), d(2)).map_err(asm_err)?;
        a.vsubps(t(1), d(1), d(2)).map_err(asm_err)?;
        a.vaddps(t(2), d(3), d(4)).map_err(asm_err)?;
        a.vsubps(t(3), d(3), d(4)).map_err(asm_err)?;
        a.vaddps(z(0), d(0), t(0)).map_err(asm_err)?;
        a.vaddps(z(0), z(0), t(2)).map_err(asm_err)?;
        a.vmovaps(z(1), t(1)).map_err(asm_err)?;
        a.vfmadd231ps(z(1), t(3), zr(C2)).map_err(asm_err)?;
        a.vmovaps(z(2), t(0)).map_err(asm_err)?;
        a.vfmadd231ps(z(2), t(2), zr(C4)).map_err(asm_err)?;
        a.vaddps(z(3), t(1), d(5)).map_err(asm_err)?;
        a.vfmadd231ps(z(3), t(3), zr(C8)).map_err(asm_err)?;
        Ok(())
    }
}
