//! The middle end: graph-to-graph passes and the pipeline that runs them.
//!
//! A [`Pass`] rewrites the IR in place and says whether it changed anything. A
//! [`Pipeline`] is an ordered list of passes built from [`Options`]: the level's list
//! (`-O0`: none; `-O1`: `dce`, `fold-batchnorm`; `-O2`: `dce`, `fold-batchnorm`,
//! `fuse-epilogue`, `lower-gemm`), or the user's `--passes`, minus `--disable-pass`.
//! With [`Options::verify`] every shape is checked against inference after each pass,
//! so a pass that breaks the graph fails at once with its name.
//!
//! Passes that touch weights (`fold-batchnorm`) compute the new tensors when they run,
//! once at compile time: run the pipeline after the weights are bound
//! ([`crate::weights::bind`]). On a graph without weights they rewrite the structure
//! only (enough for `cnnc info` and `cnnc compile --emit`).
//!
//! ```
//! use cnnc::passes::{optimize, Changed, Pipeline};
//! use cnnc::{OptLevel, Options};
//! let yaml = "input: [4, 8, 8]
//! layers:
//!   - {name: conv, conv: {filters: 4, size: 3, pad: 1, bias: false}}
//!   - {name: bn, batchnorm}
//!   - {name: add, add, inputs: [bn, input]}
//!   - relu
//! ";
//! let mut g = cnnc::format::parse_str(yaml, None)?;
//! cnnc::weights::bind(&mut g, None)?; // fold-batchnorm computes the new weights
//! let mut g1 = g.clone();
//! let o1 = Options { opt_level: OptLevel::O1, ..Options::default() };
//! Pipeline::new(&o1)?.run_with(&mut g1, &mut |pass, changed, g| {
//!     println!("after {pass} ({changed:?}):\n{}", cnnc::ir::print::to_text(g).unwrap());
//! })?;
//! assert_eq!(g1.node_count(), 4); // input, conv, add, relu
//! assert_eq!(optimize(&mut g, &Options::default())?, Changed::Yes);
//! let conv = g.node(g.find("conv").unwrap());
//! assert_eq!(conv.op.to_string(), "conv 3x3/1 pad 1 k=4 +residual +relu");
//! assert_eq!(g.node_count(), 2);
//! # Ok::<(), cnnc::Error>(())
//! ```
pub mod dce;
pub mod fold_batchnorm;
pub mod fold_scale_shift;
pub mod fuse_epilogue;
pub mod lower_gemm;

use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId};
use crate::options::{OptLevel, Options};

/// Whether a pass rewrote the graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Changed {
    #[default]
    No,
    Yes,
}

impl Changed {
    pub fn is_yes(self) -> bool {
        self == Changed::Yes
    }
}

impl From<bool> for Changed {
    fn from(b: bool) -> Self {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

impl std::ops::BitOr for Changed {
    type Output = Changed;
    fn bitor(self, rhs: Changed) -> Changed {
        (self.is_yes() || rhs.is_yes()).into()
    }
}

impl std::ops::BitOrAssign for Changed {
    fn bitor_assign(&mut self, rhs: Changed) {
        *self = *self | rhs;
    }
}

/// A graph-to-graph rewrite. Passes keep node names (a fused node keeps its producer's
/// name), never touch the graph's input node, and leave every shape correct.
pub trait Pass {
    fn run(&self, g: &mut Graph) -> Result<Changed>;
}

/// A pass, declared once (in its own module, as `PASS`): everything the pipeline, the
/// command line and the docs know about it.
pub struct PassInfo {
    /// The name `--passes`, `--disable-pass` and `--print-after` use.
    pub name: &'static str,
    /// The lowest optimisation level whose pipeline runs it.
    pub level: OptLevel,
    /// One line for `docs/passes.md` and help texts.
    pub description: &'static str,
    pub make: fn() -> Box<dyn Pass>,
}

/// Every pass, in pipeline order.
pub const PASSES: &[PassInfo] = &[
    dce::PASS,
    fold_scale_shift::PASS,
    fold_batchnorm::PASS,
    fuse_epilogue::PASS,
    lower_gemm::PASS,
];

/// The pass registered under `name`.
pub fn info(name: &str) -> Result<&'static PassInfo> {
    PASSES.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
        Error::Options(format!(
            "unknown pass `{name}`; the passes are: {}",
            names.join(", ")
        ))
    })
}

/// Checks that `name` is a registered pass (for `--print-after`).
pub fn check_name(name: &str) -> Result<()> {
    info(name).map(|_| ())
}

/// The passes a level runs, in order.
pub fn level_passes(level: OptLevel) -> impl Iterator<Item = &'static PassInfo> {
    PASSES
        .iter()
        .filter(move |p| p.level <= level && level > OptLevel::O0)
}

/// An ordered list of passes.
pub struct Pipeline {
    passes: Vec<(&'static str, Box<dyn Pass>)>,
    verify: bool,
    /// Rounds of the whole list at most, until a round changes nothing (1: run once).
    max_rounds: usize,
}

impl Pipeline {
    /// The pipeline `opts` asks for: `opts.passes` if set, else the level's, without the
    /// disabled ones. Unknown names (in either list) are errors.
    pub fn new(opts: &Options) -> Result<Self> {
        for name in &opts.disabled {
            check_name(name)?;
        }
        let chosen: Vec<&PassInfo> = match &opts.passes {
            Some(list) => list.iter().map(|n| info(n)).collect::<Result<_>>()?,
            None => level_passes(opts.opt_level).collect(),
        };
        let passes = chosen
            .into_iter()
            .filter(|p| !opts.disabled.iter().any(|d| d == p.name))
            .map(|p| (p.name, (p.make)()))
            .collect();
        Ok(Pipeline {
            passes,
            verify: opts.verify,
            max_rounds: 1,
        })
    }

    /// The default pipeline at `level`.
    pub fn for_level(level: OptLevel) -> Self {
        Self::new(&Options::level(level)).expect("the built-in pipelines name real passes")
    }

    /// Appends a pass of the caller's, under `name`.
    pub fn push(&mut self, name: &'static str, pass: Box<dyn Pass>) {
        self.passes.push((name, pass));
    }

    /// Turns the check after each pass ([`verify`]) on or off.
    pub fn set_verify(&mut self, verify: bool) {
        self.verify = verify;
    }

    /// Repeats the whole list until a round changes nothing, at most `max_rounds` times
    /// (an error if the last round still changed the graph: a pass that never settles).
    pub fn run_to_fixpoint(&mut self, max_rounds: usize) {
        self.max_rounds = max_rounds.max(1);
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.0).collect()
    }

    /// Runs every pass in order. Returns whether any changed the graph.
    pub fn run(&self, g: &mut Graph) -> Result<Changed> {
        self.run_with(g, &mut |_, _, _| {})
    }

    /// Runs every pass, calling `after(pass name, changed, graph)` after each one (the
    /// hook behind `--print-after`).
    pub fn run_with(
        &self,
        g: &mut Graph,
        after: &mut dyn FnMut(&str, Changed, &Graph),
    ) -> Result<Changed> {
        let mut any = Changed::No;
        for round in 1..=self.max_rounds {
            let mut this_round = Changed::No;
            for (name, pass) in &self.passes {
                let broke = |e: Error| Error::Pass {
                    pass: name.to_string(),
                    source: Box::new(e),
                };
                let changed = pass.run(g)?;
                if self.verify {
                    verify(g).map_err(broke)?;
                }
                after(name, changed, g);
                this_round |= changed;
            }
            any |= this_round;
            if !this_round.is_yes() {
                break;
            }
            if round == self.max_rounds && self.max_rounds > 1 {
                return Err(Error::Internal(format!(
                    "the passes still change the graph after {round} rounds"
                )));
            }
        }
        Ok(any)
    }
}

/// Runs the pipeline `opts` asks for on `g`.
pub fn optimize(g: &mut Graph, opts: &Options) -> Result<Changed> {
    Pipeline::new(opts)?.run(g)
}

/// The invariants every pass keeps: the input node is alive and reads nothing, outputs
/// are alive, the graph is acyclic, every op has its arity, every shape is what
/// inference gives (a pass must set the shapes of what it rewrites), and bound
/// parameters have the shapes the op expects. Changes nothing.
pub fn verify(g: &Graph) -> Result<()> {
    let bad = |m: String| Err(Error::Graph(m));
    if !g.dag.contains_node(g.input) {
        return bad("the graph input node was removed".into());
    }
    if g.outputs.is_empty() {
        return bad("the graph has no outputs".into());
    }
    if let Some(o) = g.outputs.iter().find(|&&o| !g.dag.contains_node(o)) {
        return bad(format!("output {o:?} is a removed node"));
    }
    // Read-only: every recorded shape must be what inference gives.
    g.check_shapes()?;
    for id in g.dag.node_indices() {
        // Bound weights must still be the ones the (rewritten) op expects.
        let node = &g.dag[id];
        if node.params.is_empty() {
            continue;
        }
        for (suffix, expected) in crate::weights::expected_params(g, id) {
            let name = format!("{}.{suffix}", node.name);
            match node.param(suffix) {
                Some(t) => crate::weights::check_shape(&name, &expected, t.shape())?,
                None => return bad(format!("{name} is missing")),
            }
        }
    }
    Ok(())
}

/// Removes `id` after pointing all its uses at `with`.
pub(crate) fn bypass(g: &mut Graph, id: NodeId, with: NodeId) {
    g.replace_uses(id, with);
    g.dag.remove_node(id);
}
