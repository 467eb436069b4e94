//! Parameter, MAC and memory counts per layer, as `cnnc info` reports them.
use super::{Graph, NodeId, Op};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    /// Learnable parameters (batchnorm's running statistics are buffers, as PyTorch counts them).
    pub params: u64,
    /// Multiply-accumulates for one batch item.
    pub macs: u64,
    /// Bytes of the output activation for one batch item.
    pub activation_bytes: u64,
}

pub fn layer_stats(g: &Graph, id: NodeId) -> LayerStats {
    let node = g.node(id);
    let out = node.shape;
    let input = g.inputs(id).first().map(|&i| g.node(i).shape);
    let cin = input.map_or(0, |s| s.c as u64);
    let out_len = out.len() as u64;
    let (params, macs) = match &node.op {
        Op::Conv(c) => {
            // A filter of a grouped conv reads the C/G channels of its group.
            let per_filter = (c.size.h * c.size.w) as u64 * (cin / c.groups.max(1) as u64);
            let params = c.filters as u64 * (per_filter + c.bias as u64);
            (params, out_len * per_filter)
        }
        Op::Gemm(gm) => (gm.filters as u64 * (cin + gm.bias as u64), out_len * cin),
        Op::Fc(f) => {
            let fin = input.map_or(0, |s| s.len() as u64);
            (f.units as u64 * (fin + f.bias as u64), f.units as u64 * fin)
        }
        Op::BatchNorm { .. } | Op::ScaleShift => (2 * out.c as u64, 0),
        _ => (0, 0),
    };
    LayerStats {
        params,
        macs,
        activation_bytes: 4 * out_len,
    }
}
