//! `cnnc bench`: compile once, warm up, run for a given time or count, and report
//! latency percentiles, throughput and peak memory.
use serde::Serialize;
use std::time::{Duration, Instant};

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
    }
}
