//! cnnc's ONNX export of the model zoo's ops, checked against onnxruntime without Python:
//! `scripts/make_zoo_export_fixtures.py` exported each graph of tests/golden/zoo_export/
//! (grouped, depthwise with multiplier 2 and dilated convs, LRN 3 and 5, clip, ReLU6,
//! channel shuffle, scale_shift, batchnorm, pools with asymmetric pads and averages that
//! exclude the padding), gave its per-channel parameters random values and stored
//! onnxruntime's output. Here each model imports, matches onnxruntime on both engines,
//! and exports again to the same nodes, which compute the same.
mod common;
use cnnc::onnx::proto::ModelProto;
use cnnc::{Graph, Tensor};
use common::*;
use prost::Message;

const STEMS: &[&str] = &["dilated", "grouped_depthwise_shuffle", "lrn_clip_pools"];

fn read(stem: &str, file: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/golden/zoo_export").join(stem).join(file)).unwrap()
}

fn npy(stem: &str, file: &str) -> Tensor {
    cnnc::io::npy::parse(&read(stem, file)).unwrap()
}

fn op_types(bytes: &[u8]) -> Vec<String> {
    let m = ModelProto::decode(bytes).unwrap();
    m.graph
        .unwrap()
        .node
        .into_iter()
        .map(|n| n.op_type.unwrap_or_default())
        .collect()
}

fn check_engines(what: &str, g: &Graph, x: &Tensor, want: &Tensor) {
    let got = cnnc::interp::run(g, x.clone()).unwrap().remove(0);
    assert_close(&format!("{what} (interpreter)"), &got, want, 1e-5);
    let model = cnnc::compile(g, &cnnc::Options::default()).unwrap();
    let poison = Tensor::filled(x.shape().to_vec(), f32::NAN);
    model.run(&poison).unwrap();
    let got = model.run(x).unwrap().remove(0);
    assert_close(&format!("{what} (jit)"), &got, want, 1e-5);
}

#[test]
fn exports_of_the_zoo_ops_match_onnxruntime() {
    for stem in STEMS {
        let model = read(stem, "model.onnx");
        let (x, want) = (npy(stem, "input.npy"), npy(stem, "output.npy"));
        let g = cnnc::onnx::import(&model).unwrap_or_else(|e| panic!("{stem}: {e}"));
        check_engines(stem, &g, &x, &want);
        // The graph as written in YAML is what was exported: same layers, same order.
        let yaml = cnnc::format::load(repo().join(format!("tests/golden/zoo_export/{stem}.yaml")))
            .unwrap();
        let names = |g: &Graph| -> Vec<String> {
            g.topo_order()
                .unwrap()
                .iter()
                .map(|&i| format!("{} {}", g.node(i).name, g.node(i).op))
                .collect()
        };
        assert_eq!(names(&g), names(&yaml), "{stem}");
        // Exporting the import gives the nodes onnxruntime ran, and the same results.
        let again = cnnc::onnx::export(&g).unwrap();
        assert_eq!(op_types(&again), op_types(&model), "{stem}");
        let back = cnnc::onnx::import(&again).unwrap();
        check_engines(&format!("{stem} re-exported"), &back, &x, &want);
    }
}

/// The fixtures are not trivial: the per-channel parameters are random (a seeded bias
/// is zero, a seeded scale_shift or batchnorm the identity) and the outputs vary.
#[test]
fn the_fixtures_have_random_parameters_and_varied_outputs() {
    for stem in STEMS {
        let g = cnnc::onnx::import(&read(stem, "model.onnx")).unwrap();
        for (name, t) in cnnc::weights::named_params(&g) {
            if name.ends_with(".bias") || name.ends_with(".running_mean") {
                assert!(t.data().iter().any(|&v| v != 0.0), "{stem}: {name}");
            }
            if name.ends_with(".weight") {
                assert!(t.data().iter().any(|&v| v != 1.0), "{stem}: {name}");
            }
        }
        let y = npy(stem, "output.npy");
        let first = y.data()[0];
        assert!(y.data().iter().any(|&v| (v - first).abs() > 1e-3), "{stem}");
    }
}
