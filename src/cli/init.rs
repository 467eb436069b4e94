//! `cnnc init`: write the weights a graph's seed gives to a `.safetensors` file.
use cnnc::io::output::Output;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InitArgs {
    /// The graph (YAML).
    pub graph: PathBuf,
    /// Where to write the weights.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn init(a: &InitArgs) -> cnnc::Result<()> {
    let mut g = cnnc::format::load(&a.graph)?;
    let mut out = Output::create(&a.output, &[("the graph", &a.graph)])?;
    cnnc::weights::init_from_seed(&mut g);
    out.write(&cnnc::weights::write_safetensors(
        cnnc::weights::named_params(&g),
    )?)?;
    out.commit()?;
    println!(
        "wrote the weights of seed {} to {}",
        g.seed,
        a.output.display()
    );
    Ok(())
}
