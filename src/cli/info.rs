//! `cnnc info`: one row per layer with its shape arithmetic, parameters and MACs.
use cnnc::ir::stats::{layer_stats, LayerStats};
use cnnc::{Graph, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The graph (YAML).
    pub graph: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub passes: super::passes::PassArgs,
}

pub fn info(a: &InfoArgs) -> Result<()> {
    let mut g = cnnc::format::load(&a.graph)?;
    // info describes the graph as written (PyTorch's parameter count) unless given -O.
    cnnc::passes::optimize(&mut g, &a.passes.options_or(cnnc::OptLevel::O0))?;
    let text = if a.json { json(&g)? } else { table(&g)? };
    print!("{text}");
    Ok(())
}

#[derive(Serialize)]
struct Row {
    name: String,
    op: String,
    output: String,
    output_shape: Vec<usize>,
    inputs: Vec<String>,
    #[serde(flatten)]
    stats: LayerStats,
    arithmetic: Option<String>,
    warning: Option<String>,
}

#[derive(Serialize)]
struct Report {
    name: String,
    input: String,
    layers: Vec<Row>,
    outputs: Vec<String>,
    total_params: u64,
    total_macs: u64,
    total_activation_bytes: u64,
}

fn report(g: &Graph) -> Result<Report> {
    let mut layers = Vec::new();
    for id in g.topo_order()? {
        if id == g.input {
            continue;
        }
        let node = g.node(id);
        let window = node.note.window.as_ref();
        layers.push(Row {
            name: node.name.clone(),
            op: node.op.to_string(),
            output: node.shape.to_string(),
            output_shape: node.shape.dims(1)[1..].to_vec(),
            inputs: g
                .inputs(id)
                .iter()
                .map(|&i| g.node(i).name.clone())
                .collect(),
            stats: layer_stats(g, id),
            arithmetic: window.map(|w| w.arithmetic()),
            warning: window.filter(|w| w.untiled()).map(|_| {
                "the window does not tile the input: the last input rows/columns are never read"
                    .to_string()
            }),
        });
    }
    Ok(Report {
        name: g.name.clone(),
        input: g.input_shape().to_string(),
        total_params: layers.iter().map(|r| r.stats.params).sum(),
        total_macs: layers.iter().map(|r| r.stats.macs).sum(),
        total_activation_bytes: layers.iter().map(|r| r.stats.activation_bytes).sum(),
        outputs: g.outputs.iter().map(|&o| g.node(o).name.clone()).collect(),
        layers,
    })
}

pub fn json(g: &Graph) -> Result<String> {
    Ok(serde_json::to_string_pretty(&report(g)?).expect("report serialises"))
}

/// `12345678` -> `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn table(g: &Graph) -> Result<String> {
    let r = report(g)?;
    let header = ["layer", "op", "output", "params", "MACs", "size"];
    let mut rows: Vec<[String; 6]> = r
        .layers
        .iter()
        .map(|l| {
            let mut size = l.arithmetic.clone().unwrap_or_default();
            if l.warning.is_some() {
                size.push_str("  (warning: last rows/cols never read)");
            }
            [
                l.name.clone(),
                l.op.clone(),
                l.output.clone(),
                thousands(l.stats.params),
                thousands(l.stats.macs),
                size,
            ]
        })
        .collect();
    rows.push([
        "total".into(),
        String::new(),
        String::new(),
        thousands(r.total_params),
        thousands(r.total_macs),
        String::new(),
    ]);
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned; the last column unpadded.
            match i {
                3 | 4 => s.push_str(&(super::pad_left(cell, w) + "  ")),
                5 => s.push_str(cell),
                _ => s.push_str(&(super::pad_right(cell, w) + "  ")),
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = format!("{}: input {}\n", r.name, r.input);
    out += &line(&header.map(String::from));
    let n = rows.len();
    for (i, row) in rows.iter().enumerate() {
        if i == n - 1 {
            out += &"-".repeat(widths.iter().sum::<usize>() + 10);
            out.push('\n');
        }
        out += &line(row);
    }
    out += &format!(
        "activations: {:.2} MB per image; outputs: {}\n",
        r.total_activation_bytes as f64 / 1e6,
        r.outputs.join(", ")
    );
    Ok(out)
}
