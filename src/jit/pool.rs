//! Max and average pooling (PyTorch semantics) and global average pooling, on one NCHW image.
//!
//! Max pool pads with -inf (never wins); average pool pads with zeros and divides by the full
//! window `kh * kw` (PyTorch's default `count_include_pad=True`). When there is padding, each
//! channel plane is first copied into a bordered scratch plane, so the inner loops never test
//! bounds. Four outputs of a row are computed at once with f32x4 when the horizontal stride is
//! 1 (plain loads) or 2 (two loads and an even/odd lane shuffle); other strides and row tails
//! are scalar.
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::{
    types, ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value,
};

use super::cg::{fits, off, window_out, F32, F32X4, MAX_DIM};
use super::entry::{slot_layout, Buf, Entry, Slot};
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId};
use super::threads::ThreadPool;
use super::x86::pool::MaxPoolPlane;
use crate::error::{Error, Result};
use crate::memory::try_vec;
use crate::options::Isa;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    pub kind: PoolKind,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
}

/// `16x32x32 input, window 3x3, stride 2x2, pad 1x1`: the shapes, for messages.
impl std::fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self;
        super::conv::describe_window(
            f,
            [s.channels, s.in_h, s.in_w],
            &format!("window {}x{}", s.kernel_h, s.kernel_w),
            [s.stride_h, s.stride_w],
            [s.pad_h, s.pad_w],
        )
    }
}

impl PoolSpec {
    pub fn square(
        kind: PoolKind,
        channels: usize,
        hw: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        PoolSpec {
            kind,
            channels,
            in_h: hw,
            in_w: hw,
            kernel_h: k,
            kernel_w: k,
            stride_h: stride,
            stride_w: stride,
            pad_h: pad,
            pad_w: pad,
        }
    }
    pub fn out_h(&self) -> usize {
        window_out(self.in_h, self.pad_h, self.kernel_h, self.stride_h)
    }
    pub fn out_w(&self) -> usize {
        window_out(self.in_w, self.pad_w, self.kernel_w, self.stride_w)
    }
    pub fn input_len(&self) -> usize {
        self.channels * self.in_h * self.in_w
    }
    pub fn output_len(&self) -> usize {
        self.channels * self.out_h() * self.out_w()
    }
    fn padded(&self) -> bool {
        self.pad_h > 0 || self.pad_w > 0
    }
    fn hp(&self) -> usize {
        self.in_h + 2 * self.pad_h
    }
    fn wp(&self) -> usize {
        self.in_w + 2 * self.pad_w
    }
    /// Floats of scratch each call needs (one padded plane; 0 without padding).
    pub fn scratch_len(&self) -> usize {
        if self.padded() {
            self.hp() * self.wp()
        } else {
            0
        }
    }
    pub fn validate(&self) -> Result<()> {
        let s = self;
        let dims = [
            s.channels, s.in_h, s.in_w, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.pad_h,
            s.pad_w,
        ];
        if dims.iter().any(|&d| d > MAX_DIM) {
            return Err(Error::Unsupported(format!(
                "a pool of {s} has a dimension over the limit of {MAX_DIM} (2^24)"
            )));
        }
        if s.channels == 0 || s.in_h == 0 || s.in_w == 0 || s.kernel_h == 0 || s.kernel_w == 0 {
            return Err(Error::Shape(format!(
                "a pool of {s} has an empty dimension"
            )));
        }
        if s.stride_h == 0 || s.stride_w == 0 {
            return Err(Error::Shape(format!(
                "a pool of {s}: the stride must be at least 1"
            )));
        }
        if s.in_h + 2 * s.pad_h < s.kernel_h || s.in_w + 2 * s.pad_w < s.kernel_w {
            return Err(Error::Shape(format!(
                "a pool of {s}: the window is larger than the padded input"
            )));
        }
        if 2 * s.pad_h > s.kernel_h || 2 * s.pad_w > s.kernel_w {
            return Err(Error::Shape(format!(
                "a pool of {s}: the JIT pool kernel pads at most half the window (PyTorch's rule)"
            )));
        }
        if !fits(&[s.channels, s.hp(), s.wp()]) {
            return Err(Error::Unsupported(format!(
                "a pool of {s} has tensors over the 1 GiB a JIT kernel addresses"
            )));
        }
        Ok(())
    }

    /// The kernel's name for plans and profiles when it is the wide one (`avx512 wide`).
    pub fn kernel_name(&self, isa: Isa) -> Option<String> {
        self.wide_max(isa)
            .map(|k| format!("{} wide", k.width.isa_name()))
    }

    /// The wide kernel of this pool at `isa`, if it has one (a max pool with horizontal
    /// stride 1 or 2 at avx2 or avx512).
    pub(crate) fn wide_max(&self, isa: Isa) -> Option<MaxPoolPlane> {
        let k = MaxPoolPlane {
            width: super::x86::width(isa)?,
            kernel_h: self.kernel_h,
            kernel_w: self.kernel_w,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            in_h: self.in_h,
            in_w: self.in_w,
            pad_h: self.pad_h,
            pad_w: self.pad_w,
            out_h: self.out_h(),
            out_w: self.out_w(),
            deinterleave: super::x86::pool::deinterleave_default(),
            prefetch: super::x86::pool::prefetch_rows_for(self.input_len() * 4, self.out_h()),
        };
        (self.kind == PoolKind::Max && k.takes()).then_some(k)
    }

    /// Output columns computed four at a time (a multiple of 4); the rest are scalar.
    fn vector_cols(&self) -> usize {
        let ow = self.out_w();
        let wp = self.wp();
        match self.stride_w {
            1 => ow / 4 * 4,
            2 => {
                // Group g loads [8g + 2q, 8g + 2q + 8) for q = fx / 2; it must stay in the row.
                let qmax = (self.kernel_w - 1) / 2;
                let mut g = ow / 4;
                while g > 0 && 8 * (g - 1) + 2 * qmax + 8 > wp {
                    g -= 1;
                }
                g * 4
            }
            _ => 0,
        }
    }
}

slot_layout! {
    /// The buffer array of the pool function, in slot order.
    pub(crate) struct PoolBufs {
        /// `[channels, in_h, in_w]`.
        input,
        /// `[channels, out_h, out_w]`.
        out,
        /// The padded plane of the channel being pooled.
        scratch,
    }
}

impl<'a> PoolBufs<Buf<'a>> {
    /// The caller's buffers.
    fn new(input: &'a [f32], out: &'a mut [f32], scratch: &'a mut [f32]) -> Self {
        PoolBufs {
            input: Buf::In(input),
            out: Buf::Out(out),
            scratch: Buf::Out(scratch),
        }
    }
}

fn body(s: &PoolSpec, e: &mut Emit, b: PoolBufs<Value>, begin: Value, end: Value) -> Result<()> {
    let (inp, out, scratch) = (b.input, b.out, b.scratch);
    let (oh, ow, wp) = (s.out_h(), s.out_w(), s.wp());
    let is_max = s.kind == PoolKind::Max;
    let nvec = s.vector_cols();
    let inv = 1.0f32 / (s.kernel_h * s.kernel_w) as f32;
    // With padding the loads read the scratch plane this function wrote: not `readonly`.
    let padded = s.padded();
    let ld = |e: &mut Emit, ty, p, o| {
        if padded {
            e.load_rw(ty, p, o)
        } else {
            e.load(ty, p, o)
        }
    };
    // One tap into the window's accumulator: the max (NaN wins) or the sum.
    let fold = |e: &mut Emit, acc: Option<Value>, v: Value| {
        Some(match acc {
            None => v,
            Some(a) if is_max => e.max_nan(a, v),
            Some(a) => e.b.ins().fadd(a, v),
        })
    };
    // The window's output (`ty`: one float or four) to output `ox` of `orow`: the max, or
    // the sum times `inv`.
    let store = |e: &mut Emit, acc: Option<Value>, ty, (orow, ox): (Value, Value)| {
        let mut r = acc.expect("window is not empty");
        if !is_max {
            let k = e.b.ins().f32const(inv);
            let k = if ty == F32X4 {
                e.b.ins().splat(F32X4, k)
            } else {
                k
            };
            r = e.b.ins().fmul(r, k);
        }
        let op = e.addr(orow, ox, 4);
        e.store(r, op, 0);
    };
    e.for_range(begin, end, 1, |e, c| {
        let plane = e.addr(inp, c, s.in_h * s.in_w * 4);
        let src = if s.padded() {
            let pad = if is_max { f32::NEG_INFINITY } else { 0.0 };
            e.pad_plane(
                plane,
                scratch,
                (s.in_h, s.in_w),
                (s.hp(), s.wp()),
                (s.pad_h, s.pad_w),
                pad,
            )?;
            scratch
        } else {
            plane
        };
        let oplane = e.addr(out, c, oh * ow * 4);
        e.for_const(0, oh as i64, 1, |e, oy| {
            let row = e.addr(src, oy, s.stride_h * wp * 4);
            let orow = e.addr(oplane, oy, ow * 4);
            // Vector groups of 4 outputs.
            e.for_const(0, nvec as i64, 4, |e, ox| {
                let base = e.addr(row, ox, s.stride_w * 4);
                if is_max && s.stride_w == 2 {
                    let r = max_stride2(s, e, base, &ld);
                    let op = e.addr(orow, ox, 4);
                    e.store(r, op, 0);
                    return Ok(());
                }
                let mut acc: Option<Value> = None;
                for fy in 0..s.kernel_h {
                    for fx in 0..s.kernel_w {
                        let o = (fy * wp) * 4;
                        let v = if s.stride_w == 1 {
                            ld(e, F32X4, base, off(o + fx * 4))
                        } else {
                            let q = fx / 2;
                            let a = ld(e, F32X4, base, off(o + q * 8));
                            let b = ld(e, F32X4, base, off(o + q * 8 + 16));
                            e.shuffle_lanes(a, b, fx % 2)
                        };
                        acc = fold(e, acc, v);
                    }
                }
                store(e, acc, F32X4, (orow, ox));
                Ok(())
            })?;
            // Scalar outputs.
            e.for_const(nvec as i64, ow as i64, 1, |e, ox| {
                let base = e.addr(row, ox, s.stride_w * 4);
                let mut acc: Option<Value> = None;
                for fy in 0..s.kernel_h {
                    for fx in 0..s.kernel_w {
                        let v = ld(e, F32, base, off((fy * wp + fx) * 4));
                        acc = fold(e, acc, v);
                    }
                }
                store(e, acc, F32, (orow, ox));
                Ok(())
            })
        })
    })
}

/// Four outputs of a max pool with horizontal stride 2, from the window's rows at `base`
/// (row stride `wp`): each pair of vectors `[2q, 2q + 8)` that the taps `fx = 2q, 2q + 1`
/// select from is first reduced over the rows, then each tap takes its even or odd lanes
/// (one shuffle per column of the window instead of one per tap: 3 instead of 9 for 3x3,
/// and 12 loads instead of 18), with [`Emit::max_nan_of`]'s two instructions per value. The
/// maximum of the same values in another order: only which of `-0.0` / `+0.0` wins a tie
/// between them, and which NaN comes out, can differ from a row-major scan.
fn max_stride2(
    s: &PoolSpec,
    e: &mut Emit,
    base: Value,
    ld: &impl Fn(&mut Emit, Type, Value, i32) -> Value,
) -> Value {
    let wp = s.wp();
    let columns: Vec<(Value, Value)> = (0..s.kernel_w.div_ceil(2))
        .map(|q| {
            let (a, b): (Vec<Value>, Vec<Value>) = (0..s.kernel_h)
                .map(|fy| {
                    let o = fy * wp * 4 + q * 8;
                    (ld(e, F32X4, base, off(o)), ld(e, F32X4, base, off(o + 16)))
                })
                .unzip();
            (e.max_nan_of(&a), e.max_nan_of(&b))
        })
        .collect();
    let taps: Vec<Value> = (0..s.kernel_w)
        .map(|fx| {
            let (a, b) = columns[fx / 2];
            e.shuffle_lanes(a, b, fx % 2)
        })
        .collect();
    e.max_nan_of(&taps)
}

impl Emit<'_> {
    /// Lanes `[r, r+2]` of `a` followed by lanes `[r, r+2]` of `b` (`shufps`).
    pub(crate) fn shuffle_lanes(&mut self, a: Value, b: Value, r: usize) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let a8 = self.b.ins().bitcast(types::I8X16, le, a);
        let b8 = self.b.ins().bitcast(types::I8X16, le, b);
        let lanes = [r, r + 2, 4 + r, 4 + r + 2];
        let bytes: Vec<u8> = lanes
            .iter()
            .flat_map(|&l| (0..4).map(move |i| (l * 4 + i) as u8))
            .collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(bytes));
        let s = self.b.ins().shuffle(a8, b8, imm);
        self.b.ins().bitcast(F32X4, le, s)
    }
}

/// A pooling layer defined in a [`KernelModule`], not yet finalized.
pub struct PendingPool {
    id: PendingId,
    spec: PoolSpec,
}

impl KernelModule {
    /// A pool at the module's ISA level: a max pool with horizontal stride 1 or 2 calls the
    /// wide kernel of [`super::x86::pool`] once per channel (which pads by itself); every
    /// other pool is Cranelift's f32x4 code.
    pub fn add_pool(&mut self, spec: &PoolSpec) -> Result<PendingPool> {
        spec.validate()?;
        let s = *spec;
        let id = match s.wide_max(self.isa) {
            Some(k) => {
                let micro = self.add_micro_once(2, "max pool plane", &k, MaxPoolPlane::emit)?;
                // The function only loops over the channels and calls: compiled quickly.
                self.define_driver(&[micro], move |e, b, begin, end| {
                    wide_body(&s, e, b, begin, end)
                })?
            }
            None => self.define(move |e, b, begin, end| body(&s, e, b, begin, end))?,
        };
        Ok(PendingPool { id, spec: s })
    }
}

/// Channels `begin..end`, each by one call of the wide max pool kernel (`e.micros[0]`)
/// on the channel's plane (the kernel handles the padding itself: no scratch).
fn wide_body(
    s: &PoolSpec,
    e: &mut Emit,
    b: PoolBufs<Value>,
    begin: Value,
    end: Value,
) -> Result<()> {
    let (oh, ow) = (s.out_h(), s.out_w());
    e.for_range(begin, end, 1, |e, c| {
        let plane = e.addr(b.input, c, s.in_h * s.in_w * 4);
        let oplane = e.addr(b.out, c, oh * ow * 4);
        e.b.ins().call(e.micros[0], &[plane, oplane]);
        Ok(())
    })
}

impl Pending for PendingPool {
    type Kernel = PoolKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<PoolKernel> {
        let s = &self.spec;
        // For each channel in the range the code reads that channel's input plane, writes its
        // output plane and uses (when padded) the first scratch_len floats of the scratch; its
        // vector loads stay within a row (`vector_cols`).
        let slots = PoolBufs {
            input: Slot::read("pool input", s.input_len()),
            out: Slot::write("pool output", s.output_len()),
            scratch: Slot::temp("pool scratch", s.scratch_len()),
        };
        Ok(PoolKernel {
            entry: Entry::new(code, self.id, s.channels, slots.into_array())?,
            spec: self.spec,
        })
    }
}

/// A compiled pooling layer; work units are channels.
pub struct PoolKernel {
    entry: Entry,
    spec: PoolSpec,
}

impl PoolKernel {
    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }
    pub fn work_units(&self) -> usize {
        self.entry.units()
    }
    pub fn scratch_len(&self) -> usize {
        self.spec.scratch_len()
    }

    pub fn run(
        &self,
        input: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
        range: Range<usize>,
    ) -> Result<()> {
        let bufs = PoolBufs::new(input, out, scratch);
        self.entry.run(&mut bufs.into_array(), range)
    }

    /// All channels, split across `pool`'s threads; `scratch` holds
    /// `scratch_len() * pool.threads()` floats.
    pub fn run_parallel(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let bufs = PoolBufs::new(input, out, scratch);
        self.entry.run_parallel(pool, &mut bufs.into_array())
    }

    pub fn run_all(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        let mut scratch = try_vec(self.scratch_len(), 0.0f32, "pool scratch")?;
        self.run(input, out, &mut scratch, 0..self.work_units())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inputs over `POOL_PREFETCH_BYTES` in `tests/jit_kernels.rs`'s `pool_shapes`
    /// prefetch (those tests compare results, which a prefetch cannot change, so they
    /// cover the prefetching kernels only if they get them), smaller ones do not.
    #[test]
    fn pools_over_2_mb_prefetch() {
        if std::env::var_os("CNNC_POOL_PF").is_some() {
            return; // the measuring knob decides, whatever the size
        }
        let window = |c, h, w, k, s, p| PoolSpec {
            in_h: h,
            in_w: w,
            ..PoolSpec::square(PoolKind::Max, c, h, k, s, p)
        };
        for isa in [Isa::Avx2, Isa::Avx512] {
            for (spec, ahead) in [
                (window(64, 112, 112, 3, 2, 1), true),
                (window(48, 120, 117, 3, 1, 1), true),
                (window(8, 112, 112, 3, 2, 1), false),
                (window(128, 55, 55, 3, 2, 0), false),
            ] {
                let plane = spec.wide_max(isa).unwrap();
                assert_eq!(plane.prefetch > 0, ahead, "{spec:?} at {isa}");
            }
        }
    }
}
