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
    /// JIT: the widest vector instructions the kernels may use (`--isa`). Default: the
    /// environment variable `CNNC_ISA` if set (tests force a level with it), else the best
    /// level the host has. A level the host lacks is refused when compiling.
    pub isa: Isa,
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
            isa: Isa::from_env()
                .ok()
                .flatten()
                .unwrap_or_else(Isa::host_best),
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

/// Vector instruction set level of the generated code. `Sse`: only Cranelift's 128-bit
/// kernels (the portable path). `Avx2` / `Avx512`: GEMM micro-kernels generated with
/// 256-bit (AVX2 + FMA) / 512-bit (AVX-512F, DQ, VL, BW) instructions (`crate::jit::x86`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Sse,
    Avx2,
    Avx512,
}

/// The environment variable that overrides the default [`Isa`] (`sse`, `avx2`, `avx512`).
pub const ISA_ENV: &str = "CNNC_ISA";

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Sse, Isa::Avx2, Isa::Avx512];

    /// Whether this CPU can run code of this level.
    pub fn host_has(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Sse => true,
                Isa::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
                // The generated code is AVX-512F plus what every AVX-512 core since
                // Skylake-SP and Zen 4 has: DQ (`vxorps`/`vorps` on zmm), VL (EVEX-encoded
                // ymm operations and ymm16-31) and BW. Knights Landing/Mill (F without DQ,
                // VL and BW) run the avx2 level.
                Isa::Avx512 => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512dq")
                        && std::is_x86_feature_detected!("avx512vl")
                        && std::is_x86_feature_detected!("avx512bw")
                        && Isa::Avx2.host_has()
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Sse
        }
    }

    /// `CNNC_ISA` when set to a valid level, else the widest level this CPU has.
    pub fn default_level() -> Isa {
        Isa::from_env()
            .ok()
            .flatten()
            .unwrap_or_else(Isa::host_best)
    }

    /// The widest level this CPU has.
    pub fn host_best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.host_has())
            .unwrap_or(&Isa::Sse)
    }

    /// The levels this CPU has, narrowest first.
    pub fn host_levels() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.host_has()).collect()
    }

    /// `CNNC_ISA`, parsed: `Ok(None)` when unset or empty.
    pub fn from_env() -> Result<Option<Isa>> {
        match std::env::var(ISA_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| Error::Options(format!("{ISA_ENV}: {e}"))),
            _ => Ok(None),
        }
    }

    /// `Err` with a readable message when the host cannot run this level.
    pub fn check_host(self) -> Result<()> {
        if self.host_has() {
            Ok(())
        } else {
            let has: Vec<String> = Isa::host_levels().iter().map(|i| i.to_string()).collect();
            Err(Error::Options(format!(
                "this CPU has no {self} (it has: {}); choose one of those with --isa or {ISA_ENV}",
                has.join(", ")
            )))
        }
    }

    /// Bits of the widest vector register the level uses.
    pub fn vector_bits(self) -> usize {
        match self {
            Isa::Sse => 128,
            Isa::Avx2 => 256,
            Isa::Avx512 => 512,
        }
    }
}

impl FromStr for Isa {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sse" | "sse4" | "f32x4" => Ok(Isa::Sse),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Ok(Isa::Avx512),
            _ => Err(Error::Options(format!(
                "unknown ISA level `{s}`; the levels are sse, avx2 and avx512"
            ))),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Isa::Sse => "sse",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        })
    }
}
