//! Random-graph differential testing: proptest builds random valid graphs (chains and
//! DAGs of conv, pools, fc, add, concat, batchnorm, relu, softmax, pad, ...) with random
//! shapes and weights, runs the reference interpreter and the JIT (at -O0 and -O2, with
//! 1 or 2 threads, batch 1-3, on NaN-poisoned outputs), and compares.
//!
//! `DIFFERENTIAL_CASES=5000 cargo test --release --test differential` runs a long
//! campaign (default: 400 cases, a few seconds). A failure is shrunk and printed as the YAML graph.
use cnnc::{Options, Tensor};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use std::fmt;

/// One layer as raw random choices; [`build`] turns them into a valid layer for the
/// shapes at hand, so every recipe is a valid graph and shrinking keeps it valid.
#[derive(Clone, Debug)]
struct Step {
    op: u8,
    /// Which earlier layers feed it: 0 is the previous one.
    picks: [u8; 3],
    params: [u8; 4],
}

#[derive(Clone)]
struct Recipe {
    input: [usize; 3],
    steps: Vec<Step>,
    /// An extra output from the middle of the graph.
    extra_output: Option<u8>,
    batch: usize,
    threads: usize,
    seed: u64,
}

#[derive(Clone, Copy, PartialEq)]
struct Shape {
    c: usize,
    h: usize,
    w: usize,
    flat: bool,
}

/// The YAML graph of a recipe (each op adapted to its input's shape).
fn build(r: &Recipe) -> String {
    let [c, h, w] = r.input;
    let mut shapes = vec![(
        "input".to_string(),
        Shape {
            c,
            h,
            w,
            flat: false,
        },
    )];
    let mut yaml = format!(
        "name: random\nseed: {}\ninput: [{c}, {h}, {w}]\nlayers:\n",
        r.seed
    );
    for (i, step) in r.steps.iter().enumerate() {
        let name = format!("l{i}");
        let pick = |k: usize| shapes.len() - 1 - (step.picks[k] as usize % shapes.len());
        let (src, x) = shapes[pick(0)].clone();
        let p = step.params.map(|v| v as usize);
        let (line, out) = layer(step.op, &src, x, &p, &shapes, pick);
        yaml += &format!("  - {{name: {name}, {line}}}\n");
        shapes.push((name, out));
    }
    let last = format!("l{}", r.steps.len() - 1);
    match r.extra_output {
        Some(k) if r.steps.len() > 1 => {
            let mid = format!("l{}", k as usize % (r.steps.len() - 1));
            yaml += &format!("outputs: [{last}, {mid}]\n");
        }
        _ => yaml += &format!("outputs: [{last}]\n"),
    }
    yaml
}

/// One layer: its YAML (`op: {...}, inputs: [...]`) and output shape. Ops that do not
/// fit their input (a window on a flat vector, an add without a partner of the same
/// shape) fall back to relu.
fn layer(
    op: u8,
    src: &str,
    x: Shape,
    p: &[usize; 4],
    shapes: &[(String, Shape)],
    pick: impl Fn(usize) -> usize,
) -> (String, Shape) {
    let inputs = |names: &[&str]| format!("inputs: [{}]", names.join(", "));
    let relu = (format!("relu: {{}}, {}", inputs(&[src])), x);
    let spatial = !x.flat;
    match op % 12 {
        0 | 1 if spatial => {
            let size = 1 + p[0] % x.h.min(x.w).min(7);
            let pad = p[1] % size;
            let stride = 1 + p[2] % 3;
            let filters = 1 + p[3] % 33;
            let out = Shape {
                c: filters,
                h: (x.h + 2 * pad - size) / stride + 1,
                w: (x.w + 2 * pad - size) / stride + 1,
                flat: false,
            };
            let bias = if p[3].is_multiple_of(4) {
                ", bias: false"
            } else {
                ""
            };
            let line = format!(
                "conv: {{filters: {filters}, size: {size}, stride: {stride}, pad: {pad}{bias}}}, {}",
                inputs(&[src])
            );
            (line, out)
        }
        2 | 3 if spatial => {
            let size = 1 + p[0] % x.h.min(x.w).min(3);
            let pad = p[1] % (size / 2 + 1);
            let stride = 1 + p[2] % 3;
            let kind = if op % 12 == 2 { "maxpool" } else { "avgpool" };
            let out = Shape {
                h: (x.h + 2 * pad - size) / stride + 1,
                w: (x.w + 2 * pad - size) / stride + 1,
                ..x
            };
            let line = format!(
                "{kind}: {{size: {size}, stride: {stride}, pad: {pad}}}, {}",
                inputs(&[src])
            );
            (line, out)
        }
        4 => {
            let units = 1 + p[0] % 40;
            let line = format!("fc: {{units: {units}}}, {}", inputs(&[src]));
            (
                line,
                Shape {
                    c: units,
                    h: 1,
                    w: 1,
                    flat: true,
                },
            )
        }
        5 => {
            // Partners: earlier layers of exactly this shape (possibly the same one).
            let mut names = vec![src.to_string()];
            for k in 1..3 {
                let (n, s) = &shapes[pick(k)];
                if *s == x && p[k].is_multiple_of(2) {
                    names.push(n.clone());
                }
            }
            if names.len() < 2 {
                return relu;
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            (format!("add: {{}}, {}", inputs(&refs)), x)
        }
        6 => {
            let mut names = vec![src.to_string()];
            let mut c = x.c;
            for k in 1..3 {
                let (n, s) = &shapes[pick(k)];
                if (s.h, s.w, s.flat) == (x.h, x.w, x.flat) && p[k].is_multiple_of(2) {
                    names.push(n.clone());
                    c += s.c;
                }
            }
            if names.len() < 2 {
                return relu;
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            (format!("concat: {{}}, {}", inputs(&refs)), Shape { c, ..x })
        }
        7 if spatial => (format!("batchnorm: {{}}, {}", inputs(&[src])), x),
        8 => (format!("softmax: {{}}, {}", inputs(&[src])), x),
        9 if spatial => (
            format!("global_avgpool: {{}}, {}", inputs(&[src])),
            Shape { h: 1, w: 1, ..x },
        ),
        10 if spatial => {
            let (t, l, b, r) = (p[0] % 3, p[1] % 3, p[2] % 3, p[3] % 3);
            let value = ["0", "-1.5", "-.inf", "2"][p[3] / 3 % 4];
            let line = format!(
                "pad: {{top: {t}, left: {l}, bottom: {b}, right: {r}, value: {value}}}, {}",
                inputs(&[src])
            );
            (
                line,
                Shape {
                    h: x.h + t + b,
                    w: x.w + l + r,
                    ..x
                },
            )
        }
        11 => (
            format!("flatten: {{}}, {}", inputs(&[src])),
            Shape {
                c: x.c * x.h * x.w,
                h: 1,
                w: 1,
                flat: true,
            },
        ),
        _ => relu,
    }
}

impl fmt::Debug for Recipe {
    /// The graph as YAML (what a failure report should show) and the run's settings.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "batch {}, threads {}\n{}",
            self.batch,
            self.threads,
            build(self)
        )
    }
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let step = (any::<u8>(), any::<[u8; 3]>(), any::<[u8; 4]>()).prop_map(|(op, picks, params)| {
        // Mostly chains: the previous layer is the first input half of the time.
        let picks = [
            if picks[0] % 2 == 0 { 0 } else { picks[0] / 2 },
            picks[1],
            picks[2],
        ];
        Step { op, picks, params }
    });
    (
        (1usize..20, 1usize..20, 1usize..20),
        prop::collection::vec(step, 1..9),
        any::<Option<u8>>(),
        1usize..4,
        1usize..3,
        any::<u64>(),
    )
        .prop_map(
            |((c, h, w), steps, extra_output, batch, threads, seed)| Recipe {
                input: [c, h, w],
                steps,
                extra_output,
                batch,
                threads,
                seed: seed % 1000,
            },
        )
}

/// Binds seeded weights, then gives batchnorm non-trivial statistics (the seed's are
/// the identity) so that folding it is tested.
fn bind(g: &mut cnnc::Graph, seed: u64) {
    cnnc::weights::bind(g, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<_> = g.dag.node_indices().collect();
    for id in ids {
        let node = g.node_mut(id);
        if node.op.kind() != "batchnorm" {
            continue;
        }
        for (suffix, t) in node.params.iter_mut() {
            for v in t.data_mut() {
                *v = match suffix.as_str() {
                    "running_var" => rng.random_range(0.2..2.0),
                    _ => rng.random_range(-1.0..1.0),
                };
            }
        }
    }
}

fn check(r: &Recipe) -> Result<(), TestCaseError> {
    let yaml = build(r);
    let mut g = cnnc::format::parse_str(&yaml, None)
        .map_err(|e| TestCaseError::fail(format!("the random graph does not load: {e}")))?;
    bind(&mut g, r.seed);
    let s = g.input_shape();
    let data = cnnc::weights::standard_normal(r.seed, "input", r.batch * s.len());
    let x = Tensor::new(vec![r.batch, s.c, s.h, s.w], data).unwrap();
    let want = cnnc::interp::run(&g, x.clone())
        .map_err(|e| TestCaseError::fail(format!("interpreter: {e}")))?;
    for level in [cnnc::OptLevel::O0, cnnc::OptLevel::O2] {
        let opts = Options {
            opt_level: level,
            threads: r.threads,
            batch: r.batch,
            verify: true,
            ..Options::default()
        };
        let model = cnnc::compile(&g, &opts)
            .map_err(|e| TestCaseError::fail(format!("JIT {level}: {e}")))?;
        let mut got: Vec<Tensor> = want
            .iter()
            .map(|t| Tensor::filled(t.shape().to_vec(), f32::NAN))
            .collect();
        model
            .run_into(&x, &mut got)
            .map_err(|e| TestCaseError::fail(format!("JIT {level} run: {e}")))?;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            compare(a, b)
                .map_err(|m| TestCaseError::fail(format!("JIT {level}, output {i}: {m}")))?;
        }
    }
    Ok(())
}

/// Elementwise agreement: the same non-finite values in the same places, and the
/// finite ones within a tolerance scaled by the output's magnitude.
fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let scale = want
        .data()
        .iter()
        .filter(|v| v.is_finite())
        .fold(1f32, |m, v| m.max(v.abs()));
    for (i, (&a, &b)) in got.data().iter().zip(want.data()).enumerate() {
        let same = if b.is_finite() {
            (a - b).abs() <= 1e-4 * scale
        } else {
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
        };
        if !same {
            return Err(format!(
                "element {i}: JIT {a}, interpreter {b} (scale {scale})"
            ));
        }
    }
    Ok(())
}

#[test]
fn random_graphs_agree_between_interpreter_and_jit() {
    let cases = std::env::var("DIFFERENTIAL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&recipe(), |r| check(&r)) {
        panic!("{e}");
    }
}

#[test]
fn the_builder_makes_the_ops_it_claims() {
    // Every op kind appears among a few hundred random recipes: the builder's fallbacks
    // do not swallow an op.
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let r = recipe().new_tree(&mut runner).unwrap().current();
        let g = cnnc::format::parse_str(&build(&r), None).unwrap();
        for id in g.dag.node_indices() {
            seen.insert(g.node(id).op.kind().to_string());
        }
    }
    for op in [
        "conv",
        "maxpool",
        "avgpool",
        "fc",
        "add",
        "concat",
        "batchnorm",
        "softmax",
        "global_avgpool",
        "pad",
        "flatten",
        "relu",
    ] {
        assert!(seen.contains(op), "no {op} in 300 random graphs: {seen:?}");
    }
}
