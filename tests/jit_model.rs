//! Whole networks compiled by the JIT agree with the reference interpreter.
mod common;
use cnnc::jit::ConvMethod;
use cnnc::lower::{Kernel, Plan, Storage};
use cnnc::tensor::rel_l2;
use cnnc::Tensor;
use cnnc::{compile, OptLevel, Options};
use common::*;

/// The plan `cnnc::compile` runs for `g`.
fn lowered(g: &cnnc::Graph, opts: &Options) -> Plan {
    let mut g = g.clone();
    cnnc::passes::optimize(&mut g, opts).unwrap();
    cnnc::lower::lower(&g, opts).unwrap()
}

/// The convolutions' methods, those that compute the same bits counted as one: a 1x1
/// convolution without padding is one FMA chain over the input channels in order whether
/// the direct kernel (strided 1x1 at sse) or the pointwise GEMM (at avx2 / avx512) computes
/// it. Winograd on the AVX-512 transforms (tile group by tile group, or the whole layout),
/// which round otherwise than the f32x4 ones, counts as a method of its own. A conv with
/// a max pool fused in computes the direct kernel's bits (then the pool's).
fn conv_methods(plan: &Plan) -> Vec<(ConvMethod, bool)> {
    plan.steps
        .iter()
        .filter_map(|s| match s.kernel {
            Kernel::ConvMaxPool { .. } => Some((ConvMethod::Direct, false)),
            Kernel::Conv { spec, method, isa } => {
                let pointwise = spec.kernel_h * spec.kernel_w == 1 && spec.pad_h + spec.pad_w == 0;
                let grouped = method == ConvMethod::Winograd
                    && method.micro_kernel(&spec, isa).contains("zmm transforms");
                Some(if pointwise {
                    (ConvMethod::PointwiseGemm, false)
                } else {
                    (method, grouped)
                })
            }
            _ => None,
        })
        .collect()
}

/// Per graph output, the batch-1 fc layers upstream of it (through aliases) with their
/// kernels: their sums are per lane (4, 8 or 16 partial sums, then a tree), so each width
/// rounds otherwise; an output whose list is equal at two levels has the same bits.
fn fc_kernels(plan: &Plan) -> Vec<Vec<(String, String)>> {
    let producers = plan.producers();
    (plan.outputs.iter())
        .map(|&o| {
            let mut seen = vec![false; plan.values.len()];
            let (mut todo, mut fcs) = (vec![o], Vec::new());
            while let Some(v) = todo.pop() {
                if std::mem::replace(&mut seen[v], true) {
                    continue;
                }
                if let Storage::Alias(of) = plan.values[v].storage {
                    todo.push(of);
                }
                let Some(step) = producers[v].map(|i| &plan.steps[i]) else {
                    continue;
                };
                if let Kernel::Fc { spec, isa } = step.kernel {
                    if spec.batch == 1 {
                        fcs.push((step.name.clone(), spec.micro_kernel(isa)));
                    }
                }
                todo.extend(&step.inputs);
            }
            fcs.sort();
            fcs
        })
        .collect()
}

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
        let configs = [
            (OptLevel::O0, 1, 1),
            (OptLevel::O2, 1, 2),
            (OptLevel::O2, 3, 1),
            (OptLevel::O0, 3, 2),
        ];
        for (level, batch, threads) in configs {
            let opts = Options {
                opt_level: level,
                batch,
                threads,
                verify: true,
                ..Default::default()
            };
            let model =
                compile(&case.graph, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let got = model
                .run(&case.input)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let what = format!("{} ({level}, batch {batch}, {threads} threads)", case.name);
            assert_agrees(&what, &got, &want);
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
        // Its 64 -> 256 at 56x56 goes in pixel parts per thread (`PixelGemm::in_parts`).
        "resnet_bottleneck_block",
    ] {
        let (g, x) = seeded_example(name, 3, 5);
        let want = cnnc::interp::run(&g, x.clone()).unwrap();
        let one = compile(
            &g,
            &Options {
                batch: 3,
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let got = one.run(&x).unwrap();
        assert_agrees(name, &got, &want);
        // Direct convolutions only (`--no-winograd`): also within tolerance.
        let direct = compile(
            &g,
            &Options {
                batch: 3,
                threads: 1,
                winograd: false,
                ..Default::default()
            },
        )
        .unwrap();
        let got_direct = direct.run(&x).unwrap();
        assert_agrees(&format!("{name} without Winograd"), &got_direct, &want);
        let methods = |winograd| {
            let opts = Options {
                batch: 3,
                winograd,
                ..Default::default()
            };
            let m = conv_methods(&lowered(&g, &opts));
            m.iter()
                .any(|&(m, _)| matches!(m, ConvMethod::Winograd | ConvMethod::Winograd2))
        };
        assert!(!methods(false), "{name}");
        if name == "vgg_cifar" || name == "resnet_basic_block" {
            assert!(methods(true), "{name}");
        }
        // Threads split each layer's work, never change a bit of the result.
        for threads in [2, 3] {
            let many = compile(
                &g,
                &Options {
                    batch: 3,
                    threads,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(many.run(&x).unwrap(), got, "{name}: {threads} threads");
        }
    }
}

#[test]
fn model_is_send_and_sync_and_runs_concurrently() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<cnnc::Model>();
    let mut g = cnnc::format::load(repo().join("graphs/lenet5.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let model = compile(
        &g,
        &Options {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let inputs: Vec<Tensor> = (0..4)
        .map(|i| {
            Tensor::new(
                vec![2, 1, 32, 32],
                cnnc::weights::standard_normal(i, "c", 2048),
            )
            .unwrap()
        })
        .collect();
    let serial: Vec<_> = inputs.iter().map(|x| model.run(x).unwrap()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| s.spawn(|| model.run(x).unwrap()))
            .collect();
        for (h, want) in handles.into_iter().zip(&serial) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
}

#[test]
fn run_into_reuses_caller_buffers_and_checks_shapes() {
    let mut g = cnnc::format::load(repo().join("graphs/cs231n_example.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let model = compile(&g, &Options::default()).unwrap();
    let x = Tensor::new(
        vec![2, 3, 32, 32],
        cnnc::weights::standard_normal(3, "x", 2 * 3072),
    )
    .unwrap();
    let want = model.run(&x).unwrap();
    let mut out = vec![Tensor::filled(vec![2, 10], f32::NAN)];
    model.run_into(&x, &mut out).unwrap();
    assert_eq!(out, want);
    let mut wrong = vec![Tensor::zeros(vec![3, 10])];
    let err = model.run_into(&x, &mut wrong).unwrap_err().to_string();
    assert!(err.contains("3x10") && err.contains("2x10"), "{err}");
    let err = model
        .run(&Tensor::zeros(vec![1, 3, 28, 28]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1x3x28x28") && err.contains("3x32x32"),
        "{err}"
    );
}

#[test]
fn compile_emits_the_ir_and_machine_code_of_every_kernel() {
    let emit = |what: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(["compile", "graphs/resnet_basic_block.yaml", "--emit", what])
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let clif = emit("clif");
    let asm = emit("asm");
    // After -O2 the block is two convs, the second with the fused shortcut and relu.
    for layer in ["; layer conv1 ", "; layer conv2 "] {
        assert!(
            clif.contains(layer) && asm.contains(layer),
            "{layer}\n{clif}"
        );
    }
    // Arithmetic in the CLIF (f32x4 FMAs), or calls of x86 micro-kernels (at avx512 both
    // layers are Winograd tile row by tile row: copies and calls around AVX-512 code).
    let calls = clif.contains("call fn");
    assert!(
        clif.contains("function ") && (clif.contains("fma") || calls),
        "{clif}"
    );
    assert!(asm.contains("ret") && asm.contains("vfmadd"), "{asm}");
}

/// The listings of every kernel of `graphs/{name}.yaml` (seeded weights, optimized) in a
/// model of each of `threads` threads.
fn listings_at(name: &str, threads: [usize; 2]) -> [Vec<cnnc::jit::KernelListing>; 2] {
    let mut g = cnnc::format::load(repo().join(format!("graphs/{name}.yaml"))).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let opts = |threads| Options {
        threads,
        ..Options::default()
    };
    cnnc::passes::optimize(&mut g, &opts(1)).unwrap();
    threads.map(|t| cnnc::runtime::listings(&g, &opts(t)).unwrap())
}

/// Kernels are compiled on the model's threads: which thread compiles which function must
/// not change the code (the listings, machine code included, are identical at 1 and 3
/// threads), and a model compiled on threads computes what one compiled serially does.
#[test]
fn kernels_compiled_on_threads_are_the_serially_compiled_ones() {
    let [serial, threaded] = listings_at("inception3a", [1, 3]);
    assert!(serial.len() > 10, "{} kernels", serial.len());
    assert_eq!(serial.len(), threaded.len());
    // Tables (gather offsets) are baked in by address, which differs between two models.
    fn no_addresses(text: &str) -> Vec<&str> {
        text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map(|t| match t.strip_prefix("0x") {
                Some(hex) if hex.replace('_', "").len() >= 10 => "ADDRESS",
                _ => t,
            })
            .collect()
    }
    for (a, b) in serial.iter().zip(&threaded) {
        assert_eq!((&a.label, &a.symbol), (&b.label, &b.symbol));
        assert_eq!(a.code_bytes, b.code_bytes, "{}", a.symbol);
        assert!(a.code_bytes > 0, "{}: no code", a.symbol);
        assert!(
            no_addresses(&a.clif) == no_addresses(&b.clif)
                && no_addresses(&a.asm) == no_addresses(&b.asm),
            "{}: different code at 1 and 3 threads",
            a.symbol
        );
    }
}

/// The runtime makes its kernels for its pool's size (`KernelModule::set_threads`): in the
/// bottleneck block the 64 -> 256 expansion at 56x56 goes in pixel parts at two threads
/// (`PixelGemm::in_parts`), so its code differs from the one-thread model's, and only
/// where a kernel orders its units for the threads (the bits do not change either way:
/// `example_graphs_with_seeded_weights_match_the_interpreter`).
#[test]
fn the_runtime_makes_its_kernels_for_its_pools_size() {
    if cnnc::Isa::default_level() == cnnc::Isa::Sse
        || std::env::var("CNNC_WEIGHT_MAJOR_PARTS").is_ok()
    {
        eprintln!("skipped: no pixel parts at sse, or CNNC_WEIGHT_MAJOR_PARTS set");
        return;
    }
    let [one, two] = listings_at("resnet_bottleneck_block", [1, 2]);
    assert_eq!(one.len(), two.len());
    let differ: Vec<&str> = (one.iter().zip(&two))
        .filter(|(a, b)| a.asm != b.asm)
        .map(|(a, _)| a.label.as_str())
        .collect();
    assert!(
        !differ.is_empty() && differ.iter().all(|l| l.contains("expand")),
        "kernels made differently at 2 threads: {differ:?}"
    );
}

/// Graphs that stress the memory planner and the passes: a node reading one buffer in two
/// slots, outputs that are the input or alias each other, shortcuts around one conv or fc.
/// Three items: at batch 2 a full chunk (read from the caller's memory, outputs written
/// in place) and a partial one (through the arena); the input starts off a cache line and
/// off a 16-byte boundary, the outputs are filled with NaN.
#[test]
fn edge_graphs_match_the_interpreter_at_every_level() {
    let dir = repo().join("tests/edge");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut g = cnnc::format::load(&path).unwrap();
        cnnc::weights::bind(&mut g, None).unwrap();
        let s = g.input_shape();
        let x = Tensor::new(
            vec![3, s.c, s.h, s.w],
            cnnc::weights::standard_normal(9, "e", 3 * s.len()),
        )
        .unwrap();
        let want = cnnc::interp::run(&g, x.clone()).unwrap();
        // The input where the run reads it in place (on a cache line) and where it copies it
        // into the arena first (a float past one).
        let mut on_line = cnnc::runtime::arena::AlignedBuf::zeroed(x.len(), "input").unwrap();
        on_line.as_mut_slice().copy_from_slice(x.data());
        let mut shifted = vec![0.0f32];
        shifted.extend_from_slice(x.data());
        for level in [OptLevel::O0, OptLevel::O1, OptLevel::O2] {
            for (batch, threads) in [(1, 1), (2, 2)] {
                let opts = Options {
                    opt_level: level,
                    batch,
                    threads,
                    verify: true,
                    ..Default::default()
                };
                let what = format!("{} {level} batch {batch} threads {threads}", path.display());
                let model = compile(&g, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_agrees(&what, &model.run(&x).unwrap(), &want);
                let mut got: Vec<Tensor> = (want.iter())
                    .map(|t| Tensor::filled(t.shape().to_vec(), f32::NAN))
                    .collect();
                model.run_into(&x, &mut got).unwrap();
                assert_agrees(&format!("{what}, NaN outputs"), &got, &want);
                let on = model.run_slice(x.shape(), on_line.as_mut_slice()).unwrap();
                assert_agrees(&format!("{what}, input on a line"), &on, &want);
                let off = model.run_slice(x.shape(), &shifted[1..]).unwrap();
                assert_agrees(&format!("{what}, input off a line"), &off, &want);
            }
        }
        n += 1;
    }
    assert!(n >= 7, "edge graphs found: {n}");
}

#[test]
fn inception_branches_write_into_the_concat_in_place() {
    let mut g = cnnc::format::load(repo().join("graphs/inception3a.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![3, s.c, s.h, s.w],
        cnnc::weights::standard_normal(3, "cat", 3 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    for batch in [1, 3] {
        let opts = Options {
            batch,
            threads: 2,
            ..Default::default()
        };
        let model = compile(&g, &opts).unwrap();
        assert_agrees(
            &format!("inception3a batch {batch}"),
            &model.run(&x).unwrap(),
            &want,
        );
        // All four branches end in a conv (+relu) that writes its slot: no concat step.
        let plan = lowered(&g, &opts);
        assert!(
            plan.steps
                .iter()
                .all(|s| !matches!(s.kernel, Kernel::Copy { .. })),
            "batch {batch}: {plan}"
        );
    }
}

#[test]
fn wide_add_and_concat_match_the_interpreter() {
    // 17 operands: beyond the runtime's on-stack operand list (16), so its heap fallback.
    let mut yaml = String::from("name: wide\ninput: [3, 5, 4]\nlayers:\n");
    let names: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    for n in &names {
        yaml += &format!("  - {{name: {n}, conv: {{filters: 3, size: 1}}, inputs: [input]}}\n");
    }
    yaml += &format!(
        "  - {{name: sum, add, inputs: [{}, input]}}\n",
        names.join(", ")
    );
    yaml += &format!(
        "  - {{name: cat, concat, inputs: [{}, sum]}}\n",
        names.join(", ")
    );
    let mut g = cnnc::format::parse_str(&yaml, None).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let x = Tensor::new(
        vec![2, 3, 5, 4],
        cnnc::weights::standard_normal(9, "wide", 2 * 60),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    for (opt_level, threads) in [(OptLevel::O0, 1), (OptLevel::O2, 2)] {
        let opts = Options {
            opt_level,
            threads,
            ..Default::default()
        };
        let got = compile(&g, &opts).unwrap().run(&x).unwrap();
        assert_agrees(
            &format!("wide ({opt_level}, {threads} threads)"),
            &got,
            &want,
        );
    }
}

#[test]
fn resnet18_matches_the_interpreter() {
    // 20 convolutions deep, 13 of them Winograd: the rounding of the transforms must not
    // accumulate past the tolerance.
    let mut g = cnnc::format::load(repo().join("graphs/resnet18.yaml")).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![2, s.c, s.h, s.w],
        cnnc::weights::standard_normal(7, "r18", 2 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    for (batch, threads) in [(1, 1), (2, 2)] {
        let opts = Options {
            batch,
            threads,
            ..Default::default()
        };
        let got = compile(&g, &opts).unwrap().run(&x).unwrap();
        assert_agrees(
            &format!("resnet18 batch {batch}, {threads} threads"),
            &got,
            &want,
        );
    }
    // Every ISA level (the stem and strided 3x3 on the implicit GEMM, the strided 1x1
    // projections on the pointwise GEMM at avx2 / avx512): the same bits where the plans
    // pick the same methods.
    for winograd in [true, false] {
        let opts = Options {
            batch: 2,
            threads: 2,
            winograd,
            ..Default::default()
        };
        let compared = agree_at_every_level("resnet18", &g, &x, &want, &opts);
        if !winograd {
            assert_eq!(compared, cnnc::Isa::host_levels().len() - 1);
        }
    }
}

/// Runs `g` on `x` with `opts` at every ISA level the host has: each level agrees with the
/// interpreter's `want`, and the levels whose plans pick the same convolution methods as
/// the first give its bits exactly (every kernel computes each output with the same
/// operations in the same order at every level; Winograd's cost model may keep it at one
/// level and not at another), output by output: an output downstream of a batch-1 fc whose
/// kernel differs (it sums per lane) is only checked against `want`. Returns how many
/// levels were compared bit for bit in every output.
fn agree_at_every_level(
    name: &str,
    g: &cnnc::Graph,
    x: &Tensor,
    want: &[Tensor],
    opts: &Options,
) -> usize {
    let levels = cnnc::Isa::host_levels();
    let at = |isa| Options {
        isa,
        ..opts.clone()
    };
    let first = compile(g, &at(levels[0])).unwrap().run(x).unwrap();
    let methods = |isa| {
        let plan = lowered(g, &at(isa));
        (conv_methods(&plan), fc_kernels(&plan))
    };
    let first_methods = methods(levels[0]);
    let what = |isa| format!("{name} at {isa} (winograd {})", opts.winograd);
    assert_agrees(&what(levels[0]), &first, want);
    let mut compared = 0;
    for &isa in &levels[1..] {
        let got = compile(g, &at(isa)).unwrap().run(x).unwrap();
        assert_agrees(&what(isa), &got, want);
        let (convs, fcs) = methods(isa);
        if convs != first_methods.0 {
            continue;
        }
        let mut all = true;
        for (i, (a, b)) in got.iter().zip(&first).enumerate() {
            if fcs[i] == first_methods.1[i] {
                assert_eq!(
                    a,
                    b,
                    "{}: output {i} not the bits of {}",
                    what(isa),
                    levels[0]
                );
            } else {
                all = false;
            }
        }
        compared += usize::from(all);
    }
    compared
}

/// Whole networks at every ISA level the host has give the same bits: every kernel computes
/// each output with the same operations in the same order at every level (the wide
/// micro-kernels are FMA chains in the f32x4 kernels' order), and they agree with the
/// interpreter. With and without Winograd, at batch 2.
#[test]
fn example_graphs_agree_bit_for_bit_at_every_isa_level() {
    let levels = cnnc::Isa::host_levels();
    for name in [
        "cs231n_example",
        "lenet5",
        "inception3a",
        "resnet_bottleneck_block",
    ] {
        let (g, x) = seeded_example(name, 2, 11);
        let want = cnnc::interp::run(&g, x.clone()).unwrap();
        for winograd in [true, false] {
            let opts = Options {
                batch: 2,
                threads: 2,
                winograd,
                ..Default::default()
            };
            let compared = agree_at_every_level(name, &g, &x, &want, &opts);
            if !winograd {
                assert_eq!(compared, levels.len() - 1, "{name}");
            }
        }
    }
}

/// Grouped and dilated convolutions run the dense kernel of one group at the plan's ISA
/// level (the plan says which micro-kernel), with the same bits at every level.
#[test]
fn grouped_convs_use_the_plans_isa() {
    let mut g = graph(
        "name: grouped\ninput: [8, 13, 11]\nseed: 3\nlayers:\n\
         \x20 - {name: g1, conv: {filters: 12, size: 3, stride: 2, pad: 1, groups: 2}}\n\
         \x20 - {name: r1, relu}\n\
         \x20 - {name: g2, conv: {filters: 6, size: 3, pad: 2, groups: 3, dilation: 2}}\n",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![2, s.c, s.h, s.w],
        cnnc::weights::standard_normal(3, "grouped", 2 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    let mut first: Option<Vec<Tensor>> = None;
    for isa in cnnc::Isa::host_levels() {
        let opts = Options {
            batch: 2,
            isa,
            ..Default::default()
        };
        let plan = lowered(&g, &opts);
        let grouped: Vec<String> = plan
            .steps
            .iter()
            .filter(|s| matches!(s.kernel, Kernel::GroupedConv { .. }))
            .map(|s| s.kernel.algorithm().unwrap_or_default())
            .collect();
        assert_eq!(grouped.len(), 2, "{isa}");
        let tag = match isa {
            cnnc::Isa::Sse => "f32x4",
            cnnc::Isa::Avx2 => "avx2",
            cnnc::Isa::Avx512 => "avx512",
        };
        assert!(
            grouped.iter().all(|a| a.contains(tag)),
            "{isa}: {grouped:?}"
        );
        let got = compile(&g, &opts).unwrap().run(&x).unwrap();
        assert_agrees(&format!("grouped at {isa}"), &got, &want);
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(&got, f, "grouped: {isa} differs"),
        }
    }
}

/// A DenseNet-like unit whose memory-bound steps (pools, a batchnorm and a relu the passes
/// leave alone, a concat of a concat that must be copied at batch 2, an add) are large
/// enough to be split across threads: every thread count and batch gives the one-thread
/// bits, which agree with the interpreter. At batch 1 the two concats share one buffer
/// (`lower::memory::place_concat_inputs`), and nothing is copied.
#[test]
fn memory_bound_steps_split_across_threads_change_no_bit() {
    let yaml = "input: [16, 40, 40]
seed: 3
outputs: [out, m]
layers:
  - {name: stem, conv: {filters: 32, size: 3, pad: 1}, inputs: [input]}
  - {name: p, maxpool: {size: 3, stride: 1, pad: 1}, inputs: [stem]}
  - {name: bn1, batchnorm, inputs: [p]}
  - {name: r1, relu, inputs: [bn1]}
  - {name: c1, conv: {filters: 16, size: 3, pad: 1}, inputs: [r1]}
  - {name: cat1, concat, inputs: [p, c1]}
  - {name: bn2, batchnorm, inputs: [cat1]}
  - {name: r2, relu, inputs: [bn2]}
  - {name: c2, conv: {filters: 16, size: 1}, inputs: [r2]}
  - {name: cat2, concat, inputs: [cat1, c2]}
  - {name: s, add, inputs: [cat2, cat2]}
  - {name: m, maxpool: {size: 3, stride: 2}, inputs: [s]}
  - {name: out, avgpool: {size: 3, stride: 2, pad: 1}, inputs: [s]}
";
    let mut g = cnnc::format::parse_str(yaml, None).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let s = g.input_shape();
    let x = Tensor::new(
        vec![3, s.c, s.h, s.w],
        cnnc::weights::standard_normal(5, "dense", 3 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(&g, x.clone()).unwrap();
    // At batch 2 the concat of a concat is copied (its items would interleave with the
    // outer concat's); at batch 1 it is placed in the outer concat's buffer, whose slots
    // every producer writes in place: no step copies.
    let copies = |batch| {
        let plan = lowered(
            &g,
            &Options {
                batch,
                ..Default::default()
            },
        );
        (plan.steps.iter())
            .filter(|s| matches!(s.kernel, Kernel::Copy { .. }))
            .count()
    };
    assert!(
        copies(2) > 0,
        "the graph should copy a concat input at batch 2"
    );
    assert_eq!(
        copies(1),
        0,
        "at batch 1 every concat input is written in place"
    );
    for batch in [1, 2] {
        let run = |threads| {
            let opts = Options {
                batch,
                threads,
                ..Default::default()
            };
            compile(&g, &opts).unwrap().run(&x).unwrap()
        };
        let one = run(1);
        assert_agrees(&format!("dense unit, batch {batch}"), &one, &want);
        for threads in [2, 3] {
            assert_eq!(run(threads), one, "batch {batch}, {threads} threads");
        }
    }
}

/// A ReLU after an unfolded batchnorm, scale_shift or add is that step's epilogue
/// (`lower::fuse`), unless the value before the ReLU has another reader or is a graph
/// output; the plan and the results (against the interpreter, at every ISA level, batch
/// 2, 1 and 2 threads) both say so.
#[test]
fn a_relu_after_an_elementwise_step_is_fused_into_it() {
    let mut g = graph(
        "name: bnrelu\ninput: [5, 9, 7]\nseed: 4\nlayers:\n\
         \x20 - {name: c0, conv: {filters: 6, size: 3, pad: 1}}\n\
         \x20 - {name: bn1, batchnorm, inputs: [c0]}\n\
         \x20 - {name: r1, relu, inputs: [bn1]}\n\
         \x20 - {name: c1, conv: {filters: 4, size: 1}, inputs: [r1]}\n\
         \x20 - {name: bn2, batchnorm, inputs: [c0]}\n\
         \x20 - {name: r2, relu, inputs: [bn2]}\n\
         \x20 - {name: s, add, inputs: [bn2, c0]}\n\
         \x20 - {name: r3, relu, inputs: [s]}\n\
         \x20 - {name: ss, scale_shift, inputs: [c0]}\n\
         \x20 - {name: r4, relu, inputs: [ss]}\n\
         \x20 - {name: cat, concat, inputs: [c1, r2, r3, r4, c0]}\n\
         outputs: [cat, ss]\n",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    // Statistics that are not the identity, so that the ReLU has negatives to clear.
    let ids: Vec<_> = g.dag.node_indices().collect();
    for (i, id) in ids.into_iter().enumerate() {
        let node = g.node_mut(id);
        if !matches!(node.op.kind(), "batchnorm" | "scale_shift") {
            continue;
        }
        for (suffix, t) in node.params.iter_mut() {
            let r = cnnc::weights::standard_normal(i as u64, suffix, t.len());
            for (v, r) in t.data_mut().iter_mut().zip(r) {
                *v = if suffix == "running_var" {
                    0.5 + r.abs()
                } else {
                    r
                };
            }
        }
    }
    let plan = lowered(&g, &Options::default());
    let op = |name: &str| plan.step(name).map(|s| s.op.clone());
    assert!(op("bn1").unwrap().ends_with("+relu"), "{plan}");
    assert!(op("s").unwrap().ends_with("+relu"), "{plan}");
    assert_eq!(op("r1").or(op("r3")), None, "{plan}");
    // bn2 has three readers, ss is a graph output: their ReLUs stay.
    assert!(!op("bn2").unwrap().contains("relu"), "{plan}");
    assert!(!op("ss").unwrap().contains("relu"), "{plan}");
    assert!(op("r2").is_some() && op("r4").is_some(), "{plan}");
    agree_at_batch_2("bnrelu", &g, 5);
}

/// [`agree_at_every_level`] on 2 random items (`seed`), at batch 2, on 1 and 2 threads.
/// Returns the number of levels compared bit for bit with the first.
fn agree_at_batch_2(name: &str, g: &cnnc::Graph, seed: u64) -> usize {
    let s = g.input_shape();
    let x = Tensor::new(
        vec![2, s.c, s.h, s.w],
        cnnc::weights::standard_normal(seed, name, 2 * s.len()),
    )
    .unwrap();
    let want = cnnc::interp::run(g, x.clone()).unwrap();
    let mut compared = 0;
    for threads in [1, 2] {
        let opts = Options {
            batch: 2,
            threads,
            ..Default::default()
        };
        compared += agree_at_every_level(name, g, &x, &want, &opts);
    }
    compared
}

/// A graph whose convolutions' windows cover their whole unpadded inputs (the classifiers
/// of DenseNet and MobileNet as 1x1 convs on a 1x1 map, VGG's fc6 as a 7x7 conv on a 7x7
/// map), beside ones that do not (padded, or smaller than the map).
fn classifier_convs() -> cnnc::Graph {
    graph(
        "name: convfc\ninput: [6, 7, 7]\nseed: 9\nlayers:\n\
         \x20 - {name: fc6, conv: {filters: 37, size: 7}, inputs: [input]}\n\
         \x20 - {name: r6, relu}\n\
         \x20 - {name: fc7, conv: {filters: 19, size: 1}}\n\
         \x20 - {name: padded, conv: {filters: 5, size: 3, pad: 1}, inputs: [fc7]}\n\
         \x20 - {name: pool, global_avgpool, inputs: [input]}\n\
         \x20 - {name: cls, conv: {filters: 11, size: 1, bias: false}}\n\
         \x20 - {name: part, conv: {filters: 3, size: 5}, inputs: [input]}\n\
         outputs: [padded, cls, part]\n",
    )
}

#[test]
fn a_conv_whose_window_covers_its_input_runs_as_an_fc() {
    let g = classifier_convs();
    for level in [OptLevel::O0, OptLevel::O2] {
        let plan = lowered(
            &g,
            &Options {
                opt_level: level,
                ..Default::default()
            },
        );
        let kind = |name: &str| plan.step(name).map(|s| s.kernel.family());
        // At -O2 fc6 carries the ReLU and fc7 is a `gemm` (the 1x1 lowering): both fc.
        for fc in ["fc6", "fc7", "cls"] {
            assert_eq!(kind(fc), Some("fc"), "{fc} at {level:?}:\n{plan}");
        }
        for conv in ["padded", "part"] {
            assert_ne!(kind(conv), Some("fc"), "{conv} at {level:?}:\n{plan}");
        }
    }
    for batch in [1, 3] {
        let x = Tensor::new(
            vec![batch, 6, 7, 7],
            cnnc::weights::standard_normal(batch as u64, "convfc", batch * 6 * 49),
        )
        .unwrap();
        let mut g = g.clone();
        cnnc::weights::bind(&mut g, None).unwrap();
        let want = cnnc::interp::run(&g, x.clone()).unwrap();
        for threads in [1, 2] {
            let opts = Options {
                batch,
                threads,
                ..Default::default()
            };
            let compared = agree_at_every_level("convfc", &g, &x, &want, &opts);
            // At batch 1 the fc layers' kernels differ by level (only `part`, upstream
            // of no fc, is compared bit for bit); at batch 3 every output is.
            if batch == 3 {
                let levels = cnnc::Isa::host_levels().len();
                assert_eq!(compared, levels - 1, "threads {threads}");
            }
        }
    }
}

/// A first conv (few taps, unpadded) whose output only a max pool reads becomes one step
/// with it (`lower::fuse::fuse_max_pool_into_conv`, at avx2 / avx512): the plan says so,
/// a conv whose output has a second reader and a pool padded vertically keep their
/// steps, and the results agree with the interpreter at every level, batch 2, 1 and 2
/// threads (the same bits as unfused: `jit_kernels::conv_max_pool_fused_is_the_conv_then_the_pool`).
#[test]
fn a_max_pool_after_a_first_conv_is_fused_into_it() {
    let mut g = graph(
        "name: convpool\ninput: [3, 61, 47]\nseed: 5\nlayers:\n\
         \x20 - {name: c0, conv: {filters: 20, size: 3, stride: 2}}\n\
         \x20 - {name: r0, relu}\n\
         \x20 - {name: p0, maxpool: {size: 3, stride: 2}}\n\
         \x20 - {name: c1, conv: {filters: 6, size: 3}, inputs: [input]}\n\
         \x20 - {name: p1, maxpool: {size: 2, stride: 2}}\n\
         \x20 - {name: c2, conv: {filters: 5, size: 1}, inputs: [c1]}\n\
         \x20 - {name: c3, conv: {filters: 7, size: 3, stride: 2}, inputs: [input]}\n\
         \x20 - {name: p3, maxpool: {size: 3, stride: 2, pad: 1}}\n\
         outputs: [p0, p1, c2, p3]\n",
    );
    cnnc::weights::bind(&mut g, None).unwrap();
    let levels = cnnc::Isa::host_levels();
    for &isa in &levels {
        let plan = lowered(
            &g,
            &Options {
                isa,
                ..Options::default()
            },
        );
        let fused = |name: &str| {
            plan.step(name)
                .is_some_and(|s| matches!(s.kernel, Kernel::ConvMaxPool { .. }))
        };
        let wide = isa != cnnc::Isa::Sse;
        assert_eq!(fused("c0"), wide, "{isa}: {plan}");
        assert_eq!(plan.step("p0").is_none(), wide, "{isa}: {plan}");
        // c1 has two readers, p3 pads vertically.
        assert!(!fused("c1") && !fused("c3"), "{isa}: {plan}");
        assert!(
            plan.step("p1").is_some() && plan.step("p3").is_some(),
            "{isa}: {plan}"
        );
    }
    // The fused steps give the bits of the conv and the pool (sse's plan runs them apart).
    assert_eq!(agree_at_batch_2("convpool", &g, 6), 2 * (levels.len() - 1));
}
