//! Random-graph differential testing: proptest builds random valid graphs (chains and
//! DAGs of conv - plain, grouped, depthwise, dilated -, pools with end pads, fc, add,
//! concat, batchnorm, relu, clip, lrn, channel shuffle, scale_shift, softmax, pad, ...) with random
//! shapes and weights, runs the reference interpreter and the JIT (at -O0 and -O2, with
//! 1 or 2 threads, batch 1-3, on NaN-poisoned outputs), and compares.
//!
//! `PROPTEST_CASES=5000 PROPTEST_RNG_SEED=$RANDOM cargo test --release --test
//! differential` runs a long campaign (default: 400 cases from seed 0, a few seconds). A failure is shrunk and printed as the YAML graph.
use cnnc::{Options, Tensor};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use std::fmt;

mod common;

/// One layer as raw random choices; [`build`] turns them into a valid layer for the
/// shapes at hand, so every recipe is a valid graph and shrinking keeps it valid.
#[derive(Clone, Debug)]
struct Step {
    op: u8,
    /// Which earlier layers feed it: 0 is the previous one.
    picks: [u8; 3],
    params: [u8; 6],
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
    // Whether a layer so far may make infinities (a pad with -.inf).
    let mut infinite = false;
    let mut yaml = format!(
        "name: random\nseed: {}\ninput: [{c}, {h}, {w}]\nlayers:\n",
        r.seed
    );
    for (i, step) in r.steps.iter().enumerate() {
        let name = format!("l{i}");
        let pick = |k: usize| shapes.len() - 1 - (step.picks[k] as usize % shapes.len());
        let (src, x) = shapes[pick(0)].clone();
        let p = step.params.map(|v| v as usize);
        let (line, out) = layer(step.op, &src, x, &p, &shapes, pick, infinite);
        infinite |= line.contains("inf");
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
    p: &[usize; 6],
    shapes: &[(String, Shape)],
    pick: impl Fn(usize) -> usize,
    infinite: bool,
) -> (String, Shape) {
    let relu = (format!("relu: {{}}, {}", inputs(&[src])), x);
    let spatial = !x.flat;
    match op % 18 {
        0 | 1 if spatial => conv(src, x, p, false, false),
        // A dilated conv that is not depthwise runs on a dense filter with zeros between
        // the taps, and 0 * inf is NaN where the interpreter's sum is inf: a known
        // deviation (docs/testing.md), kept out of graphs that may hold infinities.
        12 if spatial => conv(src, x, p, true, !infinite),
        2 | 3 if spatial => pool(op % 18 == 2, src, x, p),
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
        13 if spatial => {
            // Windows wider than the channels too (clipped to the channels that exist).
            let size = 1 + p[0] % 7;
            let alpha = ["0.0001", "0.01", "0.5", "2"][p[1] % 4];
            let beta = ["0.75", "0.5", "1", "2.5"][p[2] % 4];
            let bias = ["1", "2", "0.5"][p[3] % 3];
            let line = format!(
                "lrn: {{size: {size}, alpha: {alpha}, beta: {beta}, bias: {bias}}}, {}",
                inputs(&[src])
            );
            (line, x)
        }
        14 => {
            let attrs = match p[0] % 5 {
                0 => "relu6: {}".to_string(),
                1 => format!("clip: {{min: {}}}", ["-0.5", "0", "0.25"][p[1] % 3]),
                2 => format!("clip: {{max: {}}}", ["-0.5", "0", "1"][p[1] % 3]),
                3 => "clip: {min: 0.25, max: 0.25}".to_string(),
                _ => format!(
                    "clip: {{min: {}, max: {}}}",
                    ["-1", "-0.1", "0"][p[1] % 3],
                    ["0.1", "0.5", "6"][p[2] % 3]
                ),
            };
            (format!("{attrs}, {}", inputs(&[src])), x)
        }
        15 if spatial => {
            let divs = divisors(x.c);
            let groups = divs[p[0] % divs.len()];
            let line = format!("channel_shuffle: {{groups: {groups}}}, {}", inputs(&[src]));
            (line, x)
        }
        16 => (format!("scale_shift: {{}}, {}", inputs(&[src])), x),
        _ => relu,
    }
}

fn inputs(names: &[&str]) -> String {
    format!("inputs: [{}]", names.join(", "))
}

/// `3`, or `[3, 2]` when the axes differ.
fn hw(h: usize, w: usize) -> String {
    if h == w {
        h.to_string()
    } else {
        format!("[{h}, {w}]")
    }
}

fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n.is_multiple_of(*d)).collect()
}

/// A conv: plain (square filter 1-7, 1-33 filters), or grouped (any divisor of the
/// channels as groups, depthwise a third of the time, with a channel multiplier of 1-3,
/// dilation 1-3, rectangular filters up to 5 taps whose dilated extent fits the input);
/// stride 1-3, any pad below the filter, with or without bias.
fn conv(src: &str, x: Shape, p: &[usize; 6], grouped: bool, zero_taps_ok: bool) -> (String, Shape) {
    let (groups, filters, dilation, most_taps) = if grouped {
        let divs = divisors(x.c);
        let groups = if p[4].is_multiple_of(3) {
            x.c
        } else {
            divs[p[4] % divs.len()]
        };
        let dilation = if (groups == x.c && groups > 1) || zero_taps_ok {
            1 + p[2] / 3 % 3
        } else {
            1
        };
        (groups, groups * (1 + p[5] % 3), dilation, 5)
    } else {
        (1, 1 + p[3] % 33, 1, 7)
    };
    let stride = 1 + p[2] % 3;
    let taps = |n: usize| 1 + p[0] % ((n - 1) / dilation + 1).min(most_taps);
    let (th, tw) = if grouped {
        (taps(x.h), taps(x.w))
    } else {
        (taps(x.h.min(x.w)), taps(x.h.min(x.w)))
    };
    let (fh, fw) = (dilation * (th - 1) + 1, dilation * (tw - 1) + 1);
    let (ph, pw) = if grouped {
        (p[1] % fh, p[1] / 8 % fw)
    } else {
        (p[1] % fh, p[1] % fw)
    };
    let out = Shape {
        c: filters,
        h: (x.h + 2 * ph - fh) / stride + 1,
        w: (x.w + 2 * pw - fw) / stride + 1,
        flat: false,
    };
    let mut attrs = format!(
        "filters: {filters}, size: {}, stride: {stride}, pad: {}",
        hw(th, tw),
        hw(ph, pw)
    );
    if grouped {
        attrs += &format!(", dilation: {dilation}, groups: {groups}");
    }
    if p[3].is_multiple_of(if grouped { 3 } else { 4 }) {
        attrs += ", bias: false";
    }
    (format!("conv: {{{attrs}}}, {}", inputs(&[src])), out)
}

/// A max or average pool with a rectangular window of 1-4, any pad below the window
/// (over half of it too), an end pad of its own now and then, and for the average
/// both ways of counting the padding.
fn pool(max: bool, src: &str, x: Shape, p: &[usize; 6]) -> (String, Shape) {
    let (sh, sw) = (1 + p[0] % x.h.min(4), 1 + p[0] / 4 % x.w.min(4));
    let (ph, pw) = (p[1] % sh, p[1] / 4 % sw);
    let (eh, ew) = if p[4].is_multiple_of(2) {
        (ph, pw)
    } else {
        (p[4] / 2 % sh, p[4] / 8 % sw)
    };
    let (s_h, s_w) = (1 + p[2] % 3, 1 + p[2] / 3 % 3);
    let stride = hw(s_h, s_w);
    let out = Shape {
        h: (x.h + ph + eh - sh) / s_h + 1,
        w: (x.w + pw + ew - sw) / s_w + 1,
        ..x
    };
    let mut attrs = format!(
        "size: {}, stride: {stride}, pad: {}",
        hw(sh, sw),
        hw(ph, pw)
    );
    if (eh, ew) != (ph, pw) {
        attrs += &format!(", pad_end: {}", hw(eh, ew));
    }
    if !max && p[5].is_multiple_of(2) {
        attrs += ", count_include_pad: false";
    }
    let kind = if max { "maxpool" } else { "avgpool" };
    (format!("{kind}: {{{attrs}}}, {}", inputs(&[src])), out)
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
    let step = (any::<u8>(), any::<[u8; 3]>(), any::<[u8; 6]>()).prop_map(|(op, picks, params)| {
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

/// Binds seeded weights, then gives batchnorm and scale_shift non-trivial statistics
/// and scales (the seed's are the identity) so that folding them is tested.
fn bind(g: &mut cnnc::Graph, seed: u64) {
    cnnc::weights::bind(g, None).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<_> = g.dag.node_indices().collect();
    for id in ids {
        let node = g.node_mut(id);
        if !matches!(node.op.kind(), "batchnorm" | "scale_shift") {
            continue;
        }
        for (suffix, t) in node.params.iter_mut() {
            for v in t.data_mut() {
                *v = match suffix.as_str() {
                    "running_var" => rng.random_range(0.2..2.0),
                    "weight" => rng.random_range(-2.0..2.0),
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
            // Winograd spreads a non-finite input over whole 4x4 output tiles, including
            // outputs whose window never reads it (docs/jit.md): graphs that make
            // infinities run the direct kernels, whose NaN and Inf are the interpreter's.
            winograd: !yaml.contains("inf"),
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
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..common::proptest_config(400)
    });
    if let Err(e) = runner.run(&recipe(), |r| check(&r)) {
        panic!("PROPTEST_RNG_SEED={}: {e}", common::proptest_seed());
    }
}

#[test]
fn the_builder_makes_the_ops_it_claims() {
    // Every op kind and variant appears among a few hundred random recipes: the
    // builder's fallbacks do not swallow an op.
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let r = recipe().new_tree(&mut runner).unwrap().current();
        let g = cnnc::format::parse_str(&build(&r), None).unwrap();
        for id in g.dag.node_indices() {
            let node = g.node(id);
            seen.insert(node.op.kind().to_string());
            let c = g.inputs(id).first().map_or(0, |&i| g.node(i).shape.c);
            seen.extend(variants(&node.op, c).into_iter().map(String::from));
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
        "lrn",
        "clip",
        "channel_shuffle",
        "scale_shift",
        "grouped conv",
        "depthwise conv",
        "depthwise conv with a channel multiplier",
        "dilated conv",
        "pool with an end pad of its own",
        "pool padded over half its window",
        "avgpool not counting the padding",
        "rectangular pool",
        "relu6",
    ] {
        assert!(seen.contains(op), "no {op} in 400 random graphs: {seen:?}");
    }
}

/// The variants of an op worth covering (`c`: its input channels).
fn variants(op: &cnnc::ir::Op, c: usize) -> Vec<&'static str> {
    use cnnc::ir::Op;
    let mut v = Vec::new();
    match op {
        Op::Conv(k) => {
            if k.groups > 1 && k.groups < c {
                v.push("grouped conv");
            }
            if k.groups == c && c > 1 {
                v.push("depthwise conv");
                if k.filters > c {
                    v.push("depthwise conv with a channel multiplier");
                }
            }
            if k.dilation.h > 1 || k.dilation.w > 1 {
                v.push("dilated conv");
            }
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            if !p.symmetric() {
                v.push("pool with an end pad of its own");
            }
            if 2 * p.pad.h > p.size.h || 2 * p.pad.w > p.size.w {
                v.push("pool padded over half its window");
            }
            if !p.count_pad && matches!(op, Op::AvgPool(_)) {
                v.push("avgpool not counting the padding");
            }
            if p.size.h != p.size.w {
                v.push("rectangular pool");
            }
        }
        Op::Clip(k) if k.min == 0.0 && k.max == 6.0 => v.push("relu6"),
        _ => {}
    }
    v
}
