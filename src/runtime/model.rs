//! A compiled network: the steps of its [`Plan`], each with its generated kernel and
//! packed weights, run in order on an activation arena laid out at compile time.
use super::arena::{split_io, AlignedBuf, Inputs};
use super::kernels::{instantiate, Code};
use crate::error::{Error, Result};
use crate::ir::{Graph, Shape};
use crate::jit::{EltSpec, KernelListing, ThreadPool};
use crate::lower::{Plan, Region, View};
use crate::options::Options;
use crate::tensor::Tensor;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long workers spin for the next layer before parking (waking a parked thread
/// costs tens of microseconds here, more than many layers take).
const POOL_SPIN: Duration = Duration::from_micros(200);

/// Below this much work (FLOPs, or their equivalent, [`parallel_work`]) a layer runs on one
/// thread: handing part of it to another costs more than it saves.
const PARALLEL_MIN_WORK: u64 = 1 << 20;

/// [`PARALLEL_MIN_WORK`], or `CNNC_PARALLEL_MIN_WORK` from the environment (a measuring
/// knob, like `CNNC_WINOGRAD_ROWS`).
fn parallel_min_work() -> u64 {
    crate::knobs::number("CNNC_PARALLEL_MIN_WORK").unwrap_or(PARALLEL_MIN_WORK)
}

/// FLOPs a float written by a memory-bound step (elementwise, copy) counts as: one core
/// moves floats at 8-12 GB/s from memory, 20-40 from L2, while the convolutions run at
/// 100-200 GFLOP/s; so a step writing 16 K floats (~10 us) is split.
const FLOPS_PER_FLOAT_MOVED: u64 = 64;
/// FLOPs an element of a pooling window counts as (a load, a shuffle and a compare or add:
/// 0.2-0.4 ns each at f32x4, measured on max pool 3x3/2).
const FLOPS_PER_WINDOW_ELEMENT: u64 = 32;

/// One step ready to run: its code, where in the arena the items it reads are, and
/// where the items it writes go.
struct Step {
    name: String,
    /// The op, and for convolutions the algorithm (as [`LayerTime::op`]).
    op: String,
    code: Code,
    inputs: Vec<View>,
    /// Per input: a view of the graph input (read from the caller's memory when the run
    /// reads it in place).
    from_model_input: Vec<bool>,
    output: View,
    /// The graph output whose buffer this step writes (placed concat inputs included), and
    /// where in its items, when that output is written in place
    /// ([`crate::lower::memory::outputs_written_in_place`]).
    writes_output: Option<(usize, usize)>,
    flops_per_item: u64,
    /// [`parallel_work`] per item.
    work_per_item: u64,
}

impl Step {
    /// Batch item `n` of input `i`.
    fn item<'a>(&self, ins: &Inputs<'a>, i: usize, n: usize) -> Result<&'a [f32]> {
        let v = &self.inputs[i];
        Ok(v.item_of(ins.span(v, self.from_model_input[i])?, n))
    }
    /// Item `n` of the residual (input 1), if the step has one it does not read in place
    /// (`in_place`: the output buffer holds it, and overlaps it).
    fn residual<'a>(
        &self,
        ins: &Inputs<'a>,
        n: usize,
        in_place: bool,
    ) -> Result<Option<&'a [f32]>> {
        (self.inputs.len() > 1 && !in_place)
            .then(|| self.item(ins, 1, n))
            .transpose()
    }
    /// The first `len` floats of input `i` (fc: the whole chunk).
    fn chunk<'a>(&self, ins: &Inputs<'a>, i: usize, len: usize) -> Result<&'a [f32]> {
        Ok(&ins.span(&self.inputs[i], self.from_model_input[i])?[..len])
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

/// Elementwise operands passed without allocating: up to this many on the stack (the
/// kernel's own buffer list stays on the stack up to the same count).
const STACK_ARGS: usize = crate::jit::elementwise::STACK_INPUTS;

/// Where a graph output comes from at the end of a batch chunk.
struct Output {
    region: Region,
    shape: Shape,
    /// A view of the graph input: copied from the caller's input.
    is_model_input: bool,
    /// Written by its steps straight into the caller's tensor (full chunks).
    in_place: bool,
}

/// Whether `data` starts on a cache line, as the arena's tensors do. The kernels read each
/// channel plane a line or two at a time: from a plane that starts 16 bytes past a line
/// (where a `Vec`'s or numpy's allocator puts a large array) every such read spans one line
/// more, and a 256 -> 64 1x1 convolution at 56x56 took 1.7x the time (`examples/convperf.rs`,
/// `CNNC_OFFSET=4`, cold). So a caller's input that starts off a line is copied into the
/// arena first (0.1 ms per MB). Measured on a Zen 3 host (2026-12-02, alternating runs in
/// one process, median ratio), input read in place off a line / copied: ResNet bottleneck
/// block 1.063 (two threads 1.114), inception 3a 1.149 (0.993), ResNet-18, SqueezeNet and
/// vgg_cifar 0.996-1.001.
fn starts_on_line(data: &[f32]) -> bool {
    (data.as_ptr() as usize).is_multiple_of(crate::runtime::arena::LINE_BYTES)
}

/// Per-run memory: the activation arena and kernel scratch space.
struct Workspace {
    arena: AlignedBuf,
    scratch: AlignedBuf,
}

pub struct Model {
    name: String,
    steps: Vec<Step>,
    batch: usize,
    input: Region,
    input_shape: Shape,
    outputs: Vec<Output>,
    arena_len: usize,
    scratch_len: usize,
    /// [`parallel_min_work`] when the model was built.
    parallel_min_work: u64,
    /// Idle workspaces; concurrent `run` calls each take one (a new one is made only
    /// when more calls overlap than ever before), so steady-state runs allocate nothing.
    workspaces: Mutex<Vec<Workspace>>,
    /// Workers for `threads > 1`, created once per model.
    pool: Option<ThreadPool>,
    compile_time: Duration,
    packing_time: Duration,
    code_cache_counts: crate::jit::module::CodeCacheCounts,
}

/// Compiles a graph (with bound weights) to machine code for the host CPU, as it is:
/// [`crate::compile`] runs the optimisation passes first. Uses `opts.batch`,
/// `opts.threads` and `opts.winograd`.
pub fn compile(g: &Graph, opts: &Options) -> Result<Model> {
    let start = Instant::now();
    check_threads(opts)?;
    let plan = crate::lower::lower(g, opts)?;
    Model::build(&plan, g, opts, false).map(|(mut model, _)| {
        model.compile_time = start.elapsed();
        model
    })
}

/// The Cranelift IR and machine code of every kernel [`compile`] generates for `g`.
pub fn listings(g: &Graph, opts: &Options) -> Result<Vec<KernelListing>> {
    check_threads(opts)?;
    let plan = crate::lower::lower(g, opts)?;
    Model::build(&plan, g, opts, true).map(|(_, listings)| listings)
}

fn check_threads(opts: &Options) -> Result<()> {
    if opts.threads == 0 {
        return Err(Error::Input("the thread count must be at least 1".into()));
    }
    if opts.threads > 256 {
        return Err(Error::Input(format!(
            "{} threads is more than the limit of 256",
            opts.threads
        )));
    }
    Ok(())
}

impl Model {
    /// Instantiates `plan` (lowered from `g`, whose bound weights it packs) on
    /// `opts.threads` threads; with `keep_listings`, also every kernel's listing.
    pub fn build(
        plan: &Plan,
        g: &Graph,
        opts: &Options,
        keep_listings: bool,
    ) -> Result<(Model, Vec<KernelListing>)> {
        let start = Instant::now();
        check_threads(opts)?;
        // No background collapse of another model's chunks competes with the compile.
        let _busy = crate::memory::RunGuard::new();
        // Waited for once the code is compiled: a worker the scheduler starts late does
        // not hold up the compile (`ThreadPool::spawn`).
        let pool = (opts.threads > 1).then(|| ThreadPool::spawn(opts.threads, POOL_SPIN));
        let made = instantiate(plan, g, keep_listings, pool.as_ref())?;
        let view = |v: usize| plan.values[v].view;
        let root = |v: usize| crate::lower::memory::root_of(plan, v).0;
        let in_place = crate::lower::memory::outputs_written_in_place(plan);
        // The graph output (in place) whose buffer holds value `v`, and where in its items.
        let writes_output = |v: usize| {
            let j = (0..plan.outputs.len()).find(|&j| in_place[j] && plan.outputs[j] == root(v))?;
            Some((
                j,
                view(v).region.offset - view(plan.outputs[j]).region.offset,
            ))
        };
        // A step reading the graph input reads the caller's chunk as the input's view.
        if let Some(v) =
            (0..plan.values.len()).find(|&v| root(v) == plan.input && view(v) != view(plan.input))
        {
            return Err(Error::Internal(format!(
                "{} is a view of the graph input with a layout of its own",
                plan.values[v].name
            )));
        }
        let steps: Vec<Step> = plan
            .steps
            .iter()
            .zip(made.code)
            .map(|(s, code)| Step {
                work_per_item: parallel_work(&code, s.flops_per_item, view(s.output).item),
                name: s.name.clone(),
                op: match s.kernel.algorithm() {
                    Some(a) => format!("{} [{a}]", s.op),
                    None => s.op.clone(),
                },
                code,
                inputs: s.inputs.iter().map(|&i| view(i)).collect(),
                from_model_input: s.inputs.iter().map(|&i| root(i) == plan.input).collect(),
                output: view(s.output),
                writes_output: writes_output(s.output),
                flops_per_item: s.flops_per_item,
            })
            .collect();
        let scratch_len = steps
            .iter()
            .map(|s| match &s.code {
                // A conv pads its input once, before its threads split the rest; each
                // thread of a pool has scratch of its own.
                Code::Conv { k, .. } | Code::GroupedConv { k, .. } => {
                    k.scratch_len_on(opts.threads)
                }
                Code::Pool(k) => k.scratch_len() * opts.threads,
                Code::Depthwise { k, .. } => k.scratch_len() * opts.threads,
                Code::Polyphase { plan, convs } => {
                    super::host::polyphase_scratch(plan, convs, opts.threads)
                }
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if let Some(p) = &pool {
            p.wait_until_started();
        }
        let model = Model {
            name: plan.name.clone(),
            steps,
            batch: plan.batch,
            input: view(plan.input).region,
            input_shape: plan.values[plan.input].shape,
            outputs: (plan.outputs.iter().zip(in_place))
                .map(|(&o, in_place)| Output {
                    region: view(o).region,
                    shape: plan.values[o].shape,
                    is_model_input: root(o) == plan.input,
                    in_place,
                })
                .collect(),
            arena_len: plan.arena_len,
            scratch_len,
            parallel_min_work: parallel_min_work(),
            workspaces: Mutex::new(Vec::new()),
            pool,
            compile_time: start.elapsed(),
            packing_time: made.packing_time,
            code_cache_counts: made.code_cache_counts,
        };
        // Chunks of the packed weights faulted in on small pages (huge pages were slow to
        // fault in) become huge pages in the background, after the compile.
        crate::memory::settle_later();
        Ok((model, made.listings))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// Everything [`compile`] took (it does not run the passes).
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }
    /// The part of [`Model::compile_time`] attributed to packing weights (for Winograd
    /// convolutions, transforming them): packing runs in one list of jobs with code
    /// generation, on the model's threads, so this is that phase's wall time apportioned
    /// by the packing jobs' share of the CPU time, an estimate.
    pub fn packing_time(&self) -> Duration {
        self.packing_time
    }
    /// How many of the model's Cranelift functions were found in the process's cache of
    /// compiled code (those of models compiled before: docs/jit.md, "Compile time"), and
    /// how many Cranelift compiled.
    pub fn code_cache_counts(&self) -> crate::jit::module::CodeCacheCounts {
        self.code_cache_counts
    }
    /// Images per kernel call.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Floats of activation memory per run.
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }
    /// The pool's jobs since the last call, with `CNNC_POOL_TRACE=1` (a measuring knob:
    /// `examples/pooltrace.rs`); none without it or on one thread.
    pub fn take_pool_trace(&self) -> Vec<crate::jit::threads::JobTrace> {
        self.pool.as_ref().map_or(Vec::new(), |p| p.take_trace())
    }
    /// The steps' names, in order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|s| format!("{} {}", s.name, s.op))
            .collect()
    }

    /// Runs the network on `[N, C, H, W]` (or `[C, H, W]`); one tensor per graph output.
    pub fn run(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.run_slice(x.shape(), x.data())
    }

    /// Like [`Model::run`] on borrowed memory: `data` holds the input of shape `shape`
    /// in row-major order (bindings run callers' arrays without copying them).
    pub fn run_slice(&self, shape: &[usize], data: &[f32]) -> Result<Vec<Tensor>> {
        let mut outs = self.output_tensors(shape)?;
        self.run_timed(shape, data, &mut outs, None)?;
        Ok(outs)
    }

    /// Zeroed output tensors for input `x`, refused before allocating if absurdly large.
    fn output_tensors(&self, shape: &[usize]) -> Result<Vec<Tensor>> {
        let n = self.check_input(shape)?;
        self.outputs
            .iter()
            .map(|o| {
                let s = o.shape;
                crate::ir::shape::check_budget(&self.name, "output batch", &[n, s.len()])?;
                Tensor::try_filled(s.dims(n), 0.0)
            })
            .collect()
    }

    fn check_input(&self, shape: &[usize]) -> Result<usize> {
        let s = self.input_shape;
        match shape {
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
        self.run_timed(x.shape(), x.data(), outputs, None)
    }

    /// Runs once and returns the time spent in each layer, in execution order.
    pub fn profile(&self, x: &Tensor) -> Result<(Vec<Tensor>, Vec<LayerTime>)> {
        let n = self.check_input(x.shape())?;
        let mut outs = self.output_tensors(x.shape())?;
        let mut times = vec![Duration::ZERO; self.steps.len()];
        self.run_timed(x.shape(), x.data(), &mut outs, Some(&mut times))?;
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

    fn take_workspace(&self) -> Result<Workspace> {
        let idle = self.workspaces.lock().ok().and_then(|mut pool| pool.pop());
        match idle {
            Some(ws) => Ok(ws),
            None => {
                // A workspace is made at a run, maybe long after the compile whose page
                // costs the process remembers: measure afresh (`memory::FaultCosts`).
                crate::memory::forget_fault_costs();
                let ws = Workspace {
                    arena: AlignedBuf::zeroed(self.arena_len, "the activation arena")?,
                    scratch: AlignedBuf::zeroed(self.scratch_len, "kernel scratch memory")?,
                };
                crate::memory::settle_later();
                Ok(ws)
            }
        }
    }

    fn run_timed(
        &self,
        shape: &[usize],
        data: &[f32],
        outputs: &mut [Tensor],
        mut profile: Option<&mut [Duration]>,
    ) -> Result<()> {
        let n = self.check_input(shape)?;
        if n.checked_mul(self.input_shape.len()) != Some(data.len()) {
            return Err(Error::Input(format!(
                "the input of shape {} holds {} values",
                crate::tensor::fmt_shape(shape),
                data.len()
            )));
        }
        if outputs.len() != self.outputs.len() {
            return Err(Error::Input(format!(
                "the model has {} output(s), got {} buffers",
                self.outputs.len(),
                outputs.len()
            )));
        }
        for (t, o) in outputs.iter().zip(&self.outputs) {
            let s = o.shape;
            if !s.is_dims(n, t.shape()) {
                return Err(Error::Input(format!(
                    "output buffer has shape {}, expected {}",
                    crate::tensor::fmt_shape(t.shape()),
                    crate::tensor::fmt_shape(&s.dims(n))
                )));
            }
        }
        // The background collapse of small-page chunks waits while any run is in progress.
        let _running = crate::memory::RunGuard::new();
        let mut ws = self.take_workspace()?;
        let result = (|| {
            for chunk_start in (0..n).step_by(self.batch) {
                let items = self.batch.min(n - chunk_start);
                self.run_chunk(data, outputs, chunk_start, items, &mut ws, &mut profile)?;
            }
            Ok(())
        })();
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
        result
    }

    /// Runs items `start..start + items` of the caller's input (`data`) into `outputs`.
    /// A full chunk is read where the caller has it if it starts on a cache line
    /// ([`starts_on_line`]), and the outputs written in place go straight into the caller's
    /// tensors, on a line or not (off one by 16 bytes, a ResNet bottleneck block's 3.2 MB
    /// output written there took 0.94-0.95x the time of one copied out of the arena); a last,
    /// partial chunk goes through the arena, its missing items zero.
    fn run_chunk(
        &self,
        data: &[f32],
        outputs: &mut [Tensor],
        start: usize,
        items: usize,
        ws: &mut Workspace,
        profile: &mut Option<&mut [Duration]>,
    ) -> Result<()> {
        let item_in = self.input_shape.len();
        let src = &data[start * item_in..(start + items) * item_in];
        let full = items == self.batch;
        let read_in_place = full && starts_on_line(src);
        if !read_in_place {
            let dst = &mut ws.arena.as_mut_slice()[self.input.range()][..self.batch * item_in];
            self.copy(src, &mut dst[..src.len()]);
            dst[src.len()..].fill(0.0);
        }
        for (i, step) in self.steps.iter().enumerate() {
            let t = profile.is_some().then(Instant::now);
            let direct = match step.writes_output {
                Some((j, at)) if full => {
                    let len = self.outputs[j].shape.len();
                    let span = (self.batch - 1) * step.output.stride + step.output.item;
                    Some(&mut outputs[j].data_mut()[start * len + at..][..span])
                }
                _ => None,
            };
            if let Some(p) = &self.pool {
                p.set_tag(i);
            }
            self.run_step(step, ws, read_in_place.then_some(src), direct)?;
            if let (Some(p), Some(t)) = (profile.as_deref_mut(), t) {
                p[i] += t.elapsed();
            }
        }
        for (t, o) in outputs.iter_mut().zip(&self.outputs) {
            let len = o.shape.len();
            let dst = &mut t.data_mut()[start * len..(start + items) * len];
            if o.is_model_input {
                self.copy(src, dst);
            } else if !(full && o.in_place) {
                self.copy(
                    &ws.arena.as_mut_slice()[o.region.range()][..items * len],
                    dst,
                );
            }
        }
        Ok(())
    }

    /// Copies `src` into `dst` (the same length), on the pool when it is large enough to
    /// pay for the hand-off: a concat's inputs, and the model's input and outputs going into
    /// and out of the arena (3.2 MB each way in a ResNet bottleneck block).
    fn copy(&self, src: &[f32], dst: &mut [f32]) {
        let moved = src.len() as u64 * FLOPS_PER_FLOAT_MOVED;
        match self
            .pool
            .as_ref()
            .filter(|_| moved >= self.parallel_min_work)
        {
            Some(p) => p.split_slice(dst, 16, |from, part| {
                part.copy_from_slice(&src[from..from + part.len()])
            }),
            None => dst.copy_from_slice(src),
        }
    }

    /// Runs one step on the arena; `model_input`: the caller's input chunk, when the
    /// run reads it in place; `direct_output`: where in a caller's output tensor the step
    /// writes, when it does.
    fn run_step(
        &self,
        step: &Step,
        ws: &mut Workspace,
        model_input: Option<&[f32]>,
        direct_output: Option<&mut [f32]>,
    ) -> Result<()> {
        let b = self.batch;
        let (ins, out) = match direct_output {
            Some(out) => (Inputs::all(ws.arena.as_mut_slice()), out),
            None => split_io(ws.arena.as_mut_slice(), step.output.region),
        };
        let ins = ins.with_model_input(model_input);
        let scratch = ws.scratch.as_mut_slice();
        let item = step.output.item;
        // Large layers are split across the pool; small ones run here, since handing
        // work to another thread costs more than they take.
        let work = step.work_per_item * b as u64;
        let pool = self
            .pool
            .as_ref()
            .filter(|_| work >= self.parallel_min_work);
        let n_in = step.inputs.len();
        if let Code::Fc { k, packed } = &step.code {
            // One call for the whole chunk: the weights are read once for every item. Its
            // values are never placed in a concat, so their items are back to back.
            let x = step.chunk(&ins, 0, b * step.inputs[0].item)?;
            let residual = (n_in > 1)
                .then(|| step.chunk(&ins, 1, b * item))
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
            self.run_item(step, &ins, n, o, scratch, pool)?;
        }
        Ok(())
    }

    /// Batch item `n` of a step that runs item by item (not fc), into `o`.
    fn run_item(
        &self,
        step: &Step,
        ins: &Inputs,
        n: usize,
        o: &mut [f32],
        scratch: &mut [f32],
        pool: Option<&ThreadPool>,
    ) -> Result<()> {
        match &step.code {
            Code::Conv { k, packed } => {
                let x = step.item(ins, 0, n)?;
                let residual = step.residual(ins, n, k.spec().residual_in_place)?;
                match pool {
                    Some(p) => k.run_parallel(p, x, packed, residual, o, scratch)?,
                    None => k.run(x, packed, residual, o, scratch, 0..k.work_units())?,
                }
            }
            Code::Pool(k) => {
                let x = step.item(ins, 0, n)?;
                match pool {
                    Some(p) => k.run_parallel(p, x, o, scratch)?,
                    None => k.run(x, o, scratch, 0..k.work_units())?,
                }
            }
            Code::Depthwise { k, packed } => {
                let x = step.item(ins, 0, n)?;
                let residual = step.residual(ins, n, false)?;
                match pool {
                    Some(p) => k.run_parallel(p, x, packed, residual, o, scratch)?,
                    None => k.run(x, packed, residual, o, scratch, 0..k.work_units())?,
                }
            }
            Code::Elt { k, consts } => {
                // The operands (batch item `n` of every input, then the constants) as
                // a list on the stack; a heap list only beyond STACK_ARGS operands.
                let n_in = step.inputs.len();
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
                    *a = step.item(ins, i, n)?;
                }
                for (a, c) in args[n_in..].iter_mut().zip(consts) {
                    *a = c;
                }
                match pool {
                    Some(p) => k.run_parallel(p, args, o)?,
                    None => k.run_all(args, o)?,
                }
            }
            Code::Copy(at) => {
                for (i, &at) in at.iter().enumerate() {
                    let x = step.item(ins, i, n)?;
                    self.copy(x, &mut o[at..at + x.len()]);
                }
            }
            Code::Pad { pad, input } => pad_item(step.item(ins, 0, n)?, input, pad, o),
            Code::Host(op) => op.run(step.item(ins, 0, n)?, o),
            Code::Polyphase { plan, convs } => {
                let x = step.item(ins, 0, n)?;
                super::host::polyphase(plan, convs, x, o, scratch, pool)?
            }
            Code::GroupedConv { k, packed } => {
                let x = step.item(ins, 0, n)?;
                let residual = step.residual(ins, n, false)?;
                // Each group's input and output channels are one contiguous block.
                let groups = packed.len();
                let (xg, og) = (x.len() / groups, o.len() / groups);
                for (gi, ps) in packed.iter().enumerate() {
                    let xs = &x[gi * xg..(gi + 1) * xg];
                    let os = &mut o[gi * og..(gi + 1) * og];
                    let rs = residual.map(|r| &r[gi * og..(gi + 1) * og]);
                    match pool {
                        Some(p) => k.run_parallel(p, xs, ps, rs, os, scratch)?,
                        None => k.run(xs, ps, rs, os, scratch, 0..k.work_units())?,
                    }
                }
            }
            Code::Fc { .. } => {
                return Err(Error::Internal(format!(
                    "{}: fc runs whole chunks",
                    step.name
                )))
            }
        }
        Ok(())
    }
}

/// How much work a step does per item, for choosing whether to split it across threads:
/// the FLOPs of a convolution or fc, and for memory-bound steps what their time would be
/// in FLOPs of a convolution ([`FLOPS_PER_FLOAT_MOVED`], [`FLOPS_PER_WINDOW_ELEMENT`]).
fn parallel_work(code: &Code, flops: u64, out_floats: usize) -> u64 {
    let out = out_floats as u64;
    match code {
        Code::Pool(k) => {
            let s = k.spec();
            out * (s.kernel_h * s.kernel_w) as u64 * FLOPS_PER_WINDOW_ELEMENT
        }
        Code::Elt { k, .. } => {
            let floats = match *k.spec() {
                EltSpec::Add { inputs, len, .. } => (inputs + 1) * len,
                EltSpec::GlobalAvgPool { channels, hw } => channels * hw,
                _ => 2 * out_floats,
            };
            floats as u64 * FLOPS_PER_FLOAT_MOVED / 2
        }
        // A copy decides per input (`run_step`).
        Code::Copy(_) => out * FLOPS_PER_FLOAT_MOVED,
        _ => flops.max(out),
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
