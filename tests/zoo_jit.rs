//! The JIT engine on the classic ConvNets' ops, against the interpreter on many shapes:
//! groups of every size (depthwise with multiplier 1 and 2), dilation 2-4 with stride
//! and padding, LRN sizes 3 and 5, shuffles of 2-8 groups, pools with unequal and
//! large pads that do or do not count the padding, clip and scale_shift, batch > 1.
//! Every model first runs on an all-NaN input, so its reused activation memory is
//! poisoned: an element a kernel fails to write stays NaN and fails the check.
mod common;
use cnnc::tensor::rel_l2;
use cnnc::weights::standard_normal;
use cnnc::{OptLevel, Options, Tensor};
use common::*;

fn check(what: &str, yaml: &str, batch: usize) {
    let mut g = graph(yaml);
    cnnc::weights::bind(&mut g, None).unwrap();
    // Seeded weights make scale_shift the identity: give it real values.
    for id in g.dag.node_indices().collect::<Vec<_>>() {
        let node = g.node_mut(id);
        if node.op.kind() == "scale_shift" {
            let c = node.shape.c;
            for (k, suffix) in ["weight", "bias"].iter().enumerate() {
                let v = standard_normal(k as u64, &node.name, c);
                node.params
                    .insert(suffix.to_string(), Tensor::new(vec![c], v).unwrap());
            }
        }
    }
    let s = g.input_shape();
    let n = batch * s.len();
    let x = Tensor::new(vec![batch, s.c, s.h, s.w], standard_normal(7, what, n)).unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap().remove(0);
    for level in [OptLevel::O0, OptLevel::O2] {
        let opts = Options {
            opt_level: level,
            batch,
            ..Options::default()
        };
        let model = cnnc::compile(&g, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        let poison = Tensor::filled(vec![batch, s.c, s.h, s.w], f32::NAN);
        model.run(&poison).unwrap();
        let got = model.run(&x).unwrap().remove(0);
        assert_eq!(got.shape(), want.shape(), "{what}");
        assert!(
            got.data().iter().all(|v| v.is_finite()),
            "{what} ({level}): NaN left"
        );
        let err = rel_l2(got.data(), want.data());
        assert!(err < 1e-5, "{what} ({level}): rel L2 {err:e}");
    }
}

#[test]
fn grouped_convs_of_every_group_count() {
    for groups in [1, 2, 3, 6] {
        for (size, stride, pad) in [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 2, 0)] {
            let yaml = format!(
                "input: [6, 11, 9]\nlayers:\n  - conv: {{filters: 12, size: {size}, stride: {stride}, pad: {pad}, groups: {groups}}}\n  - relu\n"
            );
            check(
                &format!("groups {groups}, {size}x{size}/{stride} pad {pad}"),
                &yaml,
                2,
            );
        }
    }
}

#[test]
fn depthwise_with_multiplier_1_and_2_and_a_residual() {
    check(
        "depthwise x1",
        "input: [7, 10, 10]\nlayers:\n  - conv: {filters: 7, size: 3, pad: 1, groups: 7, bias: false}\n  - batchnorm\n  - relu6\n",
        3,
    );
    check(
        "depthwise x2, stride 2",
        "input: [5, 9, 12]\nlayers:\n  - conv: {filters: 10, size: 3, stride: 2, pad: 1, groups: 5}\n  - relu6\n",
        2,
    );
    check(
        "depthwise + residual",
        "input: [4, 8, 8]\nlayers:\n  - {name: dw, conv: {filters: 4, size: 3, pad: 1, groups: 4}}\n  - {name: add, add, inputs: [dw, input]}\n  - relu\n",
        2,
    );
}

#[test]
fn dilations_2_to_4_with_stride_and_padding() {
    for d in 2..=4 {
        for (stride, pad) in [(1, 0), (1, d), (2, d), (2, 1)] {
            let yaml = format!(
                "input: [3, 17, 15]\nlayers:\n  - conv: {{filters: 5, size: 3, dilation: {d}, stride: {stride}, pad: {pad}}}\n"
            );
            check(&format!("dilation {d} /{stride} pad {pad}"), &yaml, 2);
        }
    }
    check(
        "dilation [2, 3], grouped",
        "input: [4, 12, 12]\nlayers:\n  - conv: {filters: 8, size: [3, 2], dilation: [2, 3], groups: 2, pad: 2}\n",
        1,
    );
}

#[test]
fn lrn_sizes_3_and_5() {
    for (c, size) in [(1, 3), (5, 3), (7, 5), (3, 5), (16, 5), (9, 2)] {
        let yaml = format!(
            "input: [{c}, 6, 5]\nlayers:\n  - relu\n  - lrn: {{size: {size}, alpha: 0.01, beta: 0.75, bias: 2}}\n"
        );
        check(&format!("lrn {size} on {c} channels"), &yaml, 2);
    }
}

#[test]
fn channel_shuffles_of_2_to_8_groups() {
    for groups in 2..=8 {
        let c = groups * 3;
        let yaml = format!(
            "input: [{c}, 5, 4]\nlayers:\n  - conv: {{filters: {c}, size: 1, groups: {groups}}}\n  - channel_shuffle: {{groups: {groups}}}\n  - conv: {{filters: {c}, size: 3, pad: 1, groups: 3}}\n"
        );
        check(&format!("shuffle {groups}"), &yaml, 2);
    }
}

#[test]
fn pools_with_unequal_and_large_pads() {
    for (kind, count) in [("maxpool", true), ("avgpool", true), ("avgpool", false)] {
        for (size, stride, pad, pad_end) in [
            (3, 2, 0, 1),
            (3, 2, 1, 1),
            (2, 1, 1, 1),
            (3, 1, 2, 0),
            (4, 2, 3, 2),
        ] {
            let yaml = format!(
                "input: [3, 9, 8]\nlayers:\n  - {kind}: {{size: {size}, stride: {stride}, pad: {pad}, pad_end: {pad_end}, count_include_pad: {count}}}\n"
            );
            let yaml = if kind == "maxpool" {
                yaml.replace(", count_include_pad: true", "")
            } else {
                yaml
            };
            check(
                &format!("{kind} {size}/{stride} pad {pad},{pad_end} count {count}"),
                &yaml,
                2,
            );
        }
    }
}

#[test]
fn clip_and_scale_shift_alone_and_fused() {
    check(
        "clip alone",
        "input: [3, 5, 5]\nlayers:\n  - clip: {min: -0.5, max: 0.7}\n",
        2,
    );
    check(
        "scale_shift after a concat, and folded into a conv",
        "input: [3, 6, 6]\nlayers:\n  - {name: a, conv: {filters: 4, size: 3, pad: 1}}\n  - {name: s1, scale_shift}\n  - {name: b, conv: {filters: 2, size: 1}, inputs: [input]}\n  - {name: cat, concat, inputs: [s1, b]}\n  - {name: s2, scale_shift}\n  - relu6\n",
        3,
    );
    check(
        "fc with a clip epilogue",
        "input: [3, 4, 4]\nlayers:\n  - fc: {units: 10}\n  - clip: {min: -0.1, max: 0.2}\n",
        2,
    );
}

/// Dilated convs with stride 1 run as plain convs on the input's phases (no zero taps),
/// Winograd where a phase is 3x3 with enough channels; strided or grouped ones on the
/// zero-expanded filter. Both against the interpreter, batch 2.
#[test]
fn dilated_convs_with_stride_1_run_on_phases() {
    let cases = [
        (
            "input: [16, 20, 20]",
            "{filters: 16, size: 3, dilation: 2, pad: 2}",
            true,
        ),
        (
            "input: [5, 13, 17]",
            "{filters: 7, size: [3, 2], dilation: [4, 3], pad: [4, 1]}",
            true,
        ),
        (
            "input: [3, 9, 9]",
            "{filters: 4, size: 3, dilation: 4, pad: 4, bias: false}",
            true,
        ),
        (
            "input: [3, 6, 5]",
            "{filters: 4, size: 2, dilation: 5, pad: 2}",
            true,
        ),
        (
            "input: [4, 12, 12]",
            "{filters: 4, size: 3, dilation: 2, stride: 2, pad: 2}",
            false,
        ),
    ];
    for (input, conv, phases) in cases {
        let yaml = format!("{input}\nlayers:\n  - {{name: d, conv: {conv}}}\n  - relu6\n");
        let mut g = graph(&yaml);
        cnnc::weights::bind(&mut g, None).unwrap();
        let opts = Options::default();
        let mut og = g.clone();
        cnnc::passes::optimize(&mut og, &opts).unwrap();
        let plan = cnnc::lower::lower(&og, &opts).unwrap();
        let family = plan.step("d").unwrap().kernel.family();
        assert_eq!(family == "polyphase-conv", phases, "{conv}: {family}");
        check(conv, &yaml, 2);
    }
}

/// A grouped 1x1 conv (ShuffleNet's) runs the pointwise GEMM once per group on the
/// group's contiguous channel block, not the direct kernel.
#[test]
fn grouped_1x1_convs_are_per_group_gemms() {
    let yaml = "input: [12, 7, 9]\nlayers:\n  - {name: g, conv: {filters: 6, size: 1, groups: 3}}\n  - relu\n";
    let mut g = graph(yaml);
    cnnc::weights::bind(&mut g, None).unwrap();
    let plan = cnnc::lower::lower(&g, &Options::default()).unwrap();
    let step = plan.step("g").unwrap();
    let algorithm = step.kernel.algorithm().unwrap_or_default();
    assert!(algorithm.starts_with("pointwise-gemm x3"), "{algorithm}");
    check("grouped 1x1", yaml, 2);
}
