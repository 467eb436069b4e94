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
//!   same operations in the same order as the Cranelift kernel's `max_stride2`. At AVX-512,
//!   windows of 2 or 3 columns reduce 32 columns (and for 3 the 33rd) once and split them into
//!   even and odd lanes instead ([`MaxPoolPlane::deinterleaves`]): 0.82x the time.
//! * Stride 1: the taps are loaded where they are and reduced row by row, in the order of
//!   the Cranelift kernel.
//! * Every maximum is `vmaxps m, v, m` (`v` if `v > m`, else `m`: the first of equal
//!   values, as `select(m < v, v, m)`), and a NaN anywhere in a list of values is found by
//!   one compare per two of them and set in the result as all ones, as
//!   [`crate::jit::Emit::max_nan_of`] does: an output is NaN exactly where its window holds
//!   one. AVX2 ORs `vcmpunordps` results into a register; AVX-512 keeps the lanes where
//!   everything so far is ordered in `k2`, each `vcmpordps` masked by `k2` itself (so the
//!   AND costs nothing), and blends all ones into the other lanes at the end (session 11:
//!   one `korw` per pair less).
//! * The groups of a row whose loads stay inside the row run in a loop; those at its ends
//!   are emitted apart with masked loads (AVX-512: `k1` merged into -inf; AVX2:
//!   `vmaskmovps`, then `vblendvps` with -inf) and a masked store, so the kernel reads only
//!   the input plane and writes only its output plane. **Padding** costs nothing more:
//!   window rows above and below the plane are left out of the output rows whose windows
//!   reach them (a separate loop per set of window rows), and columns left and right of it
//!   are the -inf lanes of the masked loads; -inf never wins, and every window holds an
//!   input (padding is at most half the window), as with the padded copy the f32x4 kernel
//!   reads.
//!
//! Arguments (System V): `rdi` the channel's input plane, `rsi` its output plane.
use iced_x86::code_asm::{
    eax, k1, k2, qword_ptr, r10, r11, r8, r9, rcx, rdi, rsi, zmmword_ptr, AsmMemoryOperand,
};

use super::vasm::{asm_err, yr, zr, Masks, Vasm, Width};
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
    /// The input plane (unpadded).
    pub in_h: usize,
    pub in_w: usize,
    /// Padding (at most half the window, so every window holds an input).
    pub pad_h: usize,
    pub pad_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Where the shape allows, split the columns into even and odd lanes
    /// ([`MaxPoolPlane::deinterleaves`]); `false` only to measure (`CNNC_POOL_DEINTERLEAVE=0`,
    /// [`deinterleave_default`]). The same bits either way.
    pub deinterleave: bool,
    /// Software prefetch (`prefetcht0`) of the input `prefetch` output rows ahead: each
    /// output row asks for the input rows that the output row `prefetch` rows further down
    /// reads last (its window's last `min(stride_h, kernel_h)` rows), while they are inside
    /// the plane (0: none). For inputs beyond L2 ([`prefetch_rows_for`]).
    pub prefetch: usize,
}

/// [`MaxPoolPlane::deinterleave`] as the plans set it: on, unless `CNNC_POOL_DEINTERLEAVE=0`
/// (a measuring knob).
pub fn deinterleave_default() -> bool {
    !crate::knobs::off("CNNC_POOL_DEINTERLEAVE")
}

/// Output rows ahead that a max pool with `out_h` output rows and an input image of
/// `bytes` prefetches ([`MaxPoolPlane::prefetch`]): inputs larger than
/// [`POOL_PREFETCH_BYTES`] come from L3 or memory (ResNet-50's first pool reads the stem's
/// 3.2 MB), where the hardware prefetchers, with three interleaved rows of 7 lines each, do
/// not keep enough reads in flight. `bytes` is one image's: at batch > 1 images just under
/// the threshold may still come from L3 unprefetched (not measured). `CNNC_POOL_PF=n` (a measuring knob): `n` rows ahead
/// whatever the size (0: none), at most `out_h` (further is outside the plane anyway).
pub fn prefetch_rows_for(bytes: usize, out_h: usize) -> usize {
    match crate::knobs::number::<usize>("CNNC_POOL_PF") {
        Some(n) => n.min(out_h),
        None if bytes > POOL_PREFETCH_BYTES => POOL_PREFETCH_ROWS,
        None => 0,
    }
}

/// Input bytes (one image) over which a max pool prefetches: inputs that fit in L2 gained
/// nothing (SqueezeNet's 128x55x55 and 256x27x27 pools, 1.4 and 0.7 MB: 26.0 / 24.7 and
/// 13.2 / 13.5 us with and without), the stem's 3.2 MB output in ResNet-50 and DenseNet-121
/// 0.16-0.22 -> 0.06-0.09 ms (session 13, Zen 5 with 1 MB of L2 per core).
pub const POOL_PREFETCH_BYTES: usize = 2 << 20;
/// How far ahead, in output rows: on ResNet-50's first pool from L3, 2 / 4 / 6 / 8 / 12
/// rows took 136 / 116 / 77-90 / 77-88 / 101-104 us against 184 us without (poolab, 8
/// copies of the input); 6 is in the flat part (docs/jit-history.md, session 13, "lean").
const POOL_PREFETCH_ROWS: usize = 6;

/// Registers: the column vectors reduced over the rows (stride 2) start at 0; then these.
const MAX: usize = 8;
const TAP_A: usize = 9;
const TAP_B: usize = 10;
const NAN: usize = 11;
/// AVX-512 (which finds NaNs in `k2`, not in `NAN`): all ones.
const ONES: usize = 11;
const NAN_T: usize = 12;
const PERM: usize = 13;
/// The AVX2 mask register of the lanes [`Masks::set`] sets (also the panel copy's).
pub(super) const MASK: usize = 14;
const NEG_INF: usize = 15;
/// [`MaxPoolPlane::deinterleaves`]: the column vectors reduced over the rows (`A` at the
/// group's first column, `B` 16 columns on, `C` the column after `B`, broadcast), the
/// even columns `E` (the odd ones end in `A`'s register), the third tap `T`, and the
/// indices of the even and odd lanes of `A:B`.
const COL_A: usize = 0;
const COL_B: usize = 1;
const COL_C: usize = 2;
const EVEN: usize = 3;
const TAP_T: usize = 4;
const IDX_EVEN: usize = 16;
const IDX_ODD: usize = 17;

fn disp(bytes: isize) -> Result<i32> {
    i32::try_from(bytes)
        .map_err(|_| Error::Codegen(format!("max pool kernel offset {bytes} exceeds i32")))
}

impl MaxPoolPlane {
    /// Whether the generator takes this shape: strides 1 and 2 along the row, windows of
    /// up to 8 columns (the column vectors of stride 2 in registers 0..8) and 64 taps,
    /// padding of at most half the window.
    pub fn takes(&self) -> bool {
        self.width != Width::X128
            && matches!(self.stride_w, 1 | 2)
            && (1..=8).contains(&self.kernel_w)
            && self.kernel_h >= 1
            && self.kernel_h * self.kernel_w <= 64
            && 2 * self.pad_h <= self.kernel_h
            && 2 * self.pad_w <= self.kernel_w
            && self.out_w >= 1
            && self.out_h >= 1
    }

    fn lanes(&self) -> usize {
        self.width.lanes()
    }

    /// Whether a group of a stride-2 window of 2 or 3 columns splits its columns into even
    /// and odd lanes (AVX-512 `vpermt2ps`; the third tap is the even lanes moved by one,
    /// `valignd`, with column 32 broadcast): the rows of 32 + 1 columns reduced once, where
    /// the column pairs of [`Self::loads`] reduce 2 x 32 (overlapping by all but 2 columns)
    /// and put them in order with `vshufps` and `vpermpd`.
    fn deinterleaves(&self) -> bool {
        self.deinterleave
            && self.width == Width::Z512
            && self.stride_w == 2
            && matches!(self.kernel_w, 2 | 3)
    }

    /// Floats from a group's first window column that its loads reach.
    fn reach(&self) -> usize {
        let l = self.lanes();
        if self.deinterleaves() {
            return 2 * l + usize::from(self.kernel_w == 3);
        }
        self.loads().iter().max().expect("a tap") + l
    }

    /// The float offsets (from the group's first window column) of the vectors a group
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

    /// The first window column of group `g` (negative in the left padding).
    fn group_col(&self, g: usize) -> isize {
        (self.stride_w * self.lanes() * g) as isize - self.pad_w as isize
    }

    /// The groups of `lanes` outputs whose loads all stay inside the row: `first..end`.
    fn full_groups(&self) -> std::ops::Range<usize> {
        let l = self.lanes();
        let reach = self.reach() as isize;
        let first = self.pad_w.div_ceil(self.stride_w * l);
        let mut end = self.out_w / l;
        while end > first && self.group_col(end - 1) + reach > self.in_w as isize {
            end -= 1;
        }
        first..end.max(first)
    }

    /// Output rows with the same window rows inside the input and the same prefetching
    /// ([`Self::prefetches`]), in order: `(first row, rows, fy range, prefetch)`.
    fn row_classes(&self) -> Vec<RowClass> {
        let mut classes: Vec<RowClass> = Vec::new();
        for oy in 0..self.out_h {
            let top = (oy * self.stride_h) as isize - self.pad_h as isize;
            let lo = (-top).max(0) as usize;
            let hi = (self.in_h as isize - top).min(self.kernel_h as isize) as usize;
            let pf = self.prefetches(top);
            match classes.last_mut() {
                Some(c) if c.2 == (lo..hi) && c.3 == pf => c.1 += 1,
                _ => classes.push((oy, 1, lo..hi, pf)),
            }
        }
        classes
    }

    /// Whether the output row whose window starts at row `top` asks for the input rows
    /// `[b - n, b)` that the output row `prefetch` rows below it reads last: `b = top +
    /// prefetch * stride_h + kernel_h`, `n = min(stride_h, kernel_h)` (the rows before them
    /// are read by the rows in between, or asked for by them; with `stride_h > kernel_h` the
    /// rows between two windows are read by none). Only where they lie inside the plane:
    /// `b <= in_h`, and `b - n >= top + kernel_h >= 0` as `2 pad_h <= kernel_h`.
    fn prefetches(&self, top: isize) -> bool {
        let (p, sh) = (self.prefetch as isize, self.stride_h as isize);
        p > 0 && top + self.kernel_h as isize + p * sh <= self.in_h as isize
    }

    /// The byte offsets, from the window's first row, that an output row prefetches: each
    /// line of the rows [`Self::prefetches`] names, at 64-byte steps from their first byte,
    /// and their last byte (the plane need not be aligned), all inside those rows.
    fn prefetch_offsets(&self) -> Vec<isize> {
        let row = (self.in_w * 4) as isize;
        let n = self.stride_h.min(self.kernel_h);
        let first = (self.prefetch * self.stride_h + self.kernel_h - n) as isize * row;
        let len = n as isize * row;
        let at = (0..len).step_by(64).chain(std::iter::once(len - 1));
        at.map(|o| first + o).collect()
    }

    /// `prefetcht0` of [`Self::prefetch_offsets`] from the window's first row at `rcx`.
    fn prefetch_rows(&self, v: &mut Vasm) -> Result<()> {
        for o in self.prefetch_offsets() {
            v.a.prefetcht0(iced_x86::code_asm::byte_ptr(rcx + disp(o)?))
                .map_err(asm_err)?;
        }
        Ok(())
    }

    /// The machine code.
    pub fn emit(&self) -> Result<Vec<u8>> {
        if !self.takes() {
            return Err(Error::Codegen(format!(
                "no wide max pool kernel for {self:?}"
            )));
        }
        let (l, s) = (self.lanes(), self.stride_w);
        let row = self.in_w as isize;
        disp(((self.out_h * self.stride_h + self.kernel_h) * self.in_w * 4) as isize)?;
        let mut v = Vasm::new(self.width)?;
        let mut masks = Masks::default();
        let mut order = v.a.create_label();
        let (mut even, mut odd) = (v.a.create_label(), v.a.create_label());
        if self.deinterleaves() {
            v.load(IDX_EVEN, AsmMemoryOperand::from(even))?;
            v.load(IDX_ODD, AsmMemoryOperand::from(odd))?;
        } else if s == 2 && self.width == Width::Z512 {
            v.load(PERM, AsmMemoryOperand::from(order))?;
        }
        v.a.mov(eax, f32::NEG_INFINITY.to_bits() as i32)
            .map_err(asm_err)?;
        v.splat_eax(NEG_INF)?;
        if self.width == Width::Z512 {
            v.a.vpternlogd(zr(ONES), zr(ONES), zr(ONES), 0xFF)
                .map_err(asm_err)?;
        }
        let full = self.full_groups();
        for (oy, rows, fy, pf) in self.row_classes() {
            // rcx: the window's first row (above the plane in the top padding).
            let top = (oy * self.stride_h) as isize - self.pad_h as isize;
            v.a.lea(rcx, qword_ptr(rdi + disp(top * row * 4)?))
                .map_err(asm_err)?;
            v.a.mov(r8, rows as u64).map_err(asm_err)?;
            let mut next = v.a.create_label();
            v.a.set_label(&mut next).map_err(asm_err)?;
            if pf {
                self.prefetch_rows(&mut v)?;
            }
            // In column order, left edge, loop, right edge: the hardware prefetchers
            // follow the rows (the right edge first measured 7-20% slower).
            for g in 0..full.start {
                self.group(&mut v, &fy, Place::Edge(g), &mut masks)?;
            }
            if !full.is_empty() {
                let col = self.group_col(full.start);
                v.a.lea(r10, qword_ptr(rcx + disp(col * 4)?))
                    .map_err(asm_err)?;
                v.a.lea(r11, qword_ptr(rsi + disp((full.start * l * 4) as isize)?))
                    .map_err(asm_err)?;
                v.a.mov(r9, full.len() as u64).map_err(asm_err)?;
                let mut group = v.a.create_label();
                v.a.set_label(&mut group).map_err(asm_err)?;
                self.group(&mut v, &fy, Place::Loop, &mut masks)?;
                v.a.add(r10, disp((s * l * 4) as isize)?).map_err(asm_err)?;
                v.a.add(r11, disp((l * 4) as isize)?).map_err(asm_err)?;
                v.a.dec(r9).map_err(asm_err)?;
                v.a.jnz(group).map_err(asm_err)?;
            }
            for g in full.end..self.out_w.div_ceil(l) {
                self.group(&mut v, &fy, Place::Edge(g), &mut masks)?;
            }
            v.a.add(rcx, disp((self.stride_h * self.in_w * 4) as isize)?)
                .map_err(asm_err)?;
            v.a.add(rsi, disp((self.out_w * 4) as isize)?)
                .map_err(asm_err)?;
            v.a.dec(r8).map_err(asm_err)?;
            v.a.jnz(next).map_err(asm_err)?;
        }
        v.a.vzeroupper().map_err(asm_err)?;
        v.a.ret().map_err(asm_err)?;
        masks.emit_data(&mut v)?;
        v.a.set_label(&mut order).map_err(asm_err)?;
        v.a.dq(&[0u64, 2, 4, 6, 1, 3, 5, 7]).map_err(asm_err)?;
        if self.deinterleaves() {
            let lanes = |first: u32| -> Vec<u32> { (0..16).map(|i| first + 2 * i).collect() };
            v.a.set_label(&mut even).map_err(asm_err)?;
            v.a.dd(&lanes(0)).map_err(asm_err)?;
            v.a.set_label(&mut odd).map_err(asm_err)?;
            v.a.dd(&lanes(1)).map_err(asm_err)?;
        }
        v.finish()
    }

    /// One group of `lanes` outputs of the row at `rcx` (window rows `fy`) to the row at
    /// `rsi`: in the loop (`r10`, `r11`: its first window column and output; every load
    /// inside the row), or group `g` at the row's ends, whose loads outside the row
    /// (padding, or beyond the row's end) are masked and filled with -inf, and whose
    /// store is masked to the row's outputs.
    fn group(
        &self,
        v: &mut Vasm,
        fy: &std::ops::Range<usize>,
        place: Place,
        masks: &mut Masks,
    ) -> Result<()> {
        let (l, row) = (self.lanes(), self.in_w as isize);
        let (base, col) = match place {
            Place::Loop => (r10, 0),
            Place::Edge(g) => (rcx, self.group_col(g)),
        };
        let edge = matches!(place, Place::Edge(_));
        // One row's vector at float offset `o` of the group's window into `dst`.
        let mut load = |v: &mut Vasm, dst: usize, y: usize, o: usize| -> Result<()> {
            let c = col + o as isize;
            let mem = base + disp((y as isize * row + c) * 4)?;
            let lo = (-c).clamp(0, l as isize) as usize;
            let hi = (row - c).clamp(0, l as isize) as usize;
            if !edge || (lo == 0 && hi == l) {
                return v.load(dst, mem);
            }
            if lo >= hi {
                return mov(v, dst, NEG_INF);
            }
            masks.set(v, (k1, MASK), lo, hi)?;
            match self.width {
                Width::Z512 => {
                    mov(v, dst, NEG_INF)?;
                    v.a.vmovups(zr(dst).k1(), zmmword_ptr(mem)).map_err(asm_err)
                }
                _ => {
                    v.maskload(dst, MASK, mem)?;
                    v.a.vblendvps(yr(dst), yr(NEG_INF), yr(dst), yr(MASK))
                        .map_err(asm_err)
                }
            }
        };
        let rows = fy.len();
        if self.deinterleaves() {
            // Column `2 l` (one float), broadcast: inside the row in the loop (`reach`); at
            // the ends -inf where it is outside.
            let c = col + 2 * l as isize;
            let inside = !edge || (0..row).contains(&c);
            let bcst = |v: &mut Vasm, dst: usize, y: usize| -> Result<()> {
                if !inside {
                    return mov(v, dst, NEG_INF);
                }
                v.bcst(dst, base + disp((y as isize * row + c) * 4)?)
            };
            self.max_of(v, COL_A, rows, &mut |v, dst, y| {
                load(v, dst, fy.start + y, 0)
            })?;
            self.max_of(v, COL_B, rows, &mut |v, dst, y| {
                load(v, dst, fy.start + y, l)
            })?;
            if self.kernel_w == 3 {
                self.max_of(v, COL_C, rows, &mut |v, dst, y| bcst(v, dst, fy.start + y))?;
            }
            // E = the even columns of A:B (tap 0), A = the odd ones (tap 1), T = E's lanes
            // 1.. then C (tap 2: columns 2, 4, .., 32).
            mov(v, EVEN, COL_A)?;
            (v.a.vpermt2ps(zr(EVEN), zr(IDX_EVEN), zr(COL_B))).map_err(asm_err)?;
            (v.a.vpermt2ps(zr(COL_A), zr(IDX_ODD), zr(COL_B))).map_err(asm_err)?;
            if self.kernel_w == 3 {
                (v.a.valignd(zr(TAP_T), zr(COL_C), zr(EVEN), 1)).map_err(asm_err)?;
            }
            let taps = [EVEN, COL_A, TAP_T];
            self.max_of(v, MAX, self.kernel_w, &mut |v, dst, fx| {
                mov(v, dst, taps[fx])
            })?;
        } else if self.stride_w == 2 {
            for (i, &o) in self.loads().iter().enumerate() {
                self.max_of(v, i, rows, &mut |v, dst, y| load(v, dst, fy.start + y, o))?;
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
            self.max_of(v, MAX, rows * kw, &mut |v, dst, t| {
                load(v, dst, fy.start + t / kw, t % kw)
            })?;
        }
        match place {
            Place::Loop => v.store(r11 + 0, MAX),
            Place::Edge(g) => {
                let out = rsi + disp((g * l * 4) as isize)?;
                let n = (self.out_w - g * l).min(l);
                if n == l {
                    return v.store(out, MAX);
                }
                masks.set(v, (k1, MASK), 0, n)?;
                match self.width {
                    Width::Z512 => v.store_k1(out, MAX),
                    _ => v.maskstore(out, MASK, MAX),
                }
            }
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
            // AVX-512: k2 = the lanes where all so far are ordered (neither is NaN), the
            // later compares masked by k2 itself (one instruction per pair: no `korw`);
            // AVX2: NAN = the lanes where one is NaN.
            match (z, i) {
                (true, 0) => v.a.vcmpordps(k2, zr(a), zr(b)).map_err(asm_err)?,
                (true, _) => v.a.vcmpordps(k2.k2(), zr(a), zr(b)).map_err(asm_err)?,
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
            // All ones (register ONES) where k2 is clear.
            v.a.vblendmps(zr(dst).k2(), zr(ONES), zr(dst))
                .map_err(asm_err)
        } else {
            v.a.vorps(yr(dst), yr(dst), yr(NAN)).map_err(asm_err)
        }
    }
}

/// Output rows of a plane that one loop computes: `(first row, rows, the window rows
/// inside the plane, whether they prefetch)`.
type RowClass = (usize, usize, std::ops::Range<usize>, bool);

/// Where a group is: in the loop over the row's middle, or group `g` at its ends.
#[derive(Clone, Copy)]
enum Place {
    Loop,
    Edge(usize),
}

/// `dst = src` (registers).
fn mov(v: &mut Vasm, dst: usize, src: usize) -> Result<()> {
    match v.w {
        Width::Z512 => v.a.vmovaps(zr(dst), zr(src)),
        _ => v.a.vmovaps(yr(dst), yr(src)),
    }
    .map_err(asm_err)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel of a `kh x kw` window of strides `(sh, sw)` and pads `(ph, pw)` on an
    /// `in_h x in_w` plane at `isa`, as a pool layer gets it but with even / odd lanes
    /// where they apply and no prefetch, whatever the measuring knobs say.
    fn plane(
        isa: crate::Isa,
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (ph, pw): (usize, usize),
        (in_h, in_w): (usize, usize),
    ) -> MaxPoolPlane {
        let spec = crate::jit::PoolSpec {
            kind: crate::jit::PoolKind::Max,
            channels: 1,
            in_h,
            in_w,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: sh,
            stride_w: sw,
            pad_h: ph,
            pad_w: pw,
        };
        MaxPoolPlane {
            deinterleave: true,
            prefetch: 0,
            ..spec.wide_max(isa).unwrap()
        }
    }

    /// The input bytes, from the plane's first, that the emitted code prefetches: follows
    /// `rcx` through each row class (`lea rcx, [rdi + d]`, its row count in `r8`, `add rcx,
    /// step` per row) and collects `prefetcht0 [rcx + o]` for every row the class runs.
    fn prefetched_bytes(code: &[u8]) -> Vec<i64> {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
        let ins: Vec<_> = Decoder::new(64, code, DecoderOptions::NONE)
            .into_iter()
            .collect();
        let mut at = Vec::new();
        let mut i = 0;
        while i < ins.len() {
            let lea = &ins[i];
            i += 1;
            if !(lea.mnemonic() == Mnemonic::Lea && lea.op0_register() == Register::RCX) {
                assert!(
                    lea.mnemonic() != Mnemonic::Prefetcht0,
                    "a prefetch outside a row class"
                );
                continue;
            }
            assert_eq!(lea.memory_base(), Register::RDI);
            let first = lea.memory_displacement64() as i64;
            let rows = ins[i..]
                .iter()
                .find(|x| x.mnemonic() == Mnemonic::Mov && x.op0_register() == Register::R8)
                .map(|x| x.immediate(1) as i64)
                .unwrap();
            let end = ins[i..]
                .iter()
                .position(|x| x.mnemonic() == Mnemonic::Lea && x.op0_register() == Register::RCX)
                .map_or(ins.len(), |n| i + n);
            let class = &ins[i..end];
            let step = class
                .iter()
                .find(|x| {
                    x.mnemonic() == Mnemonic::Add
                        && x.op0_register() == Register::RCX
                        && x.op1_kind() != OpKind::Register
                })
                .map(|x| x.immediate(1) as i64)
                .unwrap();
            for x in class
                .iter()
                .filter(|x| x.mnemonic() == Mnemonic::Prefetcht0)
            {
                assert_eq!(x.memory_base(), Register::RCX, "{x}");
                assert_eq!(x.memory_index(), Register::None, "{x}");
                let o = x.memory_displacement64() as i64;
                at.extend((0..rows).map(|r| first + r * step + o));
            }
            i = end;
        }
        at
    }

    /// Every byte the emitted code prefetches lies in the input plane (a prefetch does not
    /// fault, so the guard-page tests cannot see one outside), on windows with and without
    /// padding, odd widths, vertical strides 1, 2 and 3 (taller and shorter than the window)
    /// and prefetch distances up to past the plane's end; the rows asked for are the ones
    /// [`MaxPoolPlane::prefetch_offsets`] names; and some rows prefetch wherever the plane is
    /// tall enough.
    #[test]
    fn prefetches_stay_in_the_plane() {
        for (window, in_h, in_w, prefetch) in [
            ((3, 2, 1), 112, 112, 6),
            ((3, 2, 0), 111, 111, 4),
            ((3, 1, 1), 28, 28, 2),
            ((2, 2, 0), 33, 35, 1),
            ((3, 2, 1), 9, 7, 3),
            ((3, 2, 1), 20, 17, 12),
            ((5, 3, 2), 40, 21, 2),
            ((1, 3, 0), 30, 19, 3),
            ((2, 3, 1), 31, 40, 1),
        ] {
            let (kh, sh, ph) = window;
            for isa in [crate::Isa::Avx2, crate::Isa::Avx512] {
                let plane = MaxPoolPlane {
                    prefetch,
                    ..plane(isa, (kh, 3), (sh, 2), (ph, 1), (in_h, in_w))
                };
                let size = (in_h * in_w * 4) as i64;
                let at = prefetched_bytes(&plane.emit().unwrap());
                for &a in &at {
                    assert!((0..size).contains(&a), "{plane:?}: asks for byte {a}");
                }
                let row = (in_w * 4) as i64;
                let mut rows = 0;
                for oy in 0..plane.out_h {
                    let top = (oy * sh) as i64 - ph as i64;
                    let last = top + (prefetch * sh + kh) as i64;
                    if last <= in_h as i64 {
                        let n = sh.min(kh) as i64;
                        assert!(at.contains(&((last - n) * row)), "{plane:?}: row {oy}");
                        assert!(at.contains(&(last * row - 1)), "{plane:?}: row {oy}");
                        rows += 1;
                    }
                }
                let lines = plane.prefetch_offsets().len();
                assert_eq!(at.len(), rows * lines, "{plane:?}");
                let tall = in_h + ph >= kh + prefetch * sh;
                assert_eq!(rows > 0, tall, "{plane:?}: {rows} rows prefetch");
            }
        }
    }

    /// The even / odd lanes are emitted exactly where [`MaxPoolPlane::deinterleaves`] says
    /// (2- and 3-column windows of stride 2 at AVX-512, unless turned off): the tests that
    /// compare the pools with the reference cannot tell the two paths apart by their
    /// results, and they need an AVX-512 host to run it, this does not.
    #[test]
    fn even_odd_lanes_only_for_short_stride_2_windows_at_avx512() {
        use crate::Isa;
        for (isa, k, stride, deinterleave, want) in [
            (Isa::Avx512, 3, 2, true, true),
            (Isa::Avx512, 2, 2, true, true),
            (Isa::Avx512, 3, 2, false, false),
            (Isa::Avx512, 4, 2, true, false),
            (Isa::Avx512, 3, 1, true, false),
            (Isa::Avx2, 3, 2, true, false),
        ] {
            let plane = MaxPoolPlane {
                deinterleave,
                ..plane(isa, (k, k), (stride, stride), (0, 0), (9, 111))
            };
            let asm = super::super::vasm::disassemble(&plane.emit().unwrap());
            assert_eq!(asm.contains("vpermt2ps"), want, "{plane:?}");
        }
    }
}
