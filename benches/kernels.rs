//! Kernel throughput (FLOP/s via `Throughput::Elements(flops)`): the raw JIT kernels on
//! one thread, then the same layers as one-layer networks through the interpreter and the
//! JIT at one thread and at all cores (`KBENCH=name` runs a subset).
use std::hint::black_box;
use std::time::Duration;

use cnnc::jit::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn vals(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
        .collect()
}

/// One conv kernel at `isa` on one thread (`winograd: false` times the direct kernel where
/// Winograd would be chosen); the benchmark is named `name/isa`.
fn conv(c: &mut Criterion, name: &str, spec: ConvSpec, winograd: bool, isa: cnnc::Isa) {
    let mut km = KernelModule::new().unwrap();
    km.set_winograd(winograd);
    km.set_isa(isa).unwrap();
    let p = km.add_conv(&spec).unwrap();
    let x = vals(spec.input_len());
    let w = vals(spec.weight_len());
    let b = spec.bias.then(|| vals(spec.out_c));
    let packed = p.pack_weights(&w, b.as_deref()).unwrap();
    let code = km.finalize().unwrap();
    let k = code.get(p).unwrap();
    let mut out = vec![0.0; spec.output_len()];
    let mut scratch = vec![0.0; k.scratch_len()];
    let mut g = c.benchmark_group("conv");
    g.throughput(Throughput::Elements(spec.flops()));
    g.bench_function(format!("{name}/{isa}"), |bch| {
        bch.iter(|| {
            k.run(
                black_box(&x),
                &packed,
                None,
                &mut out,
                &mut scratch,
                0..k.work_units(),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let filter = std::env::var("KBENCH").unwrap_or_default();
    let want = |n: &str| filter.is_empty() || n.contains(&filter);
    // Every conv family at every ISA level the host has (`KBENCH=avx512` picks one level,
    // `KBENCH=7x7` one layer).
    let convs = [
        // (name, C, HW, K, F, S, P, winograd)
        ("3x3_64_64_56", 64, 56, 64, 3, 1, 1, true),
        ("3x3_64_64_56_direct", 64, 56, 64, 3, 1, 1, false),
        ("1x1_256_64_56", 256, 56, 64, 1, 1, 0, true),
        ("7x7s2_3_64_224", 3, 224, 64, 7, 2, 3, true),
        ("3x3s2_128_128_56", 128, 56, 128, 3, 2, 1, true),
        ("3x3s2_256_256_28", 256, 28, 256, 3, 2, 1, true),
        ("3x3s2_512_512_14", 512, 14, 512, 3, 2, 1, true),
        ("1x1s2_256_512_56", 256, 56, 512, 1, 2, 0, true),
    ];
    for isa in cnnc::Isa::host_levels() {
        for (name, ci, hw, k, f, st, p, winograd) in convs {
            if !want(&format!("{name}/{isa}")) {
                continue;
            }
            let mut s = ConvSpec::square(ci, hw, k, f, st, p);
            s.bias = true;
            s.relu = true;
            conv(c, name, s, winograd, isa);
        }
    }
    if want("pool") {
        for (name, s) in [
            (
                "max2x2s2_64_112",
                PoolSpec::square(PoolKind::Max, 64, 112, 2, 2, 0),
            ),
            (
                "max3x3s2p1_64_112",
                PoolSpec::square(PoolKind::Max, 64, 112, 3, 2, 1),
            ),
        ] {
            let mut km = KernelModule::new().unwrap();
            let p = km.add_pool(&s).unwrap();
            let code = km.finalize().unwrap();
            let k = code.get(p).unwrap();
            let x = vals(s.input_len());
            let mut out = vec![0.0; s.output_len()];
            let mut scratch = vec![0.0; k.scratch_len()];
            let mut g = c.benchmark_group("pool");
            g.throughput(Throughput::Elements(s.input_len() as u64));
            g.bench_function(name, |bch| {
                bch.iter(|| k.run(black_box(&x), &mut out, &mut scratch, 0..64).unwrap())
            });
            g.finish();
        }
    }
    if want("fc") {
        let mut s = FcSpec::new(4096, 1000, 1);
        s.bias = true;
        let mut km = KernelModule::new().unwrap();
        let p = km.add_fc(&s).unwrap();
        let code = km.finalize().unwrap();
        let k = code.get(p).unwrap();
        let x = vals(s.input_len());
        let packed = pack_fc_weights(&s, &vals(s.weight_len()), Some(&vals(1000))).unwrap();
        let mut out = vec![0.0; s.output_len()];
        let mut g = c.benchmark_group("fc");
        g.throughput(Throughput::Elements(s.flops()));
        g.bench_function("4096_1000_b1", |bch| {
            bch.iter(|| k.run_all(black_box(&x), &packed, None, &mut out).unwrap())
        });
        g.finish();
        // Reference: read 16 MB (the fc weights' size) with a vectorised integer sum.
        let buf: Vec<u32> = (0..4096 * 1000u32).collect();
        let mut g = c.benchmark_group("membw");
        g.throughput(Throughput::Bytes((buf.len() * 4) as u64));
        g.bench_function("read_16MB", |bch| {
            bch.iter(|| black_box(&buf).iter().fold(0u32, |a, &v| a.wrapping_add(v)))
        });
        g.finish();
    }
}

/// The bench layers as one-layer graphs: (name, YAML).
const LAYERS: &[(&str, &str)] = &[
    (
        "conv3x3_64_64_56",
        "input: [64, 56, 56]\nlayers:\n  - conv: {filters: 64, size: 3, pad: 1}\n  - relu\n",
    ),
    (
        "conv1x1_256_64_56",
        "input: [256, 56, 56]\nlayers:\n  - conv: {filters: 64, size: 1}\n  - relu\n",
    ),
    (
        "conv7x7s2_3_64_224",
        "input: [3, 224, 224]\nlayers:\n  - conv: {filters: 64, size: 7, stride: 2, pad: 3}\n",
    ),
    (
        "maxpool2x2s2_64_112",
        "input: [64, 112, 112]\nlayers:\n  - maxpool: {size: 2}\n",
    ),
    (
        "fc_4096_1000",
        "input: [4096, 1, 1]\nlayers:\n  - fc: {units: 1000}\n",
    ),
];

fn layers(c: &mut Criterion) {
    let filter = std::env::var("KBENCH").unwrap_or_default();
    for &(name, yaml) in LAYERS.iter().filter(|(n, _)| n.contains(&filter)) {
        let mut g = cnnc::format::parse_str(yaml, None).unwrap();
        cnnc::weights::bind(&mut g, None).unwrap();
        let flops: u64 = g
            .dag
            .node_indices()
            .map(|id| 2 * cnnc::ir::stats::layer_stats(&g, id).macs)
            .sum();
        let s = g.input_shape();
        let x = cnnc::Tensor::new(vec![1, s.c, s.h, s.w], vals(s.len())).unwrap();
        let mut group = c.benchmark_group(format!("layer/{name}"));
        // Elements: FLOPs for conv and fc, input floats for the pool.
        group.throughput(Throughput::Elements(if flops > 0 {
            flops
        } else {
            s.len() as u64
        }));
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        for threads in [1, all] {
            let opts = cnnc::Options {
                threads,
                ..Default::default()
            };
            let model = cnnc::compile(&g, &opts).unwrap();
            group.bench_function(format!("jit-{threads}T"), |b| {
                b.iter(|| model.run(black_box(&x)).unwrap())
            });
        }
        group.bench_function("interp", |b| {
            b.iter(|| cnnc::interp::run(&g, black_box(x.clone())).unwrap())
        });
        group.finish();
    }
}

criterion_group! {
    name = kernels;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches, layers
}
criterion_main!(kernels);
