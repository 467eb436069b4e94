//! What `run` and `bench` share: loading a graph with its weights, and the engine
//! that runs it.
use cnnc::{Graph, Result, Tensor};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// The reference interpreter.
    Interp,
    /// The Cranelift JIT.
    Jit,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Interp => "interp",
            EngineKind::Jit => "jit",
        }
    }
}

#[derive(clap::Args)]
pub struct EngineArgs {
    #[arg(long, value_enum, default_value_t = EngineKind::Jit)]
    pub engine: EngineKind,
    /// Threads per layer for the JIT [default: the machine's cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Compute 3x3 convolutions directly instead of with Winograd F(4x4, 3x3) (slower, but
    /// their packed weights take a quarter of the memory).
    #[arg(long)]
    pub no_winograd: bool,
}

impl EngineArgs {
    /// `opts` with this engine's settings and `batch` images per kernel call.
    pub fn options(&self, mut opts: cnnc::Options, batch: usize) -> cnnc::Options {
        opts.batch = batch;
        if let Some(t) = self.threads {
            opts.threads = t;
        }
        opts.winograd &= !self.no_winograd;
        opts
    }
}

#[derive(clap::Args)]
pub struct GraphArgs {
    /// The graph (YAML).
    pub graph: PathBuf,
    /// Weights (.safetensors); overrides the graph's `weights:`.
    #[arg(short, long)]
    pub weights: Option<PathBuf>,
}

/// Parses the graph and binds its weights, printing weight warnings to stderr.
pub fn load(args: &GraphArgs) -> Result<Graph> {
    load_with(&args.graph, args.weights.as_deref())
}

pub fn load_with(graph: &Path, weights: Option<&Path>) -> Result<Graph> {
    let mut g = cnnc::format::load(graph)?;
    for w in cnnc::weights::bind(&mut g, weights)? {
        eprintln!("warning: {w}");
    }
    Ok(g)
}

/// The input batch of `run` and `bench` (see [`cnnc::io::load_input`]), with a progress
/// bar on stderr while a folder of more than 32 images loads.
pub fn load_input(path: Option<&Path>, g: &Graph, batch: Option<usize>) -> Result<cnnc::io::Batch> {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let batch = cnnc::io::load_input(path, g, batch, &mut |done, total| {
        if total > 32 {
            bar.get_or_insert_with(|| indicatif::ProgressBar::new(total as u64))
                .set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    batch
}

/// A network ready to run on one engine.
pub enum Runner {
    Interp(Graph),
    Jit(Graph, Box<cnnc::runtime::Model>),
}

impl Runner {
    /// `graph` has been through the passes already; `opts` gives the JIT's batch and threads.
    pub fn new(graph: Graph, engine: EngineKind, opts: &cnnc::Options) -> Result<Self> {
        match engine {
            EngineKind::Interp => Ok(Runner::Interp(graph)),
            EngineKind::Jit => {
                let model = cnnc::runtime::compile(&graph, opts)?;
                Ok(Runner::Jit(graph, Box::new(model)))
            }
        }
    }

    /// The JIT's time packing weights, a part of its compile time.
    pub fn packing_time(&self) -> Option<std::time::Duration> {
        match self {
            Runner::Interp(_) => None,
            Runner::Jit(_, m) => Some(m.packing_time()),
        }
    }

    pub fn graph(&self) -> &Graph {
        match self {
            Runner::Interp(g) | Runner::Jit(g, _) => g,
        }
    }

    pub fn run(&self, x: Tensor) -> Result<Vec<Tensor>> {
        match self {
            Runner::Interp(g) => cnnc::interp::run(g, x),
            Runner::Jit(_, m) => m.run(&x),
        }
    }
}
