//! The optimisation flags every compiling subcommand shares (`#[command(flatten)]`).
use cnnc::{Isa, OptLevel, Options};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct PassArgs {
    /// Optimisation level: -O0 runs no pass (the graph as written), -O1 dce and
    /// fold-batchnorm, -O2 the whole pipeline [default: 2; `info`: 0].
    #[arg(short = 'O', value_name = "LEVEL")]
    pub opt_level: Option<OptLevel>,
    /// Run exactly these passes, in this order, instead of the level's pipeline
    /// (dce, fold-batchnorm, fuse-epilogue, lower-gemm).
    #[arg(long, value_name = "PASS,...", value_delimiter = ',')]
    pub passes: Option<Vec<String>>,
    /// Drop a pass from the pipeline (repeatable).
    #[arg(long = "disable-pass", value_name = "PASS")]
    pub disable_pass: Vec<String>,
    /// Vector instructions of the JIT kernels: sse (Cranelift's 128-bit code only), avx2,
    /// avx512 [default: $CNNC_ISA, else the best this CPU has]. A level the CPU lacks is an
    /// error.
    #[arg(long, value_name = "LEVEL")]
    pub isa: Option<Isa>,
}

impl PassArgs {
    /// The options, at `-O2` unless the user gave a level.
    pub fn options(&self) -> Options {
        self.options_or(OptLevel::O2)
    }

    /// The options, at `default` unless the user gave a level.
    pub fn options_or(&self, default: OptLevel) -> Options {
        Options {
            opt_level: self.opt_level.unwrap_or(default),
            passes: self.passes.clone(),
            disabled: self.disable_pass.clone(),
            isa: self.isa.unwrap_or_else(Isa::default_level),
            ..Options::default()
        }
    }
}
