//! A/B timing of a whole network compiled two ways: `modelab GRAPH.yaml VAR A B [SECONDS]`
//! compiles the graph with environment variable VAR=A and VAR=B (`-`: unset), checks that
//! both give the same bits, then alternates single runs of the two models (`CNNC_THREADS=n`
//! threads each, default 1; at two or more, blocks of 5 runs, the first of each dropped)
//! and prints both medians and minima and the median ratio of the pairs (B/A). As
//! `examples/convab.rs` for one layer: on a shared host only figures measured alternately
//! in one process compare.
use std::time::Instant;

#[path = "common/ab.rs"]
mod ab;
#[path = "common/phase.rs"]
mod phase;
use phase::cross_core_us;

/// The process's transparent huge pages (`AnonHugePages` of `/proc/self/smaps_rollup`), in MB.
fn anon_huge_mb() -> Option<i64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<i64>().ok()? / 1024)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (path, var, va, vb) = (&a[0], &a[1], &a[2], &a[3]);
    let seconds: f64 = a.get(4).map_or(10.0, |s| s.parse().unwrap());
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    let g = ab::graph(path);
    let models: Vec<cnnc::Model> = [va, vb]
        .iter()
        .map(|v| {
            let before = anon_huge_mb();
            let m = ab::compile_as(&g, var, v, threads);
            // Which pages the model's buffers got (`memory::HugeBuf` chooses by what faults
            // cost at compile time): the process's growth in transparent huge pages.
            if let (Some(b), Some(a)) = (before, anon_huge_mb()) {
                println!("{var}={v}: compiled, AnonHugePages +{} MB", a - b);
            }
            m
        })
        .collect();
    let x = ab::input(&g);
    let outs: Vec<_> = models.iter().map(|m| m.run(&x).unwrap()).collect();
    // Both models at their steady state: chunks that a compile faulted in on small pages
    // (huge pages were slow) collapsed into huge pages, as `cnnc bench` does, so that which
    // model the host's memory favoured does not decide the comparison.
    let settled = cnnc::memory::settle_huge_pages();
    if let Some(mb) = anon_huge_mb() {
        println!("settled {settled} chunks into huge pages; AnonHugePages {mb} MB");
    }
    let same = ab::same_bits(&outs[0], &outs[1]);
    println!("outputs {}", if same { "bit-identical" } else { "DIFFER" });
    let mut bufs = outs;
    // At two threads or more, blocks of runs: a model's pool worker spins for a while after
    // its last job, and alternating single runs left it spinning through the other model's
    // run, which on a loaded 2-vCPU host starved one model's worker (B/A 0.6 and 1.9 in turn,
    // session 13). The first run of each block (the other pool still spinning) is dropped.
    // Each pair of blocks is also filed under the host's phase, probed before it
    // (`cross_core_us`: a line the other core wrote costs 2-2.5x in the slow phase). On a
    // loaded host, both figures mean something only with the cores to itself (see
    // examples/common/phase.rs).
    let block = if threads > 1 { 5 } else { 1 };
    let mut times = [Vec::new(), Vec::new()];
    let mut phase = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        let probe = if threads > 1 { cross_core_us() } else { 0.0 };
        for (i, m) in models.iter().enumerate() {
            for r in 0..block {
                let t = Instant::now();
                m.run_into(&x, &mut bufs[i]).unwrap();
                if r > 0 || block == 1 {
                    times[i].push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        phase.extend(std::iter::repeat_n(probe, block.max(2) - 1));
    }
    let ratios: Vec<f64> = times[0].iter().zip(&times[1]).map(|(p, q)| q / p).collect();
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "{var}={va}: median {:.3} ms min {:.3} | {var}={vb}: median {:.3} ms min {:.3} | B/A median {:.3} ({} pairs, {threads} thread(s))",
        med(&times[0]),
        min(&times[0]),
        med(&times[1]),
        min(&times[1]),
        med(&ratios),
        ratios.len()
    );
    if threads > 1 {
        let mut p: Vec<f64> = phase.iter().cloned().filter(|p| p.is_finite()).collect();
        p.sort_by(f64::total_cmp);
        if !p.is_empty() {
            let q = |f: f64| p[((p.len() - 1) as f64 * f) as usize];
            println!(
                "  phase probe (us per 512 KB the other core wrote): 10% {:.1}, median {:.1}, 90% {:.1}",
                q(0.1),
                q(0.5),
                q(0.9)
            );
        }
        // Fast phase: 512 KB the other core wrote read in under 10 us (6-7 us against 13-16
        // in the slow phase on the Zen 5 host); other probes (the load) left out.
        for (name, range) in [
            ("fast", 0.0..phase::FAST_BELOW_US),
            ("slow", phase::FAST_BELOW_US..25.0),
        ] {
            let pick = |v: &[f64]| -> Vec<f64> {
                v.iter()
                    .zip(&phase)
                    .filter(|(_, p)| range.contains(*p))
                    .map(|(t, _)| *t)
                    .collect()
            };
            let (a, b, r) = (pick(&times[0]), pick(&times[1]), pick(&ratios));
            if r.is_empty() {
                continue;
            }
            println!(
                "  {name} phase: A median {:.3} min {:.3} | B median {:.3} min {:.3} | B/A median {:.3} ({} pairs)",
                med(&a),
                min(&a),
                med(&b),
                min(&b),
                med(&r),
                r.len()
            );
        }
    }
}
