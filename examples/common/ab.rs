//! What the examples comparing compiled models share: the graph with its weights, a model
//! compiled under one value of an environment variable, the fixed input they all run, and
//! the bit-for-bit comparison of two runs' outputs.
#![allow(dead_code)] // Each example uses its part.

/// The graph at `path` with its weights bound.
pub fn graph(path: &str) -> cnnc::Graph {
    let mut g = cnnc::format::load(path).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    g
}

/// `g` compiled for `threads` threads.
pub fn compile(g: &cnnc::Graph, threads: usize) -> cnnc::Model {
    let opts = cnnc::Options {
        threads,
        ..cnnc::Options::default()
    };
    cnnc::compile(g, &opts).unwrap()
}

/// Sets environment variable `var` to `value` (`-`: unsets it) for what is compiled next: the
/// library reads a knob where it makes the decision.
pub fn set_knob(var: &str, value: &str) {
    match value {
        "-" => std::env::remove_var(var),
        v => std::env::set_var(var, v),
    }
}

/// `g` compiled with environment variable `var` set to `value` (`-`: unset), which it keeps
/// afterwards.
pub fn compile_as(g: &cnnc::Graph, var: &str, value: &str, threads: usize) -> cnnc::Model {
    set_knob(var, value);
    compile(g, threads)
}

/// One item of `g`'s input: a fixed ramp, the same in every run and example.
pub fn input(g: &cnnc::Graph) -> cnnc::Tensor {
    let s = g.input_shape();
    let data = (0..s.len())
        .map(|i| ((i % 17) as f32 - 8.0) * 0.1)
        .collect();
    cnnc::Tensor::new(vec![1, s.c, s.h, s.w], data).unwrap()
}

/// Whether two runs' outputs hold the same bits.
pub fn same_bits(a: &[cnnc::Tensor], b: &[cnnc::Tensor]) -> bool {
    a.iter()
        .zip(b)
        .all(|(p, q)| (p.data().iter().zip(q.data())).all(|(u, v)| u.to_bits() == v.to_bits()))
}
