//! Compile time of whole networks, phase by phase, repeated in one process (the first
//! compile also pays for the process's cold caches and fresh heap):
//! `cargo run --release --example compiletime -- GRAPH.yaml... [--reps N] [--threads T]
//! [--functions N]`.
//! Prints, per graph, the minimum and median over the repetitions of the wall time of the
//! passes, of code generation (lowering, IR, Cranelift) and of weight packing, of the whole,
//! and the CPU time of this thread in the passes and in the rest (less disturbed than wall
//! time on a loaded machine; one thread only). With `--functions N`, also the N functions
//! Cranelift took longest to compile (the minimum over `reps` compiles that keep listings,
//! so each also pays for its disassembly), and the totals with and without the optimiser.
//! After each graph: how many of each compile's functions came from the process's cache of
//! compiled code (`CNNC_CODE_CACHE=0` to compile them all every time).
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

/// The `n` functions that took Cranelift longest, and the totals per optimisation level.
fn slowest_functions(listings: &[cnnc::jit::KernelListing], n: usize) {
    let compiled = |l: &&cnnc::jit::KernelListing| !l.clif.starts_with(';'); // not x86 micro-kernels
    let mut fns: Vec<_> = listings.iter().filter(compiled).collect();
    fns.sort_by_key(|l| std::cmp::Reverse(l.compile_time));
    // CLIF instructions: the indented lines of the function's body.
    let insts =
        |l: &cnnc::jit::KernelListing| l.clif.lines().filter(|s| s.starts_with("    ")).count();
    for (opt, name) in [(true, "opt_level=speed"), (false, "opt_level=none")] {
        let part: Vec<_> = fns.iter().filter(|l| l.optimised == opt).collect();
        let ms_sum: f64 = part.iter().map(|l| ms(l.compile_time)).sum();
        let inst_sum: usize = part.iter().map(|l| insts(l)).sum();
        println!(
            "  {name}: {} functions, {inst_sum} CLIF instructions, {ms_sum:.2} ms",
            part.len()
        );
    }
    let micros: Vec<_> = listings
        .iter()
        .filter(|l| !compiled(l))
        .map(|l| &l.asm)
        .collect();
    let distinct: std::collections::HashSet<_> = micros.iter().collect();
    println!(
        "  x86 micro-kernels: {} ({} distinct)",
        micros.len(),
        distinct.len()
    );
    println!(
        "  {:<28} {:<8} {:>6} {:>6} {:>8}",
        "layer", "symbol", "opt", "insts", "ms"
    );
    for l in fns.iter().take(n) {
        let opt = if l.optimised { "speed" } else { "none" };
        let ms = ms(l.compile_time);
        println!(
            "  {:<28} {:<8} {opt:>6} {:>6} {ms:>8.3}",
            l.label,
            l.symbol,
            insts(l)
        );
    }
}

fn main() -> cnnc::Result<()> {
    let mut graphs = Vec::new();
    let (mut reps, mut threads, mut functions) = (5, 1, 0);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = || args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--reps" => reps = number(),
            "--threads" => threads = number(),
            "--functions" => functions = number(),
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
        let mut cache_counts = Vec::new();
        for _ in 0..reps {
            let mut h = g.clone();
            let (t0, c0) = (Instant::now(), thread_cpu());
            cnnc::passes::optimize(&mut h, &opts)?;
            let (t1, c1) = (Instant::now(), thread_cpu());
            let model = cnnc::runtime::compile(&h, &opts)?;
            let t2 = Instant::now();
            cache_counts.push(model.code_cache_counts());
            if let (Some(c0), Some(c1), Some(c2)) = (c0, c1, thread_cpu()) {
                cpu_passes.push(c1 - c0);
                cpu_compile.push(c2 - c1);
            }
            passes.push(t1 - t0);
            codegen.push((t2 - t1).saturating_sub(model.packing_time()));
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
        // Functions from the process's cache of compiled code (`CNNC_CODE_CACHE=0`: none).
        let counts: Vec<String> = (cache_counts.iter())
            .map(|c| format!("{}/{}", c.hits, c.hits + c.compiled))
            .collect();
        println!("  functions from the code cache: {}", counts.join(" "));
        if functions > 0 {
            let mut h = g.clone();
            cnnc::passes::optimize(&mut h, &opts)?;
            let mut fastest = cnnc::runtime::listings(&h, &opts)?;
            for _ in 1..reps {
                let again = cnnc::runtime::listings(&h, &opts)?;
                for (f, l) in fastest.iter_mut().zip(again) {
                    f.compile_time = f.compile_time.min(l.compile_time);
                }
            }
            slowest_functions(&fastest, functions);
        }
    }
    Ok(())
}
