//! ONNX import and export: round trips of every example graph, onnxruntime's outputs
//! (fixtures written by `tests/golden/make_onnx_fixtures.py`) for the interpreter and
//! the JIT, a model cnnc did not
//! write, and clear errors for malformed or unsupported models.
mod common;
use cnnc::onnx::proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim, type_proto, ModelProto,
};
use cnnc::{Error, Graph, Tensor};
use common::*;
use prost::Message;
use std::path::{Path, PathBuf};

/// Everything that makes a graph: per layer (in topological order) its name, op,
/// input names, shape and parameters; the input shape, normalisation and outputs.
fn assert_same_graph(what: &str, a: &Graph, b: &Graph) {
    let layers = |g: &Graph| -> Vec<_> {
        g.topo_order()
            .unwrap()
            .into_iter()
            .map(|id| {
                let n = g.node(id);
                let inputs: Vec<String> = g
                    .inputs(id)
                    .iter()
                    .map(|&i| g.node(i).name.clone())
                    .collect();
                (
                    n.name.clone(),
                    n.op.clone(),
                    inputs,
                    n.shape,
                    n.params.clone(),
                )
            })
            .collect()
    };
    let (la, lb) = (layers(a), layers(b));
    assert_eq!(la.len(), lb.len(), "{what}: layer count");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(
            (&x.0, &x.1, &x.2, &x.3),
            (&y.0, &y.1, &y.2, &y.3),
            "{what}: layer"
        );
        assert!(x.4 == y.4, "{what}: parameters of `{}` differ", x.0);
    }
    let outs =
        |g: &Graph| -> Vec<String> { g.outputs.iter().map(|&o| g.node(o).name.clone()).collect() };
    assert_eq!(outs(a), outs(b), "{what}: outputs");
    assert_eq!(a.input_shape(), b.input_shape(), "{what}: input");
    assert_eq!(a.norm, b.norm, "{what}: input normalisation");
    assert_eq!(a.name, b.name, "{what}: name");
}

fn example_graphs() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for dir in ["graphs", "tests/golden/micro"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            // The biggest ImageNet classics (hundreds of MB of weights) are left out.
            let big = ["alexnet", "vgg16", "resnet50"]
                .iter()
                .any(|z| p.file_stem().is_some_and(|s| s == *z));
            if p.extension().is_some_and(|x| x == "yaml") && !big {
                paths.push(p);
            }
        }
    }
    paths.sort();
    assert!(paths.len() >= 20, "found {} graphs", paths.len());
    paths
}

fn import(bytes: &[u8]) -> Graph {
    cnnc::onnx::import(bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// The YAML writer's text parses back to the same graph; parameters are carried over.
fn through_yaml(g: &Graph) -> Graph {
    let text = cnnc::format::write_str(g).unwrap();
    let mut back = cnnc::format::parse_str(&text, None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for id in back.dag.node_indices().collect::<Vec<_>>() {
        let name = back.node(id).name.clone();
        let src = g.find(&name).unwrap();
        back.node_mut(id).params = g.node(src).params.clone();
    }
    back
}

#[test]
fn every_example_graph_survives_export_import_export_import() {
    for path in example_graphs() {
        let what = path.file_name().unwrap().to_string_lossy().to_string();
        let mut g = cnnc::format::load(&path).unwrap();
        cnnc::weights::bind(&mut g, None).unwrap();
        let g1 = import(&cnnc::onnx::export(&g).unwrap());
        // The import gives back the graph as written, layer for layer.
        assert_same_graph(&format!("{what}: yaml -> onnx -> graph"), &g, &g1);
        assert_same_graph(&format!("{what}: YAML writer"), &g1, &through_yaml(&g1));
        let g2 = import(&cnnc::onnx::export(&g1).unwrap());
        assert_same_graph(&format!("{what}: import -> export -> import"), &g1, &g2);
    }
}

#[test]
fn the_export_has_one_node_per_layer_and_a_symbolic_batch() {
    let mut g = cnnc::format::load(repo().join("graphs/lenet5.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let m = cnnc::onnx::to_model(&g).unwrap();
    assert_eq!(m.opset_import[0].version(), 17);
    let graph = m.graph.unwrap();
    // 12 layers, plus the Flatten before the first fc (its input is 16x5x5).
    assert_eq!(graph.node.len(), 13);
    assert_eq!(graph.node[6].op_type(), "Flatten");
    assert_eq!(graph.node[7].name(), "fc1");
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.input[0].name(), "input");
    let Some(type_proto::Value::TensorType(t)) = &graph.input[0].r#type.as_ref().unwrap().value
    else {
        panic!("tensor input")
    };
    let dims: Vec<_> = t
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| d.value.clone())
        .collect();
    assert_eq!(
        dims,
        vec![
            Some(Dim::DimParam("N".into())),
            Some(Dim::DimValue(1)),
            Some(Dim::DimValue(32)),
            Some(Dim::DimValue(32))
        ]
    );
    let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    assert!(inits.contains(&"conv1.weight") && inits.contains(&"fc3.bias"));
}

/// The cases of `tests/golden/onnx/manifest.json`.
fn onnx_cases() -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(repo().join("tests/golden/onnx/manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<_> = m["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(cases.len() >= 15, "found {} onnx fixtures", cases.len());
    cases
}

fn read_outputs(case: &serde_json::Value) -> (Tensor, Vec<Tensor>) {
    let dir = repo().join(case["dir"].as_str().unwrap());
    let input = cnnc::io::npy::read(&dir.join("input.npy")).unwrap();
    let outputs = case["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| cnnc::io::npy::read(&dir.join(f.as_str().unwrap())).unwrap())
        .collect();
    (input, outputs)
}

fn check_outputs(what: &str, g: &Graph, input: &Tensor, want: &[Tensor]) {
    let got = cnnc::interp::run(g, input.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (i, (y, w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what} output {i}"), y, w, 1e-4);
    }
    // The JIT (after the optimisation passes) too.
    let model =
        cnnc::compile(g, &cnnc::Options::default()).unwrap_or_else(|e| panic!("{what}: jit: {e}"));
    let got = model
        .run(input)
        .unwrap_or_else(|e| panic!("{what}: jit: {e}"));
    assert_eq!(got.len(), want.len(), "{what}: jit outputs");
    for (i, (y, w)) in got.iter().zip(want).enumerate() {
        assert_close(&format!("{what} output {i} (jit)"), y, w, 1e-4);
    }
}

#[test]
fn the_interpreter_matches_onnxruntime_on_the_exported_graphs() {
    for (stem, case) in onnx_cases() {
        let Some(graph) = case["graph"].as_str() else {
            continue;
        };
        let mut g = cnnc::format::load(repo().join(graph)).unwrap();
        let weights = case["weights"].as_str().map(|w| repo().join(w));
        let warnings = cnnc::weights::bind(&mut g, weights.as_deref()).unwrap();
        assert!(
            warnings.is_empty() || stem == "outputs_middle",
            "{stem}: {warnings:?}"
        );
        let (input, outputs) = read_outputs(&case);
        check_outputs(&stem, &g, &input, &outputs);
        // And the imported export computes the same.
        let back = import(&cnnc::onnx::export(&g).unwrap());
        check_outputs(&format!("{stem} (imported)"), &back, &input, &outputs);
    }
}

fn handbuilt_bytes() -> Vec<u8> {
    std::fs::read(repo().join("tests/golden/onnx/handbuilt/model.onnx")).unwrap()
}

fn handbuilt_model() -> ModelProto {
    ModelProto::decode(handbuilt_bytes().as_slice()).unwrap()
}

#[test]
fn a_model_cnnc_did_not_write_imports_and_matches_onnxruntime() {
    let g = import(&handbuilt_bytes());
    let (_, case) = onnx_cases()
        .into_iter()
        .find(|(k, _)| k == "handbuilt")
        .unwrap();
    let (input, outputs) = read_outputs(&case);
    check_outputs("handbuilt", &g, &input, &outputs);
    // PyTorch-style node names become layer names; a conv's asymmetric pads a pad layer.
    let names: Vec<String> = g
        .topo_order()
        .unwrap()
        .iter()
        .map(|&i| g.node(i).name.clone())
        .collect();
    for want in ["conv1_pad", "conv1", "bn1", "pool", "fc1", "fc2", "Softmax"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // The max pool keeps its unequal pads (ceil_mode's extra row and column at the end).
    let pool = g.node(g.find("pool").unwrap());
    assert_eq!(pool.op.to_string(), "maxpool 3x3/2 pad 1 pad_end 2");
    assert!(!names.iter().any(|n| n == "pool_pad"), "{names:?}");
    // MatMul + Add became one fc with a bias; Gemm's alpha/beta are folded in.
    assert!(g.node(g.find("fc2").unwrap()).param("bias").is_some());
    // Round trip: import -> export -> import gives the same graph and weights.
    let again = import(&cnnc::onnx::export(&g).unwrap());
    assert_same_graph("handbuilt round trip", &g, &again);
    assert_same_graph("handbuilt YAML", &g, &through_yaml(&g));
}

#[test]
fn initializers_as_typed_fields_in_f16_f64_and_f32_import_alike() {
    let reference = import(&handbuilt_bytes());
    let mut m = handbuilt_model();
    let graph = m.graph.as_mut().unwrap();
    let mut converted = 0;
    for t in &mut graph.initializer {
        let values: Vec<f32> = match t.raw_data.take() {
            Some(raw) => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            None => std::mem::take(&mut t.float_data),
        };
        if t.data_type() != DataType::Float as i32 {
            continue;
        }
        let k = converted % 4;
        converted += 1;
        match k {
            0 => {
                t.data_type = Some(DataType::Double as i32);
                t.double_data = values.iter().map(|&v| v as f64).collect();
            }
            1 => {
                t.data_type = Some(DataType::Double as i32);
                t.raw_data = Some(
                    values
                        .iter()
                        .flat_map(|&v| (v as f64).to_le_bytes())
                        .collect(),
                );
            }
            2 => {
                t.data_type = Some(DataType::Float16 as i32);
                t.int32_data = values
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits() as i32)
                    .collect();
            }
            _ => {
                t.data_type = Some(DataType::Float16 as i32);
                t.raw_data = Some(
                    values
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                );
            }
        }
    }
    assert!(converted >= 8);
    let g = import(&m.encode_to_vec());
    for id in g.dag.node_indices() {
        let (a, b) = (
            g.node(id),
            reference.node(reference.find(&g.node(id).name).unwrap()),
        );
        for (suffix, t) in &a.params {
            let r = &b.params[suffix];
            assert_eq!(t.shape(), r.shape());
            let err = cnnc::tensor::rel_l2(t.data(), r.data());
            assert!(err < 1e-3, "{}.{suffix}: {err}", a.name);
        }
    }
}

fn import_err(bytes: &[u8]) -> String {
    match cnnc::onnx::import(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
    }
}

#[test]
fn a_truncated_file_or_not_onnx_is_refused_clearly() {
    let bytes = handbuilt_bytes();
    let msg = import_err(&bytes[..bytes.len() / 2]);
    assert!(msg.contains("truncated"), "{msg}");
    let yaml = std::fs::read(repo().join("graphs/lenet5.yaml")).unwrap();
    let msg = import_err(&yaml);
    assert!(msg.contains("not an ONNX model"), "{msg}");
    let msg = import_err(b"");
    assert!(msg.contains("not an ONNX model"), "{msg}");
}

#[test]
fn a_missing_initializer_is_named() {
    let mut m = handbuilt_model();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .retain(|t| t.name() != "bn1.running_var");
    let msg = import_err(&m.encode_to_vec());
    assert!(
        msg.contains("bn1.running_var") && msg.contains("missing") && msg.contains("/bn1/"),
        "{msg}"
    );
}

#[test]
fn a_dynamic_spatial_shape_is_refused() {
    let mut m = handbuilt_model();
    let input = &mut m.graph.as_mut().unwrap().input[0];
    let Some(type_proto::Value::TensorType(t)) = &mut input.r#type.as_mut().unwrap().value else {
        panic!("tensor input")
    };
    t.shape.as_mut().unwrap().dim[2].value = Some(Dim::DimParam("height".into()));
    let msg = import_err(&m.encode_to_vec());
    assert!(
        msg.contains("dynamic height") && msg.contains("`height`"),
        "{msg}"
    );
}

#[test]
fn every_unsupported_node_is_listed_in_one_message_grouped_by_reason() {
    let mut m = handbuilt_model();
    let nodes = &mut m.graph.as_mut().unwrap().node;
    nodes[2].op_type = Some("Sigmoid".into());
    nodes[14].op_type = Some("Sigmoid".into());
    nodes[4].op_type = Some("LeakyRelu".into());
    nodes[3].attribute.push(cnnc::onnx::proto::AttributeProto {
        name: Some("dilations".into()),
        ints: vec![1, 1, 1],
        ..Default::default()
    });
    let total = nodes.len();
    let err = cnnc::onnx::import(&m.encode_to_vec()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)));
    let msg = err.to_string();
    let want = format!(
        "cannot import 4 of the model's {total} nodes (3 reasons):
  2 x op Sigmoid is not supported: node 2 `/relu/Relu` (Sigmoid), node 14 `/relu_1/Relu` (Sigmoid)
  1 x not a 2-D window: node 3 `/conv2/Conv` (Conv)
  1 x op LeakyRelu is not supported: node 4 "
    );
    assert!(msg.starts_with(&want), "{msg}");
}

/// A node refused for its context (a Reshape that is neither a flatten nor a shuffle) is
/// reported with the others; the nodes after it are counted, not reported again.
#[test]
fn context_dependent_refusals_join_the_one_message() {
    let mut m = handbuilt_model();
    let g = m.graph.as_mut().unwrap();
    let transpose = g.node.len() - 3;
    g.node[transpose].op_type = Some("Transpose".into());
    let last = g.node.len() - 1;
    g.node[last].op_type = Some("Sigmoid".into());
    let msg = cnnc::onnx::import(&m.encode_to_vec())
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("cannot import 2 of the model's"), "{msg}");
    assert!(msg.contains("(2 reasons):\n"), "{msg}");
    assert!(
        msg.contains("\n  1 x op Sigmoid is not supported: node"),
        "{msg}"
    );
    assert!(msg.contains("\n  1 x Transpose with perm []: "), "{msg}");
    assert!(msg.contains("were not checked"), "{msg}");
}

#[test]
fn avgpool_ceil_mode_is_taken_where_it_rounds_nothing_up() {
    let mut m = handbuilt_model();
    let pool = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type() == "AveragePool")
        .unwrap();
    pool.attribute
        .push(cnnc::onnx::export::attr_int("ceil_mode", 1));
    let g = import(&m.encode_to_vec());
    assert_same_graph("ceil_mode", &import(&handbuilt_bytes()), &g);
    // 3x3 stride 2 on the 4x4 map: (4 + 2 - 3)/2 + 1 = 2.5 rounds up to a partial window.
    let pool = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type() == "AveragePool")
        .unwrap();
    pool.attribute
        .push(cnnc::onnx::export::attr_ints("strides", &[2, 2]));
    pool.attribute
        .retain(|a| a.name() != "strides" || a.ints == [2, 2]);
    let msg = import_err(&m.encode_to_vec());
    assert!(msg.contains("ceil_mode = 1"), "{msg}");
}

#[test]
fn avgpool_without_counting_padding_keeps_its_pads_on_the_pool() {
    let mut m = handbuilt_model();
    let pool = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type() == "AveragePool")
        .unwrap();
    for a in &mut pool.attribute {
        if a.name() == "count_include_pad" {
            a.i = Some(0);
        }
    }
    let g = import(&m.encode_to_vec());
    let pool = g
        .dag
        .node_indices()
        .find(|&i| matches!(g.node(i).op, cnnc::ir::Op::AvgPool(_)))
        .unwrap();
    let cnnc::ir::Op::AvgPool(p) = &g.node(pool).op else {
        unreachable!()
    };
    assert!(!p.count_pad);
    // No pad layer feeds it: zeros there would be counted.
    let x = g.inputs(pool)[0];
    assert!(!matches!(g.node(x).op, cnnc::ir::Op::Pad(_)));
}

#[test]
fn the_yaml_writer_quotes_odd_names_and_keeps_attributes() {
    let text = "name: \"odd graph\"\ninput: {shape: [2, 5, 5], mean: [0.5, 0.25], std: [0.1, 2.0]}\nseed: 3\nlayers:\n  - {name: \"a b\", conv: {filters: 3, size: [3, 1], stride: [1, 2], pad: [1, 0], bias: false}}\n  - {name: \"true\", batchnorm: {eps: 0.001}}\n  - {name: \"7\", pad: {top: 1, right: 2, value: -.inf}}\n  - {name: p, maxpool: {size: 2, stride: 1}}\n  - avgpool: {size: 2}\n  - {name: x, relu, inputs: [\"a b\"]}\n";
    let g = graph(text);
    let back = through_yaml(&g);
    assert_same_graph("writer", &g, &back);
    assert_eq!(back.seed, 3);
    let written = cnnc::format::write_str(&g).unwrap();
    assert!(written.contains("{name: \"a b\", conv:"), "{written}");
}

#[test]
fn pad_layers_pad_with_their_value() {
    let mut g = graph("input: [1, 2, 2]\nlayers:\n  - pad: {top: 1, right: 2, value: -1.5}\n");
    cnnc::weights::bind(&mut g, None).unwrap();
    let x = Tensor::new(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap();
    let y = cnnc::interp::run(&g, x).unwrap().remove(0);
    assert_eq!(y.shape(), &[1, 1, 3, 4]);
    let p = -1.5;
    assert_eq!(y.data(), &[p, p, p, p, 1., 2., p, p, 3., 4., p, p]);
}

fn cnnc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn the_cli_round_trips_and_reports_errors_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let out = cnnc(&["export", "graphs/digits.yaml", "-o", &p("digits.onnx")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cnnc(&["import", &p("digits.onnx"), "-o", &p("digits.yaml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(p("digits.yaml")).unwrap();
    assert!(text.contains("weights: digits.safetensors"), "{text}");
    // The imported YAML loads with its weights, the same as the original.
    let mut a = cnnc::format::load(repo().join("graphs/digits.yaml")).unwrap();
    cnnc::weights::bind(&mut a, None).unwrap();
    let mut b = cnnc::format::load(p("digits.yaml")).unwrap();
    assert!(cnnc::weights::bind(&mut b, None).unwrap().is_empty());
    assert_same_graph("cli", &a, &b);
    // Errors: exit code 2, one line.
    std::fs::write(p("bad.onnx"), b"input: [1, 2, 3]\n").unwrap();
    let out = cnnc(&["import", &p("bad.onnx"), "-o", &p("bad.yaml")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.onnx") && err.contains("not an ONNX model"),
        "{err}"
    );
    assert!(!Path::new(&p("bad.yaml")).exists());
}

/// Found by the hand-built model: after fuse-epilogue, a conv whose residual is its
/// own input read one buffer in two slots, and the arena freed it twice.
#[test]
fn the_jit_runs_a_conv_whose_residual_is_its_own_input() {
    let mut g = graph(
        "input: [2, 5, 5]\nlayers:\n  - {name: r, relu}\n  - {name: c, conv: {filters: 2, size: 3, pad: 1}}\n  - {name: a, add, inputs: [c, r]}\n  - {name: p, pad: {bottom: 1, right: 1, value: -.inf}}\n  - maxpool: {size: 2}\n  - fc: {units: 3}\n",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    let x = Tensor::new(
        vec![3, 2, 5, 5],
        (0..150)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0)
            .collect(),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    let model = cnnc::compile(&g, &cnnc::Options::default()).unwrap();
    let got = model.run(&x).unwrap();
    assert_close("jit", &got[0], &want[0], 1e-5);
}

/// Mutation-fuzzing finds (`shared/repro/hardening/`): each is one clear error naming the
/// node, never a panic or a silently wrong import.
#[test]
fn malformed_models_from_fuzzing_get_one_clear_error() {
    for (file, want) in [
        ("concat_no_inputs", "node 1 (Concat): Concat has no inputs"),
        ("constant_no_output", "node 1 (Constant): the node has no output"),
        (
            "conv_huge_pads",
            "node 0 `conv` (Conv): pads [4611686018427387904, 4611686018427387904, 4611686018427387904, 4611686018427387904] are not four numbers from 0 to 2^31",
        ),
    ] {
        let path = repo().join(format!("tests/golden/onnx/hardening/{file}.onnx"));
        let bytes = std::fs::read(path).unwrap();
        let msg = import_err(&bytes);
        assert_eq!(msg, want, "{file}");
    }
}

/// Small networks of the model zoo's ops with random weights (built by
/// `make_onnx_fixtures.py`), against onnxruntime on both engines: grouped conv, LRN,
/// batchnorm + Mul + Add of Unsqueezed constants, pools with unequal pads excluding the
/// padding, a Reshape of a constant weight; a channel shuffle, depthwise convs with
/// multiplier 1 and 2, Clip as ReLU6, a dilated conv.
#[test]
fn zoo_op_models_with_random_weights_match_onnxruntime() {
    let mut seen = 0;
    for (stem, case) in onnx_cases() {
        if !stem.starts_with("zoo_") {
            continue;
        }
        let bytes = std::fs::read(repo().join(case["model"].as_str().unwrap())).unwrap();
        let g = import(&bytes);
        let (input, outputs) = read_outputs(&case);
        check_outputs(&stem, &g, &input, &outputs);
        seen += 1;
    }
    assert_eq!(seen, 2);
}
