//! Graph -> ONNX: one node per layer, named after the layer, whose output tensor also
//! bears the layer's name; weights as initializers with PyTorch names
//! (`conv1.weight`); the input `input` of shape `[N, C, H, W]` with a symbolic `N`.
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::error::{Error, Result};
use crate::ir::{Clip, Epilogue, Graph, Hw, NodeId, Op, Shape};
use crate::tensor::Tensor;
use prost::Message;
use std::path::Path;

/// The ONNX operator set the export targets.
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;
/// Metadata keys that carry the graph's input normalisation (JSON lists).
pub const META_MEAN: &str = "cnnc.input_mean";
pub const META_STD: &str = "cnnc.input_std";

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// An f32 initializer stored as raw little-endian bytes.
pub(crate) fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

pub(crate) fn tensor_i64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![data.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A float tensor type `[N, dims...]` with a symbolic batch `N`.
pub(crate) fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let mut dim = vec![Dimension {
        value: Some(Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(Value::DimValue(d as i64)),
        ..Default::default()
    }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn item_dims(s: &Shape) -> Vec<usize> {
    s.dims(1)[1..].to_vec()
}

struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Builder {
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// A node reading `x`, then the layer's weight and (if any) bias as initializers:
    /// the input order Conv and Gemm share.
    #[allow(clippy::too_many_arguments)]
    fn weighted_node(
        &mut self,
        op: &str,
        name: &str,
        x: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        let w = self.param(name, "weight", weight);
        let bias = bias.map(|t| self.param(name, "bias", t));
        let mut ins = vec![x, w.as_str()];
        ins.extend(bias.as_deref());
        self.node(op, name, &ins, output, attrs);
    }

    /// Adds the layer's parameter `suffix` as an initializer and returns its name.
    fn param(&mut self, layer: &str, suffix: &str, t: &Tensor) -> String {
        let name = format!("{layer}.{suffix}");
        self.inits.push(tensor_f32(&name, t.shape(), t.data()));
        name
    }
}

/// One layer being written: its node, its input value names and where its core op's
/// result goes (`<name>/core` when an epilogue follows).
struct LayerOut<'g> {
    g: &'g Graph,
    id: NodeId,
    node: &'g crate::ir::Node,
    inputs: Vec<String>,
    core_out: String,
}

impl<'g> LayerOut<'g> {
    fn new(g: &'g Graph, id: NodeId) -> Self {
        let node = g.node(id);
        let inputs = g
            .inputs(id)
            .iter()
            .map(|&i| g.node(i).name.clone())
            .collect();
        // Layers with a fused epilogue compute their core op into `<name>/core`.
        let core_out = match node.op.epilogue() {
            Some(e) if !e.is_empty() => format!("{}/core", node.name),
            _ => node.name.clone(),
        };
        LayerOut {
            g,
            id,
            node,
            inputs,
            core_out,
        }
    }
    fn name(&self) -> &'g str {
        &self.node.name
    }
    fn x(&self) -> &str {
        self.inputs.first().map(String::as_str).unwrap_or("input")
    }
    fn input_shape(&self) -> Shape {
        self.g.node(self.g.inputs(self.id)[0]).shape
    }
    fn param(&self, suffix: &str) -> Result<&'g Tensor> {
        self.node.param(suffix).ok_or_else(|| {
            Error::Weights(format!(
                "{}: parameter `{suffix}` is not bound; give the weights with --weights",
                self.node.name
            ))
        })
    }
    fn bias(&self, has: bool) -> Result<Option<&'g Tensor>> {
        has.then(|| self.param("bias")).transpose()
    }
}

fn hw_ints(v: Hw) -> [i64; 2] {
    [v.h as i64, v.w as i64]
}

fn pads(begin: Hw, end: Hw) -> AttributeProto {
    attr_ints(
        "pads",
        &[begin.h as i64, begin.w as i64, end.h as i64, end.w as i64],
    )
}

impl Builder {
    /// The ONNX nodes of one layer.
    fn layer(&mut self, l: &LayerOut) -> Result<()> {
        let (name, x) = (l.name(), l.x());
        match &l.node.op {
            Op::Input => unreachable!("skipped"),
            Op::Conv(c) => {
                let attrs = vec![
                    attr_ints("kernel_shape", &hw_ints(c.size)),
                    attr_ints("strides", &hw_ints(c.stride)),
                    pads(c.pad, c.pad),
                    attr_ints("dilations", &hw_ints(c.dilation)),
                    attr_int("group", c.groups as i64),
                ];
                let (w, b) = (l.param("weight")?, l.bias(c.bias)?);
                self.weighted_node("Conv", name, x, w, b, &l.core_out, attrs);
            }
            Op::Gemm(gm) => {
                let cin = l.input_shape().c;
                let w = l
                    .param("weight")?
                    .clone()
                    .reshaped(vec![gm.filters, cin, 1, 1])?;
                let attrs = vec![
                    attr_ints("kernel_shape", &[1, 1]),
                    attr_ints("strides", &hw_ints(gm.stride)),
                ];
                let b = l.bias(gm.bias)?;
                self.weighted_node("Conv", name, x, &w, b, &l.core_out, attrs);
            }
            Op::Fc(f) => self.fc(l, f.bias)?,
            Op::Relu => self.node("Relu", name, &[x], name, vec![]),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let mut attrs = vec![
                    attr_ints("kernel_shape", &hw_ints(p.size)),
                    attr_ints("strides", &hw_ints(p.stride)),
                    pads(p.pad, p.pad_end),
                ];
                let op = if matches!(l.node.op, Op::MaxPool(_)) {
                    "MaxPool"
                } else {
                    attrs.push(attr_int("count_include_pad", p.count_pad as i64));
                    "AveragePool"
                };
                self.node(op, name, &[x], name, attrs);
            }
            Op::GlobalAvgPool => self.node("GlobalAveragePool", name, &[x], name, vec![]),
            Op::Flatten => self.node("Flatten", name, &[x], name, vec![attr_int("axis", 1)]),
            Op::Softmax => self.node("Softmax", name, &[x], name, vec![attr_int("axis", 1)]),
            Op::Add => {
                let ins: Vec<&str> = l.inputs.iter().map(String::as_str).collect();
                let op = if ins.len() == 2 { "Add" } else { "Sum" };
                self.node(op, name, &ins, name, vec![]);
            }
            Op::Concat => {
                let ins: Vec<&str> = l.inputs.iter().map(String::as_str).collect();
                self.node("Concat", name, &ins, name, vec![attr_int("axis", 1)]);
            }
            Op::BatchNorm { eps } => {
                let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|s| Ok(self.param(name, s, l.param(s)?)))
                    .collect::<Result<_>>()?;
                let mut ins = vec![x];
                ins.extend(names.iter().map(String::as_str));
                let attrs = vec![attr_float("epsilon", *eps)];
                self.node("BatchNormalization", name, &ins, name, attrs);
            }
            Op::Dropout => self.node("Dropout", name, &[x], name, vec![]),
            Op::Pad(p) => {
                let pads = format!("{name}.pads");
                let value = format!("{name}.value");
                let (t, le, bo, r) = (p.top as i64, p.left as i64, p.bottom as i64, p.right as i64);
                self.inits
                    .push(tensor_i64(&pads, &[0, 0, t, le, 0, 0, bo, r]));
                self.inits.push(tensor_f32(&value, &[], &[p.value]));
                self.node("Pad", name, &[x, &pads, &value], name, vec![]);
            }
            Op::Clip(c) => self.clip(name, x, c, name),
            Op::Lrn(lrn) => {
                let attrs = vec![
                    attr_int("size", lrn.size as i64),
                    attr_float("alpha", lrn.alpha),
                    attr_float("beta", lrn.beta),
                    attr_float("bias", lrn.bias),
                ];
                self.node("LRN", name, &[x], name, attrs);
            }
            Op::ChannelShuffle { groups } => self.shuffle(name, x, *groups, &l.input_shape()),
            Op::ScaleShift => self.scale_shift(l)?,
        }
        Ok(())
    }

    /// Gemm takes [N, F]: a C x H x W input is flattened first by a helper node
    /// `<name>/flatten`, which the importer folds back into the fc.
    fn fc(&mut self, l: &LayerOut, bias: bool) -> Result<()> {
        let name = l.name();
        let flat_in = format!("{name}/flatten");
        let x = if l.input_shape().flat {
            l.x()
        } else {
            self.node(
                "Flatten",
                &flat_in,
                &[l.x()],
                &flat_in,
                vec![attr_int("axis", 1)],
            );
            flat_in.as_str()
        };
        let (w, b) = (l.param("weight")?, l.bias(bias)?);
        let attrs = vec![attr_int("transB", 1)];
        self.weighted_node("Gemm", name, x, w, b, &l.core_out, attrs);
        Ok(())
    }

    /// Clip with its bounds as scalar initializers (an infinite bound is left out).
    fn clip(&mut self, name: &str, x: &str, c: &Clip, out: &str) {
        let mut ins = vec![x.to_string()];
        for (what, v) in [("min", c.min), ("max", c.max)] {
            if v.is_finite() {
                let t = format!("{name}.{what}");
                self.inits.push(tensor_f32(&t, &[], &[v]));
                ins.push(t);
            } else {
                ins.push(String::new());
            }
        }
        while ins.last().is_some_and(|s| s.is_empty()) {
            ins.pop();
        }
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        self.node("Clip", name, &ins, out, vec![]);
    }

    /// ShuffleNet's three nodes: Reshape to [N, G, C/G, H, W], Transpose(0, 2, 1, 3, 4),
    /// Reshape back (the importer reads the three back as one layer).
    fn shuffle(&mut self, name: &str, x: &str, groups: usize, s: &Shape) {
        let (g, c, h, w) = (groups as i64, s.c as i64, s.h as i64, s.w as i64);
        let (split, back) = (format!("{name}.split"), format!("{name}.shape"));
        self.inits.push(tensor_i64(&split, &[0, g, c / g, h, w]));
        self.inits.push(tensor_i64(&back, &[0, c, h, w]));
        let (grouped, swapped) = (format!("{name}/grouped"), format!("{name}/swapped"));
        self.node("Reshape", &grouped, &[x, &split], &grouped, vec![]);
        let perm = vec![attr_ints("perm", &[0, 2, 1, 3, 4])];
        self.node("Transpose", &swapped, &[&grouped], &swapped, perm);
        self.node("Reshape", name, &[&swapped, &back], name, vec![]);
    }

    /// Mul by `weight` and Add of `bias`, both shaped to broadcast per channel.
    fn scale_shift(&mut self, l: &LayerOut) -> Result<()> {
        let (name, s) = (l.name(), l.input_shape());
        let dims = if s.flat { vec![s.c] } else { vec![s.c, 1, 1] };
        let (scale, shift) = (format!("{name}.weight"), format!("{name}.bias"));
        self.inits
            .push(tensor_f32(&scale, &dims, l.param("weight")?.data()));
        self.inits
            .push(tensor_f32(&shift, &dims, l.param("bias")?.data()));
        let scaled = format!("{name}/scaled");
        self.node(
            "Mul",
            &format!("{name}/Mul"),
            &[l.x(), &scale],
            &scaled,
            vec![],
        );
        self.node(
            "Add",
            &format!("{name}/Add"),
            &[&scaled, &shift],
            name,
            vec![],
        );
        Ok(())
    }

    /// The fused tail of a conv, gemm or fc: Add(residual), Relu, Clip, in that order,
    /// the last writing the layer's name.
    fn epilogue(&mut self, l: &LayerOut, e: &Epilogue) {
        let name = l.name();
        let steps = [e.residual, e.relu, e.clip.is_some()];
        let last = steps.iter().rposition(|&s| s).unwrap_or(0);
        let out = |i: usize, what: &str| {
            if i == last {
                name.to_string()
            } else {
                format!("{name}/{what}")
            }
        };
        let mut cur = l.core_out.clone();
        if e.residual {
            let o = out(0, "residual");
            self.node(
                "Add",
                &format!("{name}/residual"),
                &[&cur, &l.inputs[1]],
                &o,
                vec![],
            );
            cur = o;
        }
        if e.relu {
            let o = out(1, "relu");
            self.node("Relu", &format!("{name}/relu"), &[&cur], &o, vec![]);
            cur = o;
        }
        if let Some(c) = &e.clip {
            self.clip(&format!("{name}/clip"), &cur, c, name);
        }
    }
}

/// The ONNX model of a graph whose weights are bound.
pub fn to_model(g: &Graph) -> Result<ModelProto> {
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
    };
    for id in g.topo_order()? {
        if id == g.input {
            continue;
        }
        let l = LayerOut::new(g, id);
        b.layer(&l)?;
        if let Some(e) = l.node.op.epilogue().filter(|e| !e.is_empty()) {
            b.epilogue(&l, e);
        }
    }
    Ok(model_proto(g, b))
}

/// The model around the nodes and initializers `b` holds.
fn model_proto(g: &Graph, b: Builder) -> ModelProto {
    let s = g.input_shape();
    let outputs = g
        .outputs
        .iter()
        .map(|&o| value_info(&g.node(o).name, &item_dims(&g.node(o).shape)))
        .collect();
    let graph = GraphProto {
        node: b.nodes,
        name: Some(g.name.clone()),
        initializer: b.inits,
        input: vec![value_info("input", &[s.c, s.h, s.w])],
        output: outputs,
        ..Default::default()
    };
    let mut metadata_props = Vec::new();
    if let Some(n) = &g.norm {
        for (key, v) in [(META_MEAN, &n.mean), (META_STD, &n.std)] {
            metadata_props.push(StringStringEntryProto {
                key: Some(key.into()),
                value: Some(serde_json::to_string(v).expect("floats serialise")),
            });
        }
    }
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("cnnc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props,
        ..Default::default()
    }
}

/// The graph (weights bound) as the bytes of an ONNX model.
pub fn export(g: &Graph) -> Result<Vec<u8>> {
    Ok(to_model(g)?.encode_to_vec())
}

/// Writes the graph (weights bound) to `path` as an ONNX model.
pub fn export_file(g: &Graph, path: &Path) -> Result<()> {
    std::fs::write(path, export(g)?).map_err(|e| Error::io(path, e))
}
