//! `fuse-epilogue`: a conv/gemm/fc absorbs the `add` and `relu` that follow it, applying
//! them as it stores its result ([`crate::ir::Epilogue`]).
//!
//! - `add(x, shortcut)` with exactly two inputs, where `x` is a conv/gemm/fc with an
//!   empty epilogue that nothing else reads, becomes `x` with `residual`, reading
//!   `shortcut` in slot 1. If both inputs qualify, slot 0 is fused.
//! - `relu(x)`, where `x` is a conv/gemm/fc without relu or clip (possibly with a
//!   residual) that nothing else reads, becomes `x` with `relu`.
//! - `clip(x)` (ReLU6) likewise becomes `x` with `clip`, after any fused relu.
//!
//! So ResNet's `conv -> add(shortcut) -> relu` (after `fold-batchnorm`, also
//! `conv -> bn -> add -> relu`) is one conv. The fused node keeps the producer's name;
//! the add's or relu's readers (and graph outputs) read it instead.
use super::{bypass, Changed, Pass, PassInfo};
use crate::error::Result;
use crate::ir::{Graph, NodeId, Op};
use crate::options::OptLevel;

/// `fuse-epilogue`, from `-O2` on.
pub const PASS: PassInfo = PassInfo {
    name: "fuse-epilogue",
    level: OptLevel::O2,
    description:
        "fuses add(shortcut), relu and clip into the conv/gemm/fc they read, as its epilogue",
    make: || Box::new(FuseEpilogue),
};

pub struct FuseEpilogue;

impl Pass for FuseEpilogue {
    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::No;
        // Topological order sees an add before the relu that reads it, so one sweep
        // fuses `conv -> add -> relu` completely.
        for id in g.topo_order()? {
            match g.node(id).op {
                Op::Add => {
                    if let Some((producer, shortcut)) = residual_candidate(g, id) {
                        let e = g.node_mut(producer).op.epilogue_mut().expect("a producer");
                        e.residual = true;
                        g.dag.add_edge(shortcut, producer, 1);
                        bypass(g, id, producer);
                        changed = Changed::Yes;
                    }
                }
                Op::Relu | Op::Clip(_) => {
                    let &[producer] = g.inputs(id).as_slice() else {
                        continue;
                    };
                    // Relu before clip is the epilogue's order; nothing fuses after a clip.
                    let fusable = g.use_count(producer) == 1
                        && g.node(producer).op.epilogue().is_some_and(|e| {
                            e.clip.is_none() && !(e.relu && matches!(g.node(id).op, Op::Relu))
                        });
                    if fusable {
                        let activation = g.node(id).op.clone();
                        let e = g.node_mut(producer).op.epilogue_mut().expect("a producer");
                        match activation {
                            Op::Clip(c) => e.clip = Some(c),
                            _ => e.relu = true,
                        }
                        bypass(g, id, producer);
                        changed = Changed::Yes;
                    }
                }
                _ => {}
            }
        }
        Ok(changed)
    }
}

/// For a two-input add: the producer that can absorb it and the other input.
fn residual_candidate(g: &Graph, add: NodeId) -> Option<(NodeId, NodeId)> {
    let inputs = g.inputs(add);
    let &[a, b] = inputs.as_slice() else {
        return None;
    };
    if a == b {
        return None;
    }
    let fusable =
        |x: NodeId| g.use_count(x) == 1 && g.node(x).op.epilogue().is_some_and(|e| e.is_empty());
    if fusable(a) {
        Some((a, b))
    } else if fusable(b) {
        Some((b, a))
    } else {
        None
    }
}
