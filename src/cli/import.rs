//! `cnnc import`: an ONNX model to a YAML graph and its `.safetensors` weights.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// The YAML graph to write; the weights go to the same path with .safetensors.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn import(a: &ImportArgs) -> cnnc::Result<()> {
    let g = cnnc::onnx::import_file(&a.model, &a.output)?;
    let weights = g.weights_path.as_deref().unwrap_or(&a.output);
    println!(
        "imported {} layers from {}: wrote {} and {}",
        g.node_count() - 1,
        a.model.display(),
        a.output.display(),
        weights.display()
    );
    Ok(())
}
