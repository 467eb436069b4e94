//! The process-wide cache of compiled functions (docs/jit.md, "Compile time of a network"):
//! a model compiled again takes its functions from it and computes the same bits, at one
//! and at two threads; another graph with layers of the same specs takes those; with
//! `CNNC_CODE_CACHE_CHECK=1` every hit is also compiled afresh and compared;
//! `CNNC_CODE_CACHE=0` bypasses it; `release_compile_caches` empties it. The knobs are
//! environment variables, so this file holds one test (its own process: no other test sees
//! them set).
mod common;
use cnnc::{compile, Graph, Isa, Options, Tensor};

fn bits(outs: &[Tensor]) -> Vec<u32> {
    outs.iter()
        .flat_map(|t| t.data().iter().map(|v| v.to_bits()))
        .collect()
}

fn graph(file: &str) -> (Graph, Tensor) {
    let mut g = cnnc::format::load(common::repo().join("graphs").join(file)).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let (c, h, w) = (s.c, s.h, s.w);
    let x: Vec<f32> = (0..c * h * w)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    (g, Tensor::new(vec![1, c, h, w], x).unwrap())
}

/// `g` compiled at `threads` threads, run on `x`: the output's bits and the counts (hits,
/// compiled).
fn run(g: &Graph, x: &Tensor, threads: usize) -> (Vec<u32>, (usize, usize)) {
    let opts = Options {
        threads,
        ..Options::default()
    };
    let m = compile(g, &opts).unwrap();
    let out = m.run(x).unwrap();
    let c = m.code_cache_counts();
    (bits(&out), (c.hits, c.compiled))
}

#[test]
fn a_model_compiled_again_takes_its_code_from_the_cache() {
    // Knobs are read where a compile decides: this file's one test is their only reader.
    // Every hit below is compared with a fresh compile (an error, not other bits, if not).
    std::env::set_var("CNNC_CODE_CACHE_CHECK", "1");
    // Inception 3a: 1x1, 3x3 (Winograd), 5x5 convs, a max pool and a concat.
    let (g, x) = graph("inception3a.yaml");
    let run3a = |threads| run(&g, &x, threads);
    std::env::set_var("CNNC_CODE_CACHE", "0");
    let (want, counts) = run3a(1);
    let n = counts.1;
    assert!(n > 5, "{counts:?}");
    assert_eq!(
        run3a(1),
        (want.clone(), (0, n)),
        "the knob bypasses the cache"
    );
    std::env::remove_var("CNNC_CODE_CACHE");
    // The first compile with the cache fills it; every later one, at either thread count,
    // finds the same functions and computes the same bits: all of them, but at `sse`
    // (`CNNC_ISA=sse`, or a host without AVX2), where the 5x5 conv is a direct one that
    // bakes a table's address in and is compiled every time.
    assert_eq!(run3a(1), (want.clone(), (0, n)));
    let warm = run3a(2);
    assert_eq!(warm.0, want, "2 threads");
    let (hits, compiled) = warm.1;
    assert_eq!(hits + compiled, n);
    if Options::default().isa == Isa::Sse {
        assert!(hits > 5 && compiled > 0, "{:?}", warm.1);
    } else {
        assert_eq!(compiled, 0);
    }
    for threads in [1, 2, 1] {
        assert_eq!(run3a(threads), (want.clone(), warm.1), "{threads} threads");
    }
    cnnc::memory::release_compile_caches();
    assert_eq!(run3a(2), (want.clone(), (0, n)), "emptied");
    assert_eq!(run3a(2), (want, warm.1));

    // Another graph: ResNet-50 after its bottleneck block alone takes the block's
    // functions (other FuncIds in a larger module) and computes the bits of a compile
    // without the cache.
    let (block, bx) = graph("resnet_bottleneck_block.yaml");
    let (r50, rx) = graph("resnet50.yaml");
    std::env::set_var("CNNC_CODE_CACHE", "0");
    let (want, _) = run(&r50, &rx, 1);
    std::env::remove_var("CNNC_CODE_CACHE");
    cnnc::memory::release_compile_caches();
    run(&block, &bx, 1);
    let (got, (hits, compiled)) = run(&r50, &rx, 1);
    assert!(
        hits > 0 && compiled > hits,
        "{hits} hits, {compiled} compiled"
    );
    assert!(got == want, "ResNet-50 from the cache: other bits");
}
