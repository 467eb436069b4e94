//! The reference interpreter: walks the IR in topological order and computes every op
//! with direct loops that read like the definitions. It is the correctness oracle for
//! the JIT, so it favours being obviously right over being fast.
mod ops;

use crate::error::{Error, Result};
use crate::ir::{Graph, Op, Shape};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Runs the graph on a batch; returns one tensor per graph output, `[N, ...]`.
/// The graph's weights must be bound (see [`crate::weights::bind`]).
pub fn run(g: &Graph, input: Tensor) -> Result<Vec<Tensor>> {
    let x = g.check_input(input)?;
    let n = x.shape()[0];
    // The interpreter keeps every activation of the batch: refuse what cannot fit.
    crate::memory::check(
        &crate::memory::estimate(g, n, crate::memory::Engine::Interp),
        None,
    )?;
    let mut values: HashMap<_, Tensor> = HashMap::new();
    values.insert(g.input, x);
    for id in g.topo_order()? {
        if id == g.input {
            continue;
        }
        let node = g.node(id);
        let inputs: Vec<&Tensor> = g.inputs(id).iter().map(|i| &values[i]).collect();
        let param = |suffix: &str| {
            node.param(suffix).ok_or_else(|| {
                Error::Weights(format!("{}: parameter `{suffix}` is not bound", node.name))
            })
        };
        let bias = |has: bool| {
            if has {
                param("bias").map(Some)
            } else {
                Ok(None)
            }
        };
        let out_dims = node.shape.dims(n);
        // Shape inference checked every node's input count; a graph built by hand
        // without it gets an error here rather than a panic.
        let (min, _) = node.op.arity();
        if inputs.len() < min.max(1) {
            return Err(Error::Graph(format!(
                "{}: {} has {} input(s); run shape inference (Graph::infer_shapes) first",
                node.name,
                node.op.kind(),
                inputs.len()
            )));
        }
        let x = inputs[0];
        let mut y = match &node.op {
            Op::Input => unreachable!("the input node is skipped"),
            Op::Conv(c) => ops::conv(x, param("weight")?, bias(c.bias)?, c, &node.shape),
            Op::Gemm(gm) => {
                ops::gemm_1x1(x, param("weight")?, bias(gm.bias)?, gm.stride, &node.shape)
            }
            Op::Fc(f) => ops::fc(x, param("weight")?, bias(f.bias)?),
            Op::Relu => ops::relu(x.clone()),
            Op::MaxPool(p) => ops::pool(x, p, ops::PoolKind::Max, &node.shape),
            Op::AvgPool(p) => ops::pool(x, p, ops::PoolKind::Avg, &node.shape),
            Op::GlobalAvgPool => ops::global_avgpool(x),
            Op::Flatten | Op::Dropout => x.clone(),
            Op::Softmax => ops::softmax(x),
            Op::Add => ops::add(&inputs),
            Op::Concat => ops::concat(&inputs),
            Op::Pad(p) => ops::pad(x, p, &node.shape),
            Op::BatchNorm { eps } => ops::batchnorm(
                x,
                param("weight")?,
                param("bias")?,
                param("running_mean")?,
                param("running_var")?,
                *eps,
            ),
            Op::Clip(c) => ops::clip(x.clone(), c),
            Op::Lrn(l) => ops::lrn(x, l),
            Op::ChannelShuffle { groups } => ops::channel_shuffle(x, *groups),
            Op::ScaleShift => ops::scale_shift(x, param("weight")?, param("bias")?),
        };
        if let Some(e) = node.op.epilogue() {
            if e.residual {
                y = ops::add(&[&y, inputs[1]]);
            }
            if e.relu {
                y = ops::relu(y);
            }
            if let Some(c) = &e.clip {
                y = ops::clip(y, c);
            }
        }
        values.insert(id, y.reshaped(out_dims)?);
    }
    Ok(g.outputs.iter().map(|o| values[o].clone()).collect())
}

/// The shape of one batch item of a `[N, ...]` tensor, as the kernels see it.
pub(crate) fn item_shape(t: &Tensor) -> Shape {
    match t.shape() {
        [_, c, h, w] => Shape::chw(*c, *h, *w),
        [_, f] => Shape::flat(*f),
        other => panic!("activation tensors are [N, C, H, W] or [N, F], got {other:?}"),
    }
}
