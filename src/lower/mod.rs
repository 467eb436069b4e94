//! Lowering: the optimised IR becomes an execution [`Plan`], plain data that says which
//! kernel runs at each step, on which buffers, and where every buffer lives in the
//! activation arena.
//!
//! [`lower`] maps each IR node to at most one step ([`ops`], one function per op), fuses
//! a ReLU into the elementwise step before it ([`fuse`]), then runs the memory passes
//! over the plan ([`memory`]): concat inputs written in place, liveness, arena offsets. The
//! runtime ([`crate::runtime`]) only generates one kernel per distinct spec, packs the
//! weights and executes the steps in order.
//!
//! Adding an op: a function in [`ops`] returning its [`Kernel`], one arm in
//! [`ops::kernel`]. Adding a kernel choice (an algorithm for an existing spec): a field or
//! variant in the [`Kernel`] it refines, chosen in that op's function, and its arm in the
//! runtime's `generate` (see `docs/runtime.md`).
pub mod fuse;
pub mod memory;
pub mod ops;
mod print;

pub use memory::{Region, View};

use crate::error::{Error, Result};
use crate::ir::{Clip, Graph, Hw, Lrn, NodeId, Pad, Pool, Shape};
use crate::jit::{ConvMethod, ConvSpec, DepthwiseSpec, EltSpec, FcSpec, PoolSpec};
use crate::options::{Isa, Options};
use std::collections::HashMap;

/// Index of a value in [`Plan::values`].
pub type ValueId = usize;

/// A network lowered to steps on planned buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The graph's name.
    pub name: String,
    /// Images per kernel call: every buffer holds this many items.
    pub batch: usize,
    /// One per IR node, in execution order.
    pub values: Vec<Value>,
    /// In execution order.
    pub steps: Vec<Step>,
    pub input: ValueId,
    pub outputs: Vec<ValueId>,
    /// Floats of activation memory, set by [`memory::assign_arena`]; a multiple of
    /// [`memory::ALIGN_FLOATS`].
    pub arena_len: usize,
    /// The vector instructions every kernel is generated for ([`Options::isa`]), including
    /// the kernels whose step does not name it (depthwise, polyphase parts).
    pub isa: Isa,
}

/// One IR value (a node's output): its shape and where its floats are.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// The node's name.
    pub name: String,
    /// One batch item.
    pub shape: Shape,
    pub storage: Storage,
    /// Where its items are in the arena (set by [`memory::assign_arena`]).
    pub view: View,
}

/// What memory a value occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A buffer of its own.
    Buffer,
    /// The same floats as another value (flatten and dropout compute nothing).
    Alias(ValueId),
    /// Written by its producer straight into its slot of a concat's buffer: float offset
    /// `at` of every item of `concat` (see [`memory::place_concat_inputs`]).
    Slot { concat: ValueId, at: usize },
}

/// One kernel call per batch chunk (per item, except fc which takes the chunk at once).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The layer's name.
    pub name: String,
    /// The IR node, whose bound parameters the conv and fc kernels pack.
    pub layer: NodeId,
    /// The op with its attributes, as IR dumps show it.
    pub op: String,
    pub kernel: Kernel,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// Floating-point operations per batch item (2 per multiply-accumulate).
    pub flops_per_item: u64,
}

/// What a step computes, with every shape baked in: equal kernels share generated code.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// A convolution (conv, and gemm: 1x1 with stride), with its algorithm and the vector
    /// ISA of its micro-kernels.
    Conv {
        spec: ConvSpec,
        method: ConvMethod,
        isa: Isa,
    },
    /// Fully connected, over the whole chunk at once (weights read once per chunk), with the
    /// vector ISA of its micro-kernels (batch > 1).
    Fc { spec: FcSpec, isa: Isa },
    /// A pool, with the vector ISA of its kernel (max pools with a horizontal stride of 1
    /// or 2 have a wide one).
    Pool { spec: PoolSpec, isa: Isa },
    /// Elementwise or reduction; `consts` are extra inputs (batchnorm's scale and shift).
    Elementwise {
        spec: EltSpec,
        consts: Vec<Vec<f32>>,
    },
    /// Concat: copies input `i` to float offset `at[i]` of each output item (only the
    /// inputs not written in place).
    Copy { at: Vec<usize> },
    /// Each plane copied into a larger one filled with the pad value.
    Pad { pad: Pad, input: Shape },
    /// A depthwise conv (groups = input channels, any channel multiplier): its own
    /// kernel, vectorised along output pixels, dilation included.
    Depthwise(DepthwiseSpec),
    /// A dilated conv with stride 1 as undilated convs on the input's phases
    /// ([`Polyphase`]): no multiplications by zero taps.
    Polyphase(Polyphase),
    /// A grouped or dilated conv on the dense conv kernel: `spec` is one group's (`C/G`
    /// input and `K/G` output channels, the dilated filter's extent as its size), run
    /// once per group; each group's weights are packed on their own, a dilated filter
    /// with zeros between its taps (`size` taps `dilation` apart).
    GroupedConv {
        spec: ConvSpec,
        method: ConvMethod,
        /// The vector ISA of its kernel (as a `Conv`'s).
        isa: Isa,
        groups: usize,
        size: Hw,
        dilation: Hw,
    },
    /// A plain Rust loop per item, where no generated kernel exists yet.
    Host(HostOp),
    /// A conv and the max pool that alone reads its output, as one kernel whose output is
    /// the pool's ([`fuse::fuse_max_pool_into_conv`]); the conv's weights.
    ConvMaxPool {
        conv: ConvSpec,
        pool: PoolSpec,
        isa: Isa,
    },
}

/// A dilated convolution with stride 1, computed without the zeros between the taps.
/// Output pixel `(q*Dh + r, u*Dw + t)` reads padded input pixels `((q+i)*Dh + r,
/// (u+j)*Dw + t)`: the outputs of phase `(r, t)` are a plain convolution of the filter
/// over the input's phase `(r, t)` (every `Dh`-th row from `r`, every `Dw`-th column from
/// `t`). So each phase is gathered (zeros where the padding is), convolved by a dense
/// kernel without dilation or padding, and scattered to its outputs
/// (`crate::runtime::host`). The phases have at most two sizes per axis: at most four
/// distinct kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct Polyphase {
    pub input: Shape,
    pub output: Shape,
    pub pad: Hw,
    pub dilation: Hw,
    /// The distinct convolutions of the phases.
    pub convs: Vec<(ConvSpec, ConvMethod)>,
    /// One per phase with outputs.
    pub phases: Vec<Phase>,
}

/// One phase of a [`Polyphase`] conv: its first output row and column, and its
/// convolution (an index into [`Polyphase::convs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    pub row: usize,
    pub col: usize,
    pub conv: usize,
}

impl Phase {
    /// Its output rows and columns.
    pub fn out_hw(&self, p: &Polyphase) -> (usize, usize) {
        let s = &p.convs[self.conv].0;
        (s.out_h(), s.out_w())
    }
}

/// The layers the runtime computes with plain loops over one item
/// (`crate::runtime::host`).
#[derive(Clone, Debug, PartialEq)]
pub enum HostOp {
    /// Pooling the pool kernel does not take: unequal pads, pads over half the window,
    /// or an average that excludes the padding.
    Pool {
        pool: Pool,
        max: bool,
        input: Shape,
        output: Shape,
    },
    /// LRN, as a sliding sum of squares along the channels.
    Lrn { lrn: Lrn, input: Shape },
    /// Channel shuffle: whole planes moved.
    Shuffle { groups: usize, input: Shape },
    /// A clip no conv or fc took as its epilogue.
    Clip(Clip),
}

impl Kernel {
    /// The kernel family's name, as `--emit plan` shows it.
    pub fn family(&self) -> &'static str {
        match self {
            Kernel::Conv { .. } => "conv",
            Kernel::Fc { .. } => "fc",
            Kernel::Pool { .. } => "pool",
            Kernel::Elementwise { .. } => "elementwise",
            Kernel::Copy { .. } => "copy",
            Kernel::Pad { .. } => "pad",
            Kernel::Depthwise(_) => "depthwise",
            Kernel::Polyphase(_) => "polyphase-conv",
            Kernel::GroupedConv { .. } => "grouped-conv",
            Kernel::Host(_) => "host-loop",
            Kernel::ConvMaxPool { .. } => "conv+maxpool",
        }
    }

    /// The algorithm, where there is a choice.
    pub fn algorithm(&self) -> Option<String> {
        match self {
            Kernel::Conv { spec, method, isa } => {
                Some(format!("{method}, {}", method.micro_kernel(spec, *isa)))
            }
            Kernel::GroupedConv {
                spec,
                method,
                isa,
                groups,
                ..
            } => Some(format!(
                "{method} x{groups}, {}",
                method.micro_kernel(spec, *isa)
            )),
            Kernel::ConvMaxPool { conv, isa, .. } => Some(format!(
                "{}, {} + max pool",
                ConvMethod::Direct,
                ConvMethod::Direct.micro_kernel(conv, *isa)
            )),
            Kernel::Fc { spec, isa } => Some(spec.micro_kernel(*isa)),
            Kernel::Pool { spec, isa } => spec.kernel_name(*isa),
            Kernel::Depthwise(d) if d.input_shuffle > 1 => Some(format!(
                "input read through a shuffle of {}",
                d.input_shuffle
            )),
            _ => None,
        }
    }
}

impl Plan {
    /// The step computing each value (`None` for the input, views and concats written
    /// entirely in place).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, s) in self.steps.iter().enumerate() {
            p[s.output] = Some(i);
        }
        p
    }

    /// The value named `name`.
    pub fn value(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name)
    }

    /// The step of layer `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// Lowers `g` (shapes inferred) for `opts.batch` images per call: one step per node that
/// computes something, then the memory passes.
pub fn lower(g: &Graph, opts: &Options) -> Result<Plan> {
    if opts.batch == 0 {
        return Err(Error::Input("the batch size must be at least 1".into()));
    }
    // A misspelt CNNC_ISA is an error, not silently the default; a level the CPU lacks too.
    Isa::from_env()?;
    opts.isa.check_host()?;
    // A graph built or edited by hand gets the checks the parser gives a file.
    g.check_shapes()?;
    crate::ir::limits::check_batch(g, opts.batch)?;
    let order = g.topo_order()?;
    let id_of: HashMap<NodeId, ValueId> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut plan = Plan {
        name: g.name.clone(),
        batch: opts.batch,
        values: Vec::with_capacity(order.len()),
        steps: Vec::new(),
        input: id_of[&g.input],
        outputs: g.outputs.iter().map(|o| id_of[o]).collect(),
        arena_len: 0,
        isa: opts.isa,
    };
    for (v, &id) in order.iter().enumerate() {
        let node = g.node(id);
        let inputs: Vec<ValueId> = g.inputs(id).iter().map(|i| id_of[i]).collect();
        let storage = match ops::kernel(g, id, opts)? {
            ops::Lowered::Nothing => Storage::Buffer,
            ops::Lowered::Alias => Storage::Alias(inputs[0]),
            ops::Lowered::Step(kernel) => {
                plan.steps.push(Step {
                    name: node.name.clone(),
                    layer: id,
                    op: node.op.to_string(),
                    kernel,
                    inputs,
                    output: v,
                    flops_per_item: 2 * crate::ir::stats::layer_stats(g, id).macs,
                });
                Storage::Buffer
            }
        };
        plan.values.push(Value {
            name: node.name.clone(),
            shape: node.shape,
            storage,
            view: View::default(),
        });
    }
    fuse::fuse_relu_into_elementwise(&mut plan);
    fuse::fuse_max_pool_into_conv(&mut plan);
    memory::read_shuffles_in_place(&mut plan);
    memory::place_concat_inputs(&mut plan);
    memory::read_residuals_in_place(&mut plan);
    memory::assign_arena(&mut plan)?;
    Ok(plan)
}
