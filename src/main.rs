//! The `cnnc` command line. Each subcommand lives in its own module under `cli/`.
mod cli;

use clap::{Parser, Subcommand};
use cli::engine::{EngineArgs, GraphArgs};
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
    /// Time a network: compile once, warm up, then run for a while.
    Bench(BenchArgs),
    /// Write the weights the graph's seed gives to a .safetensors file.
    Init {
        graph: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Import an ONNX model: writes a YAML graph and its weights (.safetensors) beside it.
    Import {
        /// The ONNX model.
        model: PathBuf,
        /// The YAML graph to write; the weights go to the same path with .safetensors.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Export a graph and its weights as an ONNX model (opset 17).
    Export {
        /// The graph (YAML).
        graph: PathBuf,
        /// Weights (.safetensors); overrides the graph's `weights:`. Without either,
        /// the weights drawn from the graph's seed.
        #[arg(short, long)]
        weights: Option<PathBuf>,
        /// The ONNX file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    graph: GraphArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// A .npy array ([C,H,W] or [N,C,H,W]), a .png/.jpg image, or a folder of images.
    /// Without it, a random input drawn from the graph's seed.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Write the (first) output tensor here as .npy.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Batch size (a single input is repeated to fill it).
    #[arg(long, value_parser = positive)]
    batch: Option<usize>,
    /// How many classes to print per batch item.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Class names, one per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Print the time, GFLOP/s and share of the total of each layer (JIT engine): after a
    /// warm-up run, the median of 5 timed runs.
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    passes: cli::passes::PassArgs,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    graph: GraphArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long, default_value_t = 1, value_parser = positive)]
    batch: usize,
    /// Seconds to measure for.
    #[arg(long, default_value_t = 3.0)]
    time: f64,
    /// Stop after this many timed runs.
    #[arg(long)]
    runs: Option<usize>,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    passes: cli::passes::PassArgs,
}

/// Parses a count of at least 1 (clap reports anything else as a usage error, exit code 2).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// Images per kernel call in `cnnc run`.
const RUN_CHUNK: usize = 16;

fn run_network(a: RunArgs) -> cnnc::Result<()> {
    let mut g = cli::engine::load(&a.graph)?;
    cnnc::passes::optimize(&mut g, &a.passes.options())?;
    let labels = a.labels.as_deref().map(cli::run::read_labels).transpose()?;
    let batch = cnnc::io::load_input(a.input.as_deref(), &g, a.batch)?;
    // Kernels see chunks of at most RUN_CHUNK images: a folder of thousands of images
    // needs an arena for one chunk, not for all of them.
    let chunk = batch.tensor.shape()[0].min(RUN_CHUNK);
    let opts = a.engine.options(a.passes.options(), chunk);
    let runner = cli::engine::Runner::new(g, a.engine.engine, &opts)?;
    let start = std::time::Instant::now();
    let (outputs, layers) = if a.profile {
        match &runner {
            cli::engine::Runner::Jit(_, model) => {
                // The first run pays for first-touch page faults in weights and arena.
                model.run(&batch.tensor)?;
                let mut runs = Vec::new();
                for _ in 0..5 {
                    runs.push(model.profile(&batch.tensor)?);
                }
                let mut layers = runs[0].1.clone();
                for (i, layer) in layers.iter_mut().enumerate() {
                    let mut t: Vec<_> = runs.iter().map(|r| r.1[i].time).collect();
                    t.sort();
                    layer.time = cli::bench::percentile(&t, 0.5);
                }
                let y = runs.pop().map(|r| r.0).unwrap_or_default();
                (y, Some(layers))
            }
            cli::engine::Runner::Interp(_) => {
                return Err(cnnc::Error::Unsupported(
                    "--profile times the JIT's kernels; use it with --engine jit".into(),
                ))
            }
        }
    } else {
        (runner.run(batch.tensor)?, None)
    };
    let elapsed = start.elapsed();
    let g = runner.graph();
    let y = &outputs[0];
    println!(
        "{}: output `{}` of shape {:?}",
        g.name,
        g.node(g.outputs[0]).name,
        y.shape()
    );
    cli::run::print_top(y, &batch.items, a.top, labels.as_deref());
    println!(
        "time: {:.3} ms ({} engine)",
        elapsed.as_secs_f64() * 1e3,
        a.engine.engine.name()
    );
    if let Some(layers) = layers {
        print!("{}", cli::run::profile_table(&layers));
    }
    if let Some(path) = &a.output {
        cnnc::io::npy::write(path, y)?;
    }
    Ok(())
}

/// `cnnc import` and `cnnc export`.
fn onnx_command(command: Command) -> cnnc::Result<()> {
    match command {
        Command::Import { model, output } => {
            let g = cnnc::onnx::import_file(&model, &output)?;
            let weights = g.weights_path.as_deref().unwrap_or(&output);
            println!(
                "imported {} layers from {}: wrote {} and {}",
                g.node_count() - 1,
                model.display(),
                output.display(),
                weights.display()
            );
        }
        Command::Export {
            graph,
            weights,
            output,
        } => {
            let mut g = cnnc::format::load(&graph)?;
            if weights.is_none() && g.weights_path.is_none() {
                eprintln!(
                    "note: {} names no weights; exporting the weights drawn from seed {}",
                    graph.display(),
                    g.seed
                );
            }
            for w in cnnc::weights::bind(&mut g, weights.as_deref())? {
                eprintln!("warning: {w}");
            }
            cnnc::onnx::export_file(&g, &output)?;
            println!(
                "exported {} layers of {} to {} (ONNX opset {})",
                g.node_count() - 1,
                g.name,
                output.display(),
                cnnc::onnx::OPSET
            );
        }
        _ => unreachable!("only import and export"),
    }
    Ok(())
}

fn bench(a: BenchArgs) -> cnnc::Result<()> {
    if !(a.time.is_finite() && (0.0..=1e6).contains(&a.time)) {
        return Err(cnnc::Error::Input(format!(
            "--time must be a number of seconds, got {}",
            a.time
        )));
    }
    let mut g = cli::engine::load(&a.graph)?;
    let macs: u64 = g
        .dag
        .node_indices()
        .map(|id| cnnc::ir::stats::layer_stats(&g, id).macs)
        .sum();
    let x = cnnc::io::load_input(None, &g, Some(a.batch))?.tensor;
    let start = std::time::Instant::now();
    // Compile time includes the passes (batchnorm folding is done here, once).
    let opts = a.engine.options(a.passes.options(), a.batch);
    cnnc::passes::optimize(&mut g, &opts)?;
    let passes = start.elapsed();
    let runner = cli::engine::Runner::new(g, a.engine.engine, &opts)?;
    let compile = start.elapsed();
    let budget = cli::bench::Budget {
        time: std::time::Duration::from_secs_f64(a.time),
        max_runs: a.runs,
        warmup: a.warmup,
    };
    let times = match &runner {
        // The model alone: outputs reused (`run_into`), no copy of the input per run. A
        // fresh multi-megabyte output per run costs page faults that are not the model's.
        cli::engine::Runner::Jit(_, model) => {
            let mut outs = model.run(&x)?;
            cli::bench::measure(&budget, || model.run_into(&x, &mut outs))?
        }
        cli::engine::Runner::Interp(g) => {
            cli::bench::measure(&budget, || cnnc::interp::run(g, x.clone()).map(drop))?
        }
    };
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let median = cli::bench::percentile(&times, 0.5);
    let report = cli::bench::BenchReport {
        graph: runner.graph().name.clone(),
        engine: a.engine.engine.name().into(),
        threads: match a.engine.engine {
            cli::engine::EngineKind::Jit => opts.threads,
            cli::engine::EngineKind::Interp => 1,
        },
        batch: a.batch,
        compile_ms: ms(compile),
        passes_ms: ms(passes),
        packing_ms: runner.packing_time().map(ms),
        runs: times.len(),
        median_ms: ms(median),
        p90_ms: ms(cli::bench::percentile(&times, 0.9)),
        p99_ms: ms(cli::bench::percentile(&times, 0.99)),
        min_ms: ms(times[0]),
        images_per_s: a.batch as f64 / median.as_secs_f64(),
        gflops: 2.0 * macs as f64 * a.batch as f64 / median.as_secs_f64() / 1e9,
        peak_memory_mb: cli::bench::peak_memory_mb(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        report.print();
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
        c @ (Command::Import { .. } | Command::Export { .. }) => onnx_command(c)?,
        Command::Compile(args) => print!("{}", cli::compile::compile(&args)?),
        Command::Bench(args) => bench(args)?,
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
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// A clap usage error as one line, like every other user error: its message and the items
/// it lists, without the usage and help hints that follow.
fn one_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
