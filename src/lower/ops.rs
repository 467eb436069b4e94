//! One lowering per op: the kernel spec of a node, every shape taken from the IR.
use super::{HostOp, Kernel};
use crate::error::{Error, Result};
use crate::ir::{Conv, Epilogue, Fc, Gemm, Graph, NodeId, Op, Pool, Shape};
use crate::jit::{ConvMethod, ConvSpec, DepthwiseSpec, EltSpec, FcSpec, PoolKind, PoolSpec};
use crate::options::Options;

/// What a node becomes.
pub enum Lowered {
    /// The graph input: the runtime copies it in.
    Nothing,
    /// Its input's floats under another shape (flatten, dropout).
    Alias,
    Step(Kernel),
}

/// The lowering of node `id`.
pub fn kernel(g: &Graph, id: NodeId, opts: &Options) -> Result<Lowered> {
    let node = g.node(id);
    let inputs = g.inputs(id);
    let x = inputs.first().map_or(node.shape, |&i| g.node(i).shape);
    let out = node.shape;
    let kernel = match &node.op {
        Op::Input => return Ok(Lowered::Nothing),
        Op::Flatten | Op::Dropout => return Ok(Lowered::Alias),
        Op::Conv(c) if window_covers_input(x, c) => {
            fc_kernel(x.len(), c.filters, c.bias, &c.epilogue, opts)
        }
        Op::Gemm(gm) if x.h == 1 && x.w == 1 => {
            fc_kernel(x.len(), gm.filters, gm.bias, &gm.epilogue, opts)
        }
        Op::Conv(c) if c.groups > 1 && c.groups == x.c => depthwise(x, c),
        Op::Conv(c) if c.groups == 1 && c.stride.is(1) && !c.epilogue.residual => {
            if c.dilation.is(1) {
                conv(x, c, opts)
            } else {
                polyphase(x, out, c, opts)
            }
        }
        Op::Conv(c) if c.groups != 1 || !c.dilation.is(1) => grouped_conv(x, c, opts),
        Op::Conv(c) => conv(x, c, opts),
        Op::Gemm(gm) => gemm(x, gm, opts),
        Op::Fc(f) => fc(x, f, opts),
        Op::MaxPool(p) | Op::AvgPool(p) if !pool_kernel_takes(p, &node.op) => {
            Kernel::Host(HostOp::Pool {
                pool: p.clone(),
                max: matches!(node.op, Op::MaxPool(_)),
                input: x,
                output: out,
            })
        }
        Op::MaxPool(p) => pool(PoolKind::Max, x, p, opts),
        Op::AvgPool(p) => pool(PoolKind::Avg, x, p, opts),
        Op::GlobalAvgPool => elementwise(EltSpec::GlobalAvgPool {
            channels: x.c,
            hw: x.h * x.w,
        }),
        Op::Relu => elementwise(EltSpec::Relu { len: out.len() }),
        Op::Softmax => elementwise(EltSpec::Softmax {
            channels: x.c,
            hw: x.h * x.w,
        }),
        Op::Add => elementwise(EltSpec::Add {
            inputs: inputs.len(),
            len: out.len(),
            relu: false,
        }),
        Op::BatchNorm { eps } => batchnorm(g, id, x, *eps)?,
        Op::Concat => concat(inputs.iter().map(|&i| g.node(i).shape)),
        Op::Pad(p) => Kernel::Pad {
            pad: p.clone(),
            input: x,
        },
        Op::Clip(c) => Kernel::Host(HostOp::Clip(*c)),
        Op::Lrn(lrn) => Kernel::Host(HostOp::Lrn {
            lrn: *lrn,
            input: x,
        }),
        Op::ChannelShuffle { groups } => Kernel::Host(HostOp::Shuffle {
            groups: *groups,
            input: x,
        }),
        Op::ScaleShift => scale_shift(g, id, x)?,
    };
    Ok(Lowered::Step(kernel))
}

/// A convolution with the algorithm `opts` allows for its shape.
fn conv_kernel(spec: ConvSpec, opts: &Options) -> Kernel {
    Kernel::Conv {
        method: ConvMethod::for_spec(&spec, opts.winograd, opts.isa),
        spec,
        isa: opts.isa,
    }
}

fn conv(x: Shape, c: &Conv, opts: &Options) -> Kernel {
    conv_kernel(conv_spec(x, c), opts)
}

/// The dense kernel's spec of `c` on `x` (groups and dilation aside).
fn conv_spec(x: Shape, c: &Conv) -> ConvSpec {
    ConvSpec {
        in_c: x.c,
        in_h: x.h,
        in_w: x.w,
        out_c: c.filters,
        kernel_h: c.size.h,
        kernel_w: c.size.w,
        stride_h: c.stride.h,
        stride_w: c.stride.w,
        pad_h: c.pad.h,
        pad_w: c.pad.w,
        bias: c.bias,
        relu: c.epilogue.relu,
        residual: c.epilogue.residual,
        residual_in_place: false,
        clip: clip(&c.epilogue),
    }
}

/// A fused clip as the kernels' epilogue takes it.
fn clip(e: &Epilogue) -> Option<crate::jit::Clip> {
    e.clip.map(|c| crate::jit::Clip {
        min: c.min,
        max: c.max,
    })
}

/// A depthwise conv: one input channel per group, `filters / groups` outputs each.
fn depthwise(x: Shape, c: &Conv) -> Kernel {
    Kernel::Depthwise(DepthwiseSpec::of_conv(
        &conv_spec(x, c),
        c.dilation.h,
        c.dilation.w,
    ))
}

/// A dilated conv with stride 1 (see [`super::Polyphase`]).
fn polyphase(x: Shape, out: Shape, c: &Conv, opts: &Options) -> Kernel {
    let (d, f) = (c.dilation, c.size);
    let mut p = super::Polyphase {
        input: x,
        output: out,
        pad: c.pad,
        dilation: d,
        convs: Vec::new(),
        phases: Vec::new(),
    };
    for row in 0..d.h.min(out.h) {
        for col in 0..d.w.min(out.w) {
            // Outputs row, row + D, ...: (OH - row) / D of them, rounded up; each reads
            // F consecutive rows of the phase.
            let (rows, cols) = ((out.h - row).div_ceil(d.h), (out.w - col).div_ceil(d.w));
            let phase_in = Shape::chw(x.c, rows + f.h - 1, cols + f.w - 1);
            let plain = Conv {
                dilation: crate::ir::Hw { h: 1, w: 1 },
                pad: crate::ir::Hw { h: 0, w: 0 },
                ..c.clone()
            };
            let Kernel::Conv { spec, method, .. } = conv(phase_in, &plain, opts) else {
                unreachable!("conv lowers to Kernel::Conv")
            };
            let conv = match p.convs.iter().position(|&k| k == (spec, method)) {
                Some(i) => i,
                None => {
                    p.convs.push((spec, method));
                    p.convs.len() - 1
                }
            };
            p.phases.push(super::Phase { row, col, conv });
        }
    }
    Kernel::Polyphase(p)
}

/// A grouped or dilated conv: the dense kernel of one group (see [`Kernel::GroupedConv`]).
/// A dilated filter becomes its extent `D*(F-1)+1` with zeros between the taps: exact,
/// but it multiplies by the zeros too.
fn grouped_conv(x: Shape, c: &Conv, opts: &Options) -> Kernel {
    let extent = |f: usize, d: usize| d * (f - 1) + 1;
    let group = Shape {
        c: x.c / c.groups,
        ..x
    };
    let one = Conv {
        filters: c.filters / c.groups,
        size: crate::ir::Hw {
            h: extent(c.size.h, c.dilation.h),
            w: extent(c.size.w, c.dilation.w),
        },
        ..c.clone()
    };
    let Kernel::Conv { spec, method, isa } = conv(group, &one, opts) else {
        unreachable!("conv lowers to Kernel::Conv")
    };
    Kernel::GroupedConv {
        spec,
        method,
        isa,
        groups: c.groups,
        size: c.size,
        dilation: c.dilation,
    }
}

/// Whether the pool kernel takes this pool: symmetric pads of at most half the window,
/// and an average that counts them (or has none).
fn pool_kernel_takes(p: &Pool, op: &Op) -> bool {
    p.symmetric()
        && 2 * p.pad.h <= p.size.h
        && 2 * p.pad.w <= p.size.w
        && (p.count_pad || matches!(op, Op::MaxPool(_)) || p.pad.is(0))
}

/// A scale_shift the passes did not fold: the elementwise per-channel kernel.
fn scale_shift(g: &Graph, id: NodeId, x: Shape) -> Result<Kernel> {
    let node = g.node(id);
    let param = |suffix: &str| {
        node.param(suffix)
            .map(|t| t.data().to_vec())
            .ok_or_else(|| {
                Error::Weights(format!("{}: parameter `{suffix}` is not bound", node.name))
            })
    };
    Ok(Kernel::Elementwise {
        spec: EltSpec::ScaleShift {
            channels: x.c,
            hw: x.h * x.w,
            relu: false,
        },
        consts: vec![param("weight")?, param("bias")?],
    })
}

/// A gemm node (a 1x1 convolution with stride) runs on the conv kernels.
fn gemm(x: Shape, gm: &Gemm, opts: &Options) -> Kernel {
    conv_kernel(
        ConvSpec {
            in_c: x.c,
            in_h: x.h,
            in_w: x.w,
            out_c: gm.filters,
            kernel_h: 1,
            kernel_w: 1,
            stride_h: gm.stride.h,
            stride_w: gm.stride.w,
            pad_h: 0,
            pad_w: 0,
            bias: gm.bias,
            relu: gm.epilogue.relu,
            residual: gm.epilogue.residual,
            residual_in_place: false,
            clip: clip(&gm.epilogue),
        },
        opts,
    )
}

fn fc(x: Shape, f: &Fc, opts: &Options) -> Kernel {
    fc_kernel(x.len(), f.units, f.bias, &f.epilogue, opts)
}

/// A fully connected layer from `inputs` floats (an item) to `units`.
fn fc_kernel(inputs: usize, units: usize, bias: bool, e: &Epilogue, opts: &Options) -> Kernel {
    let spec = FcSpec {
        bias,
        relu: e.relu,
        residual: e.residual,
        clip: clip(e),
        ..FcSpec::new(inputs, units, opts.batch)
    };
    Kernel::Fc {
        spec,
        isa: opts.isa,
    }
}

/// Whether `c`'s one window covers its whole unpadded input `x`: a 1x1 conv on a 1x1 map
/// (the classifier of DenseNet-121 and MobileNet as ONNX model-zoo files write it) or a
/// 7x7 conv on a 7x7 map (VGG's fc6 in fully convolutional form). Such a conv is a fully
/// connected layer whose rows are the filters flattened, in the input's own (channel, row,
/// column) order, so it gets the fc kernel: it streams each weight once per batch chunk at
/// memory speed, where the conv kernels would tile pixels there are none of (1024 -> 1000,
/// DenseNet-121's classifier, weights in L3: 0.20-0.22 ms on the pointwise GEMM, 0.13-0.14
/// on the fc kernel; onnxruntime's in-network 0.33 against the GEMM's 0.62, load 5).
fn window_covers_input(x: Shape, c: &Conv) -> bool {
    c.groups == 1 && c.dilation.is(1) && c.pad.is(0) && (c.size.h, c.size.w) == (x.h, x.w)
}

fn pool(kind: PoolKind, x: Shape, p: &Pool, opts: &Options) -> Kernel {
    let spec = PoolSpec {
        kind,
        channels: x.c,
        in_h: x.h,
        in_w: x.w,
        kernel_h: p.size.h,
        kernel_w: p.size.w,
        stride_h: p.stride.h,
        stride_w: p.stride.w,
        pad_h: p.pad.h,
        pad_w: p.pad.w,
    };
    Kernel::Pool {
        spec,
        isa: opts.isa,
    }
}

fn elementwise(spec: EltSpec) -> Kernel {
    Kernel::Elementwise {
        spec,
        consts: Vec::new(),
    }
}

/// A batchnorm the passes did not fold: the per-channel scale and shift `fold-batchnorm`
/// computes (the same function, in f64), once, here.
fn batchnorm(g: &Graph, id: NodeId, x: Shape, eps: f32) -> Result<Kernel> {
    let node = g.node(id);
    let param = |suffix: &str| {
        node.param(suffix).map(|t| t.data()).ok_or_else(|| {
            Error::Weights(format!("{}: parameter `{suffix}` is not bound", node.name))
        })
    };
    let stats = crate::passes::fold_batchnorm::BatchNormStats {
        gamma: param("weight")?,
        beta: param("bias")?,
        mean: param("running_mean")?,
        var: param("running_var")?,
        eps,
    };
    let affine = stats.scale_shift(&node.name, x.c)?;
    let to_f32 = |v: &[f64]| v.iter().map(|&s| s as f32).collect();
    Ok(Kernel::Elementwise {
        spec: EltSpec::ScaleShift {
            channels: x.c,
            hw: x.h * x.w,
            relu: false,
        },
        consts: vec![to_f32(&affine.scale), to_f32(&affine.shift)],
    })
}

/// Every input copied at its offset; [`super::memory::place_concat_inputs`] removes the
/// inputs written in place.
fn concat(inputs: impl Iterator<Item = Shape>) -> Kernel {
    let mut offset = 0;
    let at = inputs
        .map(|s| {
            let at = offset;
            offset += s.len();
            at
        })
        .collect();
    Kernel::Copy { at }
}
