//! Activation shapes and the arithmetic that infers them.
use super::op::{Hw, Op};
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

/// One spatial axis of a sliding window: `(n + p + p_end - f)/s + 1`, rounded down, where
/// a filter of `taps` taps spaced `d` apart covers `f = d*(taps-1)+1` pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowAxis {
    pub n: usize,
    /// The pixels one window covers (the dilated filter's extent).
    pub f: usize,
    pub taps: usize,
    pub d: usize,
    pub s: usize,
    /// Padding before (top/left) and after (bottom/right) the input.
    pub p: usize,
    pub p_end: usize,
    pub out: usize,
    /// The filter, stride and pad leave input rows/columns that no window reads.
    pub untiled: bool,
}

/// One axis of a window as the op states it: taps, dilation, stride, pads.
#[derive(Clone, Copy, Debug)]
pub struct AxisSpec {
    pub taps: usize,
    pub d: usize,
    pub s: usize,
    pub p: usize,
    pub p_end: usize,
}

impl WindowAxis {
    fn new(layer: &str, axis: &str, n: usize, a: AxisSpec) -> Result<Self> {
        let AxisSpec {
            taps,
            d,
            s,
            p,
            p_end,
        } = a;
        // Attributes are capped at 2^31 (format) or checked by the importer, so these
        // products and sums fit; saturate anyway rather than wrap.
        let f = d.saturating_mul(taps.saturating_sub(1)).saturating_add(1);
        let padded = n.saturating_add(p).saturating_add(p_end);
        let probe = WindowAxis {
            n,
            f,
            taps,
            d,
            s,
            p,
            p_end,
            out: 0,
            untiled: false,
        };
        if padded < f {
            return Err(Error::Shape(format!(
                "{layer}: {axis}: {} < 1: the {f}-wide window{} is larger than the padded input ({} = {padded})",
                probe.spaced_lhs(),
                probe.dilated_note(),
                probe.padded_sum()
            )));
        }
        let span = padded - f;
        if p >= f || p_end >= f {
            return Err(Error::Shape(format!(
                "{layer}: {axis}: pad {} must be smaller than the window {f}, or some outputs would read only padding",
                p.max(p_end)
            )));
        }
        Ok(WindowAxis {
            out: span / s + 1,
            untiled: !span.is_multiple_of(s),
            ..probe
        })
    }

    /// `(n+2*p-f)/s+1`, or `(n+p+p_end-f)/s+1` with unequal pads.
    fn lhs(&self) -> String {
        format!("({}+{}-{})/{}+1", self.n, self.pad_sum("+"), self.f, self.s)
    }

    /// `(n + 2*p - f)/s + 1`, spaced, as error messages write it.
    fn spaced_lhs(&self) -> String {
        format!(
            "({} + {} - {})/{} + 1",
            self.n,
            self.pad_sum(" + "),
            self.f,
            self.s
        )
    }

    /// `2*p`, or `p + p_end` with unequal pads.
    fn pad_sum(&self, plus: &str) -> String {
        if self.p == self.p_end {
            format!("2*{}", self.p)
        } else {
            format!("{}{plus}{}", self.p, self.p_end)
        }
    }

    /// `n + 2*p`, or `n + p + p_end`.
    fn padded_sum(&self) -> String {
        format!("{} + {}", self.n, self.pad_sum(" + "))
    }

    /// ` (dilated filter 2*(3-1)+1 = 5)` for a dilated filter, else nothing.
    fn dilated_note(&self) -> String {
        if self.d == 1 {
            String::new()
        } else {
            format!(
                " (dilated filter {}*({}-1)+1 = {})",
                self.d, self.taps, self.f
            )
        }
    }

    /// The worked formula, e.g. `(224+2*3-7)/2+1 = 112.5 -> 112`.
    pub fn arithmetic(&self) -> String {
        let lhs = self.lhs();
        let result = if self.untiled {
            format!("{lhs} = {} -> {}", trim_float(self.exact()), self.out)
        } else {
            format!("{lhs} = {}", self.out)
        };
        result + &self.dilated_note()
    }

    /// The output size before rounding down.
    pub fn exact(&self) -> f64 {
        (self.n + self.p + self.p_end - self.f) as f64 / self.s as f64 + 1.0
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

/// A 2-D window as an op states it.
#[derive(Clone, Copy, Debug)]
pub struct WindowSpec {
    pub size: Hw,
    pub stride: Hw,
    pub dilation: Hw,
    pub pad: Hw,
    pub pad_end: Hw,
}

impl WindowSpec {
    /// An undilated window padded `pad` on every side.
    pub fn plain(size: Hw, stride: Hw, pad: Hw) -> Self {
        WindowSpec {
            size,
            stride,
            dilation: Hw::square(1),
            pad,
            pad_end: pad,
        }
    }
}

impl Window {
    pub fn new(layer: &str, input: &Shape, size: Hw, stride: Hw, pad: Hw) -> Result<Self> {
        Self::of(layer, input, WindowSpec::plain(size, stride, pad))
    }

    pub fn of(layer: &str, input: &Shape, w: WindowSpec) -> Result<Self> {
        if input.flat {
            return Err(Error::Shape(format!(
                "{layer}: needs a CxHxW input, but its input is a flat vector of {} features",
                input.c
            )));
        }
        let axis = |size: fn(Hw) -> usize| AxisSpec {
            taps: size(w.size),
            d: size(w.dilation),
            s: size(w.stride),
            p: size(w.pad),
            p_end: size(w.pad_end),
        };
        Ok(Window {
            h: WindowAxis::new(layer, "height", input.h, axis(|v| v.h))?,
            w: WindowAxis::new(layer, "width", input.w, axis(|v| v.w))?,
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
    let mut windowed = |spec: WindowSpec, channels: usize| -> Result<Shape> {
        let win = Window::of(layer, &x, spec)?;
        if strict && win.untiled() {
            let axis = if win.h.untiled { &win.h } else { &win.w };
            return Err(Error::Shape(format!(
                "{layer}: {} = {} is not a whole number; this filter, stride and pad do not tile the input",
                axis.spaced_lhs(),
                trim_float(axis.exact())
            )));
        }
        let shape = Shape::chw(channels, win.h.out, win.w.out);
        note.window = Some(win);
        Ok(shape)
    };
    let out = match op {
        Op::Input => x,
        Op::Conv(c) => {
            check_groups(layer, c, &x)?;
            let spec = WindowSpec {
                dilation: c.dilation,
                ..WindowSpec::plain(c.size, c.stride, c.pad)
            };
            windowed(spec, c.filters)?
        }
        Op::Gemm(g) => windowed(
            WindowSpec::plain(Hw::square(1), g.stride, Hw::square(0)),
            g.filters,
        )?,
        Op::MaxPool(p) | Op::AvgPool(p) => windowed(
            WindowSpec {
                pad_end: p.pad_end,
                ..WindowSpec::plain(p.size, p.stride, p.pad)
            },
            x.c,
        )?,
        Op::GlobalAvgPool => {
            needs_chw(layer, "global_avgpool needs", &x)?;
            Shape::chw(x.c, 1, 1)
        }
        Op::Pad(p) => {
            needs_chw(layer, "pad needs", &x)?;
            Shape::chw(x.c, x.h + p.top + p.bottom, x.w + p.left + p.right)
        }
        Op::Fc(f) => Shape::flat(f.units),
        Op::Flatten => Shape::flat(x.len()),
        Op::Relu | Op::Softmax | Op::Dropout | Op::BatchNorm { .. } | Op::Clip(_) => x,
        Op::ScaleShift => x,
        Op::Lrn(_) => {
            needs_chw(layer, "lrn normalises across the channels of", &x)?;
            x
        }
        Op::ChannelShuffle { groups } => {
            check_shuffle(layer, *groups, &x)?;
            x
        }
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
        Op::Conv(c) => &[c.filters, x.c / c.groups.max(1), c.size.h, c.size.w],
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

/// `{layer}: {what} a CxHxW input, but its input is a flat vector of F features`.
fn needs_chw(layer: &str, what: &str, x: &Shape) -> Result<()> {
    if x.flat {
        return Err(Error::Shape(format!(
            "{layer}: {what} a CxHxW input, but its input is a flat vector of {} features",
            x.c
        )));
    }
    Ok(())
}

fn check_shuffle(layer: &str, groups: usize, x: &Shape) -> Result<()> {
    if x.flat || groups == 0 || !x.c.is_multiple_of(groups) {
        return Err(Error::Shape(format!(
            "{layer}: channel_shuffle with {groups} groups needs a CxHxW input whose channels divide into the groups, but its input is {x}"
        )));
    }
    Ok(())
}

/// A grouped conv splits its input and output channels into `groups` equal parts.
fn check_groups(layer: &str, c: &super::op::Conv, x: &Shape) -> Result<()> {
    let g = c.groups;
    if g == 0 || !x.c.is_multiple_of(g) || !c.filters.is_multiple_of(g) {
        return Err(Error::Shape(format!(
            "{layer}: a conv with {g} groups needs input channels and filters that divide into the groups, but it has {} input channels and {} filters",
            x.c, c.filters
        )));
    }
    if c.dilation.h == 0 || c.dilation.w == 0 {
        return Err(Error::Shape(format!(
            "{layer}: dilation must be at least 1"
        )));
    }
    Ok(())
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
