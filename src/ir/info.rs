//! A graph described layer by layer (`cnnc info`, the Python `Graph.info()`): each
//! layer's output shape with its arithmetic, parameters and MACs, as a table or JSON.
use super::stats::{layer_stats, LayerStats};
use super::Graph;
use crate::error::Result;
use crate::table::{pad_left, pad_right, thousands};
use serde::Serialize;

/// One layer of the report.
#[derive(Serialize)]
pub struct Row {
    pub name: String,
    pub op: String,
    pub output: String,
    pub output_shape: Vec<usize>,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub stats: LayerStats,
    pub arithmetic: Option<String>,
    pub warning: Option<String>,
}

/// The whole graph: its layers in execution order and the totals.
#[derive(Serialize)]
pub struct Report {
    pub name: String,
    pub input: String,
    pub layers: Vec<Row>,
    pub outputs: Vec<String>,
    pub total_params: u64,
    pub total_macs: u64,
    pub total_activation_bytes: u64,
}

/// The report of `g` (shapes inferred), layers in execution order.
pub fn report(g: &Graph) -> Result<Report> {
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

/// [`report`] as pretty-printed JSON.
pub fn json(g: &Graph) -> Result<String> {
    Ok(serde_json::to_string_pretty(&report(g)?).expect("report serialises"))
}

/// [`report`] as the aligned text table `cnnc info` prints.
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
                3 | 4 => s.push_str(&(pad_left(cell, w) + "  ")),
                5 => s.push_str(cell),
                _ => s.push_str(&(pad_right(cell, w) + "  ")),
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
