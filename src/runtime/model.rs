//! A compiled network: one JIT kernel per layer, weights packed for them, and an
//! activation arena planned at compile time.
use super::arena::{ArenaPlanner, Region};
use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId, Op, Shape};
use crate::jit::{
    pack_fc_weights, ConvKernel, ConvSpec, EltKernel, EltSpec, FcKernel, FcSpec, KernelListing,
    KernelModule, PoolKernel, PoolKind, PoolSpec, ThreadPool,
};
use crate::options::Options;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most activation memory a model may plan (floats): 16 GiB.
const ARENA_LIMIT: u64 = 1 << 32;

/// How long workers spin for the next layer before parking (waking a parked thread
/// costs tens of microseconds here, more than many layers take).
const POOL_SPIN: Duration = Duration::from_micros(200);

/// Below this much work (FLOPs, or floats written) a layer runs on one thread: waking
/// another costs more than it saves.
const PARALLEL_MIN_WORK: u64 = 1 << 20;

/// The machine code of one layer and the constants it reads.
enum Kernel {
    Conv {
        k: ConvKernel,
        packed: Vec<f32>,
    },
    Fc {
        k: FcKernel,
        packed: Vec<f32>,
    },
    Pool(PoolKernel),
    /// Elementwise or reduction; `consts` are extra inputs (batchnorm's scale and shift).
    Elt {
        k: EltKernel,
        consts: Vec<Vec<f32>>,
    },
    /// Copies each input item to its float offset in the output item (the inputs that
    /// were not written in place; see [`concat_placements`]).
    Concat(Vec<usize>),
    /// A `pad` layer: each plane copied into a larger one filled with the pad value
    /// (data movement, like concat, done in Rust).
    Pad {
        pad: crate::ir::Pad,
        input: Shape,
    },
}

/// One layer's execution: its kernel, where in the arena the items it reads are, and
/// where the items it writes go.
struct Step {
    name: String,
    op: String,
    kernel: Kernel,
    inputs: Vec<View>,
    output: View,
    flops_per_item: u64,
}

/// Where the `batch` items of one value are: item `n` is `item` floats at
/// `region.offset + n * stride`, `region` the span from the first item to the last.
#[derive(Clone, Copy, Debug)]
struct View {
    region: Region,
    item: usize,
    stride: usize,
}

impl View {
    /// A buffer of its own: items back to back.
    fn whole(region: Region, item: usize) -> Self {
        View {
            region,
            item,
            stride: item,
        }
    }
    /// An input written in place into its concat's buffer `cat` (`cat_item` floats per
    /// item), at float offset `at` of every item.
    fn placed(cat: Region, at: usize, cat_item: usize, item: usize, batch: usize) -> Self {
        View {
            region: Region {
                offset: cat.offset + at,
                len: (batch - 1) * cat_item + item,
            },
            item,
            stride: cat_item,
        }
    }
    /// Item `n` within `span`, the slice of this view's region.
    fn item_of<'a>(&self, span: &'a [f32], n: usize) -> &'a [f32] {
        &span[n * self.stride..n * self.stride + self.item]
    }
}

/// Time spent in one layer during [`Model::profile`].
#[derive(Clone, Debug)]
pub struct LayerTime {
    pub name: String,
    /// The op with its attributes, as IR dumps show it; for convolutions also the
    /// algorithm, e.g. `[winograd-f4x4]`.
    pub op: String,
    pub time: Duration,
    /// Floating-point operations of the whole batch.
    pub flops: u64,
}

impl Step {
    /// Batch item `n` of input `i`.
    fn item<'a>(&self, ins: &Inputs<'a>, i: usize, n: usize) -> Result<&'a [f32]> {
        let v = &self.inputs[i];
        Ok(v.item_of(ins.get(v.region)?, n))
    }
}

/// Elementwise operands passed without allocating: up to this many on the stack (the
/// kernel's own buffer list stays on the stack up to the same count).
const STACK_ARGS: usize = crate::jit::elementwise::STACK_INPUTS;

/// Per-run memory: the activation arena and kernel scratch space.
struct Workspace {
    arena: Vec<f32>,
    scratch: Vec<f32>,
}

pub struct Model {
    name: String,
    steps: Vec<Step>,
    batch: usize,
    input: Region,
    input_shape: Shape,
    outputs: Vec<(Region, Shape)>,
    arena_len: usize,
    scratch_len: usize,
    /// Idle workspaces; concurrent `run` calls each take one (a new one is made only
    /// when more calls overlap than ever before), so steady-state runs allocate nothing.
    workspaces: Mutex<Vec<Workspace>>,
    /// Workers for `threads > 1`, created once per model.
    pool: Option<ThreadPool>,
    compile_time: Duration,
    packing_time: Duration,
}

/// Compiles a graph (with bound weights) to machine code for the host CPU, as it is:
/// [`crate::compile`] runs the optimisation passes first. Uses `opts.batch` and
/// `opts.threads`.
pub fn compile(g: &Graph, opts: &Options) -> Result<Model> {
    compile_with(g, opts, false).map(|(model, _)| model)
}

/// The Cranelift IR and machine code of every kernel [`compile`] generates for `g`.
pub fn listings(g: &Graph, opts: &Options) -> Result<Vec<KernelListing>> {
    compile_with(g, opts, true).map(|(_, listings)| listings)
}

fn compile_with(
    g: &Graph,
    opts: &Options,
    keep_listings: bool,
) -> Result<(Model, Vec<KernelListing>)> {
    let start = Instant::now();
    let b = opts.batch;
    if b == 0 {
        return Err(Error::Input("the batch size must be at least 1".into()));
    }
    if opts.threads == 0 {
        return Err(Error::Input("the thread count must be at least 1".into()));
    }
    if opts.threads > 256 {
        return Err(Error::Input(format!(
            "{} threads is more than the limit of 256",
            opts.threads
        )));
    }
    let pool = (opts.threads > 1).then(|| ThreadPool::new(opts.threads, POOL_SPIN));
    // A graph built or edited by hand gets the checks the parser gives a file.
    g.check_shapes()?;
    let order = g.topo_order()?;
    let mut module = KernelModule::new()?;
    module.set_winograd(opts.winograd);
    if keep_listings {
        module.keep_listings();
    }

    // Where each value lives: a flatten or dropout shares its input's buffer, and a concat
    // input placed in its concat's buffer lives there.
    let placed = concat_placements(g, &order, b);
    let mut buffer_of: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        let root = match node.op {
            Op::Flatten | Op::Dropout => buffer_of[&g.inputs(id)[0]],
            _ => placed.get(&id).map_or(id, |&(cat, _)| cat),
        };
        buffer_of.insert(id, root);
    }
    // The last step that reads each buffer; graph outputs live to the end.
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (pos, &id) in order.iter().enumerate() {
        for i in g.inputs(id) {
            last_use.insert(buffer_of[&i], pos);
        }
    }
    for o in &g.outputs {
        last_use.insert(buffer_of[o], usize::MAX);
    }

    let mut planner = ArenaPlanner::default();
    let mut arena_len = 0;
    // Each buffer's region, and where each value's items are in it.
    let mut region: HashMap<NodeId, Region> = HashMap::new();
    let mut view: HashMap<NodeId, View> = HashMap::new();
    let mut pending = Vec::new();
    let mut packing = Vec::new();
    for (pos, &id) in order.iter().enumerate() {
        let node = g.node(id);
        let item = node.shape.len();
        let buf = buffer_of[&id];
        if let std::collections::hash_map::Entry::Vacant(slot) = region.entry(buf) {
            // A placed concat input allocates its concat's buffer.
            let n = &g.node(buf);
            crate::ir::shape::check_budget(&n.name, "batch of activations", &[b, n.shape.len()])?;
            slot.insert(planner.alloc(b * n.shape.len()));
            arena_len = arena_len.max(planner.top());
        }
        let v = match placed.get(&id) {
            Some(&(cat, at)) => View::placed(region[&cat], at, g.node(cat).shape.len(), item, b),
            None if buf == id => View::whole(region[&id], item),
            None => view[&buf],
        };
        view.insert(id, v);
        let aliased = matches!(node.op, Op::Flatten | Op::Dropout);
        let all_placed = matches!(node.op, Op::Concat)
            && g.inputs(id)
                .iter()
                .all(|i| placed.get(i).is_some_and(|p| p.0 == id));
        if id != g.input && !aliased && !all_placed {
            module.set_label(&node.name);
            pending.push(plan_step(
                g,
                id,
                b,
                &mut module,
                &view,
                &placed,
                &mut packing,
            )?);
        }
        // Free what this step read last (after allocating its output, so the two never
        // share memory).
        // Each buffer once: a node may read one value in two slots (a conv whose
        // residual is its own input), or two views (flatten) of one buffer.
        let mut read: Vec<NodeId> = g.inputs(id).iter().map(|i| buffer_of[i]).collect();
        read.sort();
        read.dedup();
        for buf in read {
            if last_use.get(&buf) == Some(&pos) {
                planner.release(region[&buf]);
            }
        }
        if !last_use.contains_key(&buf) && buf == id {
            planner.release(region[&id]); // Dead value: nobody reads it.
        }
    }

    if arena_len as u64 > ARENA_LIMIT {
        return Err(Error::Shape(format!(
            "the activations of a batch of {b} need {} MB, more than the limit of {} MB; use a smaller batch",
            (arena_len as u64 * 4) >> 20,
            (ARENA_LIMIT * 4) >> 20
        )));
    }
    let listings = module.take_listings();
    let code = module.finalize()?;
    let packing_start = Instant::now();
    let mut packed: Vec<Option<Vec<f32>>> = run_jobs(packing, opts.threads)?
        .into_iter()
        .map(Some)
        .collect();
    let mut take = |job: usize| {
        packed[job]
            .take()
            .ok_or_else(|| Error::Internal("packed weights used twice".into()))
    };
    let packing_time = packing_start.elapsed();
    let mut steps = Vec::with_capacity(pending.len());
    for p in pending {
        let kernel = match p.kernel {
            PendingKernel::Conv(k, job) => Kernel::Conv {
                k: code.get(*k)?,
                packed: take(job)?,
            },
            PendingKernel::Fc(k, job) => Kernel::Fc {
                k: code.get(k)?,
                packed: take(job)?,
            },
            PendingKernel::Pool(k) => Kernel::Pool(code.get(k)?),
            PendingKernel::Elt(k, consts) => Kernel::Elt {
                k: code.get(k)?,
                consts,
            },
            PendingKernel::Concat(at) => Kernel::Concat(at),
            PendingKernel::Pad(pad, input) => Kernel::Pad { pad, input },
        };
        let mut step = Step { kernel, ..p.step };
        if let Kernel::Conv { k, .. } = &step.kernel {
            step.op = format!("{} [{}]", step.op, k.method());
        }
        steps.push(step);
    }
    let scratch_len = steps
        .iter()
        .map(|s| match &s.kernel {
            // A conv pads its input once, before its threads split the rest; each
            // thread of a pool has scratch of its own.
            Kernel::Conv { k, .. } => k.scratch_len(),
            Kernel::Pool(k) => k.scratch_len() * opts.threads,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let model = Model {
        name: g.name.clone(),
        steps,
        batch: b,
        input: view[&g.input].region,
        input_shape: g.input_shape(),
        outputs: g
            .outputs
            .iter()
            .map(|o| (view[o].region, g.node(*o).shape))
            .collect(),
        arena_len,
        scratch_len,
        workspaces: Mutex::new(Vec::new()),
        pool,
        compile_time: start.elapsed(),
        packing_time,
    };
    Ok((model, listings))
}

/// The concat inputs that are written straight into their place in the concat's buffer,
/// with the concat and the float offset of their slot in each item: in NCHW, input `i` of a
/// channel concat is one contiguous block of every item, so its producer can write there and
/// the concat copies nothing (GoogLeNet's inception blocks: all four branches). A value is
/// placed when
/// * a kernel that writes one item at a time makes it (not the graph input, an fc, a view
///   such as flatten, or another concat), and it is not a graph output (copied out whole);
/// * it fills one slot of one concat, and every reader takes it item by item (no fc, no
///   flatten or dropout view);
/// * with more than one item per chunk, it neither reads nor is read by a value placed in
///   the same concat: their items interleave, and a step's output span may not overlap its
///   inputs.
fn concat_placements(
    g: &Graph,
    order: &[NodeId],
    batch: usize,
) -> HashMap<NodeId, (NodeId, usize)> {
    let item_by_item = |op: &Op| {
        !matches!(
            op,
            Op::Input | Op::Fc(_) | Op::Flatten | Op::Dropout | Op::Concat
        )
    };
    let mut placed: HashMap<NodeId, (NodeId, usize)> = HashMap::new();
    for &cat in order {
        if !matches!(g.node(cat).op, Op::Concat) {
            continue;
        }
        let inputs = g.inputs(cat);
        let mut at = 0;
        for &p in &inputs {
            let eligible = item_by_item(&g.node(p).op)
                && !g.outputs.contains(&p)
                && !placed.contains_key(&p)
                && inputs.iter().filter(|&&q| q == p).count() == 1
                && g.readers(p).iter().all(|&r| {
                    r == cat || !matches!(g.node(r).op, Op::Fc(_) | Op::Flatten | Op::Dropout)
                })
                && (batch == 1
                    || g.inputs(p)
                        .into_iter()
                        .chain(g.readers(p))
                        .all(|i| placed.get(&i).is_none_or(|q| q.0 != cat)));
            if eligible {
                placed.insert(p, (cat, at));
            }
            at += g.node(p).shape.len();
        }
    }
    placed
}

/// A kernel awaiting the module's finalization; conv and fc hold the index of the job that
/// packs their weights.
enum PendingKernel {
    Conv(Box<crate::jit::PendingConv>, usize),
    Fc(crate::jit::PendingFc, usize),
    Pool(crate::jit::PendingPool),
    Elt(crate::jit::PendingElt, Vec<Vec<f32>>),
    Concat(Vec<usize>),
    Pad(crate::ir::Pad, Shape),
}

struct PendingStep {
    kernel: PendingKernel,
    step: Step,
}

fn param<'a>(g: &'a Graph, id: NodeId, suffix: &str) -> Result<&'a [f32]> {
    let node = g.node(id);
    node.param(suffix)
        .map(|t| t.data())
        .ok_or_else(|| Error::Weights(format!("{}: parameter `{suffix}` is not bound", node.name)))
}

/// Work deferred until every kernel is generated, then shared out among threads: packing a
/// layer's weights (for Winograd convolutions, transforming them) can take longer than
/// generating its code.
type Job<'g, T> = Box<dyn FnOnce() -> Result<T> + Send + 'g>;

/// Runs `jobs` on up to `threads` threads (the caller's included), each taking the next job
/// not yet taken; returns the results in the jobs' order, or the first error.
fn run_jobs<T: Send>(jobs: Vec<Job<'_, T>>, threads: usize) -> Result<Vec<T>> {
    let n = jobs.len();
    let queue: Vec<Mutex<Option<Job<'_, T>>>> =
        jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Result<T>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(slot) = queue.get(i) else { break };
        let job = slot.lock().map(|mut j| j.take()).ok().flatten();
        if let Some(job) = job {
            let r = job();
            if let Ok(mut out) = results[i].lock() {
                *out = Some(r);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(n) {
            s.spawn(work);
        }
        work();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(Error::Internal("a packing job did not run".into())))
        })
        .collect()
}

fn plan_step<'g>(
    g: &'g Graph,
    id: NodeId,
    b: usize,
    module: &mut KernelModule,
    view: &HashMap<NodeId, View>,
    placed: &HashMap<NodeId, (NodeId, usize)>,
    packing: &mut Vec<Job<'g, Vec<f32>>>,
) -> Result<PendingStep> {
    let node = g.node(id);
    let mut inputs = g.inputs(id);
    let x = g.node(inputs[0]).shape;
    let out = node.shape;
    let stats = crate::ir::stats::layer_stats(g, id);
    let mut conv = |module: &mut KernelModule, spec: ConvSpec| -> Result<PendingKernel> {
        let bias = if spec.bias {
            Some(param(g, id, "bias")?)
        } else {
            None
        };
        let weight = param(g, id, "weight")?;
        let kernel = module.add_conv(&spec)?;
        let packer = kernel.clone();
        packing.push(Box::new(move || packer.pack_weights(weight, bias)));
        Ok(PendingKernel::Conv(Box::new(kernel), packing.len() - 1))
    };
    let elt = |module: &mut KernelModule, spec: EltSpec, consts| -> Result<PendingKernel> {
        Ok(PendingKernel::Elt(module.add_elementwise(&spec)?, consts))
    };
    let kernel = match &node.op {
        Op::Conv(c) => conv(
            module,
            ConvSpec {
                in_c: x.c,
                in_h: x.h,
                in_w: x.w,
                out_c: c.filters,
                kernel_h: c.size.h,
                kernel_w: c.size.w,
                stride_h: c.stride.h,
                stride_w: c.stride.w,
                pad_h: c.pad.h,
                pad_w: c.pad.w,
                bias: c.bias,
                relu: c.epilogue.relu,
                residual: c.epilogue.residual,
                clip: None,
            },
        )?,
        Op::Gemm(gm) => conv(
            module,
            ConvSpec {
                in_c: x.c,
                in_h: x.h,
                in_w: x.w,
                out_c: gm.filters,
                kernel_h: 1,
                kernel_w: 1,
                stride_h: gm.stride.h,
                stride_w: gm.stride.w,
                pad_h: 0,
                pad_w: 0,
                bias: gm.bias,
                relu: gm.epilogue.relu,
                residual: gm.epilogue.residual,
                clip: None,
            },
        )?,
        Op::Fc(f) => {
            let spec = FcSpec {
                bias: f.bias,
                relu: f.epilogue.relu,
                residual: f.epilogue.residual,
                ..FcSpec::new(x.len(), f.units, b)
            };
            let bias = if f.bias {
                Some(param(g, id, "bias")?)
            } else {
                None
            };
            let weight = param(g, id, "weight")?;
            packing.push(Box::new(move || pack_fc_weights(&spec, weight, bias)));
            PendingKernel::Fc(module.add_fc(&spec)?, packing.len() - 1)
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let kind = if matches!(node.op, Op::MaxPool(_)) {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            let spec = PoolSpec {
                kind,
                channels: x.c,
                in_h: x.h,
                in_w: x.w,
                kernel_h: p.size.h,
                kernel_w: p.size.w,
                stride_h: p.stride.h,
                stride_w: p.stride.w,
                pad_h: p.pad.h,
                pad_w: p.pad.w,
            };
            PendingKernel::Pool(module.add_pool(&spec)?)
        }
        Op::GlobalAvgPool => elt(
            module,
            EltSpec::GlobalAvgPool {
                channels: x.c,
                hw: x.h * x.w,
            },
            vec![],
        )?,
        Op::Relu => elt(module, EltSpec::Relu { len: out.len() }, vec![])?,
        Op::Softmax => elt(
            module,
            EltSpec::Softmax {
                channels: x.c,
                hw: x.h * x.w,
            },
            vec![],
        )?,
        Op::Add => elt(
            module,
            EltSpec::Add {
                inputs: inputs.len(),
                len: out.len(),
                relu: false,
            },
            vec![],
        )?,
        Op::BatchNorm { eps } => {
            // Folded to a per-channel scale and shift once, here, never per run.
            let (gamma, beta) = (param(g, id, "weight")?, param(g, id, "bias")?);
            let (mean, var) = (param(g, id, "running_mean")?, param(g, id, "running_var")?);
            let scale: Vec<f32> = gamma
                .iter()
                .zip(var)
                .map(|(g, v)| g / (v + eps).sqrt())
                .collect();
            let shift = beta
                .iter()
                .zip(mean)
                .zip(&scale)
                .map(|((b, m), s)| b - m * s)
                .collect();
            elt(
                module,
                EltSpec::ScaleShift {
                    channels: x.c,
                    hw: x.h * x.w,
                    relu: false,
                },
                vec![scale, shift],
            )?
        }
        Op::Concat => {
            // Only the inputs not already written in place are copied.
            let mut at = Vec::new();
            let mut copied = Vec::new();
            let mut offset = 0;
            for &i in &inputs {
                if placed.get(&i).is_none_or(|p| p.0 != id) {
                    at.push(offset);
                    copied.push(i);
                }
                offset += g.node(i).shape.len();
            }
            inputs = copied;
            PendingKernel::Concat(at)
        }
        Op::Pad(p) => PendingKernel::Pad(p.clone(), x),
        Op::Input | Op::Flatten | Op::Dropout => {
            return Err(Error::Internal(format!(
                "{}: {} has no step",
                node.name,
                node.op.kind()
            )))
        }
    };
    Ok(PendingStep {
        kernel,
        step: Step {
            name: node.name.clone(),
            op: node.op.to_string(),
            kernel: Kernel::Concat(Vec::new()), // replaced once the code is finalized
            inputs: inputs.iter().map(|i| view[i]).collect(),
            output: view[&id],
            flops_per_item: 2 * stats.macs,
        },
    })
}

/// The arena on either side of a step's output region, from which its inputs are read.
struct Inputs<'a> {
    left: &'a [f32],
    right: &'a [f32],
    /// The output region's offset and end in the arena.
    start: usize,
    end: usize,
}

impl<'a> Inputs<'a> {
    /// The input region `r` (the planner never lets it overlap the step's output).
    fn get(&self, r: Region) -> Result<&'a [f32]> {
        if r.offset + r.len <= self.start {
            Ok(&self.left[r.range()])
        } else if r.offset >= self.end {
            Ok(&self.right[r.offset - self.end..r.offset - self.end + r.len])
        } else {
            Err(Error::Internal(format!(
                "input region {r:?} overlaps the output {}..{}",
                self.start, self.end
            )))
        }
    }
}

/// The output region as `&mut` and the rest of the arena, from which the inputs are read.
fn split_io(arena: &mut [f32], output: Region) -> (Inputs<'_>, &mut [f32]) {
    let (left, rest) = arena.split_at_mut(output.offset);
    let (out, right) = rest.split_at_mut(output.len);
    let ins = Inputs {
        left,
        right,
        start: output.offset,
        end: output.offset + output.len,
    };
    (ins, out)
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Everything [`compile`] took (it does not run the passes).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
    /// The part of [`Model::compile_time`] spent packing weights (for Winograd
    /// convolutions, transforming them), on `threads` threads.
    pub fn packing_time(&self) -> Duration {
        self.packing_time
    }
    /// Images per kernel call.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Floats of activation memory per run.
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }

    /// Runs the network on `[N, C, H, W]` (or `[C, H, W]`); one tensor per graph output.
    pub fn run(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut outs = self.output_tensors(x)?;
        self.run_into(x, &mut outs)?;
        Ok(outs)
    }

    /// Zeroed output tensors for input `x`, refused before allocating if absurdly large.
    fn output_tensors(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let n = self.check_input(x)?;
        self.outputs
            .iter()
            .map(|(_, s)| {
                crate::ir::shape::check_budget(&self.name, "output batch", &[n, s.len()])?;
                Tensor::try_filled(s.dims(n), 0.0)
            })
            .collect()
    }

    fn check_input(&self, x: &Tensor) -> Result<usize> {
        let s = self.input_shape;
        match x.shape() {
            [c, h, w] if [*c, *h, *w] == [s.c, s.h, s.w] => Ok(1),
            [n, c, h, w] if *n >= 1 && [*c, *h, *w] == [s.c, s.h, s.w] => Ok(*n),
            other => Err(Error::Input(format!(
                "the input has shape {}, but the model takes {s} (or Nx{s})",
                crate::tensor::fmt_shape(other)
            ))),
        }
    }

    /// Like [`Model::run`], writing into `outputs` (shaped `[N, ...]` for each graph
    /// output): no allocation once the model has run once.
    pub fn run_into(&self, x: &Tensor, outputs: &mut [Tensor]) -> Result<()> {
        self.run_timed(x, outputs, None)
    }

    /// Runs once and returns the time spent in each layer, in execution order.
    pub fn profile(&self, x: &Tensor) -> Result<(Vec<Tensor>, Vec<LayerTime>)> {
        let n = self.check_input(x)?;
        let mut outs = self.output_tensors(x)?;
        let mut times = vec![Duration::ZERO; self.steps.len()];
        self.run_timed(x, &mut outs, Some(&mut times))?;
        let layers = self
            .steps
            .iter()
            .zip(times)
            .map(|(s, time)| LayerTime {
                name: s.name.clone(),
                op: s.op.clone(),
                time,
                flops: s.flops_per_item.saturating_mul(n as u64),
            })
            .collect();
        Ok((outs, layers))
    }

    fn take_workspace(&self) -> Workspace {
        let idle = self.workspaces.lock().ok().and_then(|mut pool| pool.pop());
        idle.unwrap_or_else(|| Workspace {
            arena: vec![0.0; self.arena_len],
            scratch: vec![0.0; self.scratch_len],
        })
    }

    fn run_timed(
        &self,
        x: &Tensor,
        outputs: &mut [Tensor],
        mut profile: Option<&mut [Duration]>,
    ) -> Result<()> {
        let n = self.check_input(x)?;
        if outputs.len() != self.outputs.len() {
            return Err(Error::Input(format!(
                "the model has {} output(s), got {} buffers",
                self.outputs.len(),
                outputs.len()
            )));
        }
        for (t, (_, s)) in outputs.iter().zip(&self.outputs) {
            if !s.is_dims(n, t.shape()) {
                return Err(Error::Input(format!(
                    "output buffer has shape {}, expected {}",
                    crate::tensor::fmt_shape(t.shape()),
                    crate::tensor::fmt_shape(&s.dims(n))
                )));
            }
        }
        let mut ws = self.take_workspace();
        let item_in = self.input_shape.len();
        let result = (|| {
            for chunk_start in (0..n).step_by(self.batch) {
                let items = self.batch.min(n - chunk_start);
                let src = &x.data()[chunk_start * item_in..(chunk_start + items) * item_in];
                let dst =
                    &mut ws.arena[self.input.offset..self.input.offset + self.batch * item_in];
                dst[..src.len()].copy_from_slice(src);
                dst[src.len()..].fill(0.0);
                for (i, step) in self.steps.iter().enumerate() {
                    let t = profile.is_some().then(Instant::now);
                    self.run_step(step, &mut ws)?;
                    if let (Some(p), Some(t)) = (profile.as_deref_mut(), t) {
                        p[i] += t.elapsed();
                    }
                }
                for (t, (r, s)) in outputs.iter_mut().zip(&self.outputs) {
                    let len = s.len();
                    t.data_mut()[chunk_start * len..(chunk_start + items) * len]
                        .copy_from_slice(&ws.arena[r.offset..r.offset + items * len]);
                }
            }
            Ok(())
        })();
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
        result
    }

    fn run_step(&self, step: &Step, ws: &mut Workspace) -> Result<()> {
        let b = self.batch;
        let (ins, out) = split_io(&mut ws.arena, step.output.region);
        let scratch = &mut ws.scratch[..];
        let item = step.output.item;
        // Large layers are split across the pool; small ones run here, since handing
        // work to another thread costs more than they take.
        let work = step.flops_per_item.max(item as u64) * b as u64;
        let pool = self.pool.as_ref().filter(|_| work >= PARALLEL_MIN_WORK);
        let n_in = step.inputs.len();
        if let Kernel::Fc { k, packed } = &step.kernel {
            // One call for the whole chunk: the weights are read once for every item. Its
            // values are never placed in a concat, so their items are back to back.
            let x = &ins.get(step.inputs[0].region)?[..b * step.inputs[0].item];
            let residual = (n_in > 1)
                .then(|| ins.get(step.inputs[1].region).map(|r| &r[..b * item]))
                .transpose()?;
            let out = &mut out[..b * item];
            return match pool {
                Some(p) => k.run_parallel(p, x, packed, residual, out),
                None => k.run_all(x, packed, residual, out),
            };
        }
        let stride = step.output.stride;
        for n in 0..b {
            let o = &mut out[n * stride..n * stride + item];
            match &step.kernel {
                Kernel::Conv { k, packed } => {
                    let x = step.item(&ins, 0, n)?;
                    let residual = (n_in > 1).then(|| step.item(&ins, 1, n)).transpose()?;
                    match pool {
                        Some(p) => k.run_parallel(p, x, packed, residual, o, scratch)?,
                        None => k.run(x, packed, residual, o, scratch, 0..k.work_units())?,
                    }
                }
                Kernel::Pool(k) => {
                    let x = step.item(&ins, 0, n)?;
                    match pool {
                        Some(p) => k.run_parallel(p, x, o, scratch)?,
                        None => k.run(x, o, scratch, 0..k.work_units())?,
                    }
                }
                Kernel::Elt { k, consts } => {
                    // The operands (batch item `n` of every input, then the constants) as
                    // a list on the stack; a heap list only beyond STACK_ARGS operands.
                    let total = n_in + consts.len();
                    let mut stack: [&[f32]; STACK_ARGS] = [&[]; STACK_ARGS];
                    let mut heap = Vec::new();
                    let args: &mut [&[f32]] = if total <= STACK_ARGS {
                        &mut stack[..total]
                    } else {
                        heap.resize(total, &[][..]);
                        &mut heap
                    };
                    for (i, a) in args[..n_in].iter_mut().enumerate() {
                        *a = step.item(&ins, i, n)?;
                    }
                    for (a, c) in args[n_in..].iter_mut().zip(consts) {
                        *a = c;
                    }
                    match pool {
                        Some(p) => k.run_parallel(p, args, o)?,
                        None => k.run_all(args, o)?,
                    }
                }
                Kernel::Concat(at) => {
                    for (i, &at) in at.iter().enumerate() {
                        let x = step.item(&ins, i, n)?;
                        o[at..at + x.len()].copy_from_slice(x);
                    }
                }
                Kernel::Pad { pad, input } => pad_item(step.item(&ins, 0, n)?, input, pad, o),
                Kernel::Fc { .. } => {
                    return Err(Error::Internal(format!(
                        "{}: fc runs whole chunks",
                        step.name
                    )))
                }
            }
        }
        Ok(())
    }
}

/// One batch item of a `pad` layer: `x` is `input`, `out` the padded item.
fn pad_item(x: &[f32], input: &Shape, p: &crate::ir::Pad, out: &mut [f32]) {
    let (h, w) = (input.h, input.w);
    let (oh, ow) = (h + p.top + p.bottom, w + p.left + p.right);
    out.fill(p.value);
    for c in 0..input.c {
        for y in 0..h {
            let src = (c * h + y) * w;
            let dst = (c * oh + y + p.top) * ow + p.left;
            out[dst..dst + w].copy_from_slice(&x[src..src + w]);
        }
    }
}
