//! Whole networks: the reference interpreter against the JIT, and the JIT's compile
//! time. `cargo bench --bench networks`; numbers go to BENCHMARKS.md.
use cnnc::{compile, OptLevel, Options};
use cnnc::{Graph, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

const GRAPHS: &[&str] = &[
    "cs231n_example",
    "lenet5",
    "digits",
    "vgg_cifar",
    "resnet_basic_block",
    "resnet_bottleneck_block",
    "inception3a",
    "resnet18",
];

fn load(name: &str) -> Graph {
    let path = format!("{}/graphs/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut g = cnnc::format::load(path).expect("example graph");
    cnnc::weights::bind(&mut g, None).expect("weights");
    g
}

fn input(g: &Graph, batch: usize) -> Tensor {
    let s = g.input_shape();
    let data = cnnc::weights::standard_normal(1, "bench", batch * s.len());
    Tensor::new(vec![batch, s.c, s.h, s.w], data).expect("input")
}

fn flops(g: &Graph) -> u64 {
    g.dag
        .node_indices()
        .map(|id| 2 * cnnc::ir::stats::layer_stats(g, id).macs)
        .sum()
}

fn networks(c: &mut Criterion) {
    for &name in GRAPHS {
        let g = load(name);
        let big = flops(&g) > 1_000_000_000;
        let batches: &[usize] = if g.input_shape().h <= 32 {
            &[1, 8]
        } else {
            &[1]
        };
        let mut group = c.benchmark_group(format!("network/{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(if big { 500 } else { 300 }));
        group.measurement_time(Duration::from_secs(if big { 4 } else { 2 }));
        for &batch in batches {
            let x = input(&g, batch);
            group.throughput(Throughput::Elements(flops(&g) * batch as u64));
            for level in [OptLevel::O0, OptLevel::O2] {
                let opts = Options {
                    opt_level: level,
                    batch,
                    threads: 1,
                    ..Default::default()
                };
                let model = compile(&g, &opts).expect("compiles");
                // Outputs reused: the model's time, not the allocator's.
                let mut outs = model.run(&x).expect("runs");
                group.bench_with_input(
                    BenchmarkId::new(format!("jit{level}"), batch),
                    &x,
                    |b, x| b.iter(|| model.run_into(x, &mut outs).expect("runs")),
                );
            }
            let opts = Options {
                batch,
                ..Default::default()
            };
            let model = compile(&g, &opts).expect("compiles");
            let mut outs = model.run(&x).expect("runs");
            let id = format!("jit-O2-threads{}", opts.threads);
            group.bench_with_input(BenchmarkId::new(id, batch), &x, |b, x| {
                b.iter(|| model.run_into(x, &mut outs).expect("runs"))
            });
            // The interpreter is slow on the big networks: one batch size, few samples.
            if batch == 1 {
                group.bench_with_input(BenchmarkId::new("interp", batch), &x, |b, x| {
                    b.iter(|| cnnc::interp::run(&g, x.clone()).expect("runs"))
                });
            }
        }
        group.finish();
    }
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for &name in GRAPHS {
        let g = load(name);
        group.bench_function(name, |b| {
            b.iter(|| compile(&g, &Options::default()).expect("compiles"))
        });
    }
    group.finish();
}

criterion_group!(benches, networks, compile_time);
criterion_main!(benches);
