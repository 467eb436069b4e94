//! Numeric equivalence of the pipeline: the interpreter's output at -O0 (the graph as
//! written) and at -O2 agree within 1e-5 relative L2 (and the JIT's at -O2 within
//! 1e-4), on every example graph (seeded weights with non-trivial batchnorm statistics)
//! and on every golden fixture (its weights, a seeded input; a fixture that does not load
//! fails the test).
mod common;
use cnnc::passes::{optimize, Pipeline};
use cnnc::runtime::compile;
use cnnc::tensor::rel_l2;
use cnnc::weights::standard_normal;
use cnnc::{Graph, OptLevel, Options, Tensor};
use std::path::Path;

fn o2() -> Options {
    Options {
        verify: true,
        ..Options::default()
    }
}

/// Seeded weights, with batchnorm statistics away from the identity (the seed gives
/// gamma = var = 1, beta = mean = 0, which would hide a wrong fold).
fn bind_seeded(g: &mut Graph) {
    cnnc::weights::init_from_seed(g);
    let ids: Vec<_> = g.dag.node_indices().collect();
    for id in ids {
        let node = g.node_mut(id);
        if node.op.kind() != "batchnorm" {
            continue;
        }
        let c = node.shape.c;
        let r = standard_normal(7, &node.name, 4 * c);
        let col = |i: usize, f: &dyn Fn(f32) -> f32| {
            Tensor::new(
                vec![c],
                r[i * c..(i + 1) * c].iter().map(|&x| f(x)).collect(),
            )
            .unwrap()
        };
        let p = &mut node.params;
        p.insert("weight".into(), col(0, &|x| 1.0 + 0.3 * x));
        p.insert("bias".into(), col(1, &|x| 0.2 * x));
        p.insert("running_mean".into(), col(2, &|x| 0.2 * x));
        p.insert("running_var".into(), col(3, &|x| 0.5 + 0.5 * x.abs()));
    }
}

fn compare(name: &str, g0: Graph, x: Tensor) {
    let mut g2 = g0.clone();
    optimize(&mut g2, &o2()).unwrap();
    assert!(g2.node_count() <= g0.node_count());
    let y0 = cnnc::interp::run(&g0, x.clone()).unwrap();
    let y2 = cnnc::interp::run(&g2, x.clone()).unwrap();
    assert_eq!(y0.len(), y2.len());
    for (a, b) in y0.iter().zip(&y2) {
        assert_eq!(a.shape(), b.shape(), "{name}");
        let d = rel_l2(b.data(), a.data());
        assert!(d < 1e-5, "{name}: -O0 and -O2 differ by {d:e} relative L2");
        eprintln!(
            "{name}: {} -> {} nodes, rel L2 {d:e}",
            g0.node_count(),
            g2.node_count()
        );
    }
    // The JIT runs the optimised graph (fused epilogues, gemm nodes) and agrees with the
    // interpreter on the graph as written, within the JIT's tolerance.
    let batch = x.shape()[0];
    let model = compile(
        &g2,
        &cnnc::Options {
            batch,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let yj = model.run(&x).unwrap();
    assert_eq!(yj.len(), y0.len(), "{name}: outputs of the JIT");
    for (j, a) in yj.iter().zip(&y0) {
        assert_eq!(j.shape(), a.shape(), "{name}");
        let d = rel_l2(j.data(), a.data());
        assert!(
            d < 1e-4,
            "{name}: the JIT at -O2 and the interpreter at -O0 differ by {d:e}"
        );
    }
}

/// The example graphs of ImageNet networks (written by `scripts/make_zoo_graphs.py`).
const ZOO: &[&str] = &[
    "alexnet",
    "vgg16",
    "resnet50",
    "mobilenet_v2",
    "squeezenet1_1",
    "googlenet",
];

#[test]
fn example_graphs_agree_at_o0_and_o2() {
    let paths: Vec<_> = common::example_graphs()
        .into_iter()
        // The ImageNet classics take minutes in the interpreter; tests/zoo_graphs.rs
        // and tests/light_models.rs check them.
        .filter(|p| !ZOO.iter().any(|z| p.file_stem().is_some_and(|s| s == *z)))
        .collect();
    assert!(paths.len() >= 7);
    for path in paths {
        let mut g = cnnc::format::load(&path).unwrap();
        bind_seeded(&mut g);
        let s = g.input_shape();
        let x = Tensor::new(
            vec![2, s.c, s.h, s.w],
            standard_normal(11, "input", 2 * s.len()),
        )
        .unwrap();
        compare(&path.display().to_string(), g, x);
    }
}

#[test]
fn golden_fixtures_agree_at_o0_and_o2() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/golden/manifest.json").unwrap())
            .unwrap();
    let entries = manifest.as_object().unwrap();
    assert!(!entries.is_empty());
    for (name, e) in entries {
        let dir = Path::new(e["dir"].as_str().unwrap());
        let loaded = cnnc::format::load(e["graph"].as_str().unwrap()).and_then(|mut g| {
            cnnc::weights::load_file(&mut g, &dir.join("weights.safetensors")).map(|_| g)
        });
        let g = loaded.unwrap_or_else(|err| panic!("{name}: {err}"));
        // A seeded input of the fixture's batch (the weights are what matter here).
        let s = g.input_shape();
        let n = e["batch"].as_u64().unwrap_or(1) as usize;
        let x = Tensor::new(
            vec![n, s.c, s.h, s.w],
            standard_normal(5, name, n * s.len()),
        )
        .unwrap();
        compare(name, g, x);
    }
    assert!(
        entries.len() >= 12,
        "only {} golden fixtures",
        entries.len()
    );
}

#[test]
fn o1_folds_but_does_not_fuse() {
    let mut g = cnnc::format::load("graphs/resnet_basic_block.yaml").unwrap();
    bind_seeded(&mut g);
    let mut g1 = g.clone();
    Pipeline::new(&Options {
        opt_level: OptLevel::O1,
        verify: true,
        ..Options::default()
    })
    .unwrap()
    .run(&mut g1)
    .unwrap();
    let kinds: Vec<&str> = g1.dag.node_weights().map(|n| n.op.kind()).collect();
    assert!(!kinds.contains(&"batchnorm"));
    assert!(kinds.contains(&"relu") && kinds.contains(&"add"));
    let s = g.input_shape();
    let x = Tensor::new(vec![1, s.c, s.h, s.w], standard_normal(3, "x", s.len())).unwrap();
    let y0 = cnnc::interp::run(&g, x.clone()).unwrap();
    let y1 = cnnc::interp::run(&g1, x).unwrap();
    assert!(rel_l2(y1[0].data(), y0[0].data()) < 1e-5);
}
