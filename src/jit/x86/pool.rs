//! Max pooling of one channel plane on wide vectors: an AVX2 (ymm) or AVX-512 (zmm) kernel
//! assembled with iced-x86 and called by the Cranelift pool kernel ([`crate::jit::pool`])
//! once per channel, for horizontal strides 1 and 2.
//!
//! The f32x4 Cranelift code spends about 11 instructions per output of a 3x3/2 window
//! (SqueezeNet's pools ran at 3-5x onnxruntime's time); here a group of 8 or 16 outputs
//! costs about 50 (3 per output at 16 lanes), with the loads and stores of whole vectors.
//!
//! * Stride 2: each pair of vectors `[2q, 2q + 2L)` (L lanes) that the taps `fx = 2q,
//!   2q + 1` select from is reduced over the window's rows first, then `vshufps` picks the
//!   even or odd columns of the pair for each tap, in the lane order of one 128-bit block
//!   at a time; the taps' maximum is put in column order by one `vpermpd` at the end. The
//!   same operations in the same order as the Cranelift kernel's `max_stride2`.
//! * Stride 1: the taps are loaded where they are and reduced row by row, in the order of
//!   the Cranelift kernel.
//! * Every maximum is `vmaxps m, v, m` (`v` if `v > m`, else `m`: the first of equal
//!   values, as `select(m < v, v, m)`), and a NaN anywhere in a list of values is found by
//!   one `vcmpunordps` per two of them and ORed into the result as all ones, as
//!   [`crate::jit::Emit::max_nan_of`] does: an output is NaN exactly where its window holds
//!   one.
//! * The groups of a row whose loads stay inside the row run in a loop; the rest are
//!   emitted after it with masked loads and a masked store (AVX-512: `k1`, zero-masking;
//!   AVX2: `vmaskmovps`, the mask loaded from a table after the code), so the kernel reads
//!   only the rows of its windows and writes only its output plane. Masked-off lanes load
//!   zeros, which only the lanes not stored see.
//!
//! Arguments (System V): `rdi` the plane's first input (the padded scratch plane when the
//! pool pads), `rsi` the output plane.
use iced_x86::code_asm::{
    eax, k1, k2, k3, r10, r11, r8, r9, rdi, rsi, AsmMemoryOperand, CodeLabel,
};

use super::vasm::{asm_err, Vasm, Width};
use crate::error::{Error, Result};

/// The kernel of one max pool shape: everything baked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxPoolPlane {
    pub width: Width,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    /// 1 or 2.
    pub stride_w: usize,
    /// Floats per input row (of the padded plane).
    pub row: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Registers: the column vectors reduced over the rows (stride 2) start at 0; then these.
const MAX: usize = 8;
const TAP_A: usize = 9;
const TAP_B: usize = 10;
const NAN: usize = 11;
const NAN_T: usize = 12;
const PERM: usize = 13;
const MASK: usize = 14;

fn disp(bytes: usize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("max pool kernel offset {bytes} exceeds i32")))
}

impl MaxPoolPlane {
    /// Whether the generator takes this shape: strides 1 and 2 along the row, windows of
    /// up to 8 columns (the column vectors of stride 2 in registers 0..8) and 64 taps.
    pub fn takes(&self) -> bool {
        self.width != Width::X128
            && matches!(self.stride_w, 1 | 2)
            && (1..=8).contains(&self.kernel_w)
            && self.kernel_h >= 1
            && self.kernel_h * self.kernel_w <= 64
            && self.out_w >= 1
            && self.out_h >= 1
    }

    fn lanes(&self) -> usize {
        self.width.lanes()
    }

    /// The float offsets (from the group's first input column) of the vectors a group
    /// loads in each row: per column pair `(q, half)` at stride 2, per tap at stride 1.
    fn loads(&self) -> Vec<usize> {
        let l = self.lanes();
        if self.stride_w == 1 {
            (0..self.kernel_w).collect()
        } else {
            (0..self.kernel_w.div_ceil(2))
                .flat_map(|q| [2 * q, 2 * q + l])
                .collect()
        }
    }

    /// Groups of `lanes` outputs whose loads all stay in the row.
    fn full_groups(&self) -> usize {
        let (l, s) = (self.lanes(), self.stride_w);
        let reach = self.loads().iter().max().expect("a tap") + l;
        let mut g = self.out_w / l;
        while g > 0 && s * l * (g - 1) + reach > self.row {
            g -= 1;
        }
        g
    }

    /// The machine code.
    pub fn emit(&self) -> Result<Vec<u8>> {
        if !self.takes() {
            return Err(Error::Codegen(format!(
                "no wide max pool kernel for {self:?}"
            )));
        }
        let (l, s) = (self.lanes(), self.stride_w);
        disp((self.out_h * self.stride_h + self.kernel_h) * self.row * 4)?;
        let mut v = Vasm::new(self.width)?;
        // A label per AVX2 mask (`masks[m]`: the first `m` lanes set) and for the AVX-512
        // lane order: a label's address plus a displacement is not RIP-relative.
        let mut masks: Vec<CodeLabel> = (0..l).map(|_| v.a.create_label()).collect();
        let mut order = v.a.create_label();
        if s == 2 && self.width == Width::Z512 {
            v.load(PERM, AsmMemoryOperand::from(order))?;
        }
        let full = self.full_groups();
        v.a.mov(r8, self.out_h as u64).map_err(asm_err)?;
        let mut row = v.a.create_label();
        v.a.set_label(&mut row).map_err(asm_err)?;
        v.a.mov(r10, rdi).map_err(asm_err)?;
        v.a.mov(r11, rsi).map_err(asm_err)?;
        if full > 0 {
            v.a.mov(r9, full as u64).map_err(asm_err)?;
            let mut group = v.a.create_label();
            v.a.set_label(&mut group).map_err(asm_err)?;
            self.group(&mut v, 0, None, &masks)?;
            v.a.add(r10, disp(s * l * 4)?).map_err(asm_err)?;
            v.a.add(r11, disp(l * 4)?).map_err(asm_err)?;
            v.a.dec(r9).map_err(asm_err)?;
            v.a.jnz(group).map_err(asm_err)?;
        }
        for (i, first) in (full * l..self.out_w).step_by(l).enumerate() {
            let n = (self.out_w - first).min(l);
            let first_col = s * first;
            // Valid floats of the row from each load on (`row - column`, at most `l`).
            let valid = |o: usize| self.row.saturating_sub(first_col + o).min(l);
            self.group(&mut v, i, Some((n, &valid)), &masks)?;
        }
        v.a.add(rdi, disp(self.stride_h * self.row * 4)?)
            .map_err(asm_err)?;
        v.a.add(rsi, disp(self.out_w * 4)?).map_err(asm_err)?;
        v.a.dec(r8).map_err(asm_err)?;
        v.a.jnz(row).map_err(asm_err)?;
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        // The AVX2 masks: `l` set lanes, then `l` clear; the mask of `m` lanes starts at
        // lane `l - m`. Then the AVX-512 lane order of stride 2.
        for i in 0..2 * l {
            if (1..=l).contains(&i) {
                v.a.set_label(&mut masks[l - i]).map_err(asm_err)?;
            }
            v.a.dd(&[if i < l { u32::MAX } else { 0 }])
                .map_err(asm_err)?;
        }
        v.a.set_label(&mut order).map_err(asm_err)?;
        v.a.dq(&[0u64, 2, 4, 6, 1, 3, 5, 7]).map_err(asm_err)?;
        v.finish()
    }

    /// One group of `lanes` outputs from `r10` (its first input column of the row) to
    /// `r11`, `at` groups further on; a tail group (`tail`: outputs to store, and the
    /// valid floats from each load offset) loads and stores under masks.
    fn group(
        &self,
        v: &mut Vasm,
        at: usize,
        tail: Option<(usize, &dyn Fn(usize) -> usize)>,
        masks: &[CodeLabel],
    ) -> Result<()> {
        let l = self.lanes();
        let base = at * self.stride_w * l * 4;
        let valid = |o: usize| tail.map_or(l, |(_, f)| f(o));
        // One row's vector at float offset `o` of the group into `dst`.
        let load = |v: &mut Vasm, dst: usize, fy: usize, o: usize| -> Result<()> {
            let mem = r10 + disp(base + (fy * self.row + o) * 4)?;
            match valid(o) {
                n if n == l => v.load(dst, mem),
                0 => v.zero(dst),
                n => {
                    mask(v, n, masks)?;
                    match self.width {
                        Width::Z512 => v.load_k1(dst, mem),
                        _ => v.maskload(dst, MASK, mem),
                    }
                }
            }
        };
        if self.stride_w == 2 {
            for (i, &o) in self.loads().iter().enumerate() {
                self.max_of(v, i, self.kernel_h, &mut |v, dst, fy| load(v, dst, fy, o))?;
            }
            self.max_of(v, MAX, self.kernel_w, &mut |v, dst, fx| {
                let (q, r) = (fx / 2, fx % 2);
                let imm = if r == 0 { 0x88 } else { 0xDD };
                shufps(v, dst, 2 * q, 2 * q + 1, imm)
            })?;
            match self.width {
                Width::Z512 => v.a.vpermpd(zr(MAX), zr(PERM), zr(MAX)),
                _ => v.a.vpermpd(yr(MAX), yr(MAX), 0xD8),
            }
            .map_err(asm_err)?;
        } else {
            let kw = self.kernel_w;
            self.max_of(v, MAX, self.kernel_h * kw, &mut |v, dst, t| {
                load(v, dst, t / kw, t % kw)
            })?;
        }
        let out = r11 + disp(at * l * 4)?;
        match tail {
            Some((n, _)) if n < l => {
                mask(v, n, masks)?;
                match self.width {
                    Width::Z512 => v.store_k1(out, MAX),
                    _ => v.maskstore(out, MASK, MAX),
                }
            }
            _ => v.store(out, MAX),
        }
    }

    /// `dst` = the maximum of `n` values that `get(v, reg, i)` puts into a register, in
    /// order, NaN wherever one of them is (all ones; see the module's comment).
    fn max_of(
        &self,
        v: &mut Vasm,
        dst: usize,
        n: usize,
        get: &mut dyn FnMut(&mut Vasm, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let z = self.width == Width::Z512;
        for i in (0..n).step_by(2) {
            let a = if i == 0 { dst } else { TAP_A };
            get(v, a, i)?;
            let b = if i + 1 < n {
                get(v, TAP_B, i + 1)?;
                TAP_B
            } else {
                a
            };
            // Unordered: either is NaN. AVX-512 into k2 (k3, ORed in), AVX2 into NAN.
            match (z, i) {
                (true, 0) => unord_k(v, k2, a, b)?,
                (true, _) => {
                    unord_k(v, k3, a, b)?;
                    v.a.korw(k2, k2, k3).map_err(asm_err)?;
                }
                (false, 0) => unord(v, NAN, a, b)?,
                (false, _) => {
                    unord(v, NAN_T, a, b)?;
                    v.a.vorps(yr(NAN), yr(NAN), yr(NAN_T)).map_err(asm_err)?;
                }
            }
            if i > 0 {
                v.max(dst, a, dst)?;
            }
            if b != a {
                v.max(dst, b, dst)?;
            }
        }
        if z {
            // All ones where k2 is set.
            v.a.vpternlogd(zr(dst).k2(), zr(dst), zr(dst), 0xFF)
                .map_err(asm_err)
        } else {
            v.a.vorps(yr(dst), yr(dst), yr(NAN)).map_err(asm_err)
        }
    }
}

fn zr(i: usize) -> iced_x86::code_asm::AsmRegisterZmm {
    iced_x86::code_asm::get_zmm(iced_x86::Register::ZMM0 + i as u32).expect("zmm below 32")
}
fn yr(i: usize) -> iced_x86::code_asm::AsmRegisterYmm {
    iced_x86::code_asm::get_ymm(iced_x86::Register::YMM0 + i as u32).expect("ymm below 16")
}

/// The first `n` lanes: AVX-512 in `k1`, AVX2 in register `MASK` from `masks[n]`.
fn mask(v: &mut Vasm, n: usize, masks: &[CodeLabel]) -> Result<()> {
    if v.w == Width::Z512 {
        v.a.mov(eax, ((1u32 << n) - 1) as i32).map_err(asm_err)?;
        v.a.kmovw(k1, eax).map_err(asm_err)
    } else {
        v.load(MASK, AsmMemoryOperand::from(masks[n]))
    }
}

/// `dst` = lanes `[r, r + 2]` of each 128-bit block of `a`, then of `b` (`vshufps`).
fn shufps(v: &mut Vasm, dst: usize, a: usize, b: usize, imm: u32) -> Result<()> {
    match v.w {
        Width::Z512 => v.a.vshufps(zr(dst), zr(a), zr(b), imm),
        _ => v.a.vshufps(yr(dst), yr(a), yr(b), imm),
    }
    .map_err(asm_err)
}

/// AVX2: `dst` = all ones in the lanes where `a` or `b` is NaN.
fn unord(v: &mut Vasm, dst: usize, a: usize, b: usize) -> Result<()> {
    v.a.vcmpunordps(yr(dst), yr(a), yr(b)).map_err(asm_err)
}

/// AVX-512: mask `k` = the lanes where `a` or `b` is NaN.
fn unord_k(v: &mut Vasm, k: iced_x86::code_asm::AsmRegisterK, a: usize, b: usize) -> Result<()> {
    v.a.vcmpunordps(k, zr(a), zr(b)).map_err(asm_err)
}
