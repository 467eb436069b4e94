//! IR-level tests of each pass and the pipeline: a small graph before (YAML), the
//! expected graph after (the `--emit ir` text: names, ops, attributes, edges, shapes),
//! including the cases a pass must leave alone.
mod common;
use cnnc::ir::print::to_text;
use cnnc::passes::{self, Changed, Pass, Pipeline};
use cnnc::{Error, Graph, OptLevel, Options};
use common::{assert_values, graph as parse, tensor as t, Breaker};

fn opts(passes: &[&str]) -> Options {
    Options {
        passes: Some(passes.iter().map(|s| s.to_string()).collect()),
        verify: true,
        ..Options::default()
    }
}

/// Runs the named passes (shape-checked after each) and returns the graph.
fn after(passes: &[&str], yaml: &str) -> (Graph, Changed) {
    let mut g = parse(yaml);
    let changed = Pipeline::new(&opts(passes)).unwrap().run(&mut g).unwrap();
    (g, changed)
}

/// The IR text without the header line, each line trimmed.
fn ir(g: &Graph) -> String {
    to_text(g)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

fn expect(g: &Graph, want: &str) {
    let want: Vec<&str> = want.trim().lines().map(str::trim).collect();
    assert_eq!(
        ir(g),
        want.join("\n"),
        "\nfull IR:\n{}",
        to_text(g).unwrap()
    );
}

fn assert_unchanged(passes: &[&str], yaml: &str) {
    let before = ir(&parse(yaml));
    let (g, changed) = after(passes, yaml);
    assert_eq!(changed, Changed::No);
    assert_eq!(ir(&g), before);
}

// ---------------------------------------------------------------- dce

#[test]
fn dce_removes_dropout() {
    let (g, changed) = after(
        &["dce"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: d, dropout}
  - {name: r, relu}",
    );
    assert_eq!(changed, Changed::Yes);
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 (input) : 4x8x8
         r = relu (c) : 4x8x8
         outputs: r",
    );
}

#[test]
fn dce_dropout_as_output_hands_the_output_to_its_input() {
    let (g, _) = after(
        &["dce"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: d, dropout}",
    );
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 (input) : 4x8x8
         outputs: c",
    );
}

#[test]
fn dce_removes_other_identities() {
    let (g, _) = after(
        &["dce"],
        "input: [3, 8, 8]
layers:
  - {name: r1, relu}
  - {name: r2, relu}
  - {name: p1, maxpool: {size: 1}}
  - {name: p2, avgpool: {size: 2}}
  - {name: f1, flatten}
  - {name: f2, flatten}
  - {name: fc, fc: {units: 2}}",
    );
    expect(
        &g,
        "r1 = relu (input) : 3x8x8
         p2 = avgpool 2x2/2 pad 0 (r1) : 3x4x4
         f1 = flatten (p2) : 48
         fc = fc 2 (f1) : 2
         outputs: fc",
    );
}

#[test]
fn dce_removes_relu_after_fused_relu() {
    let (g, _) = after(
        &["fuse-epilogue", "dce"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r1, relu}
  - {name: r2, relu}",
    );
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 +relu (input) : 4x8x8
         outputs: c",
    );
}

#[test]
fn dce_removes_nodes_no_output_depends_on() {
    let (g, changed) = after(
        &["dce"],
        "input: [3, 8, 8]
layers:
  - {name: a, conv: {filters: 4, size: 3, pad: 1}}
  - {name: b, conv: {filters: 4, size: 1}, inputs: [input]}
  - {name: b_relu, relu}
  - {name: c, relu, inputs: [a]}
outputs: [c]",
    );
    assert_eq!(changed, Changed::Yes);
    expect(
        &g,
        "a = conv 3x3/1 pad 1 k=4 (input) : 4x8x8
         c = relu (a) : 4x8x8
         outputs: c",
    );
}

#[test]
fn dce_keeps_everything_outputs_read() {
    assert_unchanged(
        &["dce"],
        "input: [3, 8, 8]
layers:
  - {name: a, conv: {filters: 4, size: 3, pad: 1}}
  - {name: b, conv: {filters: 4, size: 1}, inputs: [input]}
  - {name: s, add, inputs: [a, b]}
  - {name: f, flatten}
outputs: [s, f, a]",
    );
}

// ---------------------------------------------------------------- fold-batchnorm

#[test]
fn fold_batchnorm_into_conv_gives_it_a_bias() {
    let (g, changed) = after(
        &["fold-batchnorm"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1, bias: false}}
  - {name: bn, batchnorm}
  - {name: r, relu}",
    );
    assert_eq!(changed, Changed::Yes);
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 (input) : 4x8x8
         r = relu (c) : 4x8x8
         outputs: r",
    );
}

#[test]
fn fold_batchnorm_into_fc_and_at_the_output() {
    let (g, _) = after(
        &["fold-batchnorm"],
        "input: [3, 4, 4]
layers:
  - {name: fc, fc: {units: 5}}
  - {name: bn, batchnorm: {eps: 0.1}}",
    );
    expect(
        &g,
        "fc = fc 5 (input) : 5
         outputs: fc",
    );
}

#[test]
fn fold_batchnorm_leaves_a_conv_read_elsewhere() {
    assert_unchanged(
        &["fold-batchnorm"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: bn, batchnorm}
  - {name: s, add, inputs: [bn, c]}",
    );
}

#[test]
fn fold_batchnorm_leaves_a_conv_that_is_a_graph_output() {
    assert_unchanged(
        &["fold-batchnorm"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: bn, batchnorm}
outputs: [c, bn]",
    );
}

#[test]
fn fold_batchnorm_leaves_batchnorm_after_other_ops() {
    assert_unchanged(
        &["fold-batchnorm"],
        "input: [3, 8, 8]
layers:
  - {name: bn0, batchnorm}
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r, relu}
  - {name: bn1, batchnorm}
  - {name: p, maxpool: {size: 2}}
  - {name: bn2, batchnorm}",
    );
}

#[test]
fn fold_batchnorm_leaves_a_conv_with_a_fused_relu() {
    // relu then batchnorm is not a linear map of the conv's output.
    let (g, _) = after(
        &["fuse-epilogue", "fold-batchnorm"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r, relu}
  - {name: bn, batchnorm}",
    );
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 +relu (input) : 4x8x8
         bn = batchnorm eps=0.00001 (c) : 4x8x8
         outputs: bn",
    );
}

/// The hand-computed case of the issue's formulas:
/// `s = gamma / sqrt(var + eps) = [2/sqrt(15+1), 1/sqrt(3+1)] = [0.5, 0.5]`,
/// `w' = w * s = [0.5, 1.0]`, `b' = (b - mean) * s + beta = [(0.5-0.5)*0.5+0.1, (-1-1)*0.5+0] = [0.1, -1]`.
#[test]
fn fold_batchnorm_numbers_by_hand() {
    let yaml = "input: [1, 1, 2]
layers:
  - {name: c, conv: {filters: 2, size: 1}}
  - {name: bn, batchnorm: {eps: 1.0}}";
    let mut g = parse(yaml);
    let c = g.find("c").unwrap();
    let bn = g.find("bn").unwrap();
    let p = &mut g.node_mut(c).params;
    p.insert("weight".into(), t(&[2, 1, 1, 1], &[1.0, 2.0]));
    p.insert("bias".into(), t(&[2], &[0.5, -1.0]));
    let p = &mut g.node_mut(bn).params;
    p.insert("weight".into(), t(&[2], &[2.0, 1.0]));
    p.insert("bias".into(), t(&[2], &[0.1, 0.0]));
    p.insert("running_mean".into(), t(&[2], &[0.5, 1.0]));
    p.insert("running_var".into(), t(&[2], &[15.0, 3.0]));
    // x = [3, 4]: channel 0 is 0.5x + 0.1, channel 1 is x - 1.
    let x = t(&[1, 1, 1, 2], &[3.0, 4.0]);
    let want = [1.6f32, 2.1, 2.0, 3.0];
    let y0 = cnnc::interp::run(&g, x.clone()).unwrap();
    assert_close(y0[0].data(), &want);

    Pipeline::new(&opts(&["fold-batchnorm"]))
        .unwrap()
        .run(&mut g)
        .unwrap();
    assert_eq!(g.node_count(), 2);
    let conv = g.node(g.find("c").unwrap());
    assert_eq!(conv.param("weight").unwrap().shape(), &[2, 1, 1, 1]);
    assert_close(conv.param("weight").unwrap().data(), &[0.5, 1.0]);
    assert_close(conv.param("bias").unwrap().data(), &[0.1, -1.0]);
    let y2 = cnnc::interp::run(&g, x).unwrap();
    assert_close(y2[0].data(), &want);
}

#[test]
fn fold_batchnorm_gives_a_bias_to_a_conv_without_one() {
    let yaml = "input: [1, 1, 2]
layers:
  - {name: c, conv: {filters: 1, size: 1, bias: false}}
  - {name: bn, batchnorm: {eps: 0.0001}}";
    let mut g = parse(yaml);
    let c = g.find("c").unwrap();
    let bn = g.find("bn").unwrap();
    g.node_mut(c)
        .params
        .insert("weight".into(), t(&[1, 1, 1, 1], &[3.0]));
    let p = &mut g.node_mut(bn).params;
    p.insert("weight".into(), t(&[1], &[4.0]));
    p.insert("bias".into(), t(&[1], &[1.0]));
    p.insert("running_mean".into(), t(&[1], &[2.0]));
    p.insert("running_var".into(), t(&[1], &[3.9999]));
    Pipeline::new(&opts(&["fold-batchnorm"]))
        .unwrap()
        .run(&mut g)
        .unwrap();
    // s = 4 / sqrt(4) = 2: w' = 6, b' = (0 - 2) * 2 + 1 = -3.
    let conv = g.node(g.find("c").unwrap());
    assert!(matches!(&conv.op, cnnc::ir::Op::Conv(c) if c.bias));
    assert_close(conv.param("weight").unwrap().data(), &[6.0]);
    assert_close(conv.param("bias").unwrap().data(), &[-3.0]);
}

#[test]
fn fold_batchnorm_refuses_half_bound_weights() {
    let mut g = parse(
        "input: [1, 1, 2]
layers:
  - {name: c, conv: {filters: 1, size: 1}}
  - {name: bn, batchnorm}",
    );
    let c = g.find("c").unwrap();
    g.node_mut(c)
        .params
        .insert("weight".into(), t(&[1, 1, 1, 1], &[3.0]));
    let err = Pipeline::new(&opts(&["fold-batchnorm"]))
        .unwrap()
        .run(&mut g)
        .unwrap_err();
    assert!(matches!(err, Error::Weights(_)), "{err}");
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_values(got, want, 1e-5);
}

// ---------------------------------------------------------------- fuse-epilogue

#[test]
fn fuse_relu_into_conv_and_fc() {
    let (g, changed) = after(
        &["fuse-epilogue"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r1, relu}
  - {name: p, maxpool: {size: 2}}
  - {name: r2, relu}
  - {name: fc, fc: {units: 10}}
  - {name: r3, relu}",
    );
    assert_eq!(changed, Changed::Yes);
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 +relu (input) : 4x8x8
         p = maxpool 2x2/2 pad 0 (c) : 4x4x4
         r2 = relu (p) : 4x4x4
         fc = fc 10 +relu (r2) : 10
         outputs: fc",
    );
}

#[test]
fn fuse_leaves_relu_of_a_conv_read_twice() {
    assert_unchanged(
        &["fuse-epilogue"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r, relu}
  - {name: c2, conv: {filters: 4, size: 3, pad: 1}, inputs: [c]}
  - {name: s, concat, inputs: [r, c2]}",
    );
}

#[test]
fn fuse_leaves_relu_of_a_conv_that_is_an_output() {
    assert_unchanged(
        &["fuse-epilogue"],
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r, relu}
outputs: [c, r]",
    );
}

#[test]
fn fuse_add_and_relu_into_the_conv() {
    let (g, _) = after(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: c1, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r1, relu}
  - {name: c2, conv: {filters: 4, size: 3, pad: 1}}
  - {name: add, add, inputs: [c2, input]}
  - {name: r2, relu}",
    );
    expect(
        &g,
        "c1 = conv 3x3/1 pad 1 k=4 +relu (input) : 4x8x8
         c2 = conv 3x3/1 pad 1 k=4 +residual +relu (c1, input) : 4x8x8
         outputs: c2",
    );
}

#[test]
fn fuse_add_without_relu() {
    let (g, _) = after(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: add, add, inputs: [c, input]}
  - {name: p, maxpool: {size: 2}}",
    );
    expect(
        &g,
        "c = conv 3x3/1 pad 1 k=4 +residual (input, input) : 4x8x8
         p = maxpool 2x2/2 pad 0 (c) : 4x4x4
         outputs: p",
    );
}

#[test]
fn fuse_add_picks_the_conv_in_slot_1_when_slot_0_is_not_one() {
    let (g, _) = after(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: p, maxpool: {size: 3, stride: 1, pad: 1}}
  - {name: c, conv: {filters: 4, size: 3, pad: 1}, inputs: [input]}
  - {name: add, add, inputs: [p, c]}",
    );
    expect(
        &g,
        "p = maxpool 3x3/1 pad 1 (input) : 4x8x8
         c = conv 3x3/1 pad 1 k=4 +residual (input, p) : 4x8x8
         outputs: c",
    );
}

#[test]
fn fuse_add_of_two_convs_takes_slot_0() {
    let (g, _) = after(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: a, conv: {filters: 4, size: 3, pad: 1}}
  - {name: b, conv: {filters: 4, size: 1}, inputs: [input]}
  - {name: add, add, inputs: [a, b]}
  - {name: r, relu}",
    );
    expect(
        &g,
        "b = conv 1x1/1 pad 0 k=4 (input) : 4x8x8
         a = conv 3x3/1 pad 1 k=4 +residual +relu (input, b) : 4x8x8
         outputs: a",
    );
}

#[test]
fn fuse_leaves_add_whose_conv_has_other_readers() {
    assert_unchanged(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: add, add, inputs: [c, input]}
  - {name: r, relu}
  - {name: cat, concat, inputs: [r, c]}",
    );
}

#[test]
fn fuse_leaves_add_of_three_and_its_relu() {
    assert_unchanged(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: add, add, inputs: [c, input, input]}
  - {name: r, relu}",
    );
}

#[test]
fn fuse_leaves_add_of_a_conv_with_itself() {
    assert_unchanged(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: p, maxpool: {size: 2}}
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: add, add, inputs: [c, c]}",
    );
}

#[test]
fn fuse_leaves_add_after_a_relu_fused_conv() {
    // relu(conv) + x cannot become the epilogue (it adds before the relu).
    let (g, _) = after(
        &["fuse-epilogue"],
        "input: [4, 8, 8]
layers:
  - {name: p, maxpool: {size: 3, stride: 1, pad: 1}}
  - {name: c, conv: {filters: 4, size: 3, pad: 1}, inputs: [input]}
  - {name: r, relu}
  - {name: add, add, inputs: [r, p]}",
    );
    expect(
        &g,
        "p = maxpool 3x3/1 pad 1 (input) : 4x8x8
         c = conv 3x3/1 pad 1 k=4 +relu (input) : 4x8x8
         add = add (c, p) : 4x8x8
         outputs: add",
    );
}

#[test]
fn fuse_after_fold_makes_a_resnet_block_one_conv_per_branch() {
    let (g, _) = after(
        &["fold-batchnorm", "fuse-epilogue"],
        "input: [64, 8, 8]
layers:
  - {name: conv1, conv: {filters: 64, size: 3, pad: 1, bias: false}}
  - {name: bn1, batchnorm}
  - {name: relu1, relu}
  - {name: conv2, conv: {filters: 64, size: 3, pad: 1, bias: false}}
  - {name: bn2, batchnorm}
  - {name: add, add, inputs: [bn2, input]}
  - {name: relu2, relu}",
    );
    expect(
        &g,
        "conv1 = conv 3x3/1 pad 1 k=64 +relu (input) : 64x8x8
         conv2 = conv 3x3/1 pad 1 k=64 +residual +relu (conv1, input) : 64x8x8
         outputs: conv2",
    );
}

// ---------------------------------------------------------------- lower-gemm

#[test]
fn lower_1x1_convs_to_gemm() {
    let (g, changed) = after(
        &["lower-gemm"],
        "input: [8, 8, 8]
layers:
  - {name: a, conv: {filters: 4, size: 1}}
  - {name: b, conv: {filters: 6, size: 1, stride: 2, bias: false}}
  - {name: d, conv: {filters: 6, size: 3, pad: 1}}
  - {name: e, conv: {filters: 6, size: [1, 3]}}",
    );
    assert_eq!(changed, Changed::Yes);
    expect(
        &g,
        "a = gemm 1x1/1 k=4 (input) : 4x8x8
         b = gemm 1x1/2 k=6 nobias (a) : 6x4x4
         d = conv 3x3/1 pad 1 k=6 (b) : 6x4x4
         e = conv 1x3/1 pad 0 k=6 (d) : 6x4x2
         outputs: e",
    );
}

/// A padded 1x1 conv is not a plain product (its border is bias only). The graph
/// format refuses it (`pad` must be smaller than the window), so the graph is built by
/// hand and the pass run on it directly, without the shape check.
#[test]
fn lower_leaves_a_padded_1x1_conv() {
    use cnnc::ir::{Conv, Epilogue, Hw, Node, Op, Shape};
    let mut g = Graph::new("padded", Shape::chw(3, 4, 4));
    let conv = Op::Conv(Conv {
        filters: 2,
        size: Hw::square(1),
        stride: Hw::square(1),
        pad: Hw::square(1),
        dilation: Hw::square(1),
        groups: 1,
        bias: true,
        epilogue: Epilogue::default(),
    });
    let input = g.input;
    let c = g.add_node(Node::new("c", conv.clone()), &[input]);
    g.outputs = vec![c];
    let changed = cnnc::passes::lower_gemm::LowerGemm.run(&mut g).unwrap();
    assert_eq!(changed, Changed::No);
    assert_eq!(g.node(c).op, conv);
}

#[test]
fn lower_keeps_the_epilogue_and_the_residual_input() {
    let (g, _) = after(
        &["fuse-epilogue", "lower-gemm"],
        "input: [8, 8, 8]
layers:
  - {name: a, conv: {filters: 8, size: 1}}
  - {name: s, add, inputs: [a, input]}
  - {name: r, relu}",
    );
    expect(
        &g,
        "a = gemm 1x1/1 k=8 +residual +relu (input, input) : 8x8x8
         outputs: a",
    );
}

#[test]
fn lower_keeps_the_pytorch_weight_layout() {
    let mut g = parse(
        "input: [3, 4, 4]
layers:
  - {name: a, conv: {filters: 2, size: 1}}",
    );
    cnnc::weights::init_from_seed(&mut g);
    let before = g.node(g.find("a").unwrap()).params.clone();
    Pipeline::new(&opts(&["lower-gemm"]))
        .unwrap()
        .run(&mut g)
        .unwrap();
    let node = g.node(g.find("a").unwrap());
    assert_eq!(node.op.kind(), "gemm");
    assert_eq!(node.params, before);
    assert_eq!(node.param("weight").unwrap().shape(), &[2, 3, 1, 1]);
}

// ---------------------------------------------------------------- pipeline

#[test]
fn levels_name_their_passes() {
    assert!(Pipeline::for_level(OptLevel::O0).names().is_empty());
    assert_eq!(
        Pipeline::for_level(OptLevel::O1).names(),
        ["dce", "fold-scale-shift", "fold-batchnorm"]
    );
    assert_eq!(
        Pipeline::for_level(OptLevel::O2).names(),
        [
            "dce",
            "fold-scale-shift",
            "fold-batchnorm",
            "fuse-epilogue",
            "lower-gemm"
        ]
    );
    assert_eq!(Options::default().opt_level, OptLevel::O2);
    assert_eq!("-O1".parse::<OptLevel>().unwrap(), OptLevel::O1);
    assert!("3".parse::<OptLevel>().is_err());
}

#[test]
fn passes_list_and_disable() {
    let o = Options {
        passes: Some(vec!["lower-gemm".into(), "dce".into(), "lower-gemm".into()]),
        disabled: vec!["dce".into()],
        ..Options::default()
    };
    assert_eq!(
        Pipeline::new(&o).unwrap().names(),
        ["lower-gemm", "lower-gemm"]
    );
    let o = Options {
        disabled: vec!["fuse-epilogue".into()],
        ..Options::default()
    };
    assert_eq!(
        Pipeline::new(&o).unwrap().names(),
        ["dce", "fold-scale-shift", "fold-batchnorm", "lower-gemm"]
    );
}

#[test]
fn unknown_pass_names_are_option_errors() {
    for o in [
        opts(&["dce", "fold-bn"]),
        Options {
            disabled: vec!["nope".into()],
            ..Options::default()
        },
    ] {
        let err = Pipeline::new(&o).err().expect("an unknown name fails");
        assert!(matches!(err, Error::Options(_)));
        let msg = err.to_string();
        assert!(msg.contains("unknown pass"), "{msg}");
        assert!(
            msg.contains("dce, fold-scale-shift, fold-batchnorm, fuse-epilogue, lower-gemm"),
            "{msg}"
        );
    }
}

#[test]
fn o0_leaves_the_graph_as_written() {
    let yaml = std::fs::read_to_string("graphs/resnet18.yaml").unwrap();
    let mut g = parse(&yaml);
    let before = ir(&g);
    let o = Options {
        opt_level: OptLevel::O0,
        verify: true,
        ..Options::default()
    };
    assert_eq!(passes::optimize(&mut g, &o).unwrap(), Changed::No);
    assert_eq!(ir(&g), before);
}

#[test]
fn verify_names_the_pass_that_broke_the_graph() {
    let yaml = "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}
  - {name: r, relu}";
    let mut p = Pipeline::new(&opts(&["dce"])).unwrap();
    p.push("breaker", Box::new(Breaker));
    let err = p.run(&mut parse(yaml)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Pass { .. }), "{msg}");
    assert!(msg.starts_with("pass `breaker` broke the graph"), "{msg}");
    assert!(msg.contains("c:"), "{msg}");
}

#[test]
fn run_with_reports_every_pass() {
    let yaml = std::fs::read_to_string("graphs/resnet_basic_block.yaml").unwrap();
    let mut g = parse(&yaml);
    let mut seen = Vec::new();
    Pipeline::new(&Options {
        verify: true,
        ..Options::default()
    })
    .unwrap()
    .run_with(&mut g, &mut |name, changed, g| {
        seen.push((name.to_string(), changed, g.node_count()))
    })
    .unwrap();
    let seen: Vec<(&str, Changed, usize)> =
        seen.iter().map(|(n, c, k)| (n.as_str(), *c, *k)).collect();
    assert_eq!(
        seen,
        [
            ("dce", Changed::No, 8),
            ("fold-scale-shift", Changed::No, 8),
            ("fold-batchnorm", Changed::Yes, 6),
            ("fuse-epilogue", Changed::Yes, 3),
            ("lower-gemm", Changed::No, 3),
        ]
    );
}

#[test]
fn resnet18_at_o2_has_no_batchnorm_relu_or_add_left() {
    let yaml = std::fs::read_to_string("graphs/resnet18.yaml").unwrap();
    let mut g = parse(&yaml);
    let before = g.node_count();
    let o = Options {
        verify: true,
        ..Options::default()
    };
    passes::optimize(&mut g, &o).unwrap();
    let kinds: Vec<&str> = g.dag.node_weights().map(|n| n.op.kind()).collect();
    for gone in ["batchnorm", "relu", "add"] {
        assert!(!kinds.contains(&gone), "{gone} left: {kinds:?}");
    }
    // 20 batchnorms, 17 relus and 8 adds are gone; the 3 projection shortcuts are gemms.
    assert_eq!(before - g.node_count(), 20 + 17 + 8);
    assert_eq!(kinds.iter().filter(|&&k| k == "gemm").count(), 3);
    let conv1 = g.node(g.find("conv1").unwrap());
    assert_eq!(conv1.op.to_string(), "conv 7x7/2 pad 3 k=64 +relu");
    let down = g.node(g.find("layer2.0.conv2").unwrap());
    assert_eq!(
        down.op.to_string(),
        "conv 3x3/1 pad 1 k=128 +residual +relu"
    );
}

/// A pass that drops a bound bias but leaves `bias: true`.
struct BiasDropper;
impl Pass for BiasDropper {
    fn run(&self, g: &mut Graph) -> cnnc::Result<Changed> {
        let c = g.find("c").unwrap();
        g.node_mut(c).params.remove("bias");
        Ok(Changed::Yes)
    }
}

#[test]
fn verify_checks_bound_parameters() {
    let mut g = parse(
        "input: [3, 8, 8]
layers:
  - {name: c, conv: {filters: 4, size: 3, pad: 1}}",
    );
    cnnc::weights::init_from_seed(&mut g);
    let mut p = Pipeline::new(&opts(&[])).unwrap();
    p.push("bias-dropper", Box::new(BiasDropper));
    let msg = p.run(&mut g).unwrap_err().to_string();
    assert_eq!(
        msg,
        "pass `bias-dropper` broke the graph: c.bias is missing"
    );
}
