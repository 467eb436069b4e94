//! Compile time of whole networks, phase by phase, repeated in one process (the first
//! compile also pays for the process's cold caches and fresh heap):
//! `cargo run --release --example compiletime -- GRAPH.yaml... [--reps N] [--threads T]`.
//! Prints, per graph, the minimum and median over the repetitions of the wall time of the
//! passes, of code generation (lowering, IR, Cranelift) and of weight packing, of the whole,
//! and the CPU time of this thread in the passes and in the rest (less disturbed than wall
//! time on a loaded machine; one thread only).
use std::time::{Duration, Instant};

/// CPU time the calling thread has run (Linux's `/proc/thread-self/schedstat`), if known.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `(min, median)` of `v`, in ms.
fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!("{:7.2} {:7.2}", ms(v[0]), ms(v[v.len() / 2]))
}

fn cpu_summary(v: Vec<Duration>) -> String {
    if v.is_empty() {
        format!("{:>15}", "-")
    } else {
        summary(v)
    }
}

fn main() -> cnnc::Result<()> {
    let mut graphs = Vec::new();
    let (mut reps, mut threads) = (5, 1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--reps" => reps = number(),
            "--threads" => threads = number(),
            _ => graphs.push(a),
        }
    }
    println!("min and median of {reps} compiles, {threads} thread(s), ms");
    println!(
        "{:<20} {:>15} {:>15} {:>15} {:>15} {:>15} {:>15}",
        "graph", "passes", "codegen", "packing", "total", "CPU passes", "CPU compile"
    );
    for path in graphs {
        let mut g = cnnc::format::load(std::path::Path::new(&path))?;
        cnnc::weights::bind(&mut g, None)?;
        let opts = cnnc::Options {
            threads,
            ..cnnc::Options::default()
        };
        let (mut passes, mut codegen, mut packing) = (vec![], vec![], vec![]);
        let (mut total, mut cpu_passes, mut cpu_compile) = (vec![], vec![], vec![]);
        for _ in 0..reps {
            let mut h = g.clone();
            let (t0, c0) = (Instant::now(), thread_cpu());
            cnnc::passes::optimize(&mut h, &opts)?;
            let (t1, c1) = (Instant::now(), thread_cpu());
            let model = cnnc::runtime::compile(&h, &opts)?;
            let t2 = Instant::now();
            if let (Some(c0), Some(c1), Some(c2)) = (c0, c1, thread_cpu()) {
                cpu_passes.push(c1 - c0);
                cpu_compile.push(c2 - c1);
            }
            passes.push(t1 - t0);
            codegen.push(t2 - t1 - model.packing_time());
            packing.push(model.packing_time());
            total.push(t2 - t0);
        }
        let name = std::path::Path::new(&path).file_stem().unwrap_or_default();
        println!(
            "{:<20} {} {} {} {} {} {}",
            name.to_string_lossy(),
            summary(passes),
            summary(codegen),
            summary(packing),
            summary(total),
            cpu_summary(cpu_passes),
            cpu_summary(cpu_compile)
        );
    }
    Ok(())
}
