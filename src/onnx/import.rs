//! ONNX -> Graph. Each supported ONNX node becomes one layer named after the node
//! (made valid and unique), except Identity (an alias), Constant (a value) and the
//! pieces of two-node patterns (MatMul + Add -> fc). Asymmetric pads become a `pad`
//! layer before the conv or pool. Unsupported ops are all listed in one error.
use super::export::{META_MEAN, META_STD};
use super::proto::{
    tensor_proto::DataLocation, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as Dim, type_proto, AttributeProto, ModelProto, NodeProto,
    TensorProto,
};
use crate::error::{Error, Result};
use crate::ir::{shape, Conv, Epilogue, Fc, Graph, Hw, InputNorm, NodeId, Op, Pad, Pool, Shape};
use crate::tensor::{fmt_shape, Tensor};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The ONNX ops the importer reads.
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Gemm",
    "MatMul",
    "Add",
    "Sum",
    "Flatten",
    "Reshape",
    "Softmax",
    "Concat",
    "BatchNormalization",
    "Dropout",
    "Identity",
    "Constant",
    "Pad",
];

/// A constant: an initializer or a Constant node's value.
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

impl Const {
    fn floats(&self, what: &str) -> Result<Vec<f32>> {
        match &self.data {
            Data::F(v) => Ok(v.clone()),
            Data::I(_) => Err(Error::Format(format!(
                "{what} holds integers; cnnc expects a float tensor"
            ))),
        }
    }
    fn ints(&self, what: &str) -> Result<Vec<i64>> {
        match &self.data {
            Data::I(v) => Ok(v.clone()),
            Data::F(_) => Err(Error::Format(format!(
                "{what} holds floats; cnnc expects an integer tensor"
            ))),
        }
    }
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks of N bytes"))
}

/// Decodes an initializer: raw data or typed fields; f32, f16, bf16 and f64 become
/// f32, int32/int64 become i64.
fn decode_tensor(t: &TensorProto) -> Result<Const> {
    let name = t.name();
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(Error::Unsupported(format!(
            "tensor `{name}` keeps its data in an external file; cnnc reads models with the weights inside (save with onnx.save(model, path, save_as_external_data=False))"
        )));
    }
    if t.segment.is_some() {
        return Err(Error::Unsupported(format!(
            "tensor `{name}` is segmented; cnnc does not read segmented tensors"
        )));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(Error::Format(format!(
                "tensor `{name}` has a negative dimension {d}"
            )));
        }
        dims.push(d as usize);
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n as u64 <= shape::MAX_ELEMENTS)
        .ok_or_else(|| {
            Error::Format(format!(
                "tensor `{name}` of shape {} is larger than the limit of 2^31 elements",
                fmt_shape(&dims)
            ))
        })?;
    let raw = t.raw_data.as_deref();
    let dtype = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
    let data = match (dtype, raw) {
        (DataType::Float, Some(r)) => Data::F(le_chunks::<4>(r).map(f32::from_le_bytes).collect()),
        (DataType::Float, None) => Data::F(t.float_data.clone()),
        (DataType::Double, Some(r)) => Data::F(
            le_chunks::<8>(r)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        ),
        (DataType::Double, None) => Data::F(t.double_data.iter().map(|&v| v as f32).collect()),
        (DataType::Float16, Some(r)) => Data::F(
            le_chunks::<2>(r)
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        (DataType::Float16, None) => Data::F(
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f32())
                .collect(),
        ),
        (DataType::Bfloat16, Some(r)) => Data::F(
            le_chunks::<2>(r)
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        (DataType::Bfloat16, None) => Data::F(
            t.int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16).to_f32())
                .collect(),
        ),
        (DataType::Int64, Some(r)) => Data::I(le_chunks::<8>(r).map(i64::from_le_bytes).collect()),
        (DataType::Int64, None) => Data::I(t.int64_data.clone()),
        (DataType::Int32, Some(r)) => Data::I(
            le_chunks::<4>(r)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
        ),
        (DataType::Int32, None) => Data::I(t.int32_data.iter().map(|&v| v as i64).collect()),
        (other, _) => {
            return Err(Error::Unsupported(format!(
                "tensor `{name}` has data type {}; cnnc reads float, float16, bfloat16, double, int32 and int64",
                other.as_str_name()
            )))
        }
    };
    let len = match &data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
    };
    if len != n {
        return Err(Error::Format(format!(
            "tensor `{name}` of shape {} should hold {n} values but holds {len}; is the file truncated?",
            fmt_shape(&dims)
        )));
    }
    Ok(Const { dims, data })
}

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
        return Some("op not supported".into());
    }
    let ones = |name: &str| attr_ints(n, name).is_none_or(|v| v.iter().all(|&d| d == 1));
    let two_d = |name: &str| attr_ints(n, name).is_none_or(|v| v.len() == 2);
    match op {
        "Conv" if attr_int(n, "group").unwrap_or(1) != 1 => Some(format!(
            "group = {}; cnnc's conv has group 1",
            attr_int(n, "group")?
        )),
        "Conv" | "MaxPool" | "AveragePool" if !ones("dilations") => {
            Some("dilations other than 1".into())
        }
        "Conv" | "MaxPool" | "AveragePool" if !two_d("kernel_shape") || !two_d("strides") => {
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
    let at = n.name();
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
                "`{at}`: strides {s:?} are not two positive numbers"
            )))
        }
    };
    let auto = attr_str(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let pads = match auto.as_str() {
        "NOTSET" | "" => match attr_ints(n, "pads").as_deref() {
            None => [0; 4],
            Some(p) if p.len() == 4 && p.iter().all(|&v| v >= 0) => {
                [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
            }
            Some(p) => {
                return Err(Error::Format(format!(
                    "`{at}`: pads {p:?} are not four numbers >= 0"
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
        other => return Err(Error::Format(format!("`{at}`: unknown auto_pad `{other}`"))),
    };
    Ok((size, stride, pads))
}

struct Importer<'m> {
    model: &'m ModelProto,
    opset: i64,
    g: Graph,
    consts: HashMap<String, Const>,
    /// Activations: ONNX value name -> the layer computing it.
    vals: HashMap<String, NodeId>,
    names: HashSet<String>,
    ordinals: HashMap<&'static str, usize>,
    /// How many nodes (and graph outputs) read each value.
    readers: HashMap<String, usize>,
    /// fc layers made from a MatMul, which a following Add may give a bias.
    matmuls: HashSet<NodeId>,
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
                "{what} is the constant `{name}`; cnnc takes constants only as weights"
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
                "{what} `{name}` is computed at run time; cnnc needs it to be an initializer"
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

    /// The pad layer for the asymmetric part of `pads`, and the symmetric pad left
    /// for the window (moved to the pad layer too where the window cannot take it).
    fn split_pads(
        &mut self,
        base: &str,
        x: NodeId,
        size: Hw,
        pads: [usize; 4],
        value: f32,
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
            value,
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

    /// Converts node `i`; returns the layer computing its first output, if any.
    fn node(&mut self, n: &NodeProto) -> Result<Option<NodeId>> {
        let op = n.op_type();
        let base = layer_name(n.name(), n.op_type());
        let x_name = Self::input(n, 0).unwrap_or_default();
        let x_of = |me: &Self| me.value(x_name, "its input");
        let id = match op {
            "Constant" => {
                let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                    decode_tensor(t)?
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
                };
                self.consts.insert(n.output[0].clone(), c);
                return Ok(None);
            }
            "Identity" => Some(x_of(self)?),
            "Relu" => Some(self.layer(base, Op::Relu, &[x_of(self)?], vec![])?),
            "Dropout" => {
                if n.output
                    .get(1)
                    .is_some_and(|m| self.readers.contains_key(m))
                {
                    return Err(Error::Unsupported(
                        "Dropout's mask output is read; cnnc's dropout has one output".into(),
                    ));
                }
                Some(self.layer(base, Op::Dropout, &[x_of(self)?], vec![])?)
            }
            "GlobalAveragePool" => {
                Some(self.layer(base, Op::GlobalAvgPool, &[x_of(self)?], vec![])?)
            }
            "Conv" => {
                let x = x_of(self)?;
                let xs = self.g.node(x).shape;
                let w_name = Self::input(n, 1).unwrap_or_default();
                let w = self.constant(w_name, "the weight")?.clone();
                let what = format!("weight `{w_name}`");
                if w.dims.len() != 4 {
                    return Err(Error::Unsupported(format!(
                        "{what} has shape {}; cnnc's conv is 2-D ([K, C, kh, kw])",
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
                let (size, stride, pads) = window(n, &xs, [w.dims[2], w.dims[3]])?;
                let mut params = vec![("weight", Tensor::new(w.dims.clone(), w.floats(&what)?)?)];
                if let Some(b_name) = Self::input(n, 2) {
                    let b = self.constant(b_name, "the bias")?;
                    let what = format!("bias `{b_name}`");
                    params.push((
                        "bias",
                        Tensor::new(vec![b.dims.iter().product()], b.floats(&what)?)?,
                    ));
                }
                let (x, pad) = self.split_pads(&base, x, size, pads, 0.0)?;
                let conv = Conv {
                    filters: w.dims[0],
                    size,
                    stride,
                    pad,
                    bias: params.len() == 2,
                    epilogue: Epilogue::default(),
                };
                Some(self.layer(base, Op::Conv(conv), &[x], params)?)
            }
            "MaxPool" | "AveragePool" => {
                let x = x_of(self)?;
                let xs = self.g.node(x).shape;
                let k = attr_ints(n, "kernel_shape").unwrap_or_default();
                if k.len() != 2 || k.iter().any(|&v| v < 1) {
                    return Err(Error::Format(format!(
                        "kernel_shape {k:?} is not two positive numbers"
                    )));
                }
                let (size, stride, mut pads) = window(n, &xs, [k[0] as usize, k[1] as usize])?;
                let max = op == "MaxPool";
                if attr_int(n, "ceil_mode").unwrap_or(0) != 0 {
                    // Rounding up = padding the end with -inf until the last window fits.
                    for (axis, nlen, f, s) in
                        [(0, xs.h, size.h, stride.h), (1, xs.w, size.w, stride.w)]
                    {
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
                        if extra > 0 && !max {
                            return Err(Error::Unsupported(
                                "AveragePool with ceil_mode = 1 where rounding up adds a partial window (ONNX divides it by its clipped size; cnnc's avgpool rounds down)".into(),
                            ));
                        }
                        pads[axis + 2] += extra;
                    }
                }
                if !max && attr_int(n, "count_include_pad").unwrap_or(0) == 0 && pads != [0; 4] {
                    return Err(Error::Unsupported(format!(
                        "AveragePool with pads {pads:?} and count_include_pad = 0: cnnc's avgpool always counts the padding (count_include_pad = 1)"
                    )));
                }
                let value = if max { f32::NEG_INFINITY } else { 0.0 };
                let (x, pad) = self.split_pads(&base, x, size, pads, value)?;
                let p = Pool { size, stride, pad };
                let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
                Some(self.layer(base, op, &[x], vec![])?)
            }
            "Pad" => {
                let x = x_of(self)?;
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
                    && pads.iter().all(|&p| p >= 0)
                    && [pads[0], pads[1], pads[4], pads[5]] == [0; 4];
                if !ok || self.g.node(x).shape.flat {
                    return Err(Error::Unsupported(format!(
                        "pads {pads:?}: cnnc pads only height and width of a 4-D tensor, by amounts >= 0"
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
                Some(self.layer(base, Op::Pad(pad), &[x], vec![])?)
            }
            "Gemm" => {
                let x = x_of(self)?;
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
                Some(self.layer(base, Op::Fc(fc), &[x], params)?)
            }
            "MatMul" => {
                let x = x_of(self)?;
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
                Some(id)
            }
            "Add" | "Sum" => {
                let names: Vec<&str> = n.input.iter().map(String::as_str).collect();
                let consts: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|s| self.consts.contains_key(*s))
                    .collect();
                if !consts.is_empty() {
                    // MatMul + Add(bias) -> fc with bias.
                    let other = names
                        .iter()
                        .copied()
                        .find(|s| !self.consts.contains_key(*s));
                    let fc = other.and_then(|o| self.vals.get(o).copied().map(|id| (o, id)));
                    match (names.len(), consts.as_slice(), fc) {
                        (2, [c], Some((o, id))) if self.matmuls.contains(&id) && self.only_reader(o) => {
                            let units = self.g.node(id).shape.c;
                            let c_name = c.to_string();
                            let bias = bias_vector(&self.consts[&c_name], units, &format!("bias `{c_name}`"))?;
                            let node = self.g.node_mut(id);
                            if let Op::Fc(f) = &mut node.op {
                                f.bias = true;
                            }
                            node.params.insert("bias".into(), bias);
                            self.matmuls.remove(&id);
                            Some(id)
                        }
                        _ => {
                            return Err(Error::Unsupported(format!(
                                "{op} of the constant `{}`: cnnc adds constants only as the bias right after a MatMul",
                                consts[0]
                            )))
                        }
                    }
                } else if names.len() == 1 {
                    Some(x_of(self)?)
                } else {
                    let ids = names
                        .iter()
                        .map(|s| self.value(s, "an input"))
                        .collect::<Result<Vec<_>>>()?;
                    Some(self.layer(base, Op::Add, &ids, vec![])?)
                }
            }
            "Concat" => {
                let ids = n
                    .input
                    .iter()
                    .map(|s| self.value(s, "an input"))
                    .collect::<Result<Vec<_>>>()?;
                let rank = if self.g.node(ids[0]).shape.flat { 2 } else { 4 };
                let axis = attr_int(n, "axis").unwrap_or(1);
                if axis.rem_euclid(rank) != 1 {
                    return Err(Error::Unsupported(format!(
                        "Concat on axis {axis} of a {rank}-D tensor; cnnc concatenates channels (axis 1)"
                    )));
                }
                if ids.len() == 1 {
                    Some(ids[0])
                } else {
                    Some(self.layer(base, Op::Concat, &ids, vec![])?)
                }
            }
            "Flatten" => {
                let x = x_of(self)?;
                let xs = self.g.node(x).shape;
                let rank = if xs.flat { 2 } else { 4 };
                let axis = attr_int(n, "axis").unwrap_or(1);
                if axis.rem_euclid(rank) != 1 {
                    return Err(Error::Unsupported(format!(
                        "Flatten at axis {axis} of a {rank}-D tensor; cnnc flattens at axis 1"
                    )));
                }
                // cnnc's export puts `<fc>/flatten` before an fc on a C x H x W input;
                // the fc flattens by itself, so that node folds back into it.
                let out = &n.output[0];
                let folds = self.only_reader(out)
                    && self.onnx_graph().node.iter().any(|m| {
                        m.op_type() == "Gemm"
                            && m.input.first() == Some(out)
                            && format!("{}/flatten", m.name()) == n.name()
                    });
                if folds {
                    Some(x)
                } else {
                    Some(self.layer(base, Op::Flatten, &[x], vec![])?)
                }
            }
            "Reshape" => {
                let x = x_of(self)?;
                let features = self.g.node(x).shape.len() as i64;
                let s_name = Self::input(n, 1).unwrap_or_default();
                let target = self.constant(s_name, "the shape")?.ints("the shape")?;
                let allowzero = attr_int(n, "allowzero").unwrap_or(0) != 0;
                let batch_ok = |d: i64| (d == 0 && !allowzero) || Some(d) == self.batch;
                let flattens = match target.as_slice() {
                    [d0, -1] => batch_ok(*d0),
                    [d0, f] => (*d0 == -1 || batch_ok(*d0)) && *f == features,
                    _ => false,
                };
                if !flattens {
                    return Err(Error::Unsupported(format!(
                        "Reshape to {target:?}: cnnc reads Reshape only as a flatten to [N, {features}] (shape [-1, {features}], [0, -1] or [N, -1])"
                    )));
                }
                Some(self.layer(base, Op::Flatten, &[x], vec![])?)
            }
            "Softmax" => {
                let x = x_of(self)?;
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
                Some(self.layer(base, Op::Softmax, &[x], vec![])?)
            }
            "BatchNormalization" => {
                let x = x_of(self)?;
                if n.output
                    .iter()
                    .skip(1)
                    .any(|o| self.readers.contains_key(o))
                {
                    return Err(Error::Unsupported(
                        "BatchNormalization's running mean/var outputs are read (training mode)"
                            .into(),
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
                Some(self.layer(base, Op::BatchNorm { eps }, &[x], params)?)
            }
            other => {
                return Err(Error::Unsupported(format!("op {other} is not supported")));
            }
        };
        if let Some(id) = id {
            let out = n.output.first().cloned().unwrap_or_default();
            if out.is_empty() {
                return Err(Error::Format("the node has no output".into()));
            }
            self.vals.insert(out, id);
        }
        Ok(id)
    }
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

/// Reads an ONNX model into a graph with its weights bound (`weights_path` unset).
pub fn import(bytes: &[u8]) -> Result<Graph> {
    let model = ModelProto::decode(bytes).map_err(|e| {
        let text = std::str::from_utf8(bytes).is_ok_and(|t| !t.contains('\0'));
        Error::Format(if text && !bytes.is_empty() {
            "not an ONNX model: the file is text (ONNX models are binary protobuf files)".into()
        } else {
            format!("not an ONNX model, or a truncated one: the protobuf does not decode ({e})")
        })
    })?;
    let graph = match &model.graph {
        Some(g) if model.ir_version.is_some() => g,
        _ => {
            return Err(Error::Format(
                "not an ONNX model: it has no graph or no IR version".into(),
            ))
        }
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .ok_or_else(|| {
            Error::Format("the model imports no version of the standard ONNX operator set".into())
        })?;
    // Every node cnnc cannot take, in one message.
    let problems: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| unsupported(n).map(|why| format!("{}: {why}", at(i, n))))
        .collect();
    if !problems.is_empty() {
        let mut ops: Vec<&str> = graph
            .node
            .iter()
            .filter(|n| unsupported(n).is_some())
            .map(|n| n.op_type())
            .collect();
        ops.sort();
        ops.dedup();
        return Err(Error::Unsupported(format!(
            "the model uses {} node(s) cnnc does not support ({}): {}",
            problems.len(),
            ops.join(", "),
            problems.join("; ")
        )));
    }
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name().to_string(), decode_tensor(t)?);
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
    if let (Some(mean), Some(std)) = (meta(META_MEAN)?, meta(META_STD)?) {
        if mean.len() == c && std.len() == c {
            g.norm = Some(InputNorm { mean, std });
        }
    }
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name().to_string()).or_default() += 1;
    }
    let input_id = g.input;
    let mut imp = Importer {
        model: &model,
        opset,
        g,
        consts,
        vals: HashMap::from([(input_name, input_id)]),
        names: HashSet::from(["input".to_string()]),
        ordinals: HashMap::new(),
        readers,
        matmuls: HashSet::new(),
        batch,
    };
    for (i, n) in graph.node.iter().enumerate() {
        imp.node(n).map_err(|e| {
            let msg = e.to_string();
            let msg = format!("{}: {msg}", at(i, n));
            match e {
                Error::Unsupported(_) => Error::Unsupported(msg),
                Error::Shape(_) => Error::Shape(msg),
                Error::Weights(_) => Error::Weights(msg),
                _ => Error::Format(msg),
            }
        })?;
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
    // What is written must load again (the same loader and checks as `cnnc run`).
    crate::format::parse_str(&text, None).map_err(|e| {
        Error::Unsupported(format!(
            "{}: the imported graph does not load: {e}",
            onnx.display()
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
