//! `cnnc run`: run a network on an input and print the top classes.
use super::engine::{EngineArgs, GraphArgs, Runner};
use cnnc::io::output::Output;
use cnnc::{Result, Tensor};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// A .npy array ([C,H,W] or [N,C,H,W]), a .png/.jpg image, or a folder of images.
    /// Without it, a random input drawn from the graph's seed.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Write the (first) output tensor here as .npy.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Batch size (a single input is repeated to fill it).
    #[arg(long, value_parser = super::positive)]
    pub batch: Option<usize>,
    /// How many classes to print per batch item.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Class names, one per line.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Print the time, GFLOP/s and share of the total of each layer (JIT engine): after a
    /// warm-up run, the median of 5 timed runs.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub passes: super::passes::PassArgs,
}

/// Images per kernel call in `cnnc run`.
const RUN_CHUNK: usize = 16;

pub fn run(a: &RunArgs) -> Result<()> {
    let mut g = cnnc::format::load(&a.graph.graph)?;
    // The output is checked (writable, not one of the inputs) before the network runs.
    let output = a
        .output
        .as_deref()
        .map(|path| {
            let weights = a.graph.weights.clone().or_else(|| g.weights_path.clone());
            let mut inputs = vec![("the graph", a.graph.graph.as_path())];
            inputs.extend(weights.as_deref().map(|w| ("the weights file", w)));
            inputs.extend(a.input.as_deref().map(|i| ("the input", i)));
            inputs.extend(a.labels.as_deref().map(|l| ("the labels file", l)));
            Output::create(path, &inputs)
        })
        .transpose()?;
    let labels = a.labels.as_deref().map(read_labels).transpose()?;
    // Refused before reading anything large: the batch given, or one input (a folder
    // of images is checked again once it is listed, an array once it is read).
    let images = a
        .input
        .as_deref()
        .is_some_and(|p| p.is_dir() || cnnc::io::image::is_image(p));
    let decoding = if images {
        cnnc::memory::image_need(&g)
    } else {
        0
    };
    let hint = a.batch.unwrap_or(1);
    a.engine
        .check_memory(&g, hint, hint.min(RUN_CHUNK), decoding)?;
    super::engine::bind(&mut g, &a.graph)?;
    let mut nonfinite: Vec<String> = nonfinite_weights(&g).into_iter().collect();
    cnnc::passes::optimize(&mut g, &a.passes.options())?;
    let batch = super::engine::load_input(a.input.as_deref(), &g, a.batch)?;
    // Kernels see chunks of at most RUN_CHUNK images: a folder of thousands of images
    // needs an arena for one chunk, not for all of them.
    let n = batch.tensor.shape()[0];
    nonfinite.extend(nonfinite_in("the input", &batch.tensor, &batch.items));
    let chunk = n.min(RUN_CHUNK);
    a.engine.check_memory(&g, n, chunk, 0)?;
    let opts = a.engine.options(a.passes.options(), chunk);
    let runner = Runner::new(g, a.engine.engine, &opts)?;
    let start = std::time::Instant::now();
    let (outputs, layers) = if a.profile {
        let (y, layers) = profile(&runner, &batch.tensor)?;
        (y, Some(layers))
    } else {
        (runner.run(batch.tensor)?, None)
    };
    let elapsed = start.elapsed();
    let g = runner.graph();
    for (&o, y) in g.outputs.iter().zip(&outputs) {
        let what = format!("output `{}`", g.node(o).name);
        nonfinite.extend(nonfinite_in(&what, y, &batch.items));
    }
    if !nonfinite.is_empty() {
        eprintln!("warning: NaN or Inf in {}", nonfinite.join("; "));
    }
    let y = &outputs[0];
    println!(
        "{}: output `{}` of shape {}",
        g.name,
        g.node(g.outputs[0]).name,
        cnnc::tensor::fmt_shape(y.shape())
    );
    print_top(y, &batch.items, a.top, labels.as_deref());
    println!(
        "time: {:.3} ms ({} engine)",
        elapsed.as_secs_f64() * 1e3,
        a.engine.engine.name()
    );
    if let Some(layers) = layers {
        print!("{}", cnnc::runtime::profile::table(&layers));
    }
    if let Some(mut out) = output {
        out.write(&cnnc::io::npy::to_bytes(y)?)?;
        out.commit()?;
    }
    Ok(())
}

/// Where `t` holds NaN or Inf: how many values, and the first batch item.
fn nonfinite_in(what: &str, t: &Tensor, items: &[String]) -> Option<String> {
    let count = t.data().iter().filter(|v| !v.is_finite()).count();
    let first = t.data().iter().position(|v| !v.is_finite())?;
    let per_item = t.len() / t.shape()[0].max(1);
    let item = items
        .get(first / per_item.max(1))
        .map_or(String::new(), |i| format!(", first in {i}"));
    Some(format!("{what} ({count} values{item})"))
}

/// The first layer (in file order) whose weights hold NaN or Inf.
fn nonfinite_weights(g: &cnnc::Graph) -> Option<String> {
    for id in g.topo_order().ok()? {
        let node = g.node(id);
        for (suffix, t) in &node.params {
            let count = t.data().iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                return Some(format!(
                    "the weights of layer `{}` ({count} values of `{}.{suffix}`)",
                    node.name, node.name
                ));
            }
        }
    }
    None
}

/// `--profile`: the JIT's per-layer times (see [`cnnc::runtime::profile::median`]).
fn profile(runner: &Runner, x: &Tensor) -> Result<(Vec<Tensor>, Vec<cnnc::runtime::LayerTime>)> {
    let Runner::Jit(_, model) = runner else {
        return Err(cnnc::Error::Unsupported(
            "--profile times the JIT's kernels; use it with --engine jit".into(),
        ));
    };
    cnnc::runtime::profile::median(model, x, 5)
}

/// The `k` largest scores of each batch item as `(class, score)`, best first.
pub fn top_k(y: &Tensor, k: usize) -> Vec<Vec<(usize, f32)>> {
    let n = y.shape()[0];
    let per = y.len() / n.max(1);
    y.data()
        .chunks(per.max(1))
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect()
}

pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| cnnc::Error::io(path, e))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

pub fn print_top(y: &Tensor, items: &[String], k: usize, labels: Option<&[String]>) {
    for (item, top) in items.iter().zip(top_k(y, k)) {
        println!("{item}:");
        for (rank, (class, score)) in top.iter().enumerate() {
            let name = labels.and_then(|l| l.get(*class)).map_or_else(
                || format!("class {class}"),
                |l| format!("{l} (class {class})"),
            );
            println!("  {}. {name:<28} {score:.4}", rank + 1);
        }
    }
}
