//! The operations of the IR, with typed attributes.
use std::fmt;

/// A pair of per-axis values (height, width): filter size, stride or padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Hw {
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub const fn square(n: usize) -> Self {
        Hw { h: n, w: n }
    }
    pub fn is(&self, n: usize) -> bool {
        self.h == n && self.w == n
    }
}

impl fmt::Display for Hw {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.h == self.w {
            write!(f, "{}", self.h)
        } else {
            write!(f, "[{}, {}]", self.h, self.w)
        }
    }
}

/// What a producing layer does to its result before storing it: the fused tail of
/// `conv -> [add(shortcut)] -> [relu] -> [clip]`. With `residual`, the node has a second
/// input (slot 1): a tensor of the output's shape that is added before the relu; `clip`
/// (ReLU6 is `clip 0..6`) bounds the result last.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Epilogue {
    pub residual: bool,
    pub relu: bool,
    pub clip: Option<Clip>,
}

impl Epilogue {
    pub fn is_empty(&self) -> bool {
        !self.residual && !self.relu && self.clip.is_none()
    }
    /// Whether a `relu` or `clip` already bounds the result (a further activation no
    /// longer fuses).
    pub fn activated(&self) -> bool {
        self.relu || self.clip.is_some()
    }
}

/// `min(max(x, min), max)`: ONNX Clip, ReLU6 = clip 0..6. Bounds may be infinite.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Clip {
    pub min: f32,
    pub max: f32,
}

impl Clip {
    /// NaN stays NaN, as in the JIT's epilogue (`f32::max` would give `min`).
    pub fn apply(&self, x: f32) -> f32 {
        if x.is_nan() {
            x
        } else {
            x.max(self.min).min(self.max)
        }
    }
}

/// Local response normalisation across channels (AlexNet, GoogLeNet; ONNX and Caffe
/// semantics): `y = x / (bias + alpha/size * sum of x^2 over the `size` channels
/// around c)^beta`, the window running from `c - (size-1)/2` to `c + size/2` (clipped
/// to the channels there are).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Lrn {
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bias: f32,
}

impl Lrn {
    /// The channels whose squares enter channel `c`'s sum: `lo..=hi`.
    pub fn window(&self, c: usize, channels: usize) -> (usize, usize) {
        let lo = c.saturating_sub(self.size.saturating_sub(1) / 2);
        let hi = (c + self.size / 2).min(channels - 1);
        (lo, hi)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Conv {
    pub filters: usize,
    pub size: Hw,
    pub stride: Hw,
    pub pad: Hw,
    /// Spacing of the filter taps: the filter covers `dilation*(size-1)+1` pixels.
    pub dilation: Hw,
    /// Channel groups: filter `k` reads only the `C/groups` input channels of its group
    /// (`groups = C` is a depthwise conv; `filters/groups` is its channel multiplier).
    pub groups: usize,
    pub bias: bool,
    pub epilogue: Epilogue,
}

/// A 1x1 convolution lowered to a matrix product `[K x C] * [C x pixels]`, sampling
/// every `stride`-th pixel in place (ResNet's projection shortcut). Runs on the conv
/// kernels (a 1x1 `ConvSpec` with this stride; the pointwise GEMM at stride 1).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Gemm {
    pub filters: usize,
    pub stride: Hw,
    pub bias: bool,
    pub epilogue: Epilogue,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Fc {
    pub units: usize,
    pub bias: bool,
    pub epilogue: Epilogue,
}

/// A pooling window. `pad` is added above and left, `pad_end` below and right (equal
/// unless an imported model pads asymmetrically). An average pool divides by the
/// window's full size when `count_pad` (PyTorch's default `count_include_pad=True`), else
/// by the number of input pixels it covers (ONNX's default).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Pool {
    pub size: Hw,
    pub stride: Hw,
    pub pad: Hw,
    pub pad_end: Hw,
    pub count_pad: bool,
}

impl Pool {
    /// A window padded `pad` on every side that counts the padding (the plain YAML form).
    pub fn new(size: Hw, stride: Hw, pad: Hw) -> Self {
        Pool {
            size,
            stride,
            pad,
            pad_end: pad,
            count_pad: true,
        }
    }
    pub fn symmetric(&self) -> bool {
        self.pad == self.pad_end
    }
}

/// Explicit padding of the spatial axes with `value`: `top` rows above, `bottom` below,
/// `left`/`right` columns. Conv and pool pads are symmetric; this layer carries the
/// asymmetric remainder of an imported model's pads (value 0, or -inf before a max pool).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Pad {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
    pub value: f32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// The graph input; exactly one per graph, named `input`.
    Input,
    Conv(Conv),
    Gemm(Gemm),
    Fc(Fc),
    Relu,
    #[serde(rename = "maxpool")]
    MaxPool(Pool),
    #[serde(rename = "avgpool")]
    AvgPool(Pool),
    #[serde(rename = "global_avgpool")]
    GlobalAvgPool,
    Flatten,
    Softmax,
    Add,
    Concat,
    #[serde(rename = "batchnorm")]
    BatchNorm {
        eps: f32,
    },
    Dropout,
    Pad(Pad),
    Clip(Clip),
    Lrn(Lrn),
    /// ShuffleNet's channel shuffle: the channels, seen as `groups x C/groups`, are
    /// transposed, so output channel `j*groups + g` is input channel `g*(C/groups) + j`.
    #[serde(rename = "channel_shuffle")]
    ChannelShuffle {
        groups: usize,
    },
    /// `y = x * weight[c] + bias[c]` per channel (Caffe's Scale layer; an ONNX Mul and
    /// Add by per-channel constants that fold into no conv or batchnorm).
    ScaleShift,
}

impl Op {
    /// The op's name as written in the graph format.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv(_) => "conv",
            Op::Gemm(_) => "gemm",
            Op::Fc(_) => "fc",
            Op::Relu => "relu",
            Op::MaxPool(_) => "maxpool",
            Op::AvgPool(_) => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Softmax => "softmax",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::BatchNorm { .. } => "batchnorm",
            Op::Dropout => "dropout",
            Op::Pad(_) => "pad",
            Op::Clip(_) => "clip",
            Op::Lrn(_) => "lrn",
            Op::ChannelShuffle { .. } => "channel_shuffle",
            Op::ScaleShift => "scale_shift",
        }
    }

    /// How many inputs the op takes: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input => (0, 0),
            Op::Add | Op::Concat => (2, usize::MAX),
            Op::Conv(Conv { epilogue, .. })
            | Op::Gemm(Gemm { epilogue, .. })
            | Op::Fc(Fc { epilogue, .. }) => {
                let n = 1 + epilogue.residual as usize;
                (n, n)
            }
            _ => (1, 1),
        }
    }

    pub fn epilogue(&self) -> Option<&Epilogue> {
        match self {
            Op::Conv(c) => Some(&c.epilogue),
            Op::Gemm(g) => Some(&g.epilogue),
            Op::Fc(f) => Some(&f.epilogue),
            _ => None,
        }
    }

    pub fn epilogue_mut(&mut self) -> Option<&mut Epilogue> {
        match self {
            Op::Conv(c) => Some(&mut c.epilogue),
            Op::Gemm(g) => Some(&mut g.epilogue),
            Op::Fc(f) => Some(&mut f.epilogue),
            _ => None,
        }
    }

    /// The names of the parameter tensors the op owns, PyTorch style (`<layer>.<suffix>`).
    pub fn param_names(&self) -> &'static [&'static str] {
        match self {
            Op::Conv(Conv { bias: true, .. })
            | Op::Gemm(Gemm { bias: true, .. })
            | Op::Fc(Fc { bias: true, .. }) => &["weight", "bias"],
            Op::Conv(_) | Op::Gemm(_) | Op::Fc(_) => &["weight"],
            Op::BatchNorm { .. } => &["weight", "bias", "running_mean", "running_var"],
            Op::ScaleShift => &["weight", "bias"],
            _ => &[],
        }
    }
}

impl fmt::Display for Op {
    /// The op with its attributes, as `cnnc info` and IR dumps show it.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fn tail(f: &mut fmt::Formatter, bias: bool, e: &Epilogue) -> fmt::Result {
            if !bias {
                write!(f, " nobias")?;
            }
            if e.residual {
                write!(f, " +residual")?;
            }
            if e.relu {
                write!(f, " +relu")?;
            }
            if let Some(c) = e.clip {
                write!(f, " +clip({}, {})", c.min, c.max)?;
            }
            Ok(())
        }
        match self {
            Op::Conv(c) => {
                write!(
                    f,
                    "conv {}x{}/{} pad {} k={}",
                    c.size.h, c.size.w, c.stride, c.pad, c.filters
                )?;
                if c.groups != 1 {
                    write!(f, " groups={}", c.groups)?;
                }
                if !c.dilation.is(1) {
                    write!(f, " dilation {}", c.dilation)?;
                }
                tail(f, c.bias, &c.epilogue)
            }
            Op::Gemm(g) => {
                write!(f, "gemm 1x1/{} k={}", g.stride, g.filters)?;
                tail(f, g.bias, &g.epilogue)
            }
            Op::Fc(c) => {
                write!(f, "fc {}", c.units)?;
                tail(f, c.bias, &c.epilogue)
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                write!(
                    f,
                    "{} {}x{}/{} pad {}",
                    self.kind(),
                    p.size.h,
                    p.size.w,
                    p.stride,
                    p.pad
                )?;
                if !p.symmetric() {
                    write!(f, " pad_end {}", p.pad_end)?;
                }
                if matches!(self, Op::AvgPool(_)) && !p.count_pad {
                    write!(f, " exclude-pad")?;
                }
                Ok(())
            }
            Op::Clip(c) => write!(f, "clip {}..{}", c.min, c.max),
            Op::Lrn(l) => write!(
                f,
                "lrn size {} alpha {} beta {} bias {}",
                l.size, l.alpha, l.beta, l.bias
            ),
            Op::ChannelShuffle { groups } => write!(f, "channel_shuffle groups={groups}"),
            Op::BatchNorm { eps } => write!(f, "batchnorm eps={eps}"),
            Op::Pad(p) => {
                write!(f, "pad t{} l{} b{} r{}", p.top, p.left, p.bottom, p.right)?;
                if p.value != 0.0 {
                    write!(f, " value {}", p.value)?;
                }
                Ok(())
            }
            other => write!(f, "{}", other.kind()),
        }
    }
}
