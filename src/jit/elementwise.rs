//! Memory-bound kernels: sum of tensors (+ReLU), ReLU, per-channel scale+shift (batchnorm),
//! softmax over channels, global average pooling.
//!
//! Concatenation needs no kernel: along channels of an NCHW image input `i` is the
//! contiguous range starting at `(sum of earlier channel counts) * h * w`, and the runtime
//! lets producers write straight there (`runtime::model`, `concat_placements`).
use std::ops::Range;
use std::sync::Arc;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::cg::{off, F32, F32X4, I64, MAX_DIM};
use super::entry::{Buf, Entry, Layout, Slot};
use super::module::{Compiled, Emit, KernelModule, Pending, PendingId};
use super::threads::ThreadPool;
use super::x86::eltwise::ScaleShiftPlane;
use crate::error::{Error, Result};

/// What an [`EltKernel`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EltSpec {
    /// `out = x0 + x1 + ... (+ relu)` over `len` floats, summed left to right.
    Add {
        inputs: usize,
        len: usize,
        relu: bool,
    },
    /// `out = max(x, 0)` over `len` floats.
    Relu { len: usize },
    /// `out[c][i] = x[c][i] * scale[c] + shift[c]` (inference batchnorm), optional ReLU.
    ScaleShift {
        channels: usize,
        hw: usize,
        relu: bool,
    },
    /// Softmax over channels at each of `hw` pixels (max subtracted first).
    Softmax { channels: usize, hw: usize },
    /// `out[c] = mean over hw of x[c]`.
    GlobalAvgPool { channels: usize, hw: usize },
}

/// `an add of 3 inputs of 1000 elements`: the kernel and its shapes, for messages.
impl std::fmt::Display for EltSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            EltSpec::Add { inputs, len, .. } => {
                write!(f, "an add of {inputs} inputs of {len} elements")
            }
            EltSpec::Relu { len } => write!(f, "a relu of {len} elements"),
            EltSpec::ScaleShift { channels, hw, .. } => {
                write!(f, "a scale-shift of {channels} channels of {hw} elements")
            }
            EltSpec::Softmax { channels, hw } => {
                write!(f, "a softmax of {channels} channels at {hw} pixels")
            }
            EltSpec::GlobalAvgPool { channels, hw } => {
                write!(
                    f,
                    "a global average pool of {channels} channels of {hw} elements"
                )
            }
        }
    }
}

impl EltSpec {
    fn n_inputs(&self) -> usize {
        match *self {
            EltSpec::Add { inputs, .. } => inputs,
            EltSpec::Relu { .. } => 1,
            EltSpec::ScaleShift { .. } => 3,
            EltSpec::Softmax { .. } | EltSpec::GlobalAvgPool { .. } => 1,
        }
    }
    /// Length of input `i` (scale and shift included) and of the output.
    fn lens(&self, i: usize) -> (usize, usize) {
        match *self {
            EltSpec::Add { len, .. } | EltSpec::Relu { len } => (len, len),
            EltSpec::ScaleShift { channels, hw, .. } => {
                (if i == 0 { channels * hw } else { channels }, channels * hw)
            }
            EltSpec::Softmax { channels, hw } => (channels * hw, channels * hw),
            EltSpec::GlobalAvgPool { channels, hw } => (channels * hw, channels),
        }
    }
    /// Work units: elements for Add/Relu, channels for ScaleShift/GlobalAvgPool, pixels for
    /// Softmax (a kernel's own may differ: [`EltKernel::work_units`]).
    pub fn work_units(&self) -> usize {
        match *self {
            EltSpec::Add { len, .. } | EltSpec::Relu { len } => len,
            EltSpec::ScaleShift { channels, .. } | EltSpec::GlobalAvgPool { channels, .. } => {
                channels
            }
            EltSpec::Softmax { hw, .. } => hw,
        }
    }
    fn validate(&self) -> Result<()> {
        let dims: &[usize] = match self {
            EltSpec::Add { inputs, len, .. } => &[*inputs, *len],
            EltSpec::Relu { len } => &[*len],
            EltSpec::ScaleShift { channels, hw, .. }
            | EltSpec::Softmax { channels, hw }
            | EltSpec::GlobalAvgPool { channels, hw } => &[*channels, *hw],
        };
        if dims.iter().any(|&d| d > MAX_DIM) || self.n_inputs() > 1024 {
            return Err(Error::Unsupported(format!(
                "{self} is over the limit of {MAX_DIM} (2^24) elements or 1024 inputs"
            )));
        }
        let ins: Vec<usize> = (0..self.n_inputs()).map(|i| self.lens(i).0).collect();
        let out = self.lens(0).1;
        if ins.contains(&0) || out == 0 || self.n_inputs() == 0 {
            return Err(Error::Shape(format!("{self} has an empty input or output")));
        }
        if ins
            .iter()
            .chain([&out])
            .any(|&n| n.checked_mul(4).is_none_or(|b| b > i32::MAX as usize / 2))
        {
            return Err(Error::Unsupported(format!(
                "{self} has tensors over the 1 GiB a JIT kernel addresses"
            )));
        }
        Ok(())
    }
}

/// Emits the function over the buffers `[inputs.., out]`.
fn body(s: &EltSpec, e: &mut Emit, p: &[Value], begin: Value, end: Value) -> Result<()> {
    let (ins, out) = (&p[..s.n_inputs()], p[s.n_inputs()]);
    let bufs = (ins, out);
    let range = (begin, end);
    match *s {
        EltSpec::Add { relu, .. } => add_body(e, ins, out, begin, end, relu),
        EltSpec::Relu { .. } => add_body(e, ins, out, begin, end, true),
        EltSpec::ScaleShift { hw, relu, .. } => scale_shift(e, bufs, range, hw, relu),
        EltSpec::Softmax { channels, hw } => softmax(e, bufs, range, channels, hw),
        EltSpec::GlobalAvgPool { channels, hw } => global_avg_pool(e, bufs, range, (channels, hw)),
    }
}

/// Channels `begin..end` of `x * scale[c] + shift[c]` (then ReLU), `ins = [x, scale, shift]`.
fn scale_shift(
    e: &mut Emit,
    (ins, out): (&[Value], Value),
    (begin, end): (Value, Value),
    hw: usize,
    relu: bool,
) -> Result<()> {
    e.for_range(begin, end, 1, |e, c| {
        let x = e.addr(ins[0], c, hw * 4);
        let y = e.addr(out, c, hw * 4);
        let sp = e.addr(ins[1], c, 4);
        let tp = e.addr(ins[2], c, 4);
        let sc = e.load(F32, sp, 0);
        let sh = e.load(F32, tp, 0);
        let sc4 = e.b.ins().splat(F32X4, sc);
        let sh4 = e.b.ins().splat(F32X4, sh);
        let f = |e: &mut Emit, ty, src: Value, dst: Value| {
            let v = e.load(ty, src, 0);
            let (a, b) = if ty == F32 { (sc, sh) } else { (sc4, sh4) };
            let m = e.b.ins().fmul(v, a);
            let mut r = e.b.ins().fadd(m, b);
            if relu {
                r = e.relu(r);
            }
            e.store(r, dst, 0);
        };
        let n4 = hw / 4 * 4;
        let delta = e.b.ins().isub(y, x);
        let xe = e.add_imm(x, (n4 * 4) as i64);
        e.for_range(x, xe, 16, |e, xp| {
            let yp = e.b.ins().iadd(xp, delta);
            f(e, F32X4, xp, yp);
            Ok(())
        })?;
        for i in n4..hw {
            let xp = e.add_imm(x, (i * 4) as i64);
            let yp = e.add_imm(y, (i * 4) as i64);
            f(e, F32, xp, yp);
        }
        Ok(())
    })
}

/// The buffers of a scale-shift kernel, in the order [`EltKernel::run`] passes them.
#[derive(Clone, Copy)]
struct ScaleShiftBufs {
    x: Value,
    scale: Value,
    shift: Value,
    out: Value,
}

impl Layout<Value> for ScaleShiftBufs {
    const LEN: usize = 4;
    fn from_slice(s: &[Value]) -> Self {
        ScaleShiftBufs {
            x: s[0],
            scale: s[1],
            shift: s[2],
            out: s[3],
        }
    }
}

/// Planes of at least this many floats are scale-shifted in two halves
/// ([`scale_shift_split`]).
const SCALE_SHIFT_HALVES_MIN: usize = 512;

/// Where the wide scale-shift cuts each plane (a multiple of 16 floats, so that both halves
/// start a cache line from the plane's start), or `None`: whole planes. The work units are
/// then the first halves of every channel, then the second halves, so that two threads
/// split it as the pixel-split layers around it split their planes (the first half of
/// every plane on thread 0): a batchnorm between a dense block's concat and its 1x1 conv
/// reads and writes the lines its thread's parts of those layers wrote and read, rather than
/// half of them on the other core (2.3-4x as dear when the two vCPUs are on two dies:
/// docs/jit-history.md, session 14). `CNNC_SCALE_SHIFT_HALVES=0`: whole planes.
fn scale_shift_split(hw: usize) -> Option<usize> {
    (hw >= SCALE_SHIFT_HALVES_MIN && !crate::knobs::off("CNNC_SCALE_SHIFT_HALVES"))
        .then_some(hw / 2 / 16 * 16)
}

/// Units `begin..end` of the scale-shift, each by one call of the wide kernel
/// ([`ScaleShiftPlane`]) on its part of a channel's plane with the channel's scale and
/// shift: whole planes (`e.micros[0]`, units are channels), or with `cut`, unit `u <
/// channels` the first `cut` floats of plane `u` (`e.micros[0]`) and unit `channels + c` the
/// rest of plane `c` (`e.micros[1]`).
fn wide_scale_shift(
    e: &mut Emit,
    b: ScaleShiftBufs,
    (begin, end): (Value, Value),
    (channels, hw, cut): (usize, usize, Option<usize>),
) -> Result<()> {
    let call = |e: &mut Emit, c: Value, offset: usize, micro: usize| {
        let x = e.addr(b.x, c, hw * 4);
        let y = e.addr(b.out, c, hw * 4);
        let (x, y) = (
            e.add_imm(x, offset as i64 * 4),
            e.add_imm(y, offset as i64 * 4),
        );
        let sc = e.addr(b.scale, c, 4);
        let sh = e.addr(b.shift, c, 4);
        e.b.ins().call(e.micros[micro], &[x, y, sc, sh]);
    };
    let Some(cut) = cut else {
        return e.for_range(begin, end, 1, |e, c| {
            call(e, c, 0, 0);
            Ok(())
        });
    };
    // First halves: units begin..min(end, channels); second halves: max(begin, channels)..end,
    // as channels from 0.
    let n = e.iconst(channels as i64);
    let first_end = e.b.ins().smin(end, n);
    e.for_range(begin, first_end, 1, |e, c| {
        call(e, c, 0, 0);
        Ok(())
    })?;
    let second_begin = e.b.ins().smax(begin, n);
    let (c0, c1) = (
        e.add_imm(second_begin, -(channels as i64)),
        e.add_imm(end, -(channels as i64)),
    );
    e.for_range(c0, c1, 1, |e, c| {
        call(e, c, cut, 1);
        Ok(())
    })
}

/// Pixels `begin..end` of the softmax over the channels (max, `exp` of the differences, sum, division).
fn softmax(
    e: &mut Emit,
    (ins, out): (&[Value], Value),
    (begin, end): (Value, Value),
    channels: usize,
    hw: usize,
) -> Result<()> {
    e.for_range(begin, end, 1, |e, px| {
        let x = e.addr(ins[0], px, 4);
        let y = e.addr(out, px, 4);
        let stride = (hw * 4) as i64;
        let xend = e.add_imm(x, stride * channels as i64);
        let m = e.b.declare_var(F32);
        let ninf = e.b.ins().f32const(f32::NEG_INFINITY);
        e.b.def_var(m, ninf);
        e.for_range(x, xend, stride, |e, xp| {
            let v = e.load(F32, xp, 0);
            let a = e.b.use_var(m);
            let r = e.b.ins().fmax(a, v);
            e.b.def_var(m, r);
            Ok(())
        })?;
        let mx = e.b.use_var(m);
        let sum = e.b.declare_var(F32);
        let z = e.fzero(F32);
        e.b.def_var(sum, z);
        let delta = e.b.ins().isub(y, x);
        e.for_range(x, xend, stride, |e, xp| {
            let v = e.load(F32, xp, 0);
            let d = e.b.ins().fsub(v, mx);
            let call = e.b.ins().call(e.exp_ref, &[d]);
            let ex = e.b.inst_results(call)[0];
            let yp = e.b.ins().iadd(xp, delta);
            e.store(ex, yp, 0);
            let a = e.b.use_var(sum);
            let a = e.b.ins().fadd(a, ex);
            e.b.def_var(sum, a);
            Ok(())
        })?;
        let total = e.b.use_var(sum);
        let yend = e.add_imm(y, stride * channels as i64);
        e.for_range(y, yend, stride, |e, yp| {
            let v = e.load_rw(F32, yp, 0);
            let r = e.b.ins().fdiv(v, total);
            e.store(r, yp, 0);
            Ok(())
        })
    })
}

/// Channels pooled side by side by [`global_avg_pool`]: one f32x4 chain of additions per
/// channel, so `GAP_CHANNELS` chains overlap where one chain waits on each add's latency
/// (SqueezeNet's 1000 planes of 169, one thread: 0.026 -> 0.009 ms, `examples/modelab.rs`
/// pairs, load 6.7; the same bits).
const GAP_CHANNELS: usize = 4;

/// Channels `begin..end`: the mean of each `hw`-float plane. Each channel's sum is the same
/// operations in the same order whether it is pooled alone or beside others: four lanes of
/// partial sums over the whole vectors, `(l0 + l1) + (l2 + l3)`, then the rest in order.
fn global_avg_pool(
    e: &mut Emit,
    (ins, out): (&[Value], Value),
    (begin, end): (Value, Value),
    (channels, hw): (usize, usize),
) -> Result<()> {
    let (x, out) = (ins[0], out);
    if channels < GAP_CHANNELS {
        return e.for_range(begin, end, 1, |e, c| avg_pool_planes(e, (x, out), c, hw, 1));
    }
    let g = GAP_CHANNELS as i64;
    let n = e.b.ins().isub(end, begin);
    let n = e.b.ins().band_imm_s(n, -g);
    let mid = e.b.ins().iadd(begin, n);
    e.for_range(begin, mid, g, |e, c| {
        avg_pool_planes(e, (x, out), c, hw, GAP_CHANNELS)
    })?;
    e.for_range(mid, end, 1, |e, c| avg_pool_planes(e, (x, out), c, hw, 1))
}

/// The means of the `count` planes from channel `c` (see [`global_avg_pool`]).
fn avg_pool_planes(
    e: &mut Emit,
    (x0, out): (Value, Value),
    c: Value,
    hw: usize,
    count: usize,
) -> Result<()> {
    let x = e.addr(x0, c, hw * 4);
    let z = e.fzero(F32X4);
    let accs: Vec<Variable> = (0..count)
        .map(|_| {
            let acc = e.b.declare_var(F32X4);
            e.b.def_var(acc, z);
            acc
        })
        .collect();
    let n4 = hw / 4 * 4;
    let xe = e.add_imm(x, (n4 * 4) as i64);
    e.for_range(x, xe, 16, |e, xp| {
        for (i, &acc) in accs.iter().enumerate() {
            let v = e.load(F32X4, xp, off(i * hw * 4));
            let a = e.b.use_var(acc);
            let a = e.b.ins().fadd(a, v);
            e.b.def_var(acc, a);
        }
        Ok(())
    })?;
    for (i, &acc) in accs.iter().enumerate() {
        let a = e.b.use_var(acc);
        let l: Vec<Value> = (0..4).map(|j| e.b.ins().extractlane(a, j as u8)).collect();
        let s01 = e.b.ins().fadd(l[0], l[1]);
        let s23 = e.b.ins().fadd(l[2], l[3]);
        let mut t = e.b.ins().fadd(s01, s23);
        for j in n4..hw {
            let v = e.load(F32, x, off((i * hw + j) * 4));
            t = e.b.ins().fadd(t, v);
        }
        let k = e.b.ins().f32const(hw as f32);
        let r = e.b.ins().fdiv(t, k);
        let yp = e.addr(out, c, 4);
        e.store(r, yp, off(i * 4));
    }
    Ok(())
}

/// Elements `begin..end`: f32x4 while 4 remain, then one at a time. Both paths compute each
/// element with the same IEEE operations, so any split gives bit-identical results.
fn add_body(
    e: &mut Emit,
    ins: &[Value],
    out: Value,
    begin: Value,
    end: Value,
    relu: bool,
) -> Result<()> {
    let i = e.b.declare_var(I64);
    e.b.def_var(i, begin);
    let elem = |e: &mut Emit, ty, o: Value| {
        let mut acc = None;
        for &p in ins {
            let a = e.b.ins().iadd(p, o);
            let v = e.load(ty, a, 0);
            acc = Some(match acc {
                None => v,
                Some(x) => e.b.ins().fadd(x, v),
            });
        }
        let mut r = acc.expect("at least one input");
        if relu {
            r = e.relu(r);
        }
        let a = e.b.ins().iadd(out, o);
        e.store(r, a, 0);
    };
    let loop_ = |e: &mut Emit, i: Variable, width: i64, ty| {
        let header = e.b.create_block();
        let body = e.b.create_block();
        let exit = e.b.create_block();
        e.b.ins().jump(header, &[]);
        e.b.switch_to_block(header);
        let iv = e.b.use_var(i);
        let next = e.b.ins().iadd_imm_s(iv, width);
        let c = e.b.ins().icmp(IntCC::SignedLessThanOrEqual, next, end);
        e.b.ins().brif(c, body, &[], exit, &[]);
        e.b.switch_to_block(body);
        let o = e.b.ins().ishl_imm_s(iv, 2);
        elem(e, ty, o);
        e.b.def_var(i, next);
        e.b.ins().jump(header, &[]);
        e.b.switch_to_block(exit);
    };
    loop_(e, i, 4, F32X4);
    loop_(e, i, 1, F32);
    Ok(())
}

/// An elementwise kernel defined in a [`KernelModule`], not yet finalized.
pub struct PendingElt {
    id: PendingId,
    spec: EltSpec,
    /// The function's work units: [`EltSpec::work_units`], or for the wide scale-shift of
    /// large planes twice the channels (two halves of each plane).
    units: usize,
}

impl KernelModule {
    pub fn add_elementwise(&mut self, spec: &EltSpec) -> Result<PendingElt> {
        spec.validate()?;
        let s = *spec;
        if let (EltSpec::ScaleShift { channels, hw, relu }, Some(width)) =
            (s, super::x86::width(self.isa))
        {
            let cut = scale_shift_split(hw);
            let parts = match cut {
                Some(cut) => vec![cut, hw - cut],
                None => vec![hw],
            };
            let micros = (parts.iter())
                .map(|&hw| {
                    let k = ScaleShiftPlane { width, hw, relu };
                    self.add_micro_once(4, "scale shift plane", &k, ScaleShiftPlane::emit)
                })
                .collect::<Result<Vec<_>>>()?;
            // The function only loops over the units and calls: compiled quickly.
            let id = self.define_driver(&micros, move |e, p: ScaleShiftBufs, begin, end| {
                wide_scale_shift(e, p, (begin, end), (channels, hw, cut))
            })?;
            return Ok(PendingElt {
                id,
                spec: s,
                units: channels * parts.len(),
            });
        }
        let define = move |km: &mut KernelModule| {
            km.define_n(s.n_inputs() + 1, move |e, p, begin, end| {
                body(&s, e, p, begin, end)
            })
        };
        // A network's last steps (once each): without the optimiser
        // ([`KernelModule::quickly`]) they compile ~3x faster (SqueezeNet's global average
        // pool: 0.26 ms at `opt_level=speed`). `CNNC_ELT_OPT=1` keeps it (a measuring knob).
        let last = matches!(s, EltSpec::GlobalAvgPool { .. } | EltSpec::Softmax { .. });
        let id = if last && crate::knobs::forced("CNNC_ELT_OPT") != Some(true) {
            self.quickly(define)?
        } else {
            define(self)?
        };
        Ok(PendingElt {
            id,
            spec: s,
            units: s.work_units(),
        })
    }
}

impl Pending for PendingElt {
    type Kernel = EltKernel;
    fn bind(self, code: &Arc<Compiled>) -> Result<EltKernel> {
        let n = self.spec.n_inputs();
        let mut slots: Vec<Slot> = (0..n)
            .map(|i| Slot::read("elementwise input", self.spec.lens(i).0))
            .collect();
        slots.push(Slot::write("elementwise output", self.spec.lens(0).1));
        Ok(EltKernel {
            entry: Entry::new(code, self.id, self.units, slots)?,
            spec: self.spec,
        })
    }
}

/// Inputs of an elementwise kernel whose buffer list a run keeps on the stack.
pub(crate) const STACK_INPUTS: usize = 16;

/// A compiled elementwise / reduction kernel.
pub struct EltKernel {
    entry: Entry,
    spec: EltSpec,
}

impl EltKernel {
    pub fn spec(&self) -> &EltSpec {
        &self.spec
    }
    /// Its work units: [`EltSpec::work_units`], but for the wide scale-shift of planes of
    /// 512 floats or more, whose units are every plane's first half, then every second half.
    pub fn work_units(&self) -> usize {
        self.entry.units()
    }
    /// `inputs`: the summands for Add, `[x]` for Relu/Softmax/GlobalAvgPool,
    /// `[x, scale, shift]` for ScaleShift; then `out`. Calls `f` with the buffer list, on the
    /// stack for up to `STACK_INPUTS` inputs (a run allocates nothing).
    fn with_bufs(
        &self,
        inputs: &[&[f32]],
        out: &mut [f32],
        f: impl FnOnce(&mut [Buf]) -> Result<()>,
    ) -> Result<()> {
        let n = self.spec.n_inputs();
        if inputs.len() != n {
            return Err(Error::Input(format!(
                "{} takes {n} inputs, but was given {}",
                self.spec,
                inputs.len()
            )));
        }
        if n <= STACK_INPUTS {
            let mut stack: [Buf; STACK_INPUTS + 1] = std::array::from_fn(|_| Buf::None);
            for (b, x) in stack.iter_mut().zip(inputs) {
                *b = Buf::In(x);
            }
            stack[n] = Buf::Out(out);
            f(&mut stack[..=n])
        } else {
            let mut bufs: Vec<Buf> = inputs.iter().map(|x| Buf::In(x)).collect();
            bufs.push(Buf::Out(out));
            f(&mut bufs)
        }
    }

    pub fn run(&self, inputs: &[&[f32]], out: &mut [f32], range: Range<usize>) -> Result<()> {
        self.with_bufs(inputs, out, |bufs| self.entry.run(bufs, range))
    }

    /// All work units, split across `pool`'s threads.
    pub fn run_parallel(
        &self,
        pool: &ThreadPool,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<()> {
        self.with_bufs(inputs, out, |bufs| self.entry.run_parallel(pool, bufs))
    }

    pub fn run_all(&self, inputs: &[&[f32]], out: &mut [f32]) -> Result<()> {
        self.run(inputs, out, 0..self.work_units())
    }
}
