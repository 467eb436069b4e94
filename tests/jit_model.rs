//! Whole networks compiled by the JIT agree with the reference interpreter.
mod common;
use cnnc::runtime::{compile, CompileOptions};
use cnnc::tensor::rel_l2;
use cnnc::Tensor;
use common::*;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// JIT vs interpreter: 1e-4 relative L2 and 1e-3 max abs, per the JIT issue.
fn assert_agrees(what: &str, jit: &[Tensor], interp: &[Tensor]) {
    assert_eq!(jit.len(), interp.len());
    for (j, i) in jit.iter().zip(interp) {
        assert_eq!(j.shape(), i.shape(), "{what}");
        assert!(
            j.data().iter().all(|v| v.is_finite()),
            "{what}: non-finite output"
        );
        let (rel, abs) = (rel_l2(j.data(), i.data()), max_abs(j.data(), i.data()));
        assert!(
            rel <= 1e-4 && abs <= 1e-3,
            "{what}: rel L2 {rel:e}, max abs {abs:e}"
        );
    }
}

#[test]
fn golden_graphs_match_the_interpreter_at_several_batch_sizes() {
    for case in golden_cases() {
        let want = cnnc::interp::run(&case.graph, case.input.clone()).unwrap();
        for batch in [1, 3] {
            let model = compile(&case.graph, &CompileOptions { batch })
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let got = model
                .run(&case.input)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_agrees(
                &format!("{} (compiled for batch {batch})", case.name),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn example_graphs_with_seeded_weights_match_the_interpreter() {
    for name in [
        "cs231n_example",
        "lenet5",
        "vgg_cifar",
        "resnet_basic_block",
        "inception3a",
        "digits",
    ] {
        let mut g = cnnc::format::load(repo().join(format!("graphs/{name}.yaml"))).unwrap();
        cnnc::weights::bind(&mut g, None).unwrap();
        let s = g.input_shape();
        let x = Tensor::new(
            vec![3, s.c, s.h, s.w],
            cnnc::weights::standard_normal(5, name, 3 * s.len()),
        )
        .unwrap();
        let want = cnnc::interp::run(&g, x.clone()).unwrap();
        let model = compile(&g, &CompileOptions { batch: 3 }).unwrap();
        assert_agrees(name, &model.run(&x).unwrap(), &want);
    }
}
