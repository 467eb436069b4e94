//! `lower-gemm`: a 1x1 convolution without padding is a matrix product
//! `[K x C] * [C x (H*W)]`; it becomes a [`Gemm`] node. A strided one samples every
//! `stride`-th pixel in place (no copy of the input).
//!
//! The node keeps its name, inputs (including a residual in slot 1), bias and epilogue.
//! Its `weight` keeps the conv's PyTorch layout `[K, C, 1, 1]`, so weights files and
//! `cnnc init` see the same tensors with or without the pass. A 1x1 conv with padding
//! is left alone (its border outputs are bias only, not a plain product), and so is a
//! grouped one (the conv kernel runs it group by group).
use super::{Changed, Pass, PassInfo};
use crate::error::Result;
use crate::ir::{Gemm, Graph, Op};
use crate::options::OptLevel;

/// `lower-gemm`, from `-O2` on.
pub const PASS: PassInfo = PassInfo {
    name: "lower-gemm",
    level: OptLevel::O2,
    description: "lowers a 1x1 convolution with pad 0 (any stride) to a gemm node",
    make: || Box::new(LowerGemm),
};

pub struct LowerGemm;

impl Pass for LowerGemm {
    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::No;
        let ids: Vec<_> = g.dag.node_indices().collect();
        for id in ids {
            let node = g.node_mut(id);
            let Op::Conv(c) = &node.op else { continue };
            if !(c.size.is(1) && c.pad.is(0) && c.groups == 1) {
                continue;
            }
            node.op = Op::Gemm(Gemm {
                filters: c.filters,
                stride: c.stride,
                bias: c.bias,
                epilogue: c.epilogue,
            });
            changed = Changed::Yes;
        }
        Ok(changed)
    }
}
