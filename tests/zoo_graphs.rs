//! The classic ConvNets as example graphs (`graphs/*.yaml`, written by
//! `scripts/make_zoo_graphs.py`): their published parameter counts, their output
//! shapes, torchvision's state_dict names, and the small ones run on both engines.
mod common;
use cnnc::ir::stats::layer_stats;
use cnnc::Graph;
use common::*;

fn load(stem: &str) -> Graph {
    cnnc::format::load(repo().join(format!("graphs/{stem}.yaml"))).unwrap()
}

fn params(g: &Graph) -> u64 {
    g.dag.node_indices().map(|i| layer_stats(g, i).params).sum()
}

#[test]
fn example_graphs_have_their_published_parameter_counts() {
    for (stem, want) in [
        ("alexnet", 61_100_840),      // torchvision
        ("vgg16", 138_357_544),       // torchvision
        ("resnet50", 25_557_032),     // torchvision
        ("mobilenet_v2", 3_504_872),  // torchvision
        ("squeezenet1_1", 1_235_496), // torchvision
        // Caffe's bvlc_googlenet without the auxiliary classifiers: the conv and fc
        // tensors of the model zoo's light_inception_v1.onnx add up to the same.
        ("googlenet", 6_998_552),
    ] {
        let g = load(stem);
        assert_eq!(params(&g), want, "{stem}");
        assert_eq!(g.output_dims(1), [vec![1, 1000]], "{stem}");
    }
}

#[test]
fn layer_names_follow_torchvisions_state_dict() {
    for (stem, names) in [
        (
            "alexnet",
            &["features.0", "features.10", "classifier.6"][..],
        ),
        ("vgg16", &["features.28", "classifier.3"][..]),
        (
            "resnet50",
            &[
                "layer4.2.conv3",
                "layer3.0.downsample.0",
                "layer3.0.downsample.1",
                "fc",
            ][..],
        ),
        (
            "mobilenet_v2",
            &[
                "features.1.conv.0.0",
                "features.2.conv.1.0",
                "features.17.conv.3",
                "features.18.0",
                "classifier.1",
            ][..],
        ),
        (
            "squeezenet1_1",
            &[
                "features.12.expand3x3",
                "features.3.squeeze",
                "classifier.1",
            ][..],
        ),
    ] {
        let g = load(stem);
        for name in names {
            assert!(g.find(name).is_some(), "{stem}: {name}");
        }
    }
    // MobileNet v2's depthwise convs: groups = channels, multiplier 1.
    let g = load("mobilenet_v2");
    let dw = g.node(g.find("features.2.conv.1.0").unwrap());
    assert_eq!(dw.op.to_string(), "conv 3x3/2 pad 1 k=96 groups=96 nobias");
}

#[test]
fn googlenet_has_lrn_and_nine_inception_modules() {
    let g = load("googlenet");
    let count = |kind: &str| {
        g.dag
            .node_indices()
            .filter(|&i| g.node(i).op.kind() == kind)
            .count()
    };
    assert_eq!(count("lrn"), 2);
    assert_eq!(count("concat"), 9);
    for m in ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"] {
        assert!(g.find(&format!("inception_{m}.output")).is_some(), "{m}");
    }
    // Caffe's rounded-up pools: 112 -> 56 -> 28 -> 14 -> 7.
    let s = g.node(g.find("pool4.3x3_s2").unwrap()).shape;
    assert_eq!((s.c, s.h, s.w), (832, 7, 7));
}

/// SqueezeNet 1.1 runs on the JIT and matches the interpreter (seeded weights, two
/// images).
#[test]
fn squeezenet1_1_runs_on_both_engines() {
    let mut g = load("squeezenet1_1");
    cnnc::weights::bind(&mut g, None).unwrap();
    let x = cnnc::Tensor::new(
        vec![2, 3, 224, 224],
        (0..2 * 3 * 224 * 224)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.) - 1.)
            .collect(),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap().remove(0);
    let opts = cnnc::Options {
        batch: 2,
        ..cnnc::Options::default()
    };
    let got = cnnc::compile(&g, &opts).unwrap().run(&x).unwrap().remove(0);
    assert_close("squeezenet1_1", &got, &want, 1e-4);
}
