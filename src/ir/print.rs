//! Text and Graphviz dumps of the IR (`cnnc compile --emit ir|dot`, `--print-after`).
use super::Graph;
use crate::error::Result;
use std::fmt::Write;

/// One line per node in topological order: `name = op attrs (inputs) : shape`, between
/// a header with the graph's name and input and a line naming the outputs:
///
/// ```text
/// graph resnet_bottleneck_block (input 256x56x56)
///   reduce = gemm 1x1/1 k=64 +relu (input) : 64x56x56
///   ...
/// outputs: expand
/// ```
pub fn to_text(g: &Graph) -> Result<String> {
    let mut s = format!("graph {} (input {})\n", g.name, g.input_shape());
    for id in g.topo_order()? {
        if id == g.input {
            continue;
        }
        let node = g.node(id);
        let inputs: Vec<&str> = g
            .inputs(id)
            .iter()
            .map(|&i| g.node(i).name.as_str())
            .collect();
        writeln!(
            s,
            "  {} = {} ({}) : {}",
            node.name,
            node.op,
            inputs.join(", "),
            node.shape
        )
        .expect("writing to a String");
    }
    let outputs: Vec<&str> = g.outputs.iter().map(|&o| g.node(o).name.as_str()).collect();
    writeln!(s, "outputs: {}", outputs.join(", ")).expect("writing to a String");
    Ok(s)
}

/// Graphviz DOT: one box per node with its name, op and output shape; edges from input
/// to reader, labelled with the slot when a node reads several inputs (a fused
/// residual is a dashed edge). Outputs have a double border.
/// `cnnc compile g.yaml --emit dot | dot -Tsvg > g.svg` draws it.
pub fn to_dot(g: &Graph) -> Result<String> {
    let mut s = String::new();
    let w = &mut s;
    writeln!(w, "digraph \"{}\" {{", escape(&g.name)).expect("writing to a String");
    writeln!(w, "  rankdir=TB;").expect("writing to a String");
    writeln!(
        w,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"Helvetica\", fontsize=10];"
    )
    .expect("writing to a String");
    writeln!(w, "  edge [fontname=\"Helvetica\", fontsize=9];").expect("writing to a String");
    let order = g.topo_order()?;
    for &id in &order {
        let node = g.node(id);
        let fill = match node.op.kind() {
            "input" => "lightgrey",
            "conv" | "gemm" | "fc" => "lightblue",
            "batchnorm" => "khaki",
            "relu" | "add" => "lightpink",
            "maxpool" | "avgpool" | "global_avgpool" => "palegreen",
            _ => "white",
        };
        let op = node.op.to_string();
        // The op line is left out when the name says it all (`input`, a `relu` named relu).
        let label = if op == node.name {
            format!("{}\\n{}", escape(&op), node.shape)
        } else {
            format!("{}\\n{}\\n{}", escape(&node.name), escape(&op), node.shape)
        };
        let mut attrs = format!("label=\"{label}\", fillcolor={fill}");
        if g.outputs.contains(&id) {
            attrs.push_str(", peripheries=2");
        }
        writeln!(w, "  n{} [{attrs}];", id.index()).expect("writing to a String");
    }
    for &id in &order {
        let inputs = g.inputs(id);
        let residual = g.node(id).op.epilogue().is_some_and(|e| e.residual);
        for (slot, src) in inputs.iter().enumerate() {
            let attrs = if residual && slot == 1 {
                " [label=\"residual\", style=dashed]".to_string()
            } else if inputs.len() > 1 && !residual {
                format!(" [label=\"{slot}\"]")
            } else {
                String::new()
            };
            writeln!(w, "  n{} -> n{}{attrs};", src.index(), id.index())
                .expect("writing to a String");
        }
    }
    writeln!(w, "}}").expect("writing to a String");
    Ok(s)
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
