//! `dce`: identity and dead-code elimination.
//!
//! Identities disappear, their readers reading the identity's input instead:
//! - `dropout` (an identity at inference);
//! - `flatten` of an already flat vector;
//! - 1x1 max/avg pooling with stride 1 and no padding;
//! - `relu` of a value that is already relu'd (a `relu`, or a conv/gemm/fc whose
//!   epilogue ends in relu).
//!
//! Then every node that no graph output depends on is removed (never the input node).
use super::{bypass, Changed, Pass, PassInfo};
use crate::error::Result;
use crate::ir::{Graph, NodeId, Op};
use crate::options::OptLevel;
use petgraph::Direction;
use std::collections::HashSet;

/// `dce`, from `-O1` on.
pub const PASS: PassInfo = PassInfo {
    name: "dce",
    level: OptLevel::O1,
    description: "removes identities (dropout, flatten of a vector, 1x1/1 pooling, relu of a relu'd value) and nodes no output depends on",
    make: || Box::new(Dce),
};

pub struct Dce;

impl Pass for Dce {
    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::No;
        for id in g.topo_order()? {
            if id == g.input {
                continue;
            }
            if let Some(src) = identity_input(g, id) {
                bypass(g, id, src);
                changed = Changed::Yes;
            }
        }
        changed |= remove_dead(g);
        Ok(changed)
    }
}

/// The input `id` passes through unchanged, if `id` is an identity.
fn identity_input(g: &Graph, id: NodeId) -> Option<NodeId> {
    let inputs = g.inputs(id);
    let &[src] = inputs.as_slice() else {
        return None;
    };
    let input = g.node(src);
    let identity = match &g.node(id).op {
        Op::Dropout => true,
        Op::Flatten => input.shape.flat,
        Op::MaxPool(p) | Op::AvgPool(p) => p.size.is(1) && p.stride.is(1) && p.pad.is(0),
        Op::Relu => matches!(input.op, Op::Relu) || input.op.epilogue().is_some_and(|e| e.relu),
        _ => false,
    };
    identity.then_some(src)
}

/// Removes the nodes no output depends on; keeps the input node.
fn remove_dead(g: &mut Graph) -> Changed {
    let mut live: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = g.outputs.clone();
    stack.push(g.input);
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.dag.neighbors_directed(n, Direction::Incoming));
        }
    }
    let dead: Vec<NodeId> = g.dag.node_indices().filter(|n| !live.contains(n)).collect();
    for &n in &dead {
        g.dag.remove_node(n);
    }
    (!dead.is_empty()).into()
}
