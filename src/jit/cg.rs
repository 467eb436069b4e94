//! Small helpers shared by the code generators: memory flags, counted loops, FMA, ReLU and
//! a padded copy of an image plane.
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};

use super::module::Emit;
use crate::error::Result;

pub(crate) const F32X4: Type = types::F32X4;
pub(crate) const F32: Type = types::F32;
pub(crate) const I64: Type = types::I64;
pub(crate) const I32: Type = types::I32;

/// Flags for loads of memory the kernel never writes (weights, inputs, tables): `readonly` and
/// `can_move` let Cranelift keep them next to their uses instead of hoisting them into spills.
pub(crate) fn ro() -> MemFlagsData {
    MemFlagsData::new()
        .with_notrap()
        .with_readonly()
        .with_can_move()
}

/// Flags for loads of memory the kernel itself wrote earlier (scratch) and for stores.
pub(crate) fn rw() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Whether a tensor of these dimensions fits the generated code's i32 byte offsets (with a
/// factor 2 of margin for padded channel blocks), computed without overflow.
pub(crate) fn fits(dims: &[usize]) -> bool {
    dims.iter()
        .try_fold(4usize, |acc, &d| acc.checked_mul(d))
        .is_some_and(|b| b <= i32::MAX as usize / 2)
}

/// Upper bound on any single dimension, checked before any arithmetic on the dimensions.
pub(crate) const MAX_DIM: usize = 1 << 24;

/// Converts a byte offset known at compile time to a load/store immediate.
pub(crate) fn off(x: usize) -> i32 {
    i32::try_from(x).expect("offsets are checked against i32 when the spec is validated")
}

impl Emit<'_> {
    pub(crate) fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub(crate) fn add_imm(&mut self, x: Value, v: i64) -> Value {
        if v == 0 {
            x
        } else {
            self.b.ins().iadd_imm_s(x, v)
        }
    }

    /// `x * c` for a compile-time constant `c`.
    pub(crate) fn mul_imm(&mut self, x: Value, c: i64) -> Value {
        self.b.ins().imul_imm_s(x, c)
    }

    /// The address of `bytes` of this function's stack frame, 64-byte aligned (per-call
    /// temporary memory: each thread's call has its own); `what` names it in the error if
    /// it is too large for a frame.
    pub(crate) fn stack_buffer(&mut self, bytes: usize, what: &str) -> Result<Value> {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let size = u32::try_from(bytes + 64)
            .map_err(|_| crate::Error::Codegen(format!("{what} too large for the stack")))?;
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, size, 0);
        let slot = self.b.create_sized_stack_slot(data);
        let raw = self.b.ins().stack_addr(I64, slot, 0);
        let raw = self.add_imm(raw, 63);
        Ok(self.b.ins().band_imm_s(raw, -64))
    }

    pub(crate) fn fzero(&mut self, ty: Type) -> Value {
        let z = self.b.ins().f32const(0.0f32);
        if ty == F32 {
            z
        } else {
            self.b.ins().splat(ty, z)
        }
    }

    /// `a * b + c`, fused when the host has FMA.
    pub(crate) fn fmadd(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.has_fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    /// `max(x, 0)`, NaN-propagating like PyTorch's ReLU: `x` where `!(x < 0)`, else 0.
    /// Two instructions for f32x4 (`cmpps` + `andps`); Cranelift's `fmax` takes 8.
    pub(crate) fn relu(&mut self, x: Value) -> Value {
        use cranelift_codegen::ir::condcodes::FloatCC;
        let ty = self.b.func.dfg.value_type(x);
        let z = self.fzero(ty);
        let keep = self
            .b
            .ins()
            .fcmp(FloatCC::UnorderedOrGreaterThanOrEqual, x, z);
        if ty == F32 {
            self.b.ins().select(keep, x, z)
        } else {
            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            let mask = self.b.ins().bitcast(ty, le, keep);
            self.b.ins().band(x, mask)
        }
    }

    /// The maximum of f32x4 `values`, lane by lane, NaN wherever any of them is NaN (then
    /// the NaN with all bits set, not necessarily the input's), in about two instructions
    /// per value on x86 where a chain of [`Self::max_nan`] takes six: the maxima are
    /// `select(m < v, v, m)`, one `maxps` each (which keeps `m` if either is NaN), and the
    /// NaNs are found apart, two values per unordered compare.
    pub(crate) fn max_nan_of(&mut self, values: &[Value]) -> Value {
        use cranelift_codegen::ir::condcodes::FloatCC;
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let (&first, rest) = values.split_first().expect("a maximum of no values");
        let ty = self.b.func.dfg.value_type(first);
        let mut max = first;
        for &v in rest {
            let lt = self.b.ins().fcmp(FloatCC::LessThan, max, v);
            let lt = self.b.ins().bitcast(ty, le, lt);
            max = self.b.ins().bitselect(lt, v, max);
        }
        let mut nan: Option<Value> = None;
        for pair in values.chunks(2) {
            let (a, b) = (pair[0], *pair.last().unwrap_or(&pair[0]));
            let uno = self.b.ins().fcmp(FloatCC::Unordered, a, b);
            nan = Some(match nan {
                None => uno,
                Some(n) => self.b.ins().bor(n, uno),
            });
        }
        let nan = self.b.ins().bitcast(ty, le, nan.expect("values"));
        self.b.ins().bor(max, nan)
    }

    /// `v` if `v > m` or `v` is NaN, else `m`: the max of a running maximum `m` and a new
    /// value, NaN-propagating like PyTorch's max pool, in 4 instructions on x86 for f32x4
    /// (Cranelift's `fmax` takes 8).
    pub(crate) fn max_nan(&mut self, m: Value, v: Value) -> Value {
        use cranelift_codegen::ir::condcodes::FloatCC;
        let gt = self.b.ins().fcmp(FloatCC::GreaterThan, v, m);
        let nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
        let mask = self.b.ins().bor(gt, nan);
        let ty = self.b.func.dfg.value_type(v);
        if ty == F32 {
            self.b.ins().select(mask, v, m)
        } else {
            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            let mask = self.b.ins().bitcast(ty, le, mask);
            self.b.ins().bitselect(mask, v, m)
        }
    }

    /// `sum c * x` over `terms`, whose constant coefficients are nonzero: `1` and `-1` as an
    /// add or subtract, others as a multiply(-add) by the splatted constant.
    pub(crate) fn lincomb(&mut self, terms: &[(f32, Value)]) -> Value {
        let mut acc: Option<Value> = None;
        for &(c, x) in terms {
            debug_assert!(c != 0.0);
            let ty = self.b.func.dfg.value_type(x);
            let constant = |e: &mut Self| {
                let k = e.b.ins().f32const(c);
                if ty == F32 {
                    k
                } else {
                    e.b.ins().splat(ty, k)
                }
            };
            acc = Some(match acc {
                None if c == 1.0 => x,
                None if c == -1.0 => self.b.ins().fneg(x),
                None => {
                    let k = constant(self);
                    self.b.ins().fmul(x, k)
                }
                Some(a) if c == 1.0 => self.b.ins().fadd(a, x),
                Some(a) if c == -1.0 => self.b.ins().fsub(a, x),
                Some(a) => {
                    let k = constant(self);
                    self.fmadd(x, k, a)
                }
            });
        }
        acc.expect("a linear combination of at least one term")
    }

    pub(crate) fn load(&mut self, ty: Type, p: Value, offset: i32) -> Value {
        self.b.ins().load(ty, ro(), p, offset)
    }

    pub(crate) fn load_rw(&mut self, ty: Type, p: Value, offset: i32) -> Value {
        self.b.ins().load(ty, rw(), p, offset)
    }

    pub(crate) fn store(&mut self, x: Value, p: Value, offset: i32) {
        self.b.ins().store(rw(), x, p, offset);
    }

    /// `for (i = start; i < end; i += step) body(i)` with signed compare. Values defined
    /// through `Variable`s inside `body` are carried across iterations by the SSA builder.
    pub(crate) fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value) -> Result<()>,
    ) -> Result<()> {
        let var = self.b.declare_var(I64);
        self.b.def_var(var, start);
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(var);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(c, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, i)?;
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.def_var(var, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// `if cond { body }`: a branch around `body`.
    pub(crate) fn when(
        &mut self,
        cond: Value,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.branch_around(cond, true, body)
    }

    /// `if !cond { body }`: a branch around `body`.
    pub(crate) fn unless(
        &mut self,
        cond: Value,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.branch_around(cond, false, body)
    }

    /// `if cond { then } else { otherwise }`: one branch on `cond`, where a `when` and an
    /// `unless` on the same condition would branch twice.
    pub(crate) fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self) -> Result<()>,
        otherwise: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let then_block = self.b.create_block();
        let else_block = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, then_block, &[], else_block, &[]);
        self.b.switch_to_block(then_block);
        then(self)?;
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(else_block);
        otherwise(self)?;
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    fn branch_around(
        &mut self,
        cond: Value,
        run_if: bool,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let then = self.b.create_block();
        let done = self.b.create_block();
        if run_if {
            self.b.ins().brif(cond, then, &[], done, &[]);
        } else {
            self.b.ins().brif(cond, done, &[], then, &[]);
        }
        self.b.switch_to_block(then);
        body(self)?;
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    /// `for_range` over compile-time bounds; emits nothing when the range is empty.
    pub(crate) fn for_const(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        body: impl FnMut(&mut Self, Value) -> Result<()>,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let s = self.iconst(start);
        let e = self.iconst(end);
        self.for_range(s, e, step, body)
    }

    /// Fills `n` floats at `dst` with `value` (vector loop plus scalar tail).
    pub(crate) fn fill(&mut self, dst: Value, n: usize, value: f32) -> Result<()> {
        let v = self.b.ins().f32const(value);
        let v4 = self.b.ins().splat(F32X4, v);
        let n4 = n / 4 * 4;
        let end = self.add_imm(dst, (n4 * 4) as i64);
        if n4 > 0 {
            self.for_range(dst, end, 16, |e, p| {
                e.store(v4, p, 0);
                Ok(())
            })?;
        }
        for i in 0..n % 4 {
            self.store(v, end, off(i * 4));
        }
        Ok(())
    }

    /// Copies `n` floats from `src` to `dst` (vector loop plus scalar tail).
    pub(crate) fn copy(&mut self, src: Value, dst: Value, n: usize) -> Result<()> {
        let n4 = n / 4 * 4;
        if n4 > 0 {
            let delta = self.b.ins().isub(dst, src);
            let end = self.add_imm(src, (n4 * 4) as i64);
            self.for_range(src, end, 16, |e, p| {
                let x = e.load(F32X4, p, 0);
                let q = e.b.ins().iadd(p, delta);
                e.store(x, q, 0);
                Ok(())
            })?;
        }
        let s = self.add_imm(src, (n4 * 4) as i64);
        let d = self.add_imm(dst, (n4 * 4) as i64);
        for i in 0..n % 4 {
            let x = self.load(F32, s, off(i * 4));
            self.store(x, d, off(i * 4));
        }
        Ok(())
    }

    /// [`Emit::pad_plane`] for channel `c` of the `h x w` planes at `src` into the `hp x wp`
    /// planes at `dst`; returns the address of the padded plane.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pad_channel(
        &mut self,
        src: Value,
        dst: Value,
        c: Value,
        (h, w): (usize, usize),
        (hp, wp): (usize, usize),
        top_left: (usize, usize),
        value: f32,
    ) -> Result<Value> {
        let src = self.addr(src, c, h * w * 4);
        let dst = self.addr(dst, c, hp * wp * 4);
        self.pad_plane(src, dst, (h, w), (hp, wp), top_left, value)?;
        Ok(dst)
    }

    /// Copies the `h x w` plane at `src` into the `hp x wp` plane at `dst` with its top-left
    /// corner at row `top`, column `left`, and fills the rest of `dst` with `value`
    /// (`top + h <= hp`, `left + w <= wp`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pad_plane(
        &mut self,
        src: Value,
        dst: Value,
        (h, w): (usize, usize),
        (hp, wp): (usize, usize),
        (top, left): (usize, usize),
        value: f32,
    ) -> Result<()> {
        debug_assert!(top + h <= hp && left + w <= wp && h > 0);
        if crate::knobs::off("CNNC_PAD_BORDERS") {
            self.fill(dst, hp * wp, value)?;
            let d0 = self.add_imm(dst, ((top * wp + left) * 4) as i64);
            return self.for_const(0, h as i64, 1, |e, y| {
                let sp = e.addr(src, y, w * 4);
                let dp = e.addr(d0, y, wp * 4);
                e.copy(sp, dp, w)
            });
        }
        // Each float written once: the rows above and the first row's left border, then
        // each row followed by the border up to the next row's data (its right border and
        // the next row's left one), the last row by everything after it.
        self.fill(dst, top * wp + left, value)?;
        let d0 = self.add_imm(dst, ((top * wp + left) * 4) as i64);
        self.for_const(0, h as i64 - 1, 1, |e, y| {
            let sp = e.addr(src, y, w * 4);
            let dp = e.addr(d0, y, wp * 4);
            e.copy(sp, dp, w)?;
            let gap = e.add_imm(dp, (w * 4) as i64);
            e.fill(gap, wp - w, value)
        })?;
        let sp = self.add_imm(src, ((h - 1) * w * 4) as i64);
        let dp = self.add_imm(d0, ((h - 1) * wp * 4) as i64);
        self.copy(sp, dp, w)?;
        let rest = self.add_imm(dp, (w * 4) as i64);
        self.fill(rest, wp - left - w + (hp - top - h) * wp, value)
    }
}

/// Output positions of a sliding window along one axis: `(n + 2*pad - k)/stride + 1`
/// (the spec's `validate` has checked the window fits).
pub(crate) fn window_out(n: usize, pad: usize, k: usize, stride: usize) -> usize {
    (n + 2 * pad - k) / stride + 1
}
