//! The YAML graph format (see `docs/graph-format.md`): parsing, `repeat` expansion,
//! layer naming, and building the IR.
mod attrs;
mod limits;
mod write;

pub use write::write_str;

use crate::error::{Error, Result};
use crate::ir::{
    Clip, Conv, Epilogue, Fc, Graph, Hw, InputNorm, Lrn, NodeId, Op, Pad, Pool, Shape,
};
use attrs::*;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// The ops a layer may name, in the order error messages list them.
pub const OPS: &[&str] = &[
    "conv",
    "relu",
    "maxpool",
    "avgpool",
    "global_avgpool",
    "fc",
    "flatten",
    "softmax",
    "add",
    "concat",
    "batchnorm",
    "dropout",
    "pad",
    "clip",
    "relu6",
    "lrn",
    "channel_shuffle",
    "scale_shift",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    name: Option<String>,
    input: InputDecl,
    weights: Option<String>,
    #[serde(default)]
    seed: u64,
    layers: Vec<LayerItem>,
    outputs: Option<Vec<String>>,
    #[serde(default)]
    strict_shapes: bool,
}

struct InputDecl {
    shape: [usize; 3],
    norm: Option<InputNorm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputMap {
    shape: Vec<Positive>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
}

impl<'de> Deserialize<'de> for InputDecl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputDecl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "[C, H, W] or {{shape: [C, H, W], mean: [..], std: [..]}}"
                )
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<InputDecl, A::Error> {
                let dims: Vec<Positive> =
                    Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(InputDecl {
                    shape: chw::<A::Error>(&dims)?,
                    norm: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InputDecl, A::Error> {
                let m: InputMap =
                    Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let shape = chw::<A::Error>(&m.shape)?;
                let norm = match (m.mean, m.std) {
                    (None, None) => None,
                    (mean, std) => {
                        // Check given lengths before making defaults of C values.
                        for (what, v) in [("mean", &mean), ("std", &std)] {
                            if let Some(v) = v.as_ref().filter(|v| v.len() != shape[0]) {
                                return Err(de::Error::custom(format!(
                                    "input {what} has {} values, but the input has {} channels",
                                    v.len(),
                                    shape[0]
                                )));
                            }
                        }
                        let mean = mean.unwrap_or_else(|| vec![0.0; shape[0]]);
                        let std = std.unwrap_or_else(|| vec![1.0; shape[0]]);
                        for (what, v) in [("mean", &mean), ("std", &std)] {
                            if v.len() != shape[0] {
                                return Err(de::Error::custom(format!(
                                    "input {what} has {} values, but the input has {} channels",
                                    v.len(),
                                    shape[0]
                                )));
                            }
                        }
                        if let Some(s) = std
                            .iter()
                            .find(|s| s.partial_cmp(&&0.0) != Some(std::cmp::Ordering::Greater))
                        {
                            return Err(de::Error::custom(format!(
                                "input std must be positive, got {s}"
                            )));
                        }
                        Some(InputNorm { mean, std })
                    }
                };
                Ok(InputDecl { shape, norm })
            }
        }
        d.deserialize_any(V)
    }
}

fn chw<E: de::Error>(dims: &[Positive]) -> Result<[usize; 3], E> {
    match dims {
        [c, h, w] => Ok([c.0, h.0, w.0]),
        _ => Err(E::custom(format!(
            "the input shape is [C, H, W], three numbers; got {}",
            dims.len()
        ))),
    }
}

/// One entry of `layers:` as written.
#[derive(Clone)]
enum LayerItem {
    Layer(LayerDecl),
    Repeat {
        times: usize,
        layers: Vec<LayerItem>,
    },
}

#[derive(Clone)]
struct LayerDecl {
    op: Op,
    name: Option<String>,
    inputs: Option<Vec<String>>,
}

/// The op a bare name stands for, if it needs no attributes.
fn bare_op(name: &str) -> Option<Op> {
    Some(match name {
        "relu" => Op::Relu,
        "softmax" => Op::Softmax,
        "flatten" => Op::Flatten,
        "global_avgpool" => Op::GlobalAvgPool,
        "dropout" => Op::Dropout,
        "batchnorm" => Op::BatchNorm { eps: 1e-5 },
        "add" => Op::Add,
        "concat" => Op::Concat,
        "relu6" => Op::Clip(Clip { min: 0.0, max: 6.0 }),
        "scale_shift" => Op::ScaleShift,
        _ => return None,
    })
}

fn unknown_op<E: de::Error>(name: &str) -> E {
    E::custom(format!(
        "unknown op `{name}`; the ops are: {}",
        OPS.join(", ")
    ))
}

fn op_from_map<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Result<Op, A::Error> {
    let pool = |a: PoolAttrs| {
        let pad = a.pad.map_or(Hw::square(0), |p| p.0);
        Pool {
            size: a.size.0,
            stride: a.stride.map_or(a.size.0, |s| s.0),
            pad,
            pad_end: a.pad_end.map_or(pad, |p| p.0),
            count_pad: a.count_include_pad.unwrap_or(true),
        }
    };
    Ok(match key {
        "conv" => {
            let a: ConvAttrs = map.next_value()?;
            Op::Conv(Conv {
                filters: a.filters.0,
                size: a.size.0,
                stride: a.stride.map_or(Hw::square(1), |s| s.0),
                pad: a.pad.map_or(Hw::square(0), |p| p.0),
                dilation: a.dilation.map_or(Hw::square(1), |d| d.0),
                groups: a.groups.map_or(1, |g| g.0),
                bias: a.bias.unwrap_or(true),
                epilogue: Epilogue::default(),
            })
        }
        "maxpool" => Op::MaxPool(pool(map.next_value()?)),
        "avgpool" => Op::AvgPool(pool(map.next_value()?)),
        "fc" => {
            let a: FcAttrs = map.next_value()?;
            Op::Fc(Fc {
                units: a.units.0,
                bias: a.bias.unwrap_or(true),
                epilogue: Epilogue::default(),
            })
        }
        "batchnorm" => {
            let a: Option<BatchNormAttrs> = map.next_value()?;
            let eps = a.and_then(|a| a.eps).unwrap_or(1e-5);
            if eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return Err(de::Error::custom(format!(
                    "batchnorm eps must be positive, got {eps}"
                )));
            }
            Op::BatchNorm { eps }
        }
        "dropout" => {
            let a: Option<DropoutAttrs> = map.next_value()?;
            if let Some(p) = a.and_then(|a| a.p) {
                if !(0.0..1.0).contains(&p) {
                    return Err(de::Error::custom(format!(
                        "dropout p must be in [0, 1), got {p}"
                    )));
                }
            }
            Op::Dropout
        }
        "pad" => {
            let a: PadAttrs = map.next_value()?;
            let value = a.value.unwrap_or(0.0);
            if value.is_nan() || value == f32::INFINITY {
                return Err(de::Error::custom(format!(
                    "pad value must be a number or -.inf, got {value}"
                )));
            }
            let side = |s: Option<Count<0>>| s.map_or(0, |c| c.0);
            Op::Pad(Pad {
                top: side(a.top),
                left: side(a.left),
                bottom: side(a.bottom),
                right: side(a.right),
                value,
            })
        }
        "clip" => {
            let a: ClipAttrs = map.next_value()?;
            let clip = Clip {
                min: a.min.unwrap_or(f32::NEG_INFINITY),
                max: a.max.unwrap_or(f32::INFINITY),
            };
            if clip.min.is_nan() || clip.max.is_nan() || clip.min > clip.max {
                return Err(de::Error::custom(format!(
                    "clip needs min <= max, got min {} and max {}",
                    clip.min, clip.max
                )));
            }
            Op::Clip(clip)
        }
        "lrn" => {
            let a: LrnAttrs = map.next_value()?;
            let lrn = Lrn {
                size: a.size.0,
                alpha: a.alpha.unwrap_or(1e-4),
                beta: a.beta.unwrap_or(0.75),
                bias: a.bias.unwrap_or(1.0),
            };
            if ![lrn.alpha, lrn.beta, lrn.bias]
                .iter()
                .all(|v| v.is_finite())
            {
                return Err(de::Error::custom(
                    "lrn alpha, beta and bias must be finite numbers",
                ));
            }
            Op::Lrn(lrn)
        }
        "channel_shuffle" => {
            let a: ShuffleAttrs = map.next_value()?;
            Op::ChannelShuffle { groups: a.groups.0 }
        }
        other => match bare_op(other) {
            Some(op) => {
                let _: Option<NoAttrs> = map.next_value()?;
                op
            }
            None => return Err(unknown_op(other)),
        },
    })
}

impl<'de> Deserialize<'de> for LayerItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LayerItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a layer: an op name, or a map with one op key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<LayerItem, E> {
                match bare_op(s) {
                    Some(op) => Ok(LayerItem::Layer(LayerDecl {
                        op,
                        name: None,
                        inputs: None,
                    })),
                    None if OPS.contains(&s) => Err(E::custom(format!(
                        "`{s}` needs attributes, e.g. {}",
                        match s {
                            "conv" => "conv: {filters: 16, size: 3}",
                            "fc" => "fc: {units: 10}",
                            "pad" => "pad: {bottom: 1, right: 1}",
                            "clip" => "clip: {min: 0, max: 6}",
                            "lrn" => "lrn: {size: 5, alpha: 0.0001, beta: 0.75, bias: 1}",
                            "channel_shuffle" => "channel_shuffle: {groups: 3}",
                            _ => "maxpool: {size: 2}",
                        }
                    ))),
                    None => Err(unknown_op(s)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LayerItem, A::Error> {
                let (mut op, mut name, mut inputs) = (None::<(String, Op)>, None, None);
                let (mut repeat, mut layers) = (None::<Positive>, None::<Vec<LayerItem>>);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => name = Some(map.next_value::<String>()?),
                        "inputs" => inputs = Some(map.next_value::<Vec<String>>()?),
                        "repeat" => repeat = Some(map.next_value()?),
                        "layers" => layers = Some(map.next_value()?),
                        k => {
                            let parsed = op_from_map(k, &mut map)?;
                            if let Some((first, _)) = &op {
                                return Err(de::Error::custom(format!(
                                    "a layer has exactly one op, but this one has `{first}` and `{k}`"
                                )));
                            }
                            op = Some((k.to_string(), parsed));
                        }
                    }
                }
                if repeat.is_some() || layers.is_some() {
                    return match (repeat, layers, &op, &name, &inputs) {
                        (Some(times), Some(layers), None, None, None) => Ok(LayerItem::Repeat {
                            times: times.0,
                            layers,
                        }),
                        (None, _, _, _, _) => Err(de::Error::custom(
                            "`layers:` inside a layer list needs `repeat: N` beside it",
                        )),
                        (_, None, _, _, _) => Err(de::Error::custom(
                            "`repeat: N` needs the block to repeat as `layers: [...]`",
                        )),
                        _ => Err(de::Error::custom(
                            "a repeat block has only `repeat:` and `layers:` (no op, name or inputs)",
                        )),
                    };
                }
                let (_, op) = op.ok_or_else(|| {
                    de::Error::custom(format!(
                        "this layer names no op; the ops are: {}",
                        OPS.join(", ")
                    ))
                })?;
                Ok(LayerItem::Layer(LayerDecl { op, name, inputs }))
            }
        }
        d.deserialize_any(V)
    }
}

/// Flattens `repeat` blocks into a plain list of layers.
fn expand(items: &[LayerItem], in_repeat: bool, out: &mut Vec<LayerDecl>) -> Result<()> {
    for item in items {
        match item {
            LayerItem::Layer(l) => {
                if in_repeat && (l.name.is_some() || l.inputs.is_some()) {
                    return Err(Error::Format(format!(
                        "a {} layer inside `repeat` has `name:` or `inputs:`; a repeated block is a plain chain, so its layers are named automatically",
                        l.op.kind()
                    )));
                }
                out.push(l.clone());
            }
            LayerItem::Repeat { times, layers } => {
                // The block is expanded once and copied: an empty block costs nothing,
                // however many times it repeats.
                let mut block = Vec::new();
                expand(layers, true, &mut block)?;
                if times.saturating_mul(block.len()) > 100_000 {
                    return Err(Error::Format(format!(
                        "repeat {times} of {} layers is more than the limit of 100000 layers",
                        block.len()
                    )));
                }
                if !block.is_empty() {
                    for _ in 0..*times {
                        out.extend_from_slice(&block);
                    }
                }
            }
        }
        if out.len() > 100_000 {
            return Err(Error::Format(
                "the graph has more than the limit of 100000 layers".into(),
            ));
        }
    }
    Ok(())
}

/// Parses a graph from YAML text. `base` is the folder relative paths (`weights:`) are
/// resolved against. Shapes are inferred and checked.
pub fn parse_str(text: &str, base: Option<&Path>) -> Result<Graph> {
    limits::check(text)?;
    let doc: Document = serde_yaml::from_str(text).map_err(|e| document_error(text, e))?;
    let mut decls = Vec::new();
    expand(&doc.layers, false, &mut decls)?;
    if decls.is_empty() {
        return Err(Error::Format("the graph has no layers".into()));
    }
    let [c, h, w] = doc.input.shape;
    crate::ir::shape::check_budget("input", "input", &[c, h, w])?;
    let mut g = Graph::new(
        doc.name.unwrap_or_else(|| "graph".into()),
        Shape::chw(c, h, w),
    );
    g.norm = doc.input.norm;
    g.seed = doc.seed;
    g.strict_shapes = doc.strict_shapes;
    g.weights_path = doc.weights.map(|p| base.unwrap_or(Path::new("")).join(p));

    // Names first: a layer may name a later one as its input (that is a cycle or
    // a forward reference, both reported below).
    let mut ordinals: HashMap<&'static str, usize> = HashMap::new();
    let mut ids: HashMap<String, NodeId> = HashMap::from([("input".to_string(), g.input)]);
    let mut order = Vec::with_capacity(decls.len());
    for decl in &decls {
        let kind = decl.op.kind();
        let k = ordinals.entry(kind).or_insert(0);
        *k += 1;
        let name = decl.name.clone().unwrap_or_else(|| format!("{kind}{k}"));
        if name.is_empty() {
            return Err(Error::Graph(format!("a {kind} layer has an empty name")));
        }
        if name == "input" {
            return Err(Error::Graph(format!(
                "a {kind} layer is named `input`, which is the graph input's name"
            )));
        }
        if ids.contains_key(&name) {
            return Err(Error::Graph(format!("two layers are named `{name}`")));
        }
        let id = g
            .dag
            .add_node(crate::ir::Node::new(name.clone(), decl.op.clone()));
        ids.insert(name, id);
        order.push(id);
    }
    let position: HashMap<NodeId, usize> =
        order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut forward = None;
    let mut prev = g.input;
    for (i, (decl, &id)) in decls.iter().zip(&order).enumerate() {
        let inputs: Vec<NodeId> = match &decl.inputs {
            None => vec![prev],
            Some(names) => names
                .iter()
                .map(|n| {
                    ids.get(n).copied().ok_or_else(|| {
                        Error::Graph(format!(
                            "{}: input `{n}` is not a layer of this graph",
                            g.dag[id].name
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        for (slot, src) in inputs.into_iter().enumerate() {
            if forward.is_none() && position.get(&src).is_some_and(|&p| p > i) {
                forward = Some((id, src));
            }
            g.dag.add_edge(src, id, slot);
        }
        prev = id;
    }
    // A cycle is the more useful report, so look for one before blaming the order.
    g.topo_order()?;
    if let Some((id, src)) = forward {
        return Err(Error::Graph(format!(
            "{}: input `{}` is a later layer; a layer may only read layers above it in the file",
            g.dag[id].name, g.dag[src].name
        )));
    }
    g.outputs = match doc.outputs {
        None => vec![prev],
        Some(names) if names.is_empty() => {
            return Err(Error::Graph("`outputs:` is empty".into()));
        }
        Some(names) => names
            .iter()
            .map(|n| {
                ids.get(n).copied().ok_or_else(|| {
                    Error::Graph(format!("output `{n}` is not a layer of this graph"))
                })
            })
            .collect::<Result<_>>()?,
    };
    g.infer_shapes()?;
    crate::ir::limits::check(&g)?;
    Ok(g)
}

/// The error for a document that does not deserialise: a YAML syntax error if there is
/// one anywhere in the text (serde reports the first type mismatch it meets, and an
/// unclosed `[` makes the rest of the file a string), else what the structure lacks.
fn document_error(text: &str, e: serde_yaml::Error) -> Error {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Err(syntax) => Error::Format(format!("YAML syntax error: {syntax}")),
        Ok(serde_yaml::Value::Mapping(_)) => Error::Format(e.to_string()),
        Ok(other) => {
            let kind = match other {
                serde_yaml::Value::Sequence(_) => "a list",
                serde_yaml::Value::Null => "empty",
                _ => "a single value",
            };
            Error::Format(format!(
                "a graph is a map with `input:` and `layers:` (see docs/graph-format.md), but this file is {kind}"
            ))
        }
    }
}

/// Reads and parses a graph file; errors name the file.
pub fn load(path: impl AsRef<Path>) -> Result<Graph> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        Error::Format(format!(
            "{}: line {line} column {column}: the file is not UTF-8 text (byte 0x{:02x})",
            path.display(),
            e.as_bytes()[valid.len()]
        ))
    })?;
    parse_str(&text, path.parent()).map_err(|e| match e {
        Error::Format(m) => Error::Format(format!("{}: {m}", path.display())),
        other => other,
    })
}
