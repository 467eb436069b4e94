//! `cnnc bench`: compile once, warm up, run for a given time or count, and report
//! latency percentiles, throughput and peak memory.
use super::engine::{EngineArgs, EngineKind, GraphArgs, Runner};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub batch: usize,
    /// Seconds to measure for.
    #[arg(long, default_value_t = 3.0)]
    pub time: f64,
    /// Stop after this many timed runs.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub passes: super::passes::PassArgs,
}

pub fn bench(a: &BenchArgs) -> cnnc::Result<()> {
    if !(a.time.is_finite() && (0.0..=1e6).contains(&a.time)) {
        return Err(cnnc::Error::Input(format!(
            "--time must be a number of seconds, got {}",
            a.time
        )));
    }
    let mut g = cnnc::format::load(&a.graph.graph)?;
    a.engine.check_memory(&g, a.batch, a.batch, 0)?;
    super::engine::bind(&mut g, &a.graph)?;
    let macs: u64 = g
        .dag
        .node_indices()
        .map(|id| cnnc::ir::stats::layer_stats(&g, id).macs)
        .sum();
    let x = super::engine::load_input(None, &g, Some(a.batch))?.tensor;
    let start = Instant::now();
    // Compile time includes the passes (batchnorm folding is done here, once).
    let opts = a.engine.options(a.passes.options(), a.batch);
    cnnc::passes::optimize(&mut g, &opts)?;
    let passes = start.elapsed();
    let runner = Runner::new(g, a.engine.engine, &opts)?;
    let compile = start.elapsed();
    let budget = Budget {
        time: Duration::from_secs_f64(a.time),
        max_runs: a.runs,
        warmup: a.warmup,
    };
    let mut settle = Settle::default();
    let times = match &runner {
        // The model alone: outputs reused (`run_into`), no copy of the input per run. A
        // fresh multi-megabyte output per run costs page faults that are not the model's.
        Runner::Jit(_, model) => {
            let mut outs = model.run(&x)?;
            // Steady-state runs: the chunks of packed weights (and of the arena, made by
            // the first run) faulted in on small pages while huge pages were slow are
            // collapsed into huge pages first, untimed (a server's background thread does
            // it between requests; runs back to back leave it no time).
            let t = Instant::now();
            settle.chunks = cnnc::memory::settle_huge_pages();
            settle.ms = t.elapsed().as_secs_f64() * 1e3;
            measure(&budget, || model.run_into(&x, &mut outs))?
        }
        Runner::Interp(g) => measure(&budget, || cnnc::interp::run(g, x.clone()).map(drop))?,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = percentile(&times, 0.5);
    let report = BenchReport {
        graph: runner.graph().name.clone(),
        engine: a.engine.engine.name().into(),
        threads: match a.engine.engine {
            EngineKind::Jit => opts.threads,
            EngineKind::Interp => 1,
        },
        batch: a.batch,
        compile_ms: ms(compile),
        passes_ms: ms(passes),
        packing_ms: runner.packing_time().map(ms),
        runs: times.len(),
        median_ms: ms(median),
        p90_ms: ms(percentile(&times, 0.9)),
        p99_ms: ms(percentile(&times, 0.99)),
        min_ms: ms(times[0]),
        images_per_s: a.batch as f64 / median.as_secs_f64(),
        gflops: 2.0 * macs as f64 * a.batch as f64 / median.as_secs_f64() / 1e9,
        peak_memory_mb: peak_memory_mb(),
        settled_chunks: settle.chunks,
        settle_ms: settle.ms,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        report.print();
    }
    Ok(())
}

#[derive(Serialize)]
pub struct BenchReport {
    pub graph: String,
    pub engine: String,
    pub threads: usize,
    pub batch: usize,
    /// Passes plus code generation (and weight packing).
    pub compile_ms: f64,
    /// The passes' share of `compile_ms` (batchnorm folding touches every weight).
    pub passes_ms: f64,
    /// The JIT's weight packing share of `compile_ms` (Winograd transforms the 3x3 filters);
    /// the rest is code generation.
    pub packing_ms: Option<f64>,
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub images_per_s: f64,
    pub gflops: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), when known.
    pub peak_memory_mb: Option<f64>,
    /// Chunks of packed weights and arena on small pages collapsed into huge pages after
    /// the first run, before the timed runs (`memory::settle_huge_pages`), and how long
    /// that took: untimed, as a server's background thread does it between requests.
    pub settled_chunks: usize,
    pub settle_ms: f64,
}

/// What the settle before the timed runs did (nothing for the interpreter).
#[derive(Default)]
struct Settle {
    chunks: usize,
    ms: f64,
}

pub struct Budget {
    pub time: Duration,
    pub max_runs: Option<usize>,
    pub warmup: usize,
}

/// Times `step` until the budget is spent; returns the sorted latencies.
pub fn measure(
    budget: &Budget,
    mut step: impl FnMut() -> cnnc::Result<()>,
) -> cnnc::Result<Vec<Duration>> {
    for _ in 0..budget.warmup {
        step()?;
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.is_empty()
        || (start.elapsed() < budget.time && budget.max_runs.is_none_or(|m| times.len() < m))
    {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed());
        if budget.max_runs.is_some_and(|m| times.len() >= m) {
            break;
        }
    }
    times.sort();
    Ok(times)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The process's peak resident set, from `/proc/self/status`.
pub fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl BenchReport {
    pub fn print(&self) {
        println!(
            "{}: engine {}, {} thread(s), batch {}",
            self.graph, self.engine, self.threads, self.batch
        );
        let packing = self.packing_ms.unwrap_or(0.0);
        println!(
            "compile:    {:.2} ms ({:.2} ms passes, {:.2} ms code generation, {:.2} ms weight packing)",
            self.compile_ms,
            self.passes_ms,
            self.compile_ms - self.passes_ms - packing,
            packing
        );
        println!(
            "latency:    median {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  min {:.3} ms  ({} runs)",
            self.median_ms, self.p90_ms, self.p99_ms, self.min_ms, self.runs
        );
        println!(
            "throughput: {:.1} images/s, {:.2} GFLOP/s",
            self.images_per_s, self.gflops
        );
        if let Some(m) = self.peak_memory_mb {
            println!("peak memory: {m:.1} MB");
        }
        if self.settled_chunks > 0 {
            println!(
                "huge pages: {} chunks collapsed before timing ({:.1} ms, untimed)",
                self.settled_chunks, self.settle_ms
            );
        }
    }
}
