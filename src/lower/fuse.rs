//! Fusions of steps on the plan, before the memory passes: work the IR passes leave to
//! separate layers that one kernel can do in the same sweep over its output.
use super::{Kernel, Plan, Storage, ValueId};
use crate::jit::EltSpec;

/// A ReLU step whose input is made by an unfused elementwise scale-shift (a batchnorm the
/// passes could not fold, DenseNet's 62 `batchnorm -> relu` before each conv) or add,
/// and read by nothing else, becomes that step's `relu`: one pass over the tensor instead
/// of two. The scale-shift and add kernels apply the same ReLU to the same values as the
/// ReLU kernel would, so the results are bit-identical. The ReLU's value becomes a view
/// of the fused step's output (as flatten's is of its input); not when the input is a
/// graph output (it must stay without the ReLU) or has views.
pub fn fuse_relu_into_elementwise(plan: &mut Plan) {
    let producer = plan.producers();
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
        let (x, out): (ValueId, ValueId) = (plan.steps[r].inputs[0], plan.steps[r].output);
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
    let mut i = 0;
    plan.steps.retain(|_| {
        i += 1;
        !pairs.iter().any(|&(r, _)| r == i - 1)
    });
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
