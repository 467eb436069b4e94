//! Writing a graph back as YAML in the graph format: one flow-style line per layer,
//! `name:` only where the automatic name would differ, `inputs:` only where a layer
//! does not read the layer before it, `outputs:` only where the output is not the
//! last layer. Parsing the text gives the same graph (parameters aside).
use crate::error::{Error, Result};
use crate::ir::{Graph, Hw, Op};
use std::collections::HashMap;
use std::fmt::Write;

/// A scalar as YAML text: plain when safe, else double-quoted.
fn scalar(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "nan" | "inf"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serialises")
    }
}

fn hw(v: Hw) -> String {
    if v.h == v.w {
        v.h.to_string()
    } else {
        format!("[{}, {}]", v.h, v.w)
    }
}

fn float(v: f32) -> String {
    if v == f32::NEG_INFINITY {
        "-.inf".into()
    } else if v == f32::INFINITY {
        ".inf".into()
    } else if v.is_nan() {
        // YAML's NaN: the reader then says which attribute may not be NaN.
        ".nan".into()
    } else {
        // `{:?}` keeps a decimal point (`1.0`), so YAML reads a float back.
        format!("{v:?}")
    }
}

fn floats(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|&x| float(x)).collect();
    format!("[{}]", items.join(", "))
}

/// The op as a layer's key and value, e.g. `conv: {filters: 8, size: 3, pad: 1}` or `relu`.
fn op_text(op: &Op) -> Result<(String, Option<String>)> {
    let attrs = |pairs: Vec<(&str, String)>| {
        let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{{{}}}", inner.join(", "))
    };
    let window = |size: Hw, stride: Hw, pad: Hw, default_stride: Hw| {
        let mut a = vec![("size", hw(size))];
        if stride != default_stride {
            a.push(("stride", hw(stride)));
        }
        if !pad.is(0) {
            a.push(("pad", hw(pad)));
        }
        a
    };
    let value = match op {
        Op::Input => unreachable!("the input is not a layer"),
        Op::Conv(c) => {
            if !c.epilogue.is_empty() {
                return Err(Error::Unsupported(
                    "the graph format has no fused epilogues; write the graph before optimisation passes".into(),
                ));
            }
            let mut a = vec![("filters", c.filters.to_string())];
            a.extend(window(c.size, c.stride, c.pad, Hw::square(1)));
            if !c.dilation.is(1) {
                a.push(("dilation", hw(c.dilation)));
            }
            if c.groups != 1 {
                a.push(("groups", c.groups.to_string()));
            }
            if !c.bias {
                a.push(("bias", "false".into()));
            }
            Some(attrs(a))
        }
        Op::Gemm(_) => {
            return Err(Error::Unsupported(
                "the graph format has no gemm layer (a lowered 1x1 conv); write the graph before optimisation passes".into(),
            ))
        }
        Op::Fc(f) => {
            if !f.epilogue.is_empty() {
                return Err(Error::Unsupported(
                    "the graph format has no fused epilogues; write the graph before optimisation passes".into(),
                ));
            }
            let mut a = vec![("units", f.units.to_string())];
            if !f.bias {
                a.push(("bias", "false".into()));
            }
            Some(attrs(a))
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let mut a = window(p.size, p.stride, p.pad, p.size);
            if !p.symmetric() {
                a.push(("pad_end", hw(p.pad_end)));
            }
            if matches!(op, Op::AvgPool(_)) && !p.count_pad {
                a.push(("count_include_pad", "false".into()));
            }
            Some(attrs(a))
        }
        Op::Clip(c) => Some(attrs(vec![("min", float(c.min)), ("max", float(c.max))])),
        Op::Lrn(l) => Some(attrs(vec![
            ("size", l.size.to_string()),
            ("alpha", float(l.alpha)),
            ("beta", float(l.beta)),
            ("bias", float(l.bias)),
        ])),
        Op::ChannelShuffle { groups } => Some(attrs(vec![("groups", groups.to_string())])),
        Op::BatchNorm { eps } if *eps != 1e-5 => Some(attrs(vec![("eps", float(*eps))])),
        Op::Pad(p) => {
            let mut a = Vec::new();
            for (k, v) in [
                ("top", p.top),
                ("left", p.left),
                ("bottom", p.bottom),
                ("right", p.right),
            ] {
                if v != 0 {
                    a.push((k, v.to_string()));
                }
            }
            if p.value != 0.0 {
                a.push(("value", float(p.value)));
            }
            Some(attrs(a))
        }
        _ => None,
    };
    Ok((op.kind().to_string(), value))
}

/// The graph as YAML text in the graph format.
pub fn write_str(g: &Graph) -> Result<String> {
    let mut out = String::new();
    if g.name != "graph" {
        writeln!(out, "name: {}", scalar(&g.name)).unwrap();
    }
    let s = g.input_shape();
    match &g.norm {
        None => writeln!(out, "input: [{}, {}, {}]", s.c, s.h, s.w).unwrap(),
        Some(n) => writeln!(
            out,
            "input: {{shape: [{}, {}, {}], mean: {}, std: {}}}",
            s.c,
            s.h,
            s.w,
            floats(&n.mean),
            floats(&n.std)
        )
        .unwrap(),
    }
    if let Some(w) = &g.weights_path {
        writeln!(out, "weights: {}", scalar(&w.to_string_lossy())).unwrap();
    }
    if g.seed != 0 {
        writeln!(out, "seed: {}", g.seed).unwrap();
    }
    if g.strict_shapes {
        writeln!(out, "strict_shapes: true").unwrap();
    }
    let order: Vec<_> = g
        .topo_order()?
        .into_iter()
        .filter(|&id| id != g.input)
        .collect();
    let last = order.last().copied();
    if g.outputs != last.into_iter().collect::<Vec<_>>() {
        let names: Vec<String> = g.outputs.iter().map(|&o| scalar(&g.node(o).name)).collect();
        writeln!(out, "outputs: [{}]", names.join(", ")).unwrap();
    }
    writeln!(out, "layers:").unwrap();
    let mut ordinals: HashMap<&str, usize> = HashMap::new();
    let mut prev = g.input;
    for id in order {
        let node = g.node(id);
        let (key, value) = op_text(&node.op)?;
        let k = ordinals.entry(node.op.kind()).or_insert(0);
        *k += 1;
        let auto = format!("{key}{k}");
        let inputs = g.inputs(id);
        let mut parts = Vec::new();
        if node.name != auto {
            parts.push(format!("name: {}", scalar(&node.name)));
        }
        parts.push(match &value {
            Some(v) => format!("{key}: {v}"),
            None => key.clone(),
        });
        if inputs != [prev] {
            let names: Vec<String> = inputs.iter().map(|&i| scalar(&g.node(i).name)).collect();
            parts.push(format!("inputs: [{}]", names.join(", ")));
        }
        if parts.len() == 1 {
            match &value {
                Some(v) => writeln!(out, "  - {key}: {v}").unwrap(),
                None => writeln!(out, "  - {key}").unwrap(),
            }
        } else {
            writeln!(out, "  - {{{}}}", parts.join(", ")).unwrap();
        }
        prev = id;
    }
    Ok(out)
}
