//! The process-wide cache of compiled functions (docs/jit.md, "Compile time of a network"):
//! a model compiled again takes its functions from it and computes the same bits, at one
//! and at two threads; `CNNC_CODE_CACHE=0` bypasses it; `release_compile_caches` empties
//! it. The knob is an environment variable, so this file holds one test (its own process:
//! no other test sees it set).
mod common;
use cnnc::{compile, Options, Tensor};

fn bits(outs: &[Tensor]) -> Vec<u32> {
    outs.iter()
        .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
        .collect()
}

#[test]
fn a_model_compiled_again_takes_its_code_from_the_cache() {
    // Inception 3a: 1x1, 3x3 (Winograd), 5x5 convs, a max pool and a concat.
    let mut g = cnnc::format::load(common::repo().join("graphs/inception3a.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let (c, h, w) = (s.c, s.h, s.w);
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let x = Tensor::new(vec![1, c, h, w], x).unwrap();
    let run = |threads: usize| {
        let opts = Options {
            threads,
            ..Options::default()
        };
        let m = compile(&g, &opts).unwrap();
        let out = m.run(&x).unwrap();
        (bits(&out), m.code_cache_counts())
    };
    // Knobs are read where a compile decides: this file's one test is their only reader.
    std::env::set_var("CNNC_CODE_CACHE", "0");
    let (want, counts) = run(1);
    let n = counts.1;
    assert!(n > 5, "{counts:?}");
    assert_eq!(
        run(1),
        (want.clone(), (0, n)),
        "the knob bypasses the cache"
    );
    std::env::remove_var("CNNC_CODE_CACHE");
    // The first compile with the cache fills it; every later one, at either thread count,
    // finds every function and computes the same bits.
    assert_eq!(run(1), (want.clone(), (0, n)));
    for threads in [1, 2, 1] {
        assert_eq!(run(threads), (want.clone(), (n, 0)), "{threads} threads");
    }
    cnnc::memory::release_compile_caches();
    assert_eq!(run(2), (want.clone(), (0, n)), "emptied");
    assert_eq!(run(2), (want, (n, 0)));
}
