//! Depthwise convolution (groups = input channels, `multiplier` output channels per input
//! channel, MobileNet's and ShuffleNet's 3x3 layers), on one NCHW image.
//!
//! Each output channel reads one input plane, so there is no reduction over channels to
//! vectorise: the kernel is vectorised along the output pixels of a row instead, four at
//! a time in f32x4 (stride 1: one load per tap; stride 2: two loads and an even-lane
//! shuffle; other strides and row tails: scalar). The filter's taps are broadcast once
//! per output channel; every shape, stride, pad and dilation is a constant, so a tap is
//! a load at a fixed offset from the row's base. With padding, each input plane is first
//! copied into a zero-bordered scratch plane (per thread) that all its output channels
//! then read: no bounds test anywhere. Dilation only spreads the fixed offsets: no zeros
//! are multiplied. The epilogue ([`super::epilogue`]: bias, residual, ReLU, clip) runs on
//! each vector before its single store. Work units are input channels (with their
//! `multiplier` output channels). At AVX2/AVX-512 and stride 1, the whole vectors of each
//! row come from a wide row kernel ([`super::depthwise_x86`]) instead.
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::{InstBuilder, Value};

use super::cg::{fits, off, F32, F32X4, MAX_DIM};
use super::conv::{ConvBufs, ConvSpec};
use super::entry::{Buf, Entry, Slot};
use super::epilogue::{Clip, Epilogue};
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId};
use super::threads::ThreadPool;
use crate::error::{Error, Result};
use crate::memory::try_vec;

/// Shapes and fused epilogue of one depthwise convolution (one image, NCHW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DepthwiseSpec {
    /// Input channels (= groups).
    pub channels: usize,
    /// Output channels per input channel.
    pub multiplier: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
    pub clip: Option<Clip>,
    /// The input is read through a channel shuffle of this many groups (1: as it is):
    /// channel `c` is input plane `(c % G) * (C / G) + c / G`, so a shuffle before a
    /// depthwise conv moves no data.
    pub input_shuffle: usize,
}

/// `8x32x32 input, 2 filters 3x3 per channel, stride 1x1, pad 1x1, dilation 1x1`: the
/// shapes, for messages.
impl std::fmt::Display for DepthwiseSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self;
        let filters = format!(
            "{} filters {}x{} per channel",
            s.multiplier, s.kernel_h, s.kernel_w
        );
        let input = [s.channels, s.in_h, s.in_w];
        super::conv::describe_window(
            f,
            input,
            &filters,
            [s.stride_h, s.stride_w],
            [s.pad_h, s.pad_w],
        )?;
        write!(f, ", dilation {}x{}", s.dilation_h, s.dilation_w)
    }
}

impl DepthwiseSpec {
    /// A square 3x3-style depthwise conv without epilogue or dilation.
    pub fn square(channels: usize, hw: usize, k: usize, stride: usize, pad: usize) -> Self {
        DepthwiseSpec {
            channels,
            multiplier: 1,
            in_h: hw,
            in_w: hw,
            kernel_h: k,
            kernel_w: k,
            stride_h: stride,
            stride_w: stride,
            pad_h: pad,
            pad_w: pad,
            dilation_h: 1,
            dilation_w: 1,
            bias: false,
            relu: false,
            residual: false,
            clip: None,
            input_shuffle: 1,
        }
    }
    /// The depthwise conv of a conv's shapes (`in_c` groups of one channel) with this
    /// dilation, reading its input as it is.
    pub fn of_conv(c: &ConvSpec, dilation_h: usize, dilation_w: usize) -> Self {
        DepthwiseSpec {
            channels: c.in_c,
            multiplier: c.out_c / c.in_c,
            in_h: c.in_h,
            in_w: c.in_w,
            kernel_h: c.kernel_h,
            kernel_w: c.kernel_w,
            stride_h: c.stride_h,
            stride_w: c.stride_w,
            pad_h: c.pad_h,
            pad_w: c.pad_w,
            dilation_h,
            dilation_w,
            bias: c.bias,
            relu: c.relu,
            residual: c.residual,
            clip: c.clip,
            input_shuffle: 1,
        }
    }
    fn epilogue(&self) -> Epilogue {
        Epilogue::new(self.bias, self.residual, self.relu, self.clip)
    }
    /// The filter's extent along the height: `D*(F-1)+1`.
    fn extent_h(&self) -> usize {
        self.dilation_h * (self.kernel_h - 1) + 1
    }
    fn extent_w(&self) -> usize {
        self.dilation_w * (self.kernel_w - 1) + 1
    }
    pub fn out_channels(&self) -> usize {
        self.channels * self.multiplier
    }
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad_h - self.extent_h()) / self.stride_h + 1
    }
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad_w - self.extent_w()) / self.stride_w + 1
    }
    pub fn input_len(&self) -> usize {
        self.channels * self.in_h * self.in_w
    }
    pub fn output_len(&self) -> usize {
        self.out_channels() * self.out_h() * self.out_w()
    }
    fn taps(&self) -> usize {
        self.kernel_h * self.kernel_w
    }
    /// Length of the PyTorch-layout weights `[channels * multiplier, 1, kernel_h, kernel_w]`.
    pub fn weight_len(&self) -> usize {
        self.out_channels() * self.taps()
    }
    /// The weights as they are, then the bias (when the spec has one).
    fn scalar_len(&self) -> usize {
        self.weight_len() + if self.bias { self.out_channels() } else { 0 }
    }
    /// The packed constants: [`Self::scalar_len`] floats, then, when rows have vectors,
    /// each output channel's taps and bias again, each repeated four times (a vector).
    pub fn packed_len(&self) -> usize {
        let vector = if self.vector_cols() > 0 { 4 } else { 0 };
        self.scalar_len() * (1 + vector)
    }
    /// Multiply-adds times two.
    pub fn flops(&self) -> u64 {
        2 * (self.weight_len() * self.out_h() * self.out_w()) as u64
    }
    fn padded(&self) -> bool {
        self.pad_h > 0 || self.pad_w > 0
    }
    /// Rows and columns of the plane the taps read: the padded copy, or the input.
    fn plane_hw(&self) -> (usize, usize) {
        (self.in_h + 2 * self.pad_h, self.in_w + 2 * self.pad_w)
    }
    /// Floats of scratch each call needs: one padded plane (0 without padding).
    pub fn scratch_len(&self) -> usize {
        let (h, w) = self.plane_hw();
        if self.padded() {
            h * w
        } else {
            0
        }
    }

    pub fn validate(&self) -> Result<()> {
        let s = self;
        let dims = [
            s.channels,
            s.multiplier,
            s.in_h,
            s.in_w,
            s.kernel_h,
            s.kernel_w,
            s.stride_h,
            s.stride_w,
            s.pad_h,
            s.pad_w,
            s.dilation_h,
            s.dilation_w,
        ];
        if dims.iter().any(|&d| d > MAX_DIM) {
            return Err(Error::Unsupported(format!(
                "a depthwise conv of {s} has a dimension over the limit of {MAX_DIM} (2^24)"
            )));
        }
        // Everything but the pads must be positive.
        if dims[..8].contains(&0) || dims[10..].contains(&0) {
            return Err(Error::Shape(format!(
                "a depthwise conv of {s} has an empty dimension, stride or dilation"
            )));
        }
        if let Some(c) = s.clip {
            c.validate()?;
        }
        if s.input_shuffle == 0 || !s.channels.is_multiple_of(s.input_shuffle) {
            return Err(Error::Shape(format!(
                "a depthwise conv of {s} reads through a shuffle of {} groups, which must divide its channels",
                s.input_shuffle
            )));
        }
        let (hp, wp) = s.plane_hw();
        if hp < s.extent_h() || wp < s.extent_w() {
            return Err(Error::Shape(format!(
                "depthwise filter extent {}x{} larger than the padded input {hp}x{wp}",
                s.extent_h(),
                s.extent_w()
            )));
        }
        if !fits(&[s.channels, hp, wp]) || !fits(&[s.out_channels(), s.out_h(), s.out_w()]) {
            return Err(Error::Unsupported(format!(
                "a depthwise conv of {s} has tensors over the 1 GiB a JIT kernel addresses"
            )));
        }
        Ok(())
    }

    /// Output columns computed four at a time (a multiple of 4); the rest are scalar.
    /// Every vector load stays within its row of the plane the taps read.
    fn vector_cols(&self) -> usize {
        let ow = self.out_w();
        let wr = self.plane_hw().1;
        match self.stride_w {
            1 => ow / 4 * 4,
            2 => {
                // Group g reads columns 8g + fx*D .. 8g + fx*D + 8 (the last one unused).
                let mut g = ow / 4;
                while g > 0 && 8 * (g - 1) + self.extent_w() - 1 + 8 > wr {
                    g -= 1;
                }
                g * 4
            }
            _ => 0,
        }
    }
}

/// Checks the lengths of a depthwise layer's weights and bias and lays them out as the
/// kernel reads them ([`DepthwiseSpec::packed_len`]).
pub fn pack_depthwise_weights(
    spec: &DepthwiseSpec,
    weights: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    super::entry::check_len("depthwise weights", weights.len(), spec.weight_len())?;
    let mut packed = Vec::with_capacity(spec.packed_len());
    packed.extend_from_slice(weights);
    match (spec.bias, bias) {
        (true, Some(b)) => {
            super::entry::check_len("depthwise bias", b.len(), spec.out_channels())?;
            packed.extend_from_slice(b);
        }
        (false, None) => {}
        (true, None) => return Err(Error::Input("depthwise bias missing".into())),
        (false, Some(_)) => {
            return Err(Error::Input(
                "depthwise bias given to a layer without one".into(),
            ))
        }
    }
    if spec.vector_cols() > 0 {
        let taps = spec.taps();
        for k in 0..spec.out_channels() {
            let w = &weights[k * taps..(k + 1) * taps];
            let b = bias.map(|b| b[k]);
            for &v in w.iter().chain(&b) {
                packed.extend_from_slice(&[v; 4]);
            }
        }
    }
    Ok(packed)
}

/// The constant parts of one output channel's code: its taps and bias (scalar, and
/// broadcast for the vector loop), and where its output and residual planes are.
struct Channel {
    /// Where its taps and its bias are (for the wide row kernel).
    taps_at: Value,
    bias_at: Value,
    taps: Vec<Value>,
    bias: Option<Value>,
    vtaps: Vec<Value>,
    vbias: Option<Value>,
    out: Value,
    residual: Value,
}

/// The kernel; with `wide` columns > 0, each row's first `wide` outputs come from the
/// wide row kernel ([`super::depthwise_x86`], `e.micros[0]`).
fn body(
    s: &DepthwiseSpec,
    wide: usize,
    e: &mut Emit,
    b: ConvBufs<Value>,
    begin: Value,
    end: Value,
) -> Result<()> {
    let (oh, ow) = (s.out_h(), s.out_w());
    let out_plane = oh * ow * 4;
    let m = s.multiplier;
    e.for_range(begin, end, 1, |e, c| {
        let from = input_channel(s, e, c);
        let plane = e.addr(b.input, from, s.in_h * s.in_w * 4);
        let src = if s.padded() {
            e.pad_plane(
                plane,
                b.scratch,
                (s.in_h, s.in_w),
                s.plane_hw(),
                (s.pad_h, s.pad_w),
                0.0,
            )?;
            b.scratch
        } else {
            plane
        };
        let first = e.mul_imm(c, m as i64);
        // A multiplier over 4 loops at run time; small ones are unrolled.
        let each = |e: &mut Emit, k: Value| {
            let ch = channel(s, e, &b, k, out_plane)?;
            e.for_const(0, oh as i64, 1, |e, oy| row(s, wide, e, src, &ch, oy))
        };
        if m <= 4 {
            for j in 0..m {
                let k = e.add_imm(first, j as i64);
                each(e, k)?;
            }
            Ok(())
        } else {
            let last = e.add_imm(first, m as i64);
            e.for_range(first, last, 1, each)
        }
    })
}

/// The input plane channel `c` reads: `c`, or its source through the input shuffle.
fn input_channel(s: &DepthwiseSpec, e: &mut Emit, c: Value) -> Value {
    let g = s.input_shuffle;
    if g == 1 {
        return c;
    }
    let groups = e.iconst(g as i64);
    let group = e.b.ins().urem(c, groups);
    let within = e.b.ins().udiv(c, groups);
    let first = e.mul_imm(group, (s.channels / g) as i64);
    e.b.ins().iadd(first, within)
}

/// Output channel `k`'s taps, bias and planes.
fn channel(
    s: &DepthwiseSpec,
    e: &mut Emit,
    b: &ConvBufs<Value>,
    k: Value,
    out_plane: usize,
) -> Result<Channel> {
    let vector = s.vector_cols() > 0;
    let w = e.addr(b.packed, k, s.taps() * 4);
    // Loaded here, once per channel, with ordinary flags: movable loads would be sunk
    // into the pixel loop next to their uses.
    let taps: Vec<Value> = (0..s.taps())
        .map(|t| e.load_rw(F32, w, off(t * 4)))
        .collect();
    let bias_at = e.add_imm(b.packed, (s.weight_len() * 4) as i64);
    let bias_at = e.addr(bias_at, k, 4);
    let bias = s.bias.then(|| e.load_rw(F32, bias_at, 0));
    // Cranelift does not hoist pure instructions out of loops either, so a splat here
    // would be redone at every use: the vector taps (and bias) are loaded broadcast
    // already ([`DepthwiseSpec::packed_len`]).
    let (mut vtaps, mut vbias) = (Vec::new(), None);
    if vector {
        let per = s.taps() + usize::from(s.bias);
        let wv = e.add_imm(b.packed, (s.scalar_len() * 4) as i64);
        let wv = e.addr(wv, k, per * 16);
        vtaps = (0..s.taps())
            .map(|t| e.load_rw(F32X4, wv, off(t * 16)))
            .collect();
        vbias = s.bias.then(|| e.load_rw(F32X4, wv, off(s.taps() * 16)));
    }
    Ok(Channel {
        taps_at: w,
        bias_at,
        taps,
        bias,
        vtaps,
        vbias,
        out: e.addr(b.out, k, out_plane),
        residual: if s.residual {
            e.addr(b.residual, k, out_plane)
        } else {
            b.residual
        },
    })
}

/// Output row `oy` of one channel: vectors of four pixels, then the scalar tail.
fn row(
    s: &DepthwiseSpec,
    wide: usize,
    e: &mut Emit,
    src: Value,
    ch: &Channel,
    oy: Value,
) -> Result<()> {
    let (ow, wr) = (s.out_w(), s.plane_hw().1);
    let nvec = s.vector_cols();
    let ep = s.epilogue();
    // The scratch plane is written by this function: its loads are not `readonly`.
    let ld = |e: &mut Emit, ty, p, o| {
        if s.padded() {
            e.load_rw(ty, p, o)
        } else {
            e.load(ty, p, o)
        }
    };
    let in_row = e.addr(src, oy, s.stride_h * wr * 4);
    let out_row_off = e.mul_imm(oy, (ow * 4) as i64);
    let out_row = e.b.ins().iadd(ch.out, out_row_off);
    let res_row = e.b.ins().iadd(ch.residual, out_row_off);
    let tap_offset = |fy: usize, fx: usize| (fy * s.dilation_h * wr + fx * s.dilation_w) * 4;
    if wide > 0 {
        let args = [in_row, out_row, ch.taps_at, ch.bias_at, res_row];
        e.b.ins().call(e.micros[0], &args);
    }
    e.for_const(wide as i64, nvec as i64, 4, |e, ox| {
        let base = e.addr(in_row, ox, s.stride_w * 4);
        // Stride 2: the taps at columns 2q and 2q + 1 share their two loads (the even
        // and the odd lanes of columns 2q .. 2q + 8).
        let mut loaded: Vec<(usize, Value)> = Vec::new();
        let mut load = |e: &mut Emit, o: usize| match loaded.iter().find(|l| l.0 == o) {
            Some(&(_, v)) => v,
            None => {
                let v = ld(e, F32X4, base, off(o));
                loaded.push((o, v));
                v
            }
        };
        let acc = weighted_sum(s, e, &ch.vtaps, |e, fy, fx| {
            if s.stride_w == 1 {
                load(e, tap_offset(fy, fx))
            } else {
                let col = fx * s.dilation_w;
                let o = tap_offset(fy, 0) + col / 2 * 8;
                let lo = load(e, o);
                let hi = load(e, o + 16);
                e.shuffle_lanes(lo, hi, col % 2)
            }
        });
        let o4 = e.mul_imm(ox, 4);
        let (r, o) = (e.b.ins().iadd(res_row, o4), e.b.ins().iadd(out_row, o4));
        e.epilogue_store(&ep, acc, ch.vbias, (r, o), 0);
        Ok(())
    })?;
    e.for_const(nvec as i64, ow as i64, 1, |e, ox| {
        let base = e.addr(in_row, ox, s.stride_w * 4);
        let acc = weighted_sum(s, e, &ch.taps, |e, fy, fx| {
            ld(e, F32, base, off(tap_offset(fy, fx)))
        });
        let o4 = e.mul_imm(ox, 4);
        let (r, o) = (e.b.ins().iadd(res_row, o4), e.b.ins().iadd(out_row, o4));
        e.epilogue_store(&ep, acc, ch.bias, (r, o), 0);
        Ok(())
    })
}

/// `sum of taps[fy][fx] * value(fy, fx)` over the filter, in the interpreter's order.
fn weighted_sum(
    s: &DepthwiseSpec,
    e: &mut Emit,
    taps: &[Value],
    mut value: impl FnMut(&mut Emit, usize, usize) -> Value,
) -> Value {
    let mut acc: Option<Value> = None;
    for fy in 0..s.kernel_h {
        for fx in 0..s.kernel_w {
            let v = value(e, fy, fx);
            let w = taps[fy * s.kernel_w + fx];
            acc = Some(match acc {
                None => e.b.ins().fmul(v, w),
                Some(a) => e.fmadd(v, w, a),
            });
        }
    }
    acc.expect("a filter has taps")
}

/// A depthwise convolution defined in a [`KernelModule`], not yet finalized.
pub struct PendingDepthwise {
    id: PendingId,
    spec: DepthwiseSpec,
}

impl KernelModule {
    pub fn add_depthwise(&mut self, spec: &DepthwiseSpec) -> Result<PendingDepthwise> {
        spec.validate()?;
        let s = *spec;
        let id = match super::depthwise_x86::DwRow::for_spec(spec, self.isa()) {
            Some(row) => {
                let micro = self.add_micro(5, &row.emit()?, "depthwise row")?;
                let wide = row.cols;
                self.define_with_micros(&[micro], move |e, b, begin, end| {
                    body(&s, wide, e, b, begin, end)
                })?
            }
            None => self.define(move |e, b, begin, end| body(&s, 0, e, b, begin, end))?,
        };
        Ok(PendingDepthwise { id, spec: s })
    }
}

impl Pending for PendingDepthwise {
    type Kernel = DepthwiseKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<DepthwiseKernel> {
        let s = &self.spec;
        // For each input channel in the range the code reads that channel's plane, writes
        // its `multiplier` output planes (reading the residual's), reads their taps and
        // bias, and (when padded) uses the first scratch_len floats of the scratch; vector
        // loads stay within a row of the plane (`vector_cols`), and so do the wide row
        // kernel's, which covers whole vectors of a row's outputs at stride 1 only.
        // The conv kernels' buffer array: input, packed weights, residual, output,
        // scratch.
        let slots = ConvBufs {
            input: Slot::read("depthwise input", s.input_len()),
            packed: Slot::read("depthwise packed weights", s.packed_len()),
            residual: Slot::read_if(s.residual, "depthwise residual", s.output_len()),
            out: Slot::write("depthwise output", s.output_len()),
            scratch: Slot::temp("depthwise scratch", s.scratch_len()),
        };
        Ok(DepthwiseKernel {
            entry: Entry::new(code, self.id, s.channels, slots.into_array())?,
            spec: self.spec,
        })
    }
}

/// A compiled depthwise convolution; work units are input channels.
pub struct DepthwiseKernel {
    entry: Entry,
    spec: DepthwiseSpec,
}

impl DepthwiseKernel {
    pub fn spec(&self) -> &DepthwiseSpec {
        &self.spec
    }
    pub fn work_units(&self) -> usize {
        self.entry.units()
    }
    /// Scratch floats per thread.
    pub fn scratch_len(&self) -> usize {
        self.spec.scratch_len()
    }

    /// Computes the input channels in `range` (their output channels) of `out`.
    pub fn run(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
        range: Range<usize>,
    ) -> Result<()> {
        let bufs = ConvBufs::<Buf>::new(input, packed, residual, out, scratch);
        self.entry.run(&mut bufs.into_array(), range)
    }

    /// All channels, split across `pool`'s threads; `scratch` holds
    /// `scratch_len() * pool.threads()` floats.
    pub fn run_parallel(
        &self,
        pool: &ThreadPool,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let bufs = ConvBufs::<Buf>::new(input, packed, residual, out, scratch);
        self.entry.run_parallel(pool, &mut bufs.into_array())
    }

    /// `run` over all channels, allocating the scratch.
    pub fn run_all(
        &self,
        input: &[f32],
        packed: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> Result<()> {
        let mut scratch = try_vec(self.scratch_len(), 0.0f32, "depthwise scratch")?;
        self.run(
            input,
            packed,
            residual,
            out,
            &mut scratch,
            0..self.work_units(),
        )
    }
}
