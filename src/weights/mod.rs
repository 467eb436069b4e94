//! Parameter tensors: what each layer expects, drawing them from the graph's seed,
//! and reading/writing `.safetensors` files with PyTorch names and layouts.
mod safetensors_io;
mod seeded;

pub use safetensors_io::{load_file, read_safetensors, save_file, write_safetensors};
pub use seeded::{init_from_seed, standard_normal};

use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Op};
use crate::tensor::{fmt_shape, Tensor};
use std::path::Path;

/// The parameter tensors a node owns: `(suffix, shape)` in PyTorch layout.
pub fn expected_params(g: &Graph, id: NodeId) -> Vec<(&'static str, Vec<usize>)> {
    let node = g.node(id);
    let input = g.inputs(id).first().map(|&i| g.node(i).shape);
    let cin = input.map_or(0, |s| s.c);
    let shapes = |weight: Vec<usize>, out: usize| {
        node.op
            .param_names()
            .iter()
            .map(move |&n| {
                (
                    n,
                    if n == "weight" {
                        weight.clone()
                    } else {
                        vec![out]
                    },
                )
            })
            .collect()
    };
    match &node.op {
        Op::Conv(c) => shapes(
            vec![c.filters, cin / c.groups.max(1), c.size.h, c.size.w],
            c.filters,
        ),
        Op::Gemm(gm) => shapes(vec![gm.filters, cin, 1, 1], gm.filters),
        Op::Fc(f) => shapes(vec![f.units, input.map_or(0, |s| s.len())], f.units),
        Op::BatchNorm { .. } | Op::ScaleShift => shapes(vec![node.shape.c], node.shape.c),
        _ => Vec::new(),
    }
}

/// Binds the graph's weights: from `file` if given, else the graph's `weights:` file,
/// else drawn from its seed. Returns warnings (e.g. tensors in the file no layer uses).
pub fn bind(g: &mut Graph, file: Option<&Path>) -> Result<Vec<String>> {
    match (file, g.weights_path.clone()) {
        (Some(path), _) => load_file(g, path),
        (None, Some(path)) => safetensors_io::load_file_as(g, &path, "the graph's `weights:` file")
            .map_err(|e| match e {
                Error::Weights(m) if !m.contains("`weights:`") => {
                    Error::Weights(format!("{m} (the graph's `weights:` file)"))
                }
                other => other,
            }),
        (None, None) => {
            init_from_seed(g);
            Ok(Vec::new())
        }
    }
}

/// Checks a tensor against what the layer expects, naming both shapes.
pub(crate) fn check_shape(name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    // A 1x1 conv's weight may come as [K, C] (from a GEMM exporter) or [K, C, 1, 1].
    if expected == found
        || (expected.len() == 4 && expected[2..] == [1, 1] && found == &expected[..2])
    {
        return Ok(());
    }
    Err(Error::Weights(format!(
        "tensor `{name}` has shape {}, but the layer expects {}",
        fmt_shape(found),
        fmt_shape(expected)
    )))
}

/// Every parameter of the graph, as `(full name, tensor)` in node order.
pub fn named_params(g: &Graph) -> Vec<(String, &Tensor)> {
    let mut out = Vec::new();
    for id in g.topo_order().unwrap_or_default() {
        let node = g.node(id);
        for (suffix, t) in &node.params {
            out.push((format!("{}.{suffix}", node.name), t));
        }
    }
    out
}
