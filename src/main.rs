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
        #[command(flatten)]
        passes: cli::passes::PassArgs,
    },
    /// Run the pass pipeline and print the IR (or Graphviz DOT).
    Compile(cli::compile::CompileArgs),
    /// Run a network on an input and print the top classes.
    Run(RunArgs),
    /// Write the weights the graph's seed gives to a .safetensors file.
    Init {
        graph: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The graph (YAML).
    graph: PathBuf,
    /// A .npy array ([C,H,W] or [N,C,H,W]), a .png/.jpg image, or a folder of images.
    /// Without it, a random input drawn from the graph's seed.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Write the output tensor here as .npy.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Weights (.safetensors); overrides the graph's `weights:`.
    #[arg(short, long)]
    weights: Option<PathBuf>,
    /// Batch size (a single input is repeated to fill it).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, value_enum, default_value_t = Engine::Interp)]
    engine: Engine,
    /// How many classes to print per batch item.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Class names, one per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[command(flatten)]
    passes: cli::passes::PassArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Engine {
    /// The reference interpreter.
    Interp,
    /// The Cranelift JIT.
    Jit,
}

fn run_network(a: RunArgs) -> cnnc::Result<()> {
    let mut g = cnnc::format::load(&a.graph)?;
    for w in cnnc::weights::bind(&mut g, a.weights.as_deref())? {
        eprintln!("warning: {w}");
    }
    cnnc::passes::optimize(&mut g, &a.passes.options())?;
    if a.batch == Some(0) {
        return Err(cnnc::Error::Input("--batch must be at least 1".into()));
    }
    let labels = a.labels.as_deref().map(cli::run::read_labels).transpose()?;
    let batch = cnnc::io::load_input(a.input.as_deref(), &g, a.batch)?;
    let start = std::time::Instant::now();
    let outputs = match a.engine {
        Engine::Interp => cnnc::interp::run(&g, batch.tensor)?,
        Engine::Jit => {
            return Err(cnnc::Error::Unsupported(
                "the JIT engine is not available yet; use --engine interp".into(),
            ))
        }
    };
    let elapsed = start.elapsed();
    let y = &outputs[0];
    let out_name = &g.node(g.outputs[0]).name;
    println!("{}: output `{out_name}` of shape {:?}", g.name, y.shape());
    cli::run::print_top(y, &batch.items, a.top, labels.as_deref());
    println!(
        "time: {:.3} ms ({} engine)",
        elapsed.as_secs_f64() * 1e3,
        match a.engine {
            Engine::Interp => "interp",
            Engine::Jit => "jit",
        }
    );
    if let Some(path) = &a.output {
        cnnc::io::npy::write(path, y)?;
    }
    Ok(())
}

fn run(cli: Cli) -> cnnc::Result<()> {
    match cli.command {
        Command::Info {
            graph,
            json,
            passes,
        } => {
            let mut g = cnnc::format::load(&graph)?;
            // info describes the graph as written (PyTorch's parameter count) unless given -O.
            cnnc::passes::optimize(&mut g, &passes.options_or(cnnc::OptLevel::O0))?;
            let text = if json {
                cli::info::json(&g)?
            } else {
                cli::info::table(&g)?
            };
            print!("{text}");
        }
        Command::Run(args) => run_network(args)?,
        Command::Compile(args) => print!("{}", cli::compile::compile(&args)?),
        Command::Init { graph, output } => {
            let mut g = cnnc::format::load(&graph)?;
            cnnc::weights::init_from_seed(&mut g);
            cnnc::weights::save_file(&g, &output)?;
            println!(
                "wrote the weights of seed {} to {}",
                g.seed,
                output.display()
            );
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
