//! Fusions of steps on the plan, before the memory passes: work the IR passes leave to
//! separate layers that one kernel can do in the same sweep over its output.
use super::{Kernel, Plan, Storage, ValueId};
use crate::jit::{conv_max_pool_fuses, ConvMethod, EltSpec};

/// A ReLU step whose input is made by an unfused elementwise scale-shift (a batchnorm the
/// passes could not fold, DenseNet's 62 `batchnorm -> relu` before each conv) or add,
/// and read by nothing else, becomes that step's `relu`: one pass over the tensor instead
/// of two. The scale-shift and add kernels apply the same ReLU to the same values as the
/// ReLU kernel would, so the results are bit-identical. The ReLU's value becomes a view
/// of the fused step's output (as flatten's is of its input); not when the input is a
/// graph output (it must stay without the ReLU) or has views.
pub fn fuse_relu_into_elementwise(plan: &mut Plan) {
    let producer = plan.producers();
    let readers = readers(plan);
    // (ReLU step, producer step) pairs.
    let pairs: Vec<(usize, usize)> = plan
        .steps
        .iter()
        .enumerate()
        .filter_map(|(r, relu)| {
            let is_relu = matches!(
                relu.kernel,
                Kernel::Elementwise {
                    spec: EltSpec::Relu { .. },
                    ..
                }
            );
            let &[x] = relu.inputs.as_slice() else {
                return None;
            };
            let p = producer[x]?;
            let alone = readers[x] == 1 && !plan.outputs.contains(&x);
            let fusable = is_relu
                && alone
                && plan.values[x].storage == Storage::Buffer
                && takes_relu(&plan.steps[p]);
            fusable.then_some((r, p))
        })
        .collect();
    for &(r, p) in &pairs {
        let (x, out) = (plan.steps[r].inputs[0], plan.steps[r].output);
        if let Kernel::Elementwise {
            spec: EltSpec::ScaleShift { relu, .. } | EltSpec::Add { relu, .. },
            ..
        } = &mut plan.steps[p].kernel
        {
            *relu = true;
        }
        plan.steps[p].op.push_str(" +relu");
        plan.values[out].storage = Storage::Alias(x);
    }
    remove_steps(plan, pairs.iter().map(|p| p.0));
}

/// Steps reading each value (and views of it).
fn readers(plan: &Plan) -> Vec<usize> {
    let mut readers = vec![0usize; plan.values.len()];
    for s in &plan.steps {
        for &i in &s.inputs {
            readers[i] += 1;
        }
    }
    for v in &plan.values {
        if let Storage::Alias(of) = v.storage {
            readers[of] += 1;
        }
    }
    readers
}

/// Removes the steps at the indices `gone`.
fn remove_steps(plan: &mut Plan, gone: impl Iterator<Item = usize>) {
    let gone: Vec<usize> = gone.collect();
    let mut i = 0;
    plan.steps.retain(|_| {
        i += 1;
        !gone.contains(&(i - 1))
    });
}

/// A conv (direct, few taps, unpadded: SqueezeNet's first layer) whose output only a max
/// pool reads, which the JIT computes as one kernel ([`crate::jit::conv_max_pool_fuses`]),
/// becomes that kernel's step: it reads the conv's input and writes the pool's output, so
/// the conv's output (3.2 MB in SqueezeNet) is neither written to memory nor read back.
/// The conv's value becomes a view of the pool's output (it has no buffer and no reader);
/// not when it is a graph output or has views. The same bits as the two steps.
pub fn fuse_max_pool_into_conv(plan: &mut Plan) {
    // `CNNC_FUSE_MAX_POOL=0` keeps the two steps (a measuring knob).
    if crate::knobs::off("CNNC_FUSE_MAX_POOL") {
        return;
    }
    let producer = plan.producers();
    let readers = readers(plan);
    // (pool step, conv step) pairs.
    let pairs: Vec<(usize, usize)> = (plan.steps.iter().enumerate())
        .filter_map(|(p, pool_step)| {
            let Kernel::Pool { spec: pool, isa } = pool_step.kernel else {
                return None;
            };
            let &[x] = pool_step.inputs.as_slice() else {
                return None;
            };
            let c = producer[x]?;
            let Kernel::Conv {
                spec,
                method,
                isa: conv_isa,
            } = plan.steps[c].kernel
            else {
                return None;
            };
            let alone = readers[x] == 1 && !plan.outputs.contains(&x);
            let fusable = alone
                && plan.values[x].storage == Storage::Buffer
                && method == ConvMethod::Direct
                && conv_isa == isa
                && conv_max_pool_fuses(&spec, &pool, isa);
            fusable.then_some((p, c))
        })
        .collect();
    for &(p, c) in &pairs {
        let (x, out): (ValueId, ValueId) = (plan.steps[p].inputs[0], plan.steps[p].output);
        let Kernel::Pool { spec: pool, .. } = plan.steps[p].kernel else {
            continue;
        };
        let pool_op = plan.steps[p].op.clone();
        let conv = &mut plan.steps[c];
        if let Kernel::Conv { spec, isa, .. } = conv.kernel {
            conv.kernel = Kernel::ConvMaxPool {
                conv: spec,
                pool,
                isa,
            };
        }
        conv.op = format!("{} +{pool_op}", conv.op);
        conv.output = out;
        plan.values[x].storage = Storage::Alias(out);
    }
    remove_steps(plan, pairs.iter().map(|p| p.0));
}

/// Whether `step` is a scale-shift or add without a ReLU yet.
fn takes_relu(step: &super::Step) -> bool {
    matches!(
        step.kernel,
        Kernel::Elementwise {
            spec: EltSpec::ScaleShift { relu: false, .. } | EltSpec::Add { relu: false, .. },
            ..
        }
    )
}
