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
    let new_params = match (bound, stats.as_slice()) {
        (false, [None, None, None, None]) => None,
        (true, [Some(gamma), Some(beta), Some(mean), Some(var)]) => {
            let affine = BatchNormStats {
                gamma: gamma.data(),
                beta: beta.data(),
                mean: mean.data(),
                var: var.data(),
                eps,
            }
            .scale_shift(&bn_node.name, channels)?;
            let layer_node = g.node(layer);
            let name = &layer_node.name;
            let w = layer_node.param("weight").expect("bound");
            let old_bias = layer_node.param("bias");
            if !w.len().is_multiple_of(channels) || old_bias.is_some_and(|b| b.len() != channels) {
                return Err(Error::Weights(format!(
                    "{name}: its weight of shape {} does not have {channels} output channels",
                    crate::tensor::fmt_shape(w.shape())
                )));
            }
            let per_channel = w.len() / channels;
            let mut w2 = w.data().to_vec();
            let mut b2 = vec![0f32; channels];
            for k in 0..channels {
                let s = affine.scale[k];
                for x in &mut w2[k * per_channel..(k + 1) * per_channel] {
                    *x = (*x as f64 * s) as f32;
                }
                let b = old_bias.map_or(0.0, |b| b.data()[k] as f64);
                b2[k] = (b * s + affine.shift[k]) as f32;
            }
            Some((
                Tensor::new(w.shape().to_vec(), w2)?,
                Tensor::new(vec![channels], b2)?,
            ))
        }
        _ => {
            return Err(Error::Weights(format!(
                "cannot fold {} into {}: the weights of one are bound and the other's are not; bind the weights before running the passes",
                bn_node.name,
                g.node(layer).name
            )))
        }
    };
    let node = g.node_mut(layer);
    match &mut node.op {
        Op::Conv(c) => c.bias = true,
        Op::Gemm(c) => c.bias = true,
        Op::Fc(c) => c.bias = true,
        _ => unreachable!("checked by foldable_into"),
    }
    if let Some((w, b)) = new_params {
        node.params.insert("weight".into(), w);
        node.params.insert("bias".into(), b);
    }
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
