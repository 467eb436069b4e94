//! What every engine can run, checked when a graph is loaded: anything `info` accepts,
//! the interpreter and the JIT both run. The JIT's generated code addresses one image's
//! tensors with 32-bit byte offsets and bounds every dimension before doing arithmetic
//! on it; those limits are stated here once, and refused with the layer's name.
use super::{Graph, NodeId, Op};
use crate::error::{Error, Result};

/// Upper bound on any one dimension (channels, height, width, filter, stride, pad,
/// units), and on the elements per image of an elementwise layer (relu, add, ...).
pub const MAX_DIM: usize = 1 << 24;

/// Bytes of one image's tensor (or one weight tensor, with 8 rows of packing slack):
/// half the i32 range, so that offsets computed from it cannot overflow.
pub const MAX_TENSOR_BYTES: usize = i32::MAX as usize / 2;

/// The most inputs one `add` may have.
pub const MAX_ADD_INPUTS: usize = 1024;

/// Checks every layer of a graph whose shapes are inferred.
pub fn check(g: &Graph) -> Result<()> {
    for id in g.topo_order()? {
        if id != g.input {
            check_node(g, id)?;
        }
    }
    Ok(())
}

/// Checks the limits that depend on the batch: an fc kernel takes the whole batch at
/// once, so its input and output of `batch` items must fit what it addresses.
pub fn check_batch(g: &Graph, batch: usize) -> Result<()> {
    for id in g.topo_order()? {
        if !matches!(g.node(id).op, Op::Fc(_)) {
            continue;
        }
        let x = g.inputs(id).first().map_or(0, |&i| g.node(i).shape.len());
        let features = x.max(g.node(id).shape.len()).max(1);
        let most = (MAX_TENSOR_BYTES / 4 / features).min(MAX_DIM);
        if batch > most {
            return Err(refuse(
                g,
                id,
                format!(
                    "a batch of {batch} takes {batch}x{features} floats at once, more than the {} MiB an fc kernel addresses; use a batch of at most {most}",
                    MAX_TENSOR_BYTES >> 20
                ),
            ));
        }
    }
    Ok(())
}

fn refuse(g: &Graph, id: NodeId, what: String) -> Error {
    Error::Unsupported(format!("{}: {what}", g.node(id).name))
}

fn bytes(dims: &[usize]) -> u128 {
    dims.iter().fold(4u128, |b, &d| b.saturating_mul(d as u128))
}

fn check_node(g: &Graph, id: NodeId) -> Result<()> {
    let node = g.node(id);
    let out = node.shape;
    let inputs = g.inputs(id);
    let x = inputs.first().map(|&i| g.node(i).shape).unwrap_or(out);
    for (what, d) in [
        ("output channels", out.c),
        ("output height", out.h),
        ("output width", out.w),
        ("input channels", x.c),
        ("input height", x.h),
        ("input width", x.w),
    ] {
        if d > MAX_DIM {
            return Err(refuse(
                g,
                id,
                format!("its {what} ({d}) is over the limit of {MAX_DIM} (2^24)"),
            ));
        }
    }
    if let Some(win) = &node.note.window {
        for (axis, a) in [("height", &win.h), ("width", &win.w)] {
            for (what, v) in [
                ("window", a.f),
                ("stride", a.s),
                ("pad", a.p),
                ("end pad", a.p_end),
            ] {
                if v > MAX_DIM {
                    return Err(refuse(
                        g,
                        id,
                        format!(
                            "its {axis} {what} of {v} is more than the limit of {MAX_DIM} (2^24)"
                        ),
                    ));
                }
            }
        }
        let padded = [
            x.c,
            win.h.n + win.h.p + win.h.p_end,
            win.w.n + win.w.p + win.w.p_end,
        ];
        if bytes(&padded) > MAX_TENSOR_BYTES as u128 {
            return Err(refuse(g, id, format!(
                "its padded input {}x{}x{} takes more than {} MiB per image, the most a JIT kernel addresses",
                padded[0], padded[1], padded[2], MAX_TENSOR_BYTES >> 20
            )));
        }
    }
    if bytes(&[out.c, out.h, out.w]) > MAX_TENSOR_BYTES as u128 {
        return Err(refuse(
            g,
            id,
            format!(
            "its output {out} takes more than {} MiB per image, the most a JIT kernel addresses",
            MAX_TENSOR_BYTES >> 20
        ),
        ));
    }
    for (suffix, shape) in crate::weights::expected_params(g, id) {
        let mut padded = shape.clone();
        padded[0] += 8;
        if bytes(&padded) > MAX_TENSOR_BYTES as u128 {
            return Err(refuse(
                g,
                id,
                format!(
                    "its {suffix} of shape {} takes more than the {} MiB a JIT kernel addresses",
                    crate::tensor::fmt_shape(&shape),
                    MAX_TENSOR_BYTES >> 20
                ),
            ));
        }
    }
    for &i in &inputs {
        let s = g.node(i).shape;
        if bytes(&[s.c, s.h, s.w]) > MAX_TENSOR_BYTES as u128 {
            return Err(refuse(g, id, format!(
                "its input `{}` ({s}) takes more than {} MiB per image, the most a JIT kernel addresses",
                g.node(i).name,
                MAX_TENSOR_BYTES >> 20
            )));
        }
    }
    // Elementwise kernels loop over one image's elements (relu, add) or over each
    // channel's plane (softmax, batchnorm's scale-shift, global average pool); fc over
    // its input features.
    let kind = node.op.kind();
    let loop_len = match node.op {
        Op::Relu | Op::Add => Some((out.len().max(x.len()), format!("a {kind} over"))),
        Op::Softmax | Op::BatchNorm { .. } | Op::ScaleShift | Op::GlobalAvgPool => {
            Some((x.h * x.w, format!("a {kind} over planes of")))
        }
        Op::Fc(_) => Some((x.len(), "an fc of".to_string())),
        _ => None,
    };
    if let Some((n, what)) = loop_len.filter(|&(n, _)| n > MAX_DIM) {
        let unit = if matches!(node.op, Op::Fc(_)) {
            "input features"
        } else {
            "elements"
        };
        return Err(refuse(
            g,
            id,
            format!("{what} {n} {unit} is more than the limit of {MAX_DIM} (2^24)"),
        ));
    }
    if matches!(node.op, Op::Add) && inputs.len() > MAX_ADD_INPUTS {
        return Err(refuse(g, id, format!(
            "an add of {} inputs is more than the limit of {MAX_ADD_INPUTS}; add them in several layers",
            inputs.len()
        )));
    }
    Ok(())
}
