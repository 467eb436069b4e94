//! `cnnc export`: a graph and its weights as an ONNX model.
use cnnc::io::output::Output;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The graph (YAML).
    pub graph: PathBuf,
    /// Weights (.safetensors); overrides the graph's `weights:`. Without either,
    /// the weights drawn from the graph's seed.
    #[arg(short, long)]
    pub weights: Option<PathBuf>,
    /// The ONNX file to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn export(a: &ExportArgs) -> cnnc::Result<()> {
    let mut g = cnnc::format::load(&a.graph)?;
    let weights = a.weights.clone().or_else(|| g.weights_path.clone());
    let mut inputs = vec![("the graph", a.graph.as_path())];
    inputs.extend(weights.as_deref().map(|w| ("the weights file", w)));
    let mut out = Output::create(&a.output, &inputs)?;
    if a.weights.is_none() && g.weights_path.is_none() {
        eprintln!(
            "note: {} names no weights; exporting the weights drawn from seed {}",
            a.graph.display(),
            g.seed
        );
    }
    for w in cnnc::weights::bind(&mut g, a.weights.as_deref())? {
        eprintln!("warning: {w}");
    }
    out.write(&cnnc::onnx::export(&g)?)?;
    out.commit()?;
    println!(
        "exported {} layers of {} to {} (ONNX opset {})",
        g.node_count() - 1,
        g.name,
        a.output.display(),
        cnnc::onnx::OPSET
    );
    Ok(())
}
