//! `fold-scale-shift`: a per-channel `scale_shift` (an imported ONNX Mul and Add by
//! per-channel constants) folds into the layer before it when that layer is linear per
//! output channel:
//!
//! - into a conv/gemm/fc with an empty epilogue: `w'[k] = w[k] * s[k]`,
//!   `b'[k] = b[k] * s[k] + t[k]` (`b = 0` for a layer without bias, which gains one);
//! - into a batchnorm: `gamma' = gamma * s`, `beta' = beta * s + t` (Inception v2 and
//!   DenseNet follow every batchnorm with one), which `fold-batchnorm` may then fold
//!   into its conv.
//!
//! Grouped convs fold like any other: the scale is per output channel. The producer must
//! have no other reader (nor be a graph output). A `scale_shift` that folds nowhere stays
//! a layer of its own. The arithmetic is done once, at compile time, in f64.
use super::fold_batchnorm::{scale_params, ScaleShift};
use super::{bypass, Changed, Pass, PassInfo};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Op};
use crate::options::OptLevel;

pub const PASS: PassInfo = PassInfo {
    name: "fold-scale-shift",
    level: OptLevel::O1,
    description: "folds a per-channel scale_shift into the conv/gemm/fc or batchnorm before it",
    make: || Box::new(FoldScaleShift),
};

pub struct FoldScaleShift;

impl Pass for FoldScaleShift {
    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::No;
        for id in g.topo_order()? {
            if !matches!(g.node(id).op, Op::ScaleShift) {
                continue;
            }
            let &[layer] = g.inputs(id).as_slice() else {
                continue;
            };
            let linear = match &g.node(layer).op {
                Op::BatchNorm { .. } => true,
                op => op.epilogue().is_some_and(|e| e.is_empty()),
            };
            if !linear || g.use_count(layer) != 1 {
                continue;
            }
            fold(g, layer, id)?;
            bypass(g, id, layer);
            changed = Changed::Yes;
        }
        Ok(changed)
    }
}

/// Rewrites `layer`'s parameters (if bound) to include the scale and shift of `ss`.
fn fold(g: &mut Graph, layer: NodeId, ss: NodeId) -> Result<()> {
    let (scale, shift) = {
        let n = g.node(ss);
        (n.param("weight").cloned(), n.param("bias").cloned())
    };
    let channels = g.node(layer).shape.c;
    let bound = g.node(layer).param("weight").is_some();
    match (bound, scale, shift) {
        (false, None, None) => {}
        (true, Some(s), Some(t)) => {
            let node = g.node(layer);
            if s.len() != channels || t.len() != channels {
                return Err(Error::Weights(format!(
                    "{}: its scale and shift have {} and {} values, but {} has {channels} channels",
                    g.node(ss).name,
                    s.len(),
                    t.len(),
                    node.name
                )));
            }
            // A batchnorm's weight is gamma, one value per channel: scaled the same way.
            let affine = ScaleShift {
                scale: s.data().iter().map(|&v| v as f64).collect(),
                shift: t.data().iter().map(|&v| v as f64).collect(),
            };
            scale_params(g.node_mut(layer), &affine)?;
        }
        _ => {
            return Err(Error::Weights(format!(
                "cannot fold {} into {}: the weights of one are bound and the other's are not; bind the weights before running the passes",
                g.node(ss).name,
                g.node(layer).name
            )))
        }
    }
    match &mut g.node_mut(layer).op {
        Op::Conv(c) => c.bias = true,
        Op::Gemm(c) => c.bias = true,
        Op::Fc(c) => c.bias = true,
        _ => {}
    }
    Ok(())
}
