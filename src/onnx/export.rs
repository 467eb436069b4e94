//! Graph -> ONNX: one node per layer, named after the layer, whose output tensor also
//! bears the layer's name; weights as initializers with PyTorch names
//! (`conv1.weight`); the input `input` of shape `[N, C, H, W]` with a symbolic `N`.
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::error::{Error, Result};
use crate::ir::{Graph, Op, Shape};
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
        let node = g.node(id);
        let name = node.name.as_str();
        let inputs: Vec<String> = g
            .inputs(id)
            .iter()
            .map(|&i| g.node(i).name.clone())
            .collect();
        let param = |suffix: &str| {
            node.param(suffix).ok_or_else(|| {
                Error::Weights(format!(
                    "{name}: parameter `{suffix}` is not bound; give the weights with --weights"
                ))
            })
        };
        // Layers with a fused epilogue compute their core op into `<name>/core`.
        let core_out = match node.op.epilogue() {
            Some(e) if !e.is_empty() => format!("{name}/core"),
            _ => name.to_string(),
        };
        let x = inputs.first().map(String::as_str).unwrap_or("input");
        match &node.op {
            Op::Input => unreachable!("skipped"),
            Op::Conv(c) => {
                let bias = c.bias.then(|| param("bias")).transpose()?;
                let attrs = vec![
                    attr_ints("kernel_shape", &[c.size.h as i64, c.size.w as i64]),
                    attr_ints("strides", &[c.stride.h as i64, c.stride.w as i64]),
                    attr_ints(
                        "pads",
                        &[
                            c.pad.h as i64,
                            c.pad.w as i64,
                            c.pad.h as i64,
                            c.pad.w as i64,
                        ],
                    ),
                ];
                b.weighted_node("Conv", name, x, param("weight")?, bias, &core_out, attrs);
            }
            Op::Gemm(gm) => {
                let cin = g.node(g.inputs(id)[0]).shape.c;
                let w = param("weight")?
                    .clone()
                    .reshaped(vec![gm.filters, cin, 1, 1])?;
                let bias = gm.bias.then(|| param("bias")).transpose()?;
                let attrs = vec![
                    attr_ints("kernel_shape", &[1, 1]),
                    attr_ints("strides", &[gm.stride.h as i64, gm.stride.w as i64]),
                ];
                b.weighted_node("Conv", name, x, &w, bias, &core_out, attrs);
            }
            Op::Fc(f) => {
                // Gemm takes [N, F]: a C x H x W input is flattened first by a helper
                // node `<name>/flatten`, which the importer folds back into the fc.
                let flat_in;
                let x = if g.node(g.inputs(id)[0]).shape.flat {
                    x
                } else {
                    flat_in = format!("{name}/flatten");
                    b.node(
                        "Flatten",
                        &flat_in,
                        &[x],
                        &flat_in,
                        vec![attr_int("axis", 1)],
                    );
                    flat_in.as_str()
                };
                let bias = f.bias.then(|| param("bias")).transpose()?;
                let attrs = vec![attr_int("transB", 1)];
                b.weighted_node("Gemm", name, x, param("weight")?, bias, &core_out, attrs);
            }
            Op::Relu => b.node("Relu", name, &[x], name, vec![]),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let mut attrs = vec![
                    attr_ints("kernel_shape", &[p.size.h as i64, p.size.w as i64]),
                    attr_ints("strides", &[p.stride.h as i64, p.stride.w as i64]),
                    attr_ints(
                        "pads",
                        &[
                            p.pad.h as i64,
                            p.pad.w as i64,
                            p.pad.h as i64,
                            p.pad.w as i64,
                        ],
                    ),
                ];
                let op = if matches!(node.op, Op::MaxPool(_)) {
                    "MaxPool"
                } else {
                    // cnnc's avgpool divides by the full window, padding included.
                    attrs.push(attr_int("count_include_pad", 1));
                    "AveragePool"
                };
                b.node(op, name, &[x], name, attrs);
            }
            Op::GlobalAvgPool => b.node("GlobalAveragePool", name, &[x], name, vec![]),
            Op::Flatten => b.node("Flatten", name, &[x], name, vec![attr_int("axis", 1)]),
            Op::Softmax => b.node("Softmax", name, &[x], name, vec![attr_int("axis", 1)]),
            Op::Add => {
                let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let op = if ins.len() == 2 { "Add" } else { "Sum" };
                b.node(op, name, &ins, name, vec![]);
            }
            Op::Concat => {
                let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
                b.node("Concat", name, &ins, name, vec![attr_int("axis", 1)]);
            }
            Op::BatchNorm { eps } => {
                let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|s| Ok(b.param(name, s, param(s)?)))
                    .collect::<Result<_>>()?;
                let mut ins = vec![x];
                ins.extend(names.iter().map(String::as_str));
                b.node(
                    "BatchNormalization",
                    name,
                    &ins,
                    name,
                    vec![attr_float("epsilon", *eps)],
                );
            }
            Op::Dropout => b.node("Dropout", name, &[x], name, vec![]),
            Op::Pad(p) => {
                let pads = format!("{name}.pads");
                let value = format!("{name}.value");
                let (t, l, bo, r) = (p.top as i64, p.left as i64, p.bottom as i64, p.right as i64);
                b.inits.push(tensor_i64(&pads, &[0, 0, t, l, 0, 0, bo, r]));
                b.inits.push(tensor_f32(&value, &[], &[p.value]));
                b.node("Pad", name, &[x, &pads, &value], name, vec![]);
            }
        }
        if let Some(e) = node.op.epilogue().filter(|e| !e.is_empty()) {
            let mut cur = core_out;
            if e.residual {
                let out = if e.relu {
                    format!("{name}/residual")
                } else {
                    name.to_string()
                };
                b.node(
                    "Add",
                    &format!("{name}/residual"),
                    &[&cur, &inputs[1]],
                    &out,
                    vec![],
                );
                cur = out;
            }
            if e.relu {
                b.node("Relu", &format!("{name}/relu"), &[&cur], name, vec![]);
            }
        }
    }
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
    Ok(ModelProto {
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
    })
}

/// The graph (weights bound) as the bytes of an ONNX model.
pub fn export(g: &Graph) -> Result<Vec<u8>> {
    Ok(to_model(g)?.encode_to_vec())
}

/// Writes the graph (weights bound) to `path` as an ONNX model.
pub fn export_file(g: &Graph, path: &Path) -> Result<()> {
    std::fs::write(path, export(g)?).map_err(|e| Error::io(path, e))
}
