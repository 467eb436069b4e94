//! The depthwise conv kernel (`jit::depthwise`) against the interpreter, element by
//! element, on many shapes: multiplier 1, 2 and 5, stride 1, 2 and 3, padding, dilation
//! 2-4, odd sizes, rows narrower than a vector, bias, ReLU, clip and a residual, every
//! input channel range of a split and a two-thread pool; outputs poisoned with NaN first
//! so that an element the kernel does not write fails. Then whole graphs on the JIT
//! engine (batch > 1, two threads, ReLU6 fused).
mod common;
use cnnc::jit::{pack_depthwise_weights, Clip, DepthwiseSpec, KernelModule, ThreadPool};
use cnnc::lower::Kernel;
use cnnc::weights::standard_normal;
use cnnc::{OptLevel, Options, Tensor};
use common::*;
use std::time::Duration;

/// One depthwise layer: `(channels, multiplier, h, w, kernel, stride, pad, dilation)`.
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (3, 1, 8, 8, 3, 1, 1, 1),
    (5, 1, 13, 11, 3, 1, 1, 1),
    (4, 2, 9, 12, 3, 2, 1, 1),
    (7, 1, 17, 17, 3, 2, 1, 1),
    (2, 1, 1, 1, 3, 1, 1, 1),
    (3, 1, 3, 2, 3, 1, 1, 1),
    (6, 1, 7, 7, 3, 1, 1, 1),
    (4, 1, 15, 10, 5, 1, 2, 1),
    (3, 2, 19, 23, 5, 2, 2, 1),
    (2, 1, 16, 16, 3, 1, 2, 2),
    (3, 1, 17, 15, 3, 1, 3, 3),
    (2, 2, 20, 21, 3, 2, 4, 4),
    (3, 1, 18, 13, 3, 2, 0, 2),
    (4, 1, 12, 14, 3, 3, 1, 1),
    (2, 5, 9, 9, 3, 1, 1, 1),
    (3, 1, 10, 9, 1, 1, 0, 1),
    (2, 1, 11, 11, 7, 2, 3, 1),
    (8, 1, 6, 30, 3, 1, 0, 1),
    (5, 1, 12, 12, 4, 2, 1, 1),
];

fn yaml((c, m, h, w, k, s, p, d): Case, bias: bool) -> String {
    format!(
        "input: [{c}, {h}, {w}]\nlayers:\n  - {{name: dw, conv: {{filters: {}, size: {k}, stride: {s}, pad: {p}, dilation: {d}, groups: {c}, bias: {bias}}}}}\n",
        c * m
    )
}

fn spec((c, m, h, w, k, s, p, d): Case) -> DepthwiseSpec {
    DepthwiseSpec {
        multiplier: m,
        in_h: h,
        in_w: w,
        stride_h: s,
        stride_w: s,
        dilation_h: d,
        dilation_w: d,
        ..DepthwiseSpec::square(c, h, k, s, p)
    }
}

fn activate(v: f32, relu: bool, clip: Option<Clip>) -> f32 {
    let v = if relu && v < 0.0 { 0.0 } else { v };
    clip.map_or(v, |c| v.clamp(c.min, c.max))
}

fn assert_elementwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{what}: element {i} is {a}, the interpreter says {b}"
        );
    }
}

/// The kernel of `case` with this epilogue against the interpreter's conv of the same
/// weights, on two images, over every split of its channels and on a pool.
fn check_kernel(case: Case, bias: bool, relu: bool, clip: Option<Clip>, residual: bool) {
    let what = format!("{case:?} bias {bias} relu {relu} clip {clip:?} residual {residual}");
    let mut g = graph(&yaml(case, bias));
    cnnc::weights::bind(&mut g, None).unwrap();
    // Seeded biases are zero: give them values.
    let id = g.find("dw").unwrap();
    if bias {
        let k = case.0 * case.1;
        let b = Tensor::new(vec![k], standard_normal(6, &what, k)).unwrap();
        g.node_mut(id).params.insert("bias".into(), b);
    }
    let spec = DepthwiseSpec {
        bias,
        relu,
        clip,
        residual,
        ..spec(case)
    };
    let node = g
        .dag
        .node_indices()
        .map(|i| g.node(i))
        .find(|n| n.name == "dw")
        .unwrap();
    let w = node.param("weight").unwrap().data();
    let b = node.param("bias").map(|t| t.data());
    let packed = pack_depthwise_weights(&spec, w, b).unwrap();
    // Every ISA level the host has: the wide row kernels (AVX2, AVX-512) at stride 1.
    for isa in cnnc::Isa::host_levels() {
        let mut module = KernelModule::new().unwrap();
        module.set_isa(isa).unwrap();
        let pending = module.add_depthwise(&spec).unwrap();
        let k = module.finalize().unwrap().get(pending).unwrap();
        check_runs(&format!("{what} {isa:?}"), &g, &spec, &k, &packed);
    }
}

/// The kernel `k` of `spec` on two images against the interpreter's run of `g`.
fn check_runs(
    what: &str,
    g: &cnnc::Graph,
    spec: &DepthwiseSpec,
    k: &cnnc::jit::DepthwiseKernel,
    packed: &[f32],
) {
    let (relu, clip, residual) = (spec.relu, spec.clip, spec.residual);
    let pool = ThreadPool::new(2, Duration::from_micros(50));

    let batch = 2;
    let x = standard_normal(3, what, batch * spec.input_len());
    let xt = Tensor::new(vec![batch, spec.channels, spec.in_h, spec.in_w], x.clone()).unwrap();
    let conv = cnnc::interp::run(g, xt).unwrap().remove(0);
    let out_len = spec.output_len();
    assert_eq!(conv.data().len(), batch * out_len, "{what}");
    let res = standard_normal(4, what, out_len);
    for n in 0..batch {
        let xi = &x[n * spec.input_len()..(n + 1) * spec.input_len()];
        let want: Vec<f32> = conv.data()[n * out_len..(n + 1) * out_len]
            .iter()
            .zip(&res)
            .map(|(&v, &r)| activate(if residual { v + r } else { v }, relu, clip))
            .collect();
        let r = residual.then_some(&res[..]);
        let units = k.work_units();
        for cut in 0..=units {
            let mut out = vec![f32::NAN; out_len];
            let mut scratch = vec![f32::NAN; k.scratch_len()];
            k.run(xi, packed, r, &mut out, &mut scratch, 0..cut)
                .unwrap();
            k.run(xi, packed, r, &mut out, &mut scratch, cut..units)
                .unwrap();
            assert_elementwise(&format!("{what}, split at {cut}"), &out, &want);
        }
        let mut out = vec![f32::NAN; out_len];
        let mut scratch = vec![f32::NAN; k.scratch_len() * pool.threads()];
        k.run_parallel(&pool, xi, packed, r, &mut out, &mut scratch)
            .unwrap();
        assert_elementwise(&format!("{what}, two threads"), &out, &want);
    }
}

#[test]
fn every_shape_against_the_interpreter() {
    for &case in CASES {
        check_kernel(case, false, false, None, false);
        check_kernel(case, true, false, None, false);
    }
}

#[test]
fn fused_bias_relu_clip_and_residual() {
    for &case in &CASES[..6] {
        check_kernel(case, true, true, None, false);
        check_kernel(case, true, false, Some(Clip::RELU6), false);
        check_kernel(
            case,
            false,
            true,
            Some(Clip {
                min: -0.5,
                max: 0.25,
            }),
            true,
        );
        check_kernel(case, true, false, None, true);
    }
}

#[test]
fn nan_inputs_reach_the_output_as_in_the_interpreter() {
    let case = (2, 1, 6, 9, 3, 1, 1, 1);
    let mut g = graph(&yaml(case, true));
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = spec(case);
    let mut x = standard_normal(1, "nan", s.input_len());
    x[20] = f32::NAN;
    let xt = Tensor::new(vec![1, 2, 6, 9], x).unwrap();
    let want = cnnc::interp::run(&g, xt.clone()).unwrap().remove(0);
    let model = cnnc::compile(&g, &Options::default()).unwrap();
    let got = model.run(&xt).unwrap().remove(0);
    for (a, b) in got.data().iter().zip(want.data()) {
        assert_eq!(a.is_nan(), b.is_nan());
        if !b.is_nan() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
}

#[test]
fn refuses_bad_specs_and_buffers() {
    let bad = [
        DepthwiseSpec {
            multiplier: 0,
            ..DepthwiseSpec::square(4, 8, 3, 1, 1)
        },
        DepthwiseSpec {
            dilation_w: 0,
            ..DepthwiseSpec::square(4, 8, 3, 1, 1)
        },
        DepthwiseSpec {
            dilation_h: 5,
            ..DepthwiseSpec::square(4, 8, 3, 1, 1)
        },
        DepthwiseSpec::square(4, 8, 3, 0, 1),
    ];
    let mut module = KernelModule::new().unwrap();
    for s in bad {
        assert!(module.add_depthwise(&s).is_err(), "{s:?} accepted");
    }
    let s = DepthwiseSpec::square(4, 8, 3, 1, 1);
    assert!(pack_depthwise_weights(&s, &[0.0; 35], None).is_err());
    let pending = module.add_depthwise(&s).unwrap();
    let k = module.finalize().unwrap().get(pending).unwrap();
    let packed = pack_depthwise_weights(&s, &[0.5; 36], None).unwrap();
    let x = vec![1.0; s.input_len()];
    let mut out = vec![0.0; s.output_len()];
    let mut small = vec![0.0; k.scratch_len() - 1];
    assert!(k
        .run(&x, &packed, None, &mut out, &mut small, 0..4)
        .is_err());
    assert!(k.run_all(&x[1..], &packed, None, &mut out).is_err());
    assert!(k.run_all(&x, &packed, Some(&x), &mut out).is_err());
    k.run_all(&x, &packed, None, &mut out).unwrap();
    // The centre pixel sums nine taps of 0.5; a corner four.
    assert_eq!(out[9], 4.5);
    assert_eq!(out[0], 2.0);
}

/// Whole graphs on the JIT engine: the plan takes the depthwise kernel, and the network
/// matches the interpreter with several images per call and two threads.
#[test]
fn graphs_take_the_depthwise_kernel() {
    let yaml = "input: [16, 21, 19]\nlayers:\n  - {name: dw1, conv: {filters: 16, size: 3, pad: 1, groups: 16, bias: false}}\n  - batchnorm\n  - relu6\n  - {name: dw2, conv: {filters: 32, size: 3, stride: 2, pad: 2, dilation: 2, groups: 16}}\n  - relu\n  - {name: pw, conv: {filters: 8, size: 1}}\n";
    let mut g = graph(yaml);
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let batch = 3;
    let x = Tensor::new(
        vec![batch, s.c, s.h, s.w],
        standard_normal(9, "graph", batch * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap().remove(0);
    for (level, threads) in [(OptLevel::O0, 1), (OptLevel::O2, 2)] {
        let opts = Options {
            opt_level: level,
            batch: 2,
            threads,
            ..Options::default()
        };
        let mut og = g.clone();
        cnnc::passes::optimize(&mut og, &opts).unwrap();
        let plan = cnnc::lower::lower(&og, &opts).unwrap();
        for name in ["dw1", "dw2"] {
            let step = plan.step(name).unwrap();
            assert!(
                matches!(step.kernel, Kernel::Depthwise(_)),
                "{name}: {}",
                step.kernel.family()
            );
        }
        if level == OptLevel::O2 {
            let Kernel::Depthwise(dw1) = plan.step("dw1").unwrap().kernel else {
                unreachable!()
            };
            assert_eq!(dw1.clip, Some(Clip::RELU6), "relu6 fused into dw1");
        }
        let model = cnnc::compile(&g, &opts).unwrap();
        let poison = Tensor::filled(x.shape().to_vec(), f32::NAN);
        model.run(&poison).unwrap();
        let got = model.run(&x).unwrap().remove(0);
        assert_close(&format!("{level} {threads} threads"), &got, &want, 1e-5);
    }
}

/// A channel shuffle read by depthwise convs only is no step of its own: they read their
/// input planes in the shuffled order. Elsewhere (here: a graph output, and a shuffle
/// before a dense conv) it stays a copy. Both match the interpreter.
#[test]
fn shuffles_before_depthwise_convs_move_no_data() {
    let yaml = "input: [12, 9, 7]\nlayers:\n  - {name: g, conv: {filters: 12, size: 1, groups: 3}}\n  - {name: s1, channel_shuffle: {groups: 3}}\n  - {name: dw, conv: {filters: 24, size: 3, pad: 1, groups: 12}}\n  - {name: s2, channel_shuffle: {groups: 4}}\n  - {name: dense, conv: {filters: 6, size: 3, pad: 1}}\n  - {name: s3, channel_shuffle: {groups: 2}}\n  - {name: dw2, conv: {filters: 6, size: 3, stride: 2, groups: 6}, inputs: [s3]}\n  - {name: add, add, inputs: [s3, s3]}\n";
    let mut g = graph(yaml);
    g.outputs = vec![g.find("dw2").unwrap(), g.find("add").unwrap()];
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![2, s.c, s.h, s.w],
        standard_normal(5, "shuffle", 2 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    let opts = Options {
        batch: 2,
        ..Options::default()
    };
    let mut og = g.clone();
    cnnc::passes::optimize(&mut og, &opts).unwrap();
    let plan = cnnc::lower::lower(&og, &opts).unwrap();
    assert!(plan.step("s1").is_none(), "s1 is read in place");
    let Kernel::Depthwise(dw) = plan.step("dw").unwrap().kernel else {
        panic!("dw is depthwise")
    };
    assert_eq!(dw.input_shuffle, 3);
    assert_eq!(plan.step("s2").unwrap().kernel.family(), "host-loop");
    assert_eq!(plan.step("s3").unwrap().kernel.family(), "host-loop");
    let model = cnnc::compile(&g, &opts).unwrap();
    model
        .run(&Tensor::filled(x.shape().to_vec(), f32::NAN))
        .unwrap();
    let got = model.run(&x).unwrap();
    for (i, (y, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("output {i}"), y, w, 1e-5);
    }
}

/// A depthwise conv takes the ISA level of the options even when it is the graph's first
/// kernel (its step does not name a level; the module used to keep its default, the widest
/// level, until another kernel set one): no x86 micro-kernel at `sse`, one at the wider
/// levels the host has.
#[test]
fn a_depthwise_first_kernel_follows_the_options_isa() {
    let yaml = "input: [8, 20, 40]\nlayers:\n  - {name: dw, conv: {filters: 8, size: 3, pad: 1, groups: 8}}\n";
    let mut g = graph(yaml);
    cnnc::weights::bind(&mut g, None).unwrap();
    for isa in cnnc::Isa::host_levels() {
        let opts = Options {
            isa,
            ..Options::default()
        };
        let listings = cnnc::runtime::listings(&g, &opts).unwrap();
        // x86 micro-kernels are listed with `;`-comment "IR" (they have no Cranelift IR).
        let micros = listings.iter().filter(|l| l.clif.starts_with(';')).count();
        if isa == cnnc::Isa::Sse {
            assert_eq!(micros, 0, "{isa}: no x86 code at sse");
        } else {
            assert!(micros > 0, "{isa}: the depthwise row kernel");
        }
    }
}
