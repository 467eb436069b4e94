//! The execution plan: kernel choices, concat placement and the arena layout, asserted on
//! the `Plan` value.
mod common;
use cnnc::jit::{ConvMethod, ConvSpec, EltSpec};
use cnnc::lower::{lower, Kernel, Plan, Storage, ValueId};
use cnnc::{Graph, OptLevel, Options};
use common::repo;

fn opts(level: OptLevel, batch: usize) -> Options {
    Options {
        opt_level: level,
        batch,
        verify: true,
        ..Options::default()
    }
}

/// `g` optimised at `o`'s level (weights bound from the seed unless bound), then lowered.
fn optimized_and_plan(g: &Graph, o: &Options) -> (Graph, Plan) {
    let mut g = g.clone();
    if g.dag.node_weights().all(|n| n.params.is_empty()) {
        cnnc::weights::bind(&mut g, None).unwrap();
    }
    cnnc::passes::optimize(&mut g, o).unwrap();
    let plan = lower(&g, o).unwrap();
    (g, plan)
}

fn plan_of(g: &Graph, o: &Options) -> Plan {
    optimized_and_plan(g, o).1
}

fn load(path: &std::path::Path) -> Graph {
    cnnc::format::load(path).unwrap()
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
}

/// The buffer a value's floats are in.
fn root(plan: &Plan, v: ValueId) -> ValueId {
    match plan.values[v].storage {
        Storage::Buffer => v,
        Storage::Alias(of) => root(plan, of),
        Storage::Slot { concat, .. } => concat,
    }
}

/// No step's output overwrites a value that is read later (or is a graph output): the
/// memory plan is sound. Checked by simulating the schedule.
fn assert_no_live_value_overwritten(what: &str, plan: &Plan) {
    let n = plan.values.len();
    let producer = plan.producers();
    // The last step reading each buffer (graph outputs: past the end).
    let mut last_read = vec![None; n];
    for (i, s) in plan.steps.iter().enumerate() {
        for &v in &s.inputs {
            last_read[root(plan, v)] = Some(i);
        }
    }
    for &o in &plan.outputs {
        last_read[root(plan, o)] = Some(usize::MAX);
    }
    for (i, s) in plan.steps.iter().enumerate() {
        let out = plan.values[s.output].view.region;
        assert!(
            out.end() <= plan.arena_len,
            "{what}: {} beyond the arena",
            s.name
        );
        let buffer = plan.values[root(plan, s.output)].view.region;
        assert_eq!(
            buffer.offset % 16,
            0,
            "{what}: {} is not on a cache line",
            s.name
        );
        // A conv reading its residual in place writes over it (its input 1), nothing else.
        let in_place = matches!(s.kernel, Kernel::Conv { spec, .. } if spec.residual_in_place);
        for (j, &v) in s.inputs.iter().enumerate() {
            if in_place && j == 1 {
                assert_eq!(plan.values[v].view, plan.values[s.output].view, "{what}");
                continue;
            }
            assert!(
                !plan.values[v].view.region.overlaps(&out),
                "{what}: {} reads what it writes",
                s.name
            );
        }
        for (v, made_by) in producer.iter().enumerate() {
            let b = root(plan, v);
            // Live at step i: written before (or the input), read at or after i.
            let written = v == plan.input || made_by.is_some_and(|p| p < i);
            let read_later = last_read[b].is_some_and(|r| r >= i);
            if b == root(plan, s.output) || !written || !read_later {
                continue;
            }
            assert!(
                !plan.values[v].view.region.overlaps(&out),
                "{what}: step {} ({}) overwrites live value {}",
                i,
                s.name,
                plan.values[v].name
            );
        }
    }
}

/// A 1x1 conv whose residual no later step reads writes its output over it
/// (`tests/edge/res_in_place.yaml`): `c` over the projection `proj`, then `e` over `c`'s
/// output (a chain through in-place outputs); not `f` (its residual is its input, and
/// read again), `g` (a graph output) nor `h` (its own input). At sse the strided
/// projection runs on the direct kernel, which does not read in place; `c` and `e` are
/// pointwise at every level.
#[test]
fn pointwise_convs_read_dead_residuals_in_place() {
    let g = load(&repo().join("tests/edge/res_in_place.yaml"));
    for isa in cnnc::Isa::host_levels() {
        for batch in [1, 3] {
            let o = Options {
                isa,
                ..opts(OptLevel::O2, batch)
            };
            let plan = plan_of(&g, &o);
            let in_place: Vec<&str> = (plan.steps.iter())
                .filter(|s| matches!(s.kernel, Kernel::Conv { spec, .. } if spec.residual_in_place))
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(in_place, ["c", "e"], "{isa} batch {batch}");
            let v = |n: &str| plan.value(n).unwrap();
            assert_eq!(root(&plan, v("e")), v("proj"), "{isa}");
            assert_eq!(
                plan.values[v("e")].view,
                plan.values[v("proj")].view,
                "{isa}"
            );
            assert_no_live_value_overwritten(&format!("{isa} batch {batch}"), &plan);
        }
    }
}

#[test]
fn every_example_and_edge_graph_lowers_to_a_sound_memory_plan() {
    let mut n = 0;
    for path in yaml_files("graphs")
        .into_iter()
        .chain(yaml_files("tests/edge"))
    {
        let g = load(&path);
        for level in [OptLevel::O0, OptLevel::O2] {
            for batch in [1, 3] {
                let what = format!("{} {level} batch {batch}", path.display());
                let (g, plan) = optimized_and_plan(&g, &opts(level, batch));
                assert_no_live_value_overwritten(&what, &plan);
                // Every value the graph computes is in the plan, views and all; a view
                // shows the memory of the value it aliases, earlier or later (a conv with
                // its max pool fused in is an alias of the pool's output).
                assert_eq!(plan.values.len(), g.node_count(), "{what}");
                for v in &plan.values {
                    if let Storage::Alias(of) = v.storage {
                        assert_eq!(v.view, plan.values[of].view, "{what}: {}", v.name);
                    }
                }
                n += 1;
            }
        }
    }
    assert!(n >= 4 * 15, "{n} plans");
}

fn placed_in(plan: &Plan, v: &str) -> Option<String> {
    match plan.values[plan.value(v).unwrap()].storage {
        Storage::Slot { concat, .. } => Some(plan.values[concat].name.clone()),
        _ => None,
    }
}

/// Whether any concat input is still copied (a `Copy` step).
fn copies(plan: &Plan) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(s.kernel, Kernel::Copy { .. }))
}

#[test]
fn inception_branches_are_written_into_the_concat() {
    let g = load(&repo().join("graphs/inception3a.yaml"));
    for batch in [1, 3] {
        let plan = plan_of(&g, &opts(OptLevel::O2, batch));
        for branch in ["b1_1x1", "b2_3x3", "b3_5x5", "b4_proj"] {
            assert_eq!(
                placed_in(&plan, branch).as_deref(),
                Some("concat"),
                "{plan}"
            );
        }
        assert!(!copies(&plan), "{plan}");
        // The slots follow the input order, back to back.
        let Storage::Slot { at, .. } = plan.values[plan.value("b4_proj").unwrap()].storage else {
            unreachable!()
        };
        assert_eq!(at, (64 + 128 + 32) * 28 * 28);
    }
}

#[test]
fn a_fused_max_pool_writes_into_its_concat() {
    // p0 and p1 pool convs of the input; at avx2 and avx512 each conv has its pool fused
    // in (lower::fuse::fuse_max_pool_into_conv), and the fused step writes the pool's
    // output straight into the concat, as the pool step does at sse.
    let g = load(&repo().join("tests/edge/conv_maxpool.yaml"));
    for isa in cnnc::Isa::host_levels() {
        let o = Options {
            isa,
            ..opts(OptLevel::O2, 1)
        };
        let plan = plan_of(&g, &o);
        let fused = |name: &str| {
            plan.step(name)
                .is_some_and(|s| matches!(s.kernel, Kernel::ConvMaxPool { .. }))
        };
        assert_eq!(fused("c1"), isa != cnnc::Isa::Sse, "{isa}: {plan}");
        for pool in ["p0", "p1"] {
            assert_eq!(
                placed_in(&plan, pool).as_deref(),
                Some("cat"),
                "{isa}: {plan}"
            );
        }
        assert!(!copies(&plan), "{isa}: {plan}");
    }
}

#[test]
fn concat_placement_follows_every_rule() {
    // tests/edge/concat_inplace.yaml documents each case.
    let g = load(&repo().join("tests/edge/concat_inplace.yaml"));
    for batch in [1, 3] {
        let plan = plan_of(&g, &opts(OptLevel::O2, batch));
        let is = |v: &str, cat: Option<&str>| {
            assert_eq!(
                placed_in(&plan, v).as_deref(),
                cat,
                "{v}, batch {batch}:\n{plan}"
            )
        };
        is("input", None); // the graph input
        is("side", None); // a graph output ...
        is("c2", None); // ... and a concat (of a concat)
        is("e", None); // one value twice in one concat
        is("k", None); // read by a flatten (for an fc)
        is("b", Some("c1"));
        // `a` is read by `b`, placed in the same concat: their items interleave with more
        // than one per chunk.
        is("a", (batch == 1).then_some("c1"));
        is("f", Some("g2"));
        is("h", Some("g2")); // the fused hr (relu, residual) writes its slot
                             // c1 copies only the graph input; g2 the concat c2 and k.
        let copies = |cat: &str| {
            let s = plan.step(cat).unwrap();
            let names: Vec<&str> = s
                .inputs
                .iter()
                .map(|&v| plan.values[v].name.as_str())
                .collect();
            (names, s.kernel.clone())
        };
        let (c1_in, c1) = copies("c1");
        let mut want = vec!["input"];
        if batch > 1 {
            want.insert(0, "a");
        }
        assert_eq!(c1_in, want);
        let at = if batch > 1 {
            vec![5 * 36, 9 * 36]
        } else {
            vec![9 * 36]
        };
        assert_eq!(c1, Kernel::Copy { at });
        assert_eq!(copies("g2").0, ["c2", "k"]);
    }
}

#[test]
fn a_concat_whose_inputs_read_one_another_copies_them_with_a_larger_batch() {
    let g = load(&repo().join("tests/edge/concat_chain.yaml"));
    let one = plan_of(&g, &opts(OptLevel::O2, 1));
    assert_eq!(placed_in(&one, "b").as_deref(), Some("c1"));
    assert_eq!(placed_in(&one, "a").as_deref(), Some("c1"));
    assert!(one.step("c1").is_none(), "{one}");
    let three = plan_of(&g, &opts(OptLevel::O2, 3));
    let placed = ["a", "b"]
        .iter()
        .filter(|v| placed_in(&three, v).is_some())
        .count();
    assert_eq!(placed, 1, "{three}");
}

#[test]
fn flatten_and_dropout_are_views_of_their_input() {
    let g = load(&repo().join("tests/edge/dup.yaml"));
    let plan = plan_of(&g, &opts(OptLevel::O0, 2));
    let views: Vec<&cnnc::lower::Value> = plan
        .values
        .iter()
        .filter(|v| matches!(v.storage, Storage::Alias(_)))
        .collect();
    assert!(!views.is_empty(), "{plan}");
    for v in views {
        let Storage::Alias(of) = v.storage else {
            unreachable!()
        };
        assert_eq!(v.view, plan.values[of].view);
        assert!(plan.step(&v.name).is_none());
    }
}

#[test]
fn convolutions_get_the_algorithm_their_shape_allows() {
    let g = load(&repo().join("graphs/resnet18.yaml"));
    let methods = |winograd| {
        let o = Options {
            winograd,
            ..opts(OptLevel::O2, 1)
        };
        plan_of(&g, &o)
            .steps
            .iter()
            .filter_map(|s| match s.kernel {
                Kernel::Conv { spec, method, .. } => Some((spec, method)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for (spec, method) in methods(true) {
        // Winograd's cost model: with the wide kernels, its 4x weights only pay off on
        // outputs of 14x14 and more (at avx512 since session 12, where the wide GEMMs are
        // estimated overlapping their reading of `U`); ResNet-18's last stage, 7x7, runs
        // F(2x2, 3x3) at avx2 and at avx512 on a host that splits 512-bit FMAs, direct at
        // avx512 where they are full width.
        let isa = opts(OptLevel::O2, 1).isa;
        let small_tiles = match isa {
            cnnc::Isa::Sse => false,
            cnnc::Isa::Avx2 => true,
            cnnc::Isa::Avx512 => cnnc::jit::host_zmm_fma() == cnnc::jit::ZmmFma::Split,
        };
        let min_hw = match isa {
            cnnc::Isa::Sse => 0,
            cnnc::Isa::Avx2 | cnnc::Isa::Avx512 => 14,
        };
        let winograd = spec.out_h() >= min_hw;
        // Strided 1x1 (the projection shortcuts): with the wide kernels the pointwise GEMM
        // on the sampled pixels where it goes weight major (more output channels than
        // pixels: into 14x14 and 7x7), the implicit GEMM otherwise (64 -> 128 into 28x28);
        // the f32x4 direct kernel at sse.
        let wide = opts(OptLevel::O2, 1).isa != cnnc::Isa::Sse
            && (spec.stride_h == 1 || spec.out_c > spec.out_h() * spec.out_w());
        let stride_1_3x3 = spec.kernel_h == 3 && spec.stride_h == 1;
        let want = if stride_1_3x3 && winograd {
            ConvMethod::Winograd
        } else if stride_1_3x3 && small_tiles {
            ConvMethod::Winograd2
        } else if spec.kernel_h == 1 && (spec.stride_h == 1 || wide) {
            ConvMethod::PointwiseGemm
        } else {
            ConvMethod::Direct
        };
        assert_eq!(method, want, "{spec:?}");
    }
    assert!(methods(false)
        .iter()
        .all(|(_, m)| !matches!(m, ConvMethod::Winograd | ConvMethod::Winograd2)));
}

/// Winograd's cost model at every ISA level: it reads 4x the direct kernel's weights, so it
/// wins on large outputs and loses where there are few tiles to share them, unless the
/// direct kernel is the slow f32x4 one (measured in `WinogradPlan::beats_direct`'s
/// documentation), or a zmm kernel on a host that splits 512-bit multiply-adds in halves.
#[test]
fn winograd_only_where_its_weights_pay_off() {
    use cnnc::jit::ZmmFma::{Full, Split};
    use ConvMethod::{Direct, Winograd, Winograd2};
    // (in, output size, out, method at avx512 with full-width FMAs, with split ones, at avx2,
    // at sse). F(2x2, 3x3) where F(4x4)'s tiles are few, at avx2 and avx512 (measured with
    // `examples/convab.rs`, weights from 8 copies, load 6: avx2 512 -> 512 at 7x7 1.74
    // against the direct kernel's 3.1 ms (median of pairs 1.78x), 256 -> 256 at 7x7 1.74x,
    // 128 -> 32 at 7x7 1.67x; avx512 256 -> 256 at 8x8 1.5-1.8x). F(4x4) at avx512 on 13x13
    // and 14x14 outputs since its GEMMs are estimated overlapping their reading of `U`
    // (session 12, weights from 20 copies: 256 -> 256 at 14x14 in 0.54x the direct kernel's
    // time, 512 -> 512 0.70x, 64 -> 256 at 13x13 0.67x, 128 -> 32 at 14x14 0.76x), but not on
    // 7x7 with full-width FMAs (there 1.6-1.9x the direct kernel's); with split ones (Zen 4,
    // session 23) F(2x2) takes 0.67-0.73x the direct kernel's time on 7x7.
    for (c, hw, k, avx512, split, avx2, sse) in [
        (64, 56, 64, Winograd, Winograd, Winograd, Winograd),
        (128, 28, 128, Winograd, Winograd, Winograd, Winograd),
        (256, 14, 256, Winograd, Winograd, Winograd, Winograd),
        (512, 14, 512, Winograd, Winograd, Winograd, Winograd),
        (128, 14, 32, Winograd, Winograd, Winograd, Winograd),
        (64, 13, 256, Winograd, Winograd, Winograd, Winograd),
        (16, 56, 16, Winograd, Winograd, Winograd, Winograd),
        (512, 7, 512, Direct, Winograd2, Winograd2, Winograd),
        (256, 7, 256, Direct, Winograd2, Winograd2, Winograd),
        (256, 8, 256, Winograd2, Winograd2, Winograd2, Winograd),
        (128, 8, 256, Winograd2, Winograd2, Winograd2, Winograd),
        (128, 7, 32, Direct, Winograd2, Winograd2, Winograd),
        (8, 56, 8, Direct, Direct, Direct, Direct),
    ] {
        let spec = ConvSpec::square(c, hw, k, 3, 1, 1);
        for (isa, zmm, want) in [
            (cnnc::Isa::Sse, Full, sse),
            (cnnc::Isa::Avx2, Full, avx2),
            (cnnc::Isa::Avx512, Full, avx512),
            (cnnc::Isa::Avx512, Split, split),
        ] {
            let method = ConvMethod::for_host(&spec, true, isa, zmm);
            assert_eq!(method, want, "{spec:?} at {isa}, {zmm:?}");
            assert_eq!(ConvMethod::for_host(&spec, false, isa, zmm), Direct);
        }
        // On this host: as on the kind of host it measures itself to be.
        let here = cnnc::jit::host_zmm_fma();
        for isa in [cnnc::Isa::Sse, cnnc::Isa::Avx2, cnnc::Isa::Avx512] {
            let zmm = if isa == cnnc::Isa::Avx512 { here } else { Full };
            assert_eq!(
                ConvMethod::for_spec(&spec, true, isa),
                ConvMethod::for_host(&spec, true, isa, zmm),
                "{spec:?} at {isa} on a {here:?} host"
            );
        }
    }
}

#[test]
fn an_unfolded_batchnorm_is_the_scale_and_shift_of_the_fold_in_f64() {
    // A batchnorm after a relu cannot fold.
    let yaml = "input: [3, 4, 4]\nlayers:\n  - relu\n  - {name: bn, batchnorm}\n";
    let mut g = cnnc::format::parse_str(yaml, None).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    let bn = g.find("bn").unwrap();
    let stats = [
        ("weight", [0.5f32, 1.5, -2.0]),
        ("bias", [0.1, -0.2, 0.3]),
        ("running_mean", [1.0, -1.0, 0.25]),
        ("running_var", [0.3, 2.0, 1e-3]),
    ];
    for (name, v) in stats {
        g.node_mut(bn)
            .params
            .insert(name.into(), cnnc::Tensor::new(vec![3], v.to_vec()).unwrap());
    }
    let plan = plan_of(&g, &opts(OptLevel::O2, 1));
    let step = plan.step("bn").unwrap();
    let Kernel::Elementwise { spec, consts } = &step.kernel else {
        panic!("{plan}")
    };
    assert!(matches!(spec, EltSpec::ScaleShift { channels: 3, .. }));
    let eps = 1e-5f64;
    let (scale, shift): (Vec<f32>, Vec<f32>) = (0..3)
        .map(|k| {
            let s = stats[0].1[k] as f64 / (stats[3].1[k] as f64 + eps).sqrt();
            let shift = stats[1].1[k] as f64 - stats[2].1[k] as f64 * s;
            (s as f32, shift as f32)
        })
        .unzip();
    assert_eq!(consts, &[scale, shift]);
}

#[test]
fn the_arena_is_as_large_as_its_largest_simultaneous_buffers() {
    // A chain: each step's input and output are live together, nothing else.
    let yaml = "input: [4, 8, 8]\nlayers:\n  - {name: a, conv: {filters: 8, size: 3, pad: 1}}\n  - {name: b, conv: {filters: 2, size: 1}}\n  - {name: c, conv: {filters: 8, size: 1}}\n";
    let g = cnnc::format::parse_str(yaml, None).unwrap();
    let plan = plan_of(&g, &opts(OptLevel::O0, 1));
    // input (256 floats) and a (512) are live together; b (128) reuses the input's
    // space once a has run, c (512) a's once b has: the high-water mark is step a's.
    assert_eq!(plan.arena_len, 256 + 512);
    let offset = |v: &str| plan.values[plan.value(v).unwrap()].view.region.offset;
    assert_eq!(
        (offset("input"), offset("a"), offset("b"), offset("c")),
        (0, 256, 0, 128)
    );
    let shown = plan.to_string();
    for s in &plan.steps {
        assert!(shown.contains(&s.name));
    }
}

#[test]
fn emit_plan_prints_every_example_graph() {
    for path in yaml_files("graphs") {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cnnc"))
            .args(["compile", "--emit", "plan"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.starts_with("plan ") && text.contains("\narena: "),
            "{text}"
        );
    }
}

#[test]
fn outputs_are_written_in_place_unless_read_or_shared() {
    use cnnc::lower::memory::outputs_written_in_place;
    let cases: [(&str, &[bool]); 2] = [
        // cat (its convs write their slots of the caller's tensor) and the fc are; `mid`,
        // which a later layer reads, is copied out of the arena.
        ("tests/edge/outputs_in_place.yaml", &[true, true, false]),
        // The input, two views of one buffer, a view of the input: copied; only the add
        // has a buffer of its own.
        ("tests/edge/mo.yaml", &[false, false, false, false, true]),
    ];
    for (path, want) in cases {
        let g = load(&repo().join(path));
        for batch in [1, 3] {
            let plan = plan_of(&g, &opts(OptLevel::O2, batch));
            assert_eq!(
                outputs_written_in_place(&plan),
                want,
                "{path}, batch {batch}"
            );
        }
    }
}
