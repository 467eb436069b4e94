//! The `cnnc` command line.
mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cnnc",
    version,
    about = "A compiler for convolutional neural networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print one row per layer: output shape with its arithmetic, parameters, MACs.
    Info {
        /// The graph (YAML).
        graph: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> cnnc::Result<()> {
    match cli.command {
        Command::Info { graph, json } => {
            let g = cnnc::format::load(&graph)?;
            let text = if json {
                cli::info::json(&g)?
            } else {
                cli::info::table(&g)?
            };
            print!("{text}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
