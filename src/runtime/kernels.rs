//! Instantiating a [`Plan`]: one generated kernel per distinct spec, and each conv and fc
//! step's weights packed for its kernel (on the model's thread pool).
use crate::error::{Error, Result};
use crate::ir::{Graph, Hw, NodeId, Pad, Shape};
use crate::jit::{
    pack_depthwise_weights, Compiled, ConvKernel, ConvMethod, ConvSpec, DepthwiseKernel,
    DepthwiseSpec, EltKernel, EltSpec, FcKernel, FcSpec, KernelListing, KernelModule, Pending,
    PendingConv, PendingDepthwise, PendingElt, PendingFc, PendingPool, PoolKernel, PoolSpec,
    ThreadPool,
};
use crate::lower::{HostOp, Kernel, Plan, Polyphase, Step};
use crate::memory::HugeBuf;
use crate::options::Isa;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A step's machine code and the constants it reads.
pub(super) enum Code {
    Conv {
        k: Arc<ConvKernel>,
        packed: HugeBuf,
    },
    Fc {
        k: Arc<FcKernel>,
        packed: HugeBuf,
    },
    Pool(Arc<PoolKernel>),
    Depthwise {
        k: Arc<DepthwiseKernel>,
        packed: HugeBuf,
    },
    /// `consts` are extra inputs (batchnorm's scale and shift).
    Elt {
        k: Arc<EltKernel>,
        consts: Vec<Vec<f32>>,
    },
    /// Copies each input item to its float offset in the output item (a concat).
    Copy(Vec<usize>),
    /// Each plane copied into a larger one filled with the pad value (done in Rust).
    Pad {
        pad: Pad,
        input: Shape,
    },
    /// One group's conv kernel and each group's packed weights.
    GroupedConv {
        k: Arc<ConvKernel>,
        packed: Vec<HugeBuf>,
    },
    /// A plain loop per item ([`super::host`]).
    Host(HostOp),
    /// A dilated conv on its input's phases: each distinct phase convolution's kernel and
    /// packed weights (in the order of [`Polyphase::convs`]).
    Polyphase {
        plan: Polyphase,
        convs: Vec<(Arc<ConvKernel>, HugeBuf)>,
    },
}

/// Every step's code, in the plan's order, and what it took to make.
pub(super) struct Instantiated {
    pub code: Vec<Code>,
    pub listings: Vec<KernelListing>,
    pub packing_time: Duration,
    /// Functions found in the process's cache of compiled code, and compiled.
    pub code_cache_counts: crate::jit::module::CodeCacheCounts,
}

/// The kernels of one module before finalization, one per distinct spec.
#[derive(Default)]
struct Generated {
    conv: HashMap<(ConvSpec, ConvMethod), PendingConv>,
    fc: HashMap<(FcSpec, Isa), PendingFc>,
    pool: HashMap<(PoolSpec, Isa), PendingPool>,
    depthwise: HashMap<DepthwiseSpec, PendingDepthwise>,
    elt: HashMap<EltSpec, PendingElt>,
    conv_pool: HashMap<(ConvSpec, PoolSpec, Isa), PendingConv>,
}

/// Adds the kernel for `key` unless the module has it already.
fn once<K: Hash + Eq, P>(
    map: &mut HashMap<K, P>,
    key: K,
    add: impl FnOnce() -> Result<P>,
) -> Result<()> {
    if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
        e.insert(add()?);
    }
    Ok(())
}

/// Generates the kernels of `plan` in `module` (each labelled with its first layer).
fn generate(plan: &Plan, module: &mut KernelModule) -> Result<Generated> {
    let mut gen = Generated::default();
    // Kernels that do not carry their ISA take the module's: the plan's, not a default.
    module.set_isa(plan.isa)?;
    for s in &plan.steps {
        module.set_label(&s.name);
        add_kernel(&mut gen, module, s).map_err(|e| e.in_layer(&s.name))?;
    }
    Ok(gen)
}

/// Adds the kernel of step `s` unless `gen` has it already.
fn add_kernel(gen: &mut Generated, module: &mut KernelModule, s: &Step) -> Result<()> {
    match &s.kernel {
        Kernel::Conv { spec, method, isa } => once(&mut gen.conv, (*spec, *method), || {
            module.set_isa(*isa)?;
            module.add_conv_with(spec, *method)
        }),
        Kernel::GroupedConv {
            spec, method, isa, ..
        } => once(&mut gen.conv, (*spec, *method), || {
            module.set_isa(*isa)?;
            module.add_conv_with(spec, *method)
        }),
        Kernel::Fc { spec, isa } => once(&mut gen.fc, (*spec, *isa), || {
            module.set_isa(*isa)?;
            module.add_fc(spec)
        }),
        Kernel::Pool { spec, isa } => once(&mut gen.pool, (*spec, *isa), || {
            module.set_isa(*isa)?;
            module.add_pool(spec)
        }),
        Kernel::Depthwise(spec) => once(&mut gen.depthwise, *spec, || module.add_depthwise(spec)),
        Kernel::Polyphase(p) => p.convs.iter().try_for_each(|(spec, method)| {
            once(&mut gen.conv, (*spec, *method), || {
                module.add_conv_with(spec, *method)
            })
        }),
        Kernel::Elementwise { spec, .. } => {
            once(&mut gen.elt, *spec, || module.add_elementwise(spec))
        }
        Kernel::ConvMaxPool { conv, pool, isa } => {
            once(&mut gen.conv_pool, (*conv, *pool, *isa), || {
                module.set_isa(*isa)?;
                module.add_conv_max_pool(conv, pool)
            })
        }
        Kernel::Copy { .. } | Kernel::Pad { .. } | Kernel::Host(_) => Ok(()),
    }
}

/// Each pending kernel of `map` made callable.
fn bind<K: Hash + Eq, P: Pending>(
    code: &Arc<Compiled>,
    map: HashMap<K, P>,
) -> Result<HashMap<K, Arc<P::Kernel>>> {
    map.into_iter()
        .map(|(k, p)| Ok((k, Arc::new(code.get(p)?))))
        .collect()
}

fn param<'a>(g: &'a Graph, id: NodeId, suffix: &str) -> Result<&'a [f32]> {
    let node = g.node(id);
    node.param(suffix)
        .map(|t| t.data())
        .ok_or_else(|| Error::Weights(format!("{}: parameter `{suffix}` is not bound", node.name)))
}

/// A layer's weight and (if its spec has one) bias.
fn weights(g: &Graph, id: NodeId, bias: bool) -> Result<(&[f32], Option<&[f32]>)> {
    let b = bias.then(|| param(g, id, "bias")).transpose()?;
    Ok((param(g, id, "weight")?, b))
}

/// A step's weight packing: one buffer, or one per piece of a step that runs several
/// kernel calls (a grouped conv's groups, a dilated conv's phase convolutions).
type PackJob<'a> = Box<dyn Fn() -> Result<Vec<HugeBuf>> + Send + Sync + 'a>;

/// The packing job of a step, if its kernel reads packed weights.
fn pack_job<'a>(g: &'a Graph, gen: &'a Generated, s: &Step) -> Result<Option<PackJob<'a>>> {
    Ok(match &s.kernel {
        Kernel::Conv { spec, method, .. } => {
            let (w, b) = weights(g, s.layer, spec.bias)?;
            let k = gen
                .conv
                .get(&(*spec, *method))
                .ok_or_else(|| Error::Internal(format!("{}: no kernel generated", s.name)))?;
            Some(Box::new(move || Ok(vec![k.pack_weights(w, b)?])))
        }
        Kernel::ConvMaxPool { conv, pool, isa } => {
            let (w, b) = weights(g, s.layer, conv.bias)?;
            let k = (gen.conv_pool.get(&(*conv, *pool, *isa)))
                .ok_or_else(|| Error::Internal(format!("{}: no kernel generated", s.name)))?;
            Some(Box::new(move || Ok(vec![k.pack_weights(w, b)?])))
        }
        Kernel::Fc { spec, isa } => {
            let (w, b) = weights(g, s.layer, spec.bias)?;
            let k = gen
                .fc
                .get(&(*spec, *isa))
                .ok_or_else(|| Error::Internal(format!("{}: no kernel generated", s.name)))?;
            Some(Box::new(move || Ok(vec![k.pack_weights(w, b)?])))
        }
        Kernel::Depthwise(spec) => {
            let (w, b) = weights(g, s.layer, spec.bias)?;
            let spec = *spec;
            Some(Box::new(move || {
                let packed = pack_depthwise_weights(&spec, w, b)?;
                Ok(vec![HugeBuf::from_vec(packed, "packed weights")?])
            }))
        }
        Kernel::Polyphase(p) => {
            let (w, b) = weights(g, s.layer, p.convs[0].0.bias)?;
            let kernels = (p.convs.iter())
                .map(|key| {
                    gen.conv
                        .get(key)
                        .ok_or_else(|| Error::Internal(format!("{}: no kernel generated", s.name)))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Box::new(move || {
                kernels.iter().map(|k| k.pack_weights(w, b)).collect()
            }))
        }
        Kernel::GroupedConv {
            spec,
            method,
            groups,
            size,
            dilation,
            ..
        } => {
            let (w, b) = weights(g, s.layer, spec.bias)?;
            let k = gen
                .conv
                .get(&(*spec, *method))
                .ok_or_else(|| Error::Internal(format!("{}: no kernel generated", s.name)))?;
            let (groups, size, dilation, kg) = (*groups, *size, *dilation, spec.out_c);
            let per_group = w.len() / groups;
            Some(Box::new(move || {
                (0..groups)
                    .map(|gi| {
                        let wg = dilated(&w[gi * per_group..(gi + 1) * per_group], size, dilation);
                        k.pack_weights(&wg, b.map(|b| &b[gi * kg..(gi + 1) * kg]))
                    })
                    .collect()
            }))
        }
        _ => None,
    })
}

/// Filters of `size` taps, each spread `d` apart with zeros between (the dense kernel
/// then runs the dilated filter's extent `d*(size-1)+1`).
fn dilated(w: &[f32], size: Hw, d: Hw) -> Vec<f32> {
    if d.is(1) {
        return w.to_vec();
    }
    let (eh, ew) = (d.h * (size.h - 1) + 1, d.w * (size.w - 1) + 1);
    let filters = w.len() / (size.h * size.w);
    let mut out = vec![0.0; filters * eh * ew];
    for f in 0..filters {
        for i in 0..size.h {
            for j in 0..size.w {
                out[(f * eh + i * d.h) * ew + j * d.w] = w[(f * size.h + i) * size.w + j];
            }
        }
    }
    out
}

/// Generates the code of every step of `plan` (whose weights are `g`'s) and packs the
/// weights.
pub(super) fn instantiate(
    plan: &Plan,
    g: &Graph,
    keep_listings: bool,
    pool: Option<&ThreadPool>,
) -> Result<Instantiated> {
    let mut module = KernelModule::new()?;
    // Kernels whose unit order follows the pool's split ([`KernelModule::set_threads`]).
    module.set_threads(pool.map_or(1, ThreadPool::threads));
    if keep_listings {
        module.keep_listings();
    }
    let gen = generate(plan, &mut module)?;
    let PackedWeights {
        mut by_job,
        job_of,
        time: packing_time,
    } = compile_and_pack(plan, g, &gen, &mut module, pool)?;
    let listings = module.take_listings();
    let code_cache_counts = module.code_cache_counts();
    let code = module.finalize()?;

    let (conv, fc) = (bind(&code, gen.conv)?, bind(&code, gen.fc)?);
    let (pool_k, elt) = (bind(&code, gen.pool)?, bind(&code, gen.elt)?);
    let depthwise = bind(&code, gen.depthwise)?;
    let conv_pool = bind(&code, gen.conv_pool)?;
    let missing = || Error::Internal("a step's kernel was not generated".into());
    let mut steps = Vec::with_capacity(plan.steps.len());
    for (s, job) in plan.steps.iter().zip(job_of) {
        let no_weights = || Error::Internal(format!("{}: no packed weights", s.name));
        let mut take = || job.and_then(|j| by_job[j].take()).ok_or_else(no_weights);
        // A step that runs one kernel call has one packed buffer.
        let mut take_one = || take()?.pop().ok_or_else(no_weights);
        steps.push(match &s.kernel {
            Kernel::Conv { spec, method, .. } => Code::Conv {
                k: conv.get(&(*spec, *method)).ok_or_else(missing)?.clone(),
                packed: take_one()?,
            },
            Kernel::ConvMaxPool { conv, pool, isa } => Code::Conv {
                k: (conv_pool.get(&(*conv, *pool, *isa)))
                    .ok_or_else(missing)?
                    .clone(),
                packed: take_one()?,
            },
            Kernel::Fc { spec, isa } => Code::Fc {
                k: fc.get(&(*spec, *isa)).ok_or_else(missing)?.clone(),
                packed: take_one()?,
            },
            Kernel::Pool { spec, isa } => {
                Code::Pool(pool_k.get(&(*spec, *isa)).ok_or_else(missing)?.clone())
            }
            Kernel::Depthwise(spec) => Code::Depthwise {
                k: depthwise.get(spec).ok_or_else(missing)?.clone(),
                packed: take_one()?,
            },
            Kernel::Elementwise { spec, consts } => Code::Elt {
                k: elt.get(spec).ok_or_else(missing)?.clone(),
                consts: consts.clone(),
            },
            Kernel::Copy { at } => Code::Copy(at.clone()),
            Kernel::Pad { pad, input } => Code::Pad {
                pad: pad.clone(),
                input: *input,
            },
            Kernel::GroupedConv { spec, method, .. } => Code::GroupedConv {
                k: conv.get(&(*spec, *method)).ok_or_else(missing)?.clone(),
                packed: take()?,
            },
            Kernel::Host(op) => Code::Host(op.clone()),
            Kernel::Polyphase(p) => {
                let kernels = (p.convs.iter())
                    .map(|key| conv.get(key).cloned().ok_or_else(missing))
                    .collect::<Result<Vec<_>>>()?;
                let packed = take()?;
                if packed.len() != kernels.len() {
                    return Err(Error::Internal(format!(
                        "{}: {} phase convolutions, {} packed",
                        s.name,
                        kernels.len(),
                        packed.len()
                    )));
                }
                Code::Polyphase {
                    plan: p.clone(),
                    convs: kernels.into_iter().zip(packed).collect(),
                }
            }
        });
    }
    Ok(Instantiated {
        code: steps,
        listings,
        packing_time,
        code_cache_counts,
    })
}

/// Every step's packed weights, from [`compile_and_pack`].
struct PackedWeights {
    /// Each job's buffers, until a step takes them.
    by_job: Vec<Option<Vec<HugeBuf>>>,
    /// Each step's job (none for a step without weights).
    job_of: Vec<Option<usize>>,
    /// The packing's estimated share of the phase's time.
    time: Duration,
}

/// Compiles `module`'s pending functions and packs every step's weights, on `pool`'s
/// threads.
fn compile_and_pack(
    plan: &Plan,
    g: &Graph,
    gen: &Generated,
    module: &mut KernelModule,
    pool: Option<&ThreadPool>,
) -> Result<PackedWeights> {
    // Each compile measures afresh which page size its packed weights are faulted in
    // cheaper (the host's memory changes within seconds; `memory::HugeBuf`).
    crate::memory::forget_fault_costs();
    let mut jobs = Vec::new();
    let mut job_ns = Vec::new();
    let mut job_of = Vec::with_capacity(plan.steps.len());
    for s in &plan.steps {
        job_of.push(pack_job(g, gen, s)?.map(|j| {
            jobs.push(j);
            // About a nanosecond a weight (vgg_cifar: 3.2 M weights packed in ~3.4 ms),
            // to order the jobs.
            job_ns.push(param(g, s.layer, "weight").map_or(0, |w| w.len() as u64));
            jobs.len() - 1
        }));
    }
    // The weights are packed on the threads that compile the functions, in one list of
    // jobs (each thread takes the next, longest first): at two threads a thread done with
    // its share of one kind goes on with the other.
    let packing_ns = std::sync::atomic::AtomicU64::new(0);
    let pack = |i: usize| {
        let t = Instant::now();
        let out = jobs[i]();
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        packing_ns.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        out
    };
    // `CNNC_PACK_WITH_CODE=0`: the functions compiled first, then the weights packed (a
    // measuring knob).
    let (phase, cpu0) = (Instant::now(), module.compile_cpu());
    let packed = if crate::knobs::off("CNNC_PACK_WITH_CODE") {
        module.compile_pending(pool)?;
        crate::jit::threads::run_jobs(jobs.len(), pool, || (), |_, i| pack(i))?
    } else {
        module.compile_pending_with(pool, &job_ns, pack)?
    };
    let packed: Vec<Option<Vec<HugeBuf>>> = packed.into_iter().map(Some).collect();
    drop(jobs);
    // The packing's share of the phase, by the jobs' times summed over the threads against
    // the phase's CPU time (an estimate: the phase also installs the code).
    let (pack, cpu) = (
        packing_ns.into_inner() as f64,
        module.compile_cpu().saturating_sub(cpu0).as_nanos() as f64,
    );
    let packing_time = phase.elapsed().mul_f64(pack / (pack + cpu).max(1.0));
    Ok(PackedWeights {
        by_job: packed,
        job_of,
        time: packing_time,
    })
}
