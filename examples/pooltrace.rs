//! Where a network's two-thread time goes, job by job: `pooltrace GRAPH.yaml [SECONDS]`
//! compiles the graph for `CNNC_THREADS` threads (default 2) with `CNNC_POOL_TRACE=1`, runs
//! it in blocks of 5 (the first of each dropped), probes the host's phase before each block
//! (`examples/common/phase.rs`), and prints per step and phase the medians over the runs of:
//! the step's whole time on the pool (`job`: from the first job's publication to the last
//! job's end, summed over its jobs), when the worker took its first chunk after the
//! publication (`w.late`), each thread's time inside chunks (`busy`), and how long the
//! caller waited for the worker after its own last chunk (`wait`). Late starts are the
//! hand-off, busy times above the one-thread halves are the data, waits are imbalance.
//! Above the table: the median time per run between steps (a step's last job's end to the
//! next step's publication) and the steps with the largest gaps before them.
use std::collections::BTreeMap;

#[path = "common/phase.rs"]
mod phase;

/// The CPU each of this process's threads last ran on: (main's, the first worker's).
fn cpus() -> (i64, i64) {
    let pid = std::process::id();
    let mut r = (-1, -1);
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: state is field 3, processor 39.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let cpu: i64 = rest
            .split_whitespace()
            .nth(36)
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1);
        let tid: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        if tid == pid {
            r.0 = cpu;
        } else if head.contains("cnnc-worker") {
            r.1 = cpu;
        }
    }
    r
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let path = &a[0];
    let seconds: f64 = a.get(1).map_or(10.0, |s| s.parse().unwrap());
    // `POOLTRACE_JOBS=1`: a line per job (a Winograd layer's three) rather than per step.
    let split_jobs = std::env::var("POOLTRACE_JOBS").is_ok_and(|v| v == "1");
    let threads: usize = std::env::var("CNNC_THREADS").map_or(2, |v| v.parse().unwrap());
    std::env::set_var("CNNC_POOL_TRACE", "1");
    let mut g = cnnc::format::load(path).unwrap();
    cnnc::weights::bind(&mut g, None).unwrap();
    // `POOLTRACE_NO_WINOGRAD=1`: both models without Winograd (`--no-winograd`).
    let winograd = !std::env::var("POOLTRACE_NO_WINOGRAD").is_ok_and(|v| v == "1");
    let opts = cnnc::Options {
        threads,
        winograd,
        ..cnnc::Options::default()
    };
    let m = cnnc::compile(&g, &opts).unwrap();
    // One thread, profiled between the blocks: each step's time alone (`1T`).
    let m1 = cnnc::compile(
        &g,
        &cnnc::Options {
            threads: 1,
            winograd,
            ..cnnc::Options::default()
        },
    )
    .unwrap();
    let mut one: Vec<Vec<f64>> = vec![Vec::new(); m1.step_names().len()];
    let names = m.step_names();
    let s = g.input_shape();
    let x = cnnc::Tensor::new(
        vec![1, s.c, s.h, s.w],
        (0..s.len())
            .map(|i| ((i % 17) as f32 - 8.0) * 0.1)
            .collect(),
    )
    .unwrap();
    let mut outs = m.run(&x).unwrap();
    m1.run(&x).unwrap();
    // Huge pages for what the compiles faulted in on small pages, as `cnnc bench` does.
    cnnc::memory::settle_huge_pages();
    // Per phase (0 fast, 1 slow), per step: [job, w.late, busy0, busy1, wait] per run; and
    // whole runs.
    type Acc = BTreeMap<(usize, usize), Vec<[f64; 5]>>;
    let mut acc: [Acc; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut placements: BTreeMap<(usize, (i64, i64)), usize> = BTreeMap::new();
    // Per phase, per step: the time from the previous job's end to the step's first
    // publication (the runtime's own work between steps), per run; and its sum per run.
    let mut gaps: [BTreeMap<usize, Vec<f64>>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut gap_runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        let probe = phase::cross_core_us();
        if !probe.is_finite() || probe > 25.0 {
            continue;
        }
        let ph = usize::from(probe >= phase::FAST_BELOW_US);
        let (_, layers) = m1.profile(&x).unwrap();
        for (o, l) in one.iter_mut().zip(&layers) {
            o.push(l.time.as_secs_f64() * 1e6);
        }
        for r in 0..5 {
            m.take_pool_trace();
            let t = std::time::Instant::now();
            m.run_into(&x, &mut outs).unwrap();
            let el = t.elapsed().as_secs_f64() * 1e6;
            let jobs = m.take_pool_trace();
            let c = cpus();
            *placements.entry((ph, c)).or_insert(0usize) += 1;
            if r == 0 {
                continue;
            }
            runs[ph].push(el);
            let mut per: BTreeMap<(usize, usize), [f64; 5]> = BTreeMap::new();
            let mut nth = 0;
            let mut gap_run = 0.0;
            for (i, j) in jobs.iter().enumerate() {
                if i > 0 && jobs[i - 1].tag != j.tag {
                    let g = j.submit.saturating_sub(jobs[i - 1].done) as f64 / 1e3;
                    gaps[ph].entry(j.tag).or_default().push(g);
                    gap_run += g;
                }
                nth = if i > 0 && jobs[i - 1].tag == j.tag {
                    nth + 1
                } else {
                    0
                };
                let e = per
                    .entry((j.tag, if split_jobs { nth } else { 0 }))
                    .or_default();
                let us = |ns: u64| ns as f64 / 1e3;
                e[0] += us(j.done - j.submit);
                let (m0, w) = (&j.threads[0], &j.threads[1..]);
                let late = w
                    .iter()
                    .filter(|t| t.chunks > 0)
                    .map(|t| t.start.saturating_sub(j.submit))
                    .min()
                    .map_or(f64::NAN, us);
                e[1] += late;
                e[2] += us(m0.busy);
                e[3] += w.iter().map(|t| us(t.busy)).sum::<f64>();
                e[4] += us(j.done.saturating_sub(m0.end.max(j.submit)));
            }
            for (k, v) in per {
                acc[ph].entry(k).or_default().push(v);
            }
            gap_runs[ph].push(gap_run);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    println!("(phase, (main's cpu, worker's cpu)): runs {placements:?}");
    // On a loaded host a two-thread model often gets one core (docs/jit-history.md,
    // "Thread notes (session 13)"): its figures then measure nothing about two threads.
    for (p, name) in ["fast", "slow"].iter().enumerate() {
        let (same, all) = placements
            .iter()
            .filter(|((ph, _), _)| *ph == p)
            .fold((0, 0), |(s, a), ((_, (m, w)), n)| {
                (s + if m == w { *n } else { 0 }, a + n)
            });
        if 2 * same > all {
            println!("WARNING: {name} phase: main and worker on one CPU in {same} of {all} runs");
        }
    }
    for (p, name) in ["fast", "slow"].iter().enumerate() {
        let mut g: Vec<(f64, usize)> = gaps[p].iter().map(|(k, v)| (med(v.clone()), *k)).collect();
        g.sort_by(|a, b| b.0.total_cmp(&a.0));
        let top: Vec<String> = g
            .iter()
            .take(8)
            .map(|(us, k)| format!("{} {us:.1}", names[*k].split(' ').next().unwrap_or("")))
            .collect();
        println!(
            "{name}: between steps {:.1} us a run (median); largest gaps before: {}",
            med(gap_runs[p].clone()),
            top.join(", ")
        );
    }
    println!(
        "runs: fast {} median {:.1} us, slow {} median {:.1} us",
        runs[0].len(),
        med(runs[0].clone()),
        runs[1].len(),
        med(runs[1].clone())
    );
    println!(
        "{:>5} {:>6} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>7}  step",
        "#",
        "1T",
        "job F",
        "late",
        "busy0",
        "busy1",
        "wait",
        "job S",
        "late",
        "busy0",
        "busy1",
        "wait"
    );
    let mut sums = [[0.0; 5]; 2];
    let mut one_sum = 0.0;
    // Per kind of step: steps, the one-thread sum and each phase's summed job medians.
    let mut kinds: BTreeMap<String, (usize, f64, [f64; 2])> = BTreeMap::new();
    let keys: std::collections::BTreeSet<(usize, usize)> =
        acc.iter().flat_map(|a| a.keys().cloned()).collect();
    for &(k, nth) in &keys {
        let name = &names[k];
        let cols: Vec<[f64; 5]> = (0..2)
            .map(|p| {
                let v = acc[p].get(&(k, nth)).cloned().unwrap_or_default();
                let mut c = [0.0; 5];
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci = med(v.iter().map(|r| r[i]).collect());
                }
                c
            })
            .collect();
        if cols.iter().all(|c| c[0].is_nan()) {
            continue;
        }
        for p in 0..2 {
            for i in 0..5 {
                if cols[p][i].is_finite() {
                    sums[p][i] += cols[p][i];
                }
            }
        }
        let f = |c: &[f64; 5]| {
            c.iter()
                .map(|v| format!("{v:>7.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let short: String = name.chars().take(60).collect();
        let t1 = if nth == 0 {
            med(one[k].clone())
        } else {
            f64::NAN
        };
        if t1.is_finite() {
            one_sum += t1;
        }
        println!(
            "{k:>3}.{nth} {t1:>6.1} | {} | {}  {short}",
            f(&cols[0]),
            f(&cols[1])
        );
        let e = kinds.entry(kind(name)).or_insert((0, 0.0, [0.0; 2]));
        e.0 += usize::from(nth == 0);
        if t1.is_finite() {
            e.1 += t1;
        }
        for (sum, c) in e.2.iter_mut().zip(&cols) {
            if c[0].is_finite() {
                *sum += c[0];
            }
        }
    }
    let f = |c: &[f64; 5]| {
        c.iter()
            .map(|v| format!("{v:>7.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("  sum {one_sum:>6.1} | {} | {}", f(&sums[0]), f(&sums[1]));
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| (b.1 .2[1] - b.1 .2[0]).total_cmp(&(a.1 .2[1] - a.1 .2[0])));
    println!("by kind (summed medians, us): steps, 1T | fast | slow | slow - fast");
    for (k, (n, t1, j)) in kinds {
        println!(
            "  {k:<28} {n:>3} {t1:>8.1} | {:>8.1} | {:>8.1} | {:>+8.1}",
            j[0],
            j[1],
            j[1] - j[0]
        );
    }
}

/// A step's kind for the summary: its operation (the name without the node), with the
/// method and, for Winograd, whether grouped (`groups of`) or the whole layout.
fn kind(name: &str) -> String {
    let op = name.split_once(' ').map_or(name, |(_, rest)| rest);
    let word = op.split_whitespace().next().unwrap_or("");
    let method = name
        .split_once('[')
        .and_then(|(_, m)| m.split([',', ' ', ']']).next())
        .unwrap_or("");
    match method {
        "winograd-f4x4" | "winograd-f2x2" if name.contains("groups of") => {
            format!("{method} grouped")
        }
        "" => word.to_string(),
        _ if op.starts_with("gemm 1x1") => format!("1x1 {method}"),
        _ => format!("{word} {method}"),
    }
}
