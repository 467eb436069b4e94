//! Activation shapes and the arithmetic that infers them.
use super::op::{Hw, Op, Pool};
use crate::error::{Error, Result};
use std::fmt;

/// The largest tensor cnnc agrees to hold (per batch item, or one parameter tensor):
/// 2^31 elements. Anything larger is refused before allocating.
pub const MAX_ELEMENTS: u64 = 1 << 31;

/// The shape of one batch item: `C x H x W`, or a flat vector of `c` features
/// (the output of `fc` and `flatten`, stored with `h = w = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub flat: bool,
}

impl Shape {
    pub fn chw(c: usize, h: usize, w: usize) -> Self {
        Shape {
            c,
            h,
            w,
            flat: false,
        }
    }
    pub fn flat(features: usize) -> Self {
        Shape {
            c: features,
            h: 1,
            w: 1,
            flat: true,
        }
    }
    /// Elements per batch item.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether `dims` is [`Shape::dims`]`(n)` (without allocating).
    pub fn is_dims(&self, n: usize, dims: &[usize]) -> bool {
        if self.flat {
            dims == [n, self.c]
        } else {
            dims == [n, self.c, self.h, self.w]
        }
    }
    /// The tensor dimensions for a batch of `n`: `[n, C, H, W]` or `[n, F]`.
    pub fn dims(&self, n: usize) -> Vec<usize> {
        if self.flat {
            vec![n, self.c]
        } else {
            vec![n, self.c, self.h, self.w]
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.flat {
            write!(f, "{}", self.c)
        } else {
            write!(f, "{}x{}x{}", self.c, self.h, self.w)
        }
    }
}

/// One spatial axis of a sliding window: `(n + 2p - f)/s + 1`, rounded down.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowAxis {
    pub n: usize,
    pub f: usize,
    pub s: usize,
    pub p: usize,
    pub out: usize,
    /// The filter, stride and pad leave input rows/columns that no window reads.
    pub untiled: bool,
}

impl WindowAxis {
    fn new(layer: &str, axis: &str, n: usize, f: usize, s: usize, p: usize) -> Result<Self> {
        let span = n as i64 + 2 * p as i64 - f as i64;
        let formula = format!("({n} + 2*{p} - {f})/{s} + 1");
        if span < 0 {
            return Err(Error::Shape(format!(
                "{layer}: {axis}: {formula} < 1: the {f}-wide window is larger than the padded input ({n} + 2*{p} = {})",
                n + 2 * p
            )));
        }
        let span = span as usize;
        if p >= f {
            return Err(Error::Shape(format!(
                "{layer}: {axis}: pad {p} must be smaller than the window {f}, or some outputs would read only padding"
            )));
        }
        Ok(WindowAxis {
            n,
            f,
            s,
            p,
            out: span / s + 1,
            untiled: !span.is_multiple_of(s),
        })
    }

    /// The worked formula, e.g. `(224+2*3-7)/2+1 = 112.5 -> 112`.
    pub fn arithmetic(&self) -> String {
        let lhs = format!("({}+2*{}-{})/{}+1", self.n, self.p, self.f, self.s);
        if self.untiled {
            let exact = (self.n + 2 * self.p - self.f) as f64 / self.s as f64 + 1.0;
            format!("{lhs} = {} -> {}", trim_float(exact), self.out)
        } else {
            format!("{lhs} = {}", self.out)
        }
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The output of a windowed op (conv, pool) along both axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub h: WindowAxis,
    pub w: WindowAxis,
}

impl Window {
    pub fn new(layer: &str, input: &Shape, size: Hw, stride: Hw, pad: Hw) -> Result<Self> {
        if input.flat {
            return Err(Error::Shape(format!(
                "{layer}: needs a CxHxW input, but its input is a flat vector of {} features",
                input.c
            )));
        }
        Ok(Window {
            h: WindowAxis::new(layer, "height", input.h, size.h, stride.h, pad.h)?,
            w: WindowAxis::new(layer, "width", input.w, size.w, stride.w, pad.w)?,
        })
    }

    pub fn untiled(&self) -> bool {
        self.h.untiled || self.w.untiled
    }

    /// `(32+2*2-5)/1+1 = 32`, or both axes when they differ.
    pub fn arithmetic(&self) -> String {
        let (h, w) = (self.h.arithmetic(), self.w.arithmetic());
        if h == w {
            h
        } else {
            format!("H: {h}; W: {w}")
        }
    }
}

/// What shape inference learns about one node besides its shape.
#[derive(Clone, Debug, Default)]
pub struct ShapeNote {
    pub window: Option<Window>,
}

/// The output shape of `op` given its input shapes, checked; `strict` turns a filter
/// that does not tile its input into an error.
pub fn infer(layer: &str, op: &Op, inputs: &[Shape], strict: bool) -> Result<(Shape, ShapeNote)> {
    let mut note = ShapeNote::default();
    let x = inputs.first().copied().unwrap_or_default();
    let mut windowed = |size: Hw, stride: Hw, pad: Hw, channels: usize| -> Result<Shape> {
        let win = Window::new(layer, &x, size, stride, pad)?;
        if strict && win.untiled() {
            let axis = if win.h.untiled { &win.h } else { &win.w };
            let exact = (axis.n + 2 * axis.p - axis.f) as f64 / axis.s as f64 + 1.0;
            return Err(Error::Shape(format!(
                "{layer}: ({} + 2*{} - {})/{} + 1 = {} is not a whole number; this filter, stride and pad do not tile the input",
                axis.n,
                axis.p,
                axis.f,
                axis.s,
                trim_float(exact)
            )));
        }
        let shape = Shape::chw(channels, win.h.out, win.w.out);
        note.window = Some(win);
        Ok(shape)
    };
    let out = match op {
        Op::Input => x,
        Op::Conv(c) => windowed(c.size, c.stride, c.pad, c.filters)?,
        Op::Gemm(g) => windowed(Hw::square(1), g.stride, Hw::square(0), g.filters)?,
        Op::MaxPool(Pool { size, stride, pad }) | Op::AvgPool(Pool { size, stride, pad }) => {
            windowed(*size, *stride, *pad, x.c)?
        }
        Op::GlobalAvgPool => {
            if x.flat {
                return Err(Error::Shape(format!(
                    "{layer}: global_avgpool needs a CxHxW input, but its input is a flat vector of {} features",
                    x.c
                )));
            }
            Shape::chw(x.c, 1, 1)
        }
        Op::Pad(p) => {
            if x.flat {
                return Err(Error::Shape(format!(
                    "{layer}: pad needs a CxHxW input, but its input is a flat vector of {} features",
                    x.c
                )));
            }
            Shape::chw(x.c, x.h + p.top + p.bottom, x.w + p.left + p.right)
        }
        Op::Fc(f) => Shape::flat(f.units),
        Op::Flatten => Shape::flat(x.len()),
        Op::Relu | Op::Softmax | Op::Dropout | Op::BatchNorm { .. } => x,
        Op::Add => {
            for (i, s) in inputs.iter().enumerate().skip(1) {
                if s.len() != x.len() || (s.c, s.h, s.w) != (x.c, x.h, x.w) {
                    return Err(Error::Shape(format!(
                        "{layer}: add needs inputs of one shape, but input 1 is {x} and input {} is {s}",
                        i + 1
                    )));
                }
            }
            x
        }
        Op::Concat => {
            let mut c = 0usize;
            for (i, s) in inputs.iter().enumerate() {
                if s.flat != x.flat || (s.h, s.w) != (x.h, x.w) {
                    return Err(Error::Shape(format!(
                        "{layer}: concat joins along channels and needs the same height and width, but input 1 is {x} and input {} is {s}",
                        i + 1
                    )));
                }
                c += s.c;
            }
            Shape { c, ..x }
        }
    };
    let weight: &[usize] = match op {
        Op::Conv(c) => &[c.filters, x.c, c.size.h, c.size.w],
        Op::Gemm(g) => &[g.filters, x.c],
        Op::Fc(f) => &[f.units, x.len()],
        _ => &[],
    };
    check_budget(layer, "weight", weight)?;
    // The residual of a fused epilogue must match the output.
    if let Some(e) = op.epilogue() {
        if e.residual {
            let r = inputs.get(1).copied().unwrap_or_default();
            if (r.c, r.h, r.w) != (out.c, out.h, out.w) {
                return Err(Error::Shape(format!(
                    "{layer}: the residual input is {r}, but the output is {out}"
                )));
            }
        }
    }
    check_budget(layer, "output", &[out.c, out.h, out.w])?;
    Ok((out, note))
}

/// Refuses tensors above [`MAX_ELEMENTS`] without overflowing on the way.
pub fn check_budget(layer: &str, what: &str, dims: &[usize]) -> Result<()> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n.saturating_mul(d as u64);
    }
    if n > MAX_ELEMENTS {
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(Error::Shape(format!(
            "{layer}: the {what} would hold {} = {n} elements, more than the limit of 2^31",
            dims.join("*")
        )));
    }
    Ok(())
}
