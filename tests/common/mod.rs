//! Helpers shared by the integration tests: golden fixtures, graphs and parameters
//! written by hand, closeness checks, the example graphs, and a pass that breaks graphs.
#![allow(dead_code)]
#[cfg(unix)]
pub mod guarded;
use cnnc::passes::{Changed, Pass};
use cnnc::tensor::rel_l2;
use cnnc::{Graph, Tensor};
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One golden case written by `tests/golden/make_golden.py`: a graph, its weights, an
/// input and the float64 reference outputs.
pub struct Golden {
    pub name: String,
    pub graph: Graph,
    pub input: Tensor,
    pub outputs: Vec<Tensor>,
}

pub fn golden_cases() -> Vec<Golden> {
    let root = repo();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/golden/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut cases = Vec::new();
    for (name, case) in manifest.as_object().unwrap() {
        let dir = root.join(case["dir"].as_str().unwrap());
        let mut graph = cnnc::format::load(root.join(case["graph"].as_str().unwrap())).unwrap();
        let warnings = cnnc::weights::load_file(&mut graph, &dir.join("weights.safetensors"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            warnings.is_empty() || name == "outputs_middle",
            "{name}: {warnings:?}"
        );
        let outputs = case["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| cnnc::io::npy::read(&dir.join(o.as_str().unwrap())).unwrap())
            .collect();
        cases.push(Golden {
            name: name.clone(),
            graph,
            input: cnnc::io::npy::read(&dir.join("input.npy")).unwrap(),
            outputs,
        });
    }
    assert!(
        cases.len() >= 20,
        "expected the golden fixtures, found {}",
        cases.len()
    );
    cases
}

/// Asserts `got` matches `want` in shape and within `tol` relative L2.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert!(
        got.data().iter().all(|v| v.is_finite()),
        "{what}: output has non-finite values"
    );
    let err = rel_l2(got.data(), want.data());
    assert!(err <= tol, "{what}: relative L2 error {err:e} > {tol:e}");
}

pub fn graph(yaml: &str) -> Graph {
    cnnc::format::parse_str(yaml, None).unwrap_or_else(|e| panic!("{e}"))
}

pub fn tensor(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec()).unwrap()
}

/// Binds parameter `<layer>.<suffix>` by hand.
pub fn set_param(
    g: &mut Graph,
    layer: &str,
    suffix: &str,
    shape: impl Into<Vec<usize>>,
    data: Vec<f32>,
) {
    let id = g.find(layer).unwrap_or_else(|| panic!("no layer {layer}"));
    g.node_mut(id)
        .params
        .insert(suffix.into(), Tensor::new(shape.into(), data).unwrap());
}

/// Asserts every value is within `tol` of the wanted one, relative to it when it is
/// larger than 1 (values worked by hand).
pub fn assert_values(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "[{i}]: {got:?} vs {want:?}"
        );
    }
}

/// The example graphs `graphs/*.yaml`, sorted (at least the seven classics).
pub fn example_graphs() -> Vec<PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(repo().join("graphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(paths.len() >= 7, "{paths:?}");
    paths.sort();
    paths
}

/// A pass that breaks shapes: it widens conv `c` without updating its recorded shape.
pub struct Breaker;
impl Pass for Breaker {
    fn run(&self, g: &mut Graph) -> cnnc::Result<Changed> {
        let c = g.find("c").unwrap();
        if let cnnc::ir::Op::Conv(conv) = &mut g.node_mut(c).op {
            conv.filters += 1;
        }
        Ok(Changed::Yes)
    }
}

/// A conv `c` (4 filters on 3x8x8) and a relu: what [`Breaker`] breaks.
pub const CONV_RELU: &str =
    "input: [3, 8, 8]\nlayers:\n  - {name: c, conv: {filters: 4, size: 3, pad: 1}}\n  - relu\n";

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The property tests' RNG seed: `PROPTEST_RNG_SEED` (proptest's own variable) when set,
/// else 0, so that the suite's verdict does not change from one run of the same code to
/// the next; random campaigns set it (docs/testing.md).
pub fn proptest_seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A property test's config: `cases` cases (or `PROPTEST_CASES`), from [`proptest_seed`].
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        // Long campaigns reject proportionally more drawn shapes (`prop_assume!`).
        max_global_rejects: 1024.max(4 * cases),
        rng_seed: RngSeed::Fixed(proptest_seed()),
        ..Config::default()
    }
}

/// `n` floats in [-1, 1) from an xorshift generator seeded with `seed` (kernel tests' inputs
/// and weights).
pub fn xorshift_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// `graphs/{name}.yaml` with its seeded weights, and a standard normal input of `batch`
/// images from `seed`.
pub fn seeded_example(name: &str, batch: usize, seed: u64) -> (Graph, Tensor) {
    let mut g = cnnc::format::load(repo().join(format!("graphs/{name}.yaml"))).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        cnnc::weights::standard_normal(seed, name, batch * s.len()),
    )
    .unwrap();
    (g, x)
}

/// `got` holds exactly the floats of `want`, bit for bit.
pub fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{what}: differs");
}
