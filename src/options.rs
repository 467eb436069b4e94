//! Compiler options shared by the library and every `cnnc` subcommand that compiles a
//! graph (`run`, `compile`, `info`, `bench`). New knobs (e.g. the JIT's `threads`) are
//! added as fields with a default, so `Options { opt_level: OptLevel::O1,
//! ..Options::default() }` keeps compiling.
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How much the middle end optimises; see [`crate::passes::Pipeline::for_level`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OptLevel {
    /// No optimising pass: the graph as written.
    O0,
    /// Weight-only rewrites: `dce`, `fold-batchnorm` (no fusion, no lowering).
    O1,
    /// The whole pipeline: `dce`, `fold-batchnorm`, `fuse-epilogue`, `lower-gemm`.
    #[default]
    O2,
}

impl FromStr for OptLevel {
    type Err = Error;
    /// `0`, `1`, `2`, also written `O2` or `-O2`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim_start_matches('-').trim_start_matches('O') {
            "0" => Ok(OptLevel::O0),
            "1" => Ok(OptLevel::O1),
            "2" => Ok(OptLevel::O2),
            _ => Err(Error::Options(format!(
                "unknown optimisation level `{s}`; the levels are 0, 1 and 2"
            ))),
        }
    }
}

impl fmt::Display for OptLevel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = match self {
            OptLevel::O0 => 0,
            OptLevel::O1 => 1,
            OptLevel::O2 => 2,
        };
        write!(f, "-O{n}")
    }
}

/// What to do to a graph between parsing and execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The pipeline to run when `passes` is `None`. Default `O2`.
    pub opt_level: OptLevel,
    /// Runs exactly these passes, in this order, instead of the level's pipeline
    /// (`--passes a,b,c`).
    pub passes: Option<Vec<String>>,
    /// Passes dropped from the pipeline (`--disable-pass NAME`).
    pub disabled: Vec<String>,
    /// Re-infers and checks every shape and parameter shape after each pass, failing with
    /// the pass's name. On by default: about 0.3 ms per pass on ResNet-18, against ~100 ms
    /// for its pipeline (measured 2026-11-29).
    pub verify: bool,
    /// JIT: images per kernel call. A model runs any batch size, in chunks of this many.
    pub batch: usize,
    /// JIT: threads that share each large layer's work. Default: the machine's cores.
    /// Results are bit-identical for any count.
    pub threads: usize,
    /// JIT: computes 3x3 stride-1 convolutions (with at least 16 channels in and out) with
    /// Winograd F(4x4, 3x3): 2-4x faster there, but their packed weights take 4x the memory
    /// of the filters (`--no-winograd` turns it off). Default: on.
    pub winograd: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            opt_level: OptLevel::default(),
            passes: None,
            disabled: Vec::new(),
            verify: true,
            batch: 1,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            winograd: true,
        }
    }
}

impl Options {
    /// The default options at `level`.
    pub fn level(level: OptLevel) -> Self {
        Options {
            opt_level: level,
            ..Options::default()
        }
    }
}
