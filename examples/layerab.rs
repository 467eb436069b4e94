//! Per-layer A/B in one process: `layerab GRAPH.yaml VAR A B [RUNS] [LAYERS]` compiles the
//! graph with VAR=A and VAR=B (`-`: unset), checks that both give the same bits, alternates
//! `Model::profile` runs of the two (which goes first alternating too) and prints per step
//! (those named in the comma list LAYERS, or all) the medians of each and the median of the
//! pairs' B - A, then the sum of those medians and the runs' totals. `examples/modelab.rs`
//! says whether a change pays for a whole network; this says where: a change in one step
//! that moves time into another (or the first model's memory differing from the second's,
//! e.g. its huge pages) shows up step by step. `CNNC_THREADS=n` threads (no phase probe: at
//! two threads say which phase the host was in).
#[path = "common/ab.rs"]
mod ab;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (path, var, va, vb) = (&a[0], &a[1], &a[2], &a[3]);
    let runs: usize = a.get(4).map_or(200, |s| s.parse().unwrap());
    let only: Option<Vec<String>> = a.get(5).map(|s| s.split(',').map(String::from).collect());
    let threads: usize = std::env::var("CNNC_THREADS").map_or(1, |v| v.parse().unwrap());
    let g = ab::graph(path);
    let models: Vec<cnnc::Model> = [va, vb]
        .iter()
        .map(|v| ab::compile_as(&g, var, v, threads))
        .collect();
    let x = ab::input(&g);
    let outs: Vec<_> = models.iter().map(|m| m.profile(&x).unwrap().0).collect();
    let same = ab::same_bits(&outs[0], &outs[1]);
    println!("outputs {}", if same { "bit-identical" } else { "DIFFER" });
    let names: Vec<String> = models[0].step_names();
    let n = names.len();
    let mut ta = vec![Vec::new(); n];
    let mut tb = vec![Vec::new(); n];
    let mut d = vec![Vec::new(); n];
    let (mut tot_a, mut tot_b) = (Vec::new(), Vec::new());
    for r in 0..runs {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut t = [Vec::new(), Vec::new()];
        for &i in &order {
            let (_, l) = models[i].profile(&x).unwrap();
            t[i] = l.iter().map(|l| l.time.as_secs_f64() * 1e6).collect();
        }
        for j in 0..n {
            ta[j].push(t[0][j]);
            tb[j].push(t[1][j]);
            d[j].push(t[1][j] - t[0][j]);
        }
        tot_a.push(t[0].iter().sum::<f64>());
        tot_b.push(t[1].iter().sum::<f64>());
    }
    let mut sum_d = 0.0;
    for j in 0..n {
        let md = median(&mut d[j]);
        sum_d += md;
        let name = names[j].split_whitespace().next().unwrap_or("");
        if only.as_ref().is_none_or(|o| o.iter().any(|l| l == name)) {
            println!(
                "{:60.60} A {:8.1} B {:8.1} B-A {:+7.1} us",
                names[j],
                median(&mut ta[j]),
                median(&mut tb[j]),
                md
            );
        }
    }
    let mut dt: Vec<f64> = tot_b.iter().zip(&tot_a).map(|(b, a)| b / a).collect();
    println!(
        "sum of per-layer median B-A {:+.1} us; totals A {:.1} B {:.1} us, B/A median {:.4} ({runs} pairs)",
        sum_d,
        median(&mut tot_a),
        median(&mut tot_b),
        median(&mut dt)
    );
}
