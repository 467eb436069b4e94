//! Layers the runtime computes with plain Rust loops over one batch item, where no
//! generated kernel exists yet: pooling that the JIT's pool kernel does not take
//! (unequal pads, padding over half the window, an average that excludes the padding),
//! LRN, channel shuffle and a standalone clip. Each is memory-bound data movement or a
//! light per-element formula; the interpreter's versions are the specification.
use crate::error::Result;
use crate::ir::{Lrn, Pool, Shape};
use crate::jit::{ConvKernel, ThreadPool};
use crate::lower::{HostOp, Polyphase};
use std::sync::Arc;

impl HostOp {
    /// One item: `x` is the input item, `out` the output item.
    pub fn run(&self, x: &[f32], out: &mut [f32]) {
        match self {
            HostOp::Pool {
                pool,
                max,
                input,
                output,
            } => pool_item(x, pool, *max, input, output, out),
            HostOp::Lrn { lrn, input } => lrn_item(x, lrn, input, out),
            HostOp::Shuffle { groups, input } => shuffle_item(x, *groups, input, out),
            HostOp::Clip(c) => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = c.apply(v);
                }
            }
        }
    }
}

/// The input rows (or columns) window `o` covers: `lo..hi`, clipped to `0..n`.
fn span(o: usize, stride: usize, pad: usize, size: usize, n: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + size as isize).max(0) as usize).min(n);
    (lo, hi)
}

fn pool_item(x: &[f32], p: &Pool, max: bool, s: &Shape, o: &Shape, out: &mut [f32]) {
    let plane = s.h * s.w;
    let full = (p.size.h * p.size.w) as f32;
    for c in 0..s.c {
        let src = &x[c * plane..(c + 1) * plane];
        for oy in 0..o.h {
            let (y0, y1) = span(oy, p.stride.h, p.pad.h, p.size.h, s.h);
            for ox in 0..o.w {
                let (x0, x1) = span(ox, p.stride.w, p.pad.w, p.size.w, s.w);
                let rows = (y0..y1).map(|y| &src[y * s.w + x0..y * s.w + x1]);
                out[(c * o.h + oy) * o.w + ox] = if max {
                    // NaN wins, as in the interpreter and PyTorch.
                    let pick = |m: f32, &v: &f32| if v > m || v.is_nan() { v } else { m };
                    rows.flatten().fold(f32::NEG_INFINITY, pick)
                } else {
                    let sum: f32 = rows.flatten().sum();
                    let count = if p.count_pad {
                        full
                    } else {
                        ((y1 - y0) * (x1 - x0)) as f32
                    };
                    sum / count
                };
            }
        }
    }
}

/// One pass per output channel over whole planes: the sum of squares of its window's
/// channels accumulated into the output plane (in the interpreter's order, f32), then
/// the division, each a loop over contiguous floats that the compiler vectorises.
/// The window is at most `size` planes, so summing it afresh costs `size` multiply-adds
/// per element and cannot lose the small channels the way a running sum that subtracts
/// the channel leaving it does.
fn lrn_item(x: &[f32], l: &Lrn, s: &Shape, out: &mut [f32]) {
    let plane = s.h * s.w;
    let scale = l.alpha / l.size as f32;
    for c in 0..s.c {
        let ys = &mut out[c * plane..(c + 1) * plane];
        let (lo, hi) = l.window(c, s.c);
        ys.fill(0.0);
        for ch in lo..=hi {
            for (y, &v) in ys.iter_mut().zip(&x[ch * plane..(ch + 1) * plane]) {
                *y += v * v;
            }
        }
        let xs = &x[c * plane..(c + 1) * plane];
        let (b, k) = (l.bias, scale);
        // The common exponents without `powf` (AlexNet and GoogLeNet use 0.75): square
        // roots are single vector instructions, within an ulp or two of `powf`.
        match l.beta {
            0.75 => divide(ys, xs, |sum| {
                let r = (b + k * sum).sqrt();
                r * r.sqrt()
            }),
            0.5 => divide(ys, xs, |sum| (b + k * sum).sqrt()),
            1.0 => divide(ys, xs, |sum| b + k * sum),
            beta => divide(ys, xs, |sum| (b + k * sum).powf(beta)),
        }
    }
}

/// `y = x / denominator(y)`, `y` holding the sum of squares.
fn divide(ys: &mut [f32], xs: &[f32], denominator: impl Fn(f32) -> f32) {
    for (y, &v) in ys.iter_mut().zip(xs) {
        *y = v / denominator(*y);
    }
}

/// Output channel `j*groups + g` is input channel `g*(C/groups) + j`: whole planes moved.
fn shuffle_item(x: &[f32], groups: usize, s: &Shape, out: &mut [f32]) {
    let plane = s.h * s.w;
    let per_group = s.c / groups;
    for g in 0..groups {
        for j in 0..per_group {
            let from = (g * per_group + j) * plane;
            let to = (j * groups + g) * plane;
            out[to..to + plane].copy_from_slice(&x[from..from + plane]);
        }
    }
}

/// Floats of scratch a [`Polyphase`] conv needs: the largest phase's gathered input and
/// output, and its kernel's scratch after them (on `threads` threads).
pub(super) fn polyphase_scratch(
    p: &Polyphase,
    convs: &[(Arc<ConvKernel>, crate::memory::HugeBuf)],
    threads: usize,
) -> usize {
    (p.phases.iter())
        .map(|ph| {
            let spec = &p.convs[ph.conv].0;
            spec.input_len() + spec.output_len() + convs[ph.conv].0.scratch_len_on(threads)
        })
        .max()
        .unwrap_or(0)
}

/// One item of a [`Polyphase`] conv: for each phase, its input pixels gathered (zero in
/// the padding), its plain convolution, its outputs scattered into place.
pub(super) fn polyphase(
    p: &Polyphase,
    convs: &[(Arc<ConvKernel>, crate::memory::HugeBuf)],
    x: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
    pool: Option<&ThreadPool>,
) -> Result<()> {
    let (s, o, d) = (p.input, p.output, p.dilation);
    for ph in &p.phases {
        let (k, packed) = &convs[ph.conv];
        let spec = k.spec();
        let (gathered, rest) = scratch.split_at_mut(spec.input_len());
        let (result, conv_scratch) = rest.split_at_mut(spec.output_len());
        // Phase pixel (a, b) is padded pixel (a*Dh + row, b*Dw + col).
        let source = |i: usize, d: usize, first: usize, pad: usize, n: usize| {
            (i * d + first).checked_sub(pad).filter(|&v| v < n)
        };
        let (ph_h, ph_w) = (spec.in_h, spec.in_w);
        for c in 0..s.c {
            let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
            for a in 0..ph_h {
                let row = &mut gathered[(c * ph_h + a) * ph_w..(c * ph_h + a + 1) * ph_w];
                match source(a, d.h, ph.row, p.pad.h, s.h) {
                    None => row.fill(0.0),
                    Some(y) => {
                        for (b, v) in row.iter_mut().enumerate() {
                            *v = source(b, d.w, ph.col, p.pad.w, s.w)
                                .map_or(0.0, |xi| plane[y * s.w + xi]);
                        }
                    }
                }
            }
        }
        match pool {
            Some(pl) => k.run_parallel(pl, gathered, packed, None, result, conv_scratch)?,
            None => k.run(
                gathered,
                packed,
                None,
                result,
                conv_scratch,
                0..k.work_units(),
            )?,
        }
        let (rows, cols) = ph.out_hw(p);
        for c in 0..o.c {
            for q in 0..rows {
                let src = &result[(c * rows + q) * cols..(c * rows + q + 1) * cols];
                let y = q * d.h + ph.row;
                let dst = &mut out[(c * o.h + y) * o.w..(c * o.h + y + 1) * o.w];
                for (u, &v) in src.iter().enumerate() {
                    dst[u * d.w + ph.col] = v;
                }
            }
        }
    }
    Ok(())
}
