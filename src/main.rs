//! The `cnnc` command line: parses the arguments and dispatches to the subcommand's
//! module under `cli/`, which does the work.
mod cli;

use clap::{Parser, Subcommand};
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
    Info(cli::info::InfoArgs),
    /// Run the pass pipeline and print the IR (or Graphviz DOT).
    Compile(cli::compile::CompileArgs),
    /// Run a network on an input and print the top classes.
    Run(cli::run::RunArgs),
    /// Time a network: compile once, warm up, then run for a while.
    Bench(cli::bench::BenchArgs),
    /// Write the weights the graph's seed gives to a .safetensors file.
    Init(cli::init::InitArgs),
    /// Import an ONNX model: writes a YAML graph and its weights (.safetensors) beside it.
    Import(cli::import::ImportArgs),
    /// Export a graph and its weights as an ONNX model (opset 17).
    Export(cli::export::ExportArgs),
}

fn dispatch(command: Command) -> cnnc::Result<()> {
    match command {
        Command::Info(args) => cli::info::info(&args),
        Command::Compile(args) => cli::compile::compile(&args).map(|out| print!("{out}")),
        Command::Run(args) => cli::run::run(&args),
        Command::Bench(args) => cli::bench::bench(&args),
        Command::Init(args) => cli::init::init(&args),
        Command::Import(args) => cli::import::import(&args),
        Command::Export(args) => cli::export::export(&args),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // `cnnc` alone: the help, as a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{}", cli::one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
