//! `fold-batchnorm`: a batchnorm right after a conv, gemm or fc folds into that layer.
//!
//! With `s = gamma / sqrt(var + eps)` per output channel `k`:
//! `w'[k] = w[k] * s[k]` and `b'[k] = (b[k] - mean[k]) * s[k] + beta[k]` (`b = 0` for a
//! layer without bias, which gains one). The arithmetic is done here, once, in f64,
//! so the folded weights cost nothing per run.
//!
//! The batchnorm folds only when its input is a conv/gemm/fc with an empty epilogue
//! (a fused relu or residual sits between the product and the batchnorm) that nothing
//! else reads (no other node, not a graph output). The layer keeps its name; the
//! batchnorm's readers read the layer. Without bound weights only the structure changes.
use super::{bypass, Changed, Pass, PassInfo};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Op};
use crate::options::OptLevel;
use crate::tensor::Tensor;

/// `fold-batchnorm`, from `-O1` on.
pub const PASS: PassInfo = PassInfo {
    name: "fold-batchnorm",
    level: OptLevel::O1,
    description: "folds a batchnorm into the conv/gemm/fc before it (weights and bias, computed at compile time)",
    make: || Box::new(FoldBatchNorm),
};

pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::No;
        for bn in g.topo_order()? {
            let Some(layer) = foldable_into(g, bn) else {
                continue;
            };
            fold(g, layer, bn)?;
            bypass(g, bn, layer);
            changed = Changed::Yes;
        }
        Ok(changed)
    }
}

/// The layer `bn` can fold into, if `bn` is a batchnorm that qualifies.
fn foldable_into(g: &Graph, bn: NodeId) -> Option<NodeId> {
    if !matches!(g.node(bn).op, Op::BatchNorm { .. }) {
        return None;
    }
    let &[layer] = g.inputs(bn).as_slice() else {
        return None;
    };
    let empty_epilogue = g.node(layer).op.epilogue().is_some_and(|e| e.is_empty());
    (empty_epilogue && g.use_count(layer) == 1).then_some(layer)
}

/// Rewrites `layer`'s parameters and op to include `bn`.
fn fold(g: &mut Graph, layer: NodeId, bn: NodeId) -> Result<()> {
    let Op::BatchNorm { eps } = g.node(bn).op else {
        unreachable!("checked by foldable_into")
    };
    let channels = g.node(layer).shape.c;
    let bn_node = g.node(bn);
    let stats: Vec<Option<&Tensor>> = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|s| bn_node.param(s))
        .collect();
    let bound = g.node(layer).param("weight").is_some();
    let affine = match (bound, stats.as_slice()) {
        (false, [None, None, None, None]) => None,
        (true, [Some(gamma), Some(beta), Some(mean), Some(var)]) => Some(
            BatchNormStats {
                gamma: gamma.data(),
                beta: beta.data(),
                mean: mean.data(),
                var: var.data(),
                eps,
            }
            .scale_shift(&bn_node.name, channels)?,
        ),
        _ => {
            return Err(Error::Weights(format!(
                "cannot fold {} into {}: the weights of one are bound and the other's are not; bind the weights before running the passes",
                bn_node.name,
                g.node(layer).name
            )))
        }
    };
    let node = g.node_mut(layer);
    if let Some(affine) = affine {
        scale_params(node, &affine)?;
    }
    match &mut node.op {
        Op::Conv(c) => c.bias = true,
        Op::Gemm(c) => c.bias = true,
        Op::Fc(c) => c.bias = true,
        _ => unreachable!("checked by foldable_into"),
    }
    Ok(())
}

/// `w[k] *= scale[k]` in place (a ResNet-50 has 25 M weights: a copy would cost more
/// than the arithmetic) and the bias `b[k] * scale[k] + shift[k]` (`b = 0` when the
/// layer has none).
pub(super) fn scale_params(node: &mut crate::ir::Node, affine: &ScaleShift) -> Result<()> {
    let channels = affine.scale.len();
    let bias_len = node.param("bias").map(Tensor::len);
    let w = node.params.get_mut("weight").expect("bound");
    if !w.len().is_multiple_of(channels) || bias_len.is_some_and(|n| n != channels) {
        return Err(Error::Weights(format!(
            "{}: its weight of shape {} does not have {channels} output channels",
            node.name,
            crate::tensor::fmt_shape(w.shape())
        )));
    }
    let per_channel = w.len() / channels;
    for (filter, &s) in w
        .data_mut()
        .chunks_exact_mut(per_channel)
        .zip(&affine.scale)
    {
        for x in filter {
            *x = (*x as f64 * s) as f32;
        }
    }
    let old_bias = node.params.remove("bias");
    let b: Vec<f32> = (0..channels)
        .map(|k| {
            let b = old_bias.as_ref().map_or(0.0, |b| b.data()[k] as f64);
            (b * affine.scale[k] + affine.shift[k]) as f32
        })
        .collect();
    node.params
        .insert("bias".into(), Tensor::new(vec![channels], b)?);
    Ok(())
}

/// A batchnorm's parameters (`gamma` = `weight`, `beta` = `bias`).
pub struct BatchNormStats<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f32,
}

/// Inference batchnorm as the per-channel affine map `y = x * scale + shift`.
pub struct ScaleShift {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

impl BatchNormStats<'_> {
    /// `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`, in f64: the one
    /// computation behind both the fold and an unfolded batchnorm's kernel. Checks that
    /// every statistic has `channels` values (`layer` names the batchnorm in the error).
    pub fn scale_shift(&self, layer: &str, channels: usize) -> Result<ScaleShift> {
        for (what, t) in [
            ("weight", self.gamma),
            ("bias", self.beta),
            ("running_mean", self.mean),
            ("running_var", self.var),
        ] {
            if t.len() != channels {
                return Err(Error::Weights(format!(
                    "{layer}.{what} has {} values, but the layer has {channels} channels",
                    t.len()
                )));
            }
        }
        let scale: Vec<f64> = (0..channels)
            .map(|k| self.gamma[k] as f64 / (self.var[k] as f64 + self.eps as f64).sqrt())
            .collect();
        let shift = (0..channels)
            .map(|k| self.beta[k] as f64 - self.mean[k] as f64 * scale[k])
            .collect();
        Ok(ScaleShift { scale, shift })
    }
}
