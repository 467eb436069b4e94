//! Copies of im2col columns into a GEMM panel on wide vectors: one AVX2 (ymm) or AVX-512
//! (zmm) kernel per panel shape, assembled with iced-x86 and called by the implicit GEMM
//! ([`crate::jit::implicit`]) and the im2col bands ([`crate::jit::im2col`]) once per block
//! of input channels.
//!
//! Those copies were straight-line f32x4 code in the Cranelift drivers: one load and one
//! store per 4 floats, every tap and every piece of a strip unrolled (Inception 3a's 5x5
//! driver: 560 copies, 2,600 CLIF instructions, ~2 ms of Cranelift in a warm compile; a
//! Cranelift loop over the taps made those layers 5-7% slower). Here the channels and the
//! filter rows are loops, the filter columns and the pieces straight-line, and a copy is one
//! load and one store per 8 or 16 floats: about 20x cheaper to emit per instruction, and
//! fewer instructions to run.
//!
//! * Stride 1: whole vectors, then the last `len % lanes` floats under a mask.
//! * Stride 2: each group of `lanes` outputs takes the even floats of two vectors: one
//!   `vpermt2ps` (AVX-512) or `vshufps` + `vpermpd` (AVX2). Filter columns `fx` and
//!   `fx + 1` share those two loads, the second tap taking the odd floats
//!   ([`PanelCopy::pair`]; the 7x7/2 stem 0.975x the time; at AVX-512 each column's
//!   permute also copies the index, `vmovaps` + `vpermi2ps`).
//! * Reads: a piece's last group loads only the floats it copies (AVX-512 `k1`, AVX2
//!   `vmaskmovps`: masked-off lanes do not fault); the groups before it read up to the
//!   float after their last output, which the next group copies. So a copy reads only
//!   floats between the first and the last it copies: inside the source row. Writes: the
//!   piece's `len` floats, the last group under a mask.
//! * A copy moves bits, so the panel holds exactly what the f32x4 copies wrote.
//! * Padding done by the copy ([`SelfPad`]; the implicit GEMM's padded layers): the source
//!   is the unpadded input, and the panel gets the zeros a padded copy would hold. A
//!   filter row outside the input stores zeros (one test of the row per piece and filter
//!   row, against a fourth argument); columns outside it are lanes that no load reads:
//!   a group with such lanes loads under a mask of exactly the floats its valid outputs
//!   take, and zero-masking leaves the others +0.0, the padded copy's value.
//!
//! Arguments (System V): `rdi` the first channel's source (filter tap (0, 0)), `rsi` the
//! panel, `rdx` the number of channels (at least 1); with [`SelfPad`], `rcx` the source row
//! (of the unpadded input, may be negative) of filter row 0 for the strip's first row.
use iced_x86::code_asm::{k1, r10, r11, r8, r9, rcx, rdi, rdx, rsi, AsmMemoryOperand};

use super::pool::MASK;
use super::vasm::{asm_err, Masks, Vasm, Width};
use crate::error::{Error, Result};

/// `len` floats at the kernel's stride from `from` bytes past a tap's source (negative:
/// before it, on a later row) to `to` bytes past the tap's panel row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyPiece {
    pub from: isize,
    pub to: usize,
    pub len: usize,
}

/// A copy that pads by itself: where each piece lies in the unpadded source, whose rows
/// and columns outside `0..rows` and `0..cols` read as zeros.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SelfPad {
    /// The source plane's rows and columns.
    pub rows: usize,
    pub cols: usize,
    /// For each piece: its source row below the strip's first (rows, `dy * stride_h`), and
    /// the source column of its first output at filter column 0 (may be negative).
    pub at: Vec<(usize, isize)>,
}

/// The copy of one panel shape: everything but the channel count baked in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PanelCopy {
    pub width: Width,
    /// Source floats between consecutive outputs: 1 or 2.
    pub stride: usize,
    /// Filter rows (a loop) and columns (straight-line).
    pub kh: usize,
    pub kw: usize,
    /// Bytes from a filter row's source to the next row's, and from a channel's to the next.
    pub src_row: usize,
    pub src_plane: usize,
    /// Bytes from one tap's panel row to the next (taps `(c, fy, fx)` in order).
    pub dst_row: usize,
    /// What each tap copies; filter column `fx` reads `4 fx` bytes further.
    pub pieces: Vec<CopyPiece>,
    /// `None`: every source position is inside the (padded) source.
    pub pad: Option<SelfPad>,
    /// Stride 2: filter columns two by two from the same loads ([`Self::pair`]); the
    /// callers set it once per plan from [`pairs`], and only at stride 2 with 2+ columns
    /// (so that the knob's two values do not make two copies of the other shapes).
    pub pairs: bool,
}

/// Registers: the two source vectors, the even-lane index (AVX-512), the AVX2 mask is
/// [`MASK`].
const A: usize = 0;
const B: usize = 1;
const EVEN: usize = 2;
/// Zeros, for the filter rows outside the source ([`SelfPad`]).
const ZERO: usize = 3;
/// The odd-lane index (AVX-512), and the two taps of a pair ([`PanelCopy::pair`]).
const ODD: usize = 4;
const C: usize = 5;
const D: usize = 6;

/// Whether stride-2 copies take filter columns two by two from the same loads
/// ([`PanelCopy::pair`]); `CNNC_COPY_PAIRS=0`, a measuring knob: each from loads of its own.
pub fn pairs() -> bool {
    !crate::knobs::off("CNNC_COPY_PAIRS")
}

fn disp(bytes: isize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("panel copy offset {bytes} exceeds i32")))
}

impl PanelCopy {
    /// Whether the generator takes copies at `width` and column stride `stride` (what
    /// [`Self::takes`] asks of every shape; the implicit GEMM pads by itself only where
    /// this holds).
    pub fn supports(width: Width, stride: usize) -> bool {
        width != Width::X128 && matches!(stride, 1 | 2)
    }

    /// Whether the generator takes this shape.
    pub fn takes(&self) -> bool {
        Self::supports(self.width, self.stride)
            && self.kh >= 1
            && self.kw >= 1
            && self.pieces.iter().all(|p| p.len > 0)
            && (self.pad.as_ref()).is_none_or(|p| p.at.len() == self.pieces.len())
    }

    /// Whether filter columns go two by two ([`Self::pair`]).
    fn paired(&self) -> bool {
        self.pairs && self.stride == 2 && self.kw >= 2
    }

    /// Outputs `lo..hi` of piece `i` at filter column `fx` read inside the source's row
    /// (all of them without [`SelfPad`]).
    fn valid(&self, i: usize, fx: usize) -> (usize, usize) {
        let len = self.pieces[i].len;
        let Some(pad) = &self.pad else {
            return (0, len);
        };
        let (s, col0) = (self.stride as isize, pad.at[i].1 + fx as isize);
        // Output j reads column col0 + j * s: inside for 0 <= col0 + j s < cols.
        let lo = if col0 >= 0 { 0 } else { (-col0 + s - 1) / s };
        let hi = (pad.cols as isize - col0 + s - 1).div_euclid(s);
        let lo = (lo as usize).min(len);
        (lo, (hi.max(0) as usize).clamp(lo, len))
    }

    /// The machine code.
    pub fn emit(&self) -> Result<Vec<u8>> {
        if !self.takes() {
            return Err(Error::Codegen(format!("no panel copy kernel for {self:?}")));
        }
        let mut v = Vasm::new(self.width)?;
        let mut masks = Masks::default();
        let mut even = v.a.create_label();
        let mut odd = v.a.create_label();
        if self.stride == 2 && self.width == Width::Z512 {
            v.load(EVEN, AsmMemoryOperand::from(even))?;
            if self.paired() {
                v.load(ODD, AsmMemoryOperand::from(odd))?;
            }
        }
        let step = |v: &mut Vasm, r, bytes: usize| -> Result<()> {
            v.a.add(r, disp(bytes as isize)?).map_err(asm_err)
        };
        if self.pad.is_some() {
            // r10: the source row of filter row 0 (the fourth argument), r11 of the row
            // being copied.
            v.a.mov(r10, rcx).map_err(asm_err)?;
            v.zero(ZERO)?;
        }
        let mut channel = v.a.create_label();
        v.a.set_label(&mut channel).map_err(asm_err)?;
        v.a.mov(rcx, rdi).map_err(asm_err)?;
        v.a.mov(r9, self.kh as u64).map_err(asm_err)?;
        if self.pad.is_some() {
            v.a.mov(r11, r10).map_err(asm_err)?;
        }
        let mut row = v.a.create_label();
        v.a.set_label(&mut row).map_err(asm_err)?;
        for (i, p) in self.pieces.iter().enumerate() {
            // With padding: the piece's source row, tested (unsigned: a negative row is
            // above 2^63) against the source's rows; outside it, zeros.
            let mut outside = None;
            if let Some(pad) = &self.pad {
                let label = v.a.create_label();
                v.a.lea(r8, r11 + disp(pad.at[i].0 as isize)?)
                    .map_err(asm_err)?;
                v.a.cmp(r8, disp(pad.rows as isize)?).map_err(asm_err)?;
                v.a.jae(label).map_err(asm_err)?;
                outside = Some(label);
            }
            let mut fx = 0;
            while fx < self.kw {
                let from = p.from + 4 * fx as isize;
                let to = (fx * self.dst_row + p.to) as isize;
                if self.paired() && fx + 1 < self.kw {
                    let to2 = to + self.dst_row as isize;
                    let valid = (self.valid(i, fx), self.valid(i, fx + 1));
                    self.pair(&mut v, &mut masks, (from, to, to2, p.len), valid)?;
                    fx += 2;
                } else {
                    self.piece(&mut v, &mut masks, (from, to, p.len), self.valid(i, fx))?;
                    fx += 1;
                }
            }
            if let Some(mut label) = outside {
                let mut done = v.a.create_label();
                v.a.jmp(done).map_err(asm_err)?;
                v.a.set_label(&mut label).map_err(asm_err)?;
                for fx in 0..self.kw {
                    let to = (fx * self.dst_row + p.to) as isize;
                    self.zeros(&mut v, &mut masks, to, p.len)?;
                }
                v.a.set_label(&mut done).map_err(asm_err)?;
            }
        }
        step(&mut v, rcx, self.src_row)?;
        step(&mut v, rsi, self.kw * self.dst_row)?;
        if self.pad.is_some() {
            v.a.inc(r11).map_err(asm_err)?;
        }
        v.a.dec(r9).map_err(asm_err)?;
        v.a.jnz(row).map_err(asm_err)?;
        step(&mut v, rdi, self.src_plane)?;
        v.a.dec(rdx).map_err(asm_err)?;
        v.a.jnz(channel).map_err(asm_err)?;
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.a.set_label(&mut even).map_err(asm_err)?;
        v.a.dd(&(0..16).map(|i| 2 * i).collect::<Vec<u32>>())
            .map_err(asm_err)?;
        v.a.set_label(&mut odd).map_err(asm_err)?;
        v.a.dd(&(0..16).map(|i| 2 * i + 1).collect::<Vec<u32>>())
            .map_err(asm_err)?;
        v.finish()
    }

    /// Stride 2: filter columns `fx` and `fx + 1` of a piece from the same loads, the
    /// first the even lanes, the second the odd ones (outputs `j` read floats `2 j` and
    /// `2 j + 1` from `from`), to `rsi + to` and `rsi + to2`. Fully valid, a group reads
    /// as [`Self::piece`] does for `fx`, plus the float after its last output in the last
    /// group (the second tap's last output: inside the row). Else it loads only the span
    /// from the first to the last float that a valid output of either tap takes (inside
    /// the row: columns between two of the row's are the row's), so every invalid output's
    /// float, outside the row, is outside the span: +0.0.
    fn pair(
        &self,
        v: &mut Vasm,
        masks: &mut Masks,
        (from, to, to2, len): (isize, isize, isize, usize),
        valid: ((usize, usize), (usize, usize)),
    ) -> Result<()> {
        let l = self.width.lanes();
        let ((lo0, hi0), (lo1, hi1)) = valid;
        let whole = (lo0, hi0, lo1, hi1) == (0, len, 0, len);
        for g in (0..len).step_by(l) {
            let n = (len - g).min(l);
            let last = g + l >= len;
            let src = |o: usize| -> Result<AsmMemoryOperand> {
                Ok(rcx + disp(from + ((g * 2 + o) * 4) as isize)?)
            };
            if whole {
                let reach = if last { (n - 1) * 2 + 2 } else { 2 * l };
                self.load(v, masks, A, src(0)?, (0, reach.min(l)))?;
                if reach > l {
                    self.load(v, masks, B, src(l)?, (0, reach - l))?;
                }
            } else {
                // Valid outputs of the group, per tap, and the floats they take.
                let part = |lo: usize, hi: usize, odd: usize| {
                    let (a, b) = (lo.clamp(g, g + n) - g, hi.clamp(g, g + n) - g);
                    (a < b).then(|| (a * 2 + odd, (b - 1) * 2 + odd))
                };
                let spans = [part(lo0, hi0, 0), part(lo1, hi1, 1)];
                let first = spans.iter().flatten().map(|s| s.0).min();
                let end = spans.iter().flatten().map(|s| s.1).max();
                match (first, end) {
                    (Some(a), Some(b)) => {
                        self.load_span(v, masks, A, src(0)?, (a, b + 1), 0)?;
                        self.load_span(v, masks, B, src(l)?, (a, b + 1), l)?;
                    }
                    _ => {
                        v.zero(A)?;
                        v.zero(B)?;
                    }
                }
            }
            self.lanes_of(v, C, EVEN, 0x88)?;
            self.store(v, masks, rsi + disp(to + (g * 4) as isize)?, C, n)?;
            self.lanes_of(v, D, ODD, 0xDD)?;
            self.store(v, masks, rsi + disp(to2 + (g * 4) as isize)?, D, n)?;
        }
        Ok(())
    }

    /// `dst` = the even (`index` EVEN, `imm` 0x88) or odd (ODD, 0xDD) lanes of `A` then of
    /// `B`, in order; `B` kept, and `A` unless it is `dst` (then one permute in place).
    fn lanes_of(&self, v: &mut Vasm, dst: usize, index: usize, imm: u32) -> Result<()> {
        use iced_x86::code_asm::{get_ymm, get_zmm};
        use iced_x86::Register::{YMM0, ZMM0};
        let z = |i: usize| get_zmm(ZMM0 + i as u32).expect("zmm below 32");
        let y = |i: usize| get_ymm(YMM0 + i as u32).expect("ymm below 16");
        match self.width {
            Width::Z512 if dst == A => v.a.vpermt2ps(z(A), z(index), z(B)).map_err(asm_err),
            Width::Z512 => {
                v.a.vmovaps(z(dst), z(index)).map_err(asm_err)?;
                v.a.vpermi2ps(z(dst), z(A), z(B)).map_err(asm_err)
            }
            _ => {
                v.a.vshufps(y(dst), y(A), y(B), imm).map_err(asm_err)?;
                v.a.vpermpd(y(dst), y(dst), 0xD8).map_err(asm_err)
            }
        }
    }

    /// `len` floats from `rcx + from` (at the stride) to `rsi + to`, a group of `lanes`
    /// outputs at a time; outputs outside `valid` are zeros, read from nowhere.
    fn piece(
        &self,
        v: &mut Vasm,
        masks: &mut Masks,
        (from, to, len): (isize, isize, usize),
        (lo, hi): (usize, usize),
    ) -> Result<()> {
        let (l, s) = (self.width.lanes(), self.stride);
        for g in (0..len).step_by(l) {
            let n = (len - g).min(l);
            let last = g + l >= len;
            let src = |o: usize| -> Result<AsmMemoryOperand> {
                Ok(rcx + disp(from + ((g * s + o) * 4) as isize)?)
            };
            let dst = rsi + disp(to + (g * 4) as isize)?;
            if lo == 0 && hi == len {
                // Floats the group reads: all `s * lanes` but in the last group, which
                // reads exactly up to its last output.
                let reach = if last { (n - 1) * s + 1 } else { s * l };
                self.load(v, masks, A, src(0)?, (0, reach.min(l)))?;
                if s == 2 {
                    if reach > l {
                        self.load(v, masks, B, src(l)?, (0, reach - l))?;
                    }
                    self.even_lanes(v)?;
                }
            } else {
                // Only the floats of the valid outputs `a..b` of the group, from the first
                // one's to the last one's: inside the source row.
                let (a, b) = (lo.clamp(g, g + n) - g, hi.clamp(g, g + n) - g);
                if a == b {
                    v.zero(A)?;
                } else {
                    let span = (a * s, (b - 1) * s + 1);
                    self.load_span(v, masks, A, src(0)?, span, 0)?;
                    if s == 2 {
                        self.load_span(v, masks, B, src(l)?, span, l)?;
                        self.even_lanes(v)?;
                    }
                }
            }
            self.store(v, masks, dst, A, n)?;
        }
        Ok(())
    }

    /// Register `r` = the floats of `span` among the `lanes` at `mem` (lane `i` the float
    /// `first + i`), zeros elsewhere.
    fn load_span(
        &self,
        v: &mut Vasm,
        masks: &mut Masks,
        r: usize,
        mem: AsmMemoryOperand,
        (a, b): (usize, usize),
        first: usize,
    ) -> Result<()> {
        let l = self.width.lanes();
        let (a, b) = (
            a.clamp(first, first + l) - first,
            b.clamp(first, first + l) - first,
        );
        if a == b {
            return v.zero(r);
        }
        self.load(v, masks, r, mem, (a, b))
    }

    /// Zeros to `len` floats at `rsi + to`.
    fn zeros(&self, v: &mut Vasm, masks: &mut Masks, to: isize, len: usize) -> Result<()> {
        let l = self.width.lanes();
        for g in (0..len).step_by(l) {
            let dst = rsi + disp(to + (g * 4) as isize)?;
            self.store(v, masks, dst, ZERO, (len - g).min(l))?;
        }
        Ok(())
    }

    /// The first `n` lanes of register `r` to `dst` (a masked store for fewer than all).
    fn store(
        &self,
        v: &mut Vasm,
        masks: &mut Masks,
        dst: AsmMemoryOperand,
        r: usize,
        n: usize,
    ) -> Result<()> {
        if n == self.width.lanes() {
            return v.store(dst, r);
        }
        masks.set(v, (k1, MASK), 0, n)?;
        match self.width {
            Width::Z512 => v.store_k1(dst, r),
            _ => v.maskstore(dst, MASK, r),
        }
    }

    /// Register `r` = lanes `lo..hi` of the floats at `mem` (the others zero; masked-off
    /// lanes are not read).
    fn load(
        &self,
        v: &mut Vasm,
        masks: &mut Masks,
        r: usize,
        mem: AsmMemoryOperand,
        (lo, hi): (usize, usize),
    ) -> Result<()> {
        if (lo, hi) == (0, self.width.lanes()) {
            return v.load(r, mem);
        }
        masks.set(v, (k1, MASK), lo, hi)?;
        match self.width {
            Width::Z512 => v.load_k1(r, mem),
            _ => v.maskload(r, MASK, mem),
        }
    }

    /// `A` = the even lanes of `A` then of `B`, in order.
    fn even_lanes(&self, v: &mut Vasm) -> Result<()> {
        self.lanes_of(v, A, EVEN, 0x88)
    }
}
