//! `cnnc info`: one row per layer with its shape arithmetic, parameters and MACs.
use cnnc::ir::info::{json, table};
use cnnc::Result;
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
