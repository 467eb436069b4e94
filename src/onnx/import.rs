//! ONNX -> Graph. Each supported ONNX node becomes one layer named after the node
//! (made valid and unique), except Identity (an alias), Constant and the nodes folded
//! at import time (see [`super::constants`]), and the pieces of patterns: MatMul + Add
//! -> fc, Mul + Add by per-channel constants -> scale_shift, Reshape + Transpose +
//! Reshape -> channel_shuffle. Asymmetric conv pads become a `pad` layer before the conv.
//! Every node that cannot be imported is listed in one error, grouped by reason.
use super::constants::{self, Const, Data};
use super::export::{META_MEAN, META_STD};
use super::proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim, type_proto,
    AttributeProto, ModelProto, NodeProto,
};
use crate::error::{Error, Result};
use crate::ir::{
    shape, Clip, Conv, Epilogue, Fc, Graph, Hw, InputNorm, Lrn, NodeId, Op, Pad, Pool, Shape,
};
use crate::tensor::{fmt_shape, Tensor};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// The ONNX ops the importer reads.
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "Relu",
    "Clip",
    "LRN",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Gemm",
    "MatMul",
    "Add",
    "Sum",
    "Sub",
    "Mul",
    "Div",
    "Flatten",
    "Reshape",
    "Transpose",
    "Softmax",
    "Concat",
    "BatchNormalization",
    "Dropout",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "Unsqueeze",
    "Squeeze",
    "Pad",
];

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}
fn attr_int(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i())
}
fn attr_float(n: &NodeProto, name: &str) -> Option<f32> {
    attr(n, name).map(|a| a.f())
}
fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_str(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(a.s()).into_owned())
}

/// `node 3 `/conv1/Conv` (Conv)`: where a node is, for error messages.
fn at(i: usize, n: &NodeProto) -> String {
    if n.name().is_empty() {
        format!("node {i} ({})", n.op_type())
    } else {
        format!("node {i} `{}` ({})", n.name(), n.op_type())
    }
}

/// Why cnnc cannot take this node as it stands, judged from the node alone.
fn unsupported(n: &NodeProto) -> Option<String> {
    let op = n.op_type();
    if !n.domain().is_empty() && n.domain() != "ai.onnx" {
        return Some(format!("op of domain `{}`", n.domain()));
    }
    if !SUPPORTED.contains(&op) {
        return Some(format!("op {op} is not supported"));
    }
    let ones = |name: &str| attr_ints(n, name).is_none_or(|v| v.iter().all(|&d| d == 1));
    let two_d = |name: &str| attr_ints(n, name).is_none_or(|v| v.len() == 2);
    match op {
        "MaxPool" | "AveragePool" if !ones("dilations") => {
            Some("pooling with dilations other than 1".into())
        }
        "Conv" | "MaxPool" | "AveragePool"
            if !two_d("kernel_shape") || !two_d("strides") || !two_d("dilations") =>
        {
            Some("not a 2-D window".into())
        }
        "MaxPool" if attr_int(n, "storage_order").unwrap_or(0) != 0 => {
            Some("storage_order = 1".into())
        }
        "MaxPool" if n.output.len() > 1 && !n.output[1].is_empty() => {
            Some("the Indices output".into())
        }
        "Gemm" if attr_int(n, "transA").unwrap_or(0) != 0 => Some("transA = 1".into()),
        "BatchNormalization" if attr_int(n, "training_mode").unwrap_or(0) != 0 => {
            Some("training_mode = 1".into())
        }
        "Pad" if attr_str(n, "mode").is_some_and(|m| m != "constant") => Some(format!(
            "mode `{}` (cnnc pads with a constant)",
            attr_str(n, "mode")?
        )),
        _ => None,
    }
}

/// A layer name from a node name: PyTorch's `/features/features.0/Conv` ->
/// `features_features.0` (a last component naming the op type is dropped; characters
/// other than letters, digits, `_`, `.` and `-` become `_`).
fn layer_name(name: &str, op_type: &str) -> String {
    if let Some((scope, last)) = name.rsplit_once('/') {
        let is_op = last.strip_prefix(op_type).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('_')
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        });
        let scope = sanitize(scope);
        if is_op && !scope.is_empty() {
            return scope;
        }
    }
    sanitize(name)
}

fn sanitize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out.trim_matches(|c| matches!(c, '_' | '.' | '-'))
        .to_string()
}

/// The window of a conv or pool node: size, stride and `[top, left, bottom, right]`
/// pads, with `auto_pad` resolved against the input size.
fn window(n: &NodeProto, x: &Shape, kernel: [usize; 2]) -> Result<(Hw, Hw, [usize; 4])> {
    let size = Hw {
        h: kernel[0],
        w: kernel[1],
    };
    let stride = match attr_ints(n, "strides").as_deref() {
        None => Hw::square(1),
        Some(&[h, w]) if h > 0 && w > 0 => Hw {
            h: h as usize,
            w: w as usize,
        },
        Some(s) => {
            return Err(Error::Format(format!(
                "strides {s:?} are not two positive numbers"
            )))
        }
    };
    let auto = attr_str(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let pads = match auto.as_str() {
        "NOTSET" | "" => match attr_ints(n, "pads").as_deref() {
            None => [0; 4],
            // Capped at 2^31, so `n + p0 + p1` cannot overflow anywhere after.
            Some(p)
                if p.len() == 4
                    && p.iter()
                        .all(|&v| (0..=shape::MAX_ELEMENTS as i64).contains(&v)) =>
            {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => {
                return Err(Error::Format(format!(
                    "pads {p:?} are not four numbers from 0 to 2^31"
                )))
            }
        },
        "VALID" => [0; 4],
        "SAME_UPPER" | "SAME_LOWER" => {
            let total = |n: usize, f: usize, s: usize| {
                let out = n.div_ceil(s);
                ((out - 1) * s + f).saturating_sub(n)
            };
            let (th, tw) = (total(x.h, size.h, stride.h), total(x.w, size.w, stride.w));
            let (small_h, small_w) = (th / 2, tw / 2);
            if auto == "SAME_UPPER" {
                [small_h, small_w, th - small_h, tw - small_w]
            } else {
                [th - small_h, tw - small_w, small_h, small_w]
            }
        }
        other => return Err(Error::Format(format!("unknown auto_pad `{other}`"))),
    };
    Ok((size, stride, pads))
}

/// A 5-D view `[N, G, C/G, H, W]` of an activation, from the first Reshape of a channel
/// shuffle; `transposed` once the Transpose(0, 2, 1, 3, 4) has been read.
#[derive(Clone, Copy, Debug)]
struct GroupedView {
    x: NodeId,
    groups: usize,
    transposed: bool,
}

struct Importer<'m> {
    model: &'m ModelProto,
    opset: i64,
    g: Graph,
    consts: HashMap<String, Const>,
    /// Activations: ONNX value name -> the layer computing it.
    vals: HashMap<String, NodeId>,
    /// 5-D views of activations inside a channel shuffle.
    views: HashMap<String, GroupedView>,
    names: HashSet<String>,
    ordinals: HashMap<&'static str, usize>,
    /// How many nodes (and graph outputs) read each value.
    readers: HashMap<String, usize>,
    /// fc layers made from a MatMul, which a following Add may give a bias.
    matmuls: HashSet<NodeId>,
    /// scale_shift layers made from a Mul, which a following Add may give a shift.
    scales: HashSet<NodeId>,
    /// The batch dimension of the model's input, when it is a number.
    batch: Option<i64>,
}

impl Importer<'_> {
    fn onnx_graph(&self) -> &super::proto::GraphProto {
        self.model.graph.as_ref().expect("checked")
    }

    fn value(&self, name: &str, what: &str) -> Result<NodeId> {
        if let Some(&id) = self.vals.get(name) {
            return Ok(id);
        }
        if self.consts.contains_key(name) {
            return Err(Error::Unsupported(format!(
                "{what} is a constant; cnnc takes constants only as weights"
            )));
        }
        if self.views.contains_key(name) {
            return Err(Error::Unsupported(format!(
                "{what} is a 5-D reshape that is not part of a channel shuffle (Reshape, Transpose(0, 2, 1, 3, 4), Reshape)"
            )));
        }
        Err(Error::Format(format!(
            "{what} `{name}` is neither the model's input, an earlier node's output nor an initializer"
        )))
    }

    fn constant(&self, name: &str, what: &str) -> Result<&Const> {
        if let Some(c) = self.consts.get(name) {
            return Ok(c);
        }
        if self.vals.contains_key(name) {
            return Err(Error::Unsupported(format!(
                "{what} is computed at run time; cnnc needs it to be a constant"
            )));
        }
        Err(Error::Format(format!(
            "{what} `{name}` is missing: no initializer, Constant node or earlier output has that name"
        )))
    }

    /// The node's input `i` when present (empty names are omitted optional inputs).
    fn input(n: &NodeProto, i: usize) -> Option<&str> {
        n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn x_of(&self, n: &NodeProto) -> Result<NodeId> {
        self.value(Self::input(n, 0).unwrap_or_default(), "its input")
    }

    fn unique(&mut self, wanted: String, kind: &'static str) -> String {
        let k = self.ordinals.entry(kind).or_insert(0);
        *k += 1;
        let base = if wanted.is_empty() {
            format!("{kind}{k}")
        } else {
            wanted
        };
        let mut name = base.clone();
        let mut i = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{i}");
            i += 1;
        }
        name
    }

    /// Adds a layer, infers its shape and binds its parameters.
    fn layer(
        &mut self,
        wanted: String,
        op: Op,
        inputs: &[NodeId],
        params: Vec<(&str, Tensor)>,
    ) -> Result<NodeId> {
        let name = self.unique(wanted, op.kind());
        let shapes: Vec<Shape> = inputs.iter().map(|&i| self.g.node(i).shape).collect();
        let (s, note) = shape::infer(&name, &op, &shapes, false)?;
        let mut node = crate::ir::Node::new(name, op);
        node.shape = s;
        node.note = note;
        for (suffix, t) in params {
            node.params.insert(suffix.to_string(), t);
        }
        let id = self.g.add_node(node, inputs);
        for (suffix, want) in crate::weights::expected_params(&self.g, id) {
            let node = self.g.node(id);
            let name = format!("{}.{suffix}", node.name);
            let t = node
                .params
                .get(suffix)
                .ok_or_else(|| Error::Weights(format!("tensor `{name}` is missing")))?;
            crate::weights::check_shape(&name, &want, t.shape())?;
        }
        Ok(id)
    }

    fn only_reader(&self, value: &str) -> bool {
        self.readers.get(value).copied().unwrap_or(0) == 1
    }

    /// The pad layer (zeros) for the asymmetric part of a conv's `pads`, and the
    /// symmetric pad left for the conv (moved to the pad layer too where the window
    /// cannot take it).
    fn split_pads(
        &mut self,
        base: &str,
        x: NodeId,
        size: Hw,
        pads: [usize; 4],
    ) -> Result<(NodeId, Hw)> {
        let [t, l, b, r] = pads;
        let mut sym = Hw {
            h: t.min(b),
            w: l.min(r),
        };
        if sym.h >= size.h || sym.w >= size.w {
            sym = Hw::square(0);
        }
        let pad = Pad {
            top: t - sym.h,
            left: l - sym.w,
            bottom: b - sym.h,
            right: r - sym.w,
            value: 0.0,
        };
        if pad.top + pad.left + pad.bottom + pad.right == 0 {
            return Ok((x, sym));
        }
        let wanted = if base.is_empty() {
            String::new()
        } else {
            format!("{base}_pad")
        };
        let id = self.layer(wanted, Op::Pad(pad), &[x], vec![])?;
        Ok((id, sym))
    }

    /// Converts one node: a constant it folds, a layer, or an alias. The value of its
    /// first output is recorded.
    fn node(&mut self, n: &NodeProto) -> Result<()> {
        let out = n
            .output
            .first()
            .filter(|o| !o.is_empty())
            .cloned()
            .ok_or_else(|| Error::Format("the node has no output".into()))?;
        if let Some(c) = self.fold(n)? {
            self.consts.insert(out, c);
            return Ok(());
        }
        if let Some(view) = self.shuffle_step(n)? {
            self.views.insert(out, view);
            return Ok(());
        }
        let id = self.layer_for(n)?;
        self.vals.insert(out, id);
        Ok(())
    }

    /// The constant a node makes from constants, if it is one the importer folds.
    fn fold(&self, n: &NodeProto) -> Result<Option<Const>> {
        let all_const = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| self.consts.contains_key(i));
        let first = || self.constant(Self::input(n, 0).unwrap_or_default(), "its input");
        let axes = || -> Result<Option<Vec<i64>>> {
            Ok(match Self::input(n, 1) {
                Some(a) => Some(self.constant(a, "the axes")?.ints("the axes")?),
                None => attr_ints(n, "axes"),
            })
        };
        Ok(Some(match n.op_type() {
            "Constant" => constant_node(n)?,
            "ConstantOfShape" => {
                let value = attr(n, "value").and_then(|a| a.t.as_ref());
                constants::constant_of_shape(first()?, value)?
            }
            "Identity" if all_const => first()?.clone(),
            "Unsqueeze" if all_const => {
                let axes = axes()?.ok_or_else(|| Error::Format("Unsqueeze without axes".into()))?;
                constants::unsqueeze(first()?, &axes)?
            }
            "Squeeze" if all_const => constants::squeeze(first()?, axes()?.as_deref())?,
            "Reshape" if all_const => {
                let target = self.reshape_target(n)?;
                constants::reshape(first()?, &target, allowzero(n))?
            }
            "Unsqueeze" | "Squeeze" => {
                return Err(Error::Unsupported(format!(
                    "{} of a value computed at run time (cnnc folds it only on constants)",
                    n.op_type()
                )))
            }
            _ => return Ok(None),
        }))
    }

    fn reshape_target(&self, n: &NodeProto) -> Result<Vec<i64>> {
        match Self::input(n, 1) {
            Some(s) => self.constant(s, "the shape")?.ints("the shape"),
            // Reshape-1 took the shape as an attribute.
            None => {
                attr_ints(n, "shape").ok_or_else(|| Error::Format("Reshape without a shape".into()))
            }
        }
    }

    /// The steps of a channel shuffle: Reshape `[N, C, H, W]` -> `[N, G, C/G, H, W]`,
    /// then Transpose(0, 2, 1, 3, 4). (The Reshape back is in [`Self::reshape`].)
    fn shuffle_step(&self, n: &NodeProto) -> Result<Option<GroupedView>> {
        let x_name = Self::input(n, 0).unwrap_or_default();
        match n.op_type() {
            "Reshape" if self.vals.contains_key(x_name) => {
                let x = self.vals[x_name];
                let s = self.g.node(x).shape;
                if s.flat {
                    return Ok(None);
                }
                let target = self.reshape_target(n)?;
                let dims = constants::reshape_dims(&[1, s.c, s.h, s.w], &target, allowzero(n));
                Ok(match dims.as_deref() {
                    Ok([1, g, cg, h, w]) if g * cg == s.c && (*h, *w) == (s.h, s.w) => {
                        Some(GroupedView {
                            x,
                            groups: *g,
                            transposed: false,
                        })
                    }
                    _ => None,
                })
            }
            "Transpose" => {
                let perm = attr_ints(n, "perm").unwrap_or_default();
                match self.views.get(x_name) {
                    Some(v) if !v.transposed && perm == [0, 2, 1, 3, 4] => Ok(Some(GroupedView {
                        transposed: true,
                        ..*v
                    })),
                    _ => Err(Error::Unsupported(format!(
                        "Transpose with perm {perm:?}: cnnc reads Transpose only inside a channel shuffle (Reshape to [N, G, C/G, H, W], Transpose(0, 2, 1, 3, 4), Reshape back)"
                    ))),
                }
            }
            _ => Ok(None),
        }
    }

    /// The layer for a node that computes an activation.
    fn layer_for(&mut self, n: &NodeProto) -> Result<NodeId> {
        let base = layer_name(n.name(), n.op_type());
        let unary = |me: &mut Self, op: Op| -> Result<NodeId> {
            let x = me.x_of(n)?;
            me.layer(base.clone(), op, &[x], vec![])
        };
        match n.op_type() {
            "Identity" => self.x_of(n),
            "Relu" => unary(self, Op::Relu),
            "GlobalAveragePool" => unary(self, Op::GlobalAvgPool),
            "Clip" => {
                let clip = self.clip(n)?;
                unary(self, Op::Clip(clip))
            }
            "LRN" => unary(self, Op::Lrn(lrn(n)?)),
            "Dropout" => {
                if n.output
                    .get(1)
                    .is_some_and(|m| self.readers.contains_key(m))
                {
                    return Err(Error::Unsupported(
                        "Dropout's mask output is read; cnnc's dropout has one output".into(),
                    ));
                }
                unary(self, Op::Dropout)
            }
            "Conv" => self.conv(n, base),
            "MaxPool" | "AveragePool" => self.pool(n, base),
            "Pad" => self.pad(n, base),
            "Gemm" => self.gemm(n, base),
            "MatMul" => self.matmul(n, base),
            "Add" | "Sum" | "Sub" | "Mul" | "Div" => self.arithmetic(n, base),
            "Concat" => self.concat(n, base),
            "Flatten" => self.flatten(n, base),
            "Reshape" => self.reshape(n, base),
            "Softmax" => self.softmax(n, base),
            "BatchNormalization" => self.batchnorm(n, base),
            other => Err(Error::Unsupported(format!("op {other} is not supported"))),
        }
    }

    /// Clip's bounds: attributes before opset 11, optional constant inputs after.
    fn clip(&self, n: &NodeProto) -> Result<Clip> {
        let bound = |i: usize, attr_name: &str, default: f32| -> Result<f32> {
            if self.opset < 11 {
                return Ok(attr_float(n, attr_name).unwrap_or(default));
            }
            match Self::input(n, i) {
                None => Ok(default),
                Some(c) => {
                    let v = self.constant(c, &format!("the {attr_name} bound"))?;
                    match v.floats(attr_name)?.as_slice() {
                        [v] => Ok(*v),
                        _ => Err(Error::Unsupported(format!(
                            "Clip with a {attr_name} of shape {}; cnnc clips to one number",
                            fmt_shape(&v.dims)
                        ))),
                    }
                }
            }
        };
        let clip = Clip {
            min: bound(1, "min", f32::NEG_INFINITY)?,
            max: bound(2, "max", f32::INFINITY)?,
        };
        if clip.min.is_nan() || clip.max.is_nan() || clip.min > clip.max {
            return Err(Error::Unsupported(format!(
                "Clip with min {} > max {}",
                clip.min, clip.max
            )));
        }
        Ok(clip)
    }

    fn conv(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let w_name = Self::input(n, 1).unwrap_or_default();
        let w = self.constant(w_name, "the weight")?.clone();
        let what = format!("weight `{w_name}`");
        if w.dims.len() != 4 {
            return Err(Error::Unsupported(format!(
                "{what} has shape {}; cnnc's conv is 2-D ([K, C/groups, kh, kw])",
                fmt_shape(&w.dims)
            )));
        }
        if let Some(k) = attr_ints(n, "kernel_shape") {
            if k != [w.dims[2] as i64, w.dims[3] as i64] {
                return Err(Error::Format(format!(
                    "kernel_shape {k:?} does not match the {what} of shape {}",
                    fmt_shape(&w.dims)
                )));
            }
        }
        let groups = attr_int(n, "group").unwrap_or(1);
        let dilation = match attr_ints(n, "dilations").as_deref() {
            None => Hw::square(1),
            Some(&[h, w]) if in_range(h) && in_range(w) => Hw {
                h: h as usize,
                w: w as usize,
            },
            Some(d) => {
                return Err(Error::Format(format!(
                    "dilations {d:?} are not two numbers from 1 to 2^31"
                )))
            }
        };
        if !in_range(groups) {
            return Err(Error::Format(format!(
                "group {groups} is not from 1 to 2^31"
            )));
        }
        let size = Hw {
            h: w.dims[2],
            w: w.dims[3],
        };
        // `auto_pad` SAME pads for the dilated extent.
        let extent = |k: usize, d: usize| d * (k.max(1) - 1) + 1;
        let span = [extent(size.h, dilation.h), extent(size.w, dilation.w)];
        let (_, stride, pads) = window(n, &xs, span)?;
        let mut params = vec![("weight", Tensor::new(w.dims.clone(), w.floats(&what)?)?)];
        if let Some(b_name) = Self::input(n, 2) {
            let b = self.constant(b_name, "the bias")?;
            let what = format!("bias `{b_name}`");
            params.push(("bias", Tensor::new(vec![b.len()], b.floats(&what)?)?));
        }
        let (x, pad) = self.split_pads(
            &base,
            x,
            Hw {
                h: span[0],
                w: span[1],
            },
            pads,
        )?;
        let conv = Conv {
            filters: w.dims[0],
            size,
            stride,
            pad,
            dilation,
            groups: groups as usize,
            bias: params.len() == 2,
            epilogue: Epilogue::default(),
        };
        self.layer(base, Op::Conv(conv), &[x], params)
    }

    /// MaxPool and AveragePool, with their pads (symmetric or not) on the pool itself.
    fn pool(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let k = attr_ints(n, "kernel_shape").unwrap_or_default();
        if k.len() != 2 || !k.iter().all(|&v| in_range(v)) {
            return Err(Error::Format(format!(
                "kernel_shape {k:?} is not two numbers from 1 to 2^31"
            )));
        }
        let (size, stride, mut pads) = window(n, &xs, [k[0] as usize, k[1] as usize])?;
        let max = n.op_type() == "MaxPool";
        // A max pool never counts, and without pads there is nothing to count:
        // `count_pad` is then set only to keep one form of the pool.
        let count_pad = max
            || attr_int(n, "count_include_pad").unwrap_or(0) != 0
            || (pads == [0; 4] && attr_int(n, "ceil_mode").unwrap_or(0) == 0);
        if attr_int(n, "ceil_mode").unwrap_or(0) != 0 {
            // Rounding up = padding the end until the last window fits; that padding
            // never counts (ONNX divides a clipped window by its clipped size).
            for (axis, nlen, f, s) in [(0, xs.h, size.h, stride.h), (1, xs.w, size.w, stride.w)] {
                let span = nlen + pads[axis] + pads[axis + 2];
                if span < f {
                    continue;
                }
                let mut out = (span - f).div_ceil(s) + 1;
                // ONNX drops a last window that starts in the end padding.
                if (out - 1) * s >= nlen + pads[axis] {
                    out -= 1;
                }
                let extra = ((out - 1) * s + f).saturating_sub(span);
                if extra > 0 && count_pad && !max {
                    return Err(Error::Unsupported(
                        "AveragePool with ceil_mode = 1 and count_include_pad = 1 where rounding up adds a partial window (its divisor counts the pads but not the overhang)".into(),
                    ));
                }
                pads[axis + 2] += extra;
            }
        }
        let [t, l, b, r] = pads;
        let p = Pool {
            size,
            stride,
            pad: Hw { h: t, w: l },
            pad_end: Hw { h: b, w: r },
            count_pad,
        };
        let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
        self.layer(base, op, &[x], vec![])
    }

    fn pad(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let pads = match Self::input(n, 1) {
            Some(p) => self.constant(p, "the pads")?.ints("the pads")?,
            None => attr_ints(n, "pads").unwrap_or_default(),
        };
        if Self::input(n, 3).is_some() {
            return Err(Error::Unsupported("Pad with axes".into()));
        }
        let value = match Self::input(n, 2) {
            Some(v) => {
                let v = self.constant(v, "the pad value")?.floats("the pad value")?;
                *v.first().unwrap_or(&0.0)
            }
            None => attr_float(n, "value").unwrap_or(0.0),
        };
        let ok = pads.len() == 8
            && pads
                .iter()
                .all(|&p| (0..=shape::MAX_ELEMENTS as i64).contains(&p))
            && [pads[0], pads[1], pads[4], pads[5]] == [0; 4];
        if !ok || self.g.node(x).shape.flat {
            return Err(Error::Unsupported(format!(
                "pads {pads:?}: cnnc pads only height and width of a 4-D tensor, by amounts from 0 to 2^31"
            )));
        }
        let p = |i: usize| pads[i] as usize;
        let pad = Pad {
            top: p(2),
            left: p(3),
            bottom: p(6),
            right: p(7),
            value,
        };
        self.layer(base, Op::Pad(pad), &[x], vec![])
    }

    fn gemm(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let fin = self.g.node(x).shape.len();
        let b_name = Self::input(n, 1).unwrap_or_default();
        let b = self.constant(b_name, "the weight")?.clone();
        let what = format!("weight `{b_name}`");
        let alpha = attr_float(n, "alpha").unwrap_or(1.0);
        let beta = attr_float(n, "beta").unwrap_or(1.0);
        let trans_b = attr_int(n, "transB").unwrap_or(0) != 0;
        if b.dims.len() != 2 {
            return Err(Error::Format(format!(
                "{what} has shape {}; Gemm takes a matrix",
                fmt_shape(&b.dims)
            )));
        }
        let mut w = Tensor::new(b.dims.clone(), b.floats(&what)?)?;
        if !trans_b {
            w = transpose(&w);
        }
        for v in w.data_mut() {
            *v *= alpha;
        }
        let units = w.shape()[0];
        if w.shape()[1] != fin {
            return Err(Error::Shape(format!(
                "{what} takes {} features, but the input has {fin}",
                w.shape()[1]
            )));
        }
        let mut params = vec![("weight", w)];
        if let Some(c_name) = Self::input(n, 2) {
            let c = self.constant(c_name, "the bias")?;
            let bias = bias_vector(c, units, &format!("bias `{c_name}`"))?;
            params.push(("bias", scaled(bias, beta)));
        }
        let fc = Fc {
            units,
            bias: params.len() == 2,
            epilogue: Epilogue::default(),
        };
        self.layer(base, Op::Fc(fc), &[x], params)
    }

    fn matmul(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let b_name = Self::input(n, 1).unwrap_or_default();
        let b = self.constant(b_name, "the weight")?.clone();
        let what = format!("weight `{b_name}`");
        if !xs.flat || b.dims.len() != 2 || b.dims[0] != xs.c {
            return Err(Error::Unsupported(format!(
                "MatMul of a {xs} input by the {what} of shape {}: cnnc reads MatMul as a fully connected layer, [N, F] x [F, units]",
                fmt_shape(&b.dims)
            )));
        }
        let w = transpose(&Tensor::new(b.dims.clone(), b.floats(&what)?)?);
        let fc = Fc {
            units: w.shape()[0],
            bias: false,
            epilogue: Epilogue::default(),
        };
        let id = self.layer(base, Op::Fc(fc), &[x], vec![("weight", w)])?;
        self.matmuls.insert(id);
        Ok(id)
    }

    /// Add, Sum, Sub, Mul and Div: of activations (Add and Sum: an `add` layer), or of an
    /// activation and a constant (a MatMul's bias, or a per-channel `scale_shift`).
    fn arithmetic(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let op = n.op_type();
        let names: Vec<&str> = n.input.iter().map(String::as_str).collect();
        let (consts, vals): (Vec<&str>, Vec<&str>) =
            names.iter().partition(|s| self.consts.contains_key(**s));
        match (op, consts.as_slice(), vals.as_slice()) {
            (_, [], [x]) if matches!(op, "Add" | "Sum") => self.value(x, "its input"),
            ("Add" | "Sum", [], _) if vals.len() >= 2 => {
                let ids = vals
                    .iter()
                    .map(|s| self.value(s, "an input"))
                    .collect::<Result<Vec<_>>>()?;
                self.layer(base, Op::Add, &ids, vec![])
            }
            (_, [c], [x]) if names.len() == 2 && (names[0] == *x || matches!(op, "Add" | "Sum" | "Mul")) => {
                self.by_constant(n, base, x, c)
            }
            _ => Err(Error::Unsupported(format!(
                "{op} of {} run-time value(s) and {} constant(s): cnnc computes Add/Sum of activations, and Add, Sub, Mul or Div of one activation by a per-channel constant",
                vals.len(),
                consts.len()
            ))),
        }
    }

    /// `x (op) c` for a constant `c`: a MatMul's bias, or `x * s + t` per channel.
    fn by_constant(&mut self, n: &NodeProto, base: String, x: &str, c: &str) -> Result<NodeId> {
        let op = n.op_type();
        let id = self.value(x, "its input")?;
        let xs = self.g.node(id).shape;
        let only = self.only_reader(x);
        if matches!(op, "Add" | "Sum") && self.matmuls.contains(&id) && only {
            let units = xs.c;
            let bias = bias_vector(&self.consts[c], units, &format!("bias `{c}`"))?;
            let node = self.g.node_mut(id);
            if let Op::Fc(f) = &mut node.op {
                f.bias = true;
            }
            node.params.insert("bias".into(), bias);
            self.matmuls.remove(&id);
            return Ok(id);
        }
        let v = per_channel(&self.consts[c], &xs).ok_or_else(|| {
            Error::Unsupported(format!(
                "{op} by a constant of shape {} on a {xs} tensor: cnnc takes one value per channel ([C, 1, 1] or [1, C, 1, 1]) or a scalar",
                fmt_shape(&self.consts[c].dims)
            ))
        })?;
        let (scale, shift): (Vec<f32>, Vec<f32>) = match op {
            "Mul" => (v, vec![0.0; xs.c]),
            "Div" => (v.iter().map(|d| 1.0 / d).collect(), vec![0.0; xs.c]),
            "Sub" => (vec![1.0; xs.c], v.iter().map(|t| -t).collect()),
            _ => (vec![1.0; xs.c], v),
        };
        // A Mul's scale_shift takes the Add right after it as its shift.
        if self.scales.contains(&id) && only && scale.iter().all(|&s| s == 1.0) {
            let node = self.g.node_mut(id);
            let bias = node
                .params
                .get_mut("bias")
                .expect("a scale_shift has a bias");
            for (b, t) in bias.data_mut().iter_mut().zip(&shift) {
                *b += t;
            }
            self.scales.remove(&id);
            return Ok(id);
        }
        let c = xs.c;
        let params = vec![
            ("weight", Tensor::new(vec![c], scale)?),
            ("bias", Tensor::new(vec![c], shift)?),
        ];
        let ss = self.layer(base, Op::ScaleShift, &[id], params)?;
        if matches!(op, "Mul" | "Div") {
            self.scales.insert(ss);
        }
        Ok(ss)
    }

    fn concat(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let ids = n
            .input
            .iter()
            .map(|s| self.value(s, "an input"))
            .collect::<Result<Vec<_>>>()?;
        let Some(&first) = ids.first() else {
            return Err(Error::Format("Concat has no inputs".into()));
        };
        let rank = if self.g.node(first).shape.flat { 2 } else { 4 };
        let axis = attr_int(n, "axis").unwrap_or(1);
        if axis.rem_euclid(rank) != 1 {
            return Err(Error::Unsupported(format!(
                "Concat on axis {axis} of a {rank}-D tensor; cnnc concatenates channels (axis 1)"
            )));
        }
        if ids.len() == 1 {
            Ok(first)
        } else {
            self.layer(base, Op::Concat, &ids, vec![])
        }
    }

    fn flatten(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let rank = if xs.flat { 2 } else { 4 };
        let axis = attr_int(n, "axis").unwrap_or(1);
        if axis.rem_euclid(rank) != 1 {
            return Err(Error::Unsupported(format!(
                "Flatten at axis {axis} of a {rank}-D tensor; cnnc flattens at axis 1"
            )));
        }
        // cnnc's export puts `<fc>/flatten` before an fc on a C x H x W input; the fc
        // flattens by itself, so that node folds back into it.
        let out = &n.output[0];
        let folds = self.only_reader(out)
            && self.onnx_graph().node.iter().any(|m| {
                m.op_type() == "Gemm"
                    && m.input.first() == Some(out)
                    && format!("{}/flatten", m.name()) == n.name()
            });
        if folds {
            Ok(x)
        } else {
            self.layer(base, Op::Flatten, &[x], vec![])
        }
    }

    /// A Reshape of an activation: a flatten to `[N, F]`, or the last step of a channel
    /// shuffle (a transposed 5-D view back to `[N, C, H, W]`).
    fn reshape(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x_name = Self::input(n, 0).unwrap_or_default();
        let target = self.reshape_target(n)?;
        if let Some(v) = self.views.get(x_name).copied() {
            let s = self.g.node(v.x).shape;
            let cg = s.c / v.groups;
            let dims = constants::reshape_dims(&[1, cg, v.groups, s.h, s.w], &target, allowzero(n));
            return match dims.as_deref() {
                Ok([1, c, h, w]) if v.transposed && (*c, *h, *w) == (s.c, s.h, s.w) => self.layer(
                    base,
                    Op::ChannelShuffle { groups: v.groups },
                    &[v.x],
                    vec![],
                ),
                _ => Err(Error::Unsupported(format!(
                    "Reshape of a 5-D view to {target:?}: neither a flatten nor the end of a channel shuffle"
                ))),
            };
        }
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let features = xs.len() as i64;
        let allowzero = allowzero(n);
        let batch_ok = |d: i64| (d == 0 && !allowzero) || Some(d) == self.batch || d == 1;
        let flattens = match target.as_slice() {
            [d0, -1] => batch_ok(*d0),
            [d0, f] => (*d0 == -1 || batch_ok(*d0)) && *f == features,
            _ => false,
        };
        if !flattens {
            return Err(Error::Unsupported(format!(
                "Reshape of a {xs} tensor to {target:?}: neither a flatten to [N, {features}] nor a channel shuffle"
            )));
        }
        self.layer(base, Op::Flatten, &[x], vec![])
    }

    fn softmax(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        let xs = self.g.node(x).shape;
        let rank = if xs.flat { 2 } else { 4 };
        let default = if self.opset >= 13 { -1 } else { 1 };
        let axis = attr_int(n, "axis").unwrap_or(default).rem_euclid(rank);
        // Before opset 13, Softmax on axis 1 flattened the trailing axes first.
        let ok = axis == 1 && (xs.flat || self.opset >= 13 || (xs.h, xs.w) == (1, 1));
        if !ok {
            return Err(Error::Unsupported(format!(
                "Softmax on axis {axis} of a {xs} tensor (opset {}); cnnc's softmax is over channels, axis 1",
                self.opset
            )));
        }
        self.layer(base, Op::Softmax, &[x], vec![])
    }

    fn batchnorm(&mut self, n: &NodeProto, base: String) -> Result<NodeId> {
        let x = self.x_of(n)?;
        if n.output
            .iter()
            .skip(1)
            .any(|o| self.readers.contains_key(o))
        {
            return Err(Error::Unsupported(
                "BatchNormalization's running mean/var outputs are read (training mode)".into(),
            ));
        }
        let mut params = Vec::new();
        for (i, suffix) in ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .enumerate()
        {
            let c_name = Self::input(n, i + 1).unwrap_or_default();
            let c = self.constant(c_name, &format!("the {suffix}"))?;
            let v = c.floats(&format!("`{c_name}`"))?;
            params.push((*suffix, Tensor::new(vec![v.len()], v)?));
        }
        let eps = attr_float(n, "epsilon").unwrap_or(1e-5);
        self.layer(base, Op::BatchNorm { eps }, &[x], params)
    }
}

fn allowzero(n: &NodeProto) -> bool {
    attr_int(n, "allowzero").unwrap_or(0) != 0
}

/// A whole number from 1 to 2^31 (a window size, stride, dilation or group count).
fn in_range(v: i64) -> bool {
    (1..=shape::MAX_ELEMENTS as i64).contains(&v)
}

/// A Constant node's value.
fn constant_node(n: &NodeProto) -> Result<Const> {
    Ok(
        if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
            constants::decode_tensor(t)?
        } else if let Some(f) = attr_float(n, "value_float") {
            Const {
                dims: vec![],
                data: Data::F(vec![f]),
            }
        } else if let Some(v) = attr_ints(n, "value_ints") {
            Const {
                dims: vec![v.len()],
                data: Data::I(v),
            }
        } else if let Some(v) = attr_int(n, "value_int") {
            Const {
                dims: vec![],
                data: Data::I(vec![v]),
            }
        } else if let Some(a) = attr(n, "value_floats") {
            Const {
                dims: vec![a.floats.len()],
                data: Data::F(a.floats.clone()),
            }
        } else {
            return Err(Error::Unsupported(
                "a Constant with neither value, value_float(s) nor value_int(s)".into(),
            ));
        },
    )
}

/// LRN's attributes (ONNX defaults: alpha 1e-4, beta 0.75, bias 1).
fn lrn(n: &NodeProto) -> Result<Lrn> {
    let size = attr_int(n, "size").unwrap_or(0);
    if !(1..=1 << 20).contains(&size) {
        return Err(Error::Format(format!(
            "LRN size {size} is not from 1 to 2^20"
        )));
    }
    let l = Lrn {
        size: size as usize,
        alpha: attr_float(n, "alpha").unwrap_or(1e-4),
        beta: attr_float(n, "beta").unwrap_or(0.75),
        bias: attr_float(n, "bias").unwrap_or(1.0),
    };
    if ![l.alpha, l.beta, l.bias].iter().all(|v| v.is_finite()) {
        return Err(Error::Format(
            "LRN alpha, beta and bias must be finite".into(),
        ));
    }
    Ok(l)
}

/// One value per channel of `x` from a constant that broadcasts per channel: a scalar,
/// `[C, 1, 1]` or `[1, C, 1, 1]` on `C x H x W`, `[F]` or `[1, F]` on a flat `F`.
fn per_channel(c: &Const, x: &Shape) -> Option<Vec<f32>> {
    let v = c.floats("").ok()?;
    let rank = if x.flat { 2 } else { 4 };
    if c.dims.len() > rank {
        return None; // it would broadcast the activation to a higher rank
    }
    if v.len() == 1 {
        return Some(vec![v[0]; x.c]);
    }
    // Numpy broadcasting aligns trailing axes: [C] on [N, C, H, W] would be per column.
    let mut dims: &[usize] = &c.dims;
    while let [1, rest @ ..] = dims {
        dims = rest;
    }
    let fits = if x.flat {
        dims == [x.c]
    } else {
        dims == [x.c, 1, 1]
    };
    fits.then_some(v)
}

fn transpose(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let mut out = Vec::with_capacity(r * c);
    for j in 0..c {
        for i in 0..r {
            out.push(t.data()[i * c + j]);
        }
    }
    Tensor::new(vec![c, r], out).expect("same size")
}

fn scaled(mut t: Tensor, k: f32) -> Tensor {
    if k != 1.0 {
        for v in t.data_mut() {
            *v *= k;
        }
    }
    t
}

/// A bias of `units` values from a constant of shape [units], [1, units], [] or [1]
/// (a scalar is broadcast).
fn bias_vector(c: &Const, units: usize, what: &str) -> Result<Tensor> {
    let v = c.floats(what)?;
    let n: usize = c.dims.iter().product();
    let fits = c.dims.iter().filter(|&&d| d != 1).count() <= 1 && (n == units || n == 1);
    if !fits {
        return Err(Error::Unsupported(format!(
            "{what} has shape {}; cnnc takes a bias of {units} values (or one broadcast value)",
            fmt_shape(&c.dims)
        )));
    }
    let v = if n == 1 { vec![v[0]; units] } else { v };
    Tensor::new(vec![units], v)
}

/// The model's one real input: name and `[C, H, W]`, and the batch if fixed.
fn graph_input(
    model: &ModelProto,
    consts: &HashMap<String, Const>,
) -> Result<(String, [usize; 3], Option<i64>)> {
    let graph = model.graph.as_ref().expect("checked");
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !consts.contains_key(i.name()))
        .collect();
    let [input] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        return Err(Error::Unsupported(format!(
            "the model has {} inputs ({}); cnnc takes models with one image input",
            inputs.len(),
            names.join(", ")
        )));
    };
    let name = input.name().to_string();
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => {
            return Err(Error::Unsupported(format!(
                "the input `{name}` is not a tensor"
            )))
        }
    };
    if tensor.elem_type() != DataType::Float as i32 {
        let t = DataType::try_from(tensor.elem_type()).map_or("unknown", |t| t.as_str_name());
        return Err(Error::Unsupported(format!(
            "the input `{name}` has element type {t}; cnnc takes float inputs"
        )));
    }
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "the input `{name}` has no shape; cnnc needs [N, C, H, W] with fixed C, H, W"
            ))
        })?;
    if dims.len() != 4 {
        return Err(Error::Unsupported(format!(
            "the input `{name}` has {} dimensions; cnnc takes [N, C, H, W] images",
            dims.len()
        )));
    }
    let mut chw = [0usize; 3];
    for (i, axis) in ["channel", "height", "width"].iter().enumerate() {
        match &dims[i + 1].value {
            Some(Dim::DimValue(v)) if *v > 0 => chw[i] = *v as usize,
            Some(Dim::DimParam(p)) => {
                return Err(Error::Unsupported(format!(
                    "the input `{name}` has a dynamic {axis} dimension (`{p}`); cnnc compiles for fixed C, H, W: export the model with a fixed input size"
                )))
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "the input `{name}` has an unknown {axis} dimension; cnnc compiles for fixed C, H, W: export the model with a fixed input size"
                )))
            }
        }
    }
    let batch = match &dims[0].value {
        Some(Dim::DimValue(v)) => Some(*v),
        _ => None,
    };
    Ok((name, chw, batch))
}

/// The nodes the importer refused, grouped by reason, for one error message.
#[derive(Default)]
struct Problems {
    /// Reason -> where (node descriptions), in the order first seen.
    by_reason: BTreeMap<usize, (String, Vec<String>)>,
    index: HashMap<String, usize>,
    /// Nodes not converted because they read the output of a refused one.
    downstream: usize,
}

impl Problems {
    fn add(&mut self, reason: String, node: String) {
        let next = self.index.len();
        let key = *self.index.entry(reason.clone()).or_insert(next);
        self.by_reason
            .entry(key)
            .or_insert_with(|| (reason, Vec::new()))
            .1
            .push(node);
    }

    fn is_empty(&self) -> bool {
        self.by_reason.is_empty()
    }

    /// `cannot import 3 of the model's 20 nodes (2 reasons):` and one line per reason
    /// with its count and the first few nodes; one refused node is one line.
    fn report(&self, total: usize) -> String {
        const SHOWN: usize = 3;
        if let [(reason, nodes)] = self.by_reason.values().collect::<Vec<_>>().as_slice() {
            if let [node] = nodes.as_slice() {
                return match self.downstream {
                    0 => format!("{node}: {reason}"),
                    k => format!("{node}: {reason} ({k} node(s) after it were not checked)"),
                };
            }
        }
        let refused: usize = self.by_reason.values().map(|(_, v)| v.len()).sum();
        let mut out = format!(
            "cannot import {refused} of the model's {total} nodes ({} reason{}):",
            self.by_reason.len(),
            if self.by_reason.len() == 1 { "" } else { "s" }
        );
        for (reason, nodes) in self.by_reason.values() {
            let mut shown = nodes[..nodes.len().min(SHOWN)].join(", ");
            if nodes.len() > SHOWN {
                shown += &format!(" and {} more", nodes.len() - SHOWN);
            }
            out += &format!("\n  {} x {reason}: {shown}", nodes.len());
        }
        if self.downstream > 0 {
            out += &format!(
                "\n  ({} node(s) that read their outputs were not checked)",
                self.downstream
            );
        }
        out
    }
}

fn decode_model(bytes: &[u8]) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| {
        let text = std::str::from_utf8(bytes).is_ok_and(|t| !t.contains('\0'));
        Error::Format(if text && !bytes.is_empty() {
            "not an ONNX model: the file is text (ONNX models are binary protobuf files)".into()
        } else {
            format!("not an ONNX model, or a truncated one: the protobuf does not decode ({e})")
        })
    })?;
    if model.graph.is_none() || model.ir_version.is_none() {
        return Err(Error::Format(
            "not an ONNX model: it has no graph or no IR version".into(),
        ));
    }
    Ok(model)
}

/// The input normalisation cnnc's export records in the metadata, if any.
fn input_norm(model: &ModelProto, channels: usize) -> Result<Option<InputNorm>> {
    let meta = |key: &str| -> Result<Option<Vec<f32>>> {
        model
            .metadata_props
            .iter()
            .find(|p| p.key() == key)
            .map(|p| {
                serde_json::from_str(p.value())
                    .map_err(|e| Error::Format(format!("metadata `{key}`: {e}")))
            })
            .transpose()
    };
    Ok(match (meta(META_MEAN)?, meta(META_STD)?) {
        (Some(mean), Some(std)) if mean.len() == channels && std.len() == channels => {
            Some(InputNorm { mean, std })
        }
        _ => None,
    })
}

/// Converts every node. Nodes refused for what they are (op type, attributes) are all
/// found first; a node refused while converting (for its inputs or context) marks its
/// outputs, so the nodes reading them are skipped rather than reported again.
/// Malformed nodes end the import at once.
fn convert_nodes(imp: &mut Importer, nodes: &[NodeProto]) -> Result<Problems> {
    let mut problems = Problems::default();
    let mut refused: HashSet<&str> = HashSet::new();
    let mut prechecked = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if let Some(why) = unsupported(n) {
            problems.add(why, at(i, n));
            prechecked[i] = true;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if prechecked[i] || n.input.iter().any(|x| refused.contains(x.as_str())) {
            problems.downstream += !prechecked[i] as usize;
            refused.extend(n.output.iter().map(String::as_str));
            continue;
        }
        match imp.node(n) {
            Ok(()) => {}
            Err(Error::Unsupported(why)) => {
                problems.add(why, at(i, n));
                refused.extend(n.output.iter().map(String::as_str));
            }
            Err(e) => {
                let msg = format!("{}: {e}", at(i, n));
                return Err(match e {
                    Error::Shape(_) => Error::Shape(msg),
                    Error::Weights(_) => Error::Weights(msg),
                    _ => Error::Format(msg),
                });
            }
        }
    }
    Ok(problems)
}

/// How many nodes (and graph outputs) read each value.
fn count_readers(graph: &super::proto::GraphProto) -> HashMap<String, usize> {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name().to_string()).or_default() += 1;
    }
    readers
}

/// Reads an ONNX model into a graph with its weights bound (`weights_path` unset).
pub fn import(bytes: &[u8]) -> Result<Graph> {
    let model = decode_model(bytes)?;
    let graph = model.graph.as_ref().expect("checked by decode_model");
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .ok_or_else(|| {
            Error::Format("the model imports no version of the standard ONNX operator set".into())
        })?;
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name().to_string(), constants::decode_tensor(t)?);
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(Error::Unsupported(
            "the model has sparse initializers".into(),
        ));
    }
    let (input_name, [c, h, w], batch) = graph_input(&model, &consts)?;
    let name = if graph.name().is_empty() {
        "graph".to_string()
    } else {
        graph.name().to_string()
    };
    let mut g = Graph::new(name, Shape::chw(c, h, w));
    g.norm = input_norm(&model, c)?;
    let input_id = g.input;
    let mut imp = Importer {
        model: &model,
        opset,
        g,
        consts,
        vals: HashMap::from([(input_name, input_id)]),
        views: HashMap::new(),
        names: HashSet::from(["input".to_string()]),
        ordinals: HashMap::new(),
        readers: count_readers(graph),
        matmuls: HashSet::new(),
        scales: HashSet::new(),
        batch,
    };
    let problems = convert_nodes(&mut imp, &graph.node)?;
    if !problems.is_empty() {
        return Err(Error::Unsupported(problems.report(graph.node.len())));
    }
    if graph.output.is_empty() {
        return Err(Error::Format("the model has no outputs".into()));
    }
    let outputs = graph
        .output
        .iter()
        .map(|o| imp.value(o.name(), "the graph output"))
        .collect::<Result<Vec<_>>>()?;
    let mut g = imp.g;
    g.outputs = outputs;
    g.infer_shapes()?;
    Ok(g)
}

/// Imports `onnx` and writes the graph to `yaml` and its weights beside it
/// (`model.yaml` -> `model.safetensors`, named by the YAML's `weights:`).
/// Why the YAML written for `g` would not load, said of the model: the YAML reader's
/// `layers[3].conv.filters: ... at line 7 column 21` names a line of a file that was
/// never written, so it becomes `layer `conv2` (conv): filters: ...` (`layers[i]` is the
/// `i`-th layer written, in topological order).
fn reload_error(g: &Graph, e: &Error) -> String {
    let msg = e.to_string();
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => &msg,
    };
    let layer = msg.strip_prefix("layers[").and_then(|rest| {
        let (index, detail) = rest.split_once(']')?;
        let order = g.topo_order().ok()?;
        let id = *order
            .iter()
            .filter(|&&id| id != g.input)
            .nth(index.parse().ok()?)?;
        let node = g.node(id);
        let detail = detail.trim_start_matches('.');
        // `conv.filters: ...` -> `filters: ...`: the op is named already.
        let detail = detail
            .strip_prefix(node.op.kind())
            .map_or(detail, |d| d.trim_start_matches('.'));
        let detail = detail.trim_start_matches(": ");
        Some(format!(
            "layer `{}` ({}): {detail}",
            node.name,
            node.op.kind()
        ))
    });
    layer.unwrap_or_else(|| msg.to_string())
}

pub fn import_file(onnx: &Path, yaml: &Path) -> Result<Graph> {
    let bytes = std::fs::read(onnx).map_err(|e| Error::io(onnx, e))?;
    let mut g = import(&bytes).map_err(|e| {
        let msg = format!("{}: {e}", onnx.display());
        match e {
            Error::Unsupported(_) => Error::Unsupported(msg),
            Error::Shape(_) => Error::Shape(msg),
            Error::Weights(_) => Error::Weights(msg),
            _ => Error::Format(msg),
        }
    })?;
    let weights = yaml.with_extension("safetensors");
    let file_name = weights
        .file_name()
        .map(std::path::PathBuf::from)
        .ok_or_else(|| Error::Input(format!("{}: not a file name", yaml.display())))?;
    if weights == yaml {
        return Err(Error::Input(format!(
            "{}: the graph and its weights would both be written here; give the YAML's path, e.g. {}",
            yaml.display(),
            yaml.with_extension("yaml").display()
        )));
    }
    g.weights_path = Some(file_name);
    let text = crate::format::write_str(&g)?;
    let bytes = crate::weights::write_safetensors(crate::weights::named_params(&g))?;
    if g.node_count() < 2 {
        return Err(Error::Unsupported(format!(
            "{}: the model has no layer cnnc runs (only Identity-like nodes?), so there is no graph to write; nothing was written",
            onnx.display()
        )));
    }
    // What is written must load again (the same loader and checks as `cnnc run`).
    crate::format::parse_str(&text, None).map_err(|e| {
        Error::Unsupported(format!(
            "{}: {}; cnnc cannot run this model, so nothing was written",
            onnx.display(),
            reload_error(&g, &e)
        ))
    })?;
    let model = [("the ONNX model", onnx)];
    crate::io::output::write_all(vec![
        (crate::io::output::Output::create(&weights, &model)?, bytes),
        (
            crate::io::output::Output::create(yaml, &model)?,
            text.into_bytes(),
        ),
    ])?;
    g.weights_path = Some(weights);
    Ok(g)
}
