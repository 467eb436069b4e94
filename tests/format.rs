//! The graph format (docs/graph-format.md): parsing, naming, repeat, inputs and
//! outputs, shape inference and the parameter / MAC counts.
use cnnc::format::{load, parse_str};
use cnnc::ir::stats::layer_stats;
use cnnc::ir::{Hw, Op, Shape};
use cnnc::Graph;

mod common;

fn parse(text: &str) -> Graph {
    match parse_str(text, None) {
        Ok(g) => g,
        Err(e) => panic!("the graph should parse, got: {e}\n{text}"),
    }
}

/// Layer names in file order (node insertion order), without `input`.
fn names(g: &Graph) -> Vec<String> {
    g.dag
        .node_indices()
        .filter(|&i| i != g.input)
        .map(|i| g.node(i).name.clone())
        .collect()
}

fn node<'a>(g: &'a Graph, name: &str) -> &'a cnnc::ir::Node {
    let id = g
        .find(name)
        .unwrap_or_else(|| panic!("no layer `{name}`; layers: {:?}", names(g)));
    g.node(id)
}

fn inputs_of(g: &Graph, name: &str) -> Vec<String> {
    let id = g.find(name).unwrap();
    g.inputs(id)
        .iter()
        .map(|&i| g.node(i).name.clone())
        .collect()
}

fn output_names(g: &Graph) -> Vec<String> {
    g.outputs.iter().map(|&o| g.node(o).name.clone()).collect()
}

fn shape(g: &Graph, name: &str) -> String {
    node(g, name).shape.to_string()
}

fn params(g: &Graph, name: &str) -> u64 {
    layer_stats(g, g.find(name).unwrap()).params
}

fn macs(g: &Graph, name: &str) -> u64 {
    layer_stats(g, g.find(name).unwrap()).macs
}

fn total_params(g: &Graph) -> u64 {
    g.dag.node_indices().map(|i| layer_stats(g, i).params).sum()
}

fn arithmetic(g: &Graph, name: &str) -> String {
    node(g, name)
        .note
        .window
        .as_ref()
        .unwrap_or_else(|| panic!("{name} has no window"))
        .arithmetic()
}

// ---------------------------------------------------------------------------------
// Top-level keys

#[test]
fn top_level_keys_and_defaults() {
    let g = parse("input: [3, 8, 8]\nlayers: [relu]\n");
    assert_eq!(g.name, "graph");
    assert_eq!(g.seed, 0);
    assert!(!g.strict_shapes);
    assert!(g.weights_path.is_none());
    assert!(g.norm.is_none());
    assert_eq!(g.input_shape(), Shape::chw(3, 8, 8));

    let g = parse_str(
        "name: net\ninput: [1, 4, 5]\nseed: 42\nstrict_shapes: true\nweights: w/net.safetensors\nlayers: [relu]\n",
        Some(std::path::Path::new("/models")),
    )
    .unwrap();
    assert_eq!(g.name, "net");
    assert_eq!(g.seed, 42);
    assert!(g.strict_shapes);
    assert_eq!(
        g.weights_path.as_deref(),
        Some(std::path::Path::new("/models/w/net.safetensors"))
    );
    assert_eq!(g.input_shape(), Shape::chw(1, 4, 5));
}

#[test]
fn input_map_form_with_normalisation() {
    let g = parse(
        "input: {shape: [3, 4, 4], mean: [0.5, 0.25, 0.0], std: [0.5, 2, 1]}\nlayers: [relu]\n",
    );
    let norm = g.norm.as_ref().unwrap();
    assert_eq!(norm.mean, vec![0.5, 0.25, 0.0]);
    assert_eq!(norm.std, vec![0.5, 2.0, 1.0]);
    assert_eq!(g.input_shape(), Shape::chw(3, 4, 4));

    // Only mean: std defaults to ones; only std: mean defaults to zeros.
    let g = parse("input: {shape: [2, 4, 4], mean: [1, 2]}\nlayers: [relu]\n");
    assert_eq!(g.norm.as_ref().unwrap().std, vec![1.0, 1.0]);
    let g = parse("input: {shape: [2, 4, 4], std: [3, 4]}\nlayers: [relu]\n");
    assert_eq!(g.norm.as_ref().unwrap().mean, vec![0.0, 0.0]);

    // The map form without mean and std is just a shape.
    let g = parse("input: {shape: [2, 4, 4]}\nlayers: [relu]\n");
    assert!(g.norm.is_none());
}

#[test]
fn load_resolves_weights_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    std::fs::write(
        &path,
        "input: [1, 2, 2]\nweights: w.safetensors\nlayers: [relu]\n",
    )
    .unwrap();
    let g = load(&path).unwrap();
    assert_eq!(g.weights_path.unwrap(), dir.path().join("w.safetensors"));
}

// ---------------------------------------------------------------------------------
// Layer forms

#[test]
fn bare_map_and_null_forms_are_the_same_op() {
    let g = parse(
        "input: [2, 4, 4]
layers:
  - relu
  - relu: {}
  - relu:
  - {name: r4, relu}
  - batchnorm
  - batchnorm:
  - batchnorm: {}
  - batchnorm: {eps: 0.001}
  - softmax
  - dropout
  - global_avgpool
  - flatten
  - dropout: {p: 0.5}
  - dropout:
",
    );
    assert_eq!(
        names(&g),
        [
            "relu1",
            "relu2",
            "relu3",
            "r4",
            "batchnorm1",
            "batchnorm2",
            "batchnorm3",
            "batchnorm4",
            "softmax1",
            "dropout1",
            "global_avgpool1",
            "flatten1",
            "dropout2",
            "dropout3"
        ]
    );
    for n in ["relu1", "relu2", "relu3", "r4"] {
        assert_eq!(node(&g, n).op, Op::Relu);
    }
    for n in ["batchnorm1", "batchnorm2", "batchnorm3"] {
        assert_eq!(node(&g, n).op, Op::BatchNorm { eps: 1e-5 });
    }
    assert_eq!(node(&g, "batchnorm4").op, Op::BatchNorm { eps: 0.001 });
    assert_eq!(shape(&g, "global_avgpool1"), "2x1x1");
    assert_eq!(shape(&g, "flatten1"), "2");
    for n in ["dropout1", "dropout2", "dropout3"] {
        assert_eq!(node(&g, n).op, Op::Dropout);
    }
}

#[test]
fn add_and_concat_in_every_form() {
    let g = parse(
        "input: [2, 4, 4]
layers:
  - relu
  - {name: a, add, inputs: [input, relu1]}
  - {name: c, concat, inputs: [a, input, relu1]}
  - {add: {}, inputs: [c, c]}
  - {concat: ~, inputs: [add2, input]}
",
    );
    assert_eq!(shape(&g, "a"), "2x4x4");
    assert_eq!(shape(&g, "c"), "6x4x4");
    // The explicitly named `a` is the first add, so the unnamed one is add2.
    assert_eq!(shape(&g, "add2"), "6x4x4");
    assert_eq!(shape(&g, "concat2"), "8x4x4");
    assert_eq!(node(&g, "concat2").op, Op::Concat);
}

#[test]
fn defaults_of_every_op() {
    let g = parse(
        "input: [3, 16, 16]
layers:
  - conv: {filters: 4, size: 3}
  - maxpool: {size: 2}
  - avgpool: {size: [2, 1]}
  - fc: {units: 5}
",
    );
    let conv = match &node(&g, "conv1").op {
        Op::Conv(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(conv.filters, 4);
    assert_eq!(conv.size, Hw::square(3));
    assert_eq!(conv.stride, Hw::square(1));
    assert_eq!(conv.pad, Hw::square(0));
    assert!(conv.bias);
    match &node(&g, "maxpool1").op {
        Op::MaxPool(p) => {
            assert_eq!(p.size, Hw::square(2));
            assert_eq!(p.stride, Hw::square(2), "stride defaults to size");
            assert_eq!(p.pad, Hw::square(0));
        }
        other => panic!("{other:?}"),
    }
    match &node(&g, "avgpool1").op {
        Op::AvgPool(p) => {
            assert_eq!(p.size, Hw { h: 2, w: 1 });
            assert_eq!(
                p.stride,
                Hw { h: 2, w: 1 },
                "stride defaults to size per axis"
            );
        }
        other => panic!("{other:?}"),
    }
    match &node(&g, "fc1").op {
        Op::Fc(f) => {
            assert_eq!(f.units, 5);
            assert!(f.bias);
        }
        other => panic!("{other:?}"),
    }
    // 3x16x16 -conv3-> 4x14x14 -max2-> 4x7x7 -avg[2,1]-> 4x3x7 -> fc 5
    assert_eq!(shape(&g, "conv1"), "4x14x14");
    assert_eq!(shape(&g, "maxpool1"), "4x7x7");
    assert_eq!(shape(&g, "avgpool1"), "4x3x7");
    assert_eq!(shape(&g, "fc1"), "5");
    assert!(node(&g, "fc1").shape.flat);
}

#[test]
fn hw_pairs_for_size_stride_and_pad() {
    let g = parse(
        "input: [1, 10, 20]
layers:
  - conv: {filters: 2, size: [3, 5], stride: [1, 2], pad: [1, 2], bias: false}
",
    );
    match &node(&g, "conv1").op {
        Op::Conv(c) => {
            assert_eq!(c.size, Hw { h: 3, w: 5 });
            assert_eq!(c.stride, Hw { h: 1, w: 2 });
            assert_eq!(c.pad, Hw { h: 1, w: 2 });
            assert!(!c.bias);
        }
        other => panic!("{other:?}"),
    }
    // H: (10+2*1-3)/1+1 = 10; W: (20+2*2-5)/2+1 = 10.5 -> 10
    assert_eq!(shape(&g, "conv1"), "2x10x10");
    assert_eq!(
        arithmetic(&g, "conv1"),
        "H: (10+2*1-3)/1+1 = 10; W: (20+2*2-5)/2+1 = 10.5 -> 10"
    );
    // No bias: K*Fh*Fw*C = 2*3*5*1 = 30.
    assert_eq!(params(&g, "conv1"), 30);
}

// ---------------------------------------------------------------------------------
// Naming

#[test]
fn automatic_names_count_every_layer_of_the_op() {
    let g = parse(
        "input: [3, 32, 32]
layers:
  - {name: stem, conv: {filters: 8, size: 3, pad: 1}}
  - relu
  - {name: second, conv: {filters: 8, size: 3, pad: 1}}
  - {name: r, relu}
  - conv: {filters: 8, size: 3, pad: 1}
  - relu
  - maxpool: {size: 2}
  - fc: {units: 10}
  - fc: {units: 10}
  - softmax
",
    );
    assert_eq!(
        names(&g),
        ["stem", "relu1", "second", "r", "conv3", "relu3", "maxpool1", "fc1", "fc2", "softmax1"]
    );
}

#[test]
fn ordinals_count_after_repeat_expansion() {
    let g = parse(
        "input: [3, 8, 8]
layers:
  - relu
  - repeat: 2
    layers:
      - conv: {filters: 3, size: 3, pad: 1}
      - relu
  - {name: last, conv: {filters: 3, size: 1}}
  - relu
",
    );
    assert_eq!(
        names(&g),
        ["relu1", "conv1", "relu2", "conv2", "relu3", "last", "relu4"]
    );
}

#[test]
fn nested_repeats_expand_in_place() {
    let g = parse(
        "input: [2, 8, 8]
layers:
  - repeat: 2
    layers:
      - repeat: 3
        layers:
          - conv: {filters: 2, size: 1}
      - relu
  - softmax
",
    );
    assert_eq!(
        names(&g),
        ["conv1", "conv2", "conv3", "relu1", "conv4", "conv5", "conv6", "relu2", "softmax1"]
    );
    // A repeated block is a plain chain.
    assert_eq!(inputs_of(&g, "conv1"), ["input"]);
    assert_eq!(inputs_of(&g, "conv4"), ["relu1"]);
    assert_eq!(inputs_of(&g, "softmax1"), ["relu2"]);
    assert_eq!(output_names(&g), ["softmax1"]);
}

#[test]
fn names_may_contain_dots() {
    let g = parse(
        "input: [1, 2, 2]\nlayers:\n  - {name: layer1.0.conv1, conv: {filters: 1, size: 1}}\n",
    );
    assert_eq!(names(&g), ["layer1.0.conv1"]);
}

// ---------------------------------------------------------------------------------
// Inputs and outputs

#[test]
fn default_chain_and_explicit_inputs() {
    let g = parse(
        "input: [4, 8, 8]
layers:
  - {name: a, conv: {filters: 4, size: 3, pad: 1}}
  - {name: b, relu}
  - {name: c, conv: {filters: 4, size: 1}, inputs: [input]}
  - {name: d, relu}
  - {name: sum, add, inputs: [b, d]}
  - {name: cat, concat, inputs: [d, input, b]}
",
    );
    assert_eq!(inputs_of(&g, "a"), ["input"]);
    assert_eq!(inputs_of(&g, "b"), ["a"]);
    assert_eq!(inputs_of(&g, "c"), ["input"]);
    // The layer after one with `inputs:` reads it by default.
    assert_eq!(inputs_of(&g, "d"), ["c"]);
    assert_eq!(inputs_of(&g, "sum"), ["b", "d"]);
    // Slot order is the order of `inputs:`, not file order.
    assert_eq!(inputs_of(&g, "cat"), ["d", "input", "b"]);
    let cat = g.find("cat").unwrap();
    let mut slots: Vec<(usize, String)> = g
        .dag
        .edges_directed(cat, petgraph::Direction::Incoming)
        .map(|e| {
            use petgraph::visit::EdgeRef;
            (*e.weight(), g.node(e.source()).name.clone())
        })
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [(0, "d".to_string()), (1, "input".into()), (2, "b".into())]
    );
    assert_eq!(shape(&g, "cat"), "12x8x8");
    assert_eq!(output_names(&g), ["cat"]);
    // One node per layer plus the input; one edge per input slot.
    assert_eq!(g.node_count(), 7);
    assert_eq!(g.dag.edge_count(), 1 + 1 + 1 + 1 + 2 + 3);
}

#[test]
fn the_same_layer_may_fill_two_slots() {
    let g = parse("input: [2, 3, 3]\nlayers:\n  - {name: twice, add, inputs: [input, input]}\n");
    assert_eq!(inputs_of(&g, "twice"), ["input", "input"]);
    assert_eq!(g.readers(g.input), vec![g.find("twice").unwrap()]);
}

#[test]
fn outputs_key_names_the_outputs_in_order() {
    let g = parse(
        "input: [2, 4, 4]
layers:
  - {name: a, relu}
  - {name: b, softmax}
  - {name: c, global_avgpool, inputs: [a]}
outputs: [c, a]
",
    );
    assert_eq!(output_names(&g), ["c", "a"]);
    assert_eq!(g.output_dims(5), vec![vec![5, 2, 1, 1], vec![5, 2, 4, 4]]);
    // Without outputs: the last layer.
    let g = parse("input: [2, 4, 4]\nlayers: [relu, softmax]\n");
    assert_eq!(output_names(&g), ["softmax1"]);
}

#[test]
fn topological_order_puts_inputs_first() {
    let g = load("graphs/inception3a.yaml").unwrap();
    let order = g.topo_order().unwrap();
    let pos = |id| order.iter().position(|&x| x == id).unwrap();
    for id in g.dag.node_indices() {
        for i in g.inputs(id) {
            assert!(pos(i) < pos(id));
        }
    }
    assert_eq!(order.len(), g.node_count());
}

// ---------------------------------------------------------------------------------
// Shape inference

#[test]
fn lecture_example_ten_5x5_filters() {
    // 32x32x3, ten 5x5 filters, stride 1, pad 2: (32+2*2-5)/1+1 = 32, so 10x32x32;
    // each filter has 5*5*3 weights + 1 bias = 76 parameters, 760 in all.
    let g =
        parse("input: [3, 32, 32]\nlayers:\n  - conv: {filters: 10, size: 5, stride: 1, pad: 2}\n");
    assert_eq!(shape(&g, "conv1"), "10x32x32");
    assert_eq!(arithmetic(&g, "conv1"), "(32+2*2-5)/1+1 = 32");
    assert_eq!(params(&g, "conv1"), 760);
    assert_eq!(params(&g, "conv1") / 10, 76);
    // MACs: every one of the 10*32*32 outputs takes 5*5*3 = 75 multiply-adds.
    assert_eq!(macs(&g, "conv1"), 10 * 32 * 32 * 75);
    assert_eq!(
        layer_stats(&g, g.find("conv1").unwrap()).activation_bytes,
        4 * 10240
    );
}

#[test]
fn the_size_formula_on_each_axis() {
    // (N + 2P - F)/S + 1 for a few hand-worked cases.
    for (n, f, s, p, out) in [
        (32, 5, 1, 2, 32),
        (32, 3, 1, 1, 32),
        (32, 2, 2, 0, 16),
        (7, 3, 2, 0, 3),
        (7, 7, 1, 0, 1),
        (5, 3, 3, 1, 2),     // (5+2-3)/3+1 = 2.33 -> 2
        (224, 11, 4, 2, 55), // AlexNet conv1: (224+4-11)/4+1 = 55.25 -> 55
        (227, 11, 4, 0, 55), // (227-11)/4+1 = 55 exactly
    ] {
        let g = parse(&format!(
            "input: [1, {n}, {n}]\nlayers:\n  - conv: {{filters: 1, size: {f}, stride: {s}, pad: {p}}}\n"
        ));
        assert_eq!(
            shape(&g, "conv1"),
            format!("1x{out}x{out}"),
            "N={n} F={f} S={s} P={p}"
        );
        let w = node(&g, "conv1").note.window.clone().unwrap();
        assert_eq!(w.h.out, out);
        assert_eq!(w.untiled(), (n + 2 * p - f) % s != 0);
    }
}

#[test]
fn resnet_stem_rounds_down_with_a_warning() {
    // conv1 of ResNet: (224 + 2*3 - 7)/2 + 1 = 223/2 + 1 = 112.5, rounded down to 112.
    let g = parse(
        "input: [3, 224, 224]\nlayers:\n  - conv: {filters: 64, size: 7, stride: 2, pad: 3, bias: false}\n  - maxpool: {size: 3, stride: 2, pad: 1}\n",
    );
    assert_eq!(shape(&g, "conv1"), "64x112x112");
    let w = node(&g, "conv1").note.window.clone().unwrap();
    assert!(w.untiled());
    assert_eq!(arithmetic(&g, "conv1"), "(224+2*3-7)/2+1 = 112.5 -> 112");
    // maxpool: (112 + 2 - 3)/2 + 1 = 56.5 -> 56.
    assert_eq!(shape(&g, "maxpool1"), "64x56x56");
    assert_eq!(arithmetic(&g, "maxpool1"), "(112+2*1-3)/2+1 = 56.5 -> 56");
    // 64 * 7*7*3 = 9408, no bias.
    assert_eq!(params(&g, "conv1"), 9408);
}

#[test]
fn strict_shapes_turns_the_warning_into_an_error() {
    let text = "input: [3, 32, 32]
strict_shapes: true
layers:
  - conv: {filters: 4, size: 3, pad: 1}
  - conv: {filters: 4, size: 5, stride: 2}
";
    let err = parse_str(text, None).unwrap_err().to_string();
    assert_eq!(
        err,
        "conv2: (32 + 2*0 - 5)/2 + 1 = 14.5 is not a whole number; this filter, stride and pad do not tile the input"
    );
    // The same graph without strict_shapes rounds down: 27/2 + 1 = 14.
    let g = parse(&text.replace("strict_shapes: true", "strict_shapes: false"));
    assert_eq!(shape(&g, "conv2"), "4x14x14");
    // Windows that tile are fine in strict mode.
    let g = parse("input: [3, 32, 32]\nstrict_shapes: true\nlayers:\n  - maxpool: {size: 2}\n");
    assert_eq!(shape(&g, "maxpool1"), "3x16x16");
}

#[test]
fn strict_shapes_checks_the_width_axis_too() {
    let err = parse_str(
        "input: [1, 8, 9]\nstrict_shapes: true\nlayers:\n  - maxpool: {size: 2}\n",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("maxpool1: (9 + 2*0 - 2)/2 + 1 = 4.5 is not a whole number"),
        "{err}"
    );
}

#[test]
fn shape_rules_of_the_other_ops() {
    let g = parse(
        "input: [6, 5, 5]
layers:
  - {name: gap, global_avgpool}
  - {name: flat, flatten, inputs: [input]}
  - {name: fc, fc: {units: 7}}
  - {name: sm, softmax}
  - {name: bn, batchnorm, inputs: [input]}
  - {name: drop, dropout}
  - {name: cat, concat, inputs: [bn, drop, input]}
  - {name: fcflat, fc: {units: 3}, inputs: [gap]}
",
    );
    assert_eq!(shape(&g, "gap"), "6x1x1");
    assert!(!node(&g, "gap").shape.flat);
    assert_eq!(shape(&g, "flat"), "150");
    assert!(node(&g, "flat").shape.flat);
    assert_eq!(shape(&g, "fc"), "7");
    assert_eq!(shape(&g, "sm"), "7");
    assert_eq!(shape(&g, "bn"), "6x5x5");
    assert_eq!(shape(&g, "drop"), "6x5x5");
    assert_eq!(shape(&g, "cat"), "18x5x5");
    assert_eq!(node(&g, "flat").shape.dims(2), vec![2, 150]);
    assert_eq!(node(&g, "cat").shape.dims(2), vec![2, 18, 5, 5]);
    // fc flattens a CxHxW input: 150 features in, 7*(150+1).
    assert_eq!(params(&g, "fc"), 7 * 151);
    // On global_avgpool's 6x1x1: 3*(6+1).
    assert_eq!(params(&g, "fcflat"), 21);
}

#[test]
fn pools_keep_channels_and_accept_padding() {
    let g = parse(
        "input: [5, 28, 28]
layers:
  - maxpool: {size: 3, stride: 1, pad: 1}
  - avgpool: {size: 3, stride: 2, pad: 1}
",
    );
    assert_eq!(shape(&g, "maxpool1"), "5x28x28");
    // (28 + 2 - 3)/2 + 1 = 14.5 -> 14
    assert_eq!(shape(&g, "avgpool1"), "5x14x14");
    assert_eq!(params(&g, "maxpool1") + params(&g, "avgpool1"), 0);
}

// ---------------------------------------------------------------------------------
// Parameters and MACs, worked by hand

#[test]
fn params_and_macs_by_hand() {
    let g = parse(
        "input: [3, 8, 8]
layers:
  - conv: {filters: 4, size: 3}              # 4x6x6
  - {name: nb, conv: {filters: 2, size: [1, 3], bias: false}}   # 2x6x4
  - batchnorm
  - fc: {units: 5}
  - {name: fc_nb, fc: {units: 3, bias: false}}
",
    );
    // conv1: 4*(3*3*3 + 1) = 112 params; 4*6*6 outputs * 27 = 3888 MACs.
    assert_eq!(params(&g, "conv1"), 112);
    assert_eq!(macs(&g, "conv1"), 3888);
    // nb: 2*(1*3*4) = 24 params, no bias; 2*6*4 outputs * 12 = 576 MACs.
    assert_eq!(shape(&g, "nb"), "2x6x4");
    assert_eq!(params(&g, "nb"), 24);
    assert_eq!(macs(&g, "nb"), 576);
    // batchnorm: 2*C = 4 learnable (running stats are buffers); no MACs.
    assert_eq!(params(&g, "batchnorm1"), 4);
    assert_eq!(macs(&g, "batchnorm1"), 0);
    // fc1: in = 2*6*4 = 48; 5*(48+1) = 245 params; 5*48 = 240 MACs.
    assert_eq!(params(&g, "fc1"), 245);
    assert_eq!(macs(&g, "fc1"), 240);
    // fc_nb: 3*5 = 15 params and 15 MACs.
    assert_eq!(params(&g, "fc_nb"), 15);
    assert_eq!(macs(&g, "fc_nb"), 15);
    assert_eq!(total_params(&g), 112 + 24 + 4 + 245 + 15);
}

#[test]
fn param_tensor_names_follow_pytorch() {
    let conv = Op::Conv(cnnc::ir::Conv {
        filters: 1,
        size: Hw::square(1),
        stride: Hw::square(1),
        pad: Hw::square(0),
        dilation: Hw::square(1),
        groups: 1,
        bias: true,
        epilogue: Default::default(),
    });
    assert_eq!(conv.param_names(), ["weight", "bias"]);
    let g = parse("input: [1, 2, 2]\nlayers:\n  - conv: {filters: 1, size: 1, bias: false}\n  - fc: {units: 2}\n  - batchnorm\n");
    assert_eq!(node(&g, "conv1").op.param_names(), ["weight"]);
    assert_eq!(node(&g, "fc1").op.param_names(), ["weight", "bias"]);
    assert_eq!(
        node(&g, "batchnorm1").op.param_names(),
        ["weight", "bias", "running_mean", "running_var"]
    );
}

// ---------------------------------------------------------------------------------
// The example graphs, with totals worked out by hand from the architectures.

fn graph_total(file: &str) -> u64 {
    total_params(&load(format!("graphs/{file}.yaml")).unwrap())
}

#[test]
fn cs231n_example_total() {
    // conv 10*(5*5*3+1) = 760; maxpool -> 10x16x16 = 2560 features;
    // fc 10*(2560+1) = 25,610. 760 + 25,610 = 26,370.
    assert_eq!(graph_total("cs231n_example"), 26_370);
    let g = load("graphs/cs231n_example.yaml").unwrap();
    assert_eq!(shape(&g, "conv1"), "10x32x32");
    assert_eq!(params(&g, "conv1"), 760);
    assert_eq!(shape(&g, "maxpool1"), "10x16x16");
    assert_eq!(params(&g, "fc1"), 25_610);
    // MACs: conv 10*32*32*75 = 768,000; fc 10*2560 = 25,600.
    assert_eq!(macs(&g, "fc1"), 25_600);
}

#[test]
fn lenet5_total() {
    // conv1 6*(5*5*1+1) = 156            -> 6x28x28, pool 6x14x14
    // conv2 16*(5*5*6+1) = 2,416         -> 16x10x10, pool 16x5x5 = 400
    // fc1 120*(400+1) = 48,120; fc2 84*(120+1) = 10,164; fc3 10*(84+1) = 850
    // 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706
    assert_eq!(graph_total("lenet5"), 61_706);
    let g = load("graphs/lenet5.yaml").unwrap();
    assert_eq!(shape(&g, "maxpool2"), "16x5x5");
    assert_eq!(params(&g, "conv2"), 2_416);
    assert_eq!(params(&g, "fc1"), 48_120);
    // conv1 MACs: 6*28*28 outputs * 25 = 117,600.
    assert_eq!(macs(&g, "conv1"), 117_600);
}

#[test]
fn vgg_cifar_total() {
    // conv1 3->64:    64*(9*3+1)    = 1,792
    // conv2 64->64:   64*(9*64+1)   = 36,928
    // conv3 64->128:  128*(9*64+1)  = 73,856
    // conv4 128->128: 128*(9*128+1) = 147,584
    // conv5 128->256: 256*(9*128+1) = 295,168
    // conv6 256->256: 256*(9*256+1) = 590,080
    // fc1 256*4*4 = 4096 -> 512: 512*4097 = 2,097,664
    // fc2 512 -> 10: 10*513 = 5,130
    // total 3,248,202
    assert_eq!(graph_total("vgg_cifar"), 3_248_202);
    let g = load("graphs/vgg_cifar.yaml").unwrap();
    assert_eq!(names(&g)[..4], ["conv1", "relu1", "conv2", "relu2"]);
    assert_eq!(shape(&g, "maxpool3"), "256x4x4");
    assert_eq!(params(&g, "conv6"), 590_080);
    assert_eq!(params(&g, "fc1"), 2_097_664);
}

#[test]
fn resnet_basic_block_total() {
    // two 3x3 convs 64->64 without bias: 2 * 64*64*9 = 73,728; two batchnorms 2 * 2*64 = 256.
    assert_eq!(graph_total("resnet_basic_block"), 73_984);
    let g = load("graphs/resnet_basic_block.yaml").unwrap();
    assert_eq!(shape(&g, "add"), "64x56x56");
    assert_eq!(inputs_of(&g, "add"), ["bn2", "input"]);
}

#[test]
fn resnet_bottleneck_block_total() {
    // reduce 1x1 256->64: 64*(256+1) = 16,448; 3x3 64->64: 64*(576+1) = 36,928;
    // expand 1x1 64->256: 256*(64+1) = 16,640. 16,448 + 36,928 + 16,640 = 70,016.
    assert_eq!(graph_total("resnet_bottleneck_block"), 70_016);
    let g = load("graphs/resnet_bottleneck_block.yaml").unwrap();
    assert_eq!(
        names(&g),
        ["reduce", "relu1", "conv3x3", "relu2", "expand", "add", "relu3"]
    );
    assert_eq!(shape(&g, "relu3"), "256x56x56");
}

#[test]
fn inception3a_total() {
    // b1 1x1 192->64: 64*193 = 12,352
    // b2 1x1 192->96: 96*193 = 18,528; 3x3 96->128: 128*(9*96+1) = 110,720
    // b3 1x1 192->16: 16*193 = 3,088; 5x5 16->32: 32*(25*16+1) = 12,832
    // b4 pool, 1x1 192->32: 32*193 = 6,176
    // total 163,696
    assert_eq!(graph_total("inception3a"), 163_696);
    let g = load("graphs/inception3a.yaml").unwrap();
    assert_eq!(shape(&g, "concat"), "256x28x28");
    assert_eq!(
        inputs_of(&g, "concat"),
        ["b1_relu", "b2_relu", "b3_relu", "b4_relu"]
    );
    assert_eq!(inputs_of(&g, "b4_pool"), ["input"]);
}

#[test]
fn resnet18_total_matches_torchvision() {
    // conv1 7x7 3->64: 64*3*49 = 9,408; bn1 128
    // layer1: 4 convs 64*64*9 = 36,864 each (147,456) + 4 bn of 128 (512) = 147,968
    // layer2: 128*64*9 = 73,728 + 3 * 128*128*9 = 442,368 + downsample 128*64 = 8,192
    //         + 5 bn of 256 = 1,280                                     = 525,568
    // layer3: 256*128*9 = 294,912 + 3 * 589,824 = 1,769,472 + 256*128 = 32,768
    //         + 5 bn of 512 = 2,560                                     = 2,099,712
    // layer4: 512*256*9 = 1,179,648 + 3 * 2,359,296 = 7,077,888 + 512*256 = 131,072
    //         + 5 bn of 1024 = 5,120                                    = 8,393,728
    // fc 1000*(512+1) = 513,000
    // 9,408 + 128 + 147,968 + 525,568 + 2,099,712 + 8,393,728 + 513,000 = 11,689,512
    assert_eq!(graph_total("resnet18"), 11_689_512);
    let g = load("graphs/resnet18.yaml").unwrap();
    assert_eq!(shape(&g, "conv1"), "64x112x112");
    assert!(node(&g, "conv1").note.window.as_ref().unwrap().untiled());
    assert_eq!(shape(&g, "maxpool"), "64x56x56");
    assert_eq!(shape(&g, "layer2.0.add"), "128x28x28");
    assert_eq!(shape(&g, "layer3.0.add"), "256x14x14");
    assert_eq!(shape(&g, "layer4.1.relu2"), "512x7x7");
    assert_eq!(shape(&g, "avgpool"), "512x1x1");
    assert_eq!(shape(&g, "fc"), "1000");
    assert_eq!(params(&g, "layer4.0.downsample.0"), 131_072);
    assert_eq!(g.norm.as_ref().unwrap().mean, vec![0.485, 0.456, 0.406]);
}

#[test]
fn every_example_graph_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir("graphs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let g = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(g.node_count() > 1);
            n += 1;
        }
    }
    assert!(n >= 7);
}

// ---------------------------------------------------------------------------------
// Properties: the size formula against counting window positions directly.

mod props {
    use super::*;
    use proptest::prelude::*;

    /// How many windows of `f` at stride `s` fit in `n` padded by `p` on both sides,
    /// counted one position at a time.
    fn count_positions(n: usize, f: usize, s: usize, p: usize) -> usize {
        (0..).take_while(|o| o * s + f <= n + 2 * p).count()
    }

    proptest! {
        #![proptest_config(crate::common::proptest_config(256))]

        #[test]
        fn size_formula_counts_window_positions(
            c in 1usize..4, h in 1usize..40, w in 1usize..40,
            fh in 1usize..8, fw in 1usize..8, sh in 1usize..5, sw in 1usize..5,
            ph in 0usize..4, pw in 0usize..4, pool in any::<bool>(), strict in any::<bool>(),
        ) {
            let op = if pool {
                format!("maxpool: {{size: [{fh}, {fw}], stride: [{sh}, {sw}], pad: [{ph}, {pw}]}}")
            } else {
                format!("conv: {{filters: 2, size: [{fh}, {fw}], stride: [{sh}, {sw}], pad: [{ph}, {pw}]}}")
            };
            let text = format!("input: [{c}, {h}, {w}]\nstrict_shapes: {strict}\nlayers:\n  - {op}\n");
            let fits = h + 2 * ph >= fh && w + 2 * pw >= fw && ph < fh && pw < fw;
            let tiles = (h + 2 * ph).saturating_sub(fh) % sh == 0
                && (w + 2 * pw).saturating_sub(fw) % sw == 0;
            match parse_str(&text, None) {
                Ok(g) => {
                    prop_assert!(fits && (tiles || !strict));
                    let name = if pool { "maxpool1" } else { "conv1" };
                    let s = g.node(g.find(name).unwrap()).shape;
                    prop_assert_eq!(s.c, if pool { c } else { 2 });
                    prop_assert_eq!(s.h, count_positions(h, fh, sh, ph));
                    prop_assert_eq!(s.w, count_positions(w, fw, sw, pw));
                    let win = g.node(g.find(name).unwrap()).note.window.clone().unwrap();
                    prop_assert_eq!(win.untiled(), !tiles);
                    if !pool {
                        // K*(Fh*Fw*C + 1) parameters; one Fh*Fw*C dot product per output.
                        let st = layer_stats(&g, g.find(name).unwrap());
                        prop_assert_eq!(st.params as usize, 2 * (fh * fw * c + 1));
                        prop_assert_eq!(st.macs as usize, s.len() * fh * fw * c);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(!fits || (strict && !tiles), "{}", msg);
                    let name = if pool { "maxpool1" } else { "conv1" };
                    prop_assert!(msg.starts_with(name), "{}", msg);
                }
            }
        }
    }
}

/// Every complete graph in docs/graph-format.md (a yaml block with `input:` and
/// `layers:`) parses, and the doc's naming example names its layers as the comments say.
#[test]
fn the_examples_in_the_docs_parse() {
    let doc = std::fs::read_to_string("docs/graph-format.md").unwrap();
    let mut n = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        if !block.contains("input:") || !block.contains("layers:") {
            continue;
        }
        let g = parse_str(block, None).unwrap_or_else(|e| panic!("{e}\n{block}"));
        n += 1;
        if let Some(cat) = g.find("cat") {
            assert_eq!(g.node(cat).shape.to_string(), "64x56x56");
        }
        if block.contains("cs231n_conv_example") {
            assert_eq!(total_params(&g), 26_370);
        }
    }
    assert!(n >= 2, "found {n} example graphs");
    // The naming example: its comments give each layer's name.
    let naming = doc
        .split("```yaml\n")
        .map(|b| &b[..b.find("```").unwrap_or(b.len())])
        .find(|b| b.contains("# stem"))
        .unwrap();
    let g = parse_str(&format!("input: [3, 8, 8]\n{naming}"), None).unwrap();
    let expected: Vec<&str> = naming
        .lines()
        .filter_map(|l| l.split("# ").nth(1))
        .map(|c| c.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names(&g), expected);
}
