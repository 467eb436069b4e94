//! Helpers shared by the integration tests: golden fixtures and closeness checks.
#![allow(dead_code)]
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

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
