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
    /// Refuse to start a run estimated to need more memory than this (e.g. 512M, 4G)
    /// [default: what the machine has available, MemAvailable or ulimit -v].
    #[arg(long, value_name = "SIZE", value_parser = cnnc::memory::parse_bytes)]
    pub max_memory: Option<u64>,
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

    /// Refuses, before any work, a run of `batch` images (`chunk` per JIT call) whose
    /// estimated memory, plus `extra` bytes, exceeds `--max-memory` or what is available.
    pub fn check_memory(&self, g: &Graph, batch: usize, chunk: usize, extra: u64) -> Result<()> {
        let engine = match self.engine {
            EngineKind::Interp => cnnc::memory::Engine::Interp,
            EngineKind::Jit => cnnc::memory::Engine::Jit { chunk },
        };
        let mut need = cnnc::memory::estimate(g, batch, engine);
        if extra > 0 {
            need.parts.push(("image decoding".into(), extra));
        }
        cnnc::memory::check(&need, self.max_memory)
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

/// Binds the graph's weights (`--weights`, else the graph's own), printing weight
/// warnings to stderr.
pub fn bind(g: &mut Graph, args: &GraphArgs) -> Result<()> {
    for w in cnnc::weights::bind(g, args.weights.as_deref())? {
        eprintln!("warning: {w}");
    }
    Ok(())
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
