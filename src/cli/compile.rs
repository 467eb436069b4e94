//! `cnnc compile`: runs the pass pipeline and emits the result (IR text, DOT, the
//! execution plan or the kernels' code), with
//! LLVM-style `--print-after` dumps between passes on stderr.
use super::passes::PassArgs;
use cnnc::ir::print;
use cnnc::passes::{self, Changed, Pipeline};
use cnnc::Result;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Emit {
    /// The IR as text, one node per line.
    #[default]
    Ir,
    /// Graphviz DOT (`| dot -Tsvg > g.svg`).
    Dot,
    /// The Cranelift IR of every generated kernel.
    Clif,
    /// The machine code of every generated kernel, as Cranelift prints it.
    Asm,
    /// The execution plan: each step's kernel, algorithm, shapes and buffers, then the
    /// activation arena's layout and size.
    Plan,
}

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The graph (YAML).
    pub graph: PathBuf,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = Emit::Ir)]
    pub emit: Emit,
    #[command(flatten)]
    pub passes: PassArgs,
    /// Batch items per kernel call the code is generated for (`--emit plan|clif|asm`; fc
    /// layers at batch > 1 are a GEMM with the items as rows).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batch: usize,
    /// Print the IR on stderr after this pass (repeatable).
    #[arg(long = "print-after", value_name = "PASS")]
    pub print_after: Vec<String>,
    /// Print the IR on stderr after every pass.
    #[arg(long = "print-after-all")]
    pub print_after_all: bool,
}

/// The `--print-after` dump of one pass: a header line, then the IR.
pub fn dump_after(pass: &str, changed: Changed, g: &cnnc::Graph) -> String {
    let note = if changed.is_yes() { "" } else { " (no change)" };
    let ir = print::to_text(g).unwrap_or_else(|e| format!("(unprintable: {e})\n"));
    format!("; *** IR Dump After {pass}{note} ***\n{ir}")
}

/// Runs the pipeline on the graph, printing the requested dumps on stderr as the passes
/// run; returns what `--emit` asks for.
pub fn compile(a: &CompileArgs) -> Result<String> {
    for name in &a.print_after {
        passes::check_name(name)?;
    }
    let mut g = cnnc::format::load(&a.graph)?;
    let codegen = matches!(a.emit, Emit::Clif | Emit::Asm | Emit::Plan);
    if codegen {
        // Code generation packs weights (and lowering an unfolded batchnorm reads them);
        // the seed's are as good as any for looking at code.
        cnnc::weights::bind(&mut g, None)?;
    }
    let pipeline = Pipeline::new(&a.passes.options())?;
    pipeline.run_with(&mut g, &mut |pass, changed, g| {
        if a.print_after_all || a.print_after.iter().any(|p| p == pass) {
            eprint!("{}", dump_after(pass, changed, g));
        }
    })?;
    let codegen_opts = cnnc::Options {
        batch: a.batch,
        ..a.passes.options()
    };
    match a.emit {
        Emit::Ir => print::to_text(&g),
        Emit::Dot => print::to_dot(&g),
        Emit::Plan => Ok(cnnc::lower::lower(&g, &codegen_opts)?.to_string()),
        Emit::Clif | Emit::Asm => {
            let listings = cnnc::runtime::listings(&g, &codegen_opts)?;
            let mut out = String::new();
            for l in listings {
                let body = if matches!(a.emit, Emit::Clif) {
                    &l.clif
                } else {
                    &l.asm
                };
                out += &format!(
                    "; layer {} ({}, {} bytes of code)\n{body}\n",
                    l.label, l.symbol, l.code_bytes
                );
            }
            Ok(out)
        }
    }
}
