//! What collapsing small-page chunks into huge pages costs and gains, in a fresh process:
//! `settle GRAPH.yaml MODE [SECONDS]` compiles the graph once (`CNNC_THREADS=n` threads)
//! and prints the compile time and what became of its 2 MiB chunks
//! (`memory::huge_chunk_counts`: how many fell back to small pages), then runs it for
//! SECONDS (default 5) and prints the runs' times by second, with the chunks collapsed so
//! far. MODE: `bg` (the default background collapse, which waits while a run is in
//! progress), `gaps` (the same with 10 ms between runs, as a server between requests),
//! `off` (`CNNC_HUGE_COLLAPSE=0`), or `sync` (`memory::settle_huge_pages` right after the
//! compile, timed). Set
//! `CNNC_HUGE_PAGES=small` to have every chunk fall back, as after a slow first compile.
use std::time::{Duration, Instant};

#[path = "common/ab.rs"]
mod ab;

fn anon_huge_mb() -> i64 {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("AnonHugePages:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(-1, |k| k / 1024)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let mode = a.get(1).map_or("bg", |s| s.as_str());
    let seconds: f64 = a.get(2).map_or(5.0, |s| s.parse().unwrap());
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    if mode == "off" {
        ab::set_knob("CNNC_HUGE_COLLAPSE", "0");
    }
    let g = ab::graph(&a[0]);
    let t = Instant::now();
    let model = ab::compile(&g, threads);
    let compile = t.elapsed();
    let c = cnnc::memory::huge_chunk_counts();
    println!(
        "{mode}: compile {:.0} ms, chunks on small pages {} (pending {}), AnonHugePages {} MB",
        compile.as_secs_f64() * 1e3,
        c.small,
        c.pending,
        anon_huge_mb()
    );
    if mode == "sync" {
        let t = Instant::now();
        let n = cnnc::memory::settle_huge_pages();
        println!(
            "settle_huge_pages: {n} chunks in {:.0} ms ({:.2} ms each), AnonHugePages {} MB",
            t.elapsed().as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64,
            anon_huge_mb()
        );
    }
    let x = ab::input(&g);
    let mut outs = model.run(&x).unwrap();
    let start = Instant::now();
    let mut second = Vec::new();
    let mut all = Vec::new();
    let mut mark = Duration::from_secs(1);
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        model.run_into(&x, &mut outs).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if mode == "gaps" {
            std::thread::sleep(Duration::from_millis(10));
        }
        second.push(ms);
        all.push(ms);
        if start.elapsed() >= mark {
            let c = cnnc::memory::huge_chunk_counts();
            let max = second.iter().cloned().fold(0.0, f64::max);
            println!(
                "  s{}: {} runs, median {:.2} ms, max {:.2}; collapsed {} failed {} pending {}, AnonHugePages {} MB",
                mark.as_secs(),
                second.len(),
                median(&mut second),
                max,
                c.collapsed,
                c.failed,
                c.pending,
                anon_huge_mb()
            );
            second.clear();
            mark += Duration::from_secs(1);
        }
    }
    if !all.is_empty() {
        println!(
            "{mode}: all runs median {:.2} ms ({} runs)",
            median(&mut all),
            all.len()
        );
    }
}
